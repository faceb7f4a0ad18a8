"""The bench's chart: each scenario's figure as a bar with its target drawn beside it, and where the CPU goes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MEASURED, TARGET, MISSED, MET = "#4c72b0", "#dd8452", "#c44e52", "#55a868"


def _target_panel(ax: Any, *, title: str, unit: str, labels: list[str], values: list[float | None],
                  targets: list[float | None], better: str) -> None:
    xs = range(len(labels))
    heights = [v or 0.0 for v in values]
    colors = []
    for v, t in zip(values, targets, strict=True):
        if v is None or t is None:
            colors.append(MEASURED)
        else:
            colors.append(MET if (v >= t if better == "higher" else v <= t) else MISSED)
    bars = ax.bar(xs, heights, 0.55, color=colors)
    for bar, v, t in zip(bars, values, targets, strict=True):
        x0, w = bar.get_x(), bar.get_width()
        ax.annotate("n/a" if v is None else f"{v:.4g}", (x0 + w / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
        if t is not None:
            ax.hlines(t, x0 - 0.12, x0 + w + 0.12, colors=TARGET, linestyles="--", linewidth=2)
            ax.annotate(f"target {t:.4g}", (x0 + w + 0.14, t), ha="left", va="center", fontsize=7, color=TARGET)
        else:
            ax.annotate("no target set", (x0 + w / 2, bar.get_height()), ha="center", va="bottom", fontsize=7,
                        color="grey", xytext=(0, 12), textcoords="offset points")
    top = max([h for h in heights] + [t for t in targets if t is not None] + [1.0])
    ax.set_ylim(0, top * 1.25)
    ax.set_xlim(-0.6, len(labels) - 0.2)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title(title + (" (higher is better)" if better == "higher" else " (lower is better)"), fontsize=9)


def render_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = report["targets_checked"]
    scenarios = report["scenarios"]
    panels: list[tuple[str, str, list[dict[str, Any]]]] = []
    scaling = [c for c in checks if c["scenario"].startswith("scaling")]
    for c in checks:
        if c["scenario"].startswith("scaling"):
            continue
        panels.append((c["scenario"], c["unit"], [c]))
    if scaling:
        panels.append(("scaling", "steps/s", scaling))
    cpu_panel = "lifecycle" in scenarios and "cpu_ms_per_op" in scenarios["lifecycle"]
    count_panel = "counts" in scenarios
    total = len(panels) + int(cpu_panel) + int(count_panel)
    cols = 3
    rows = max(1, math.ceil(total / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    meta = report["meta"]
    fig.suptitle(f"make bench {meta['timestamp']}  commit {str(meta['machine'].get('git_commit'))[:10]}"
                 f"{' (dirty)' if meta['machine'].get('git_dirty') else ''}  {meta['machine']['nproc']} cores  "
                 f"load before {', '.join(f'{x:.1f}' for x in meta['machine']['loadavg_before'])}  "
                 f"client {meta['options']['client']}  {meta['options']['seconds']:g} s each"
                 f"{'  QUICK' if meta['options'].get('quick') else ''}", fontsize=11)
    i = 0
    for name, unit, rows_ in panels:
        spec = report["targets"].get(name.split(" ")[0], {})
        labels = [r["scenario"].replace("scaling ", "") for r in rows_]
        title = spec.get("what", name).replace("100,000", f"{meta['options'].get('rows', 100_000):,}")
        _target_panel(flat[i], title=title, unit=unit, labels=labels, values=[r["value"] for r in rows_],
                      targets=[r["target"] for r in rows_], better=rows_[0]["better"])
        i += 1
    if cpu_panel:
        ax = flat[i]
        i += 1
        per_op = scenarios["lifecycle"]["cpu_ms_per_op"]
        parts = [k for k in per_op if k not in ("services", "system") and per_op[k] is not None]
        values = [per_op[k] for k in parts]
        ax.barh(parts, values, color=MEASURED)
        for y, v in enumerate(values):
            ax.annotate(f"{v:.2f}", (v, y), va="center", fontsize=8, xytext=(2, 0), textcoords="offset points")
        ax.set_xlabel("CPU ms per lifecycle", fontsize=8)
        ax.set_title(f"lifecycle: CPU ms by process (system {per_op.get('system')} ms;"
                     f" budget of the parts ~3.3 ms)", fontsize=9)
        ax.tick_params(labelsize=8)
    if count_panel:
        ax = flat[i]
        i += 1
        c = scenarios["counts"]
        items = {"SQL statements": c.get("statements"), "transactions": c.get("transactions"),
                 "AMQP publishes": c.get("amqp_publishes"), "RPC round trips": c.get("rpc_round_trips"),
                 "HTTP (gateway)": (c.get("http_requests") or {}).get("gateway"),
                 "HTTP (connector)": (c.get("http_requests") or {}).get("connector_calls"),
                 "log lines": (c.get("log_lines") or {}).get("total")}
        labels = list(items)
        values = [float(v) if isinstance(v, int | float) else 0.0 for v in items.values()]
        ax.barh(labels, values, color=MEASURED)
        for y, (v, raw) in enumerate(zip(values, items.values(), strict=True)):
            ax.annotate("n/a" if raw is None else f"{v:.2f}", (v, y), va="center", fontsize=8, xytext=(2, 0),
                        textcoords="offset points")
        ax.set_title(f"per lifecycle, counted over {c.get('lifecycles')} lifecycles", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    for ax in flat[i:]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
