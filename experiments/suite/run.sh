#!/usr/bin/env bash
# The task suite in two stages: screen the 12 tasks (weak and ceiling runs, 3 seeds), then
# train xent and logconf w2s runs on the tasks whose gap the screen calls `gap` or `mixed`.
# Tasks screened out stay in the tables, with undefined PGR. Every run lands in the run store,
# so an interrupted suite picks up where it stopped when run again.
# Usage: bash experiments/suite/run.sh [RESULTS_DIR]   (default: results)
set -euo pipefail
cd "$(dirname "$0")/../.."
R="${1:-results}"
W=".venv/bin/w2s"
common=(+experiment=suite "results_dir=$R" train.progress=false)
start=$(date +%s)
$W -m "${common[@]}" 'kinds=[weak,ceiling]'
.venv/bin/w2s-analyze "$R" --out "$R/screen" --quiet --no-plots
echo "screen: $(( $(date +%s) - start )) s"
tasks=$(.venv/bin/python - "$R/screen/screen.csv" <<'PY'
import sys
import pandas as pd
s = pd.read_csv(sys.argv[1])
print(",".join(s.loc[s["verdict"].isin(["gap", "mixed"]), "task"]))
PY
)
if [ -n "$tasks" ]; then
  $W -m "${common[@]}" "task=$tasks" loss=xent,logconf
fi
.venv/bin/w2s-analyze "$R" --out experiments/suite --quiet --compare xent logconf
echo "suite wall time: $(( $(date +%s) - start )) s"
