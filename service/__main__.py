"""``python -m service [embedded|api|worker|migrate|export-feedback|purge]``.

- no argument / ``embedded``: migrate, then the API plus one worker subprocess, restarted
  if it dies (SQLite database and SQLite broker by default: no servers to run).
- ``api``: the HTTP API only (uvicorn). ``worker``: one Celery worker process.
- ``migrate``: apply Alembic migrations to DATABASE_URL.
- ``export-feedback [--database-url URL] [--storage-dir DIR] [--out DIR]``: reviewed
  uploads -> Kaggle layout, for the study's ``--extra-data`` (service.feedback).
- ``purge --older-than DAYS``: delete old unlabelled uploads and their files
  (service.retention).
"""

from __future__ import annotations

import argparse
import signal
import sys

from service.settings import Settings


def run_api(settings: Settings, app: object | None = None) -> None:
    import uvicorn

    from service.api import create_app

    uvicorn.run(
        app or create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        server_header=False,
    )


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_embedded(settings: Settings) -> None:
    """API in this process, one worker child kept alive by a supervisor; stopped on exit."""
    from service.api import create_app
    from service.embedded import WorkerSupervisor
    from service.migrate import migrate

    settings.ensure_dirs()
    migrate(settings)
    supervisor = WorkerSupervisor()
    app = create_app(settings)
    app.state.worker_supervisor = supervisor  # /readyz reports the worker down while it is
    supervisor.start()
    # uvicorn re-raises SIGTERM/SIGINT after its shutdown, with the handler it found installed:
    # make that handler an exception, so the finally below stops the worker.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        run_api(settings, app)
    except SystemExit:
        pass
    finally:
        supervisor.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-feedback"]:  # has flags of its own
        from service.feedback import main as export_feedback

        return export_feedback(argv[1:])
    if argv[:1] == ["purge"]:
        from service.retention import main as purge

        return purge(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.split("\n")[0],
        epilog="'python -m service export-feedback|purge --help' for those commands' flags.",
    )
    p.add_argument(
        "mode",
        nargs="?",
        default="embedded",
        choices=["embedded", "api", "worker", "migrate", "export-feedback", "purge"],
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
