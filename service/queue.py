"""The Celery app and the one way to send a job; shared by the API, the worker and the sweeper.

Only the prediction id travels through the broker: the database is the
source of truth, so a broker that loses messages (SQLite transport after a
SIGKILL, a Redis restart without persistence) loses no jobs: workers re-send
stale ones (:mod:`service.sweeper`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings

TASK_NAME = "service.predict"
QUEUE = "predictions"
# Fail fast when the broker is down: the API answers 503 instead of hanging.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}


class BrokerUnavailable(RuntimeError):
    """The job could not be handed to the broker."""


def _transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.broker
    if url.startswith("redis"):
        return {
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "retry_on_timeout": False,
        }
    if url.startswith("sqla+sqlite"):
        # kombu hands these to create_engine: wait on a locked SQLite file rather than fail.
        return {"connect_args": {"timeout": 30}}
    return {}


def create_celery(settings: Settings) -> Celery:
    app = Celery("pneumoscope", broker=settings.broker, backend=settings.result_backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options=_transport_options(settings),
        task_serializer="json",
        accept_content=["json"],
    )
    return app


class Publisher:
    """Sends prediction ids to the broker; the API and the sweeper use it."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, prediction_id: str) -> None:
        try:
            self.app.send_task(
                TASK_NAME,
                args=[prediction_id],
                queue=QUEUE,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except Exception as exc:  # kombu raises many types for a dead broker
            raise BrokerUnavailable(type(exc).__name__) from exc

    def ping(self) -> str | None:
        """None when the broker answers, else a short reason (no URLs: they may hold passwords)."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
                if conn.transport_cls.startswith("redis") or "redis" in str(conn.transport_cls):
                    conn.default_channel.client.ping()
            return None
        except Exception as exc:
            return f"broker unreachable ({type(exc).__name__})"
