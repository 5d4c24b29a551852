"""The status page: the watch room in a browser, served by the daemon under ``/ui/``.

Only with ``[server] admin_token`` set (and ``[server] ui``, on by default), on the admin
listener beside ``/v1``. :class:`watcher.ui.pages.StatusPage` holds the routes;
:mod:`watcher.ui.guard` the session, CSRF and header rules every answer goes through;
:mod:`watcher.ui.views` the reads behind each page (awaited, never holding the loop);
:mod:`watcher.ui.feed` the live feed; templates and static files are package data.
Nothing is imported here, so reading the options does not load Jinja2.
"""
