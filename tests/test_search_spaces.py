"""Search spaces, metrics and weight resolution, on tiny images (32 px) so they run on 2 cores.

No real ImageNet weights are needed: the tests write weights files in the expected formats
and names with a recognisable stem kernel, then check that exactly those values end up in
the built model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import keras_tuner as kt
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from search_spaces import hypermodel_class
from search_spaces.resnet import set_trainable_top_blocks
from study.models import offline_weights
from study.models.efficientnet_lite import build_efficientnet_lite
from study.models.metrics import METRIC_NAMES, Specificity, compile_metrics
from study.models.weights import (
    WeightsSource,
    WeightsUnavailableError,
    resolve_imagenet_weights,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # the smallest input keras.applications accepts
RESNET_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
B0_FILE = "efficientnetb0_notop.h5"


# --------------------------------------------------------------------------- helpers


def _patterned(var: keras.Variable | np.ndarray) -> np.ndarray:
    """A kernel no random initialiser produces, so equality proves it came from the file."""
    shape = tuple(var.shape)
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 7 - 3) / 10


def _save_legacy_h5(model: keras.Model, path: Path) -> None:
    """Write weights in the legacy Keras h5 layout used by the keras.applications files."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _first_conv(model: keras.Model, name: str) -> np.ndarray:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                if inner.name == name:
                    return np.asarray(inner.kernel)
        elif layer.name == name:
            return np.asarray(layer.kernel)
    raise AssertionError(f"no layer {name}")


