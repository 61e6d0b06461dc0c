"""The images the gate learns from, each source split into a fit part and a calibration part.

Kinds (the classes of the discriminative score):

* ``chest``: Kermany training X-rays (patient-grouped train split -> fit, val split ->
  calibration), the same images moved towards adult films by :func:`adult_like`, and
  the adult CR chest PA of pydicom-data (calibration only: never fitted).
* ``rotated_chest``: Kermany X-rays turned by 90, 180 or 270 degrees (synthetic): a
  refusal reason of its own, "rotated, please upload it upright".
* ``other_medical``: pydicom-data's MR, CT, ultrasound, nuclear medicine, segmentation
  and lower-leg X-ray images (MIT), plus random crops and flips of them.
* ``not_xray``: scikit-image's bundled photos, text and scientific images and its LFW
  subset of grey photos (BSD-3), pydicom-data's secondary-capture photos and colour
  test patterns, in colour and grey, and synthetic documents/screenshots (random text,
  boxes and bars).

The X-ray layer asks another question, "is it a radiograph?" (:func:`is_radiograph`):
chest films (turned or not) and the lower-leg X-ray are; MR, CT, ultrasound, photos,
documents and screenshots are not, so a grey photo is told it is not an X-ray.

Every non-Kermany source is split by a hash of its image group (one image stored in
several encodings is one group), so no calibration image was fitted in any encoding.
The scikit-image pictures that also appear among ``../shared/data/samples`` are left out
altogether (neither fitted nor used for a threshold): the dev set only fills the table.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from study.data.dicom import CHEST_BODY_PARTS, XRAY_MODALITIES
from study.data.preprocess import ImageDecodeError, decode, to_grayscale, window

KINDS = ("chest", "rotated_chest", "other_medical", "not_xray")
# Radiographs (the X-ray layer's positives): chest films, turned or not, and pydicom-data's
# X-rays of other body parts. MR, CT, ultrasound, photos and documents are not.
RADIOGRAPH_KINDS = ("chest", "rotated_chest")
RADIOGRAPH_SOURCES = ("pydicom_xray",)
CALIB_SHARE = 0.34  # share of each non-Kermany source's image groups held out
# scikit-image pictures that ../shared/data/samples also holds: never used.
SKIMAGE_DEV_OVERLAP = ("astronaut", "camera", "coffee", "moon", "page", "retina")
SKIMAGE_DEV_OVERLAP += ("immunohistochemistry",)
SKIMAGE_NAMES = (
    "binary_blobs",
    "brick",
    "cat",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "logo",
    "microaneurysms",
    "rocket",
    "shepp_logan_phantom",
    "stereo_motorcycle",
    "text",
)
LFW_SCALE = 4  # scikit-image's 25x25 LFW crops, enlarged to 100 px: small grey photos
PYDICOM_OTHER_MEDICAL = {"MR", "CT", "US", "NM", "SEG"}
GREY_SHARE = 0.7  # colour pictures' variants made grey: grey photos must read as photos
AUG_VERSION = 3  # in the keys of augmented items: bump when an augmentation changes
MIN_SIDE = 64  # smaller test files (3x3, 10x10 dose grids) are not pictures


@dataclass(frozen=True)
class Item:
    """One training or calibration image: where from, what it is, how to load it."""

    source: str
    kind: str
    part: str  # "fit" or "calib"
    key: str  # unique and stable: the feature cache key
    load: Callable[[], np.ndarray]  # decoded pixels, any depth, HxW or HxWxC


def is_radiograph(item: Item) -> bool:
    """Whether the item is an X-ray film (of any body part, any orientation)."""
    return item.kind in RADIOGRAPH_KINDS or item.source in RADIOGRAPH_SOURCES


def in_calibration(group: str, share: float = CALIB_SHARE) -> bool:
    """Stable split by the group's hash (the same on every machine and run)."""
    h = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


# ----------------------------------------------------------------------------- augmentations


def _warp(img: np.ndarray, m: np.ndarray, border: int, fill: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=fill
    )


