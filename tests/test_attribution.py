import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from workbench.patching.attribution import attribute_then_verify, attribution_patching
from workbench.patching import activation_patching

from conftest import IOI_CLEAN, IOI_CORRUPT

HOOKED = {"resid_pre": ("block", "input"), "attn_out": ("attn", "output"), "mlp_out": ("mlp", "output")}


def _manual_atp(m, component, layer):
    """AtP by hand with raw torch hooks: (clean - corrupted) . grad of the corrupted logit diff, per position."""
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    a, f = m.to_single_token(" Mary"), m.to_single_token(" John")
    role, kind = HOOKED[component]
    mod = m.module(role, layer)
    seen = {}

    def grab_in(mod_, args, kwargs):
        seen["x"] = args[0]

    def grab_out(mod_, args, out):
        seen["x"] = out[0] if isinstance(out, tuple) else out

    h = mod.register_forward_pre_hook(grab_in, with_kwargs=True) if kind == "input" else mod.register_forward_hook(grab_out)
    try:
        with torch.no_grad():
            m.hf(input_ids=clean)
        x_clean = seen["x"].clone()
        logits = m.hf(input_ids=corrupt).logits
        (g,) = torch.autograd.grad(logits[0, -1, a] - logits[0, -1, f], seen["x"])
        base = (logits[0, -1, a] - logits[0, -1, f]).item()
    finally:
        h.remove()
    return base + ((x_clean - seen["x"].detach()) * g).sum(-1)[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out"])
def test_attribution_matches_a_hand_written_gradient(tiny, family, component):
    m = tiny(family)
    atp = attribution_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=component)[component]
    for layer in range(m.dims.n_layers):
        ref = _manual_atp(m, component, layer)
        assert np.abs(atp.values[layer] - ref.detach().numpy()).max() < 1e-4


def test_attribution_heads_sum_to_positions(tiny):
    m = tiny("llama")
    by_pos_head = attribution_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components="z", by="position_head")["z"]
    by_head = attribution_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components="z", by="head")["z"]
    base = by_head.meta["corrupted_metric"]
    assert np.allclose((by_pos_head.values - base).sum(1), by_head.values - base, atol=1e-4)


def test_attribute_then_verify_runs_the_top_cells_exactly(tiny):
    m = tiny("gpt2")
    out = attribute_then_verify(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=["attn_out", "mlp_out"], top_k=5)
    exact = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=["attn_out", "mlp_out"])
    assert len(out["top"]) == 5
    base = exact["attn_out"].meta["corrupted_metric"]
    scores = sorted((abs(v - base) for c in out["attribution"] for v in out["attribution"][c].values.ravel()), reverse=True)
    assert abs(scores[4] - abs(out["top"][-1]["attribution"] - base)) < 1e-6  # the five largest estimates
    n_checked = 0
    for comp in ("attn_out", "mlp_out"):
        checked = ~np.isnan(out["exact"][comp].values)
        n_checked += checked.sum()
        assert np.abs(out["exact"][comp].values[checked] - exact[comp].values[checked]).max() < 1e-4
    assert n_checked == 5


@pytest.mark.slow
def test_attribution_ranks_ioi_sites_like_exact_patching(default_model):
    m = default_model
    comps = ["resid_pre", "attn_out", "mlp_out"]
    exact = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=comps)
    atp = attribution_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=comps)
    for comp in comps:
        # only cells where patching can change anything (positions from the swapped name on)
        e, a = exact[comp].values[:, 9:].ravel(), atp[comp].values[:, 9:].ravel()
        assert spearmanr(e, a).statistic > 0.6, comp


def test_attribution_on_a_frozen_model_equals_the_unfrozen_one(tiny):
    """Researchers freeze models (requires_grad False); the gradients w.r.t. activations must not change."""
    import copy

    m = tiny("llama")
    frozen = copy.deepcopy(m)
    frozen.hf.requires_grad_(False)
    for component in ("resid_pre", "attn_out", "mlp_out"):
        want = attribution_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=component)[component]
        got = attribution_patching(frozen, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=component)[component]
        assert np.abs(got.values - want.values).max() < 1e-5
        assert np.abs(want.values).max() > 1e-3
