"""The embedded mode's worker supervisor: one worker child process, restarted if it dies.

Why in-process: the embedded mode promises "one command, no servers", so
nothing else (systemd, compose) would restart a worker killed by the OOM
killer or a hung job (:mod:`service.sweeper` exits a worker stuck past
JOB_TIMEOUT_SECONDS). /readyz asks :meth:`WorkerSupervisor.problem` and says
the worker is down until the new one has loaded its model.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("service.embedded")

BACKOFF_MAX = 30.0  # seconds between restarts of a worker that keeps dying at start-up
HEALTHY_AFTER = 60.0  # a worker that lived this long resets the back-off


def terminate(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM a child process (by PID only), SIGKILL it after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def beat_name(pid: int) -> str:
    """The heartbeat row name of worker process ``pid`` (see service.sweeper.worker_name)."""
    return f"{socket.gethostname()}:{pid}"


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the thread that started it (the supervisor) dies,
    even by SIGKILL of the whole API process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class WorkerSupervisor(threading.Thread):
    """Starts ``python -m service worker`` and starts it again whenever it exits."""

    def __init__(self, poll_seconds: float = 0.5) -> None:
        super().__init__(name="worker-supervisor", daemon=True)
        self.poll_seconds = poll_seconds
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.backoff = 1.0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=os.environ.copy(),
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()

    def run(self) -> None:
        """Spawned from this long-lived thread, so PR_SET_PDEATHSIG stays armed."""
        while not self.stop_event.is_set():
            with self.lock:
                if self.proc is None:
                    self._spawn()
                elif self.proc.poll() is not None:
                    self._restart()
            self.stop_event.wait(self.poll_seconds)

    def _restart(self) -> None:
        assert self.proc is not None
        code = self.proc.returncode
        lived = time.monotonic() - self.started_at
        self.backoff = 1.0 if lived > HEALTHY_AFTER else min(BACKOFF_MAX, self.backoff * 2)
        log.error("embedded worker %s exited (%s); restarting", self.proc.pid, code)
        if self.stop_event.wait(self.backoff):
            return
        self.restarts += 1
        self._spawn()

    def pid(self) -> int | None:
        """The running worker's pid, None while it is down."""
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def problem(self) -> str | None:
        if self.pid() is None:
            return f"embedded worker process is down, restarting (restarts so far: {self.restarts})"
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """No more restarts; SIGTERM the worker, SIGKILL it after ``timeout``."""
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        with self.lock:
            proc = self.proc
        terminate(proc, timeout)
