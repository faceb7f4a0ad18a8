"""A process's own /metrics endpoint (pj_common.metrics.MetricsServer)."""

import logging
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from pj_common.metrics import MetricsServer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("pj_test_things", "things counted", registry=registry).inc(3)
    return registry


def test_serves_the_registry_and_releases_the_port_on_stop() -> None:
    port = _free_port()
    server = MetricsServer(_registry(), host="127.0.0.1", port=port)
    assert server.start()
    try:
        assert server.serving
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert "pj_test_things_total 3.0" in response.read().decode()
    finally:
        server.stop()
    assert not server.serving
    with socket.socket() as again:  # nothing listens any more: a new server in this process can bind it
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        again.bind(("127.0.0.1", port))
        again.listen()
    server.stop()  # a second stop is harmless


def test_port_zero_means_off() -> None:
    server = MetricsServer(_registry(), host="127.0.0.1", port=0)
    assert not server.start()
    assert not server.serving
    server.stop()


def test_a_taken_port_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(_registry(), host="127.0.0.1", port=taken.getsockname()[1])
        with caplog.at_level(logging.ERROR, logger="pj.metrics"):
            assert not server.start()
    assert [getattr(r, "scope", None) for r in caplog.records] == ["metrics.bind_failed"]
    assert not server.serving
