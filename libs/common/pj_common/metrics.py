"""Serving a process's own Prometheus registry over HTTP."""

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("pj.metrics")


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> WSGIServer | None:
    """Serve `registry` on host:port (in a thread); None when off (port 0) or the port is taken.

    A taken port is logged, not fatal: a worker that cannot expose metrics should still do its work.
    """
    if not port:
        return None
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as exc:
        log.error("metrics endpoint not started on %s:%d: %s", host, port, exc,
                  extra={"scope": "metrics.bind_failed"})
        return None
    log.info("metrics on http://%s:%d/metrics", host, port, extra={"scope": "metrics.serving"})
    return server
