#!/usr/bin/env bash
# The GPU benchmark as one prepared script (issue 13): random-init models from the configs in
# benchmarks/configs/, patching grids against TransformerLens, nnsight and the plain loop, causal tracing
# against the research loop, plain-forward tokens/s. Writes benchmarks/results/gpu-<device>.json.
#
#   bash benchmarks/gpu.sh                  # on a GPU machine (device cuda); meant to finish in < 8 min on an H100
#   bash benchmarks/gpu.sh --smoke          # tiny shapes on the CPU in about a minute: proves the script runs
#   bash benchmarks/gpu.sh --smoke --out /tmp/gpu-smoke.json
#
# Extra arguments go to benchmarks/gpu_bench.py (--models, --pairs, --device, --out). PYTHON picks the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root/benchmarks:$root${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1
args=("$@")
if [[ " $* " == *" --smoke "* && " $* " != *" --device "* ]]; then
  args+=(--device cpu)  # the smoke run is a CPU check even where a GPU is present
fi
cd "$root"
exec "$py" "$root/benchmarks/gpu_bench.py" "${args[@]}"