def _backbone(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def random_hps(hypermodel: kt.HyperModel, n: int, seed: int = 0) -> list[kt.HyperParameters]:
    """``n`` random points of the hypermodel's space (respecting conditional scopes)."""
    space = kt.HyperParameters()
    hypermodel.declare(space)
    samples = []
    for i in range(n):
        hp = space.copy()
        for p in hp.space:
            if hp.is_active(p):
                hp.values[p.name] = p.random_sample(seed * 1000 + i)
        samples.append(hp)
    return samples


def _set(hypermodel: kt.HyperModel, **values: object) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hypermodel.declare(hp)
    for k, v in values.items():
        hp.values[k] = v
    hp.ensure_active_values()  # defaults for hyperparameters a changed parent activated
    return hp


def _check_io(model: keras.Model) -> None:
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 1), dtype=np.float32)
    y = model(x, training=False)
    assert tuple(y.shape) == (2, 1)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """An empty ~/.keras, so weights cached on this machine never change an outcome."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("KERAS_HOME", raising=False)


@pytest.fixture(scope="module")
def keras_weights_dir(tmp_path_factory) -> Path:
    """ResNet50V2 and EfficientNetB0 notop files under their keras.applications names."""
    d = tmp_path_factory.mktemp("keras_weights")
    r = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    r.get_layer("conv1_conv").kernel.assign(_patterned(r.get_layer("conv1_conv").kernel))
    _save_legacy_h5(r, d / RESNET_FILE)
    e = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    e.get_layer("stem_conv").kernel.assign(_patterned(e.get_layer("stem_conv").kernel))
    _save_legacy_h5(e, d / B0_FILE)
    return d


@pytest.fixture(scope="module")
def lite_weights_dir(tmp_path_factory) -> Path:
    """A verified offline EfficientNet-Lite0 file (what fetch-offline writes), made locally."""
    d = tmp_path_factory.mktemp("lite_weights")
    m = build_efficientnet_lite("lite0", input_shape=(SIZE, SIZE, 3), include_top=True)
    m.get_layer("stem_conv").kernel.assign(_patterned(m.get_layer("stem_conv").kernel))
    path = d / offline_weights.weights_filename("lite0")
    m.save_weights(path)
    meta = {
        "format_version": offline_weights.FORMAT_VERSION,
        "variant": "lite0",
        "weights_sha256": offline_weights.sha256_file(path),
    }
    offline_weights.sidecar_path(path).write_text(json.dumps(meta))
    return d


# --------------------------------------------------------------------------- metrics


def test_specificity_hand_example():
    m = Specificity()
    # negatives: 0.1 TN, 0.6 FP, 0.49 TN, 0.5 FP (>= threshold); positives do not count
    m.update_state([0, 0, 0, 0, 1, 1], [0.1, 0.6, 0.49, 0.5, 0.9, 0.2])
    assert float(m.result()) == pytest.approx(0.5)
    m.update_state([[0], [0]], [[0.2], [0.3]])  # accumulates counts: TN 4 / (4 + 2)
    assert float(m.result()) == pytest.approx(4 / 6)
    m.reset_state()
    assert float(m.result()) == 0.0  # no negatives yet
    m.update_state([0, 0, 1], [0.9, 0.1, 0.9], sample_weight=[3.0, 1.0, 5.0])
    assert float(m.result()) == pytest.approx(1 / 4)
    clone = Specificity.from_config(m.get_config())
    assert clone.threshold == 0.5 and clone.name == "specificity"


def test_compile_metrics_names_and_history_keys():
    assert [m.name for m in compile_metrics()] == list(METRIC_NAMES)
    hm = hypermodel_class("custom_cnn")(SIZE, 0, None)
    model = hm.build(_set(hm, stem="space_to_depth4", stages=2, block="residual"))
    rng = np.random.default_rng(0)
    x = rng.random((8, SIZE, SIZE, 1), dtype=np.float32)
    y = np.array([0, 1] * 4, np.float32)
    hist = model.fit(x, y, validation_data=(x, y), epochs=1, batch_size=4, verbose=0).history
    for key in ("val_auc", "val_pr_auc", "val_specificity", "val_precision", "val_recall"):
        assert key in hist, sorted(hist)


# --------------------------------------------------------------------------- builds


def test_custom_cnn_random_samples():
    hm = hypermodel_class("custom_cnn")(SIZE, 0, WeightsSource("resnet", False, reason="ignored"))
    for hp in random_hps(hm, 4):
        model = hm.build(hp)
        _check_io(model)
        assert model.loss is not None and hm.describe(hp).count("\n") == 0


def test_custom_cnn_mixed_bfloat16_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        hm = hypermodel_class("custom_cnn")(SIZE, 0, None)
        model = hm.build(_set(hm, stem="conv7_s2_pool", block="plain"))
        assert model.layers[-1].dtype_policy.compute_dtype == "float32"
        _check_io(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("family", "fixture", "arch", "kind", "stem"),
    [
        ("resnet", "keras_weights_dir", "ResNet50V2", "local-file", "conv1_conv"),
        ("efficientnet", "keras_weights_dir", "EfficientNetB0", "local-file", "stem_conv"),
        (
            "efficientnet",
            "lite_weights_dir",
            "EfficientNetLite0",
            "offline-efficientnet-lite0",
            "stem_conv",
        ),
    ],
)
def test_transfer_family_loads_local_weights(family, fixture, arch, kind, stem, request):
    wdir = request.getfixturevalue(fixture)
    src = resolve_imagenet_weights(family, wdir)
    assert src.available and src.architecture == arch and src.kind == kind, src
    hm = hypermodel_class(family)(SIZE, 0, src)
    expected = None
    for hp in random_hps(hm, 2, seed=1):
        model = hm.build(hp)
        _check_io(model)
        kernel = _first_conv(model, stem)
        if expected is None:
            expected = _patterned(kernel)
        np.testing.assert_array_equal(kernel, expected)
        assert model.weights_kind == kind and hp.values["weights_kind"] == kind
        assert hp.values["backbone"] == arch and arch.lower() in model.name
        backbone = _backbone(model)
        if hp.values["fine_tune_blocks"] == 0:
            assert not backbone.trainable_weights
        else:
            assert 0 < len(backbone.trainable_weights) < len(backbone.weights)
        assert arch in hm.describe(hp)


def test_efficientnet_b0_matches_keras_imagenet_build(keras_weights_dir, monkeypatch):
    """From a local file, B0 computes what keras.applications builds for weights="imagenet"."""
    from keras.src.applications import efficientnet as keras_effnet

    path = keras_weights_dir / B0_FILE
    monkeypatch.setattr(keras_effnet.file_utils, "get_file", lambda *a, **k: str(path))
    ref = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3)
    )
    hm = hypermodel_class("efficientnet")(
        SIZE, 0, resolve_imagenet_weights("efficientnet", path.parent)
    )
    ours = hm.make_backbone((SIZE, SIZE, 3))
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32) * 255
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-4, atol=1e-4)


def test_keras_cache_is_used(tmp_path, keras_weights_dir, monkeypatch):
    cache = tmp_path / "kh" / "models"
    cache.mkdir(parents=True)
    os.symlink(keras_weights_dir / RESNET_FILE, cache / RESNET_FILE)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    src = resolve_imagenet_weights("resnet", tmp_path / "empty")
    assert src.available and src.kind == "keras.applications" and src.path == cache / RESNET_FILE


def test_transfer_family_unavailable_without_weights(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    for family in ("resnet", "efficientnet"):
        src = resolve_imagenet_weights(family, empty)
        assert not src.available and src.path is None
        assert str(empty) in src.reason
        with pytest.raises(WeightsUnavailableError, match=family):
            hypermodel_class(family)(SIZE, 0, src)
        with pytest.raises(WeightsUnavailableError):
            hypermodel_class(family)(SIZE, 0, None)
    assert RESNET_FILE in resolve_imagenet_weights("resnet", empty).reason
    assert "fetch-offline" in resolve_imagenet_weights("efficientnet", empty).reason


def test_preprocessing_layers_match_keras_preprocess_input():
    x = np.random.default_rng(0).random((2, 4, 4, 1), dtype=np.float32)
    rgb = np.repeat(x, 3, axis=-1) * 255.0
    for arch, ref in (
        ("ResNet50V2", keras.applications.resnet_v2.preprocess_input),
        ("ResNet50", keras.applications.resnet50.preprocess_input),
    ):
        hm = hypermodel_class("resnet")(
            SIZE, 0, WeightsSource("resnet", True, "local-file", Path(), arch)
        )
        got = np.asarray(hm.make_preprocess()(rgb))
        np.testing.assert_allclose(got, ref(rgb.copy()), rtol=1e-5, atol=1e-4)


def test_bn_stays_frozen_and_backbone_lr_multiplier(keras_weights_dir):
    """Fine-tuned blocks move only by lr * multiplier (0 here); BN statistics never move."""
    src = resolve_imagenet_weights("resnet", keras_weights_dir)
    hm = hypermodel_class("resnet")(SIZE, 0, src)
    hp = _set(
        hm, fine_tune_blocks=1, fine_tune_lr_mult=0.0, head_units=0, dropout=0.0, optimizer="adam"
    )
    model = hm.build(hp)
    backbone = _backbone(model)
    unfrozen = set_trainable_top_blocks(backbone, 1, hm.block_pattern)
    assert unfrozen == ["conv5_block3"]
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    rng = np.random.default_rng(0)
    x = rng.random((4, SIZE, SIZE, 1), dtype=np.float32)
    model.train_on_batch(x, np.array([0, 1, 0, 1], np.float32))
    changed = {
        v.path
        for v in model.weights
        if not np.array_equal(keras.ops.convert_to_numpy(v), before[v.path])
    }
    assert changed == {"head_out/kernel", "head_out/bias"}, sorted(changed)[:10]


# --------------------------------------------------------------------------- save / reload

RELOAD = """
import sys
import numpy as np
import keras
import study.models.layers  # registers the project's custom objects
for name in sys.argv[1:]:
    m = keras.saving.load_model(name + ".keras")
    x = np.load(name + "_x.npy")
    np.testing.assert_allclose(np.asarray(m(x, training=False)), np.load(name + "_y.npy"),
                               rtol=1e-5, atol=1e-6)
