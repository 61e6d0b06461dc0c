"""``python -m service [embedded|api|worker|migrate|export-feedback]``.

- no argument / ``embedded``: migrate, then the API plus one worker subprocess
  (SQLite database and SQLite broker by default: no servers to run).
- ``api``: the HTTP API only (uvicorn). ``worker``: one Celery worker process.
- ``migrate``: apply Alembic migrations to DATABASE_URL.
- ``export-feedback [--database-url URL] [--storage-dir DIR] [--out DIR]``: reviewed
  uploads -> Kaggle layout, for the study's ``--extra-data`` (service.feedback).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from service.settings import Settings


def run_api(settings: Settings) -> None:
    import uvicorn

    from service.api import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        server_header=False,
    )


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the embedded API process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_embedded(settings: Settings) -> None:
    """API in this process, one worker as a child process; the child is stopped on exit."""
    from service.migrate import migrate

    settings.ensure_dirs()
    migrate(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "service", "worker"],
        env=os.environ.copy(),
        preexec_fn=_die_with_parent,
    )
    # uvicorn re-raises SIGTERM/SIGINT after its shutdown, with the handler it found installed:
    # make that handler an exception, so the finally below stops the worker.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        run_api(settings)
    except SystemExit:
        pass
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-feedback"]:  # has flags of its own
        from service.feedback import main as export_feedback

        return export_feedback(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.split("\n")[0],
        epilog="'python -m service export-feedback --help' for the feedback export's flags.",
    )
    p.add_argument(
        "mode",
        nargs="?",
        default="embedded",
        choices=["embedded", "api", "worker", "migrate", "export-feedback"],
    )
    args = p.parse_args(argv)
    settings = Settings()
    if args.mode == "migrate":
        from service.migrate import migrate

        migrate(settings)
        print("database migrated to head")
    elif args.mode == "api":
        run_api(settings)
    elif args.mode == "worker":
        from service.worker import run_worker

        run_worker(settings)
    else:
        run_embedded(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
