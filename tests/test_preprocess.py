"""The one preprocessing module: same output through every entry point, every format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from study.data import preprocess as pp
from study.data.preprocess import PreprocessConfig

CFG = PreprocessConfig(image_size=64)


def _files(data_dir: Path, samples_dir: Path) -> list[Path]:
    train = sorted((data_dir / "train" / "NORMAL").glob("*.jpeg"))[:2]
    full = sorted((samples_dir / "kermany_full_res" / "val" / "PNEUMONIA").glob("*.jpeg"))[:1]
    png = [samples_dir / "other_chest_xray" / "covidrad_Normal-12.png"]
    dcm = [samples_dir / "dicom" / "chest_DX_nih_nofinding.dcm"]
    return train + full + png + dcm


@pytest.fixture(scope="module")
def tiny_winner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from study.select.model_io import export_winner

    inp = keras.Input((64, 64, 1))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inp))
    d = tmp_path_factory.mktemp("winner")
    export_winner(keras.Model(inp, out), {"preprocess": CFG.to_dict(), "threshold": 0.5}, d)
    return d / "winner"


def test_same_input_same_tensor_through_every_entry_point(
    data_dir: Path, samples_dir: Path, tmp_path: Path, tiny_winner: Path
) -> None:
    from service.inference import ModelRuntime
    from study.data.cache import build_cache
    from study.select.model_io import load_winner

    files = _files(data_dir, samples_dir)
    cache = build_cache([str(f) for f in files], CFG, tmp_path, workers=2, progress=False)
    winner = load_winner(tiny_winner)
    runtime = ModelRuntime(tiny_winner)
    for f in files:
        data = f.read_bytes()
        reference = pp.load_for_model(data, CFG)
        assert reference.shape == (64, 64, 1) and reference.dtype == np.float32
        from_cache = pp.scale(cache.take([str(f)])[0])[..., None]  # training / evaluation
        np.testing.assert_array_equal(from_cache, reference)
        np.testing.assert_array_equal(winner.prepare(data), reference)  # predict / evaluate
        decoded = pp.decode(data).pixels
        np.testing.assert_array_equal(winner.prepare_pixels(decoded), reference)
        expected = winner.predict_batch(reference[None])[0]
        assert runtime.run(data, decoded).probability == expected  # service worker


def test_train_pipeline_scaling_matches_numpy() -> None:
    import tensorflow as tf

    img = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(pp.scale(tf.constant(img)).numpy(), pp.scale(img))


def test_sixteen_bit_png_and_rgb_and_gray_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gray8 = cv2.GaussianBlur(rng.integers(0, 256, (90, 120), dtype=np.uint8), (5, 5), 0)
    gray16 = gray8.astype(np.uint16) * 257
    rgb = cv2.cvtColor(gray8, cv2.COLOR_GRAY2BGR)
    outs = []
    for arr in (gray8, gray16, rgb):
        ok, buf = cv2.imencode(".png", arr)
        assert ok
        d = pp.decode(buf.tobytes())
        assert d.format == "png"
        outs.append(pp.prepare(buf.tobytes(), CFG))
    assert pp.decode(cv2.imencode(".png", gray16)[1].tobytes()).meta["bit_depth"] == 16
    for o in outs[1:]:
        assert np.abs(o.astype(int) - outs[0].astype(int)).max() <= 1


@pytest.mark.parametrize(
    "blob,reason",
    [
        (b"not an image at all", "unsupported"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + (10**5).to_bytes(4, "big") * 2, "pixel limit"),
    ],
)
def test_bad_bytes_give_a_specific_error(blob: bytes, reason: str) -> None:
    with pytest.raises(pp.ImageDecodeError, match=reason):
        pp.decode(blob)


def test_truncated_jpeg_is_an_error_not_grey(data_dir: Path) -> None:
    data = next((data_dir / "train" / "NORMAL").glob("*.jpeg")).read_bytes()
    with pytest.raises(pp.ImageDecodeError):
        pp.decode(data[:200])


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_resize_modes_give_square_outputs(mode: str) -> None:
    img = np.full((100, 160), 200, np.uint8)
    out = pp.resize(img, 32, mode)
    assert out.shape == (32, 32)
    if mode == "pad":
        assert out[0, 0] == 0 and out[16, 16] == 200


def test_clahe_evens_out_exposure() -> None:
    """Two exposures of one image end closer together after normalisation."""
    rng = np.random.default_rng(2)
    base = cv2.GaussianBlur(rng.integers(60, 200, (128, 128), dtype=np.uint8), (9, 9), 0)
    dark = (base.astype(np.float32) ** 1.6 / 255**0.6).astype(np.uint8)
    cfg = PreprocessConfig(image_size=128)
    a, b = pp.normalise(pp.window(base), cfg), pp.normalise(pp.window(dark), cfg)
    assert (
        np.abs(a.astype(int) - b.astype(int)).mean()
        < np.abs(base.astype(int) - dark.astype(int)).mean()
    )


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_like_pillow(orientation: int, fmt: str) -> None:
    """Every EXIF orientation gives the pixels Pillow's reference exif_transpose gives."""
    import io

    from PIL import Image, ImageOps

    rng = np.random.default_rng(orientation)
    stored = np.kron(rng.integers(0, 256, (6, 9)), np.ones((8, 8))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    data = buf.getvalue()
    decoded = pp.decode(data)
    assert decoded.meta["exif_orientation"] == orientation
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    got = pp.to_grayscale(decoded.pixels)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() <= (0 if fmt == "PNG" else 3)


def test_grey_preview_one_picture_for_people(samples_dir: Path) -> None:
    """Bytes or decoded pixels give the same windowed grey picture; sizes as asked; None if bad."""
    from study.data.preview import grey_preview

    data = (samples_dir / "dicom" / "chest_DX_nih_nofinding.dcm").read_bytes()
    full = grey_preview(data)
    assert full is not None and full.dtype == np.uint8 and full.ndim == 2
    assert np.array_equal(full, grey_preview(pp.decode(data).pixels))
    assert full.min() == 0 and full.max() == 255  # windowed to the full 8-bit range
    h, w = full.shape
    small = grey_preview(data, max_side=100)
    assert small is not None and max(small.shape) == 100
    assert abs(small.shape[0] / small.shape[1] - h / w) < 0.02  # aspect kept
    assert grey_preview(data, max_side=10 * max(h, w)).shape == (h, w)  # never enlarged
    assert grey_preview(data, width=50).shape[1] == 50
    assert grey_preview(b"not an image") is None
    assert grey_preview(data, max_pixels=1000) is None  # the pixel limit holds here too
