#!/usr/bin/env bash
# Supervision variants on the demo task (3 seeds each), then the PGR table and plots.
# Weak and ceiling runs are shared through the run store, so only the w2s runs train.
# Usage: bash experiments/supervision/run.sh [RESULTS_DIR]   (default: results)
set -euo pipefail
cd "$(dirname "$0")/../.."
R="${1:-results}"
W=".venv/bin/w2s"
common=(+experiment=demo "results_dir=$R" train.progress=false)
$W -m "${common[@]}" loss=xent,logconf,logconf_linear               # offline weak labels
$W -m "${common[@]}" loss=kd loss.temperature=1.0,2.0              # live forward KL
$W "${common[@]}" loss=kd_combined                                 # live KL + confidence term
$W +experiment=demo_ensemble "results_dir=$R" train.progress=false loss=xent   # two weak models
$W "${common[@]}" loss=xent filter_q=0.5                           # top half by weak confidence
$W "${common[@]}" loss=xent s2s_rounds=1                           # one strong-to-strong round
.venv/bin/w2s-analyze "$R" --out experiments/supervision --quiet
