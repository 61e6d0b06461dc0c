"""The study's one typed configuration: command-line flags with env-var defaults.

Every flag can also come from an environment variable (shown in ``--help``),
so CI, Docker and a user's shell all configure the study the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study.data.augment import AugmentConfig
from study.data.preprocess import PreprocessConfig
from study.paths import (
    DEFAULT_CACHE_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_RESULTS_DIR,
    DEFAULT_WEIGHTS_DIR,
)

ALL_FAMILIES = ("custom_cnn", "resnet", "efficientnet")
# Measured (benchmarks/results/training.md, README): bf16 speeds up dense convs here but
# slows EfficientNet's depthwise convs.
FAMILY_PRECISION = {
    "custom_cnn": "mixed_bfloat16",
    "resnet": "mixed_bfloat16",
    "efficientnet": "float32",
}
TUNERS = ("hyperband", "bayesian", "random")


@dataclass
class StudyConfig:
    """What a study needs; saved as results/<study>/config.json so a rerun can resume it."""

    data_dir: Path = DEFAULT_DATA_DIR
    results_dir: Path = DEFAULT_RESULTS_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    name: str = "main"
    budget: int = 50
    families: tuple[str, ...] = ALL_FAMILIES
    image_size: int = 128
    tuner: str = "hyperband"
    max_epochs: int = 12
    patience: int = 5
    batch_size: int = 32
    steps_per_epoch: int = 0  # 0 = one pass over the training split
    seed: int = 42
    time_budget: float = 0.0  # minutes; 0 = no limit
    min_sensitivity: float = 0.95
    val_fraction: float = 0.12
    test_fraction: float = 0.15
    max_train_images: int = 0  # 0 = all (tests and demos use a subset)
    extra_data: tuple[Path, ...] = ()
    verbose: int = 0
    workers: int = 2
    precision: str = (
        "auto"  # "auto" (per family, see FAMILY_PRECISION), "float32", "mixed_bfloat16"
    )
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def study_dir(self) -> Path:
        return self.results_dir / self.name

    def to_json(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        for k in ("data_dir", "results_dir", "cache_dir", "weights_dir"):
            d[k] = str(d[k])
        d["extra_data"] = [str(p) for p in self.extra_data]
        d["families"] = list(self.families)
        return d

    def resume_key(self) -> dict:
        """Fields that must match for a rerun to resume rather than mix two studies."""
        d = self.to_json()
        return {
            k: d[k]
            for k in (
                "image_size",
                "families",
                "tuner",
                "max_epochs",
                "seed",
                "preprocess",
                "budget",
                "max_train_images",
                "precision",
            )
        }


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/ "
        "(env PNEUMOSCOPE_DATA_DIR; this repo's CI uses ../shared/data/chest_xray)",
    )


def study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="AutoML comparison of CNN families for pneumonia on chest X-rays. "
        "Other commands: 'run_study.py data {download,audit,export-feedback}', "
        "'run_study.py report --study DIR', 'run_study.py weights fetch-offline'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_dir(p)
    p.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="where results/<name>/ goes (env PNEUMOSCOPE_RESULTS_DIR)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="preprocessed-image cache (env PNEUMOSCOPE_CACHE_DIR)",
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=DEFAULT_WEIGHTS_DIR,
        help="local ImageNet weights (env PNEUMOSCOPE_WEIGHTS_DIR); "
        "see 'run_study.py weights fetch-offline'",
    )
    p.add_argument("--name", default="main", help="study name; rerunning the same name resumes it")
    p.add_argument(
        "--budget",
        type=int,
        default=50,
        help="total trials across all families, shared equally between the "
        "families that can run (a skipped family's share goes to the others; "
        "the remainder goes to the first families in --families order)",
    )
    p.add_argument(
        "--families", default=",".join(ALL_FAMILIES), help="comma-separated families to search"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="square model input in pixels (the cache is built at this size)",
    )
    p.add_argument(
        "--tuner",
        choices=TUNERS,
        default="hyperband",
        help="Keras-Tuner oracle; hyperband runs early rounds for fewer epochs",
    )
    p.add_argument("--max-epochs", type=int, default=12, help="epochs for the longest trial")
    p.add_argument(
        "--patience", type=int, default=5, help="EarlyStopping patience on val AUC (epochs)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=0,
        help="training steps per epoch; 0 = one pass over the training split",
    )
    p.add_argument("--seed", type=int, default=42, help="seeds splits, batches and models")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="minutes; no new trial starts after this (0 = no limit)",
    )
    p.add_argument(
        "--min-sensitivity",
        type=float,
        default=0.95,
        help="threshold rule: highest specificity with sensitivity >= this, on validation only",
    )
    p.add_argument(
        "--max-train-images",
        type=int,
        default=0,
        help="use a seeded, patient-grouped subset of this many train images "
        "(0 = all; for demos and tests)",
    )
    p.add_argument(
        "--extra-data",
        type=Path,
        action="append",
        default=[],
        help="extra Kaggle-layout folder (e.g. data/feedback) added to train only",
    )
    p.add_argument(
        "--normalise",
        choices=("clahe", "equalize", "none"),
        default="clahe",
        help="exposure/contrast normalisation step of the preprocessing",
    )
    p.add_argument(
        "--resize",
        choices=("stretch", "pad", "crop"),
        default="stretch",
        help="how images become square (see README: why stretch)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed_bfloat16"),
        default="auto",
        help="training precision; auto = mixed_bfloat16 for custom_cnn and resnet, float32 for "
        "efficientnet (its depthwise convs were up to 2.4x slower in bf16 on this CPU)",
    )
    p.add_argument("--workers", type=int, default=2, help="processes for preprocessing")
    p.add_argument(
        "--verbose",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="Keras per-epoch output (progress lines are always printed)",
    )
    return p


def config_from_args(a: argparse.Namespace) -> StudyConfig:
    families = tuple(f.strip() for f in a.families.split(",") if f.strip())
    unknown = set(families) - set(ALL_FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {ALL_FAMILIES}")
    if a.budget < 1:
        raise SystemExit("--budget must be at least 1")
    return StudyConfig(
        data_dir=a.data_dir,
        results_dir=a.results_dir,
        cache_dir=a.cache_dir,
        weights_dir=a.weights_dir,
        name=a.name,
        budget=a.budget,
        families=families,
        image_size=a.image_size,
        tuner=a.tuner,
        max_epochs=a.max_epochs,
        patience=a.patience,
        batch_size=a.batch_size,
        steps_per_epoch=a.steps_per_epoch,
        seed=a.seed,
        time_budget=a.time_budget,
        min_sensitivity=a.min_sensitivity,
        max_train_images=a.max_train_images,
        extra_data=tuple(a.extra_data),
        verbose=a.verbose,
        workers=a.workers,
        precision=a.precision,
        preprocess=PreprocessConfig(
            image_size=a.image_size, normalise=a.normalise, resize=a.resize
        ),
    )
