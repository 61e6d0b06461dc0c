"""A thread in every worker: heartbeat (for /readyz), lease renewal, re-sending lost jobs,
ending hung jobs, and the automatic retention purge.

Why: brokers lose messages (the SQLite transport marks a fetched message
invisible forever, so a SIGKILLed worker's job would vanish; a Redis restart
without persistence drops its queue). The database knows every job, so each
worker periodically re-sends jobs whose lease expired or that stayed queued
too long; :func:`service.jobs.claim` makes duplicates harmless.

A job that runs past JOB_TIMEOUT_SECONDS is failed (under its claim token)
and the process exits: the solo pool's only thread is stuck in it, so only a
fresh process (restarted by the embedded supervisor, or compose/systemd) can
serve again. Leases stop being renewed the moment that happens.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from service import jobs, retention
from service.embedded import beat_name
from service.queue import BrokerUnavailable
from service.tasks import WorkerState

log = logging.getLogger("service.sweeper")


def worker_name() -> str:
    return beat_name(os.getpid())


class Sweeper(threading.Thread):
    def __init__(self, state: WorkerState, on_hung: Callable[[], None] | None = None) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.state = state
        self.on_hung = on_hung or _exit_hung
        self.last_purge = float("-inf")
        self.stop_event = threading.Event()
        s = state.settings
        self.tick = max(0.2, min(s.sweep_interval_seconds, s.lease_seconds / 3.0))
        self.name_ = worker_name()

    def run(self) -> None:
        since_sweep = float("inf")
        while not self.stop_event.is_set():
            try:
                self.renew_leases()
                if since_sweep >= self.state.settings.sweep_interval_seconds:
                    self.beat_and_sweep()
                    since_sweep = 0.0
            except Exception as exc:  # a DB blip must not kill the thread
                log.warning("sweeper tick failed: %s", type(exc).__name__)
            since_sweep += self.tick
            self.stop_event.wait(self.tick)

    def renew_leases(self) -> None:
        """Renew held jobs' leases; a job past JOB_TIMEOUT_SECONDS is failed, the process ends."""
        st, s = self.state, self.state.settings
        with st.lock:
            current = list(st.current.values())
        for claimed, started in current:
            if time.monotonic() - started > s.job_timeout_seconds:
                msg = f"processing took over {s.job_timeout_seconds:g} s (JOB_TIMEOUT_SECONDS)"
                jobs.finish_failed(st.db, claimed, msg)
                log.error("prediction %s hung; failed, worker exits", claimed.prediction_id)
                self.on_hung()
                return
            if not jobs.renew(st.db, claimed, s.lease_seconds):
                log.warning("prediction %s: lease lost to another claim", claimed.prediction_id)

    def beat_and_sweep(self) -> None:
        st, s = self.state, self.state.settings
        jobs.beat(st.db, self.name_, st.runtime.name, st.runtime.version)
        jobs.fail_exhausted(st.db, s.max_attempts)
        for pid in jobs.stale_jobs(st.db, s.requeue_after_seconds):
            with st.lock:
                if pid in st.current:
                    continue
            try:
                st.publisher.send(pid)
                jobs.mark_enqueued(st.db, pid)
                log.info("re-sent stale prediction %s", pid)
            except BrokerUnavailable:
                log.warning("broker unavailable; will re-send stale jobs later")
                break
        self.maybe_purge()

    def maybe_purge(self) -> None:
        """RETENTION_DAYS set: purge every PURGE_INTERVAL_SECONDS (idempotent across workers)."""
        s = self.state.settings
        if s.retention_days is None:
            return
        if time.monotonic() - self.last_purge < s.purge_interval_seconds:
            return
        self.last_purge = time.monotonic()
        done = retention.purge(self.state.db, self.state.storage, s.retention_days)
        if done.uploads:
            log.info("retention: purged %s", done)

    def stop(self) -> None:
        self.stop_event.set()


def _exit_hung() -> None:
    """Exit now: the hung job's thread cannot be interrupted, and no clean-up may wait on it."""
    logging.shutdown()
    os._exit(70)
