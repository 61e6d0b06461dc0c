"""Dataset audit: read every file once, find duplicates, corrupt files and leaks.

Why: the Kermany collection contains exact duplicates (same bytes under two
names) and near duplicates (re-encoded or resized copies). A duplicate on both
sides of a split inflates every test metric, so the audit's clusters are fed to
:func:`study.data.records.make_splits` as ``linked`` and :meth:`AuditReport.cross_split`
proves afterwards that no patient and no duplicate crosses a split.

Per file we keep: sha256 of the bytes, a 64-bit perceptual hash
(``imagehash.phash`` on the decoded grayscale), original width/height, bit
depth, channels, intensity mean/std (scaled to [0, 1] whatever the bit depth)
and a sharpness score (variance of the Laplacian after resampling to a fixed
size, so scores are comparable across resolutions). Images are read through
:func:`study.data.preprocess.decode` only, so the audit sees exactly what training
sees. Rows are cached by (path, size, mtime) so a rerun is instant.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from study.data.records import CLASS_NAMES, SPLITS, ImageRecord, SplitPlan
from study.paths import DEFAULT_CACHE_DIR

#: Bump when the row fields or how they are computed change: invalidates the cache.
AUDIT_VERSION = 1
#: phash side: 16 -> a 256-bit hash. The usual 8 (64 bits) cannot tell these
#: pediatric X-rays apart: on the 5,216 training images two *different* X-rays
#: (pixel correlation 0.83) are 2 bits apart and a threshold of 6 chains 635
#: files into one cluster. At 256 bits different X-rays stay >= 38 bits apart,
#: while a JPEG re-encode (quality 70), a resize or a brightness shift moves the
#: hash by at most ~6 bits; 20 sits in the middle of that gap.
PHASH_SIZE = 16
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
#: Largest phash Hamming distance (of PHASH_BITS) still called a near duplicate.
NEAR_DUP_MAX_DISTANCE = 20
#: Side of the square resample on which the sharpness (Laplacian variance) is taken.
SHARPNESS_SIZE = 256
#: Fewer files than this are read in-process: starting workers would cost more.
MIN_FILES_FOR_POOL = 200
#: Default cache folder (git-ignored data/ of the repository).


@dataclass
class AuditRow:
    """What one read of one file tells us; ``error`` non-empty means corrupt/unreadable."""

    path: str
    size: int = 0  # bytes on disk
    mtime_ns: int = 0
    sha256: str = ""
    phash: str = ""  # PHASH_BITS / 4 hex digits
    format: str = ""
    width: int = 0
    height: int = 0
    bit_depth: int = 0
    channels: int = 0
    mean: float = float("nan")  # grayscale intensity scaled to [0, 1]
    std: float = float("nan")
    sharpness: float = float("nan")
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _integrity_problem(data: bytes, fmt: str) -> str:
    """Truncation that OpenCV silently papers over (it fills the rest with grey)."""
    tail = data.rstrip(b"\x00\r\n\t ")
    if fmt == "jpeg" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG: no end-of-image marker (decodes with a grey band)"
    if fmt == "png" and b"IEND" not in tail[-16:]:
        return "truncated PNG: no IEND chunk"
    return ""


def audit_file(path: str) -> AuditRow:
    """Read one file once and measure it; never raises (errors land in ``row.error``)."""
    import cv2
    import imagehash
    from PIL import Image

    from study.data.preprocess import decode, to_grayscale

    row = AuditRow(path=path)
    try:
        st = os.stat(path)
        row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
        data = Path(path).read_bytes()
    except OSError as e:
        row.error = f"unreadable: {e.strerror or e}"
        return row
    row.sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        row.error = "empty file"
        return row
    try:
        dec = decode(data)
        row.format = dec.format
        problem = _integrity_problem(data, dec.format)
        if problem:
            row.error = problem
            return row
        px = dec.pixels
        row.height, row.width = int(px.shape[0]), int(px.shape[1])
        row.channels = 1 if px.ndim == 2 else int(px.shape[2])
        row.bit_depth = int(dec.meta.get("bit_depth", 8 * px.dtype.itemsize))
        gray = to_grayscale(px)
        full = float(np.iinfo(gray.dtype).max) if gray.dtype.kind in "ui" else 1.0
        g = gray.astype(np.float32) / full
        row.mean, row.std = float(g.mean()), float(g.std())
        # Linear 8-bit view (no windowing) so an 8- and a 16-bit copy hash alike.
        g8 = np.rint(np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)
        row.phash = str(imagehash.phash(Image.fromarray(g8), hash_size=PHASH_SIZE))
        h, w = g8.shape
        interp = cv2.INTER_AREA if max(h, w) > SHARPNESS_SIZE else cv2.INTER_LINEAR
        small = cv2.resize(g8, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=interp)
        row.sharpness = float(cv2.Laplacian(small, cv2.CV_64F).var())
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        row.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return row


def _init_worker() -> None:
    """One OpenCV thread per worker: the pool already uses every core we may use."""
    import cv2

    cv2.setNumThreads(1)


# ----------------------------------------------------------------------------- cache


def _cache_file(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"audit_rows.v{AUDIT_VERSION}.json"


def _cache_params() -> dict[str, Any]:
    return {"version": AUDIT_VERSION, "sharpness_size": SHARPNESS_SIZE, "phash_size": PHASH_SIZE}


def _load_cache(cache_dir: Path | None) -> dict[str, dict]:
    """Rows by absolute path; a missing, foreign or damaged cache is simply empty."""
    if cache_dir is None:
        return {}
    f = _cache_file(cache_dir)
    try:
        blob = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    if blob.get("params") != _cache_params():
        return {}
    return blob.get("rows", {})


def _save_cache(cache_dir: Path | None, rows: dict[str, dict]) -> None:
    """Atomic write, so an interrupted run never leaves half a cache."""
    if cache_dir is None:
        return
    f = _cache_file(cache_dir)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"params": _cache_params(), "rows": rows}))
    os.replace(tmp, f)


_ROW_FIELDS = {f.name for f in fields(AuditRow)}


def _row_from_cache(path: str, d: dict) -> AuditRow:
    return AuditRow(**{k: v for k, v in d.items() if k in _ROW_FIELDS} | {"path": path})


# ----------------------------------------------------------------------------- duplicates


def _pack(hex_hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes -> (n, words) uint64 array, for vectorised XOR + popcount."""
    n_words = PHASH_BITS // 64
    out = np.zeros((len(hex_hashes), n_words), dtype=np.uint64)
    for i, h in enumerate(hex_hashes):
        for w in range(n_words):
            out[i, w] = int(h[16 * w : 16 * (w + 1)], 16)
    return out


