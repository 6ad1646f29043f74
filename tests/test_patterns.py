"""The attention-pattern site blocks.L.attn.hook_pattern [batch, head, query, key]: caching and patching."""
import pytest
import torch

import workbench as wb
from workbench.patching.engine import Patch, run_patches

from conftest import IOI_CLEAN, IOI_CORRUPT, assert_no_hooks

PAT = "blocks.1.attn.hook_pattern"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2", "mixtral"])
def test_cached_pattern_equals_hf_output_attentions(tiny, family):
    m = tiny(family)
    ids = m.to_tokens(IOI_CLEAN)
    with torch.no_grad():
        ref = m.hf(input_ids=ids, output_attentions=True)
    logits, cache = m.run_with_cache(ids, [f"blocks.{l}.attn.hook_pattern" for l in range(m.dims.n_layers)])
    assert torch.equal(logits, ref.logits)  # routing through the pattern kernel changes nothing
    for l in range(m.dims.n_layers):
        p = cache[f"blocks.{l}.attn.hook_pattern"]
        assert p.shape == (1, m.dims.n_heads, ids.shape[1], ids.shape[1])
        assert torch.equal(p, ref.attentions[l])
        assert (p.sum(-1) - 1).abs().max() < 1e-5
        assert p.triu(1).abs().max() == 0  # causal: no query attends to a later key
    assert m.hf.config._attn_implementation == "eager"
    assert_no_hooks(m)


def test_sdpa_model_switches_to_eager_for_the_run(tiny):
    m = tiny("llama")
    ids = m.to_tokens(IOI_CLEAN)
    with torch.no_grad():
        ref = m.hf(input_ids=ids, output_attentions=True).attentions[1]
    m.hf.set_attn_implementation("sdpa")
    try:
        logits, cache = m.run_with_cache(ids, [PAT])
        assert torch.equal(cache[PAT], ref)
        assert m.hf.config._attn_implementation == "sdpa"  # restored after the run
        with torch.no_grad():
            assert (logits - m.hf(input_ids=ids).logits).abs().max() < 1e-5
    finally:
        m.hf.set_attn_implementation("eager")


def _values(m, ids, layer):
    """Plain reference: the value vectors of every head, [batch, n_heads, pos, d_head], from attn_in by hand."""
    _, cache = m.run_with_cache(ids, [f"blocks.{layer}.attn.hook_in"])
    x = cache[f"blocks.{layer}.attn.hook_in"]
    d = m.dims
    attn = m.module("attn", layer)
    if m.arch.family == "gpt2":
        v = attn.c_attn(x)[..., 2 * d.d_model:]
    else:
        v = attn.v_proj(x)
    v = v.unflatten(-1, (d.n_kv_heads, d.d_head)).transpose(1, 2)
    return v.repeat_interleave(d.n_heads // d.n_kv_heads, dim=1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_patching_a_heads_pattern_equals_plain_reference(tiny, family):
    """Pattern of head h at layer 1 taken from the corrupted run: equal to patching that head's z with P'_h V_h
    computed by hand from the clean run's values (the same forward, written out)."""
    m = tiny(family)
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    _, cache = m.run_with_cache(corrupt, [PAT])
    head = 2
    src = cache[PAT][:, [head]]  # [1, 1, q, k]
    ours = m.run_with_interventions(clean, [wb.Replace(PAT, heads=[head], value=src)])
    z_ref = (src[:, 0] @ _values(m, clean, 1)[:, head])  # [1, q, d_head]
    ref = m.run_with_interventions(clean, [wb.Replace("blocks.1.attn.hook_z", heads=[head], value=z_ref[:, :, None])])
    with torch.no_grad():
        plain = m.hf(input_ids=clean).logits
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the patch did something
    # only some query rows: positions select queries
    q = [9, 13]
    ours_q = m.run_with_interventions(clean, [wb.Replace(PAT, heads=[head], positions=q, value=src[:, :, q])])
    _, cc = m.run_with_cache(clean, [PAT, "blocks.1.attn.hook_z"])
    z_q = cc["blocks.1.attn.hook_z"][:, :, head].clone()
    z_q[:, q] = z_ref[:, q]
    ref_q = m.run_with_interventions(clean, [wb.Replace("blocks.1.attn.hook_z", heads=[head], value=z_q[:, :, None])])
    assert (ours_q - ref_q).abs().max() < 1e-5
    assert_no_hooks(m)


def test_engine_routes_pattern_patches_to_full_forwards(tiny):
    m = tiny("llama")
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    _, cache = m.run_with_cache(corrupt, [PAT])
    site = wb.Site(1, "pattern")
    T = clean.shape[1]
    # Overwrite values are [n_positions (queries), n_heads selected, key]
    patches = [Patch.at(0, site, [T - 1], [h], cache[PAT][0, [h], T - 1][None]) for h in range(m.dims.n_heads)]
    ans = m.to_single_token(" Mary")
    vals, stats = run_patches(m, clean, patches, lambda lg, pair: lg[:, ans])
    assert stats.path == "full" and "attn.hook_pattern" in stats.notes[0]
    for h in range(m.dims.n_heads):
        ref = m.run_with_interventions(clean, [wb.Replace(PAT, heads=[h], positions=[T - 1],
                                                          value=cache[PAT][:, [h], [T - 1]][:, :, None])])
        assert abs(vals[h].item() - ref[0, -1, ans].item()) < 1e-5
    with pytest.raises(ValueError, match="attn.hook_pattern"):
        run_patches(m, clean, patches, lambda lg, pair: lg[:, ans], path="suffix")


def test_pattern_bad_input(tiny):
    m = tiny("llama")
    ids = m.to_tokens(IOI_CLEAN)
    with pytest.raises(ValueError, match="heads: index 7 out of range"):
        m.run_with_interventions(ids, [wb.Replace(PAT, heads=[7], value=torch.zeros(1))])
    with pytest.raises(ValueError, match="PositionSelector cannot select the queries"):
        m.run_with_interventions(ids, [wb.Replace(PAT, positions=wb.FromPosition(2), value=torch.zeros(1))])
    with pytest.raises(ValueError, match="does not broadcast"):
        m.run_with_interventions(ids, [wb.Replace(PAT, heads=[0], value=torch.zeros(5, 5))])
    g = wb.tiny_model("gpt2")
    g.hf.config.reorder_and_upcast_attn = True
    with pytest.raises(ValueError, match="reorder_and_upcast_attn"):
        g.run_with_cache(ids, [PAT])
    assert_no_hooks(m)
    assert m.hf.config._attn_implementation == "eager"


def test_grid_refuses_pattern_component(tiny):
    m = tiny("llama")
    with pytest.raises(ValueError, match="'pattern' is not a grid component"):
        wb.patching.activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components="pattern")


