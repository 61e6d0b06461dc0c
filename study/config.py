"""The study's one typed configuration: command-line flags with env-var defaults.

Each setting is declared once, as a :class:`StudyConfig` field whose metadata carries its
help text (and, where needed, choices, env var or flag name); the argument parser and
:func:`config_from_args` are generated from the fields. Every folder flag can also come
from an environment variable (shown in ``--help``), so CI, Docker and a user's shell all
configure the study the same way. Building the parser never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from search_spaces import FAMILIES, FAMILY_NAMES, PRECISION_CHOICES
from search_spaces.inputs import InputSpace
from study.data.augment import AUGMENT_NAMES
from study.data.preprocess import NORMALISE_MODES, PreprocessConfig
from study.data.records import DEFAULT_SEED, TEST_FRACTION, VAL_FRACTION
from study.paths import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DEFAULT_CACHE_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_RESULTS_DIR,
    DEFAULT_WEIGHTS_DIR,
    RESULTS_DIR_ENV,
    WEIGHTS_DIR_ENV,
)
from study.search import OBJECTIVE_HELP, OBJECTIVE_NAMES, TUNERS


def setting(default: Any, help: str, **more: Any) -> Any:
    """A field that is also a flag: ``--field-name`` unless ``flag`` is given in ``more``."""
    return field(default=default, metadata={"help": help, **more})


def internal(**kw: Any) -> Any:
    """A field with no flag: set in code (tests, benchmarks), saved in config.json."""
    return field(metadata={"internal": True}, **kw)


# Metadata of a setting that never changes a trial's result or the winner: a rerun
# with another value still resumes the study (every other field is in the resume key).
NO_RESUME = {"resume": False}


def _precision_help() -> str:
    auto = ", ".join(f"{f.precision} for {f.name}" for f in FAMILIES.values())
    return (
        f"training precision; auto = {auto} (the verdicts of "
        "benchmarks/results/precision.md; float32 when not measured)"
    )


@dataclass
class StudyConfig:
    """What a study needs; saved as results/<study>/config.json so a rerun can resume it."""

    data_dir: Path = setting(
        DEFAULT_DATA_DIR,
        "folder in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/; "
        "this repo's CI uses ../shared/data/chest_xray",
        env=DATA_DIR_ENV,
    )
    results_dir: Path = setting(
        DEFAULT_RESULTS_DIR,
        "where results/<name>/ goes",
        env=RESULTS_DIR_ENV,
        **NO_RESUME,
    )
    cache_dir: Path = setting(
        DEFAULT_CACHE_DIR, "preprocessed-image cache", env=CACHE_DIR_ENV, **NO_RESUME
    )
    weights_dir: Path = setting(
        DEFAULT_WEIGHTS_DIR,
        "local ImageNet weights; see 'run_study.py weights fetch-offline'",
        env=WEIGHTS_DIR_ENV,
    )
    name: str = setting("main", "study name; rerunning the same name resumes it", **NO_RESUME)
    budget: int = setting(
        50,
        "total trials across all families, shared equally between the "
        "families that can run (a skipped family's share goes to the others; "
        "the remainder goes to the first families in --families order); a larger "
        "budget on rerun extends the study, keeping its finished trials",
        **NO_RESUME,
    )
    families: tuple[str, ...] = setting(FAMILY_NAMES, "comma-separated families to search")
    image_sizes: tuple[int, ...] = setting(
        (128, 160, 224),
        "square model input sizes in pixels the search chooses from (hyperparameter "
        "image_size; one value = every trial's); each size's cache is built when a trial "
        "first asks for it",
        flag="--image-size",
    )
    normalise_modes: tuple[str, ...] = setting(
        NORMALISE_MODES,
        "exposure normalisations the search chooses from (hyperparameter normalise; "
        "clahe also searches its clip limit); one value = every trial's",
        flag="--normalise",
        members=NORMALISE_MODES,
    )
    augment_modes: tuple[str, ...] = setting(
        AUGMENT_NAMES,
        "augmentation presets the search chooses from (hyperparameter augment; 'domain' = "
        "domain randomisation of exposure, contrast, blur, noise, JPEG and resolution)",
        flag="--augment",
        members=AUGMENT_NAMES,
    )
    tuner: str = setting(
        "hyperband",
        "Keras-Tuner oracle; hyperband runs early rounds for fewer epochs",
        choices=TUNERS,
    )
    max_epochs: int = setting(12, "epochs for the longest trial")
    patience: int = setting(5, "EarlyStopping patience on val AUC (epochs)")
    batch_size: int = setting(32, "training and evaluation batch size")
    steps_per_epoch: int = setting(
        0, "training steps per epoch; 0 = one pass over the training split"
    )
    seed: int = setting(DEFAULT_SEED, "seeds splits, batches and models")
    time_budget: float = setting(
        75.0,
        "minutes from the start of the first family's search (data preparation "
        "excluded); no new trial starts after this, the one in flight finishes "
        "(0 = no limit). The default keeps the default study within 2 h on 2 CPU cores: "
        "data, search, the finalists' shift grid, calibration, export and the report",
        **NO_RESUME,
    )
    min_sensitivity: float = setting(
        0.95,
        "threshold rule: highest specificity with sensitivity >= this, on validation only",
    )
    val_fraction: float = internal(default=VAL_FRACTION)
    test_fraction: float = internal(default=TEST_FRACTION)
    max_train_images: int = setting(
        0,
        "use a seeded, patient-grouped subset of this many train images "
        "(0 = all; for demos and tests)",
    )
    extra_data: tuple[Path, ...] = setting(
        (), "extra Kaggle-layout folder (e.g. data/feedback) added to train only; repeatable"
    )
    verbose: int = setting(
        0,
        "Keras per-epoch output (progress lines are always printed)",
        choices=(0, 1, 2),
        **NO_RESUME,
    )
    workers: int = setting(2, "processes for preprocessing", **NO_RESUME)
    precision: str = setting("auto", _precision_help(), choices=PRECISION_CHOICES)
    objective: str = setting(
        "val_auc",
        "what ranks trials and ensembles, from their saved predictions (a finished "
        "study re-ranks without training): " + OBJECTIVE_HELP,
        choices=OBJECTIVE_NAMES,
        **NO_RESUME,
    )
    # The base preprocessing (flag --resize); its image_size and normalise are the first
    # of --image-size and --normalise, and each trial's own come from its hyperparameters.
    preprocess: PreprocessConfig = field(
        default_factory=PreprocessConfig, metadata={"flags": ("resize",)}
    )

    def __post_init__(self) -> None:
        self.preprocess = replace(
            self.preprocess,
            image_size=int(self.image_sizes[0]),
            normalise=self.normalise_modes[0],
        )

    @property
    def image_size(self) -> int:
        """The first searched size: data figures and fixed-input tools use it."""
        return int(self.image_sizes[0])

    def input_space(self) -> InputSpace:
        return InputSpace(
            tuple(int(s) for s in self.image_sizes),
            tuple(self.normalise_modes),
            tuple(self.augment_modes),
        )

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
        """Every setting that changes a result, which must match for a rerun to resume.

        Derived from the fields (all but those marked ``NO_RESUME``), so a new setting is
        in the key unless declared harmless; folders are compared as resolved paths.
        """
        return resume_values(self.to_json())


RESUME_FIELDS = tuple(f.name for f in fields(StudyConfig) if f.metadata.get("resume", True))
_PATH_FIELDS = ("data_dir", "weights_dir")


def resume_values(config_json: dict) -> dict:
    """The resume key of a saved ``to_json`` dict (also an older config.json's "config")."""
    key = {k: config_json[k] for k in RESUME_FIELDS if k in config_json}
    for k in _PATH_FIELDS:
        if k in key:
            key[k] = str(Path(key[k]).resolve())
    if "extra_data" in key:
        key["extra_data"] = [str(Path(p).resolve()) for p in key["extra_data"]]
    return json.loads(json.dumps(key))  # tuples as lists, as a reread config.json has them


def resume_mismatch(saved: dict, cfg: StudyConfig) -> list[str]:
    """'setting: old -> new' for each result-changing setting that differs from ``saved``.

    ``saved`` is a config.json; a setting its "resume_key" lacks (written by an older
    version) is taken from its full "config", and one missing from both is not compared.
    """
    old = {**resume_values(saved.get("config", {})), **saved.get("resume_key", {})}
    new = cfg.resume_key()
    return [f"{k}: {old[k]} -> {new[k]}" for k in new if k in old and old[k] != new[k]]


# --------------------------------------------------------------------------- flags from fields


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def flag_name(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _add_field(p: argparse.ArgumentParser, f: Field, hint: Any) -> None:
    """One flag: a tuple of paths is repeatable, a tuple of names is comma-separated."""
    md = f.metadata
    kw: dict[str, Any] = {"default": _default(f), "help": md["help"]}
    if "env" in md:
        kw["help"] += f" (env {md['env']})"
    if "choices" in md:
        kw["choices"] = md["choices"]
    if hint == tuple[Path, ...]:
        kw.update(type=Path, action="append", default=[])
    elif hint in (tuple[str, ...], tuple[int, ...]):
        kw["default"] = ",".join(str(v) for v in kw["default"])
    elif hint in (int, float, Path):
        kw["type"] = hint
    p.add_argument(flag_name(f), dest=f.name, **kw)


def _value(hint: Any, raw: Any) -> Any:
    """A parsed flag as the field's type (inverse of :func:`_add_field`'s encoding)."""
    if hint in (tuple[str, ...], tuple[int, ...]):
        items = tuple(s.strip() for s in str(raw).split(",") if s.strip())
        if hint == tuple[str, ...]:
            return items
        try:
            return tuple(int(v) for v in items)
        except ValueError:
            raise SystemExit(f"expected comma-separated whole numbers, got {raw!r}") from None
    if hint == tuple[Path, ...]:
        return tuple(raw)
    return raw


def _flag_fields(cls: type) -> list[tuple[Field, Any]]:
    """(field, type) of every field of ``cls`` that is a flag of its own."""
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if "help" in f.metadata]


def _nested_fields(cls: type) -> list[tuple[Field, type]]:
    """(field, dataclass) of nested configs exposing the fields named in metadata ``flags``."""
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if "flags" in f.metadata]


