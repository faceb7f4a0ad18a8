"""The floor of one lifecycle as arithmetic: what each part costs per unit, times the units a lifecycle takes.

Pure functions, no I/O but reading a counts file: `bench/floor.py` measures the parts and feeds them here.
A unit's cost is the CPU milliseconds of every process of the system it runs in (server, clients, broker,
database backends); the load driver's own CPU is not the system's and is never part of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CORES = 2
# The performance issue's targets for a full lifecycle on 2 cores.
TARGET_LIFECYCLES_PER_S = 420.0
TARGET_SYSTEM_CPU_MS = 4.2

# What one lifecycle takes, from docs/performance.md "Per lifecycle" (`make bench`'s counts scenario:
# 200 lifecycles at 4 in flight, the idle pollers' rate subtracted), with the 4th RPC round trip
# (get_dispatch_plan) and its `claimed_plan` UPDATE that confirming every order brought back (the note
# below that table; the later `aa7ed62` run counted 4 round trips and 15 publishes). Inputs, not
# constants of nature: run `make bench` with the counts scenario and pass `--counts <file.json>`.
LIFECYCLE_COUNTS: dict[str, float] = {
    "http_request": 3,  # to the gateway: execute, decide, dispatch (FastAPI + uvicorn, server side)
    "http_client_call": 1,  # the dispatcher's connector call (client side; the receiver is not the system)
    "rpc_round_trip": 4,  # execute, decide, dispatch, get_dispatch_plan over direct reply-to
    "durable_message": 2,  # the dispatch order and the step result: quorum queue, confirm, manual ack
    "event_publish": 4,  # approval.created/.decided/.dispatch.started/.dispatch.completed, confirmed, unrouted
    "sql_insert": 1,  # INSERT approvals
    # 3 compare-and-sets + claimed_plan, and the outbox/relay writes measured per lifecycle
    # (UPDATE dispatch_outbox 0.6, DELETE dispatch_outbox 0.7, UPDATE event_relay 0.3): one row by key each.
    "sql_update": 5.6,
    "sql_select": 2,  # the approval, its decisions
}

# Other counts to hold the same measured parts against, to tell what the unit costs do from what the
# counts do. Hypothetical, both: no code does either today.
OTHER_COUNTS: dict[str, dict[str, float]] = {
    # What ARCHITECTURE.md's budget of ~3.3 ms assumed: 3 HTTP requests, 3 RPC round trips, 1 durable
    # message, 3 transactions (taken as 1 insert and 2 updates).
    "architecture_budget": {"http_request": 3, "rpc_round_trip": 3, "durable_message": 1, "sql_insert": 1,
                            "sql_update": 2},
    # The lean flow the levers aim at: no plan-confirmation RPC, no pre-reads, the events of a
    # lifecycle in one publish, one compare-and-set per transition (decide, dispatch, finish).
    "lean_flow": {"http_request": 3, "http_client_call": 1, "rpc_round_trip": 3, "durable_message": 2,
                  "event_publish": 1, "sql_insert": 1, "sql_update": 3},
    # Less than the fixed shape can do a lifecycle with: the 3 HTTP requests and the connector call, one
    # RPC round trip per request (the gateway turns each into a command that approvals answers), the
    # dispatch order and the step result (dispatchers are separate processes fed by messages), and one
    # write per transition (the approval, decide, dispatch with its order in the same statement, finish);
    # no event at all (the runbook requires four), no read, no lease renewal.
    "shape_minimum": {"http_request": 3, "http_client_call": 1, "rpc_round_trip": 3, "durable_message": 2,
                      "sql_insert": 1, "sql_update": 3},
}

# What each unit is, for the table and the JSON.
UNITS: dict[str, str] = {
    "http_request": "HTTP request, FastAPI + uvicorn (server CPU)",
    "http_client_call": "HTTP request, lean asyncio client (client CPU)",
    "rpc_round_trip": "RPC over direct reply-to (caller + responder + broker)",
    "durable_message": "persistent message, quorum queue, confirm + manual ack (publisher + consumer + broker)",
    "event_publish": "persistent publish with confirm to a topic exchange, unrouted (publisher + broker)",
    "sql_insert": "INSERT one row, own transaction (client + backend)",
    "sql_update": "UPDATE one row by primary key, own transaction (client + backend)",
    "sql_select": "SELECT one row by primary key (client + backend)",
}

# Left out of the floor on purpose, so it stays a lower bound (each would only add to it).
NOT_COUNTED = (
    "the 5th RPC reply per lifecycle (dispatch's follow-up `.done` reply)",
    "transactions beyond one per statement (the pollers' reads, BEGIN/COMMIT blocks: 12.1 measured against "
    "8.6 statements)",
    "the extra rows the real statements write in their CTEs (8 rows inserted per lifecycle, here 1) and the "
    "indexes of approvals (6, here the primary key only)",
    "the services' own Python: routing, auth, validation, the state machine, logging",
)


# Which process of the system plays each role of a unit, and its share of the unit's count per lifecycle:
# the gateway makes 3 of the 4 RPC calls (the dispatcher the 4th, get_dispatch_plan); approvals publishes
# the order and consumes the step result, the dispatcher the other way round.
PROCESS_SPLIT: dict[tuple[str, str], dict[str, float]] = {
    ("http_request", "server"): {"gateway": 1.0},
    ("http_client_call", "client"): {"dispatcher": 1.0},
    ("rpc_round_trip", "caller"): {"gateway": 0.75, "dispatcher": 0.25},
    ("rpc_round_trip", "responder"): {"approvals": 1.0},
    ("rpc_round_trip", "broker"): {"rabbitmq": 1.0},
    ("durable_message", "publisher"): {"approvals": 0.5, "dispatcher": 0.5},
    ("durable_message", "consumer"): {"dispatcher": 0.5, "approvals": 0.5},
    ("durable_message", "broker"): {"rabbitmq": 1.0},
    ("event_publish", "publisher"): {"approvals": 1.0},
    ("event_publish", "broker"): {"rabbitmq": 1.0},
    **{(unit, "client"): {"approvals": 1.0} for unit in ("sql_insert", "sql_update", "sql_select")},
    **{(unit, "backends"): {"postgresql": 1.0} for unit in ("sql_insert", "sql_update", "sql_select")},
}


def floor_by_process(by_process_ms: Mapping[str, Mapping[str, float | None]],
                     counts: Mapping[str, float]) -> dict[str, float]:
    """The floor divided among the system's processes (PROCESS_SPLIT), to set beside the bench's CPU per
    process; it sums to the floor when every role has a place in the split."""
    out: dict[str, float] = {}
    for unit, roles in by_process_ms.items():
        for role, ms in roles.items():
            if ms is None or not counts.get(unit):
                continue
            for process, share in PROCESS_SPLIT.get((unit, role), {"unplaced": 1.0}).items():
                out[process] = out.get(process, 0.0) + counts[unit] * share * ms
    return out


def max_rate(ms_per_op: float, *, cores: int = CORES) -> float | None:
    """Operations per second that `cores` fully busy CPUs allow at `ms_per_op` of CPU each (None at 0)."""
    if ms_per_op <= 0:
        return None
    return cores * 1000.0 / ms_per_op


def lifecycle_floor(unit_ms: Mapping[str, float | None], counts: Mapping[str, float], *,
                    cores: int = CORES) -> dict[str, Any]:
    """The sum of count x CPU ms per unit, by unit; a unit with a count but no measurement is listed as missing
    (the sum without it is still a lower bound, but a weaker one)."""
    by_unit: dict[str, float] = {}
    missing: list[str] = []
    for unit, count in counts.items():
        if count == 0:
            continue
        ms = unit_ms.get(unit)
        if ms is None:
            missing.append(unit)
            continue
        by_unit[unit] = count * ms
    total = math.fsum(by_unit.values())
    return {"ms_per_lifecycle": total, "by_unit_ms": by_unit, "missing": missing,
            "max_lifecycles_per_s": max_rate(total, cores=cores), "cores": cores}


def against_targets(floor_ms: float, *, rate_target: float = TARGET_LIFECYCLES_PER_S,
                    cpu_target_ms: float = TARGET_SYSTEM_CPU_MS, cores: int = CORES) -> dict[str, Any]:
    """The floor beside the issue's targets: the rate it allows, and how much of the CPU budget it leaves."""
    rate = max_rate(floor_ms, cores=cores)
    return {
        "rate_target_per_s": rate_target,
        "max_rate_per_s": rate,
        "max_rate_over_target": None if rate is None else rate / rate_target,
        "cpu_target_ms": cpu_target_ms,
        "floor_ms": floor_ms,
        "floor_share_of_cpu_target": floor_ms / cpu_target_ms,
        "ms_left_for_the_code": cpu_target_ms - floor_ms,
        # The CPU a lifecycle may take at the rate target on `cores` (2000 / 420 = 4.76 ms on 2 cores).
        "cpu_ms_at_rate_target": cores * 1000.0 / rate_target,
    }


def load_counts(path: Path) -> dict[str, float]:
    """Per-lifecycle counts from a JSON object {unit: count}; unknown units and negative counts refused."""
    data = json.loads(path.read_text())
    return check_counts(data)


def check_counts(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        raise ValueError("counts must be a JSON object of {unit: count}")
    unknown = sorted(set(data) - set(UNITS))
    if unknown:
        raise ValueError(f"unknown unit(s) {unknown}; known: {sorted(UNITS)}")
    counts: dict[str, float] = {}
    for unit, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"count of {unit} must be a finite number >= 0, not {value!r}")
        counts[unit] = float(value)
    return counts
