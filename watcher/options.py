"""Settings → option dataclasses: the one place where configuration meets components.

Components (pollers, dispatcher, event producers, limiters) take small frozen option
dataclasses and never import :mod:`watcher.config`, so each can be built and tested without a
whole configuration, and a config key touches only ``config.py``, this module and the component
that uses it. The composition root (:mod:`watcher.app`) calls the functions here.
"""

from __future__ import annotations
