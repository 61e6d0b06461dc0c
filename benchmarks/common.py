"""Write a benchmark's numbers as JSON plus a Markdown table under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg()[0],
    }


def write(
    name: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    out_dir: Path = RESULTS,
) -> tuple[Path, Path]:
    """``rows`` become the Markdown table (their keys are the columns)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(doc, indent=1))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.get(c, "") for c in cols)
        ]
        lines.append(f"| {' | '.join(cells)} |")
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return js, md
