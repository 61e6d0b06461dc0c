"""Command line: the study by default, plus 'data', 'report', 'weights' and 'gate' commands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from study.config import add_setting, config_from_args, study_parser
from study.paths import DEFAULT_RESULTS_DIR, REPO


def _export_feedback(argv: list[str]) -> int:
    """Alias of ``python -m service export-feedback``, run in a subprocess.

    The feedback export belongs to the service (its database and storage); a
    subprocess keeps the study from importing the service.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "service", "export-feedback", *argv]
    return subprocess.run(cmd, env=os.environ | {"PYTHONPATH": path}, check=False).returncode


def _data_command(argv: list[str]) -> int:
    if argv[:1] == ["export-feedback"]:
        return _export_feedback(argv[1:])
    p = argparse.ArgumentParser(prog="run_study.py data")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch the Kaggle dataset into data/chest_xray")
    d.add_argument("--dest", type=Path, default=Path("data/chest_xray"))
    a = sub.add_parser("audit", help="counts, sizes, duplicates, leakage, corrupt files")
    add_setting(a, "data_dir")
    a.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR / "audit")
    a.add_argument("--workers", type=int, default=2)
    sub.add_parser(
        "export-feedback",
        help="reviewed uploads -> Kaggle layout (alias of 'python -m service export-feedback')",
    )
    args = p.parse_args(argv)
    if args.cmd == "download":
        from study.data.download import DownloadError, download

        try:
            print(download(args.dest))
        except DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from study.data.audit_cli import run_audit

    return run_audit(args.data_dir, args.out, args.workers)


def _report_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run_study.py report", description="regenerate report.html from saved artifacts"
    )
    p.add_argument("--study", type=Path, required=True, help="results/<study> folder")
    args = p.parse_args(argv)
    if not args.study.is_dir():  # before TensorFlow loads and logs to stderr
        raise FileNotFoundError(f"no study folder {args.study}")
    from study.report.page import write_report

    print(write_report(args.study))
    return 0


def _weights_command(argv: list[str]) -> int:
    from study.models.offline_weights import main as weights_main

    return weights_main(argv)


def _gate_command(argv: list[str]) -> int:
    from study.gate.fit import main as gate_main

    return gate_main(argv)


COMMANDS = {
    "data": _data_command,
    "report": _report_command,
    "weights": _weights_command,
    "gate": _gate_command,
}


def main(argv: list[str] | None = None) -> int:
    """A missing data or study folder is one 'error:' line and exit code 2, not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        cfg = config_from_args(study_parser().parse_args(argv))
        from study.workflow import run_study

        run_study(cfg)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
