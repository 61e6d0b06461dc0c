"""A thread in every worker: heartbeat (for /readyz), lease renewal, and re-sending lost jobs.

Why: brokers lose messages (the SQLite transport marks a fetched message
invisible forever, so a SIGKILLed worker's job would vanish; a Redis restart
without persistence drops its queue). The database knows every job, so each
worker periodically re-sends jobs whose lease expired or that stayed queued
too long; :func:`service.jobs.claim` makes duplicates harmless.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from service import jobs
from service.queue import BrokerUnavailable
from service.tasks import WorkerState

log = logging.getLogger("service.sweeper")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Sweeper(threading.Thread):
    def __init__(self, state: WorkerState) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.state = state
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
        with self.state.lock:
            current = list(self.state.current)
        for pid in current:
            jobs.renew(self.state.db, pid, self.state.settings.lease_seconds)

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
                return

    def stop(self) -> None:
        self.stop_event.set()
