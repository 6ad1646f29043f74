#!/usr/bin/env bash
# Build circuit-tracer's own environment, OUTSIDE workbench's venv: circuit-tracer 0.5 pins
# transformers<=4.57.3, which workbench's environment cannot share. Idempotent: re-running checks the
# versions and installs only what is missing.
#   bash benchmarks/circuit_tracer/setup.sh            # -> $CT_VENV (default /work/ct-venv)
#   CT_VENV=/path/to/venv bash benchmarks/circuit_tracer/setup.sh
set -euo pipefail
CT_VENV="${CT_VENV:-/work/ct-venv}"
PYTHON="${PYTHON:-python3.11}"
CT_VERSION="${CT_VERSION:-0.5.*}"
if [ ! -x "$CT_VENV/bin/python" ]; then
  "$PYTHON" -m venv "$CT_VENV"
fi
PIP=("$CT_VENV/bin/pip" install -q --disable-pip-version-check)
# torch first, pinned: an unpinned torch pulled in by circuit-tracer would be a multi-GB CUDA build.
"$CT_VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null \
  || "${PIP[@]}" "torch==2.13.0"
"$CT_VENV/bin/python" -c 'import circuit_tracer' 2>/dev/null \
  || "${PIP[@]}" "torch==2.13.0" "circuit-tracer==${CT_VERSION}" "transformers<=4.57.3"
"$CT_VENV/bin/python" - <<'PY'
import importlib.metadata as md
print({p: md.version(p) for p in ("circuit-tracer", "torch", "transformers")})
PY
