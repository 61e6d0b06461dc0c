"""The shift validation set: validation images as other hospitals' devices would show them.

Why: a test split carved from train hides the hospital shift (AUC 0.997 there,
0.969 on the official test split). Thresholds, calibration and robustness are
chosen and diagnosed on this set instead, built from the validation split only,
so the official test split stays untouched.

Where the corruptions apply: decode -> grayscale -> window (the 8-bit image a
device would have produced, :func:`study.data.preprocess.windowed`) ->
**corruption** -> normalise -> resize (:func:`study.data.preprocess.finish`).
Devices change the raw image; the model then sees it through exactly the
preprocessing of training, from the one preprocessing module. Without a
corruption the chain is :func:`~study.data.preprocess.prepare_pixels`, so the
clean images equal the study's cache (tested).

Each (image, corruption) gets its own seed derived from the study seed, the
corruption's name and the image's index in sorted path order, so the set is
deterministic and independent of input order and worker count; the severity
only scales the effect of the same random choices (see :func:`condition_rng`).
It is cached once under ``<cache_dir>/shift/<key>/`` as one ``.npy`` per
condition, keyed by the preprocessing config, the files' (path, size, mtime),
the seed and :data:`~study.data.corruptions.CORRUPTIONS_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from study.data.cache import cache_key
from study.data.corruptions import CORRUPTIONS_VERSION, SEVERITIES, Corruption, corrupt
from study.data.preprocess import PreprocessConfig, decode, finish, windowed

Condition = tuple[str, int]  # (corruption name, severity 1-3)
CONDITIONS: tuple[Condition, ...] = tuple((c.value, s) for c in Corruption for s in SEVERITIES)
CLEAN = "clean"


def condition_rng(seed: int, corruption: str, index: int) -> np.random.Generator:
    """The generator for one image under one corruption: a pure function of the three.

    The severity is deliberately not part of the seed: an image gets the same random
    choices (darker or brighter, positions, noise pattern) at every severity, so only the
    strength changes from severity 1 to 3 and the per-image effect grows monotonically.
    """
    name = zlib.crc32(corruption.encode())  # stable across runs, unlike hash()
    return np.random.default_rng(np.random.SeedSequence([seed, name, index]))


def _file_name(condition: Condition) -> str:
    return f"{condition[0]}-{condition[1]}.npy"


@dataclass
class ShiftSet:
    """Clean and corrupted validation images, uint8 (n, S, S) per condition, on disk."""

    directory: Path
    paths: list[str]
    failed: dict[str, str]
    reused: bool
    seconds: float

    @property
    def conditions(self) -> list[Condition]:
        return list(CONDITIONS)

    @property
    def clean(self) -> np.ndarray:
        """The uncorrupted images: the study's preprocessing of ``paths``."""
        return np.load(self.directory / f"{CLEAN}.npy")

    def images(self, condition: Condition) -> np.ndarray:
        """Images of one (corruption, severity), in the order of ``paths``."""
        if tuple(condition) not in CONDITIONS:
            raise KeyError(f"unknown shift condition {condition!r}")
        return np.load(self.directory / _file_name((condition[0], condition[1])))

    def all(self) -> tuple[np.ndarray, list[Condition]]:
        """Every corrupted image pooled (n_conditions * n, S, S) and each one's condition."""
        stacked = [self.images(c) for c in CONDITIONS]
        tags = [c for c, arr in zip(CONDITIONS, stacked, strict=True) for _ in range(len(arr))]
        return np.concatenate(stacked), tags


def shift_key(paths: Sequence[str], cfg: PreprocessConfig, seed: int) -> str:
    """Changes with the config, any file's (path, size, mtime), the seed or the corruptions."""
    blob = f"{cache_key(paths, cfg)}\0{seed}\0{CORRUPTIONS_VERSION}"
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _one_image(args: tuple[int, str, PreprocessConfig, int]) -> np.ndarray | str:
    """All conditions of one file, (1 + n_conditions, S, S), or the reason it is unreadable."""
    index, path, cfg, seed = args
    try:
        base = windowed(decode(Path(path).read_bytes()).pixels, cfg)
    except Exception as exc:  # a corrupt file is skipped and listed, as in the cache
        return f"{type(exc).__name__}: {exc}"
    out = [finish(base, cfg)]
    for name, severity in CONDITIONS:
        rng = condition_rng(seed, name, index)
        out.append(finish(corrupt(base, name, severity, rng), cfg))
    return np.stack(out)


def _load(directory: Path, t0: float) -> ShiftSet:
    meta = json.loads((directory / "index.json").read_text())
    return ShiftSet(directory, meta["paths"], meta["failed"], True, time.perf_counter() - t0)


def _names() -> list[str]:
    return [f"{CLEAN}.npy"] + [_file_name(c) for c in CONDITIONS]