assert "keras_tuner" not in sys.modules, "reloading must not need Keras-Tuner"
print("reloaded", len(sys.argv) - 1)
"""


def test_saved_models_reload_without_keras_tuner(tmp_path, keras_weights_dir, lite_weights_dir):
    rng = np.random.default_rng(0)
    x = rng.random((2, SIZE, SIZE, 1), dtype=np.float32)
    cnn = hypermodel_class("custom_cnn")(SIZE, 0, None)
    res = hypermodel_class("resnet")(SIZE, 0, resolve_imagenet_weights("resnet", keras_weights_dir))
    eff = hypermodel_class("efficientnet")(
        SIZE, 0, resolve_imagenet_weights("efficientnet", lite_weights_dir)
    )
    models = {
        "cnn": cnn.build(_set(cnn, stem="space_to_depth4", block="residual", optimizer="adamw")),
        "resnet": res.build(_set(res, fine_tune_blocks=3, optimizer="adamw")),
        "effnet": eff.build(_set(eff, fine_tune_blocks=1)),
    }
    names = []
    for name, model in models.items():
        base = tmp_path / name
        model.train_on_batch(x, np.array([0, 1], np.float32))  # so optimizer state exists
        model.save(f"{base}.keras")
        np.save(f"{base}_x.npy", x)
        np.save(f"{base}_y.npy", np.asarray(model(x, training=False)))
        names.append(str(base))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, *names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reloaded 3" in out.stdout
