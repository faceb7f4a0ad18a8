"""`make bench`: start an isolated system, drive HTTP load at it, write figures as JSON and a chart.

The driver starts its own gateway, approvals service and N dispatchers (like `make up`, but with its
own database, broker prefix, port, JWT secret and webhook receiver), runs each scenario for a bounded
time after a warm-up, records throughput, latency percentiles, errors by status and the CPU seconds
each process used, then stops everything and deletes its queues and exchanges, even on failure.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support.webhook_sink and the workspace packages
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from pj_approvals import store  # noqa: E402
from pj_common.auth import mint_token  # noqa: E402
from pj_common.topology import Topology  # noqa: E402
from tests.support.system import System, delete_topology, free_port, with_dbname  # noqa: E402


def _skip_failed_sniffio_import() -> bool:
    """Spare the driver httpcore's failed `import sniffio` on every request (this process only).

    httpcore 1.0's `current_async_library()` runs `import sniffio` each time it makes a lock or event and
    answers "asyncio" when that fails; anyio 4.x no longer installs sniffio, so every call scans sys.path
    for it (a quarter of the driver's CPU at 32 connections). Give the fallback's answer directly. The
    services are started as installed (the dispatcher's httpx pays the same cost: see bench/README.md).
    """
    try:
        import sniffio  # noqa: F401
    except ImportError:
        from httpcore import _synchronization

        if callable(getattr(_synchronization, "current_async_library", None)):
            _synchronization.current_async_library = lambda: "asyncio"  # type: ignore[assignment]
            return True
    return False


SNIFFIO_FALLBACK_PATCHED = _skip_failed_sniffio_import()
SCENARIOS = ("execute", "lifecycle", "read")
# The original system's figures on 2 cores (ARCHITECTURE.md): what this one is compared with.
TARGETS = {"lifecycle_per_s": 420, "execute_per_s": 850}
TARGET_BY_SCENARIO = {"execute": "execute_per_s", "lifecycle": "lifecycle_per_s"}
CSRF = {"X-PuddleJumper-Request": "true"}
ISSUER, AUDIENCE = "puddlejumper", "pj-approval-gate"
TENANT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HTTP_TIMEOUT_S = 30.0  # longer than PJ_DISPATCH_WAIT_S (10 s), so a slow dispatch shows as 202, not a timeout
MAX_OPS_PER_WORKER = 1_000_000  # every load loop is bounded in count as well as in time
READ_POOL_MIN = 200  # approvals the read scenario picks from; topped up with executes if fewer exist


def env_default(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(env_default("BENCH_SECONDS", "10")),
                        help="measured duration of each scenario (BENCH_SECONDS, default 10)")
    parser.add_argument("--warmup", type=float, default=float(env_default("BENCH_WARMUP", "2")),
                        help="unmeasured load before each scenario's measurement (BENCH_WARMUP, default 2)")
    parser.add_argument("--concurrency", type=int, default=int(env_default("BENCH_CONCURRENCY", "32")),
                        help="HTTP requests in flight (BENCH_CONCURRENCY, default 32)")
    parser.add_argument("--dispatchers", type=int, default=int(env_default("BENCH_DISPATCHERS", "1")),
                        help="dispatcher processes (BENCH_DISPATCHERS, default 1)")
    parser.add_argument("--scenarios", default=env_default("BENCH_SCENARIOS", ",".join(SCENARIOS)),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (BENCH_SCENARIOS)")
    parser.add_argument("--client", choices=("per-worker", "shared"), default=env_default("BENCH_CLIENT", "per-worker"),
                        help="one keep-alive connection per worker, or one shared pool of --concurrency connections"
                             " (BENCH_CLIENT, default per-worker)")
    parser.add_argument("--database", default=env_default("BENCH_DATABASE", "pj_bench"),
                        help="database to drop and recreate (BENCH_DATABASE, default pj_bench)")
    parser.add_argument("--log-level", default=env_default("BENCH_LOG_LEVEL", "INFO"),
                        help="PJ_LOG_LEVEL of the services (BENCH_LOG_LEVEL, default INFO as in prod)")
    parser.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(REPO / "bench" / "results"))),
                        help="results directory (BENCH_OUT, default bench/results)")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    if args.seconds <= 0 or args.seconds > 600 or args.warmup < 0 or args.warmup > 120:
        parser.error("--seconds must be in (0, 600] and --warmup in [0, 120]")
    if not 1 <= args.concurrency <= 1024 or not 1 <= args.dispatchers <= 32:
        parser.error("--concurrency must be in 1..1024 and --dispatchers in 1..32")
    return args


# ---------------------------------------------------------------------------------------------------
# CPU accounting from /proc


def proc_ticks(pid: int | str) -> tuple[int, int, str, int]:
    """(utime+stime, cutime+cstime, comm, ppid) of a process, in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17, ppid 4.
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), comm, int(fields[1])


def server_cpu_ticks(comm_name: str) -> int | None:
    """Machine-wide CPU of every process named `comm_name` (PostgreSQL, RabbitMQ), children included.

    Live processes count their own time; processes that exited meanwhile (a backend that closed) have
    been added to their parent's cutime/cstime when it reaped them, so the root's cutime counts them.
    """
    total, found = 0, False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            own, children, comm, ppid = proc_ticks(entry.name)
        except (OSError, ValueError, IndexError):
            continue
        if comm != comm_name:
            continue
        found = True
        total += own
        try:
            parent_comm = proc_ticks(ppid)[2] if ppid > 1 else ""
        except (OSError, ValueError, IndexError):
            parent_comm = ""
        if parent_comm != comm_name:  # the root of this server's process tree reaps its children
            total += children
    return total if found else None


def machine_ticks() -> tuple[int, int]:
    """(busy, idle) ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy, idle


@dataclass
class CpuSnapshot:
    at: float
    ticks: dict[str, int | None]
    machine: tuple[int, int]


def cpu_snapshot(pids: dict[str, int]) -> CpuSnapshot:
    ticks: dict[str, int | None] = {}
    for name, pid in pids.items():
        try:
            ticks[name] = proc_ticks(pid)[0]
        except (OSError, ValueError, IndexError):
            ticks[name] = None
    ticks["postgres"] = server_cpu_ticks("postgres")
    ticks["rabbitmq"] = server_cpu_ticks("beam.smp")
    return CpuSnapshot(time.monotonic(), ticks, machine_ticks())


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> tuple[dict[str, float | None], dict[str, float]]:
    """CPU seconds per process between two snapshots, and the machine's busy/idle seconds."""
    cpu: dict[str, float | None] = {}
    for name, start in before.ticks.items():
        end = after.ticks.get(name)
        cpu[name] = None if start is None or end is None else round((end - start) / CLK_TCK, 3)
    busy = (after.machine[0] - before.machine[0]) / CLK_TCK
    idle = (after.machine[1] - before.machine[1]) / CLK_TCK
    tracked = sum(v for v in cpu.values() if v is not None)
    wall = after.at - before.at
    machine = {"wall_s": round(wall, 3), "busy_s": round(busy, 3), "idle_s": round(idle, 3),
               "utilization": round(busy / (busy + idle), 3) if busy + idle else 0.0,
               "untracked_busy_s": round(busy - tracked, 3)}
    return cpu, machine


# ---------------------------------------------------------------------------------------------------
# The system under test


def _serve_sink(conn: Any, secret: str) -> None:
    """The webhook receiver in a process of its own, so its CPU is not counted as the driver's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops it
    from http.server import ThreadingHTTPServer

    from tests.support.webhook_sink import start_sink

    # socketserver listens with a backlog of 5; the sink answers HTTP/1.0 (a connection per delivery),
    # so 16 deliveries at once overflowed it and the dropped SYNs came back a second later as 1 s stalls.
    ThreadingHTTPServer.request_queue_size = 128

    server, state = start_sink(secret)
    conn.send(state.url)
    try:
        while True:
            message = conn.recv()
            if message == "stats":
                with state.lock:
                    conn.send({"deliveries": len(state.deliveries),
                               "signature_failures": sum(not d.signature_ok for d in state.deliveries)})
            elif message == "stop":
                break
    except (EOFError, OSError):  # the driver went away
        pass
    finally:
        server.shutdown()
        server.server_close()


class Sink:
    def __init__(self, secret: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_sink, args=(child, secret), name="bench-webhook-sink", daemon=True)
        self.process.start()
        if not self._conn.poll(20):
            raise RuntimeError("the webhook sink did not start within 20 s")
        self.url: str = self._conn.recv()

    def stats(self) -> dict[str, int]:
        self._conn.send("stats")
        if not self._conn.poll(10):
            raise RuntimeError("the webhook sink did not answer")
        return dict(self._conn.recv())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# ---------------------------------------------------------------------------------------------------
# Load


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (nearest rank) in milliseconds, from seconds."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(-(-p * len(ordered) // 100)) - 1))] * 1000, 2)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1] * 1000, 2)}


class Window:
    """The measured interval [start, end] and what happened inside it (and outside, for the errors)."""

    def __init__(self, warmup: float, seconds: float) -> None:
        now = time.monotonic()
        self.start = now + warmup
        self.end = self.start + seconds
        self.ops = 0
        self.latencies: list[float] = []
        self.phases: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.errors_outside: Counter[str] = Counter()

    def inside(self, t: float) -> bool:
        return self.start <= t <= self.end

    def phase(self, name: str, started: float, finished: float) -> None:
        if self.inside(finished):
            self.phases.setdefault(name, []).append(finished - started)

    def done(self, started: float, finished: float) -> None:
        if self.inside(finished):
            self.ops += 1
            self.latencies.append(finished - started)

    def error(self, key: str, at: float) -> None:
        (self.errors if self.inside(at) else self.errors_outside)[key] += 1


class Failed(Exception):
    """One operation did not succeed; `key` is how it is counted (an HTTP status, or an exception name)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass
class Load:
    clients: list[httpx.AsyncClient]
    operator: dict[str, str]
    admin: dict[str, str]
    reader: dict[str, str]
    pending_ids: list[str] = field(default_factory=list)
    dispatched_ids: list[str] = field(default_factory=list)
    read_ids: list[str] = field(default_factory=list)

    def remember(self, pool: list[str], approval_id: str) -> None:
        if len(pool) < 2000:
            pool.append(approval_id)


def http_clients(base_url: str, concurrency: int, mode: str) -> list[httpx.AsyncClient]:
    """HTTP/1.1 keep-alive clients whose pools add up to `concurrency` connections.

    per-worker (default): one client of one connection per worker. shared: one client whose pool has
    `concurrency` connections; httpcore 1.0 checks every idle connection of a pool (a poll(2) each) on
    every request, so at 32 connections the driver spends ~4x the CPU per request (see bench/README.md).
    """
    def client(connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=HTTP_TIMEOUT_S, http1=True, http2=False,
                                 trust_env=False, verify=False)  # plain http to 127.0.0.1: no TLS context

    return [client(concurrency)] if mode == "shared" else [client(1) for _ in range(concurrency)]


async def request(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str],
                  body: Any = None, expect: int = 200) -> httpx.Response:
    try:
        response = await client.request(method, url, headers=headers, json=body)
    except httpx.HTTPError as exc:
        raise Failed(type(exc).__name__) from exc
    if response.status_code != expect:
        raise Failed(str(response.status_code))
    return response


