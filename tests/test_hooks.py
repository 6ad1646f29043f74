import copy

import pytest
import torch

import workbench as wb
from workbench.core.sites import COMPONENTS

from conftest import IOI_CLEAN, IOI_CORRUPT, assert_no_hooks, get_model, tl_bridge

# the attention kernel's inputs (post-rotary q, k and v) are checked against the pattern in tests/test_patterns.py:
# the bridge names post-rotary queries only for rotary families
HOOKS = [v[0] for c, v in COMPONENTS.items() if c not in ("rot_q", "rot_k", "v")]


@pytest.mark.parametrize("name", ["gpt2", "llama", pytest.param("default", marks=pytest.mark.slow)])
def test_cache_matches_transformer_lens_bridge(request, name):
    m = get_model(request, name)
    bridge = tl_bridge(m)
    tokens = m.to_tokens(IOI_CLEAN)
    logits, cache = m.run_with_cache(tokens)
    tl_logits, tl_cache = bridge.run_with_cache(tokens)
    assert (logits - tl_logits).abs().max() < 1e-4
    for layer in range(m.dims.n_layers):
        for hook in HOOKS:
            key = f"blocks.{layer}.{hook}"
            assert cache[key].shape == tl_cache[key].shape, key
            assert (cache[key] - tl_cache[key]).abs().max() < 1e-4, key
    assert_no_hooks(m)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_residual_stream_adds_up_and_logits_match_plain_forward(tiny, family):
    m = tiny(family)
    tokens = m.to_tokens(IOI_CLEAN)
    logits, cache = m.run_with_cache(tokens)
    with torch.no_grad():
        assert torch.equal(logits, m.hf(input_ids=tokens).logits)
    for l in range(m.dims.n_layers):
        total = cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"] + cache[f"blocks.{l}.hook_mlp_out"]
        assert (total - cache[f"blocks.{l}.hook_resid_post"]).abs().max() < 1e-5
        down = m.module("mlp_down", l)
        assert (down(cache[f"blocks.{l}.mlp.hook_post"]) - cache[f"blocks.{l}.hook_mlp_out"]).abs().max() < 1e-5
        out_proj = m.module("attn_out_proj", l)
        assert (out_proj(cache[f"blocks.{l}.attn.hook_z"].flatten(-2)) - cache[f"blocks.{l}.hook_attn_out"]).abs().max() < 1e-5


def _nnsight(m):
    from nnsight import TransformersModel

    return TransformersModel(copy.deepcopy(m.hf), tokenizer=copy.deepcopy(m.tokenizer))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_replace_patch_matches_nnsight(tiny, family):
    m = tiny(family)
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    _, cache = m.run_with_cache(clean)
    layer, pos, head = 1, 9, 2
    resid = cache[f"blocks.{layer}.hook_resid_pre"][:, pos]
    z = cache[f"blocks.{layer}.attn.hook_z"][:, pos, head]
    post = cache[f"blocks.{layer}.mlp.hook_post"][:, pos]
    ours = {
        "resid_pre": m.run_with_interventions(corrupt, [wb.Replace(f"blocks.{layer}.hook_resid_pre", positions=pos, value=resid)]),
        "z": m.run_with_interventions(corrupt, [wb.Replace(f"blocks.{layer}.attn.hook_z", positions=pos, heads=head, value=z)]),
        "mlp_post": m.run_with_interventions(corrupt, [wb.Replace(f"blocks.{layer}.mlp.hook_post", positions=pos, value=post)]),
    }
    nn = _nnsight(m)
    blocks = nn.get(m.arch.blocks) if hasattr(nn, "get") else None
    blocks = blocks or eval("nn." + m.arch.blocks)
    d_head = m.dims.d_head
    out = {}
    with torch.no_grad():
        with nn.trace(corrupt):
            blocks[layer].input[:, pos] = resid
            out["resid_pre"] = nn.output.logits.save()
        with nn.trace(corrupt):
            o_proj = eval("blocks[layer]." + m.arch.attn_out_proj)
            o_proj.input[:, pos, head * d_head:(head + 1) * d_head] = z
            out["z"] = nn.output.logits.save()
        with nn.trace(corrupt):
            down = eval("blocks[layer]." + m.arch.mlp_down)
            down.input[:, pos] = post
            out["mlp_post"] = nn.output.logits.save()
    base = m(corrupt)
    for k in ours:
        assert (ours[k] - out[k]).abs().max() < 1e-5, k
        assert (ours[k] - base).abs().max() > 1e-4, f"{k} patch had no effect"