def _compute(
    ordered: list[str],
    cfg: PreprocessConfig,
    seed: int,
    directory: Path,
    workers: int,
    progress: bool,
) -> dict[str, str]:
    """Write every condition's images into temporary .npy memmaps; return the unreadable files."""
    n, size, t0 = len(ordered), cfg.image_size, time.perf_counter()
    tmp = [directory / f"{name}.{os.getpid()}.tmp.npy" for name in _names()]
    # On-disk arrays filled row by row: RAM stays one image's conditions per worker.
    outs = [open_memmap(t, "w+", np.uint8, (n, size, size)) for t in tmp]
    failed: dict[str, str] = {}
    # Threads, as in the cache: OpenCV releases the GIL; the seeds do not depend on workers.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = [(i, p, cfg, seed) for i, p in enumerate(ordered)]
        for i, result in enumerate(pool.map(_one_image, jobs)):
            if isinstance(result, str):
                failed[ordered[i]] = result
            else:
                for out, img in zip(outs, result, strict=True):
                    out[i] = img
            if progress and ((i + 1) % 100 == 0 or i + 1 == n):
                rate = (i + 1) / (time.perf_counter() - t0)
                print(f"  shift: {i + 1}/{n} images ({rate:.1f}/s)", file=sys.stderr, flush=True)
    ok = np.array([p not in failed for p in ordered], bool)
    for j, (t, name) in enumerate(zip(tmp, _names(), strict=True)):
        outs[j].flush()
        if failed:  # rare: drop unreadable rows, as the cache does
            rows = np.array(outs[j][ok])
            outs[j] = rows  # releases the file's mapping before it is rewritten
            np.save(t, rows)
        t.replace(directory / name)
    return failed


def build_shift_set(
    paths: Sequence[str],
    cfg: PreprocessConfig,
    cache_dir: Path,
    seed: int,
    workers: int = 2,
    progress: bool = True,
) -> ShiftSet:
    """Load the shift set for (paths, cfg, seed), building it first if needed."""
    t0 = time.perf_counter()
    directory = Path(cache_dir) / "shift" / f"{cfg.image_size}px-{shift_key(paths, cfg, seed)}"
    if (directory / "index.json").is_file():
        shift = _load(directory, t0)
        print(
            f"shift: reused {directory} ({len(shift.paths)} images, {shift.seconds:.2f}s)",
            file=sys.stderr,
        )
        return shift
    ordered = sorted(paths)
    if not ordered:
        raise ValueError("no validation files to build the shift set from")
    directory.mkdir(parents=True, exist_ok=True)
    failed = _compute(ordered, cfg, seed, directory, workers, progress)
    kept = [p for p in ordered if p not in failed]
    if not kept:
        raise ValueError(f"none of the {len(ordered)} validation files could be read")
    meta = {
        "config": cfg.to_dict(),
        "seed": seed,
        "corruptions_version": CORRUPTIONS_VERSION,
        "conditions": [list(c) for c in CONDITIONS],
        "paths": kept,
        "failed": failed,
        "built_at": time.time(),
    }
    tmp_meta = directory / f"index.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps(meta))
    tmp_meta.replace(directory / "index.json")  # last: its presence marks a complete set
    seconds = time.perf_counter() - t0
    print(
        f"shift: built {directory} ({len(kept)} images x {len(CONDITIONS)} conditions, "
        f"{seconds:.1f}s)",
        file=sys.stderr,
    )
    return ShiftSet(directory, kept, failed, False, seconds)


# --------------------------------------------------------------------------- per-trial sample

SAMPLE_STREAM = "sample"  # the seed stream that picks each image's condition


def sample_conditions(n: int, seed: int) -> list[Condition]:
    """Image i's condition in the shift sample: a pure function of (seed, i), so every
    trial, whatever its preprocessing, sees each image under the same corruption."""
    return [
        CONDITIONS[int(condition_rng(seed, SAMPLE_STREAM, i).integers(len(CONDITIONS)))]
        for i in range(n)
    ]


@dataclass
class ShiftSample:
    """Each validation image once, under one seeded random condition: what every trial is
    scored on (the full grid of :func:`build_shift_set` is for the finalists)."""

    paths: list[str]
    conditions: list[Condition]
    images: np.ndarray  # uint8 (n, S, S)


def _sample_image(args: tuple[int, str, PreprocessConfig, int, Condition]) -> np.ndarray | str:
    index, path, cfg, seed, (name, severity) = args
    try:
        base = windowed(decode(Path(path).read_bytes()).pixels, cfg)
    except Exception as exc:  # unreadable: left out and listed, as in the cache
        return f"{type(exc).__name__}: {exc}"
    return finish(corrupt(base, name, severity, condition_rng(seed, name, index)), cfg)


def build_shift_sample(
    paths: Sequence[str], cfg: PreprocessConfig, cache_dir: Path, seed: int, workers: int = 2
) -> ShiftSample:
    """Load (or build once, then cache) the shift sample of ``paths`` under ``cfg``.

    Image i under its condition equals row i of that condition in the full shift set
    (same per-image seed), so trial scores and the finalists' grid agree.
    """
    ordered = sorted(paths)
    key = shift_key(ordered, cfg, seed)
    directory = Path(cache_dir) / "shift" / f"sample-{cfg.image_size}px-{key}"
    conditions = sample_conditions(len(ordered), seed)
    if (directory / "index.json").is_file():
        meta = json.loads((directory / "index.json").read_text())
        keep = {p: c for p, c in zip(ordered, conditions, strict=True)}
        kept = meta["paths"]
        return ShiftSample(kept, [keep[p] for p in kept], np.load(directory / "images.npy"))
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(i, p, cfg, seed, c) for i, (p, c) in enumerate(zip(ordered, conditions, strict=True))]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(_sample_image, jobs))
    ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
    if not ok:
        raise ValueError(f"none of the {len(ordered)} validation files could be read")
    images = np.stack([results[i] for i in ok])
    tmp = directory / f"images.{os.getpid()}.tmp.npy"
    np.save(tmp, images)
    tmp.replace(directory / "images.npy")
    kept = [ordered[i] for i in ok]
    tmp_meta = directory / f"index.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps({"paths": kept, "config": cfg.to_dict(), "seed": seed}))
    tmp_meta.replace(directory / "index.json")
    return ShiftSample(kept, [conditions[i] for i in ok], images)
