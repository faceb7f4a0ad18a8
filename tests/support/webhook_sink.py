"""A webhook receiver on 127.0.0.1 that verifies PJ signatures and records what it got.

Run alone (`python tests/support/webhook_sink.py --port 9099`) it logs each delivery as JSON; tests
start it in a thread and read `deliveries`. `fail_next` makes it answer errors, to exercise retries.
"""

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool


@dataclass
class SinkState:
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before succeeding
    retry_after: str | None = None  # sent with every 429/503 from fail_next
    redirect_to: str | None = None  # answer 302 to this location instead of accepting
    attempts: int = 0  # every POST received, accepted or not
    lock: threading.Lock = field(default_factory=threading.Lock)
    echo: bool = False
    url: str = ""
    delay_s: float = 0.0  # answer this much later, so concurrent work is visible


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def make_handler(state: SinkState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep connections open between deliveries, as real receivers do.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if state.delay_s:
                time.sleep(state.delay_s)
            ok = verify(state.secret, self.headers.get("X-PJ-Timestamp", ""), raw,
                        self.headers.get("X-PJ-Signature", ""))
            with state.lock:
                state.attempts += 1
                if state.redirect_to is not None:
                    status = 302
                else:
                    status = state.fail_next.pop(0) if state.fail_next else (200 if ok else 401)
                if status == 200:
                    delivery = Delivery(self.path, dict(self.headers), json.loads(raw or b"null"), ok)
                    state.deliveries.append(delivery)
            if status == 200 and state.echo:
                print(json.dumps({"received": delivery.body, "idempotencyKey": self.headers.get("Idempotency-Key"),
                                  "signatureOk": ok}), flush=True)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", state.redirect_to or "")
            if status in (429, 503) and state.retry_after is not None:
                self.send_header("Retry-After", state.retry_after)
            answer = json.dumps({"ok": status == 200}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start_sink(secret: str, port: int = 0) -> tuple[ThreadingHTTPServer, SinkState]:
    """Serve on 127.0.0.1:`port` (0 = any free port) in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state := SinkState(secret=secret)))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@contextlib.contextmanager
def serving_sink(secret: str) -> Iterator[SinkState]:
    """A sink on a free port of 127.0.0.1 for as long as the block runs (a fixture's lifetime)."""
    server, state = start_sink(secret)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    args = parser.parse_args()
    secret = os.environ.get("PJ_WEBHOOK_SECRET", "")
    state = SinkState(secret=secret, echo=True)
    # Stop on SIGINT and SIGTERM even when started in the background, where SIGINT is ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    print(json.dumps({"listening": f"http://{args.host}:{args.port}"}), file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
