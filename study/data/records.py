"""Dataset layout, patient ids and patient-grouped splits.

Reads any folder in the Kaggle layout ``<root>/<split>/{NORMAL,PNEUMONIA}/<image>``
with any subset of the splits ``train``, ``val`` and ``test``. Splits are
made by patient (and by duplicate cluster), never by image, so that no
patient and no duplicate image ever sits on both sides of a split.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
#: The study's split defaults, declared once (StudyConfig, `data audit` and the TFDS builder).
VAL_FRACTION = 0.12
TEST_FRACTION = 0.15
DEFAULT_SEED = 42

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRecord:
    """One image file; ``source_split`` is where it was on disk, ``split`` where it is used."""

    path: str
    label: int  # index into CLASS_NAMES
    patient: str
    subtype: str  # normal, bacteria, virus or unknown
    source_split: str
    split: str = ""
    origin: str = "kermany"  # "feedback" for reviewed uploads (train only)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def patient_and_subtype(filename: str, label: int) -> tuple[str, str]:
    """Patient id and subtype from a Kermany file name; unknown names get their own patient."""
    name = Path(filename).name
    m = _PERSON.match(name)
    if m:
        return m.group(1).lower(), m.group(2).lower()
    m = _NORMAL.match(name)
    if m:
        return m.group(1).upper(), "normal"
    return f"file:{name}", "normal" if label == 0 else "unknown"


def scan(root: Path, origin: str = "kermany", require_train: bool = True) -> list[ImageRecord]:
    """List every image under root/<split>/<CLASS>/; a missing root is a clear error."""
    root = Path(root).resolve()  # absolute paths: artifacts stay valid from any working dir
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {root} does not exist. Point --data-dir (or PNEUMOSCOPE_DATA_DIR) "
            "at a folder in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/, or run "
            "'python run_study.py data download'."
        )
    records = []
    for split in SPLITS:
        for label, cls in enumerate(CLASS_NAMES):
            folder = root / split / cls
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    patient, subtype = patient_and_subtype(p.name, label)
                    if origin != "kermany":
                        patient = f"{origin}:{patient}"
                    records.append(ImageRecord(str(p), label, patient, subtype, split, "", origin))
    if (
        require_train
        and origin == "kermany"
        and not any(r.source_split == "train" for r in records)
    ):
        raise FileNotFoundError(
            f"no training images under {root}/train/{{NORMAL,PNEUMONIA}}; is --data-dir the "
            "folder that holds train/ (e.g. ../shared/data/chest_xray)?"
        )
    if not records:
        raise FileNotFoundError(f"no images under {root}/<split>/{{NORMAL,PNEUMONIA}}/")
    return records


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def split_groups(records: Sequence[ImageRecord], linked: Iterable[Sequence[str]] = ()) -> list[str]:
    """Group id per record: patients joined with every duplicate cluster (paths in ``linked``)."""
    uf = _UnionFind()
    by_path = {r.path: r for r in records}
    for r in records:
        uf.find("p:" + r.patient)
    for cluster in linked:
        pats = ["p:" + by_path[p].patient for p in cluster if p in by_path]
        for a in pats[1:]:
            uf.union(a, pats[0])
    return [uf.find("p:" + r.patient) for r in records]


@dataclass
class SplitPlan:
    """The outcome of :func:`make_splits`, written to splits.json."""

    records: list[ImageRecord]
    test_source: str  # "official" or "carved from train"
    notes: list[str] = field(default_factory=list)

    def of(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split]

    def sizes(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            c = Counter(r.class_name for r in self.of(s))
            out[s] = {cls: c.get(cls, 0) for cls in CLASS_NAMES} | {"total": sum(c.values())}
        return out

    def to_json(self) -> dict:
        return {
            "test_source": self.test_source,
            "notes": self.notes,
            "sizes": self.sizes(),
            "patients": {s: sorted({r.patient for r in self.of(s)}) for s in SPLITS},
            "files": {s: [r.path for r in self.of(s)] for s in SPLITS},
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))

    def summary(self) -> str:
        lines = [f"splits (patient-grouped; test: {self.test_source}):"]
        for s, c in self.sizes().items():
            npat = len({r.patient for r in self.of(s)})
            lines.append(
                f"  {s:5s} {c['total']:5d} images ({c['NORMAL']} NORMAL, "
                f"{c['PNEUMONIA']} PNEUMONIA) from {npat} patients"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _carve(records: list[ImageRecord], groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, group-respecting ~fraction of records."""
    from sklearn.model_selection import StratifiedGroupKFold  # lazy: config imports this module

    n_splits = max(2, round(1.0 / fraction))
    y = np.array([r.label for r in records])
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(sgkf.split(np.zeros(len(y)), y, groups))
    mask = np.zeros(len(records), bool)
    mask[held] = True
    return mask


