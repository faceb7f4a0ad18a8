"""`python -m bench.floor` against the real PostgreSQL and RabbitMQ: short windows, every kind of part
(HTTP, AMQP, SQL), figures that are measured (operations and CPU per process), and nothing left behind."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aio_pika
import psycopg

ROOT = Path(__file__).resolve().parents[3]


async def queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
    return True


def test_floor_measures_each_kind_of_part_and_cleans_up(pg_admin_url: str, amqp_url: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.floor", "--seconds", "0.4", "--warmup", "0.2", "--idle", "0.1",
            "--repeat", "1", "--concurrency", "8", "--pool", "4", "--parts", "http,durable_message,sql_update",
            "--pg-url", pg_admin_url, "--amqp-url", amqp_url, "--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = tmp_path.glob("floor-*.json")
    result = json.loads(path.read_text())

    assert result["failed"] == {}
    for unit, processes in {"http_request": {"server"}, "http_client_call": {"client"},
                            "durable_message": {"publisher", "consumer", "broker"},
                            "sql_update": {"client", "backends"}}.items():
        figures = result["units"][unit]
        assert figures["ops"] > 0, unit
        assert set(figures["by_process_ms"]) == processes, unit
        assert figures["ms"] is not None and figures["ms"] > 0, unit
    sql = result["parts"]["sql_update"][0]["window"]
    assert sql["roles_info"]["client"]["synchronous_commit"] == "on"
    assert len(sql["roles_info"]["client"]["backend_pids"]) == 4
    assert sql["cpu_s"]["postgres_backends"] > 0  # the backends' own CPU, found by their pids
    assert result["meta"]["servers"]["broker_pid"] is not None
    assert set(result["floor"]["missing"]) == {"rpc_round_trip", "event_publish", "sql_insert", "sql_select"}
    assert "floor of one lifecycle" in done.stdout

    servers = result["meta"]["servers"]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (servers["scratch_database"],)).fetchone()
    assert left is None, "the scratch database was not dropped"
    assert not asyncio.run(queue_exists(amqp_url, f"{servers['amqp_prefix']}.orders")), "the queue was not deleted"

