import pytest
import torch

import workbench as wb
from workbench.patching import activation_patching

from conftest import IOI_CLEAN, IOI_CORRUPT, get_model, reference_patch, tl_bridge

# component -> (module role, hook before/after it)
WHERE = {"resid_pre": ("block", "input"), "attn_out": ("attn", "output"), "mlp_out": ("mlp", "output"),
         "resid_post": ("block", "output"), "z": ("attn_out_proj", "input"), "mlp_post": ("mlp_down", "input")}
HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
        "resid_post": "hook_resid_post", "z": "attn.hook_z", "mlp_post": "mlp.hook_post"}


def _logit_diff(m, logits):
    return logits[:, -1, m.to_single_token(" Mary")] - logits[:, -1, m.to_single_token(" John")]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "resid_post", "z", "mlp_post"])
@pytest.mark.parametrize("engine,skip,direction", [("suffix", False, "denoise"), ("full", False, "denoise"),
                                                   ("suffix", True, "denoise"), ("suffix", False, "noise")])
def test_sweep_equals_one_forward_per_patch(tiny, family, component, engine, skip, direction):
    m = tiny(family)
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components=component, path=engine,
                              skip_identical=skip, max_batch_tokens=40, direction=direction)[component]
    assert res.meta["engine"]["path"] == engine
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    if direction == "noise":
        clean, corrupt = corrupt, clean
    _, cache = m.run_with_cache(clean)
    role, kind = WHERE[component]
    for layer in range(m.dims.n_layers):
        src = cache[f"blocks.{layer}.{HOOK[component]}"].flatten(2)
        for pos in range(clean.shape[1]):
            def put(x, pos=pos):
                x = x.clone()
                x[:, pos] = src[:, pos]
                return x
            ref = _logit_diff(m, reference_patch(m, corrupt, role, layer, kind, put))[0]
            assert abs(res.values[layer, pos] - ref.item()) < 1e-4, (layer, pos)


@pytest.mark.parametrize("engine,skip", [("suffix", True), ("full", False)])
def test_top_predictions_equal_one_forward_per_patch(tiny, engine, skip):
    """`top_k` keeps each patched run's top next tokens (what a click on a cell shows): they equal the top-k of
    the same patch run as one plain forward, and the grid's values are unchanged by asking for them."""
    m = tiny("llama")
    kw = dict(components="resid_pre", path=engine, skip_identical=skip, max_batch_tokens=40)
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", top_k=3, **kw)["resid_pre"]
    plain = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", **kw)["resid_pre"]
    assert torch.equal(torch.as_tensor(res.values), torch.as_tensor(plain.values))
    top = res.meta["top_predictions"]
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    _, cache = m.run_with_cache(clean)
    P = clean.shape[1]
    for layer in range(m.dims.n_layers):
        src = cache[f"blocks.{layer}.hook_resid_pre"]
        for pos in range(P):
            def put(x, pos=pos):
                x = x.clone()
                x[:, pos] = src[:, pos]
                return x
            ref = reference_patch(m, corrupt, "block", layer, "input", put)[0, -1].float().softmax(-1).topk(3)
            cell = layer * P + pos
            assert top["tokens"][cell] == [m.tokenizer.decode([i]) for i in ref.indices.tolist()], (layer, pos)
            assert top["probs"][cell] == pytest.approx(ref.values.tolist(), abs=1e-5)


SHORT = ("The capital of France is", "The capital of Italy is", " Paris", " Rome")


