"""Preprocess the dataset once into an on-disk cache keyed by the preprocessing config.

No epoch ever decodes a JPEG again: the train/val/test pipelines read the
uint8 arrays written here. The key covers the preprocessing config and every
file's (path, size, mtime), so a changed config or file builds a new cache
and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from study.data.preprocess import PreprocessConfig, prepare


@dataclass
class ImageCache:
    """Preprocessed uint8 images (N, S, S) for ``paths``; ``failed`` lists unreadable files."""

    directory: Path
    paths: list[str]
    images: np.ndarray
    failed: dict[str, str]
    reused: bool
    seconds: float
    config: PreprocessConfig = field(default_factory=PreprocessConfig)

    def index_of(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def take(self, paths: Sequence[str]) -> np.ndarray:
        """Images for ``paths`` in that order (all must be cached)."""
        idx = self.index_of()
        return self.images[[idx[p] for p in paths]]


def cache_key(paths: Sequence[str], cfg: PreprocessConfig) -> str:
    h = hashlib.sha256(cfg.key().encode())
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _prepare_file(args: tuple[str, PreprocessConfig]) -> tuple[np.ndarray | None, str | None]:
    path, cfg = args
    try:
        return prepare(Path(path).read_bytes(), cfg), None
    except Exception as exc:  # a corrupt file is skipped and listed, never a crash
        return None, f"{type(exc).__name__}: {exc}"


def build_cache(
    paths: Sequence[str],
    cfg: PreprocessConfig,
    cache_root: Path,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """Load the cache for (paths, cfg), building it first if needed."""
    t0 = time.perf_counter()
    directory = Path(cache_root) / f"{cfg.image_size}px-{cache_key(paths, cfg)}"
    meta_path = directory / "index.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        images = np.load(directory / "images.npy", mmap_mode="r")
        return ImageCache(
            directory,
            meta["paths"],
            np.asarray(images),
            meta["failed"],
            True,
            time.perf_counter() - t0,
            cfg,
        )
    ordered = sorted(paths)
    n = len(ordered)
    images = np.zeros((n, cfg.image_size, cfg.image_size), np.uint8)
    ok = np.zeros(n, bool)
    failed: dict[str, str] = {}
    # Threads, not processes: OpenCV releases the GIL while decoding and filtering, and
    # no process is forked after TensorFlow was imported.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_prepare_file, [(p, cfg) for p in ordered])
        for i, (img, err) in enumerate(results):
            if err is None:
                images[i], ok[i] = img, True
            else:
                failed[ordered[i]] = err
            if progress and ((i + 1) % 500 == 0 or i + 1 == n):
                rate = (i + 1) / (time.perf_counter() - t0)
                print(f"  cache: {i + 1}/{n} images ({rate:.0f}/s)", file=sys.stderr, flush=True)
    kept = [p for p, k in zip(ordered, ok, strict=True) if k]
    images = images[ok]
    directory.mkdir(parents=True, exist_ok=True)
    # Unique temporary names and atomic renames: distributed workers may build the same
    # cache at once, and a killed build must never look complete.
    tmp = directory / f"images.{os.getpid()}.tmp.npy"
    np.save(tmp, images)
    tmp.replace(directory / "images.npy")
    meta = {"config": cfg.to_dict(), "paths": kept, "failed": failed, "built_at": time.time()}
    tmp_meta = directory / f"index.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps(meta))
    tmp_meta.replace(meta_path)  # last: its presence marks a complete cache
    return ImageCache(directory, kept, images, failed, False, time.perf_counter() - t0, cfg)
