"""EfficientNet-Lite with offline ImageNet weights: is it really the ImageNet classifier?

The weights are converted once per session (into ``weights/`` if a verified file is already
there, else into a temp dir). Everything else reuses that file: a whole run is about a minute
on two slow cores, most of it one conversion, one reconversion and a few model builds.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import cv2
import h5py
import keras
import numpy as np
import pytest

from study.models import offline_weights as ow
from study.models.efficientnet_lite import (
    MEAN_RGB,
    STDDEV_RGB,
    block_names,
    block_specs,
    build_efficientnet_lite,
    preprocess_input,
    preprocessing_layer,
    set_trainable_top_blocks,
)

# ImageNet-1k indices (synsets checked against tensorflow_datasets' imagenet2012 labels.txt).
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504  # n07920052, n07930864, n03063599
TRIPOD = 872  # n04485082
CAB = 468  # n02930766 "cab, hack, taxi, taxicab"

to_np = keras.ops.convert_to_numpy


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified lite0 weights file, converted at most once per test session."""
    existing = ow.locate_weights(ow.default_weights_dir(), "lite0")
    if existing is not None:
        return existing
    return ow.fetch_offline(tmp_path_factory.mktemp("weights"), "lite0", install=True)


@pytest.fixture(scope="session")
def lite0_state() -> dict[str, np.ndarray]:
    pth, _ = ow.find_pth("lite0", install=True)
    return ow.read_state_dict(pth)


@pytest.fixture(scope="session")
def lite0_logits(lite0_weights: Path) -> keras.Model:
    """The full ImageNet classifier at 224x224, returning logits."""
    return build_efficientnet_lite("lite0", weights=lite0_weights, classifier_activation=None)


@pytest.fixture(scope="session")
def natural_dir(samples_dir: Path) -> Path:
    d = samples_dir / "natural"
    if not d.is_dir():
        pytest.skip(f"LOUD SKIP: no natural photos at {d}")
    return d


def load_rgb(path: Path, size: int = 224, crop: float = 0.875) -> np.ndarray:
    """Centre crop (the TF eval crop fraction 224/256) and resize; float32 RGB in [0, 255]."""
    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    s = int(min(h, w) * crop)
    top, left = (h - s) // 2, (w - s) // 2
    img = cv2.resize(
        img[top : top + s, left : left + s], (size, size), interpolation=cv2.INTER_AREA
    )
    return img.astype(np.float32)


# --------------------------------------------------------------------------- it is ImageNet


@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        ("coffee.png", {ESPRESSO, CUP, COFFEE_MUG}),
        ("camera.png", {TRIPOD}),  # the cameraman's camera stands on a tripod
        ("extreme_ironing.jpg", {CAB}),  # ironing on the roof of a yellow taxi
    ],
)
def test_imagenet_top5(
    lite0_logits: keras.Model, natural_dir: Path, photo: str, expected: set[int]
):
    x = preprocess_input(load_rgb(natural_dir / photo))[None]
    logits = to_np(lite0_logits(x, training=False))[0]
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert top5 & expected, f"{photo}: top-5 {sorted(top5)} lacks any of {sorted(expected)}"


