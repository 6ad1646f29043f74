"""Analysis methods: logit lens, direct logit attribution, path patching, DAS, cross-model patching."""
import pytest
import torch

import workbench as wb
from workbench.analysis import decompose_resid, direct_logit_attribution, lens_logits, logit_lens
from workbench.core.sites import Site

from conftest import IOI_CLEAN, IOI_CORRUPT, assert_no_hooks

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logit_lens_last_layer_is_the_model(tiny, family):
    model = tiny(family)
    res = logit_lens(model, PROMPTS, [" Paris", " Mary"])
    ids, mask = model.encode(PROMPTS)
    last = model.last_positions(ids, mask)
    with torch.no_grad():
        logits = model(ids, mask)[torch.arange(2), last]
        _, cache = model.run_with_cache(ids, [Site(model.dims.n_layers - 1, "resid_post")], attention_mask=mask)
        lens = lens_logits(model, cache[Site(model.dims.n_layers - 1, "resid_post").name][torch.arange(2), last])
    # the identity: the last layer's lens is the model's output (to float rounding: the matmul shapes differ)
    assert torch.allclose(lens, logits, atol=1e-5, rtol=0)
    ans = [model.to_single_token(" Paris"), model.to_single_token(" Mary")]
    probs = logits.softmax(-1)[torch.arange(2), ans]
    assert torch.allclose(torch.tensor(res["prob"].values[:, -1]), probs, atol=1e-6)
    ranks = [(logits[i] > logits[i, a]).sum().item() for i, a in enumerate(ans)]
    assert res["rank"].values[:, -1].tolist() == ranks
    assert res["prob"].dims == ("prompt", "layer") and res["prob"].shape == (2, model.dims.n_layers)
    # earlier layers differ from the output (the lens is not trivially the final logits)
    assert not torch.allclose(torch.tensor(res["logit"].values[:, 0]), logits[torch.arange(2), ans])
    assert_no_hooks(model)


def test_logit_lens_bad_input(tiny):
    model = tiny("llama")
    with pytest.raises(ValueError, match="answer"):
        logit_lens(model, PROMPTS, " Paris is")
    with pytest.raises(ValueError, match="answer"):
        logit_lens(model, PROMPTS, [" Paris"])
    with pytest.raises(ValueError, match="layers"):
        logit_lens(model, PROMPTS, " Paris", layers=[5])
    with pytest.raises(ValueError, match="prompts"):
        logit_lens(model, [], " Paris")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("by_head", [True, False])
def test_dla_sums_to_logit_diff(tiny, family, by_head):
    model = tiny(family)
    res = direct_logit_attribution(model, [IOI_CLEAN, IOI_CORRUPT, "The capital of France is"],
                                   [" Mary", " John", " Paris"], [" John", " Mary", " London"], by_head=by_head)
    actual = torch.tensor(res.meta["logit_diff"])
    total = torch.tensor(res.values.sum(1))
    assert torch.allclose(total, actual, atol=1e-4), (total, actual)
    assert actual.abs().max() > 1e-2  # a non-trivial difference
    labels = res.coords["component"]
    L, H = model.dims.n_layers, model.dims.n_heads
    assert ("pos_embed" in labels) == (family == "gpt2")
    if by_head:
        assert sum(lab.startswith("L") for lab in labels) == L * H
        assert ("0_attn_bias" in labels) == (family == "gpt2")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decompose_resid_heads_sum_to_attn_out(tiny, family):
    model = tiny(family)
    stack, labels, final = decompose_resid(model, PROMPTS)
    assert torch.allclose(stack.sum(0), final, atol=1e-5)
    ids, mask = model.encode(PROMPTS)
    last = model.last_positions(ids, mask)
    _, cache = model.run_with_cache(ids, [Site(1, "attn_out")], attention_mask=mask)
    heads = [i for i, lab in enumerate(labels) if lab.startswith("L1H") or lab == "1_attn_bias"]
    assert torch.allclose(stack[heads].sum(0), cache["blocks.1.hook_attn_out"][torch.arange(2), last], atol=1e-5)
