"""How the study writes a wall time, for every layer (progress lines, report, summary).

It sits below the stages, like :mod:`study.paths`: the search stage's progress lines
need it and may not import the select or report stages.
"""

from __future__ import annotations

import math


def fmt_duration(seconds: float | None) -> str:
    """Wall time as the progress lines and the report write it: 1h05m, or 4m07s under an hour."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(max(0.0, seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
