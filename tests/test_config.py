"""The study's flags are generated from StudyConfig: every setting parses, round-trips and
validates, and building the parser (or ``--help``) never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from search_spaces import FAMILIES, FAMILY_NAMES, PRECISION_CHOICES, dtype_policy
from study.config import StudyConfig, config_from_args, flag_name, study_parser
from study.data.augment import AUGMENT_NAMES
from study.data.preprocess import NORMALISE_MODES, RESIZE_MODES, PreprocessConfig
from study.search import OBJECTIVE_NAMES, TUNERS
from tests.conftest import REPO

NESTED = {"preprocess": PreprocessConfig}


def _parse(argv: list[str]) -> StudyConfig:
    return config_from_args(study_parser().parse_args(argv))


def _other(f: Any, default: Any) -> tuple[list[str], Any]:
    """Flag arguments giving ``f`` a value other than ``default``, and that value."""
    flag = flag_name(f)
    if "choices" in f.metadata:
        value = next(c for c in f.metadata["choices"] if c != default)
        return [flag, str(value)], value
    if isinstance(default, int | float):
        return [flag, str(default + 3)], default + 3
    if isinstance(default, Path):
        return [flag, "/tmp/elsewhere"], Path("/tmp/elsewhere")
    if isinstance(default, str):
        return [flag, default + "-other"], default + "-other"
    if f.name == "image_sizes":
        return [flag, " 96, 64 "], (96, 64)
    if f.name == "normalise_modes":
        return [flag, "none,clahe"], ("none", "clahe")
    if f.name == "augment_modes":
        return [flag, "domain"], ("domain",)
    if f.name == "families":
        return [flag, " resnet , custom_cnn"], ("resnet", "custom_cnn")
    if f.name == "extra_data":
        return [flag, "/tmp/a", flag, "/tmp/b"], (Path("/tmp/a"), Path("/tmp/b"))
    raise AssertionError(f"no non-default rule for field {f.name}")


def _flag_fields() -> list[tuple[str | None, Any, Any]]:
    """(outer field or None, field, default) of every setting that must have a flag."""
    out = []
    default = StudyConfig()
    for f in fields(StudyConfig):
        if f.metadata.get("internal"):
            continue
        if f.name in NESTED:
            for g in fields(NESTED[f.name]):
                if g.name in f.metadata["flags"]:
                    out.append((f.name, g, getattr(getattr(default, f.name), g.name)))
            continue
        out.append((None, f, getattr(default, f.name)))
    return out


def test_every_field_is_a_flag_or_internal() -> None:
    options = {s for a in study_parser()._actions for s in a.option_strings}
    for f in fields(StudyConfig):
        assert f.metadata.get("internal") or f.name in NESTED or flag_name(f) in options, f.name
    assert {"--normalise", "--resize", "--image-size", "--families", "--extra-data"} <= options
    # Nothing else sneaks in: one flag per setting, plus -h.
    assert len(options) == len(_flag_fields()) + 2


@pytest.mark.parametrize(
    ("outer", "f", "default"), _flag_fields(), ids=lambda x: getattr(x, "name", None)
)
def test_flag_round_trips_a_non_default_value(outer: str | None, f: Any, default: Any) -> None:
    argv, value = _other(f, default)
    assert value != default
    cfg = _parse(argv)
    got = getattr(getattr(cfg, outer), f.name) if outer else getattr(cfg, f.name)
    assert got == value and type(got) is type(value)


def test_no_flags_give_the_defaults() -> None:
    assert _parse([]) == StudyConfig()


def test_defaults_and_nested_flags() -> None:
    cfg = _parse(["--image-size", "64", "--normalise", "equalize", "--resize", "pad"])
    assert cfg.preprocess == PreprocessConfig(image_size=64, normalise="equalize", resize="pad")
    assert cfg.image_size == 64 and cfg.families == FAMILY_NAMES and cfg.extra_data == ()
    with pytest.raises(SystemExit, match="--normalise: choose one or more of"):
        _parse(["--normalise", "clahe,sharpen"])
    with pytest.raises(SystemExit, match="--augment: choose one or more of"):
        _parse(["--augment", ""])
    with pytest.raises(SystemExit, match="comma-separated whole numbers"):
        _parse(["--image-size", "128,big"])
    searched = _parse([]).input_space()
    assert searched.image_sizes == (128, 160, 224) and len(searched.normalise) == 3
    with pytest.raises(SystemExit):
        study_parser().parse_args(["--resize", "squash"])


def test_closed_sets_are_the_parsers_choices() -> None:
    choices = {a.dest: a.choices for a in study_parser()._actions if a.choices}
    assert choices["tuner"] == TUNERS
    assert choices["precision"] == PRECISION_CHOICES
    members = {f.name: f.metadata.get("members") for f in fields(StudyConfig)}
    assert members["normalise_modes"] == NORMALISE_MODES
    assert members["augment_modes"] == AUGMENT_NAMES
    assert choices["objective"] == OBJECTIVE_NAMES
    assert choices["resize"] == RESIZE_MODES


def test_tuners_match_the_tuner_classes() -> None:
    from study.search.tuning import TUNER_CLASSES

    assert set(TUNER_CLASSES) == set(TUNERS)


def test_family_table() -> None:
    assert FAMILY_NAMES == ("custom_cnn", "resnet", "efficientnet")
    assert [f.name for f in FAMILIES.values() if not f.needs_weights] == ["custom_cnn"]
    # "auto" comes from the committed precision benchmark: tests/test_benchmarks.py checks
    # dtype_policy(family, "auto") against benchmarks/results/precision.json.
    assert dtype_policy("efficientnet", "mixed_bfloat16") == "mixed_bfloat16"
    assert dtype_policy("resnet", "float32") == "float32"
    for fam in FAMILIES.values():
        assert fam.precision in PRECISION_CHOICES[1:]
        assert fam.hypermodel_class().__name__ == fam.hypermodel.split(":")[1]


@pytest.mark.parametrize("families", ["custom_cnn,resnets", "vgg", "custom_cnn,,efficient"])
def test_bad_family_names_fail_clearly(families: str) -> None:
    with pytest.raises(SystemExit, match="unknown families .*choose from"):
        _parse(["--families", families])


def test_budget_must_be_positive() -> None:
    with pytest.raises(SystemExit, match="--budget must be at least 1"):
        _parse(["--budget", "0"])


def test_help_shows_defaults_and_env_vars_without_tensorflow() -> None:
    code = (
        "import sys; from study.config import study_parser; h = study_parser().format_help();"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'));"
        "assert not bad, bad; print(h)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    imp = subprocess.run(
        [sys.executable, "-X", "importtime", "run_study.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert imp.returncode == 0, imp.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in imp.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}
    assert "--normalise" in imp.stdout
    help_text = " ".join(imp.stdout.split())
    for env in ("PNEUMOSCOPE_DATA_DIR", "PNEUMOSCOPE_RESULTS_DIR", "PNEUMOSCOPE_CACHE_DIR"):
        assert f"(env {env})" in help_text
    assert "(default: custom_cnn,resnet,efficientnet)" in help_text
    assert "(default: hyperband)" in help_text and "(default: clahe,equalize,none)" in help_text


def test_data_audit_reuses_the_data_dir_flag() -> None:
    out = subprocess.run(
        [sys.executable, "run_study.py", "data", "audit", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "(env PNEUMOSCOPE_DATA_DIR)" in " ".join(out.stdout.split())
