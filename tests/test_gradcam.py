"""Grad-CAM must point at the evidence: a tiny CNN learns 'bright square present?'.

Synthetic 32x32 grey images: noise plus dim blobs; positives also carry a
bright 6x6 square at a random place. A model that solves the task can only
do so by looking at the square, so its heatmap must sit on it. The same
trained weights are then re-wrapped as a nested backbone and rebuilt under
mixed_bfloat16; heatmaps must agree with the flat float32 model. Random-weight
models check that DAG backbones and DAG or Sequential outer graphs give the
same heatmaps as the equivalent flat model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from study.report import gradcam as gc

SIZE, SQ = 32, 6


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 1) in [0, 1], labels, and the square's mask (all False for negatives)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.08, (n, SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):  # one dim, soft distractor blob per image
        cy, cx = rng.uniform(4, SIZE - 4, 2)
        x[i] += 0.15 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
    y = (np.arange(n) % 2).astype(np.int64)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, SIZE - SQ + 1, 2)
        masks[i, r : r + SQ, c : c + SQ] = True
    x[masks] = rng.uniform(0.85, 1.0)
    return np.clip(x, 0, 1)[..., None], y, masks


def conv_layers() -> list[keras.layers.Layer]:
    return [
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
    ]


def head_layers() -> list[keras.layers.Layer]:
    return [
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(1, activation="sigmoid", name="out", dtype="float32"),
    ]


def flat_model() -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 1))
    x = inp
    for layer in [*conv_layers(), *head_layers()]:
        x = layer(x)
    return keras.Model(inp, x, name="flat")


def nested_model() -> keras.Model:
    """Same architecture with the convolutions inside a functional 'backbone' layer."""
    b_in = keras.Input((SIZE, SIZE, 1))
    x = b_in
    for layer in conv_layers():
        x = layer(x)
    backbone = keras.Model(b_in, x, name="backbone")
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Identity(name="pre")(inp)  # stands in for preprocessing layers
    x = backbone(x)
    for layer in head_layers():
        x = layer(x)
    return keras.Model(inp, x, name="nested")


def copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """By variable path ("conv1/kernel"): layer names are fixed, so nesting does not change it."""
    src_w = {w.path: w for w in src.weights}
    assert sorted(src_w) == sorted(w.path for w in dst.weights)
    for w in dst.weights:
        w.assign(src_w[w.path].numpy())


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(0)
    x, y, _ = make_data(3000, seed=0)
    model = flat_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x, y, batch_size=64, epochs=4, verbose=0, shuffle=True)
    xt, yt, mt = make_data(200, seed=1)
    acc = float(np.mean((model.predict(xt, verbose=0)[:, 0] >= 0.5) == yt))
    assert acc > 0.95, f"the tiny CNN did not learn the task (accuracy {acc:.3f})"
    return model, xt, yt, mt


def _on_square(heat: np.ndarray, masks: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Share of positives with inside/outside mean ratio > 2, and with the peak on the square."""
    ratios, peaks = [], []
    for h, m in zip(heat[y == 1], masks[y == 1], strict=True):
        ratios.append(h[m].mean() / max(h[~m].mean(), 1e-9))
        dil = np.zeros_like(m)  # peak may sit on the square's edge after upsampling
        r, c = np.argwhere(m).min(axis=0)
        dil[max(r - 1, 0) : r + SQ + 1, max(c - 1, 0) : c + SQ + 1] = True
        peaks.append(dil[np.unravel_index(np.argmax(h), h.shape)])
    return float(np.mean(np.array(ratios) > 2.0)), float(np.mean(peaks))


def test_heatmap_falls_on_the_square(trained) -> None:
    model, x, y, masks = trained
    path = gc.find_conv_path(model)
    assert path[-1].name == "conv2"
    heat = gc.gradcam(model, x)
    assert heat.shape == (len(x), SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    ratio_ok, peak_ok = _on_square(heat, masks, y)
    assert ratio_ok >= 0.9, ratio_ok
    assert peak_ok >= 0.9, peak_ok
    frac = [gc.fraction_in_region(h, m) for h, m in zip(heat[y == 1], masks[y == 1], strict=True)]
    assert np.median(frac) > 5 * masks[y == 1].mean()  # far above the square's area share


def test_nested_backbone_gives_the_same_heatmaps(trained) -> None:
    model, x, y, masks = trained
    nested = nested_model()
    copy_weights(model, nested)
    same = nested.predict(x[:16], verbose=0) - model.predict(x[:16], verbose=0)
    assert np.abs(same).max() < 1e-5
    path = gc.find_conv_path(nested)
    assert [p.name for p in path] == ["nested", "backbone", "conv2"]
    heat = gc.gradcam(nested, x[:64])
    np.testing.assert_allclose(heat, gc.gradcam(model, x[:64]), atol=1e-4)
    gc.gradcam(nested, x[:8])  # second call reuses the rebuilt graph
    assert len(nested.__dict__[gc._CACHE_ATTR]) == 1
    assert gc.gradcam(nested, x[:8], layer_name="conv1").shape == (8, SIZE, SIZE)


def test_nested_residual_backbone_matches_flat_graph() -> None:
    """A backbone that is itself a DAG (skip connection) is handled by its own graph."""
    keras.utils.set_random_seed(1)

    def build(nested: bool) -> keras.Model:
        def block(t):
            h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(t)
            h2 = keras.layers.Conv2D(4, 3, padding="same", name="c2")(h)
            return keras.layers.ReLU(name="block_out")(keras.layers.Add(name="add")([h, h2]))

        inp = keras.Input((16, 16, 1))
        if nested:
            b_in = keras.Input((16, 16, 1))
            x = keras.Model(b_in, block(b_in), name="res_backbone")(inp)
        else:
            x = block(inp)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(x))

    nested, flat = build(True), build(False)
    copy_weights(nested, flat)
    x = np.random.default_rng(0).random((6, 16, 16, 1)).astype(np.float32)
    assert gc.find_conv_path(nested)[-1].name == "block_out"
    hn, hf = gc.gradcam(nested, x), gc.gradcam(flat, x)
    assert hf.max() > 0  # not trivially equal because both are blank
    np.testing.assert_allclose(hn, hf, atol=1e-4)


