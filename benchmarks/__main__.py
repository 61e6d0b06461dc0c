"""Run the study-side benchmarks: `python -m benchmarks [--data-dir D] [--image-size S]`.

Results (JSON + Markdown) land in benchmarks/results/, and their tables are copied into
the README (:mod:`benchmarks.readme`). The precision benchmark runs first: the others
train in the precisions it chooses. The service benchmark and the gate table have their
own commands: `python -m benchmarks.service_bench` and `python -m benchmarks.gate_table`.
"""

import argparse
import subprocess
import sys

from study.paths import DEFAULT_DATA_DIR

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
p.add_argument("--image-size", default="128")
a = p.parse_args()
runs = [
    ["benchmarks.precision_bench", "--image-size", a.image_size],
    ["benchmarks.pipeline_bench", "--data-dir", a.data_dir, "--image-size", a.image_size],
    ["benchmarks.training_bench", "--image-size", a.image_size],
    ["benchmarks.readme"],
]
for cmd in runs:
    print(f"== {cmd[0]}", flush=True)
    subprocess.run([sys.executable, "-m", *cmd], check=True)
