"""Fetch the Kermany chest X-ray set from Kaggle into ``<dest>/{train,val,test}``.

Why each piece:

* The dataset is skipped when ``dest`` already holds the complete release
  (counted per split and class), so a study never re-downloads 1.2 GB.
* ``kaggle`` authenticates (and may print or ``exit()``) at *import* time, so it
  is imported lazily, with stdout captured and ``SystemExit`` caught.
* Credentials and the network are checked up front with short timeouts, and
  the download itself runs under a stall watchdog: the Kaggle client sets no
  socket timeouts, and a study must fail with a clear message, not hang.
* The Kaggle zip nests the data (``chest_xray/{train,val,test}`` plus a
  duplicate ``chest_xray/chest_xray`` and ``__MACOSX``); the layout is
  normalised to ``dest/{train,val,test}``.

Every failure is a :class:`DownloadError` whose message says how to point
``--data-dir`` at an existing copy instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

from study.data.records import CLASS_NAMES, IMAGE_SUFFIXES
from study.paths import REPO

DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_HOST = "api.kaggle.com"  # where the client sends its requests
DEFAULT_DEST = REPO / "data" / "chest_xray"
#: Images per split and class in the Kaggle release.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
    "val": {"NORMAL": 8, "PNEUMONIA": 8},
    "test": {"NORMAL": 234, "PNEUMONIA": 390},
}

_HINT = (
    "To use a copy you already have, point --data-dir (or PNEUMOSCOPE_DATA_DIR) at a folder "
    "in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/, e.g. "
    "--data-dir ../shared/data/chest_xray."
)


class DownloadError(RuntimeError):
    """The dataset could not be fetched; the message says why and what to do instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}\n{_HINT}")
        self.reason = reason


# ----------------------------------------------------------------------------- layout


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Images per split and class under root/<split>/<CLASS>/ (0 when missing)."""
    out: dict[str, dict[str, int]] = {}
    for split in EXPECTED_COUNTS:
        out[split] = {}
        for cls in CLASS_NAMES:
            folder = Path(root) / split / cls
            n = sum(1 for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else 0
            out[split][cls] = n
    return out


def missing_images(root: Path) -> list[str]:
    """Human-readable differences from the expected release (empty when complete)."""
    counts = count_images(root)
    return [
        f"{split}/{cls}: {counts[split][cls]} of {want}"
        for split, per_cls in EXPECTED_COUNTS.items()
        for cls, want in per_cls.items()
        if counts[split][cls] != want
    ]


def is_complete(root: Path) -> bool:
    return not missing_images(root)


def _find_release_root(staging: Path) -> Path:
    """The shallowest folder under staging that holds train/val/test, skipping __MACOSX.

    The Kaggle zip holds ``chest_xray/{train,val,test}`` and a nested duplicate
    ``chest_xray/chest_xray/...``; the shallowest complete copy wins, then the
    shallowest with a ``train`` folder.
    """
    candidates = [staging] + sorted(
        (p for p in staging.rglob("*") if p.is_dir() and "__MACOSX" not in p.parts),
        key=lambda p: (len(p.parts), str(p)),
    )
    candidates = [p for p in candidates if (p / "train").is_dir()]
    for p in candidates:
        if is_complete(p):
            return p
    if candidates:
        return candidates[0]
    raise DownloadError(f"the downloaded archive has no train/ folder (looked in {staging})")


def normalise_layout(staging: Path, dest: Path) -> Path:
    """Move the release's train/val/test from wherever the zip put them to dest/."""
    root = _find_release_root(Path(staging))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for split in EXPECTED_COUNTS:
        src = root / split
        if not src.is_dir():
            continue
        target = dest / split
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(src), str(target))
    # AppleDouble files ("._x.jpeg") would look like images to a careless glob.
    for junk in dest.rglob("._*"):
        if junk.is_file():
            junk.unlink()
    return dest


