"""Acceptance and rejection of the input gate: per folder of the dev samples, and per
source of the gate's own calibration hold-out.

The samples are never used to fit the gate or to set a threshold (a dev set: it
only fills this table), so the table is a held-out picture of what the gate lets
through. The calibration part comes from the fitted gate's gate.json: images of
each source the gate did not fit (study.gate.sources).

    python -m benchmarks.gate_table [--samples-dir DIR] [--gate DIR] [--out-dir DIR]

Writes ``gate_table.json`` (per file, per folder, per calibration source) and
``gate_table.md`` (per folder and source, and every miss on the dev folders with its
reason; the README's copy comes from it through ``python -m benchmarks.readme``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import header, load_average, machine
from service.gate import LAYER_CODES, default_model, run_gate
from service.settings import Settings
from study.paths import DEFAULT_SAMPLES_DIR

REPO = Path(__file__).resolve().parents[1]


def gate_table(samples_dir: Path, gate_path: Path | None = None) -> dict[str, Any]:
    """Run the gate on every file below samples_dir, grouped by folder."""
    settings = Settings()
    model = default_model(settings, gate_path)
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
                "expected": "accept" if expected_accept(folder, p.name) else "refuse",
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
    return {"gate": model.info | {"version": model.version}, "folders": summary, "files": files}


def expected_accept(folder: str, name: str) -> bool:
    """Chest X-ray folders of the samples (and the DICOMs named chest_*) should pass."""
    top = folder.split("/")[0]
    return top in ("kermany_full_res", "other_chest_xray") or name.startswith("chest_")


def calibration_rows(info: dict[str, Any]) -> list[str]:
    """Per-source acceptance on the calibration hold-out, refusals named by their codes."""
    lines = [
        "| calibration source | kind | images | accepted | refused: codes | correct |",
        "|---|---|---:|---:|---|---:|",
    ]
    for src, r in info.get("calibration", {}).items():
        codes = ", ".join(f"{LAYER_CODES[k]} {n}" for k, n in r["refused_by"].items()) or "-"
        lines.append(
            f"| {src} | {r['kind']} | {r['n']} | {r['accepted']} | {codes} "
            f"| {r['correct_rate']:.1%} |"
        )
    return lines


def to_markdown(table: dict[str, Any]) -> str:
    info = table["gate"]
    trials = info.get("rule_trials", {})
    sources = list(info.get("calibration", {}))
    lines = [
        f"Gate {info.get('version')}: the chest layer is decided by **{info.get('rule')}**, "
        "the rule with the best mean per-source accuracy on the calibration hold-out:",
        "",
        "| rule | mean | " + " | ".join(sources) + " |",
        "|---|---:|" + "---:|" * len(sources),
        *(
            f"| {r} | {t['mean_correct_rate']:.1%} | "
            + " | ".join(f"{t.get(src, float('nan')):.1%}" for src in sources)
            + " |"
            for r, t in trials.items()
        ),
        "",
        f"Fit images per source: {info.get('n_fit')}. Calibration hold-out, whole gate:",
        "",
        *calibration_rows(info),
        "",
        "| dev folder | files | accepted | rejected | rejection codes |",
        "|---|---:|---:|---:|---|",
    ]
    for folder, s in table["folders"].items():
        codes = ", ".join(f"{c} {n}" for c, n in s["codes"].items()) or "-"
        lines.append(
            f"| {folder} | {s['n']} | {s['accepted']} ({s['acceptance_rate']:.0%}) "
            f"| {s['rejected']} | {codes} |"
        )
    misses = [f for f in table["files"] if f["accepted"] != (f["expected"] == "accept")]
    lines += ["", f"Misses on the dev folders ({len(misses)}):", ""]
    lines += [f"- {f['file']}: {f['code'] or 'accepted'} ({f['message']})" for f in misses]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples-dir",
        type=Path,
        default=DEFAULT_SAMPLES_DIR,
        help="dev samples folder (default: PNEUMOSCOPE_SAMPLES_DIR, else ../shared/data/samples)",
    )
    ap.add_argument(
        "--gate",
        type=Path,
        default=None,
        help="gate folder (default: GATE_DIR, else beside the winner)",
    )
    ap.add_argument(
        "--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="where to write"
    )
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
