"""What the API's routes share (settings, database, storage, publisher) and its dependencies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from service.db import Database
from service.errors import ApiError
from service.queue import Publisher
from service.settings import Settings
from service.storage import Storage


@dataclass
class AppContext:
    settings: Settings
    db: Database
    storage: Storage
    publisher: Publisher


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def require_api_key(
    ctx: Ctx, x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None
) -> None:
    """401 without a key, 403 with a wrong one (or when the server has none configured)."""
    if not x_api_key:
        raise ApiError(401, "unauthorized", "this endpoint needs an X-API-Key header")
    expected = ctx.settings.api_key.get_secret_value() if ctx.settings.api_key else ""
    if not expected or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "invalid API key")


ApiKey = Depends(require_api_key)
