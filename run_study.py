#!/usr/bin/env python
"""pneumoscope study entry point: `python run_study.py --budget 50` (see --help)."""

import sys

from study.cli import main

if __name__ == "__main__":
    sys.exit(main())
