import json

import pytest

from workbench.cli import main


def test_models_and_info(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "tiny-llama" in out
    assert "gemma-3-270m" in out and "Gemma Terms of Use" in out and "google/gemma-3-270m" in out
    assert main(["info", "--model", "tiny-gpt2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "gpt2" and info["n_layers"] == 2


def test_prepare_names_the_embedded_models(capsys):
    assert main(["prepare", "gemma-2b"]) == 2
    assert "expected one of ['gemma-3-270m', 'smollm2-135m']" in capsys.readouterr().err


def test_bad_model_is_a_clean_error(capsys):
    assert main(["info", "--model", "tiny-bert"]) == 2
    assert "family" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_writes_figures(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--facts", "2", "--samples", "2"]) == 0
    for comp in ("resid_pre", "attn_out", "mlp_out"):
        assert (tmp_path / f"ioi_{comp}.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ioi"]["answer"] == " Mary" and summary["trace"]["n_traced"] == 2
    trace = json.loads((tmp_path / "trace" / "summary.json").read_text())
    assert trace["n_traced"] == 2 and trace["config"]["samples"] == 2
    assert len(list((tmp_path / "trace" / "figures").glob("fact_*.png"))) == 2
    assert len(list((tmp_path / "trace").glob("*.png"))) >= 2  # the average-effect figures