def _hamming_pairs(packed: np.ndarray, max_distance: int, block: int = 512) -> list[tuple]:
    """All (i, j, d) with i < j and Hamming distance d <= max_distance.

    Blocked NumPy pairwise XOR + popcount on packed uint64 words: 5k hashes of
    256 bits take about a second and memory stays at block x n x words bytes.
    """
    h = np.asarray(packed, dtype=np.uint64)
    if h.ndim == 1:
        h = h[:, None]
    n = len(h)
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        d = np.zeros((stop - start, n), dtype=np.uint16)
        for w in range(h.shape[1]):
            d += np.bitwise_count(h[start:stop, None, w] ^ h[None, :, w])
        ii, jj = np.nonzero(d <= max_distance)
        keep = jj > ii + start
        ii, jj = ii[keep], jj[keep]
        out += zip((ii + start).tolist(), jj.tolist(), d[ii, jj].tolist(), strict=True)
    return out


def _components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def find_duplicates(
    rows: Sequence[AuditRow], max_distance: int = NEAR_DUP_MAX_DISTANCE
) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Exact clusters (same sha256) and near clusters (phash <= max_distance).

    Near clusters are built on distinct contents (one node per sha256), so a
    cluster made only of byte-identical files is exact, not near; a near
    cluster lists every path of its member contents. Also returns the largest
    pairwise-edge distance inside each near cluster (for the report).
    """
    by_sha: dict[str, list[str]] = defaultdict(list)
    phash_of: dict[str, str] = {}
    for r in rows:
        if r.ok:
            by_sha[r.sha256].append(r.path)
            phash_of[r.sha256] = r.phash
    exact = sorted(sorted(p) for p in by_sha.values() if len(p) > 1)
    shas = sorted(by_sha)
    pairs = _hamming_pairs(_pack([phash_of[s] for s in shas]), max_distance)
    comps = _components(len(shas), ((i, j) for i, j, _ in pairs))
    worst: dict[int, int] = {}
    root_of = {i: k for k, comp in enumerate(comps) for i in comp}
    for i, _j, d in pairs:
        k = root_of[i]
        worst[k] = max(worst.get(k, 0), d)
    near = [
        (sorted(p for i in comp for p in by_sha[shas[i]]), worst[k]) for k, comp in enumerate(comps)
    ]
    near.sort()
    return exact, [c for c, _ in near], [d for _, d in near]


# ----------------------------------------------------------------------------- report


def _describe(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    p = np.percentile(v, [0, 5, 50, 95, 100])
    return {
        "n": int(v.size),
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std()), 4),
        "min": round(float(p[0]), 4),
        "p5": round(float(p[1]), 4),
        "median": round(float(p[2]), 4),
        "p95": round(float(p[3]), 4),
        "max": round(float(p[4]), 4),
    }


@dataclass
class AuditReport:
    """Outcome of :func:`audit_dataset`; ``rows[i]`` belongs to ``records[i]``."""

    records: list[ImageRecord]
    rows: list[AuditRow]
    exact_duplicates: list[list[str]]
    near_duplicates: list[list[str]]
    near_max_distance: list[int]  # worst edge distance inside each near cluster
    near_threshold: int = NEAR_DUP_MAX_DISTANCE
    seconds: float = 0.0
    from_cache: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def corrupt(self) -> list[dict[str, str]]:
        """Unreadable or damaged files: path and reason."""
        return [{"path": r.path, "reason": r.error} for r in self.rows if r.error]

    def readable_records(self) -> list[ImageRecord]:
        """Records whose file decoded cleanly: what splits and training should use."""
        return [rec for rec, row in zip(self.records, self.rows, strict=True) if row.ok]

    def linked_clusters(self) -> list[list[str]]:
        """Exact + near clusters, for ``make_splits(records, linked=...)``."""
        return [list(c) for c in self.exact_duplicates] + [list(c) for c in self.near_duplicates]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per source split and class (splits absent on disk are left out)."""
        c = Counter((r.source_split, r.class_name) for r in self.records)
        out = {}
        for s in SPLITS:
            if any(k[0] == s for k in c):
                out[s] = {cls: c.get((s, cls), 0) for cls in CLASS_NAMES}
                out[s]["total"] = sum(out[s].values())
        return out

    def rows_by_class(self, ok_only: bool = True) -> dict[str, list[AuditRow]]:
        out: dict[str, list[AuditRow]] = {cls: [] for cls in CLASS_NAMES}
        for rec, row in zip(self.records, self.rows, strict=True):
            if row.ok or not ok_only:
                out[rec.class_name].append(row)
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """Size, format and intensity statistics per class (readable files only)."""
        out: dict[str, dict[str, Any]] = {}
        for cls, rows in self.rows_by_class().items():
            out[cls] = {
                "n": len(rows),
                "width": _describe([r.width for r in rows]),
                "height": _describe([r.height for r in rows]),
                "aspect_w_over_h": _describe([r.width / r.height for r in rows]),
                "file_kb": _describe([r.size / 1024 for r in rows]),
                "bit_depth": dict(Counter(str(r.bit_depth) for r in rows)),
                "channels": dict(Counter(str(r.channels) for r in rows)),
                "format": dict(Counter(r.format for r in rows)),
                "intensity_mean": _describe([r.mean for r in rows]),
                "intensity_std": _describe([r.std for r in rows]),
                "sharpness": _describe([r.sharpness for r in rows]),
            }
        return out

    def _clusters_by_kind(self) -> list[tuple[str, list[str]]]:
        return [("exact", c) for c in self.exact_duplicates] + [
            ("near", c) for c in self.near_duplicates
        ]

    @staticmethod
    def _crossings(
        records: Sequence[ImageRecord], clusters: list[tuple[str, list[str]]], attr: str
    ) -> dict[str, list[dict[str, Any]]]:
        split_of = {r.path: getattr(r, attr) for r in records}
        pat_splits: dict[str, set[str]] = defaultdict(set)
        for r in records:
            pat_splits[r.patient].add(getattr(r, attr))
        patients = [
            {"patient": p, "splits": sorted(s, key=SPLITS.index)}
            for p, s in sorted(pat_splits.items())
            if len(s) > 1
        ]
        dups = []
        for kind, cluster in clusters:
            present = [p for p in cluster if p in split_of]
            s = {split_of[p] for p in present}
            if len(s) > 1:
                dups.append(
                    {
                        "kind": kind,
                        "splits": sorted(s, key=SPLITS.index),
                        "files": {p: split_of[p] for p in present},
                    }
                )
        return {"patients": patients, "duplicates": dups}

    def cross_split(self, plan: SplitPlan | None = None) -> dict[str, Any]:
        """Patients and duplicate clusters found in more than one split.

        ``source``: against the folders on disk (what a naive user of the
        official splits would leak). ``plan``: against ``plan`` (must be empty
        after ``make_splits(records, linked=self.linked_clusters())``).
        """
        clusters = self._clusters_by_kind()
        out = {"source": self._crossings(self.records, clusters, "source_split")}
        if plan is not None:
            out["plan"] = self._crossings(plan.records, clusters, "split")
        return out

    def cross_patient_clusters(self) -> int:
        """Duplicate clusters whose files carry more than one patient id (name-level leaks)."""
        pat = {r.path: r.patient for r in self.records}
        return sum(len({pat[p] for p in c if p in pat}) > 1 for _, c in self._clusters_by_kind())

    def to_json(self, plan: SplitPlan | None = None, include_rows: bool = False) -> dict:
        """JSON-ready dict for results/<study>/audit.json."""
        d: dict[str, Any] = {
            "audit_version": AUDIT_VERSION,
            "n_files": len(self.rows),
            "seconds": round(self.seconds, 2),
            "from_cache": self.from_cache,
            "counts": self.counts(),
            "stats": self.stats(),
            "near_duplicate_rule": (
                f"phash (imagehash, {PHASH_BITS} bit) Hamming distance <= {self.near_threshold}, "
                "excluding byte-identical files"
            ),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": [
                {"max_distance": dist, "files": c}
                for c, dist in zip(self.near_duplicates, self.near_max_distance, strict=True)
            ],
            "clusters_spanning_patients": self.cross_patient_clusters(),
            "corrupt": self.corrupt,
            "cross_split": self.cross_split(plan),
            "notes": self.notes,
        }
        if include_rows:
            d["rows"] = [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(r).items()}
                for r in self.rows
            ]
        return d

    def write(self, path: Path, plan: SplitPlan | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(plan), indent=1))
        return path

    def summary(self, plan: SplitPlan | None = None) -> str:
        """A few lines for the terminal."""
        n_ok = sum(r.ok for r in self.rows)
        lines = [
            f"audit: {len(self.rows)} files ({n_ok} readable) in {self.seconds:.1f}s "
            f"({self.from_cache} from cache)"
        ]
        for s, c in self.counts().items():
            lines.append(
                f"  {s:5s} {c['total']:5d} images "
                f"({c['NORMAL']} NORMAL, {c['PNEUMONIA']} PNEUMONIA)"
            )
        for cls, st in self.stats().items():
            if not st["n"]:
                continue
            w, h, m = st["width"], st["height"], st["intensity_mean"]
            lines.append(
                f"  {cls:9s} size {w['min']:.0f}-{w['max']:.0f} x {h['min']:.0f}-{h['max']:.0f} px "
                f"(median {w['median']:.0f}x{h['median']:.0f}), bit depth {st['bit_depth']}, "
                f"channels {st['channels']}, mean intensity {m['mean']:.3f} +- {m['std']:.3f}"
            )
        n_exact = sum(len(c) for c in self.exact_duplicates)
        n_near = sum(len(c) for c in self.near_duplicates)
        lines.append(
            f"  exact duplicates: {len(self.exact_duplicates)} clusters ({n_exact} files); "
            f"near duplicates (phash <= {self.near_threshold}/{PHASH_BITS} bits): "
            f"{len(self.near_duplicates)} clusters ({n_near} files); "
            f"{self.cross_patient_clusters()} clusters span more than one patient id"
        )
        corrupt = self.corrupt
        lines.append(f"  corrupt/unreadable: {len(corrupt)}")
        lines += [f"    {c['path']}: {c['reason']}" for c in corrupt[:10]]
        if len(corrupt) > 10:
            lines.append(f"    ... and {len(corrupt) - 10} more (see audit.json)")
        cs = self.cross_split(plan)
        for where, found in cs.items():
            lines.append(
                f"  across {where} splits: {len(found['patients'])} patients, "
                f"{len(found['duplicates'])} duplicate clusters"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


class _Progress:
    """A plain progress line on stderr every ``every`` files (no extra dependency)."""

    def __init__(self, total: int, enabled: bool, every: int = 500) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.done, self.t0 = 0, time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and (self.done % self.every == 0 or self.done == self.total):
            dt = max(time.monotonic() - self.t0, 1e-9)
            rate = self.done / dt
            eta = (self.total - self.done) / rate if rate else 0.0
            print(
                f"audit: {self.done}/{self.total} files ({100 * self.done / self.total:.0f}%), "
                f"{rate:.0f} files/s, eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )


def _split_cached(
    records: list[ImageRecord], cache: dict[str, Any]
) -> tuple[dict[str, AuditRow], list[str]]:
    """Rows whose file is unchanged since it was cached (same size and mtime), and the
    paths still to read (each once, in record order)."""
    rows: dict[str, AuditRow] = {}
    todo: list[str] = []
    queued: set[str] = set()
    for r in records:
        key = os.path.abspath(r.path)
        hit = cache.get(key)
        try:
            st = os.stat(r.path)
            fresh = bool(hit) and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns
        except OSError:
            fresh = False
        if fresh:
            rows[r.path] = _row_from_cache(r.path, hit)
        elif r.path not in rows and r.path not in queued:
            queued.add(r.path)
            todo.append(r.path)
    return rows, todo


def _read_files(
    todo: list[str], workers: int, progress: bool, from_cache: int
) -> dict[str, AuditRow]:
    """Audit each file in ``todo``: in a spawned pool for big jobs, in-process otherwise."""
    rows: dict[str, AuditRow] = {}
    bar = _Progress(len(todo), progress and bool(todo))
    if progress and todo:
        print(
            f"audit: reading {len(todo)} files ({from_cache} cached) with {workers} worker(s)",
            file=sys.stderr,
            flush=True,
        )
    if workers > 1 and len(todo) >= MIN_FILES_FOR_POOL:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for row in pool.imap_unordered(audit_file, todo, chunksize=32):
                rows[row.path] = row
                bar.step()
    else:
        for p in todo:
            rows[p] = audit_file(p)
            bar.step()
    return rows


def _update_cache(
    cache_dir: Path, cache: dict[str, Any], rows: dict[str, AuditRow], todo: list[str]
) -> None:
    """Add the rows just read to the cache; a vanished file is not cached."""
    for p in todo:
        row = rows[p]
        if row.size or row.mtime_ns:
            d = asdict(row)
            d.pop("path")
            cache[os.path.abspath(p)] = d
    _save_cache(cache_dir, cache)


def audit_dataset(
    records: list[ImageRecord],
    workers: int = 2,
    progress: bool = True,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    near_threshold: int = NEAR_DUP_MAX_DISTANCE,
) -> AuditReport:
    """Audit every record's file (each read once; cached rows are not re-read).

    ``cache_dir=None`` disables the cache. A pool of ``workers`` processes
    (spawned, so it is safe after TensorFlow was imported) reads the files;
    small jobs run in-process because starting workers costs more than they save.
    """
    t0 = time.monotonic()
    records = list(records)
    cache = _load_cache(cache_dir)
    rows, todo = _split_cached(records, cache)
    from_cache = len(rows)
    rows.update(_read_files(todo, workers, progress, from_cache))
    if todo and cache_dir is not None:
        _update_cache(cache_dir, cache, rows, todo)

    ordered = [rows[r.path] for r in records]
    exact, near, worst = find_duplicates(ordered, near_threshold)
    return AuditReport(
        records=records,
        rows=ordered,
        exact_duplicates=exact,
        near_duplicates=near,
        near_max_distance=worst,
        near_threshold=near_threshold,
        seconds=time.monotonic() - t0,
        from_cache=from_cache,
    )
