#!/usr/bin/env bash
# Language-model W2S recipe (+experiment=generative): weak and ceiling runs once per seed, then
# five ways for the strong LM to learn from the weak LM alone. Every run lands in the run store,
# so an interrupted recipe picks up where it stopped when run again.
# Usage: bash experiments/generative/run.sh [RESULTS_DIR]   (default: results/generative)
set -euo pipefail
cd "$(dirname "$0")/../.."
R="${1:-results/generative}"
W=".venv/bin/w2s"
common=(+experiment=generative "results_dir=$R" train.progress=false)
start=$(date +%s)
$W "${common[@]}" loss=dsft
$W "${common[@]}" loss=token_kd loss.divergence=fkl
$W "${common[@]}" loss=token_kd loss.divergence=rkl
$W "${common[@]}" loss=token_kd loss.divergence=fkl loss.on_policy=0.5
$W "${common[@]}" loss=token_kd loss.divergence=fkl loss.aux=self loss.alpha_max=0.3
# a weak model with more of the strong one's layers (the ceiling runs are reused)
$W "${common[@]}" model@weak=smollm2-l16 loss=dsft
$W "${common[@]}" model@weak=smollm2-l16 loss=token_kd loss.divergence=fkl
.venv/bin/w2s-analyze "$R" --out experiments/generative --quiet
echo "generative recipe wall time: $(( $(date +%s) - start )) s"
