"""Notifiers: one module per destination kind, behind the protocol in :mod:`.base`.

Importing this package does nothing but define classes; notifiers are built by
:func:`watcher.notifiers.registry.build_notifier` from validated settings.
"""
