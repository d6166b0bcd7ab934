#!/usr/bin/env bash
# Preference W2S recipes: (a) reward models trained on a weak RM's preferences
# (+experiment=preference_rm), (b) the dSFT -> dDPO chain with the weak LM as judge
# (+experiment=preference_dpo). Every run lands in the run store, so an interrupted recipe picks
# up where it stopped when run again.
# Usage: bash experiments/preference/run.sh [rm|dpo|all] [RESULTS_DIR]   (default: all, results/preference)
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
R="${2:-results/preference}"
W=".venv/bin/w2s"
if [[ "$what" == rm || "$what" == all ]]; then
  start=$(date +%s)
  $W +experiment=preference_rm "results_dir=$R/rm" train.progress=false loss=xent
  $W +experiment=preference_rm "results_dir=$R/rm" train.progress=false loss=logconf
  .venv/bin/w2s-analyze "$R/rm" --out experiments/preference/rm --quiet
  echo "preference rm recipe wall time: $(( $(date +%s) - start )) s"
fi
if [[ "$what" == dpo || "$what" == all ]]; then
  start=$(date +%s)
  $W +experiment=preference_dpo "results_dir=$R/dpo" train.progress=false
  # the same chain judged by a weak reward model (trained on A's pairs) instead of the weak LM;
  # the SFT runs and the ceiling DPO are reused
  $W +experiment=preference_dpo "results_dir=$R/dpo" train.progress=false pref.judge=rm
  .venv/bin/w2s-analyze "$R/dpo" --out experiments/preference/dpo --quiet
  echo "preference dpo recipe wall time: $(( $(date +%s) - start )) s"
fi
