"""What the API's routes share (settings, database, storage, publisher) and its dependencies."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated, Any

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


_ID = re.compile(r"^[0-9a-f]{32}$")


def get_or_404(ctx: AppContext, model: Any, row_id: str, what: str) -> Any:
    """The row with this server-made id, or a JSON 404 (malformed ids never reach the DB)."""
    if _ID.match(row_id):
        with ctx.db.session() as s:
            row = s.get(model, row_id)
        if row is not None:
            return row
    raise ApiError(404, "not_found", f"no such {what}")
