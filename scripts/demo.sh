#!/usr/bin/env bash
# The offline demo, from a fresh clone: install, fetch the assets, run 3 seeds of weak -> ceiling -> w2s.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
.venv/bin/w2s-fetch
.venv/bin/w2s +experiment=demo "$@"
echo "demo wall time: $(( $(date +%s) - start )) s"
