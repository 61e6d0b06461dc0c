"""Copy the benchmark tables into README.md, so the numbers there come from the last run.

    python -m benchmarks.readme      (run by ``python -m benchmarks`` after the benchmarks)

Each ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` block of the README is replaced
by ``benchmarks/results/NAME.md``, or by a "not measured yet" line when that file is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- bench:([\w-]+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every bench block filled from ``results``."""

    def fill(m: re.Match[str]) -> str:
        md = results / f"{m.group(2)}.md"
        body = md.read_text() if md.is_file() else "_not measured yet: run `make benchmark`_\n"
        return f"{m.group(1)}\n{body}\n{m.group(4)}"

    return BLOCK.sub(fill, text)


def blocks(text: str) -> list[str]:
    """The names of the bench blocks in ``text``, in order."""
    return [m.group(2) for m in BLOCK.finditer(text)]


def main() -> None:
    text = README.read_text()
    README.write_text(render(text))
    print(f"README.md: tables {', '.join(blocks(text))} from {RESULTS}")


if __name__ == "__main__":
    main()
