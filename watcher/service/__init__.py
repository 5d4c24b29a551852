"""The daemon as a service: HTTP server, metrics, logging, systemd notification."""
