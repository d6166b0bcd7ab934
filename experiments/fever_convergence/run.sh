#!/usr/bin/env bash
# BIG-bench fact_checker/fever with the demo's models and sizes (A = B = 1000, val 200, test 1000),
# xent, 3 seeds: "before" trains every run a fixed 2 epochs (as before the convergence defaults),
# "after" lets weak and ceiling runs stop on their val loss (train.early_stop, the default).
# Usage: bash experiments/fever_convergence/run.sh [RESULTS_DIR]   (default: results/fever)
set -euo pipefail
cd "$(dirname "$0")/../.."
R="${1:-results/fever}"
W=".venv/bin/w2s"
common=(+experiment=demo task=fever loss=xent train.progress=false)
$W "${common[@]}" 'train.early_stop.runs=[]' "results_dir=$R/before"
$W "${common[@]}" "results_dir=$R/after"
for k in before after; do
  .venv/bin/w2s-analyze "$R/$k" --out "experiments/fever_convergence/$k" --quiet --no-plots
done
