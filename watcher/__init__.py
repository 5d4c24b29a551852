"""omics-watcher: watches Tencent Cloud Omics runs and reports every status change.

Nothing happens at import time: importing any module of this package creates no sessions,
loops, loggers or registries. The process is driven from :mod:`watcher.cli`.
"""

__version__ = "0.1.0"
