"""TensorFlow Datasets builder ``kermany_chest_xray``: the study's splits as a TFDS dataset.

Why: other TF code can then read exactly the images and the patient-grouped
train/val/test membership of a study (``splits.json``) with ``tfds.load``, without
the study's NumPy cache. The splits come from :func:`study.data.datasets.plan_splits`,
the study's own plan (audit duplicates linked, unreadable files dropped), so there is
one implementation of the split. Importing this module registers the builder::

    import study.data.tfds_builder  # noqa: F401
    ds = tfds.load(
        "kermany_chest_xray", split="train", data_dir="...",
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="<kaggle folder>")
        },
    )

The image bytes are stored as on disk (no re-encoding) and decode to the file's RGB
pixels, exactly as OpenCV and PIL read them (a grey file gives three equal channels).
A prepared dataset is not rebuilt when ``manual_dir`` changes: use a new ``data_dir``
(or a new config) for another folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from study.data.audit import audit_dataset
from study.data.datasets import plan_splits
from study.data.records import (
    CLASS_NAMES,
    DEFAULT_SEED,
    SPLITS,
    TEST_FRACTION,
    VAL_FRACTION,
    ImageRecord,
    scan,
)
from study.paths import DEFAULT_CACHE_DIR

#: Where the builder caches audit rows (the same cache as ``run_study.py data audit``).
AUDIT_CACHE_DIR = DEFAULT_CACHE_DIR / "audit"


class StoredImage(tfds.features.Image):
    """An image kept as its file's bytes, decoded to the pixels OpenCV and PIL give.

    Why: TensorFlow's default JPEG decoder uses libjpeg's fast integer DCT, which moves
    half the pixels of these X-rays by up to 2 grey levels; the accurate DCT matches
    the study's decoder exactly.
    """

    def decode_example(self, example: tf.Tensor) -> tf.Tensor:
        channels = self.shape[-1]
        img = tf.cond(
            tf.io.is_jpeg(example),
            lambda: tf.io.decode_jpeg(example, channels=channels, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(example, channels=channels, expand_animations=False),
        )
        img.set_shape(self.shape)
        return img


@dataclasses.dataclass(eq=False)
class KermanyChestXrayConfig(tfds.core.BuilderConfig):
    """Split settings; the defaults are the study's (``StudyConfig`` uses the same names)."""

    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    seed: int = DEFAULT_SEED


class KermanyChestXray(tfds.core.GeneratorBasedBuilder):
    """Kermany pediatric chest X-rays (NORMAL / PNEUMONIA), split by patient."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Patient-grouped splits of the pneumoscope study."}
    BUILDER_CONFIGS = [
        KermanyChestXrayConfig(name="default", description="the study's default splits")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a folder in the Kaggle layout <root>/<split>/{NORMAL,PNEUMONIA}/ "
        "holding train/ (val/ and test/ are optional), e.g. from "
        "'python run_study.py data download'."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": StoredImage(shape=(None, None, 3)),  # grey files: 3 equal channels
                    "image/filename": tfds.features.Text(),  # <source split>/<class>/<name>
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "patient": tfds.features.Text(),
                    "subtype": tfds.features.Text(),  # normal, bacteria, virus or unknown
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """Audit the folder, then plan the splits exactly as the study does."""
        root = Path(os.fspath(dl_manager.manual_dir)).resolve()
        records = scan(root)
        audit = audit_dataset(records, cache_dir=AUDIT_CACHE_DIR)
        cfg = self.builder_config
        plan = plan_splits(
            records,
            audit,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
        )
        return {s: self._generate_examples(plan.of(s), root) for s in SPLITS}

    def _generate_examples(
        self, records: list[ImageRecord], root: Path
    ) -> Iterator[tuple[str, dict]]:
        for r in records:
            name = Path(r.path).relative_to(root).as_posix()
            yield (
                name,
                {
                    "image": r.path,
                    "image/filename": name,
                    "label": r.label,
                    "patient": r.patient,
                    "subtype": r.subtype,
                },
            )