def test_outer_dag_and_sequential_wrappers_match_flat_graph() -> None:
    """Grey->RGB by Concatenate, a side branch from the input, or a Sequential wrapper."""
    keras.utils.set_random_seed(2)

    def convs() -> list[keras.layers.Layer]:
        return [
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="k1"),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="k2"),
        ]

    def build(nested: bool) -> keras.Model:
        inp = keras.Input((16, 16, 1))
        rgb = keras.layers.Concatenate(name="rgb")([inp, inp, inp])
        if nested:
            b_in = keras.Input((16, 16, 3))
            x = b_in
            for layer in convs():
                x = layer(x)
            x = keras.Model(b_in, x, name="bb")(rgb)
        else:
            x = rgb
            for layer in convs():
                x = layer(x)
        feats = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        side = keras.layers.GlobalAveragePooling2D(name="side")(inp)
        both = keras.layers.Concatenate(name="cat")([feats, side])
        return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(both))

    nested, flat = build(True), build(False)
    copy_weights(nested, flat)
    x = np.random.default_rng(1).random((5, 16, 16, 1)).astype(np.float32)
    hf = gc.gradcam(flat, x)
    assert hf.max() > 0
    np.testing.assert_allclose(gc.gradcam(nested, x), hf, atol=1e-4)

    b_in = keras.Input((16, 16, 1))
    y = b_in
    for layer in convs():
        y = layer(y)
    seq = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.Model(b_in, y, name="bb"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    inp = keras.Input((16, 16, 1))
    z = inp
    for layer in [*convs(), keras.layers.GlobalAveragePooling2D(name="gap")]:
        z = layer(z)
    flat_seq = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(z))
    flat_seq.set_weights(seq.get_weights())  # same order: k1, k2, out
    np.testing.assert_allclose(gc.gradcam(seq, x), gc.gradcam(flat_seq, x), atol=1e-4)


def test_mixed_bfloat16_flat_and_nested(trained) -> None:
    model, x, y, masks = trained
    ref = gc.gradcam(model, x[:64])
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for build in (flat_model, nested_model):
            m16 = build()
            copy_weights(model, m16)
            conv = gc.find_conv_path(m16)[-1]
            assert conv.compute_dtype == "bfloat16"
            heat = gc.gradcam(m16, x[:64])
            assert heat.dtype == np.float32 and np.isfinite(heat).all()
            corr = np.corrcoef(heat.ravel(), ref.ravel())[0, 1]
            assert corr > 0.9, (build.__name__, corr)
            ratio_ok, _ = _on_square(heat, masks[:64], y[:64])
            assert ratio_ok >= 0.85
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_saturated_probability_still_gives_a_heatmap(trained) -> None:
    """P = 1.0 exactly has zero gradient; the logit does not, so the heatmap must survive."""
    model, x, y, _ = trained
    sat = flat_model()
    copy_weights(model, sat)
    out = sat.get_layer("out")
    out.bias.assign(out.bias.numpy() + 200.0)
    pos = x[y == 1][:8]
    assert np.all(sat.predict(pos, verbose=0) == 1.0)
    np.testing.assert_allclose(gc.gradcam(sat, pos), gc.gradcam(model, pos), atol=1e-4)


def test_overlay_png_and_lung_mask() -> None:
    rng = np.random.default_rng(0)
    gray = (rng.random((40, 50)) * 255).astype(np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:4] = 1.0
    rgb = gc.overlay(gray, heat, alpha=0.4)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(gc.overlay(gray / 255.0, heat), rgb)  # float input, same result
    png = gc.heatmap_png(gray, heat)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    mask = gc.central_lung_mask(128, 128)
    assert mask.shape == (128, 128) and mask.dtype == bool
    assert 0.25 < mask.mean() < 0.35  # 2 * pi * 0.16 * 0.30 = 0.30 of the image
    assert mask[60, 38] and mask[60, 90]  # both lung centres
    assert not mask[60, 64] and not mask[5, 5] and not mask[120, 64]  # mediastinum, corner, belly
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # left-right symmetric
    hm = np.zeros((128, 128))
    hm[mask] = 1.0
    assert gc.fraction_in_region(hm, mask) == 1.0
    assert gc.fraction_in_region(np.ones((128, 128)), mask) == pytest.approx(mask.mean())
    assert gc.fraction_in_region(np.zeros((128, 128)), mask) == 0.0
