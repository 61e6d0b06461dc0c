"""``python -m service worker``: one Celery worker process holding one loaded, warmed-up model.

Solo pool on purpose: the model lives in the process that runs the jobs, is
loaded exactly once, and scaling out means starting more worker processes.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from service import tasks
from service.db import Database
from service.inference import ModelRuntime
from service.queue import QUEUE, Publisher, create_celery
from service.settings import Settings
from service.storage import LocalStorage
from service.sweeper import Sweeper, worker_name
from study.serving import GATE_DIR_NAME, GateUnavailableError

log = logging.getLogger("service.worker")


def _fast_sqlite_polling(settings: Settings) -> None:
    """kombu's SQL transport polls once a second by default; poll faster for lower latency."""
    if settings.broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as ksql

        ksql.Transport.polling_interval = 0.1


def warm_up_gate(settings: Settings) -> None:
    """Run the gate once on a synthetic image: loads its fitted model (and the backbone)
    before the first job. Never fits: no fitted gate raises GateUnavailableError."""
    import cv2
    import numpy as np

    from service.gate import run_gate

    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    ok, png = cv2.imencode(".png", ramp)
    if ok:
        run_gate(png.tobytes(), settings)


def build_state(settings: Settings) -> tasks.WorkerState:
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    runtime = ModelRuntime.from_settings(settings)
    runtime.warm_up()
    if settings.gate_dir is None:  # the gate of the winner this worker loaded, for good
        settings.gate_dir = Path(runtime.winner.path).parent / GATE_DIR_NAME
    warm_up_gate(settings)
    app = create_celery(settings)
    return tasks.WorkerState(
        settings=settings,
        db=Database(settings.db_url),
        storage=LocalStorage(settings.storage_root),
        runtime=runtime,
        publisher=Publisher(app),
    )


def run_worker(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    _fast_sqlite_polling(settings)
    try:
        state = build_state(settings)
    except GateUnavailableError as exc:  # readiness: this worker never starts without a gate
        log.error("worker not started: %s", exc)
        raise SystemExit(2) from None
    log.info("model %s (%s) loaded and warmed up", state.runtime.name, state.runtime.version)
    tasks.set_state(state)
    from service import jobs

    jobs.beat(state.db, worker_name(), state.runtime.name, state.runtime.version)
    sweeper = Sweeper(state)
    sweeper.start()
    app = state.publisher.app
    tasks.register(app)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                QUEUE,
                "--loglevel",
                settings.log_level.upper(),
                "-n",
                f"pneumoscope-{os.getpid()}@{socket.gethostname()}",
            ]
        )
    finally:
        sweeper.stop()
