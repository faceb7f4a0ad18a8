"""The bench's webhook receiver: the stand-in for the external API that `notify.webhook` calls.

It must cost little and answer at once, or the bench measures it instead of the system: asyncio on
uvloop in a process of its own (its CPU is reported apart), HTTP/1.1 keep-alive, TCP_NODELAY, and each
answer's status line, headers and body in one write. (A receiver that writes headers and body
separately makes the dispatcher's next request on that connection wait for a delayed ACK, ~40 ms.)

Every POST's signature is verified as tests/support/webhook_sink.py does (HMAC-SHA256 over
`timestamp.body`), and deliveries are counted per Idempotency-Key, so a duplicate delivery shows.
`delay` makes every answer that much later (the dispatch-scaling scenario: a slow external API).
`GET /ping` answers at once, for measuring a client alone.

The driver controls it with JSON lines on its stdin: "stats", ["delay", seconds], "reset", "stop"; it
answers each (but "stop") with a JSON line of counts on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

_CRLF2 = b"\r\n\r\n"
_OK = b'{"ok":true}'
_ANSWERS = {
    200: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n" + _OK,
    401: b'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok":false}',
    400: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
}


class Stats:
    def __init__(self) -> None:
        self.deliveries = 0
        self.signature_failures = 0
        self.pings = 0
        self.connections = 0
        self.keys: dict[str, int] = {}
        self.delay_s = 0.0

    def snapshot(self) -> dict[str, Any]:
        duplicates = sum(n - 1 for n in self.keys.values() if n > 1)
        return {"deliveries": self.deliveries, "signature_failures": self.signature_failures,
                "distinct_keys": len(self.keys), "duplicate_deliveries": duplicates, "pings": self.pings,
                "connections": self.connections}


def _header(head: bytes, raw: bytes, name: bytes) -> bytes:
    """The value (as sent) of header `name` (lower case, with its colon), found in the lower-cased head."""
    at = head.find(b"\r\n" + name)
    if at < 0:
        return b""
    start = at + 2 + len(name)
    stop = head.find(b"\r\n", start)
    return raw[start: stop if stop > 0 else len(raw)].strip()


class _Server(asyncio.Protocol):
    def __init__(self, secret: bytes, stats: Stats) -> None:
        self._secret = secret
        self._stats = stats
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._stats.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:  # a client may pipeline; answer every complete request in order
            answer = self._next()
            if answer is None:
                return
            self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        delay = self._stats.delay_s
        if delay > 0 and answer is not _ANSWERS[400]:
            asyncio.get_running_loop().call_later(delay, self._write, answer)
        else:
            self._write(answer)

    def _write(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)  # status line, headers and body in one write
            if answer is _ANSWERS[400]:
                self._transport.close()

    def _next(self) -> bytes | None:
        buf = self._buffer
        end = buf.find(_CRLF2)
        if end < 0:
            return None
        raw_head = bytes(buf[:end])
        head = raw_head.lower()
        length_text = _header(head, raw_head, b"content-length:")
        try:
            length = int(length_text) if length_text else 0
        except ValueError:
            del buf[:]
            return _ANSWERS[400]
        if len(buf) < end + 4 + length:
            return None
        body = bytes(buf[end + 4: end + 4 + length])
        del buf[: end + 4 + length]
        if head.startswith(b"get /ping"):
            self._stats.pings += 1
            return _ANSWERS[200]
        if not head.startswith(b"post "):
            return _ANSWERS[400]
        timestamp = _header(head, raw_head, b"x-pj-timestamp:")
        signature = _header(head, raw_head, b"x-pj-signature:")
        expected = b"sha256=" + hmac.new(self._secret, timestamp + b"." + body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, signature):
            self._stats.signature_failures += 1
            return _ANSWERS[401]
        key = _header(head, raw_head, b"idempotency-key:")
        keys = self._stats.keys
        name = key.decode(errors="replace")
        keys[name] = keys.get(name, 0) + 1
        self._stats.deliveries += 1
        return _ANSWERS[200]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def main() -> None:
    """The receiver's process: listen on 127.0.0.1, print the URL, obey the JSON lines on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops it
    import uvloop

    uvloop.run(_serve(os.environ.get("BENCH_RECEIVER_SECRET", "")))


def _reply(message: dict[str, Any] | str) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve(secret: str) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: _Server(secret.encode(), stats), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    _reply({"url": f"http://127.0.0.1:{port}/hook"})
    stopped = loop.create_future()
    pending = bytearray()

    def on_command() -> None:
        data = os.read(0, 4096)
        if not data:  # the driver went away
            data = b'"stop"\n'
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            message = json.loads(line)
            if message == "stats":
                _reply(stats.snapshot())
            elif message == "reset":
                stats.keys.clear()
                _reply(stats.snapshot())
            elif isinstance(message, list) and message[0] == "delay":
                stats.delay_s = float(message[1])
                _reply(stats.snapshot())
            elif message == "stop" and not stopped.done():
                stopped.set_result(None)

    loop.add_reader(0, on_command)
    try:
        await stopped
    finally:
        loop.remove_reader(0)
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


class Receiver:
    """The receiver process, seen from the driver (which talks to it over its stdin and stdout)."""

    def __init__(self, secret: str, cwd: Path) -> None:
        env = {**os.environ, "BENCH_RECEIVER_SECRET": secret, "PYTHONPATH": str(cwd)}
        self.process = subprocess.Popen([sys.executable, "-m", "bench.receiver"], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.url: str = self._read(20)["url"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"the webhook receiver did not answer within {timeout:g} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the webhook receiver exited ({self.process.poll()})")
        return dict(json.loads(line))

    def _ask(self, message: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()
        return self._read(10)

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def set_delay(self, seconds: float) -> None:
        self._ask(["delay", seconds])

    def reset_keys(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.write(b'"stop"\n')
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


if __name__ == "__main__":
    main()
