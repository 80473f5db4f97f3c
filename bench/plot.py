"""The README's benchmark plot, as SVG written by hand (no plotting library needed).

    python bench/plot.py            # bench/results/{wrk,streams}_latest.json -> docs/bench.svg

Four panels of horizontal bars, one bar per target, from the last runs of bench/wrk_compare.py and
bench/streams.py: added p50 latency at c=1 (wrk), req/s at c=32 relative to direct, and for the
concurrent streams the TTFC p50 added and the extra inter-chunk gap p99 (both vs direct, same run).
"""

from __future__ import annotations

import json
import statistics
import sys
from html import escape
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
OUT = BENCH.parent / "docs" / "bench.svg"
WIDTH, BAR, GAP, LABEL, PANEL_GAP = 760, 18, 6, 210, 34
COLORS = {"nginx": "#4c78a8", "naive": "#f58518", "proxy": "#54a24b", "ref": "#b279a2"}


def panels() -> list[tuple[str, list[tuple[str, float, str]]]]:
    """(title, [(label, value, color)]) for each panel that has data."""
    out: list[tuple[str, list[tuple[str, float, str]]]] = []
    wrk_path, streams_path = RESULTS / "wrk_latest.json", RESULTS / "streams_latest.json"
    if wrk_path.exists():
        wrk = json.loads(wrk_path.read_text())
        rows = {k: v for k, v in wrk["summary"].items() if k != "direct"}
        out.append(
            (
                "added p50 latency, c=1, 1 KB chat (ms; wrk)",
                [(k, v["added_p50_ms"], COLORS.get(k, "#888")) for k, v in rows.items()],
            )
        )
        out.append(
            (
                "req/s at c=32 relative to direct (wrk)",
                [(k, v["rps_ratio_direct"], COLORS.get(k, "#888")) for k, v in rows.items()],
            )
        )
    if streams_path.exists():
        streams = json.loads(streams_path.read_text())
        rounds = streams["rounds"]
        names = [k for k in rounds[0] if k != "direct"]
        n = streams["streams"]
        color = {k: COLORS.get(k.split("-")[0].rstrip("0123456789"), "#888") for k in names}

        def added(name: str, key: str) -> float:
            """The median over the rounds of (target - direct) in each round."""
            return statistics.median(r[name][key] - r["direct"][key] for r in rounds)

        of = f"median of {len(rounds)} rounds" if len(rounds) > 1 else "one round"
        out.append(
            (
                f"{n} streams: TTFC p50 added (s; {of})",
                [(k, added(k, "ttfc_p50_ms") / 1000, color[k]) for k in names],
            )
        )
        out.append(
            (
                f"{n} streams: extra inter-chunk gap p99 over direct (ms; {of})",
                [(k, added(k, "gap_p99_ms"), color[k]) for k in names],
            )
        )
    return out


def svg(data: list[tuple[str, list[tuple[str, float, str]]]], note: str) -> str:
    parts: list[str] = []
    y = 28
    for title, bars in data:
        parts.append(f'<text x="8" y="{y}" font-weight="bold">{escape(title)}</text>')
        y += 10
        low, high = min([0.0] + [v for _, v, _ in bars]), max([0.0] + [v for _, v, _ in bars])
        scale = (WIDTH - LABEL - 80) / max(high - low, 1e-9)
        zero = LABEL - low * scale  # negative values (faster than direct) to the left of the axis
        for label, value, color in bars:
            x0, x1 = sorted((zero, zero + value * scale))
            parts.append(f'<text x="{LABEL - 6}" y="{y + BAR - 5}" text-anchor="end">{escape(label)}</text>')
            parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{BAR}" fill="{color}"/>')
            parts.append(f'<text x="{max(x1, zero) + 4:.1f}" y="{y + BAR - 5}">{value:+.3g}</text>')
            y += BAR + GAP
        parts.append(
            f'<line x1="{zero:.1f}" y1="{y - len(bars) * (BAR + GAP)}" x2="{zero:.1f}" y2="{y}" stroke="#333"/>'
        )
        y += PANEL_GAP
    parts.append(f'<text x="8" y="{y - 10}" fill="#555">{escape(note)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n'
    )


def main() -> int:
    data = panels()
    if not data:
        print("no results: run bench/wrk_compare.py and bench/streams.py first", file=sys.stderr)
        return 1
    note = "one run each, 2-core box shared with other jobs; lower is better except req/s"
    meta: dict[str, Any] = {}
    for name in ("wrk_latest.json", "streams_latest.json"):
        path = RESULTS / name
        if path.exists():
            meta[name] = json.loads(path.read_text()).get("load_start")
    if meta:
        note += "; load at start: " + ", ".join(f"{k.split('_')[0]} {v}" for k, v in meta.items())
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(svg(data, note))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
