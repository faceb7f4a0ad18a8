"""Markdown tables of one bench run, for docs/performance.md: `python -m bench.report [results.json]`.

Prints the figures beside their targets, CPU ms per lifecycle by process, the per-lifecycle counts and
memory, from bench/results/latest.json unless another file is named.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def targets_table(report: dict[str, Any]) -> list[str]:
    lines = ["| scenario | figure | measured | target | met |", "|---|---|---|---|---|"]
    for row in report.get("targets_checked", []):
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['scenario']} | {row['metric']} ({row['unit']}) | {_fmt(row['value'])} | "
                     f"{_fmt(row['target'])} | {met} |")
    return lines


def cpu_table(report: dict[str, Any]) -> list[str]:
    scenarios = report["scenarios"]
    names = [n for n in ("lifecycle", "execute", "lifecycle_1", "read") if "cpu_ms_per_op" in scenarios.get(n, {})]
    parts = ["gateway", "approvals", "dispatcher-1", "postgres", "rabbitmq", "services", "system", "driver",
             "webhook-receiver"]
    lines = ["| CPU ms per operation | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(_fmt(scenarios[n]["cpu_ms_per_op"].get(part)) for n in names) + " |")
    lines.append("| driver ms per HTTP request | "
                 + " | ".join(_fmt(scenarios[n].get("driver_cpu_ms_per_request")) for n in names) + " |")
    lines.append("| machine utilization | "
                 + " | ".join(_fmt(scenarios[n]["machine"]["utilization"]) for n in names) + " |")
    lines.append("| untracked busy CPU s (other work) | "
                 + " | ".join(_fmt(scenarios[n]["machine"]["untracked_busy_s"]) for n in names) + " |")
    return lines


def counts_table(report: dict[str, Any]) -> list[str]:
    c = report["scenarios"].get("counts")
    if not c:
        return ["(no counts scenario in this run)"]
    http = c.get("http_requests") or {}
    logs = c.get("log_lines") or {}
    rows = [
        ("SQL statements", c.get("statements"),
         ", ".join(f"{k} {_fmt(v)}" for k, v in (c.get("statements_by_kind") or {}).items() if abs(v) >= 0.05)),
        ("transactions (xact_commit + rollback)", c.get("transactions"), ""),
        ("AMQP publishes", c.get("amqp_publishes"), ", ".join(f"{k} {_fmt(v)}" for k, v in
                                                             (c.get("amqp_publishes_by_kind") or {}).items())),
        ("RPC round trips", c.get("rpc_round_trips"), ", ".join(f"{k} {_fmt(v)}" for k, v in
                                                               (c.get("rpc_by_command") or {}).items())),
        ("HTTP requests to the gateway", http.get("gateway"), ""),
        ("HTTP requests to connectors (webhook)", http.get("connector_calls"),
         f"duplicates {http.get('connector_duplicates')}"),
        ("log lines", logs.get("total"), ", ".join(f"{k} {_fmt(v)}" for k, v in logs.items() if k != "total")),
    ]
    lines = [f"Counted over {c.get('lifecycles')} lifecycles at 4 in flight, idle rate subtracted.", "",
             "| per lifecycle | count | by kind |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(value)} | {detail} |" for name, value, detail in rows]
    return lines


def memory_table(report: dict[str, Any]) -> list[str]:
    whole = report["meta"].get("rss_mb_whole_run") or {}
    soak = (report["scenarios"].get("soak") or {}).get("rss_mb") or {}
    lines = ["| RSS MB | start | end | max |" + (" soak start | soak end | soak max |" if soak else ""),
             "|---|---|---|---|" + ("---|---|---|" if soak else "")]
    for name, m in whole.items():
        row = f"| {name} | {m['start_mb']} | {m['end_mb']} | {m['max_mb']} |"
        if soak:
            s = soak.get(name, {})
            row += f" {s.get('start_mb', '-')} | {s.get('end_mb', '-')} | {s.get('max_mb', '-')} |"
        lines.append(row)
    return lines


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results" / "latest.json"
    report = json.loads(path.read_text())
    meta = report["meta"]
    print(f"Run {meta['timestamp']}, commit {str(meta['machine'].get('git_commit'))[:10]}"
          f"{' (dirty tree)' if meta['machine'].get('git_dirty') else ''}, {meta['machine']['nproc']} cores, "
          f"load average before {meta['machine']['loadavg_before']}, client {meta['options']['client']}.\n")
    for table in (targets_table, cpu_table, counts_table, memory_table):
        print("\n".join(table(report)) + "\n")


if __name__ == "__main__":
    main()
