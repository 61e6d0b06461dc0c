"""`python -m study.data.tfds_cli`: prepare the ``kermany_chest_xray`` TFDS dataset once.

A separate module because running the builder's own module as ``__main__`` would
register the builder twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.paths import DEFAULT_DATA_DIR, REPO


def main(argv: list[str] | None = None) -> int:
    """Build the study's splits of ``--data-dir`` into the TFDS folder ``--out``; print sizes."""
    from study.data.records import DEFAULT_SEED, SPLITS

    p = argparse.ArgumentParser(prog="python -m study.data.tfds_cli", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="Kaggle-layout folder")
    p.add_argument("--out", type=Path, default=REPO / "data" / "tfds", help="TFDS data_dir")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split seed (config seed<N>)")
    args = p.parse_args(argv)
    if not args.data_dir.is_dir():  # TFDS would only print its manual-download instructions
        print(f"error: data directory {args.data_dir} not found", file=sys.stderr)
        return 2

    import tensorflow_datasets as tfds

    from study.data.tfds_builder import KermanyChestXray, KermanyChestXrayConfig

    config = (
        "default"
        if args.seed == DEFAULT_SEED
        else KermanyChestXrayConfig(name=f"seed{args.seed}", seed=args.seed)
    )
    builder = KermanyChestXray(data_dir=str(args.out), config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(args.data_dir))
    )
    sizes = ", ".join(f"{s} {builder.info.splits[s].num_examples}" for s in SPLITS)
    print(f"{builder.info.full_name} in {args.out}: {sizes} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
