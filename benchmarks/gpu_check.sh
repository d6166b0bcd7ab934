#!/usr/bin/env bash
# GPU readiness on a fresh machine with one NVIDIA GPU, install included (about 10 minutes):
# cuDNN attention against XLA in bf16, a bf16 training curve against float32 over 50 steps,
# and the throughput table of train_throughput.py --all-gpu. Figures and PASS/FAIL printed.
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same code at tiny shapes on CPU (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test                       # .venv with w2s, torch and the test tools
if [ "${1:-}" != "--cpu-smoke" ]; then
  # JAX's CUDA plugin at the installed jax's version (wheels from PyPI)
  v=$(.venv/bin/python -c "import jax; print(jax.__version__)")
  .venv/bin/python -m pip install -q "jax[cuda12]==$v"
  .venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"
fi
.venv/bin/python benchmarks/gpu_check.py "$@"