def adult_like(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move a pediatric film towards an adult one: wider field of view (zoom out) with a
    dark or white border, another aspect ratio, a tilt of up to 10 degrees, another
    exposure, sometimes mirrored."""
    g = window(to_grayscale(img))
    h, w = g.shape
    zoom = rng.uniform(0.65, 1.1)
    aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), 1.0)
    m[:, :2] = m[:, :2] @ np.diag([zoom * aspect**0.5, zoom / aspect**0.5])
    m[:, 2] += np.array([w / 2, h / 2]) - m[:, :2] @ np.array([w / 2, h / 2])
    border = cv2.BORDER_REPLICATE if rng.random() < 0.5 else cv2.BORDER_CONSTANT
    fill = int(rng.integers(0, 40)) if rng.random() < 0.5 else int(rng.integers(215, 256))
    out = _warp(g, m, border, fill)  # dark or white (unexposed) collimation borders
    gamma = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    out = (255.0 * (out / 255.0) ** gamma).astype(np.uint8)
    return out[:, ::-1].copy() if rng.random() < 0.3 else out


def rotated(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film turned by 90, 180 or 270 degrees."""
    return np.ascontiguousarray(np.rot90(img, int(rng.integers(1, 4))))


def negative_variant(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (40-100% of each side), flip, quarter turn, grey or colour."""
    h, w = img.shape[:2]
    ch, cw = (
        max(MIN_SIDE, int(h * rng.uniform(0.4, 1))),
        max(MIN_SIDE, int(w * rng.uniform(0.4, 1))),
    )
    top, left = int(rng.integers(0, max(1, h - ch + 1))), int(rng.integers(0, max(1, w - cw + 1)))
    out = img[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = np.rot90(out, int(rng.integers(0, 4)))
    if out.ndim == 3 and rng.random() < GREY_SHARE:
        out = to_grayscale(np.ascontiguousarray(out))
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- sources


def _read(path: str) -> np.ndarray:
    return decode(Path(path).read_bytes()).pixels


def _derived(base: Callable[[], np.ndarray], aug: Callable, seed: int) -> Callable[[], np.ndarray]:
    return lambda: aug(base(), np.random.default_rng(seed))


def kermany_items(data_dir: Path, n_fit: int, n_calib: int, seed: int) -> list[Item]:
    """Kermany originals, adult-like and rotated copies; fit from train, calibrate on val."""
    from study.data.records import make_splits, scan  # scikit-learn: loaded only when fitting

    plan = make_splits(scan(data_dir), seed=42)
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    for split, part, n in (("train", "fit", n_fit), ("val", "calib", n_calib)):
        recs = plan.of(split)
        idx = rng.permutation(len(recs))
        # A small data folder (CI, Docker) keeps a third of its films for the rotated kind.
        n = min(n, (2 * len(recs)) // 3)
        chosen = [recs[i].path for i in sorted(idx[:n])]
        turned = [recs[i].path for i in sorted(idx[n : n + max(1, n // 2)])]  # other films
        for i, p in enumerate(chosen):
            load = _derived(lambda p=p: _read(p), lambda x, r: x, 0)
            items.append(Item("kermany", "chest", part, p, load))
            s = seed * 1_000_003 + i
            items.append(
                Item(
                    "kermany_adult_like",
                    "chest",
                    part,
                    f"{p}#adult{AUG_VERSION}.{s}",
                    _derived(load, adult_like, s),
                )
            )
        for i, p in enumerate(turned):
            s = seed * 1_000_003 + i
            load = _derived(lambda p=p: _read(p), lambda x, r: x, 0)
            items.append(
                Item(
                    "kermany_rotated",
                    "rotated_chest",
                    part,
                    f"{p}#rot{s}",
                    _derived(load, rotated, s),
                )
            )
    return items


def pydicom_files() -> list[Path]:
    """The DICOM files of pydicom-data (the installed package's own file list) and of
    pydicom's bundled test files; nothing is downloaded."""
    import importlib.metadata as md

    import pydicom.data

    try:
        files = [Path(str(f.locate())) for f in md.files("pydicom-data") or ()]
    except md.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "pydicom-data is not installed: pip install -r requirements.txt"
        ) from exc
    files += sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    return sorted(f for f in files if f.suffix == ".dcm" and f.is_file())


def _dicom_kind(modality: str, body: str) -> tuple[str, str] | None:
    """(source, kind) of a pydicom-data file by its header, None for files left out."""
    if modality in XRAY_MODALITIES:
        chest = any(p in body for p in CHEST_BODY_PARTS)
        return ("pydicom_chest", "chest") if chest else ("pydicom_xray", "other_medical")
    if modality in PYDICOM_OTHER_MEDICAL:
        return "pydicom_other", "other_medical"
    if modality == "OT":
        return "pydicom_capture", "not_xray"
    return None  # RTDOSE grids, headerless JPEG-LS samples


def pydicom_items(n_variants: int, seed: int) -> list[Item]:
    """pydicom-data: one group per (modality, size): one image in many encodings is one
    group. Chest films are calibration only; other groups split by hash."""
    import pydicom

    items: list[Item] = []
    for f in pydicom_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # a deliberately broken test file
                continue
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        sk = _dicom_kind(
            str(ds.get("Modality", "")).upper(), str(ds.get("BodyPartExamined", "")).upper()
        )
        if sk is None or min(rows, cols) < MIN_SIDE:
            continue
        group = f"{ds.get('Modality')}:{rows}x{cols}"
        part = "calib" if sk[1] == "chest" or in_calibration(group) else "fit"
        load = _derived(lambda f=f: _read(str(f)), lambda x, r: x, 0)
        items.append(Item(sk[0], sk[1], part, f"pydicom:{f.name}", load))
        if sk[1] != "chest":
            items += _variants(sk[0], sk[1], part, f"pydicom:{f.name}", load, n_variants, seed)
    return items


def _variants(
    source: str, kind: str, part: str, key: str, load: Callable, n: int, seed: int
) -> list[Item]:
    return [
        Item(
            source,
            kind,
            part,
            f"{key}#var{AUG_VERSION}.{seed}.{i}",
            _derived(load, negative_variant, seed * 7919 + i),
        )
        for i in range(n)
    ]


def _skimage_image(name: str) -> np.ndarray:
    """A bundled scikit-image picture as uint8 BGR or grey (the decoder's layout)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # a stereo pair: its left view
        img = img[0]
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = window(img.astype(np.float32))
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(img)


def skimage_items(n_variants: int, seed: int) -> list[Item]:
    """scikit-image's bundled pictures (photos, text, scientific), with crops and grey copies
    (those also among the dev samples are not used)."""
    items: list[Item] = []
    for name in SKIMAGE_NAMES:
        part = "calib" if in_calibration(name) else "fit"
        load = _derived(lambda n=name: _skimage_image(n), lambda x, r: x, 0)
        items.append(Item("skimage", "not_xray", part, f"skimage:{name}", load))
        items += _variants("skimage", "not_xray", part, f"skimage:{name}", load, n_variants, seed)
    return items


@functools.cache
def _lfw_subset() -> np.ndarray:
    """The 200 LFW crops, read once per fit (every item loads one of them)."""
    import skimage.data

    return skimage.data.lfw_subset()


def _lfw(index: int) -> np.ndarray:
    img = _lfw_subset()[index]
    return cv2.resize(img, None, fx=LFW_SCALE, fy=LFW_SCALE, interpolation=cv2.INTER_CUBIC)


def lfw_items() -> list[Item]:
    """scikit-image's LFW subset: 100 faces and 100 background crops of news photos, all
    grey: the everyday grey photos the other sources lack (a grey photo is not an X-ray)."""
    items = []
    for i in range(200):
        part = "calib" if in_calibration(f"lfw{i}") else "fit"
        load = _derived(lambda i=i: _lfw(i), lambda x, r: x, 0)
        items.append(Item("skimage_lfw", "not_xray", part, f"lfw:{i}x{LFW_SCALE}", load))
    return items


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)
_FONTS += (cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def synthetic_document(rng: np.random.Generator) -> np.ndarray:
    """A page or screenshot: lines of random text, boxes and bars on a light or dark
    background, sometimes in colour (no licensed corpus of documents is installed)."""
    h, w = int(rng.integers(300, 900)), int(rng.integers(300, 900))
    dark = rng.random() < 0.3
    bg = rng.integers(0, 60, 3) if dark else rng.integers(190, 256, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    ink = (
        (lambda: tuple(int(v) for v in rng.integers(0, 256, 3)))
        if rng.random() < 0.5
        else (lambda: (230, 230, 230) if dark else (20, 20, 20))
    )
    for _ in range(int(rng.integers(0, 4))):  # panels, buttons, chart bars
        x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        cv2.rectangle(
            img,
            (x, y),
            (x + int(rng.integers(20, w // 2)), y + int(rng.integers(10, h // 3))),
            ink(),
            int(rng.choice([-1, 1, 2])),
        )
    y, size = int(rng.integers(10, 40)), float(rng.uniform(0.4, 1.2))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789     ,.:%"))
    font = int(rng.choice(_FONTS))
    while y < h - 10:
        text = "".join(rng.choice(letters, int(rng.integers(10, 80))))
        cv2.putText(img, text, (int(rng.integers(5, 60)), y), font, size, ink(), 1, cv2.LINE_AA)
        y += int(rng.integers(14, 40) * size) + 8
    return img


def document_items(n: int, seed: int) -> list[Item]:
    """Synthetic documents and screenshots (kind not_xray), split by hash of their index."""
    items = []
    for i in range(n):
        part = "calib" if in_calibration(f"document{i}") else "fit"
        load = _derived(lambda: np.zeros(1), lambda _, r: synthetic_document(r), seed * 104729 + i)
        items.append(Item("synthetic_document", "not_xray", part, f"document:{seed}.{i}", load))
    return items


def _package_file(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{package} is not installed")
    return Path(spec.origin).parent.joinpath(*parts)


# Photos bundled with installed libraries: (package, path inside it).
PACKAGE_PHOTOS = (
    ("sklearn", "datasets", "images", "china.jpg"),
    ("sklearn", "datasets", "images", "flower.jpg"),
    ("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
    ("matplotlib", "mpl-data", "sample_data", "Minduka_Present_Blue_Pack.png"),
)


def package_photo_items(n_variants: int, seed: int) -> list[Item]:
    """The photos scikit-learn and Matplotlib ship (BSD-3 / Matplotlib licence), with crops
    and grey copies: more everyday pictures than scikit-image alone has."""
    items: list[Item] = []
    for package, *parts in PACKAGE_PHOTOS:
        path = _package_file(package, *parts)
        if not path.is_file():
            continue
        part = "calib" if in_calibration(path.name) else "fit"
        load = _derived(lambda p=path: _read(str(p)), lambda x, r: x, 0)
        items.append(Item("package_photos", "not_xray", part, f"photo:{path.name}", load))
        items += _variants(
            "package_photos", "not_xray", part, f"photo:{path.name}", load, n_variants, seed
        )
    return items


def all_items(data_dir: Path, n_fit: int, n_calib: int, n_variants: int, seed: int) -> list[Item]:
    """Every source; see the module doc."""
    return (
        kermany_items(data_dir, n_fit, n_calib, seed)
        + pydicom_items(n_variants, seed)
        + skimage_items(3 * n_variants, seed)  # few pictures: more crops of each
        + lfw_items()
        + package_photo_items(3 * n_variants, seed)
        + document_items(10 * n_variants, seed)
    )


def safe_load(item: Item) -> np.ndarray | None:
    """The item's pixels, or None when its file cannot be decoded here (e.g. JPEG-LS)."""
    try:
        return item.load()
    except (ImageDecodeError, ValueError, OSError, RuntimeError):
        return None
