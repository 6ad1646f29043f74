import json

import pytest
import torch

import workbench as wb
from workbench.cli import main
from workbench.patching.engine import Patch, run_patches
from workbench.patching import activation_patching

from conftest import IOI_CLEAN, IOI_CORRUPT, reference_patch


def test_engine_counts_only_suffix_work(tiny):
    m = tiny("llama")
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", skip_identical=False)["resid_pre"]
    T, L = len(m.to_tokens(IOI_CLEAN)[0]), m.dims.n_layers
    suffix = sum((L - l) * (T - p) for l in range(L) for p in range(T))
    eng = res.meta["engine"]
    assert eng["token_layers"] - eng["padding"] == suffix + T * L  # the patched rows plus one target run
    assert eng["padding"] < 0.2 * eng["token_layers"]
    skipped = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John")["resid_pre"]
    assert skipped.meta["engine"]["token_layers"] < res.meta["engine"]["token_layers"]
    assert abs(skipped.values - res.values).max() < 1e-5


def test_memory_budget_chunks_and_too_small_budget(tiny):
    m = tiny("gpt2")
    big = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", skip_identical=False)["resid_pre"]
    small = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", skip_identical=False,
                                max_batch_tokens=14)["resid_pre"]
    assert small.meta["engine"]["calls"] > big.meta["engine"]["calls"]
    assert abs(small.values - big.values).max() < 1e-5
    with pytest.raises(ValueError, match="memory_mb"):
        activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", memory_mb=0.001)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", max_batch_tokens=0)


def test_unsupported_suffix_request_is_refused_and_full_path_says_so(tiny):
    m = tiny("llama")
    ids = m.to_tokens(IOI_CORRUPT)
    value = torch.zeros(1, m.dims.d_model)
    patches = [Patch.at(0, wb.Site(1, "resid_pre"), [3], None, value)]
    metric = lambda logits, idx: logits[:, 0]  # noqa: E731
    vals, stats = run_patches(m, ids, patches, metric, path="full")
    assert stats.path == "full"
    fast, stats = run_patches(m, ids, patches, metric, path="suffix")
    assert stats.path == "suffix" and torch.allclose(vals, fast, atol=1e-5)
    with pytest.raises(ValueError, match="path"):
        run_patches(m, ids, patches, metric, path="fastest")


def test_alignment_of_prompts_of_different_lengths(tiny):
    m = tiny("llama")
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the big store, Mary gave a drink to"
    with pytest.raises(ValueError, match="align"):
        activation_patching(m, clean, corrupt, " Mary", " John")
    Tc, Tx = len(m.to_tokens(clean)[0]), len(m.to_tokens(corrupt)[0])
    assert Tx == Tc + 1
    # positions after "the" shift by one in the corrupted prompt
    align = {i: (i if i < 8 else i + 1) for i in range(Tc)}
    res = activation_patching(m, clean, corrupt, " Mary", " John", align=align, skip_identical=False)["resid_pre"]
    assert res.values.shape == (m.dims.n_layers, Tc)
    _, cache = m.run_with_cache(clean)
    ids = m.to_tokens(corrupt)
    a, f = m.to_single_token(" Mary"), m.to_single_token(" John")
    for layer in range(m.dims.n_layers):
        src = cache[f"blocks.{layer}.hook_resid_pre"]
        for c, x in [(3, 3), (9, 10), (Tc - 1, Tx - 1)]:
            def put(h, c=c, x=x):
                h = h.clone()
                h[:, x] = src[:, c]
                return h
            logits = reference_patch(m, ids, "block", layer, "input", put)
            assert abs(res.values[layer, list(align).index(c)] - (logits[0, -1, a] - logits[0, -1, f]).item()) < 1e-4


def test_cli_patch_writes_result_and_figures(tmp_path):
    args = ["patch", "--model", "tiny-llama", "--clean", IOI_CLEAN, "--corrupt", IOI_CORRUPT, "--answer", " Mary",
            "--foil", " John", "--sites", "resid_pre,attn_out,mlp_out", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert {"tokens", "layers", "clean_metric", "corrupted_metric", "values"} <= set(result)
    assert set(result["values"]) == {"resid_pre", "attn_out", "mlp_out"}
    assert len(result["values"]["resid_pre"]) == 2 and len(result["values"]["resid_pre"][0]) == len(result["tokens"])
    for site in result["values"]:
        assert (tmp_path / f"{site}.png").stat().st_size > 1000
    # the changed token's layer-0 cell restores the clean logit difference
    pos = 9
    assert abs(result["values"]["resid_pre"][0][pos] - result["clean_metric"]) < 1e-4
    assert main(args[:-2] + ["--method", "attribution", "--out", str(tmp_path / "atp")]) == 0
    assert (tmp_path / "atp" / "result.json").is_file()


def test_cli_patch_bad_input_is_a_clean_error(capsys, tmp_path):
    code = main(["patch", "--model", "tiny-llama", "--clean", IOI_CLEAN, "--corrupt", IOI_CORRUPT, "--answer",
                 " Mary Poppins", "--foil", " John", "--out", str(tmp_path)])
    assert code == 2 and "answer" in capsys.readouterr().err