def make_splits(
    records: Sequence[ImageRecord],
    linked: Iterable[Sequence[str]] = (),
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = DEFAULT_SEED,
) -> SplitPlan:
    """Patient-grouped, stratified, seeded splits.

    The official ``val`` joins the carved validation set. The official
    ``test`` is used as test when present; otherwise a test split is carved
    from ``train`` and every output says so. Images whose patient or
    duplicate cluster crosses into an official split are dropped from train.
    """
    records = list(records)
    linked = [list(c) for c in linked]
    groups = split_groups(records, linked)
    has_test = any(r.source_split == "test" for r in records)
    notes: list[str] = []

    # Groups that touch the official val/test must not also be in train.
    held_groups = {g for r, g in zip(records, groups, strict=True) if r.source_split != "train"}
    out: list[ImageRecord] = []
    train_recs, train_groups = [], []
    dropped = 0
    for r, g in zip(records, groups, strict=True):
        if r.source_split == "train" and g in held_groups:
            dropped += 1
            continue
        if r.source_split == "train":
            train_recs.append(r)
            train_groups.append(g)
        else:
            out.append(replace(r, split=r.source_split))
    if dropped:
        notes.append(
            f"dropped {dropped} train images whose patient or duplicate also appears in the "
            "official val/test split"
        )

    if has_test:
        test_mask = np.zeros(len(train_recs), bool)
        test_source = "official"
    else:
        test_mask = _carve(train_recs, train_groups, test_fraction, seed)
        test_source = "carved from train"
        notes.append(
            "no official test split: the test split was CARVED FROM TRAIN (patient-grouped); "
            "it is easier than the official test split, which differs in exposure and devices"
        )
    rest = [r for r, m in zip(train_recs, test_mask, strict=True) if not m]
    rest_groups = [g for g, m in zip(train_groups, test_mask, strict=True) if not m]
    val_mask = _carve(
        rest, rest_groups, val_fraction / (1 - test_fraction * (not has_test)), seed + 1
    )
    out += [replace(r, split="test") for r, m in zip(train_recs, test_mask, strict=True) if m]
    out += [replace(r, split="val" if m else "train") for r, m in zip(rest, val_mask, strict=True)]
    out.sort(key=lambda r: (SPLITS.index(r.split), r.path))
    return SplitPlan(out, test_source, notes)


def add_extra_training(
    plan: SplitPlan, extra: Sequence[ImageRecord], linked: Iterable[Sequence[str]] = ()
) -> SplitPlan:
    """Reviewed uploads join train only, never val or test. One that duplicates (exactly or
    nearly, per ``linked`` clusters from the audit) a validation or test image is dropped
    with a note: training on it would leak that image into training."""
    held_out = {r.path for r in plan.records if r.split != "train"}
    leaking = {p for c in linked if held_out.intersection(c) for p in c}
    added = [replace(r, split="train", origin="feedback") for r in extra if r.path not in leaking]
    dropped = [r.path for r in extra if r.path in leaking]
    notes = plan.notes + [f"added {len(added)} reviewed uploads (feedback) to train only"]
    if dropped:
        names = ", ".join(Path(p).name for p in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        notes.append(
            f"dropped {len(dropped)} reviewed uploads that duplicate a validation or test "
            f"image: {names}"
        )
    return SplitPlan(plan.records + added, plan.test_source, notes)


def check_no_leakage(plan: SplitPlan, linked: Iterable[Sequence[str]] = ()) -> None:
    """Raise if any patient or duplicate cluster spans two splits."""
    groups = split_groups(plan.records, linked)
    seen: dict[str, str] = {}
    for r, g in zip(plan.records, groups, strict=True):
        if seen.setdefault(g, r.split) != r.split:
            raise AssertionError(f"group {g} spans {seen[g]} and {r.split} ({r.path})")


def records_to_json(records: Sequence[ImageRecord]) -> list[dict]:
    return [asdict(r) for r in records]