def add_setting(p: argparse.ArgumentParser, name: str) -> None:
    """Add one StudyConfig setting's flag to another parser (e.g. 'data audit --data-dir')."""
    f, hint = next((f, h) for f, h in _flag_fields(StudyConfig) if f.name == name)
    _add_field(p, f, hint)


def study_parser() -> argparse.ArgumentParser:
    """The study's flags, one per StudyConfig setting (nested ones by their own name)."""
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="AutoML comparison of CNN families for pneumonia on chest X-rays. "
        "Other commands: 'run_study.py data {download,audit,export-feedback}', "
        "'run_study.py report --study DIR', 'run_study.py weights fetch-offline'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f, hint in _flag_fields(StudyConfig):
        _add_field(p, f, hint)
    for outer, cls in _nested_fields(StudyConfig):
        for f, hint in _flag_fields(cls):
            if f.name in outer.metadata["flags"]:
                _add_field(p, f, hint)
    return p


def check(cfg: StudyConfig) -> StudyConfig:
    """Reject settings the parser's types cannot: unknown families, an empty budget."""
    unknown = set(cfg.families) - set(FAMILY_NAMES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {FAMILY_NAMES}")
    for f in fields(StudyConfig):
        members, values = f.metadata.get("members"), getattr(cfg, f.name)
        if members and (not values or set(values) - set(members)):
            raise SystemExit(f"{flag_name(f)}: choose one or more of {','.join(members)}")
    if not cfg.image_sizes or min(cfg.image_sizes) < 16:
        raise SystemExit("--image-size: one or more sizes of at least 16 pixels")
    if cfg.budget < 1:
        raise SystemExit("--budget must be at least 1")
    return cfg


def config_from_args(a: argparse.Namespace) -> StudyConfig:
    """The StudyConfig of parsed flags; a nested field shared by name (image_size) comes
    from the top-level flag."""
    values = {f.name: _value(hint, getattr(a, f.name)) for f, hint in _flag_fields(StudyConfig)}
    for outer, cls in _nested_fields(StudyConfig):
        sub = {n: getattr(a, n) for n in outer.metadata["flags"]}
        sub.update({g.name: values[g.name] for g in fields(cls) if g.name in values})
        values[outer.name] = cls(**sub)
    return check(StudyConfig(**values))
