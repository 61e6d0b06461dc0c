"""Where things live: the repo and the env-var defaults of every folder, declared once.

Imported by the study's stages and, through :mod:`study.serving`, by the service.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name, str(default)))


DATA_DIR_ENV = "PNEUMOSCOPE_DATA_DIR"
RESULTS_DIR_ENV = "PNEUMOSCOPE_RESULTS_DIR"
CACHE_DIR_ENV = "PNEUMOSCOPE_CACHE_DIR"
WEIGHTS_DIR_ENV = "PNEUMOSCOPE_WEIGHTS_DIR"
# The dev set of real uploads (never for fitting or thresholds): ../shared beside the clone.
SAMPLES_DIR_ENV = "PNEUMOSCOPE_SAMPLES_DIR"
DEFAULT_DATA_DIR = env_path(DATA_DIR_ENV, REPO / "data" / "chest_xray")
DEFAULT_RESULTS_DIR = env_path(RESULTS_DIR_ENV, REPO / "results")
DEFAULT_CACHE_DIR = env_path(CACHE_DIR_ENV, REPO / "data" / "cache")
DEFAULT_WEIGHTS_DIR = env_path(WEIGHTS_DIR_ENV, REPO / "weights")
DEFAULT_SAMPLES_DIR = env_path(SAMPLES_DIR_ENV, REPO.parent / "shared" / "data" / "samples")