@pytest.mark.parametrize("name", ["llama", "gpt2", pytest.param("default", marks=pytest.mark.slow)])
def test_padded_batch_equals_each_prompt_alone(request, name):
    m = get_model(request, name)
    prompts = [IOI_CLEAN, "The Eiffel Tower is in", "Hi"]
    ids, mask = m.encode(prompts)
    assert mask is not None and (mask.sum(1) < ids.shape[1]).any()
    with torch.no_grad():
        batch = m(prompts)
        for i, p in enumerate(prompts):
            alone = m(p)[0]
            n = alone.shape[0]
            assert (batch[i, :n] - alone).abs().max() < 1e-4
    assert torch.equal(m.last_positions(ids, mask).cpu(), torch.tensor([len(m.to_tokens(p)[0]) - 1 for p in prompts]))


def test_per_row_interventions_equal_separate_runs(tiny):
    m = tiny("llama")
    tokens = m.to_tokens(IOI_CLEAN).repeat(3, 1)
    v = torch.randn(m.dims.d_model)
    site = "blocks.1.hook_resid_pre"
    batch = m.run_with_interventions(tokens, [
        wb.Add(site, rows=0, positions=4, vector=v, multiplier=2.0),
        wb.Scale("blocks.0.hook_mlp_out", rows=1, factor=0.0),
    ])
    alone0 = m.run_with_interventions(tokens[:1], [wb.Add(site, positions=4, vector=v, multiplier=2.0)])
    alone1 = m.run_with_interventions(tokens[:1], [wb.Scale("blocks.0.hook_mlp_out", factor=0.0)])
    plain = m(tokens[:1])
    assert (batch[0] - alone0[0]).abs().max() < 1e-5
    assert (batch[1] - alone1[0]).abs().max() < 1e-5
    assert (batch[2] - plain[0]).abs().max() < 1e-5
    assert (alone0 - plain).abs().max() > 1e-3 and (alone1 - plain).abs().max() > 1e-3


def test_intervention_math(tiny):
    m = tiny("gpt2")
    tokens = m.to_tokens(IOI_CLEAN)
    site, down = "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"
    _, base = m.run_with_cache(tokens, [site])
    x = base[site]
    # add with multiplier 0 changes nothing, bit for bit
    _, c = m.run_with_cache(tokens, [down], interventions=[wb.Add(site, vector=torch.randn(64), multiplier=0.0)])
    assert torch.equal(c[down], x)
    # project out, zero fill: no component left along the basis
    basis = wb.orthonormalize(torch.randn(3, 64))
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    _, c = m.run_with_cache(tokens, [down], interventions=[wb.ProjectOut(site, basis=basis)])
    assert (c[down] @ basis.T).abs().max() < 1e-4
    assert torch.allclose(c[down] - x, -(x @ basis.T) @ basis, atol=1e-5)
    # mean fill: the component along the basis is the mean's
    mean = torch.randn(64)
    _, c = m.run_with_cache(tokens, [down], interventions=[wb.ProjectOut(site, basis=basis, fill="mean", mean=mean)])
    assert torch.allclose(c[down] @ basis.T, (mean @ basis.T).expand(x.shape[1], 3)[None], atol=1e-4)
    # noise is reproducible from its seed and has the asked scale
    _, a = m.run_with_cache(tokens, [down], interventions=[wb.Noise(site, std=3.0, seed=7, positions=[1, 2])])
    _, b = m.run_with_cache(tokens, [down], interventions=[wb.Noise(site, std=3.0, seed=7, positions=[1, 2])])
    assert torch.equal(a[down], b[down])
    diff = a[down] - x
    assert diff[:, [0, 3, 4]].abs().max() == 0
    assert 2.0 < diff[:, 1:3].std() < 4.0
    # scale
    _, c = m.run_with_cache(tokens, [down], interventions=[wb.Scale(site, factor=0.5, positions=-1)])
    assert torch.allclose(c[down][:, -1], 0.5 * x[:, -1]) and torch.equal(c[down][:, :-1], x[:, :-1])


def test_gradients_flow_through_project_out(tiny):
    m = tiny("llama")
    tokens = m.to_tokens(IOI_CLEAN)
    basis = wb.orthonormalize(torch.randn(2, 64))
    # block 0's output is cached before block 1's input hook projects the subspace out
    logits, cache = m.run_with_cache(tokens, ["blocks.0.hook_resid_post"],
                                     interventions=[wb.ProjectOut("blocks.1.hook_resid_pre", basis=basis)], grad=True)
    x = cache["blocks.0.hook_resid_post"]
    (grad,) = torch.autograd.grad(logits[0, -1].log_softmax(-1)[0], x)
    assert grad.abs().max() > 1e-4
    assert (grad @ basis.T).abs().max() < 1e-6 * grad.abs().max().item() + 1e-9
    assert_no_hooks(m)


