"""The analysis verbs on tiny models: lens, dla, path-patch, das, cross-patch."""
import json

import pytest
from safetensors.torch import load_file

from workbench.cli import main

from conftest import IOI_CLEAN, IOI_CORRUPT


def test_lens_and_dla(tmp_path, capsys):
    out = tmp_path / "lens"
    assert main(["lens", "--model", "tiny-llama", "--prompt", IOI_CLEAN, "--prompt", "The capital of France is",
                 "--answer", " Mary", "--answer", " Paris", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert len(res["prob"]) == 2 and len(res["prob"][0]) == 2 and res["answer"] == [" Mary", " Paris"]
    assert abs(res["prob"][0][-1] - res["model_prob"][0]) < 1e-5  # the last layer's lens is the model
    assert (out / "lens_prob.png").stat().st_size > 1000
    out = tmp_path / "dla"
    assert main(["dla", "--model", "tiny-gpt2", "--prompt", IOI_CLEAN, "--answer", " Mary", "--foil", " John",
                 "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["identity_error"] < 1e-4 and "L1H3" in res["coords"]["component"]
    assert abs(sum(res["values"][0]) - res["logit_diff"][0]) < 1e-4
    capsys.readouterr()
    bad = str(tmp_path / "refused")  # a refused run writes nothing, so every refusal below can name this folder
    assert main(["lens", "--model", "tiny-llama", "--prompt", IOI_CLEAN, "--answer", " Mary is", "--out", bad]) == 2
    assert "answer" in capsys.readouterr().err
    assert main(["dla", "--model", "tiny-llama", "--prompt", IOI_CLEAN, "--answer", " Mary", "--answer", " John",
                 "--answer", " Bob", "--out", bad]) == 2
    assert "answer: expected" in capsys.readouterr().err


def test_path_patch(tmp_path, capsys):
    out = tmp_path / "pp"
    args = ["path-patch", "--model", "tiny-llama", "--clean", IOI_CLEAN, "--corrupt", IOI_CORRUPT, "--answer", " John",
            "--foil", " Mary", "--out", str(out)]
    assert main(args + ["--senders", "L0H1,mlp0,L0H2+L0H3", "--receivers", "L1H0,L1H2", "--receiver-positions", "-1"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["coords"]["sender"] == ["L0H1", "mlp0", "L0H2+L0H3"] and len(res["values"]) == 3
    capsys.readouterr()
    bad = [a if a != str(out) else str(tmp_path / "refused") for a in args]  # out holds results: refusals elsewhere
    assert main(bad + ["--senders", "L1H1", "--receivers", "L0H0"]) == 2
    assert "a receiver must be in a later layer" in capsys.readouterr().err
    assert main(bad + ["--senders", "L1H9"]) == 2
    assert "head 9 out of range" in capsys.readouterr().err
    out_q = tmp_path / "pq"
    args_q = [a if a != str(out) else str(out_q) for a in args]
    assert main(args_q + ["--senders", "L0H1", "--receivers", "L1H0", "--receiver-input", "q"]) == 0
    assert json.loads((out_q / "result.json").read_text())["meta"]["receiver_input"] == "q"


def test_das_and_cross_patch(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    rows = [{"base": f"I saw a {b}", "source": f"I saw a {s}", "label": " yes" if s == "cat" else " no"}
            for b in ("cat", "dog") for s in ("cat", "dog")] * 4
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "das"
    assert main(["das", "--model", "tiny-llama", "--site", "blocks.1.hook_resid_pre", "--data", str(data),
                 "--candidates", " yes, no", "--steps", "5", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert 0 <= res["accuracy"] <= 1 and len(res["losses"]) == 5
    assert load_file(out / "subspace.safetensors")["basis"].shape == (1, 64)
    capsys.readouterr()
    assert main(["das", "--model", "tiny-llama", "--site", "blocks.1.hook_resid_pre", "--data", str(data),
                 "--candidates", " yes, no", "--k", "65", "--out", str(tmp_path / "refused")]) == 2
    assert "k: expected an integer in 1..64" in capsys.readouterr().err
    data.write_text('{"base": "I saw a cat"}\n')
    assert main(["das", "--model", "tiny-llama", "--site", "blocks.1.hook_resid_pre", "--data", str(data),
                 "--candidates", " yes, no", "--out", str(out)]) == 2
    assert f"data: {data}:1: expected key 'source' of type str" in capsys.readouterr().err  # the records reader's message

    out = tmp_path / "cross"
    assert main(["cross-patch", "--model", "tiny-llama", "--tuned", "tiny-llama", "--prompt", IOI_CLEAN,
                 "--answer", " Mary", "--foil", " John", "--sites", "resid_pre,mlp_out", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    # the same weights on both sides: no patch can change the metric
    assert res["source_metric"] == pytest.approx(res["target_metric"], abs=1e-6)
    assert all(v == pytest.approx(res["target_metric"], abs=1e-5) for row in res["values"]["mlp_out"] for v in row)
    assert (out / "resid_pre.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["cross-patch", "--model", "tiny-llama", "--tuned", "tiny-gpt2", "--prompt", IOI_CLEAN,
                 "--answer", " Mary", "--foil", " John", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "models of different shapes" in err and "llama" in err and "gpt2" in err


def test_tuned_lens_verb_resumes(tmp_path, capsys):
    from pathlib import Path

    import workbench

    lines = [l.strip() for l in (Path(workbench.__file__).parent.parent / "README.md").read_text().splitlines()]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join([l for l in lines if len(l.split()) > 8][:40]))
    out = tmp_path / "tl"
    args = ["tuned-lens", "--model", "tiny-llama", "--texts", str(texts), "--batch-size", "2", "--max-len", "16",
            "--save-every", "2", "--out", str(out)]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4"]) == 0  # resumes from step 2
    res = json.loads((out / "result.json").read_text())
    assert len(res["losses_this_run"]) == 2 and len(res["kl_tuned_lens"]) == 2
    lens_out = tmp_path / "lens"
    assert main(["lens", "--model", "tiny-llama", "--prompt", IOI_CLEAN, "--answer", " Mary",
                 "--tuned", str(out / "tuned_lens.safetensors"), "--out", str(lens_out)]) == 0
    capsys.readouterr()
    assert main(["lens", "--model", "tiny-gpt2", "--prompt", IOI_CLEAN, "--answer", " Mary",  # lens_out holds results
                 "--tuned", str(out / "tuned_lens.safetensors"), "--out", str(tmp_path / "lens2")]) == 2
    assert "was trained on model" in capsys.readouterr().err
    assert main(["tuned-lens", "--model", "tiny-llama", "--texts", str(tmp_path / "none.txt"), "--out", str(out)]) == 2
    assert "texts: no such file" in capsys.readouterr().err
