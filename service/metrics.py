"""Prometheus metrics. Request counts/latencies are counted in the API process; job figures
(queue depth, predictions by status and label, inference time) are read from the database, so
they are right however many worker processes there are.

What a scrape costs: the queue depth is counted fresh each time on the status index, which
touches only queued and running rows (at most MAX_QUEUE_DEPTH of them). The whole-table
totals (by status and label, inference time) are one aggregate query, reused for
METRICS_CACHE_SECONDS: however often and by however many scrapers, the table is scanned at
most once per that interval per API process. Why not counters kept by the workers: they are
separate processes without an HTTP endpoint, and a table of counters would need every job's
finish to update one hot row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from service.db import Database
from service.jobs import active_counts
from service.models import JobStatus, Prediction

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class JobCollector:
    """Queue depth (fresh), predictions by status/label and inference time (cached totals)."""

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self.lock = threading.Lock()
        self.cached: tuple[float, Any] | None = None

    def _totals(self) -> tuple[list[Any], Any]:
        """The whole-table aggregate, at most once per cache_seconds."""
        with self.lock:
            if self.cached and time.monotonic() - self.cached[0] < self.cache_seconds:
                return self.cached[1]
            with self.db.session() as s:
                by = s.execute(
                    select(Prediction.status, Prediction.label, func.count()).group_by(
                        Prediction.status, Prediction.label
                    )
                ).all()
                inf = s.execute(
                    select(
                        func.count(), func.coalesce(func.sum(Prediction.inference_ms), 0.0)
                    ).where(Prediction.inference_ms.is_not(None))
                ).one()
            self.cached = (time.monotonic(), (by, inf))
            return by, inf

    def collect(self) -> Iterator[object]:
        try:
            depth = active_counts(self.db)
            by, inf = self._totals()
        except Exception:
            return
        preds = GaugeMetricFamily(
            "pneumoscope_predictions", "Predictions by status and label", labels=["status", "label"]
        )
        for status, n in depth.items():  # fresh: the cached totals may lag behind
            preds.add_metric([status, ""], n)
        for status, label, n in by:
            if status not in ACTIVE:
                preds.add_metric([status, label or ""], n)
        yield preds
        q = GaugeMetricFamily(
            "pneumoscope_queue_depth", "Jobs waiting or running", labels=["state"]
        )
        for k, v in depth.items():
            q.add_metric([k], v)
        yield q
        summ = SummaryMetricFamily(
            "pneumoscope_inference_seconds",
            "Model time per finished prediction (preprocess+predict)",
        )
        summ.add_metric([], count_value=int(inf[0]), sum_value=float(inf[1]) / 1000.0)
        yield summ


class Metrics:
    """A registry per app (so tests can build many apps) plus the request middleware."""

    def __init__(self, db: Database, cache_seconds: float = 30.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pneumoscope_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pneumoscope_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.uploads = Counter(
            "pneumoscope_uploads",
            "Upload outcomes at the request",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(JobCollector(db, cache_seconds))

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(request.method, path, str(status)).inc()
            self.latency.labels(request.method, path).observe(time.perf_counter() - t0)