def test_attention_view_of_a_patched_pattern_is_self_contained(tiny, tmp_path):
    """The view reads the site (here in a run whose head 0 pattern is patched to uniform) and saves as one
    offline HTML file: circuitsvis' bundle inlined (.local_src), nothing fetched."""
    import re

    m = tiny("llama")
    toks, plain = wb.views.attention_pattern(m, IOI_CLEAN, 1)
    with torch.no_grad():
        assert torch.equal(plain, m.hf(input_ids=m.to_tokens(IOI_CLEAN), output_attentions=True).attentions[1][0])
    T = len(toks)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    toks, patched = wb.views.attention_pattern(m, IOI_CLEAN, 1, [wb.Replace(PAT, heads=[0], value=uniform)])
    assert torch.allclose(patched[0], uniform) and torch.equal(patched[1:], plain[1:])
    path = wb.views.save_html(wb.views.attention_view(toks, patched, title="layer 1, head 0 uniform"), tmp_path / "a.html")
    text = open(path).read()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)  # no file loaded from anywhere
    assert "unpkg.com" not in text and "CircuitsVis.render(" in text
    assert "layer 1, head 0 uniform" in text


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_kernel_inputs_reproduce_pattern_and_z(tiny, family):
    """The q, k, v sites are what the kernel multiplies: P = softmax(q k^T / sqrt(d_head) + causal mask) and
    z = P V, per head (a GQA key/value head serving its group of query heads)."""
    m = tiny(family)
    ids = m.to_tokens(IOI_CLEAN)
    names = [f"blocks.1.attn.{h}" for h in ("hook_rot_q", "hook_rot_k", "hook_v", "hook_pattern", "hook_z")]
    logits, c = m.run_with_cache(ids, names)
    q, k, v, p, z = (c[n] for n in names)
    d = m.dims
    assert q.shape == (1, ids.shape[1], d.n_heads, d.d_head) and k.shape == v.shape == (1, ids.shape[1], d.n_kv_heads, d.d_head)
    k, v = (x.repeat_interleave(d.n_heads // d.n_kv_heads, dim=2) for x in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d.d_head ** 0.5
    T = ids.shape[1]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    assert (scores.softmax(-1) - p).abs().max() < 1e-5
    assert (torch.einsum("bhqk,bkhd->bqhd", p, v) - z).abs().max() < 1e-5
    with torch.no_grad():
        assert torch.equal(logits, m.hf(input_ids=ids).logits)
    assert_no_hooks(m)
