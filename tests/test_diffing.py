"""Model diffing (workbench.diffing) on tiny seeded models and fine-tunes built here with a known change."""
import pytest
import torch

import workbench as wb
from workbench.diffing import perturbed_copy, scaled_model, tuning_contribution

PROMPTS = ["The cat sat on the mat and", "Hello world", "One two three four"]
FAMILIES = ["llama", "gpt2", "gpt_neox", "gemma3"]


def _pair(family, scale=0.05, **kw):
    base = wb.tiny_model(family, **kw)
    return base, perturbed_copy(base, scale, seed=1)


def _resid(model, prompts, comp):
    sites = [f"blocks.{l}.hook_{comp}" for l in range(model.dims.n_layers)]
    logits, cache = model.run_with_cache(prompts, sites)
    return logits, [cache[s] for s in sites]


# -- TuCo -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tuco_components_sum_to_the_finetuned_forward(family):
    """x_l + PTC_l + FTC_l is the fine-tuned block's output on its own stream (read by the hook layer from the
    fine-tuned model's own run), so x_0 + sum_l (PTC_l + FTC_l) is its last residual; alpha 1 is the fine-tuned
    model bit for bit, alpha 0 the base model (only blocks were tuned) and its block outputs on the same stream."""
    base, tuned = _pair(family)
    with torch.no_grad():
        t_logits, t_pre = _resid(tuned, PROMPTS, "resid_pre")
        _, t_post = _resid(tuned, PROMPTS, "resid_post")
        b_logits, b_post = _resid(base, PROMPTS, "resid_post")
        s1 = scaled_model(base, tuned, 1.0)
        ids, mask = s1.encode(PROMPTS)
        with s1.recording() as rec:
            s1_logits = s1.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        s0 = scaled_model(base, tuned, 0.0)
        s0_logits, s0_post = _resid(s0, PROMPTS, "resid_post")
    total = t_pre[0].clone()
    for l, [(ptc, ftc)] in sorted(rec.items()):
        torch.testing.assert_close(t_pre[l] + ptc + ftc, t_post[l], atol=1e-5, rtol=0)
        total = total + ptc + ftc
    torch.testing.assert_close(total, t_post[-1], atol=1e-5, rtol=0)
    assert torch.equal(s1_logits, t_logits)
    assert (t_logits - b_logits).abs().max() > 0.1  # the fine-tune changed something
    torch.testing.assert_close(s0_logits, b_logits, atol=1e-5, rtol=0)
    for a, b in zip(s0_post, b_post):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_alpha_scales_the_finetuning_component_linearly():
    """One layer: the block output at alpha is base_out + alpha (tuned_out - base_out), both read from the two
    models' own runs on the same embeddings; TuCo is the paper's ratio computed by hand from them."""
    base, tuned = _pair("llama", n_layers=1)
    with torch.no_grad():
        _, [b_out] = _resid(base, PROMPTS[:1], "resid_post")
        _, [t_out] = _resid(tuned, PROMPTS[:1], "resid_post")
        _, [x] = _resid(tuned, PROMPTS[:1], "resid_pre")
        for alpha in (-1.0, 0.5, 2.0):
            _, [s_out] = _resid(scaled_model(base, tuned, alpha), PROMPTS[:1], "resid_post")
            torch.testing.assert_close(s_out, b_out + alpha * (t_out - b_out), atol=1e-5, rtol=1e-5)
    r = tuning_contribution(base, tuned, PROMPTS[:1])
    ftc, ptc = (t_out - b_out)[0, -1].norm(), (b_out - x)[0, -1].norm()
    assert r.tuco[0].item() == pytest.approx((ftc / (ptc + ftc)).item(), abs=1e-5)
    assert r.ftc_norm[0, -1, 0].item() == pytest.approx(ftc.item(), rel=1e-5)


def test_tuco_is_zero_without_finetuning_and_grows_with_it():
    base = wb.tiny_model("qwen2")
    r0 = tuning_contribution(base, perturbed_copy(base, 0.0), PROMPTS)
    assert r0.tuco.abs().max() < 1e-6
    small, large = (tuning_contribution(base, perturbed_copy(base, s, seed=1), PROMPTS).tuco for s in (0.01, 0.1))
    assert (large > small).all() and torch.isfinite(small).all()
    # padding is NaN, real tokens are not
    assert torch.isnan(r0.ptc_norm[1, -1]).all() and not torch.isnan(r0.ptc_norm[0]).any()


def test_scaled_model_works_with_counterfactuals_patching_and_steering():
    """The scaled fine-tune is a Model: counterfactual strings against it (with a KV cache) agree with the base
    model at alpha 0 and with the fine-tuned model at alpha 1; patching (full forwards) and steering on it at
    alpha 1 equal the same on the fine-tuned model."""
    from workbench.counterfactual import counterfactuals, sample

    base, tuned = _pair("gpt2", scale=0.2)
    samples = sample(base, PROMPTS[:2], max_new_tokens=8, seed=0)
    assert counterfactuals(base, None, samples, intervention=scaled_model(base, tuned, 0.0)).diverged_at == [None, None]
    want = counterfactuals(base, None, samples, intervention=tuned)
    got = counterfactuals(base, None, samples, intervention=scaled_model(base, tuned, 1.0))
    assert got.ids == want.ids
    s1 = scaled_model(base, tuned, 1.0)
    clean, corrupt = "The cat sat on the mat", "The dog sat on the rug"
    with pytest.warns(UserWarning, match="full forwards"):
        grid_s = wb.activation_patching(s1, clean, corrupt, " and", " the")["resid_pre"].values
    grid_t = wb.activation_patching(tuned, clean, corrupt, " and", " the")["resid_pre"].values
    assert abs(grid_s - grid_t).max() < 1e-4
    vec = torch.randn(s1.dims.d_model)
    ivs = [wb.Add("blocks.1.hook_resid_pre", vector=vec, multiplier=3.0)]
    with torch.no_grad():
        torch.testing.assert_close(s1.run_with_interventions(PROMPTS, ivs), tuned.run_with_interventions(PROMPTS, ivs),
                                   atol=1e-5, rtol=0)


def test_tuco_bad_input():
    base, tuned = _pair("llama")
    with pytest.raises(ValueError, match="alpha: expected a finite number or 2"):
        scaled_model(base, tuned, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alpha"):
        scaled_model(base, tuned, float("nan"))
    with pytest.raises(ValueError, match="tuned: models of different shapes"):
        scaled_model(base, wb.tiny_model("llama", n_layers=3))
    with pytest.raises(ValueError, match="prompts"):
        tuning_contribution(base, tuned, [])
    with pytest.raises(ValueError, match="scaled: TuCo is measured"):
        tuning_contribution(base, tuned, PROMPTS, scaled=scaled_model(base, tuned, 0.5))
