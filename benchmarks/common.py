"""Write a benchmark's numbers as JSON plus a Markdown table under benchmarks/results/.

Every result records the machine and its load average at the start and the end of the
run (a shared, busy machine skews timings; the reader must be able to see it).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


# The full-resolution JPEG every latency benchmark times (1776x1416, official val split).
SAMPLE_IMAGE = Path("kermany_full_res/val/NORMAL/NORMAL2-IM-1427-0001.jpeg")


def sample_image() -> Path:
    """SAMPLE_IMAGE inside the dev samples (PNEUMOSCOPE_SAMPLES_DIR or ../shared)."""
    from study.paths import DEFAULT_SAMPLES_DIR

    return DEFAULT_SAMPLES_DIR / SAMPLE_IMAGE


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded for the record."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(load_start: list[float]) -> dict[str, Any]:
    """CPU count, Python, time and the load average at ``load_start`` and now."""
    end = load_average()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_start": load_start,
        "load_average_end": end,
        "load_average": end[0],
    }


def header(m: dict[str, Any]) -> str:
    """One Markdown line that says how busy the machine was while measuring."""
    start, end = m["load_average_start"], m["load_average_end"]
    return (
        f"_{m['when']}, {m['cpus']} CPUs, load average (1/5/15 min) "
        f"{' / '.join(map(str, start))} at start, {' / '.join(map(str, end))} at end_"
    )


def md_table(rows: list[dict[str, Any]]) -> list[str]:
    """``rows`` as a Markdown table; their keys are the columns."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.get(c, "") for c in cols)
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def write(
    name: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    out_dir: Path = RESULTS,
    load_start: list[float] | None = None,
    more_tables: Sequence[list[dict[str, Any]]] = (),
) -> tuple[Path, Path]:
    """``rows`` (then each of ``more_tables``) become the Markdown, under a load header."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = machine(load_start or load_average())
    doc = {"benchmark": name, "machine": m, "rows": rows, **(extra or {})}
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(doc, indent=1))
    lines = [header(m), "", *md_table(rows)]
    for table in more_tables:
        lines += ["", *md_table(table)]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return js, md
