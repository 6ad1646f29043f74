"""benchmarks/gpu.sh --smoke: the GPU benchmark script runs end to end on the CPU, and its baselines agree."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute on one free core (tiny shapes, but TransformerLens, nnsight and plain loops)
def test_gpu_script_smoke_runs_and_agrees(tmp_path):
    out = tmp_path / "gpu-smoke.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu" and result["device_name"]
    assert set(result["models"]) == {"smollm2-135m", "gemma-2-2b"}
    for name, entry in result["models"].items():
        runs = entry["one_pair"]["runs"]
        assert {"workbench", "transformer_lens", "nnsight", "reference_loop"} <= set(runs), name
        assert all("seconds" in r for r in runs.values()), name  # every baseline could be built offline
        assert entry["one_pair"]["agree"] and entry["2_pairs"]["agree"] and entry["tracing"]["agree"], name
        # "agree" is over the runs that could be built: each case must hold a real baseline compared with workbench
        # (the 2-pair case has nnsight alone; were it unavailable, workbench would be compared with itself)
        for case, baselines in (("one_pair", ("transformer_lens", "nnsight", "reference_loop")), ("2_pairs", ("nnsight",))):
            for b in baselines:
                run = entry[case]["runs"].get(b, {})
                assert "unavailable" not in run and run.get("max_abs_diff_vs_workbench", 1.0) < 1e-4, (name, case, b, run)
        assert entry["plain_forward_tokens_per_s"] > 0
    assert result["all_agree"]
