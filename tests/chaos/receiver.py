"""The recording webhook receiver of the chaos suite: verifies each delivery's signature, can be slowed,
honours the Idempotency-Key as the webhook connector asks of every receiver, and records for every
delivery its key, when it arrived, and whether it *completed* or was *replayed*.

A delivery completes when the receiver has done its work (the step's effect) and hands its 200 back
to a sender that is still there to read it. A sender killed while the receiver works (kill -9
mid-step) never learns the outcome: its delivery is recorded as abandoned. A delivery whose key the
receiver has already done is replayed: answered 200 at once, with no second effect, as a receiver
that de-duplicates on the key does. That is at-least-once delivery meeting an idempotent receiver;
it follows only a dispatcher that died between a step's answer and its report (the suite checks
this: no other scenario may replay). The same key completed twice is a duplicated effect the key
could not absorb: two workers ran the step at once (a lease that ran out under a live dispatcher).
"""

import hashlib
import hmac
import json
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(slots=True)
class Delivery:
    key: str
    approval_id: str
    arrived: float  # time.time()
    finished: float = 0.0
    signature_ok: bool = False
    completed: bool = False  # the 200 reached a sender still connected
    replayed: bool = False  # its key was already done: answered from the record, no second effect


@dataclass
class Receiver:
    secret: str
    delay_s: float = 0.0  # every delivery takes this long (0: answer at once)
    slow_every: int = 0  # with slow_delay_s: every Nth delivery takes slow_delay_s instead
    slow_delay_s: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # keys whose effect the receiver has performed
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.request_queue_size = 256
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        threading.Thread(target=server.serve_forever, name="chaos-receiver", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _delay(self) -> float:
        with self.lock:
            n = len(self.deliveries)
        if self.slow_every and n % self.slow_every == 0:
            return self.slow_delay_s
        return self.delay_s

    # ---------------------------------------------------------------- the audit's view

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def completions(self) -> Counter[str]:
        return Counter(d.key for d in self.snapshot() if d.completed)

    def replays(self) -> list[Delivery]:
        return [d for d in self.snapshot() if d.replayed]

    def reached(self) -> set[str]:
        """Keys that reached the receiver with a valid signature, completed or not."""
        return {d.key for d in self.snapshot() if d.signature_ok}

    def completed_at(self) -> dict[str, float]:
        """When each key first completed."""
        first: dict[str, float] = {}
        for d in self.snapshot():
            if d.completed and d.key not in first:
                first[d.key] = d.finished
        return first


def _verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def _peer_gone(sock: socket.socket) -> bool:
    """The sender closed its end (it was killed): nothing is waiting for our answer."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _handler(state: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body: dict[str, Any] = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            delivery = Delivery(key=self.headers.get("Idempotency-Key", ""),
                                approval_id=str(body.get("approvalId", "")), arrived=time.time())
            delivery.signature_ok = _verify(state.secret, self.headers.get("X-PJ-Timestamp", ""), raw,
                                            self.headers.get("X-PJ-Signature", ""))
            delay = state._delay()
            with state.lock:
                delivery.replayed = delivery.signature_ok and delivery.key in state.done
                state.deliveries.append(delivery)
            if delay and not delivery.replayed:
                time.sleep(delay)
            status = 200 if delivery.signature_ok else 401
            if status == 200 and not delivery.replayed:
                with state.lock:  # the effect is done, whether or not the sender is still there
                    state.done.add(delivery.key)
            answer = json.dumps({"ok": status == 200, "replayed": delivery.replayed}).encode()
            gone = _peer_gone(self.connection)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                self.wfile.flush()
                sent = True
            except OSError:
                sent = False
            delivery.finished = time.time()
            delivery.completed = status == 200 and sent and not gone and not delivery.replayed

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