# ----------------------------------------------------------------------------- checks


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def credentials_source() -> str | None:
    """Where Kaggle credentials would come from, or None (checked without importing kaggle)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    dirs = [os.environ.get("KAGGLE_CONFIG_DIR"), _home() / ".kaggle"]
    xdg = os.environ.get("XDG_CONFIG_HOME") or _home() / ".config"
    dirs.append(Path(xdg) / "kaggle")
    for d in dirs:
        if not d:
            continue
        for name in ("kaggle.json", "access_token"):
            if (Path(d) / name).is_file():
                return str(Path(d) / name)
    return None


def check_network(host: str = KAGGLE_HOST, timeout: float = 10.0) -> None:
    """Open (and close) a TCP connection to Kaggle or the HTTPS proxy, or raise DownloadError."""
    proxy = getproxies().get("https")
    target, port = host, 443
    if proxy and not proxy_bypass(host):
        u = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        target, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((target, port), timeout=timeout):
            pass
    except OSError as e:
        via = f" via proxy {target}:{port}" if target != host else ""
        raise DownloadError(
            f"cannot reach {host}{via} ({type(e).__name__}: {e}); no network access to Kaggle."
        ) from e


def _make_api() -> Any:
    """An authenticated ``KaggleApi``; imported here because ``import kaggle`` authenticates."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit as e:  # kaggle calls exit(1) when no credentials work
        raise DownloadError(
            "Kaggle authentication failed (no usable credentials): put kaggle.json in "
            "~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY."
        ) from e
    except Exception as e:  # noqa: BLE001 - any client failure becomes one clear error
        raise DownloadError(f"Kaggle client failed to start: {type(e).__name__}: {e}") from e
    return api


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def _run_with_watchdog(fn: Callable[[], None], watch: Path, stall_seconds: float) -> None:
    """Run fn in a daemon thread; give up when ``watch`` has not grown for stall_seconds.

    The Kaggle client uses requests without timeouts, so a dead connection
    would otherwise block forever. A stalled thread is abandoned (daemon).
    """
    result: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True, name="kaggle-download")
    t.start()
    last_size, last_change = -1, time.monotonic()
    while t.is_alive():
        t.join(timeout=min(2.0, stall_seconds))
        size = _dir_bytes(watch)
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > stall_seconds:
            raise DownloadError(
                f"download from Kaggle stalled: no data for {stall_seconds:.0f}s "
                f"({last_size} bytes received)."
            )
    err = result.get("error")
    if err is not None:
        raise err


def download(
    dest: Path = DEFAULT_DEST,
    *,
    overwrite: bool = False,
    network_timeout: float = 10.0,
    stall_seconds: float = 120.0,
) -> Path:
    """Make ``dest/{train,val,test}`` hold the Kaggle release; returns dest.

    Skips everything when dest is already complete. Refuses to replace an
    incomplete, non-empty dest unless ``overwrite`` (it may be someone's data).
    """
    dest = Path(dest)
    if is_complete(dest):
        return dest
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise DownloadError(
            f"{dest} exists but is not the complete Kaggle release "
            f"({'; '.join(missing_images(dest))}); not touching it. Remove it, "
            "or pass overwrite=True to replace its train/val/test folders."
        )
    source = credentials_source()
    if source is None:
        raise DownloadError(
            "no Kaggle credentials: put kaggle.json (from https://www.kaggle.com/settings/api) "
            "in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY."
        )
    check_network(timeout=network_timeout)
    api = _make_api()

    staging = dest.parent / f".{dest.name}.download"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    print(f"downloading {DATASET} (about 1.2 GB) into {staging} ...", file=sys.stderr)

    def fetch() -> None:
        api.dataset_download_files(DATASET, path=str(staging), quiet=False, unzip=True)

    try:
        _run_with_watchdog(fetch, staging, stall_seconds)
        normalise_layout(staging, dest)
    except DownloadError:
        raise
    except Exception as e:  # noqa: BLE001 - HTTP, auth, disk: one clear error type
        raise DownloadError(
            f"downloading {DATASET} failed ({type(e).__name__}: {e}); "
            f"credentials from {source}. Check them and the network."
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    missing = missing_images(dest)
    if missing:
        raise DownloadError(f"the download is incomplete: {'; '.join(missing)}")
    return dest