def test_hooks_removed_on_exceptions(tiny):
    m = tiny("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks([wb.Scale("blocks.0.hook_mlp_out", factor=0.0)], ["blocks.1.hook_resid_pre"]):
            m("hello there")
            raise RuntimeError("boom")
    assert_no_hooks(m)


BAD = [
    (lambda m: [wb.Scale("blocks.0.hook_nothing", factor=1.0)], "site"),
    (lambda m: [wb.Scale("blocks.7.hook_mlp_out", factor=1.0)], "layer 7 out of range"),
    (lambda m: [wb.Scale("blocks.0.hook_mlp_out", positions=40, factor=1.0)], "positions"),
    (lambda m: [wb.Scale("blocks.0.hook_mlp_out", rows=3, factor=1.0)], "rows"),
    (lambda m: [wb.Scale("blocks.0.attn.hook_z", heads=4, factor=1.0)], "heads"),
    (lambda m: [wb.Scale("blocks.0.hook_mlp_out", heads=0, factor=1.0)], "heads"),
    (lambda m: [wb.Replace("blocks.0.hook_resid_pre", positions=1, value=torch.zeros(1, 1, 65))], "value"),
    (lambda m: [wb.Replace("blocks.0.hook_resid_pre", positions=1, value=torch.zeros(1, 1, 64, dtype=torch.long))], "value"),
    (lambda m: [wb.Add("blocks.0.hook_resid_pre", vector=torch.zeros(64), multiplier=float("nan"))], "multiplier"),
    (lambda m: [wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.ones(2, 64))], "basis"),
    (lambda m: [wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.eye(64)[:2], fill="mean")], "mean"),
    (lambda m: ["not an intervention"], "interventions"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_input_fails_early_and_leaves_no_hook(tiny, make, match):
    m = tiny("llama")
    tokens = m.to_tokens("a short prompt here")  # 4 tokens, batch 1
    with pytest.raises(ValueError, match=match):
        m.run_with_interventions(tokens, make(m))
    assert_no_hooks(m)


def test_bad_cache_site_and_empty_prompt(tiny):
    m = tiny("gpt2")
    with pytest.raises(ValueError, match="site"):
        m.run_with_cache("hello", ["blocks.0.hook_resid_middle"])
    with pytest.raises(ValueError, match="prompt"):
        m.run_with_cache("", ["blocks.0.hook_resid_pre"])
    assert_no_hooks(m)


def test_intervened_results_are_checked_once_after_the_forward(tiny):
    """The non-finite / overflow check of intervened activations runs after the forward (one host sync, not one per
    hook), names the first failing site in forward order, and also covers forwards run block by block."""
    m = tiny("llama")
    big = torch.full((m.dims.d_model,), 1e30)
    ivs = [wb.Add("blocks.1.hook_resid_pre", vector=big), wb.Add("blocks.0.hook_resid_post", vector=big),
           wb.Scale("blocks.0.hook_mlp_out", factor=2.0)]
    with pytest.raises(ValueError, match=r"^interventions: Add at blocks\.0\.hook_resid_post made the activation "
                                         r"(overflow|non-finite)"):
        m.run_with_interventions("Hello world", ivs)
    assert_no_hooks(m)
    # the check comes after the forward, not inside a hook: the forward went on to the last layer
    ids, _ = m.encode("Hello world")
    with pytest.raises(ValueError, match=r"^interventions: Add at blocks\.0\.hook_resid_post"):
        with m.hooks(ivs, ["blocks.1.hook_resid_post"]) as cache:
            m.hf(input_ids=ids)
    assert "blocks.1.hook_resid_post" in cache
    assert_no_hooks(m)
    # a block called by itself, not through the model's forward: checked when the hooks block ends
    x = torch.zeros(1, 3, m.dims.d_model)
    with pytest.raises(ValueError, match=r"^interventions: Add at blocks\.0\.hook_resid_pre made the activation"):
        with m.hooks([wb.Add("blocks.0.hook_resid_pre", vector=big)]):
            m.module("block", 0)(x, position_embeddings=m.hf.model.rotary_emb(x, torch.arange(3)[None]))
    assert_no_hooks(m)
    # a finite intervention passes both ways
    assert torch.isfinite(m.run_with_interventions("Hello world", [wb.Scale("blocks.0.hook_mlp_out", factor=2.0)])).all()


@pytest.mark.parametrize("family", ["llama", "gemma3", "olmo2", "gpt2"])
def test_cache_without_logits_equals_full_forward_and_stops_after_last_site(tiny, family):
    """logits=False (what key statistics, keys and activation reads use) caches the same tensors as the full
    forward, and no block after the last requested one runs (a counting hook on every block)."""
    m = tiny(family)
    tokens = m.to_tokens(IOI_CLEAN)
    sites = ["blocks.0.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_attn_out", "blocks.0.hook_resid_post"]
    _, full = m.run_with_cache(tokens, sites)
    ran = []
    handles = [m.module("block", l).register_forward_hook(lambda mod, a, o, l=l: ran.append(l))
               for l in range(m.dims.n_layers)]
    try:
        logits, part = m.run_with_cache(tokens, sites, logits=False)
    finally:
        for h in handles:
            h.remove()
    assert m.dims.n_layers > 1 and logits is None and ran == [0]
    assert sorted(part) == sorted(full)
    for k in full:
        assert torch.equal(part[k], full[k]), k
    assert_no_hooks(m)
