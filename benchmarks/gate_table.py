"""Acceptance and rejection rates of the input gate on every folder of the samples.

The samples are never used to fit the gate (it learns from the training
X-rays and calibrates on validation X-rays), so this table is an honest
held-out picture of what it lets through.

    python -m benchmarks.gate_table [--samples-dir DIR] [--gate PATH] [--out-dir DIR]

Writes ``gate_table.json`` (per file and per folder) and ``gate_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import header, load_average, machine
from service.gate import default_model, run_gate
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _default_samples() -> Path:
    p = Path(os.environ.get("PNEUMOSCOPE_SAMPLES_DIR", Path("..") / "shared/data/samples"))
    return p if p.is_absolute() else (REPO / p).resolve()


def gate_table(samples_dir: Path, gate_path: Path | None = None) -> dict[str, Any]:
    """Run the gate on every file below samples_dir, grouped by folder."""
    model = default_model(gate_path)
    settings = Settings()
    files: list[dict[str, Any]] = []
    folders: dict[str, dict[str, Any]] = {}
    for p in sorted(x for x in samples_dir.rglob("*") if x.is_file()):
        t0 = time.perf_counter()
        r = run_gate(p.read_bytes(), settings, model)
        ms = (time.perf_counter() - t0) * 1000
        folder = p.parent.relative_to(samples_dir).as_posix()
        failed = [k for k, c in r.checks.items() if not c["passed"]]
        files.append(
            {
                "file": p.relative_to(samples_dir).as_posix(),
                "folder": folder,
                "accepted": r.accepted,
                "code": r.code,
                "message": r.message,
                "failed_checks": failed,
                "ms": round(ms, 1),
            }
        )
    for f in files:
        g = folders.setdefault(f["folder"], {"n": 0, "accepted": 0, "codes": Counter()})
        g["n"] += 1
        g["accepted"] += bool(f["accepted"])
        if f["code"]:
            g["codes"][f["code"]] += 1
    summary = {
        k: {
            "n": g["n"],
            "accepted": g["accepted"],
            "rejected": g["n"] - g["accepted"],
            "acceptance_rate": round(g["accepted"] / g["n"], 3),
            "codes": dict(sorted(g["codes"].items())),
        }
        for k, g in sorted(folders.items())
    }
    return {"gate": model.info, "folders": summary, "files": files}


def to_markdown(table: dict[str, Any]) -> str:
    info = table["gate"]
    lines = [
        "# Input gate on the sample images",
        "",
        f"Gate fitted on {info.get('n_train')} training X-rays (seed {info.get('seed')}), "
        f"chest threshold calibrated on {info.get('n_val')} validation X-rays for "
        f"{info.get('target_acceptance', 0):.0%} acceptance "
        f"(validation acceptance, all checks: {info.get('val_acceptance_all_checks', 0):.1%}).",
        "",
        "| folder | files | accepted | rejected | rejection codes |",
        "|---|---:|---:|---:|---|",
    ]
    for folder, s in table["folders"].items():
        codes = ", ".join(f"{c} {n}" for c, n in s["codes"].items()) or "-"
        lines.append(
            f"| {folder} | {s['n']} | {s['accepted']} ({s['acceptance_rate']:.0%}) "
            f"| {s['rejected']} | {codes} |"
        )
    lines += ["", "| file | accepted | code | failed checks |", "|---|---|---|---|"]
    for f in table["files"]:
        failed = ", ".join(f["failed_checks"]) or "-"
        lines.append(
            f"| {f['file']} | {'yes' if f['accepted'] else 'no'} | {f['code'] or '-'} | {failed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples-dir", type=Path, default=_default_samples())
    ap.add_argument("--gate", type=Path, default=None, help="gate .npz (default: env/results)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    load_start = load_average()
    table = gate_table(a.samples_dir, a.gate)
    table["machine"] = machine(load_start)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / "gate_table.json").write_text(json.dumps(table, indent=1))
    md = header(table["machine"]) + "\n\n" + to_markdown(table)
    (a.out_dir / "gate_table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
