"""Backpressure: refuse an upload before anything is stored, when the client or the queue is over
its limit.

A dependency of ``POST /v1/predictions`` (``dependencies=[Admit]``), so it
runs before the upload is written to storage or the database: a refused
upload leaves no row and no file.

- Per client (RATE_LIMIT, e.g. ``30/minute``): a moving window from the
  ``limits`` library, keyed by the client address; 429 + Retry-After (the
  seconds until the window frees a slot). Counters live in
  RATE_LIMIT_STORAGE (process memory, or Redis to share them).
- Queue depth (MAX_QUEUE_DEPTH): jobs queued or running, counted on the
  status index (:func:`service.jobs.active_counts`); 503 + Retry-After.
  A soft limit: requests admitted at the same instant may pass it by at
  most the number of requests in flight.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from service import jobs
from service.context import Ctx
from service.errors import ApiError

_LOCK = threading.Lock()


class RateLimit:
    """One ``limits`` rate-limit item and its storage, built once per app."""

    def __init__(self, spec: str, storage_uri: str) -> None:
        self.item: RateLimitItem = parse(spec)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def retry_after(self, key: str) -> int | None:
        """None when this request fits in the window, else the seconds to wait."""
        if self.limiter.hit(self.item, "upload", key):
            return None
        reset = self.limiter.get_window_stats(self.item, "upload", key).reset_time
        return max(1, math.ceil(reset - time.time()))


def _rate_limit(request: Request, spec: str, storage_uri: str) -> RateLimit:
    state = request.app.state
    with _LOCK:
        rl = getattr(state, "rate_limit", None)
        if rl is None:
            rl = state.rate_limit = RateLimit(spec, storage_uri)
    return rl


def admit_upload(ctx: Ctx, request: Request) -> None:
    """Raise 429 (client over RATE_LIMIT) or 503 (queue over MAX_QUEUE_DEPTH); else pass."""
    s = ctx.settings
    metrics = request.app.state.metrics
    if s.rate_limit:
        client = request.client.host if request.client else "unknown"
        wait = _rate_limit(request, s.rate_limit, s.rate_limit_storage).retry_after(client)
        if wait is not None:
            metrics.uploads.labels("rate_limited").inc()
            raise ApiError(
                429,
                "rate_limited",
                f"too many uploads from this client (limit {s.rate_limit}); retry in {wait} s",
                {"Retry-After": str(wait)},
            )
    if s.max_queue_depth > 0:
        depth = sum(jobs.active_counts(ctx.db).values())
        if depth >= s.max_queue_depth:
            metrics.uploads.labels("queue_full").inc()
            raise ApiError(
                503,
                "queue_full",
                f"{depth} jobs are waiting (limit {s.max_queue_depth}); nothing was stored, "
                "retry later",
                {"Retry-After": str(s.retry_after_seconds)},
            )


Admit = Depends(admit_upload)
