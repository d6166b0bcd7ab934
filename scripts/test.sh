#!/usr/bin/env bash
# The test suite, from a fresh clone: install (with torch CPU for parity tests), lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check w2s analysis tests benchmarks experiments
.venv/bin/python -m pytest -q "$@"
