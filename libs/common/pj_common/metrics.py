"""Serving a process's own Prometheus registry over HTTP."""

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("pj.metrics")


class MetricsServer:
    """A process's /metrics endpoint, served from a thread of its own between `start` and `stop`."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> bool:
        """Serve the registry on host:port; False when off (port 0) or the port is taken.

        A taken port is logged, not fatal: a worker that cannot expose metrics should still do its work.
        """
        if not self._port or self._server is not None:
            return self._server is not None
        try:
            self._server, self._thread = start_http_server(self._port, self._host, registry=self._registry)
        except OSError as exc:
            log.error("metrics endpoint not started on %s:%d: %s", self._host, self._port, exc,
                      extra={"scope": "metrics.bind_failed"})
            return False
        log.info("metrics on http://%s:%d/metrics", self._host, self._port, extra={"scope": "metrics.serving"})
        return True

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
