"""Parity of every supported family (tiny seeded random-init configs) with the Hugging Face model itself.

For each family: the cache equals HF's `output_hidden_states` and module outputs; what the block adds to
the residual stream is exactly attn_out + mlp_out; the patching grid of the batched suffix engine equals a
plain one-forward-per-patch loop; causal tracing equals the research loop. (Features per family: tests/test_family_features.py.)
"""
import copy

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.arch import attention_window
from workbench.core.tiny import TINY_FAMILIES
from workbench.patching import activation_patching
from workbench.patching.reference import research_trace_loop
from workbench.patching.tracing import KINDS, trace_fact

from conftest import IOI_CLEAN, IOI_CORRUPT, reference_patch

NEW = ("gemma", "gemma2", "gemma3", "phi3", "olmo2", "gptj", "mixtral")
# tests/test_patching.py checks the grids of gpt2, llama, qwen2 and gpt_neox; these are the rest
GRID_FAMILIES = ("mistral", "qwen3") + NEW
FAMILIES = TINY_FAMILIES  # the old four and the new seven
# component -> (module role, hook before/after it): raw torch hooks on the modules the Arch table names
WHERE = {"resid_pre": ("block", "input"), "attn_out": ("attn_out", "output"), "mlp_out": ("mlp_out", "output"),
         "z": ("attn_out_proj", "input"), "mlp_post": ("mlp_down", "input")}
HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
        "z": "attn.hook_z", "mlp_post": "mlp.hook_post"}