def test_coffee_is_confident_espresso(lite0_logits: keras.Model, natural_dir: Path):
    """Wrong normalisation, padding or layout would blur this; the converted net is sure."""
    x = preprocess_input(load_rgb(natural_dir / "coffee.png"))[None]
    logits = to_np(lite0_logits(x, training=False))[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert int(np.argmax(p)) == ESPRESSO
    assert p[ESPRESSO] > 0.8


# --------------------------------------------------------------------------- preprocessing


def test_preprocessing_constants_are_the_lite_ones():
    """TF efficientnet_lite_builder: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3."""
    assert MEAN_RGB == (127.0, 127.0, 127.0)
    assert STDDEV_RGB == (128.0, 128.0, 128.0)
    x = np.array([0.0, 127.0, 255.0], np.float32)
    np.testing.assert_allclose(preprocess_input(x), [-127 / 128, 0.0, 1.0], rtol=1e-6)


def test_preprocessing_inside_a_functional_model():
    """Grey [0, 1] input -> 3 channels -> x255 -> preprocess_input, all inside the graph."""
    inp = keras.Input((8, 8, 1))
    rgb = keras.layers.Concatenate()([inp, inp, inp])
    op = keras.Model(inp, preprocess_input(rgb * 255.0))
    layer = keras.Model(inp, preprocessing_layer(1.0)(rgb))
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    want = np.repeat((x * 255.0 - 127.0) / 128.0, 3, axis=-1)
    np.testing.assert_allclose(to_np(op(x)), want, atol=1e-5)
    np.testing.assert_allclose(to_np(layer(x)), want, atol=1e-5)


def _same_pad(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """TF SAME padding of an HWC array (extra row/column at the bottom/right)."""
    out = []
    for n in x.shape[:2]:
        o = -(-n // stride)
        total = max((o - 1) * stride + k - n, 0)
        out.append((total // 2, total - total // 2))
    return np.pad(x, (*out, (0, 0)))


def _bn_relu6(x: np.ndarray, state: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    g, b = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    m, v = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
    return np.clip((x - m) / np.sqrt(v + 1e-3) * g + b, 0.0, 6.0)


def test_first_layers_match_numpy_reference(
    lite0_logits: keras.Model, lite0_state: dict[str, np.ndarray], natural_dir: Path
):
    """Stem conv+BN+ReLU6 and block1a's depthwise conv redone in NumPy straight from the .pth.

    Checks padding, stride, the OIHW/depthwise layouts, BN epsilon and the normalisation path.
    """
    x = preprocess_input(load_rgb(natural_dir / "coffee.png"))
    probe = keras.Model(
        lite0_logits.input,
        [
            lite0_logits.get_layer("stem_activation").output,
            lite0_logits.get_layer("block1a_activation").output,
        ],
    )
    stem_k, dw_k = (to_np(t)[0] for t in probe(x[None], training=False))

    w = lite0_state["_conv_stem.weight"]  # (32, 3, 3, 3) OIHW
    xp = _same_pad(x, 3, 2)
    patches = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(0, 1))[::2, ::2]
    stem = _bn_relu6(np.einsum("hwcij,ocij->hwo", patches, w), lite0_state, "_bn0")
    np.testing.assert_allclose(stem_k, stem, atol=2e-4)

    dw = lite0_state["_blocks.0._depthwise_conv.weight"][:, 0]  # (32, 3, 3)
    sp = np.lib.stride_tricks.sliding_window_view(_same_pad(stem, 3, 1), (3, 3), axis=(0, 1))
    ref = _bn_relu6(np.einsum("hwcij,cij->hwc", sp, dw), lite0_state, "_blocks.0._bn1")
    np.testing.assert_allclose(dw_k, ref, atol=5e-4)


# --------------------------------------------------------------------------- converted file


def test_h5_round_trips_the_pth(lite0_weights: Path, lite0_state: dict[str, np.ndarray]):
    """Keras stores weights by layer type and order: conv2d = stem_conv, dense = predictions."""
    with h5py.File(lite0_weights, "r") as f:
        stem = f["layers/conv2d/vars/0"][()]
        dense = f["layers/dense/vars/0"][()]
    np.testing.assert_array_equal(stem, lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(dense, lite0_state["_fc.weight"].T)


def test_every_tensor_is_mapped_once(lite0_state: dict[str, np.ndarray]):
    mapping = ow.torch_key_map("lite0")
    keys = [k for k, _ in mapping.values()]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for k in lite0_state if not k.endswith("num_batches_tracked")}


def test_sidecar_records_sources(lite0_weights: Path):
    meta = json.loads(ow.sidecar_path(lite0_weights).read_text())
    assert meta["weights_sha256"] == ow.sha256_file(lite0_weights)
    assert meta["source_pth_sha256"] == ow.PACKAGES["lite0"].pth_sha256
    assert meta["source_package_version"] == ow.PACKAGES["lite0"].version


def test_fetch_is_idempotent_and_detects_corruption(
    lite0_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / lite0_weights.name
    shutil.copy2(lite0_weights, target)
    shutil.copy2(ow.sidecar_path(lite0_weights), ow.sidecar_path(target))
    good_sha = ow.sha256_file(target)

    def no_conversion(*_a: object, **_k: object) -> None:
        raise AssertionError("verified weights must not be reconverted")

    with monkeypatch.context() as mp:
        mp.setattr(ow, "read_state_dict", no_conversion)
        mtime = target.stat().st_mtime_ns
        assert ow.fetch_offline(tmp_path, "lite0", install=False) == target
        assert target.stat().st_mtime_ns == mtime
    assert ow.locate_weights(tmp_path, "lite0") == target
    assert ow.main(["status", "--weights-dir", str(tmp_path)]) == 0

    with open(target, "r+b") as f:  # flip one byte in the middle of the weights
        f.seek(target.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    assert ow.locate_weights(tmp_path, "lite0") is None
    assert "checksum mismatch" in ow.verify(target, "lite0")[1]
    assert ow.main(["status", "--weights-dir", str(tmp_path)]) == 1

    assert ow.fetch_offline(tmp_path, "lite0", install=False) == target
    assert ow.locate_weights(tmp_path, "lite0") == target
    assert ow.sha256_file(target) == good_sha  # the conversion is deterministic
    assert not list(tmp_path.glob(".tmp-*"))


def test_locate_without_sidecar_is_none(lite0_weights: Path, tmp_path: Path):
    shutil.copy2(lite0_weights, tmp_path / lite0_weights.name)
    assert ow.locate_weights(tmp_path, "lite0") is None
    assert ow.locate_weights(tmp_path / "nowhere", "lite0") is None


# --------------------------------------------------------------------------- .pth reader


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Just enough of a ``torch`` module for pickle to write torch.save-style globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = storage
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _T:
    """A tensor as torch pickles it: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, key: str, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0):
        self.key, self.size, self.stride, self.offset = key, size, stride, offset

    def __reduce__(self):
        fn = sys.modules["torch._utils"]._rebuild_tensor_v2
        return fn, (
            _StorageRef(self.key),
            self.offset,
            self.size,
            self.stride,
            False,
            OrderedDict(),
        )


class _StorageRef:
    def __init__(self, key: str):
        self.key = key


def _pickle_with_storages(obj: object, numel: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    float_storage = sys.modules["torch"].FloatStorage

    class P(pickle.Pickler):
        def persistent_id(self, o: object):
            if isinstance(o, _StorageRef):
                return ("storage", float_storage, o.key, "cpu", numel[o.key])
            return None

    P(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_reader_zip_and_legacy_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Both torch.save layouts, incl. a transposed (strided) view and a storage offset."""
    _fake_torch(monkeypatch)
    a = np.arange(6, dtype=np.float32)
    b = np.arange(10, 22, dtype=np.float32)
    sd = OrderedDict(
        [
            ("a", _T("0", (2, 3), (3, 1))),
            ("a_t", _T("0", (3, 2), (1, 3))),
            ("b_tail", _T("1", (4,), (1,), offset=8)),
        ]
    )
    numel = {"0": a.size, "1": b.size}
    blob = _pickle_with_storages(sd, numel)

    zpath = tmp_path / "new.pth"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", blob)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", a.tobytes())
        z.writestr("archive/data/1", b.tobytes())

    lpath = tmp_path / "old.pth"
    with open(lpath, "wb") as f:
        for header in (ow._LEGACY_MAGIC, ow._LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(blob)
        pickle.dump(["0", "1"], f, protocol=2)
        for arr in (a, b):
            f.write(struct.pack("<q", arr.size) + arr.tobytes())

    for path in (zpath, lpath):
        got = ow.read_state_dict(path)
        assert list(got) == ["a", "a_t", "b_tail"]
        np.testing.assert_array_equal(got["a"], a.reshape(2, 3))
        np.testing.assert_array_equal(got["a_t"], a.reshape(2, 3).T)
        np.testing.assert_array_equal(got["b_tail"], b[8:12])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_reader_refuses_code(tmp_path: Path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (ow._LEGACY_MAGIC, ow._LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump(_Evil(), f, protocol=2)
    with pytest.raises(ow.WeightsError, match="refusing to unpickle"):
        ow.read_state_dict(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ow.WeightsError):
        ow.read_state_dict(path)


# --------------------------------------------------------------------------- model API


def test_headless_model_gets_the_same_weights(lite0_weights: Path, lite0_logits: keras.Model):
    feat = build_efficientnet_lite(
        "lite0", input_shape=(96, 96, 3), include_top=False, weights=lite0_weights
    )
    assert feat.output_shape == (None, 3, 3, 1280)
    for name in ("stem_conv", "block4b_dwconv", "top_bn"):
        for got, want in zip(
            feat.get_layer(name).get_weights(),
            lite0_logits.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
    pooled = build_efficientnet_lite(
        "lite0", input_shape=(64, 64, 3), include_top=False, pooling="avg"
    )
    assert pooled.output_shape == (None, 1280)


def test_block_structure_matches_lite0():
    specs = block_specs("lite0")
    assert len(specs) == 16
    assert [s.stride for s in specs if s.stride == 2] == [2, 2, 2, 2]
    assert {s.name: s.stride for s in specs if s.stride == 2} == {
        "block2a": 2,
        "block3a": 2,
        "block4a": 2,
        "block6a": 2,
    }
    # depth 1.1 / 1.2, first and last stage unscaled: 1+3+3+4+4+5+1 blocks for both
    assert len(block_specs("lite1")) == 21 and len(block_specs("lite2")) == 21


def test_set_trainable_top_blocks_freezes_bottom_and_bn():
    base = build_efficientnet_lite(
        "lite0", input_shape=(32, 32, 3), include_top=False, pooling="avg"
    )
    inp = keras.Input((32, 32, 1))
    x = keras.layers.Concatenate()([inp, inp, inp])
    out = keras.layers.Dense(1, name="pneumonia")(base(preprocessing_layer(1.0)(x)))
    model = keras.Model(inp, out)

    names = block_names(model)
    assert names[0] == "block1a" and names[-1] == "block7a" and len(names) == 16
    assert set_trainable_top_blocks(model, 2) == ["block6d", "block7a"]
    trainable = {v.path.split("/")[-2] for v in model.trainable_weights}
    assert {"block7a_dwconv", "block6d_project_bn", "top_conv", "pneumonia"} <= trainable
    assert not {"stem_conv", "block6c_dwconv", "block1a_bn"} & trainable

    frozen_bn = base.get_layer("block6c_bn")
    assert not frozen_bn.trainable
    z = np.random.default_rng(1).normal(3.0, 2.0, (2, 4, 4, frozen_bn.gamma.shape[0]))
    z = z.astype(np.float32)
    mean_before = to_np(frozen_bn.moving_mean).copy()
    np.testing.assert_allclose(  # frozen BN ignores training=True: inference mode
        to_np(frozen_bn(z, training=True)), to_np(frozen_bn(z, training=False)), atol=1e-6
    )
    np.testing.assert_array_equal(to_np(frozen_bn.moving_mean), mean_before)

    set_trainable_top_blocks(model, 2, train_batchnorm=False)
    trainable = {v.path.split("/")[-2] for v in model.trainable_weights}
    assert "block7a_bn" not in trainable and "block7a_dwconv" in trainable
    assert set_trainable_top_blocks(model, 0) == []
    assert set_trainable_top_blocks(model, -1) == names
    assert len(model.trainable_weights) == sum(1 for v in model.weights if "moving" not in v.path)
