"""After a scenario settles: what the clients were told, what PostgreSQL holds and what the receiver got.

- lost: a request answered 202 that is not in the database, or a dispatched approval a step of which
  never reached the receiver;
- duplicated: an Idempotency-Key the receiver completed twice (a step effect delivered twice: two
  requests with one key at once, which the key cannot absorb);
- replayed: a delivery of a key the receiver had already done, answered from its record with no
  second effect (see receiver.py); only a dispatcher killed between a step's answer and its report
  may cause one;
- stuck: an approval still pending, approved or dispatching after the lease and the reaper's period;
- recovery s: from the end of the fault (the process killed, the server back) to the first lifecycle
  begun at or after the fault's start that reached `dispatched` after that end.
"""

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .load import Lifecycle
from .receiver import Receiver

MIDFLIGHT = ("pending", "approved", "dispatching")
REPORT_ENV = "PJ_CHAOS_REPORT"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / ".run" / "chaos-report.json"


@dataclass
class ScenarioResult:
    scenario: str
    lifecycles: int  # lifecycles the clients saw reach `dispatched`
    lost: int
    duplicated: int
    stuck: int
    recovery_s: float | None
    started: int = 0
    failed: int = 0  # lifecycles that did not reach `dispatched` (client gave up; see `give_ups`)
    resent: int = 0  # keys that reached the receiver more than once (abandoned or replayed included)
    replayed: int = 0  # deliveries of keys already done, answered from the receiver's record
    statuses: dict[str, int] = field(default_factory=dict)
    fault: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.stuck == 0


def audit(scenario: str, records: list[Lifecycle], rows: list[dict[str, Any]], receiver: Receiver, *,
          fault_at: float, restored_at: float, fault: dict[str, Any]) -> ScenarioResult:
    by_request = {r["request_id"]: r for r in rows}
    lost_requests = [c.request_id for c in records if c.accepted and c.request_id not in by_request]
    reached = receiver.reached()
    lost_steps = [f"{r['id']}:{s['stepId']}" for r in rows if r["approval_status"] == "dispatched"
                  for s in r["plan"] if f"{r['id']}:{s['stepId']}" not in reached]
    completions = receiver.completions()
    duplicated = sorted(k for k, n in completions.items() if n > 1)
    stuck = [r["id"] for r in rows if r["approval_status"] in MIDFLIGHT]
    deliveries = receiver.snapshot()
    per_key: dict[str, int] = {}
    for d in deliveries:
        per_key[d.key] = per_key.get(d.key, 0) + 1
    resent = sum(1 for n in per_key.values() if n > 1)
    after = [c.finished for c in records if c.finished is not None and c.started >= fault_at
             and c.finished >= restored_at]
    recovery = max(0.0, min(after) - restored_at) if after else None
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["approval_status"]] = statuses.get(r["approval_status"], 0) + 1
    give_ups: dict[str, int] = {}
    for c in records:
        if c.give_up:
            reason = c.give_up[:120]
            give_ups[reason] = give_ups.get(reason, 0) + 1
    answers: dict[str, int] = {}
    for c in records:
        for key, n in c.answers.items():
            answers[key] = answers.get(key, 0) + n
    # When each delivery of a duplicated or replayed key arrived and finished, in seconds after the fault began.
    replayed = [d.key for d in deliveries if d.replayed]
    timelines = {k: [{"arrived": round(d.arrived - fault_at, 3), "finished": round(d.finished - fault_at, 3),
                      "completed": d.completed, "replayed": d.replayed} for d in deliveries if d.key == k]
                 for k in [*duplicated[:10], *replayed[:10]]}
    return ScenarioResult(
        scenario=scenario, lifecycles=sum(1 for c in records if c.finished is not None),
        lost=len(lost_requests) + len(lost_steps), duplicated=len(duplicated), stuck=len(stuck),
        recovery_s=None if recovery is None else round(recovery, 2), started=len(records),
        failed=sum(1 for c in records if c.finished is None), resent=resent, replayed=len(replayed),
        statuses=statuses, fault=fault,
        details={"lost_requests": lost_requests[:20], "lost_steps": lost_steps[:20], "key_timelines": timelines,
                 "stuck_approvals": stuck[:20], "give_ups": give_ups, "answers": dict(sorted(answers.items())),
                 "anomalies": [a for c in records for a in c.anomalies][:20],
                 "redispatched": sum(c.redispatches for c in records), "deliveries": len(deliveries),
                 "bad_signatures": sum(1 for d in deliveries if not d.signature_ok)})


# Every scenario's result in this run, for the table at the end (conftest.pytest_terminal_summary).
RESULTS: list[ScenarioResult] = []

COLUMNS = ("scenario", "lifecycles", "lost", "duplicated", "stuck", "recovery s", "failed", "resent", "replayed")


def table(results: list[ScenarioResult]) -> str:
    rows = [COLUMNS] + [(r.scenario, str(r.lifecycles), str(r.lost), str(r.duplicated), str(r.stuck),
                         "-" if r.recovery_s is None else f"{r.recovery_s:.2f}", str(r.failed), str(r.resent),
                         str(r.replayed))
                        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                       strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)


def tree_state() -> dict[str, Any]:
    """The commit measured, and the files of the system under test that differed from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"),
            "modified": git("status", "--porcelain", "--", "services", "libs").splitlines()}


def write_report(results: list[ScenarioResult], settings: dict[str, Any]) -> Path:
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "tree": tree_state(),
                                "scenarios": [asdict(r) | {"ok": r.ok} for r in results]}, indent=2, default=str))
    return path
