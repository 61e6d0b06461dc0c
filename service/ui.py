"""The browser pages: ``/`` (upload a chest X-ray) and ``/review`` (label uploads).

Plain HTML/CSS/JS files from ``service/static``: no build step, no CDN, so
the pages work offline and ship with the service. Only a fixed list of files
is served (no path from the URL ever reaches the file system). Every page
gets a Content-Security-Policy that allows scripts, styles and requests from
this origin only; ``blob:`` images are allowed so a page can show the user's
own file (upload page) or a preview fetched with the API key (review page)
without putting either on a public URL. The pages hold no secrets: the
reviewer types the API key, which stays in the tab's sessionStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

STATIC = Path(__file__).resolve().parent / "static"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Sent with every UI file. no-cache: the browser revalidates, so a new release shows at once.
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# name -> media type: the only files /static/ serves.
ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "upload.js": "text/javascript; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False, tags=["ui"])


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/")
def upload_page() -> FileResponse:
    """Upload a file, watch the job, see the answer with its heatmap."""
    return _page("index.html")


@router.get("/review")
def review_page() -> FileResponse:
    """The reviewer's queue of unlabelled uploads (needs the API key, typed in the page)."""
    return _page("review.html")


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    """One of ASSETS, by exact name; anything else is a 404."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", "no such file")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