async def timed(window: Window, phase: str | None, call: Awaitable[httpx.Response]) -> httpx.Response:
    started = time.monotonic()
    try:
        response = await call
    except Failed as exc:
        raise Failed(f"{phase}:{exc.key}" if phase else exc.key) from exc
    if phase:
        window.phase(phase, started, time.monotonic())
    return response


def execute_body(i: int) -> dict[str, Any]:
    return {"actionId": "notify.webhook", "mode": "execute", "payload": {"message": "bench", "n": i}}


async def op_execute(load: Load, client: httpx.AsyncClient, window: Window, i: int) -> None:
    response = await request(client, "POST", "/api/pj/execute", load.operator, execute_body(i), expect=202)
    load.remember(load.pending_ids, response.json()["approvalId"])


async def op_lifecycle(load: Load, client: httpx.AsyncClient, window: Window, i: int) -> None:
    response = await timed(window, "execute", request(
        client, "POST", "/api/pj/execute", load.operator, execute_body(i), expect=202))
    approval_id = response.json()["approvalId"]
    await timed(window, "decide", request(
        client, "POST", f"/api/approvals/{approval_id}/decide", load.admin,
        {"status": "approved", "note": "bench"}))
    response = await timed(window, "dispatch", request(
        client, "POST", f"/api/approvals/{approval_id}/dispatch", load.admin, {}))
    status = response.json()["data"].get("approvalStatus")
    if status != "dispatched":  # dispatch_failed, or still running: not a completed lifecycle
        raise Failed(f"dispatch:200:{status}")
    load.remember(load.dispatched_ids, approval_id)