def _raw_outputs(m, ids, role):
    """Each layer's output of the module in `role`, read with plain torch hooks during one HF forward."""
    seen = {}
    handles = [m.module(role, l).register_forward_hook(
        lambda mod, a, o, l=l: seen.__setitem__(l, (o[0] if isinstance(o, tuple) else o).detach()))
        for l in range(m.dims.n_layers)]
    try:
        with torch.no_grad():
            m.hf(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_equals_hf_hidden_states_and_modules(tiny, family):
    m = tiny(family)
    ids = m.to_tokens([IOI_CLEAN, IOI_CORRUPT])
    B, T = ids.shape
    L, d = m.dims.n_layers, m.dims
    logits, cache = m.run_with_cache(ids)
    with torch.no_grad():
        out = m.hf(input_ids=ids, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == L + 1
    assert torch.equal(logits, out.logits)
    for l in range(L):
        # load-time shape check, as nnterp does: every layer's output is (batch, seq, d_model)
        assert cache[f"blocks.{l}.hook_resid_post"].shape == (B, T, d.d_model)
        assert cache[f"blocks.{l}.attn.hook_z"].shape == (B, T, d.n_heads, d.d_head)
        assert torch.equal(cache[f"blocks.{l}.hook_resid_pre"], hs[l])
        if l < L - 1:
            assert torch.equal(cache[f"blocks.{l}.hook_resid_post"], hs[l + 1])
    # HF's last hidden state is after the final norm
    with torch.no_grad():
        assert torch.equal(m.module("final_norm")(cache[f"blocks.{L - 1}.hook_resid_post"]), hs[L])
    for comp in ("attn_out", "mlp_out"):
        raw = _raw_outputs(m, ids, WHERE[comp][0])
        for l in range(L):
            assert torch.equal(cache[f"blocks.{l}.{HOOK[comp]}"], raw[l]), (comp, l)
    # attn_out and mlp_out are exactly what the block adds to the residual stream (post-norms included)
    for l in range(L):
        added = cache[f"blocks.{l}.hook_resid_post"] - cache[f"blocks.{l}.hook_resid_pre"]
        assert torch.allclose(added, cache[f"blocks.{l}.hook_attn_out"] + cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5)
    if m.arch.moe:
        assert "blocks.0.mlp.hook_post" not in cache  # no single down projection: not a default site
    else:
        assert cache["blocks.0.mlp.hook_post"].shape == (B, T, d.d_mlp)


def test_dims_follow_the_config(tiny):
    g = tiny("gemma")
    assert g.dims.d_head == 2 * g.dims.d_model // g.dims.n_heads  # head_dim unlike d_model / n_heads
    assert tiny("gptj").dims.d_mlp == 128 and tiny("mixtral").dims.d_mlp == 128


def _components(m):
    comps = ["resid_pre", "attn_out", "mlp_out", "z"]
    return comps if m.arch.moe else comps + ["mlp_post"]


@pytest.mark.parametrize("family", GRID_FAMILIES)
def test_patching_grid_equals_one_forward_per_patch(tiny, family):
    """Every grid runs on the packed suffix path (sliding windows and soft-capping included) and equals
    the plain loop within 1e-4."""
    m = tiny(family)
    comps = _components(m)
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=comps, path="suffix",
                              skip_identical=False, max_batch_tokens=40)
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    _, cache = m.run_with_cache(clean, [f"blocks.{l}.{HOOK[c]}" for l in range(m.dims.n_layers) for c in comps])
    mary, john = m.to_single_token(" Mary"), m.to_single_token(" John")
    with torch.no_grad():
        corrupt_logits = m.hf(input_ids=corrupt).logits
    corrupt_metric = (corrupt_logits[0, -1, mary] - corrupt_logits[0, -1, john]).item()
    # before the first differing token clean and corrupted runs are the same, so a patch there changes nothing
    first = int((clean != corrupt)[0].nonzero()[0])
    for comp in comps:
        assert res[comp].meta["engine"]["path"] == "suffix"
        assert np.abs(res[comp].values[:, :first] - corrupt_metric).max() < 1e-4
        role, kind = WHERE[comp]
        for layer in range(m.dims.n_layers):
            src = cache[f"blocks.{layer}.{HOOK[comp]}"].flatten(2)
            for pos in range(first, clean.shape[1]):
                def put(x, pos=pos):
                    x = x.clone()
                    x[:, pos] = src[:, pos]
                    return x
                logits = reference_patch(m, corrupt, role, layer, kind, put)
                ref = (logits[0, -1, mary] - logits[0, -1, john]).item()
                assert abs(res[comp].values[layer, pos] - ref) < 1e-4, (comp, layer, pos)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_matters_in_the_tiny_configs(tiny, family):
    """The parity above tests the windowed mask only if the window changes the outputs: it does."""
    m = tiny(family)
    assert [attention_window(m.hf, l) for l in range(m.dims.n_layers)] == [4, None]
    ids = m.to_tokens(IOI_CLEAN)
    assert ids.shape[1] > 4
    wide = copy.deepcopy(m.hf)
    wide.config.sliding_window = 512
    for layer in wide.model.layers:
        layer.self_attn.sliding_window = 512
    with torch.no_grad():
        assert not torch.allclose(m.hf(input_ids=ids).logits, wide(input_ids=ids).logits, atol=1e-3)


@pytest.mark.parametrize("family", GRID_FAMILIES)
def test_trace_equals_the_research_loop(tiny, family):
    m = tiny(family)
    prompt, subject, answer = "The Eiffel Tower is in the city of", "Eiffel Tower", " Paris"
    samples, window, nu, seed = 2, 2, 0.5, 3
    tr = trace_fact(m, prompt, subject, answer, noise_std=nu, samples=samples, window=window, seed=seed)
    eps = nu * torch.randn(samples, len(range(*tr.subject_span)), m.dims.d_model,
                           generator=torch.Generator().manual_seed(seed))
    for kind in KINDS:
        ref = research_trace_loop(m, prompt, subject, answer, eps, window, kind)
        assert np.abs(tr.scores[kind] - ref).max() < 1e-5, kind


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged (patching grids have many exactly tied cells: the unchanged prefix)."""
    x = x.flatten().double()
    less = (x[None, :] < x[:, None]).sum(1).double()
    equal = (x[None, :] == x[:, None]).sum(1).double()
    return less + (equal + 1) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


@pytest.mark.parametrize("family,dtype", [("llama", torch.bfloat16), ("llama", torch.float16), ("gemma2", torch.float16)])
def test_half_precision_grid_ranks_like_float32(tokenizer, family, dtype):
    """A bf16 / fp16 resid_pre grid against the float32 grid of the same weights: Spearman >= 0.99, same argmax.

    (Tiny Gemma 2 in bf16 is not in the list: its random grid cells lie within bf16's rounding of each
    other (Spearman 0.66), see the README's dtype table.)"""
    m32 = wb.tiny_model(family, tokenizer=copy.deepcopy(tokenizer))
    args = (IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    g32 = torch.as_tensor(activation_patching(m32, *args)["resid_pre"].values)
    m16 = wb.tiny_model(family, tokenizer=copy.deepcopy(tokenizer))
    m16.hf.to(dtype)
    res = activation_patching(m16, *args)["resid_pre"]
    assert res.meta["engine"]["path"] == "suffix"
    g16 = torch.as_tensor(res.values).float()
    assert spearman(g16, g32) >= 0.99
    assert g16.argmax() == g32.argmax()
    assert (g16 - g32).abs().max() < 0.05 * g32.abs().max()  # the README's stated tolerance


def test_qwen2_sliding_window_layers_run_on_the_suffix_path(tokenizer):
    """Qwen2 with use_sliding_window (windowed layers from max_window_layers on) used to fall back to full
    forwards; its suffix grid now equals the batched-full-forward grid (the HF model's own masks)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = copy.deepcopy(tokenizer)
    cfg = Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=len(tok), use_sliding_window=True, sliding_window=4,
                      max_window_layers=1, initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = wb.Model(AutoModelForCausalLM.from_config(cfg, attn_implementation="eager"), tok)
    assert [attention_window(m.hf, l) for l in range(2)] == [None, 4]
    args = (IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    fast = activation_patching(m, *args, components=["resid_pre", "attn_out"], path="auto", skip_identical=False)
    full = activation_patching(m, *args, components=["resid_pre", "attn_out"], path="full", skip_identical=False)
    for comp in ("resid_pre", "attn_out"):
        assert fast[comp].meta["engine"]["path"] == "suffix"
        assert np.abs(fast[comp].values - full[comp].values).max() < 1e-4, comp


# per dtype: (Spearman over all cells, Spearman over the cells whose float32 effect exceeds 1% of the largest,
# max abs difference as a fraction of the largest cell); measured: bf16 0.66 / 0.991 / 0.050, fp16 0.953 / 0.9995 / 0.0055
# bf16 matmuls are computed by the CPU's own kernels, so the bf16 numbers depend on the CPU: on an AMD EPYC with
# avx512_bf16 the effect cells rank with Spearman 0.984 against float32, with the 0.2 code as with this one (the
# 0.99 of earlier runs was measured on another CPU). The bound is set from the lower of the two machines.
DEFAULT_MODEL_TOLERANCE = {torch.bfloat16: (0.6, 0.98, 0.075), torch.float16: (0.94, 0.999, 0.01)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_grid_on_the_default_model(default_model, dtype):
    """Real weights (SmolLM2-135M), IOI pair: the half-precision resid_pre grid against the float32 one has the
    same argmax cell and ranks the cells that carry the effect (|effect| > 1% of the largest) with Spearman
    >= 0.98 (bf16; CPU-dependent, see the table) / 0.999 (fp16). Over all 420 cells bf16 reaches only 0.66: most cells sit within bf16's
    rounding of the corrupted baseline, so their ranks are noise (the loop of plain bf16 forwards gives the
    same numbers: the error is the model's bf16 forward, not the engine's; the README's dtype table)."""
    args = (IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    r32 = activation_patching(default_model, *args)["resid_pre"]
    g32 = torch.as_tensor(r32.values)
    half = wb.Model(copy.deepcopy(default_model.hf).to(dtype), default_model.tokenizer, name="half")
    g = torch.as_tensor(activation_patching(half, *args)["resid_pre"].values).float()
    effect = (g32 - float(r32.meta["corrupted_metric"])).abs()
    carries = effect > 0.01 * effect.max()
    all_cells, effect_cells, max_err = DEFAULT_MODEL_TOLERANCE[dtype]
    assert g.argmax() == g32.argmax()
    assert spearman(g, g32) >= all_cells
    assert spearman(g[carries], g32[carries]) >= effect_cells
    assert (g - g32).abs().max() < max_err * g32.abs().max()
