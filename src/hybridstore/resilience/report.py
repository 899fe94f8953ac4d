"""Renderings of a run's report: the terminal table (rich) and the JSON file. The HTML page is in
`hybridstore.resilience.html`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

JSON_FIELDS = (
    "name",
    "verdict",
    "criteria",
    "ops",
    "acknowledged",
    "lost",
    "duplicated",
    "converged",
    "availability",
    "p50_ms",
    "p99_ms",
    "detection_s",
    "recovery_s",
)


def _ms(x: Any) -> str:
    return "" if x is None else f"{x:.1f}"


def _s(x: Any) -> str:
    return "" if x is None else f"{x:.2f}"


def table(report: dict[str, Any]) -> Table:
    """One row per scenario: verdict and figures (texts as plain text, never markup)."""
    t = Table(
        title=f"resilience run, seed {report['seed']} (latency in ms, times in s)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    t.add_column("scenario", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    for col in ("ops", "acked", "lost", "dup", "conv", "avail", "p50", "p99", "detect", "recover"):
        t.add_column(col, justify="right", no_wrap=True)
    for s in report["scenarios"]:
        verdict = Text(s["verdict"], style="green" if s["verdict"] == "pass" else "bold red")
        t.add_row(
            Text(s["name"]),
            verdict,
            str(s["ops"]),
            str(s["acknowledged"]),
            str(s["lost"]),
            str(s["duplicated"]),
            "yes" if s["converged"] else "NO",
            f"{s['availability']:.3f}",
            _ms(s["p50_ms"]),
            _ms(s["p99_ms"]),
            _s(s["detection_s"]),
            _s(s["recovery_s"]),
        )
    return t


def failures(report: dict[str, Any]) -> list[str]:
    """Plain lines saying why each failed scenario failed."""
    lines: list[str] = []
    for s in report["scenarios"]:
        if s["verdict"] == "pass":
            continue
        if s.get("error"):
            lines.append(f"{s['name']}: could not run: {s['error']}")
        for c in s["criteria"]:
            if not c["passed"]:
                lines.append(f"{s['name']}: {c['text']}: failed ({c['value']})")
        lines += [f"{s['name']}:   {p}" for p in s.get("problems", [])[:5]]
    return lines


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target
