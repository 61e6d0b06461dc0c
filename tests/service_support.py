"""Infrastructure for the service tests: a tiny winner, real servers, real processes.

Everything started here is stopped by PID in the fixtures' teardown; data
lives in temporary directories; only loopback addresses are used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
API_KEY = "test-key-not-a-secret"


# --------------------------------------------------------------------------- the tiny model


def make_tiny_winner(study_dir: Path) -> Path:
    """An untrained 64x64 CNN exported like a real winner (threshold 0.5)."""
    import keras

    from study.data.preprocess import PreprocessConfig
    from study.select.model_io import export_winner

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inp, out, name="tiny")
    info = {
        "study": "tiny-test",
        "version": "tiny0001",
        "threshold": 0.5,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "preprocess": PreprocessConfig(image_size=64).to_dict(),
    }
    return export_winner(model, info, Path(study_dir))


# --------------------------------------------------------------------------- in-process


def make_publisher(settings: Any) -> Any:
    """The real :class:`service.queue.Publisher` over the Celery app built from ``settings``.

    With the embedded default broker (Celery's SQLAlchemy transport over
    ``DATA_DIR/broker.db``) messages are really published, and no server is needed.
    """
    from service.queue import Publisher, create_celery

    return Publisher(create_celery(settings))


def unreachable_broker_publisher(settings: Any) -> Any:
    """A real Publisher whose broker is a loopback Redis port nothing listens on: sends are
    refused by the OS (no flag); the settings' short timeouts and retry policy keep it fast."""
    return make_publisher(
        settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    )


def queued_prediction_ids(settings: Any) -> list[str]:
    """Prediction ids of the task messages waiting in the embedded SQLite broker, oldest first.

    Read straight from kombu's ``kombu_queue``/``kombu_message`` tables (nothing is consumed).
    """
    from service.queue import QUEUE, TASK_NAME

    prefix = "sqla+sqlite:///"
    assert settings.broker.startswith(prefix), settings.broker
    path = Path(settings.broker.removeprefix(prefix))
    if not path.exists():
        return []
    sql = (
        "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
        "WHERE q.name = ? AND m.visible ORDER BY m.id"
    )
    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"kombu_queue", "kombu_message"} <= tables:  # nothing was ever published
            return []
        rows = conn.execute(sql, (QUEUE,)).fetchall()
    ids = []
    for (payload,) in rows:
        msg = json.loads(payload)
        assert msg["headers"]["task"] == TASK_NAME, msg["headers"]
        body = msg["body"]
        if msg["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        ids.append(args[0])
    return ids


def make_settings(tmp: Path, **kw: Any) -> Any:
    from service.migrate import migrate
    from service.settings import Settings

    isolated: dict[str, Any] = {n: None for n in ("database_url", "broker_url", "storage_dir")}
    s = Settings(**{**isolated, "data_dir": tmp, "api_key": API_KEY, **kw})
    migrate(s)
    return s


# --------------------------------------------------------------------------- processes


def clean_environ() -> dict[str, str]:
    """os.environ without the service's own variables, so a developer's shell can't leak in."""
    from service.settings import Settings

    names = {n.upper() for n in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # a server still starting
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL, by PID only (the embedded supervisor's own way)."""
    from service.embedded import terminate

    terminate(proc, timeout)


class Redis:
    """redis-server on a free loopback port, no persistence (a restart loses its queue)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server not installed (scripts/install_system_deps.sh)")
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(self._ping, 20, "redis")

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Postgres:
    """A throwaway PostgreSQL cluster in a temp dir on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pneumoscope-pg-"))
        self.root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/pneumoscope"

    def _run(self, args: list[str]) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.root else args
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        if not (PG_BIN / "initdb").is_file():
            raise FileNotFoundError("PostgreSQL 15 not installed (scripts/install_system_deps.sh)")
        os.chmod(self.dir, 0o755)
        if self.root:
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        self._run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8"])  # fmt: skip
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                   "-o", opts, "-w", "start"])  # fmt: skip
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE pneumoscope")

    def stop(self) -> None:
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_stack(prefix: str, env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    """A migrated stack with its API and one worker up; everything stopped and removed after."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack(work, env, log_dir)
    try:
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


class Stack:
    """The API and a worker as real subprocesses (``python -m service api|worker``)."""

    def __init__(self, workdir: Path, env: dict[str, str], log_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.log_dir = log_dir or workdir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **clean_environ(),
            "DATA_DIR": str(workdir / "data"),
            "API_KEY": API_KEY,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "LEASE_SECONDS": "3",
            "SWEEP_INTERVAL_SECONDS": "1",
            "REQUEUE_AFTER_SECONDS": "8",
            "WORKER_TTL_SECONDS": "8",
            "METRICS_CACHE_SECONDS": "0",  # totals read right after a job (cache: in-process test)
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
            "CUDA_VISIBLE_DEVICES": "-1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **env,
        }
        self.api: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=30)

    def _spawn(self, mode: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{mode}.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "service", mode],
            cwd=REPO,
            env={**self.env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "service", "migrate"], cwd=REPO, env=self.env, check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def start_api(self) -> None:
        self.api = self._spawn("api")
        wait_for(lambda: self.client.get("/healthz").status_code == 200, 60, "the API")

    def start_worker(self, extra: dict[str, str] | None = None, wait: bool = True) -> None:
        self.worker = self._spawn("worker", extra)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"worker exited: see {self.log_dir / 'worker.log'}")
            return self.client.get("/readyz").status_code == 200

        wait_for(ready, timeout, "/readyz 200 (worker with loaded model)", interval=0.5)

    def kill_worker(self) -> None:
        """SIGKILL: no clean-up code in the worker runs."""
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=10)
        self.worker = None

    def stop_worker(self) -> None:
        stop_process(self.worker)
        self.worker = None

    def stop(self) -> None:
        self.client.close()
        stop_process(self.worker)
        stop_process(self.api)

    # ------------------------------------------------------------------ API helpers

    def upload(
        self, data: bytes, name: str = "x.jpeg", ctype: str = "image/jpeg"
    ) -> httpx.Response:
        return self.client.post("/v1/predictions", files={"file": (name, data, ctype)})

    def wait_status(self, pid: str, statuses: tuple[str, ...], timeout: float = 180) -> dict:
        def check() -> dict | None:
            body = self.client.get(f"/v1/predictions/{pid}").json()
            return body if body["status"] in statuses else None

        return wait_for(check, timeout, f"prediction {pid} in {statuses}", interval=0.2)
