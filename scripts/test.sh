#!/usr/bin/env bash
# The test command: set-up (idempotent), then the tests on CPU, two workers.
#   scripts/test.sh          the fast tier (-m "not slow": unit tests on tiny models, the bad-input table,
#                            exactness on tiny families), a few minutes on 2 cores
#   scripts/test.sh --all    everything: also the notebooks, the Ray cluster, CLI subprocesses, the default
#                            model and the browser (.ci/run runs this with CI=1)
# Other arguments go to pytest (e.g. scripts/test.sh tests/test_hooks.py -k gpt2).
# With CI set, a missing Ray, Playwright or Chromium fails the run (conftest.py) and the 25 slowest tests are listed.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not slow")
args=()
for a in "$@"; do
    if [[ $a == --all ]]; then tier=(); else args+=("$a"); fi
done
[[ -n ${CI:-} ]] && args+=(--durations=25)
bash scripts/setup.sh
VENV=${WORKBENCH_VENV:-.venv}
export TQDM_DISABLE=1 WORKBENCH_QUICK=1  # notebooks run on a reduced setting
exec "$VENV/bin/python" -m pytest -q -n 2 "${tier[@]}" "${args[@]}"
