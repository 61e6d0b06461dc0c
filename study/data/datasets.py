"""From a data folder to cached, split arrays: scan -> audit -> splits -> cache.

This is the study's data stage; it writes splits.json, audit.json and the
data figures, and returns arrays ready for the tf.data pipelines.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study.data import records as data_mod
from study.data.audit import AuditReport, audit_dataset
from study.data.cache import ImageCache, build_cache
from study.data.preprocess import PreprocessConfig
from study.data.records import ImageRecord, SplitPlan

if TYPE_CHECKING:  # the config is passed down; the data stage never imports it at run time
    from study.config import StudyConfig


@dataclass
class SplitArrays:
    """One split: preprocessed uint8 images with labels, paths and patient groups."""

    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    @property
    def groups(self) -> list[str]:
        return [r.patient for r in self.records]


@dataclass
class StudyData:
    """The study's splits as arrays through one preprocessing config (``cache.config``);
    :meth:`at` gives the same splits through another, building its cache on first use."""

    plan: SplitPlan
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    fingerprint: str
    cache: ImageCache
    audit: AuditReport
    cache_dir: Path = Path("cache")
    workers: int = 2
    _views: dict[str, StudyData] = field(default_factory=dict, repr=False)

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.cache.config

    def at(self, pre: PreprocessConfig) -> StudyData:
        """The same splits (same records, labels and order) through ``pre``.

        Lazily built and cached on disk like the study's own cache; the two most recent
        views stay in memory (a 224 px training split is about 200 MB).
        """
        if pre == self.preprocess:
            return self
        key = pre.key()
        if key not in self._views:
            if len(self._views) >= MAX_VIEWS:
                self._views.pop(next(iter(self._views)))
            cache = _build(self.plan, pre, self.cache_dir, self.workers)
            self._views[key] = self.with_cache(cache)
        return self._views[key]

    def with_cache(self, cache: ImageCache) -> StudyData:
        """A view of the same plan through ``cache`` (files it could not read drop out)."""
        return StudyData(
            self.plan,
            _arrays(cache, self.plan.of("train")),
            _arrays(cache, self.plan.of("val")),
            _arrays(cache, self.plan.of("test")),
            self.fingerprint,
            cache,
            self.audit,
            self.cache_dir,
            self.workers,
        )


MAX_VIEWS = 2  # other-preprocessing views kept in memory by StudyData.at


def subset_by_patient(records: list[ImageRecord], n: int, seed: int) -> list[ImageRecord]:
    """A seeded subset of about n images that keeps whole patients and both classes."""
    by_patient: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    rng = random.Random(seed)
    out: list[ImageRecord] = []
    for label in (0, 1):
        pats = sorted(p for p, rs in by_patient.items() if rs[0].label == label)
        rng.shuffle(pats)
        share = n // 2
        for p in pats:
            if sum(r.label == label for r in out) >= share:
                break
            out += by_patient[p]
    return sorted(out, key=lambda r: r.path)


def fingerprint(records: list[ImageRecord]) -> str:
    """Machine-independent hash of the data used: split, class, file name and size."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.split, r.path)):
        h.update(
            f"{r.split}/{r.class_name}/{Path(r.path).name}/{Path(r.path).stat().st_size}\n".encode()
        )
    return h.hexdigest()[:16]


def _arrays(cache: ImageCache, records: list[ImageRecord]) -> SplitArrays:
    kept = [r for r in records if r.path not in cache.failed]
    return SplitArrays(
        kept, cache.take([r.path for r in kept]), np.array([r.label for r in kept], np.int32)
    )


def _scan(cfg: StudyConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The study's images (optionally a patient-grouped subset) and the extra training data."""
    records = data_mod.scan(cfg.data_dir)
    if cfg.max_train_images:
        records = subset_by_patient(records, cfg.max_train_images, cfg.seed)
    extra = [r for d in cfg.extra_data for r in data_mod.scan(d, origin="feedback")]
    print(
        f"data: {len(records)} images in {cfg.data_dir}"
        + (f" + {len(extra)} reviewed uploads" if extra else ""),
        flush=True,
    )
    return records, extra


def plan_splits(
    records: Sequence[ImageRecord],
    audit: AuditReport,
    extra: Sequence[ImageRecord] = (),
    *,
    val_fraction: float = data_mod.VAL_FRACTION,
    test_fraction: float = data_mod.TEST_FRACTION,
    seed: int = data_mod.DEFAULT_SEED,
) -> SplitPlan:
    """Patient splits that keep duplicates together; extra data goes to train; the
    unreadable files are dropped.

    The one split plan of the study, of ``data audit`` and of the TFDS builder, so all
    three put every image in the same split.
    """
    plan = data_mod.make_splits(
        records,
        linked=audit.linked_clusters(),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    if extra:
        plan = data_mod.add_extra_training(plan, extra, audit.linked_clusters())
    data_mod.check_no_leakage(plan, audit.linked_clusters())
    corrupt = {c["path"] for c in audit.corrupt}
    if corrupt:
        plan.notes.append(f"skipped {len(corrupt)} unreadable files (listed in audit.json)")
        plan.records = [r for r in plan.records if r.path not in corrupt]
    return plan


def _write_artifacts(out: Path, plan: SplitPlan, audit: AuditReport) -> None:
    plan.write(out / "splits.json")
    audit_json = audit.to_json()
    audit_json["after_split"] = audit.cross_split(plan)
    (out / "audit.json").write_text(json.dumps(audit_json, indent=1))


def _build(plan: SplitPlan, pre: PreprocessConfig, cache_dir: Path, workers: int) -> ImageCache:
    cache = build_cache([r.path for r in plan.records], pre, cache_dir, workers=workers)
    how = "reused" if cache.reused else "built"
    print(
        f"cache: {how} {cache.directory} ({len(cache.paths)} images, {cache.seconds:.1f}s)",
        file=sys.stderr,
        flush=True,
    )
    return cache


def prepare_data(cfg: StudyConfig, write_artifacts: bool = True) -> StudyData:
    """The whole data stage of a study, printing what it does.

    Distributed workers pass ``write_artifacts=False``: they need the arrays, while
    the chief alone writes splits.json, audit.json and the figures.
    """
    out = cfg.study_dir
    out.mkdir(parents=True, exist_ok=True)
    records, extra = _scan(cfg)
    audit = audit_dataset(records + extra, workers=cfg.workers, cache_dir=cfg.cache_dir / "audit")
    plan = plan_splits(
        records,
        audit,
        extra,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )
    if write_artifacts:
        _write_artifacts(out, plan, audit)
    print(audit.summary(), flush=True)
    print(plan.summary(), flush=True)
    cache = _build(plan, cfg.preprocess, cfg.cache_dir, cfg.workers)
    empty = SplitArrays([], np.zeros(0), np.zeros(0))
    fp = fingerprint(plan.records)
    base = StudyData(plan, empty, empty, empty, fp, cache, audit, cfg.cache_dir, cfg.workers)
    return base.with_cache(cache)
