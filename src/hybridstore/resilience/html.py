"""The HTML report: one self-contained page (inline CSS and SVG, no external asset, no script) with each scenario's
verdict, criteria and figures, and a timeline chart of latency (p50 and max per slice), availability (acknowledged
/ attempted per slice) and the fault windows."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

W, H, PAD = 720, 180, 36

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#176c2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
section{border-top:2px solid #ddd;margin-top:1.5em;padding-top:.5em}svg{background:#fafafa;border:1px solid #ddd}
.legend span{margin-right:1.5em}.muted{color:#666}
"""


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


def chart(timeline: dict[str, Any]) -> str:
    """An SVG chart: fault windows shaded, p50 (blue) and max (orange) latency on a log-free linear scale, and
    availability per slice (green, right axis 0-100 %)."""
    slices = timeline.get("slices") or []
    if not slices:
        return "<p class=muted>no timeline</p>"
    width = float(timeline.get("width_s") or 1.0)
    end = slices[-1]["t"] + width
    top = max([s["max_ms"] or 0 for s in slices] + [1.0])

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * (t / end if end else 0)

    def y(ms: float) -> float:
        return H - PAD + (2 * PAD - H) * (ms / top)

    def ya(frac: float) -> float:
        return H - PAD + (2 * PAD - H) * frac

    parts = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">']
    for w in timeline.get("faults", []):
        start, stop = w["start"], w["end"] if w["end"] is not None else end
        parts.append(
            f'<rect x="{x(start):.1f}" y="{PAD / 2}" width="{max(1.0, x(stop) - x(start)):.1f}" '
            f'height="{H - 1.5 * PAD}" fill="#f6c6c6" opacity=".6"><title>{escape(w["name"])}</title></rect>'
        )
    for key, color in (("p50_ms", "#1f5fbf"), ("max_ms", "#e07b00")):
        pts = " ".join(f"{x(s['t'] + width / 2):.1f},{y(s[key]):.1f}" for s in slices if s[key] is not None)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    avail = " ".join(
        f"{x(s['t'] + width / 2):.1f},{ya(s['acknowledged'] / s['attempted']):.1f}" for s in slices if s["attempted"]
    )
    parts.append(f'<polyline points="{avail}" fill="none" stroke="#2a9d4b" stroke-width="1.5" stroke-dasharray="4 2"/>')
    parts.append(f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>')
    parts.append(f'<text x="{PAD}" y="{PAD / 2 - 4}" font-size="11">{top:.0f} ms</text>')
    parts.append(f'<text x="{W - PAD}" y="{H - PAD / 3}" font-size="11" text-anchor="end">{end:.1f} s</text>')
    parts.append(f'<text x="{W - PAD + 2}" y="{ya(1) + 4:.1f}" font-size="11">100%</text>')
    parts.append("</svg>")
    legend = (
        '<div class=legend><span style="color:#1f5fbf">— p50 latency</span><span style="color:#e07b00">— max '
        'latency</span><span style="color:#2a9d4b">- - availability</span><span style="color:#d88">■ fault</span></div>'
    )
    return "".join(parts) + legend


def _scenario(s: dict[str, Any]) -> str:
    verdict = f'<span class="{escape(s["verdict"])}">{escape(s["verdict"].upper())}</span>'
    criteria = "".join(
        f"<tr><td>{escape(c['text'])}</td><td class={'pass' if c['passed'] else 'fail'}>"
        f"{'pass' if c['passed'] else 'FAIL'}</td><td>{escape(str(c['value']))}</td></tr>"
        for c in s["criteria"]
    )
    phases = "".join(
        f"<tr><td>{escape(p)}</td><td>{v.get('count', 0)}</td><td>{_f(v.get('p50_ms'))}</td>"
        f"<td>{_f(v.get('p99_ms'))}</td></tr>"
        for p, v in (s.get("latency") or {}).items()
    )
    error = f"<p class=fail>{escape(s['error'])}</p>" if s.get("error") else ""
    problems = "".join(f"<li>{escape(p)}</li>" for p in s.get("problems", []))
    return (
        f"<section id={escape(s['name'])}><h2>{escape(s['name'])} — {verdict}</h2>"
        f"<p class=muted>{escape(s.get('summary', ''))}</p>{error}"
        f"<table><tr><th>criterion</th><th>verdict</th><th>value</th></tr>{criteria}</table>"
        f"<table><tr><th>phase</th><th>acknowledged</th><th>p50 ms</th><th>p99 ms</th></tr>{phases}</table>"
        f"<p>ops {s['ops']}, acknowledged {s['acknowledged']}, lost {s['lost']}, duplicated {s['duplicated']}, "
        f"converged {'yes' if s['converged'] else 'NO'}, availability {s['availability']:.4f}, "
        f"detection {_f(s['detection_s'], '{:.2f} s') or '—'}, recovery {_f(s['recovery_s'], '{:.2f} s') or '—'}</p>"
        f"{chart(s.get('timeline') or {})}"
        f"{'<ul>' + problems + '</ul>' if problems else ''}</section>"
    )


def render(report: dict[str, Any]) -> str:
    started = datetime.fromtimestamp(report["started_at"], tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = "".join(
        f"<tr><td><a href='#{escape(s['name'])}'>{escape(s['name'])}</a></td>"
        f"<td class={escape(s['verdict'])}>{escape(s['verdict'])}</td><td>{s['ops']}</td><td>{s['acknowledged']}</td>"
        f"<td>{s['lost']}</td><td>{s['duplicated']}</td><td>{'yes' if s['converged'] else 'NO'}</td>"
        f"<td>{s['availability']:.4f}</td><td>{_f(s['p50_ms'])}</td><td>{_f(s['p99_ms'])}</td>"
        f"<td>{_f(s['detection_s'], '{:.2f}')}</td><td>{_f(s['recovery_s'], '{:.2f}')}</td></tr>"
        for s in report["scenarios"]
    )
    overall = "pass" if report["passed"] else "fail"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>hybridstore resilience report</title>"
        f"<style>{CSS}</style></head><body><h1>Resilience report — <span class={overall}>{overall.upper()}</span></h1>"
        f"<p class=muted>started {escape(started)}, seed {report['seed']}, "
        f"{report['duration_per_scenario']} s per scenario, primary {escape(str(report.get('primary', '')))}</p>"
        "<table><tr><th>scenario</th><th>verdict</th><th>ops</th><th>acked</th><th>lost</th><th>dup</th>"
        "<th>converged</th><th>availability</th><th>p50 ms</th><th>p99 ms</th><th>detection s</th>"
        f"<th>recovery s</th></tr>{rows}</table>"
        + "".join(_scenario(s) for s in report["scenarios"])
        + "</body></html>\n"
    )


def write_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render(report), encoding="utf-8")
    os.replace(tmp, target)
    return target
