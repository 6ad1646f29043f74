#!/usr/bin/env bash
# The main job: set-up (idempotent), then the demo on the embedded default model; writes figures to ${1:-out/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WORKBENCH_VENV:-.venv}
exec "$VENV/bin/workbench" demo --out "${1:-out/demo}"
