#!/usr/bin/env bash
# The test command: set-up (idempotent), then the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WORKBENCH_VENV:-.venv}
export TQDM_DISABLE=1 WORKBENCH_QUICK=1  # notebooks run on a reduced setting
exec "$VENV/bin/python" -m pytest -q -n 2 "$@"