async def op_read(load: Load, client: httpx.AsyncClient, window: Window, i: int) -> None:
    if i % 2:
        await timed(window, "count_pending", request(client, "GET", "/api/approvals/count/pending", load.reader))
    else:
        approval_id = random.choice(load.read_ids)
        await timed(window, "get", request(client, "GET", f"/api/approvals/{approval_id}", load.reader))


OPS: dict[str, Callable[[Load, httpx.AsyncClient, Window, int], Awaitable[None]]] = {
    "execute": op_execute, "lifecycle": op_lifecycle, "read": op_read,
}


async def run_load(name: str, load: Load, args: argparse.Namespace, pids: dict[str, int],
                   system: System, sink: Sink) -> dict[str, Any]:
    """`concurrency` workers, each running `name`'s operation back to back; measure the window."""
    op = OPS[name]
    window = Window(args.warmup, args.seconds)
    snapshots: dict[str, CpuSnapshot] = {}
    deliveries: dict[str, int] = {}

    async def worker(w: int) -> None:
        client = load.clients[w % len(load.clients)]
        for n in range(MAX_OPS_PER_WORKER):
            started = time.monotonic()
            if started >= window.end:
                return
            try:
                await op(load, client, window, w * MAX_OPS_PER_WORKER + n)
            except Failed as exc:
                window.error(exc.key, time.monotonic())
            except (KeyError, ValueError, TypeError) as exc:  # an answer of an unexpected shape
                window.error(f"bad_response:{type(exc).__name__}", time.monotonic())
            else:
                window.done(started, time.monotonic())

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
        snapshots["start"] = cpu_snapshot(pids)
        deliveries["start"] = sink.stats()["deliveries"]
        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
        snapshots["end"] = cpu_snapshot(pids)
        deliveries["end"] = sink.stats()["deliveries"]

    print(f"[bench] {name}: {args.warmup:g} s warm-up, {args.seconds:g} s measured, "
          f"{args.concurrency} in flight", flush=True)
    sampling = asyncio.create_task(sampler())
    workers = [asyncio.create_task(worker(w)) for w in range(args.concurrency)]
    # Workers stop starting operations at the window's end; the ones in flight finish (each bounded by
    # the HTTP timeout) and are not counted.
    tasks = [sampling, *workers]
    try:
        _, unfinished = await asyncio.wait(tasks, timeout=args.warmup + args.seconds + 3 * HTTP_TIMEOUT_S + 10)
        if unfinished:
            raise RuntimeError(f"{name}: {len(unfinished)} load task(s) still running long after the window")
        for task in tasks:
            task.result()  # a bug in the driver surfaces here
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    system.check_alive()

    cpu, machine = cpu_between(snapshots["start"], snapshots["end"])
    seconds = snapshots["end"].at - snapshots["start"].at
    ops = window.ops
    services = [k for k in cpu if k in ("gateway", "approvals") or k.startswith("dispatcher-")]
    groups = {
        "services": sum(cpu[k] or 0.0 for k in services),
        "system": sum(cpu[k] or 0.0 for k in (*services, "postgres", "rabbitmq")),
    }
    cpu_ms_per_op = {k: (round(v * 1000 / ops, 3) if ops and v is not None else None)
                     for k, v in {**cpu, **groups}.items()}
    result: dict[str, Any] = {
        "ops": ops,
        "seconds": round(seconds, 3),
        "rate_per_s": round(ops / seconds, 1) if seconds else 0.0,
        "latency_ms": percentiles(window.latencies),
        "errors": dict(sorted(window.errors.items())),
        "error_count": sum(window.errors.values()),
        "errors_outside_window": dict(sorted(window.errors_outside.items())),
        "cpu_s": {**cpu, **{k: round(v, 3) for k, v in groups.items()}},
        "cpu_ms_per_op": cpu_ms_per_op,
        "machine": machine,
        "concurrency": args.concurrency,
        "webhook_deliveries": deliveries["end"] - deliveries["start"],
    }
    if window.phases:
        result["phases"] = {p: {"count": len(v), "latency_ms": percentiles(v)} for p, v in window.phases.items()}
    return result


