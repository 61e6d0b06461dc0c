"""Where things live: the repo and the env-var defaults of every folder, declared once.

Imported by the study's stages and, through :mod:`study.serving`, by the service.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name, str(default)))


DEFAULT_DATA_DIR = env_path("PNEUMOSCOPE_DATA_DIR", REPO / "data" / "chest_xray")
DEFAULT_RESULTS_DIR = env_path("PNEUMOSCOPE_RESULTS_DIR", REPO / "results")
DEFAULT_CACHE_DIR = env_path("PNEUMOSCOPE_CACHE_DIR", REPO / "data" / "cache")
DEFAULT_WEIGHTS_DIR = env_path("PNEUMOSCOPE_WEIGHTS_DIR", REPO / "weights")