@pytest.mark.parametrize("name", ["gpt2", "llama", pytest.param("default", marks=pytest.mark.slow)])
def test_sweep_matches_transformer_lens_patching(request, name):
    """All four TransformerLens patching functions, on a TransformerBridge of the same weights.

    The default model uses a 5-token pair: TransformerLens runs one forward per patch (1350 for the head grid).
    """
    from transformer_lens import patching

    m = get_model(request, name)
    clean_text, corrupt_text, answer, foil = SHORT if name == "default" else (IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    bridge = tl_bridge(m)
    clean, corrupt = m.to_tokens(clean_text), m.to_tokens(corrupt_text)
    _, clean_cache = bridge.run_with_cache(clean)
    a, f = m.to_single_token(answer), m.to_single_token(foil)
    metric = lambda logits: (logits[:, -1, a] - logits[:, -1, f]).mean()  # noqa: E731
    ours = activation_patching(m, clean_text, corrupt_text, answer, foil, components=["resid_pre", "attn_out", "mlp_out"])
    heads = activation_patching(m, clean_text, corrupt_text, answer, foil, components="z", by="position_head")["z"]
    for comp, fn in [("resid_pre", patching.get_act_patch_resid_pre), ("attn_out", patching.get_act_patch_attn_out),
                     ("mlp_out", patching.get_act_patch_mlp_out)]:
        tl = fn(bridge, corrupt, clean_cache, metric)
        assert (torch.as_tensor(ours[comp].values) - tl).abs().max() < 1e-4, comp
    tl = patching.get_act_patch_attn_head_out_by_pos(bridge, corrupt, clean_cache, metric)
    assert (torch.as_tensor(heads.values) - tl).abs().max() < 1e-4


def test_metrics_and_directions(tiny):
    m = tiny("llama")
    args = (m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John")
    ld = activation_patching(*args)["resid_pre"]
    norm = activation_patching(*args, metric="normalized")["resid_pre"]
    c, x = ld.meta["clean_metric"], ld.meta["corrupted_metric"]
    assert abs(norm.values - (ld.values - x) / (c - x)).max() < 1e-4
    # patching every position at layer 0 of resid_pre restores the clean run: the changed token's cell is 1
    pos = [i for i, (a, b) in enumerate(zip(m.to_tokens(IOI_CLEAN)[0], m.to_tokens(IOI_CORRUPT)[0])) if a != b][0]
    assert abs(norm.values[0, pos] - 1) < 1e-4
    noise = activation_patching(*args, direction="noise")["resid_pre"]
    assert abs(noise.values[0, pos] - x) < 1e-4
    kl = activation_patching(*args, metric="kl")["resid_pre"]
    assert abs(kl.values[0, pos]) < 1e-5 and kl.values.max() > 0
    custom = activation_patching(*args, metric=lambda logits, idx: logits[:, 0])["resid_pre"]
    assert custom.values.shape == ld.values.shape
    with pytest.raises(ValueError, match="metric"):
        activation_patching(*args, metric=lambda logits, idx: logits)


def test_batch_of_pairs_is_the_mean_of_single_pairs(tiny):
    m = tiny("gpt2")
    clean = [IOI_CLEAN, "When Anna and Tom went to the park, Tom gave a ball to"]
    corrupt = [IOI_CORRUPT, "When Anna and Tom went to the park, Anna gave a ball to"]
    if len(m.to_tokens(clean[1])[0]) != len(m.to_tokens(clean[0])[0]):
        pytest.skip("prompts differ in length under this tokenizer")
    both = activation_patching(m, clean, corrupt, [" Mary", " Anna"], [" John", " Tom"], per_pair=True)["resid_pre"]
    for i in range(2):
        one = activation_patching(m, clean[i], corrupt[i], [" Mary", " Anna"][i], [" John", " Tom"][i])["resid_pre"]
        assert abs(both.values[i] - one.values).max() < 1e-4


def test_result_saves_loads_and_plots(tiny, tmp_path):
    m = tiny("llama")
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John")["resid_pre"]
    res.save(tmp_path / "r.json")
    back = wb.toolkit.LabelledArray.load(tmp_path / "r.json")
    assert (back.values == res.values).all() and back.coords == res.coords
    df = res.to_dataframe()
    assert len(df) == res.values.size and set(df.columns) == {"layer", "position", "value"}
    res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_patching_bad_input(tiny):
    m = tiny("llama")
    with pytest.raises(ValueError, match="corrupted"):
        activation_patching(m, IOI_CLEAN, "When Mary went", " Mary", " John")
    with pytest.raises(ValueError, match="answer"):
        activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary Poppins", " John")
    with pytest.raises(ValueError, match="components"):
        activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components="resid_middle")
    with pytest.raises(ValueError, match="foil"):
        activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary")