async def ensure_read_pool(load: Load, minimum: int = READ_POOL_MIN) -> int:
    """Give the read scenario approvals to GET, pending and dispatched ones alike (it may run alone)."""
    missing = max(0, minimum - len(load.pending_ids) - len(load.dispatched_ids))
    for i in range(missing):
        response = await request(load.clients[0], "POST", "/api/pj/execute", load.operator,
                                 execute_body(-1 - i), expect=202)
        load.remember(load.pending_ids, response.json()["approvalId"])
    load.read_ids = load.pending_ids + load.dispatched_ids
    return missing


# ---------------------------------------------------------------------------------------------------
# Facts, results and the chart


def git(*argv: str) -> str | None:
    try:
        out = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


async def server_versions(database_url: str, amqp_url: str) -> dict[str, str | None]:
    import aio_pika

    facts: dict[str, str | None] = {"postgres": None, "rabbitmq": None}
    with contextlib.suppress(Exception):
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SHOW server_version")
            row = await cur.fetchone()
            facts["postgres"] = str(row[0]) if row else None
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            version = connection.transport.connection.server_properties.get("version")
            facts["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
    return facts


async def pending_approvals(database_url: str) -> int | None:
    """How many pending approvals the bench tenant has: GET /count/pending reads every one of them."""
    with contextlib.suppress(Exception):
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SELECT count(*) FROM approvals WHERE tenant_id = %s AND approval_status = "
                                     "'pending'", (TENANT,))
            row = await cur.fetchone()
            return int(row[0]) if row else None
    return None


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    import httpx as _httpx
    import uvloop

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "httpx": _httpx.__version__,
        "uvloop": uvloop.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "loadavg_before": list(os.getloadavg()),
    }


def render_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report["scenarios"]
    names = list(scenarios)
    fig, (ax_rate, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(17, 6), gridspec_kw={"width_ratios": [1, 1.5, 1.2]})
    meta = report["meta"]
    fig.suptitle(f"make bench {meta['timestamp']}  commit {str(meta['machine'].get('git_commit'))[:10]}"
                 f"{' (dirty)' if meta['machine'].get('git_dirty') else ''}  {meta['machine']['nproc']} cores  "
                 f"concurrency {meta['options']['concurrency']}  dispatchers {meta['options']['dispatchers']}  "
                 f"{meta['options']['seconds']:g} s each", fontsize=11)

    # 1. rate per scenario, with the original system's figures as reference lines.
    rates = [scenarios[n]["rate_per_s"] for n in names]
    bars = ax_rate.bar(names, rates, 0.6, color="#4c72b0")
    for i, (bar, n) in enumerate(zip(bars, names, strict=True)):
        errors = scenarios[n]["error_count"]
        label = f"{rates[i]:.0f}/s" + (f"\n{errors} errors" if errors else "")
        ax_rate.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                         fontsize=9, color="#c44e52" if errors else "black")
        target_key = TARGET_BY_SCENARIO.get(n)
        if target_key:
            target = report["targets"][target_key]
            ax_rate.hlines(target, bar.get_x() - 0.1, bar.get_x() + bar.get_width() + 0.1, colors="#dd8452",
                           linestyles="--", linewidth=2)
            ax_rate.annotate(f"original {target}/s", (bar.get_x() + bar.get_width() / 2, target), ha="center",
                             va="bottom", fontsize=8, color="#dd8452", xytext=(0, 2), textcoords="offset points")
    top = max([*rates, *report["targets"].values()]) * 1.2
    ax_rate.set_ylim(0, top)
    ax_rate.set_ylabel("operations / s (lifecycle = execute+decide+dispatch)")
    ax_rate.set_title("throughput (dashed: original system, 2 cores)")

    # 2. latency percentiles: each scenario's operation, then the lifecycle's and read's phases.
    groups: list[tuple[str, dict[str, Any]]] = []
    for n in names:
        groups.append((n, scenarios[n]["latency_ms"]))
        for phase, figures in scenarios[n].get("phases", {}).items():
            groups.append((f"{n}/{phase}", figures["latency_ms"]))
    width = 0.27
    for k, (pct, color) in enumerate((("p50", "#55a868"), ("p95", "#4c72b0"), ("p99", "#c44e52"))):
        xs = [i + (k - 1) * width for i in range(len(groups))]
        ax_lat.bar(xs, [g[1][pct] or 0 for g in groups], width, label=pct, color=color)
    ax_lat.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=30, ha="right", fontsize=8)
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("latency percentiles")
    ax_lat.legend()

    # 3. where the CPU goes: CPU ms per operation, stacked by process.
    parts = [k for k in next(iter(scenarios.values()))["cpu_ms_per_op"] if k not in ("services", "system")]
    colors = plt.get_cmap("tab10")
    bottoms = [0.0] * len(names)
    for j, part in enumerate(parts):
        values = [scenarios[n]["cpu_ms_per_op"].get(part) or 0.0 for n in names]
        ax_cpu.bar(names, values, 0.6, bottom=bottoms, label=part, color=colors(j % 10))
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, total in enumerate(bottoms):
        ax_cpu.annotate(f"{total:.2f}", (i, total), ha="center", va="bottom", fontsize=9)
    ax_cpu.set_ylabel("CPU ms per operation")
    ax_cpu.set_title("CPU per operation by process")
    ax_cpu.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(report: dict[str, Any], out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    render_chart(report, png_path)
    shutil.copyfile(json_path, out / "latest.json")
    shutil.copyfile(png_path, out / "latest.png")
    return json_path, png_path


def summary(report: dict[str, Any]) -> str:
    lines = []
    for name, s in report["scenarios"].items():
        lat = s["latency_ms"]
        cpu = s["cpu_ms_per_op"]
        lines.append(f"[bench] {name:9s} {s['rate_per_s']:8.1f}/s"
                     f"  p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} ms  errors {s['error_count']}"
                     f"  CPU ms/op services {cpu['services']} system {cpu['system']}"
                     f" driver {cpu['driver']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM (as SIGINT already does under asyncio.Runner) cancels the run, so the cleanup below runs.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    amqp_url = os.environ.get("PJ_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    base_db_url = os.environ.get("PJ_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/pj"
    database_url = with_dbname(base_db_url, args.database)
    admin_url = with_dbname(base_db_url, "postgres")
    prefix = f"pjbench-{uuid.uuid4().hex[:10]}"
    port = free_port()
    jwt_secret = secrets.token_urlsafe(48)
    webhook_secret = secrets.token_urlsafe(24)
    logdir = args.out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)

    meta: dict[str, Any] = {
        "timestamp": stamp,
        "machine": machine_facts(args),
        "options": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency,
                    "dispatchers": args.dispatchers, "client": args.client, "scenarios": args.scenarios,
                    "log_level": args.log_level, "httpcore_sniffio_fallback_patched": SNIFFIO_FALLBACK_PATCHED,
                    "database": args.database, "amqp_prefix": prefix, "gateway_port": port},
        "notes": ["cpu_s.postgres and cpu_s.rabbitmq are machine-wide (every database and vhost); "
                  "machine.untracked_busy_s is CPU used by anything not listed (other work on the machine).",
                  "services = gateway + approvals + dispatchers; system = services + postgres + rabbitmq; "
                  "driver (the load generator) and webhook-sink (the stand-in external API) are outside both."],
    }
    print(f"[bench] database {args.database}, prefix {prefix}, gateway 127.0.0.1:{port}, "
          f"{args.dispatchers} dispatcher(s); logs in {logdir}", flush=True)

    sink = Sink(webhook_secret)
    system: System | None = None
    try:
        await store.drop_database(admin_url, args.database)
        await store.ensure_database(database_url)
        await store.migrate(database_url)
        meta["servers"] = await server_versions(database_url, amqp_url)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PJ_", "BENCH_"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "PJ_ENV": "prod",
            "PJ_JWT_SECRET": jwt_secret,
            "PJ_DATABASE_URL": database_url,
            "PJ_AMQP_URL": amqp_url,
            "PJ_AMQP_PREFIX": prefix,
            "PJ_GATEWAY_HOST": "127.0.0.1",
            "PJ_GATEWAY_PORT": str(port),
            "PJ_WEBHOOK_URL": sink.url,
            "PJ_WEBHOOK_SECRET": webhook_secret,
            "PJ_WEBHOOK_ALLOW_PRIVATE": "1",
            "PJ_LOG_LEVEL": args.log_level,
        })
        system = System(base_url=f"http://127.0.0.1:{port}", env=env, logdir=logdir)
        system.start("approvals", "pj_approvals")
        for i in range(1, args.dispatchers + 1):
            system.start(f"dispatcher-{i}", "pj_dispatcher")
        system.start("gateway", "pj_gateway")
        await system.wait_healthy(timeout=60, dispatchers=args.dispatchers)
        print("[bench] system healthy", flush=True)

        pids = {name: proc.pid for name, proc in system.processes.items()}
        pids["webhook-sink"] = sink.process.pid or 0
        pids["driver"] = os.getpid()

        def headers(role: str, sub: str) -> dict[str, str]:
            token = mint_token(jwt_secret, subject=sub, tenant=TENANT, role=role, issuer=ISSUER, audience=AUDIENCE,
                               ttl_s=3600)
            return {"Authorization": f"Bearer {token}", **CSRF}

        scenarios: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client)
                       for client in http_clients(system.base_url, args.concurrency, args.client)]
            load = Load(clients, operator=headers("operator", "bench-operator"),
                        admin=headers("admin", "bench-admin"), reader=headers("admin", "bench-reader"))
            for name in args.scenarios:
                extra: dict[str, Any] = {}
                if name == "read":
                    extra["seeded"] = await ensure_read_pool(load)
                    extra["id_pool"] = {"pending": len(load.pending_ids), "dispatched": len(load.dispatched_ids)}
                    extra["pending_approvals"] = await pending_approvals(database_url)
                scenarios[name] = await run_load(name, load, args, pids, system, sink)
                scenarios[name].update(extra)
                await asyncio.sleep(1.0)  # let the last replies, events and reports settle between scenarios

        meta["webhook_signature_failures"] = sink.stats()["signature_failures"]
        report = {"meta": meta, "scenarios": scenarios, "targets": TARGETS}
        json_path, png_path = write_results(report, args.out, stamp)
        print(summary(report))
        print(f"[bench] wrote {json_path} and {png_path} (and latest.json / latest.png)", flush=True)
        return 1 if any(s["error_count"] for s in scenarios.values()) else 0
    finally:
        if system is not None:
            system.stop_all()
        sink.stop()
        try:
            await asyncio.wait_for(delete_topology(amqp_url, Topology(prefix)), 30)
        except Exception as exc:  # report, but do not hide the original failure
            print(f"[bench] could not delete the broker topology {prefix}.*: {exc!r}", file=sys.stderr)
        print("[bench] stopped the system and deleted its queues and exchanges", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import uvloop

    try:
        code = uvloop.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("[bench] interrupted; everything it started has been stopped", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
