"""Model diffing (workbench.diffing) on tiny seeded models and fine-tunes built here with a known change."""
import numpy as np
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
    model at alpha 0 and with the fine-tuned model at alpha 1; patching and steering on it at alpha 1 equal the
    same on the fine-tuned model; at alpha 0.5 the engine's packed suffix path (each base block reads its own
    prefix keys and values, `prefix_cache`) gives the grid of batched full forwards."""
    from workbench.counterfactual import counterfactuals, sample

    base, tuned = _pair("gpt2", scale=0.2)
    samples = sample(base, PROMPTS[:2], max_new_tokens=8, seed=0)
    assert counterfactuals(base, None, samples, intervention=scaled_model(base, tuned, 0.0)).diverged_at == [None, None]
    want = counterfactuals(base, None, samples, intervention=tuned)
    got = counterfactuals(base, None, samples, intervention=scaled_model(base, tuned, 1.0))
    assert got.ids == want.ids
    s1 = scaled_model(base, tuned, 1.0)
    clean, corrupt = "The cat sat on the mat", "The dog sat on the rug"
    patch = lambda m, path: wb.patching.activation_patching(m, clean, corrupt, " and", " the", path=path,
                                                            components=["resid_pre", "attn_out"])
    grid_s = patch(s1, "suffix")["resid_pre"].values
    grid_t = patch(tuned, "suffix")["resid_pre"].values
    assert abs(grid_s - grid_t).max() < 1e-4
    half = scaled_model(base, tuned, 0.5)
    fast, full = patch(half, "suffix"), patch(half, "full")
    for comp in ("resid_pre", "attn_out"):
        assert np.abs(fast[comp].values - full[comp].values).max() < 1e-5, comp
        assert np.abs(fast[comp].values - patch(tuned, "full")[comp].values).max() > 1e-3  # alpha 0.5 is not alpha 1
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


# -- weight space ---------------------------------------------------------------------------------------------

def _structured(out_dim, in_dim, seed=0):
    """A matrix with a decaying spectrum (like trained weights): W = U diag(s) V^T, s_i = 10 * 0.85^i."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_dim, out_dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_dim, in_dim, generator=g, dtype=torch.float64))
    n = min(out_dim, in_dim)
    s = 10 * 0.85 ** torch.arange(n, dtype=torch.float64)
    return u[:, :n] @ torch.diag(s) @ v[:, :n].T, u, s


def test_intruder_dimensions_planted():
    """A rank-1 update along a new direction (spread evenly over 16 of the base's lower singular vectors, so its
    best |cos| is 0.25, orthogonal to the top 10) with a large singular value is one intruder, at rank 0; a small
    full-rank perturbation moves no top singular vector away from its own (no intruder), at a full effective rank."""
    from workbench.diffing import effective_rank, intruder_dimensions

    w0, u, s = _structured(64, 96)
    new = u[:, 12:28].sum(1) / 4.0  # unit norm; |cos| 0.25 with each of those 16, 0 with the rest
    g = torch.Generator().manual_seed(1)
    w_lora = w0 + 2 * s[0] * torch.outer(new, torch.randn(96, generator=g, dtype=torch.float64).div(96 ** 0.5))
    got = intruder_dimensions(w0, w_lora)
    assert got["intruders"] == 1 and got["intruder_ranks"] == [0]
    assert got["max_cos"][0] == pytest.approx(0.25, abs=0.02)
    w_full = w0 + 0.02 * torch.randn(64, 96, generator=g, dtype=torch.float64)
    got = intruder_dimensions(w0, w_full)
    assert got["intruders"] == 0 and min(got["max_cos"]) > 0.9
    assert effective_rank(torch.linalg.svdvals(w_lora - w0)) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.linalg.svdvals(w_full - w0)) > 40


def test_weight_diff_on_a_model_and_a_peft_adapter(tmp_path):
    """Per-matrix rows over the blocks: a planted rank-1 update of one matrix is its only intruder; a LoRA adapter
    (saved by peft, read back from its folder) merges to W0 + (alpha / r) B A, computed here by hand."""
    from peft import LoraConfig, get_peft_model

    from workbench.core.arch import weight_out_in
    from workbench.diffing import weight_diff

    base = wb.tiny_model("llama")
    o_proj = base.module("attn_out_proj", 1)
    w0, u, s = _structured(*weight_out_in(o_proj).shape)
    with torch.no_grad():
        weight_out_in(o_proj).copy_(w0)
    tuned = perturbed_copy(base, 0.0)
    new = u[:, 12:28].sum(1) / 4.0
    with torch.no_grad():
        weight_out_in(tuned.module("attn_out_proj", 1)).add_(
            (2 * s[0] * torch.outer(new, torch.ones(w0.shape[1], dtype=torch.float64) / w0.shape[1] ** 0.5)).float())
    d = weight_diff(base, tuned)
    hits = [(r["layer"], r["matrix"]) for r in d.rows if r["intruders"]]
    assert hits == [(1, "self_attn.o_proj")] and d.total_intruders == 1
    assert d.by_layer()["intruders"] == [0, 1]
    moved = [r for r in d.rows if r["update_norm"] > 0]
    assert [(r["layer"], r["matrix"]) for r in moved] == [(1, "self_attn.o_proj")]
    assert moved[0]["effective_rank"] == pytest.approx(1.0, abs=1e-3)

    torch.manual_seed(0)
    peft_model = get_peft_model(perturbed_copy(base, 0.0).hf, LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    lora = peft_model.base_model.model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        want = base.module("mlp_down", 0).weight + 2.0 * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    d_folder = weight_diff(base, tmp_path / "adapter", matrices="down_proj")
    d_peft = weight_diff(base, peft_model, matrices="down_proj")
    assert [r["matrix"] for r in d_folder.rows] == ["mlp.down_proj", "mlp.down_proj"]
    assert d_folder.rows[0]["update_norm"] == pytest.approx(float((want - base.module("mlp_down", 0).weight).detach().norm()), rel=1e-4)
    assert d_folder.rows[0]["effective_rank"] <= 2.0 + 1e-6
    assert d_folder.rows == d_peft.rows
    with pytest.raises(ValueError, match="tuned: .* is not a peft adapter folder"):
        weight_diff(base, tmp_path)
    with pytest.raises(ValueError, match="matrices: 'nothing' matches no matrix"):
        weight_diff(base, tuned, matrices="nothing")


# -- activation space -----------------------------------------------------------------------------------------

def _caft_texts(n):
    from workbench.core.io import read_jsonl

    return [r["prompt"] for _, r in read_jsonl(wb.data.data_path("caft_task.jsonl"), "task")][:n]


def test_crosscoder_finds_a_planted_feature(tmp_path):
    """A fine-tune built to have one new feature: MLP neuron 5 of layer 0 rewired to fire on a direction u of its
    input (about half the tokens) and write a new direction v. The latent leaning furthest toward the fine-tuned
    model is that feature: its fine-tuned decoder points along v, it fires where the activations changed, and
    the Latent Scaling check finds v absent from the base model's activations (nu_error small); most latents are
    shared. The crosscoder saves and loads (safetensors + JSON) to the same codes."""
    from workbench.diffing import CrossCoder, diff_crosscoder, paired_activations, train_crosscoder

    base = wb.tiny_model("llama")
    tuned = perturbed_copy(base, 0.0)
    g = torch.Generator().manual_seed(3)
    u, v = (x / x.norm() for x in torch.randn(2, 64, generator=g))
    mlp = tuned.module("mlp", 0)
    with torch.no_grad():
        mlp.gate_proj.weight[5], mlp.up_proj.weight[5], mlp.down_proj.weight[:, 5] = 2 * u, 2 * u, 0.6 * v
    acts = paired_activations(base, tuned, _caft_texts(200), 1)
    changed = (acts[:, 1] - acts[:, 0]).norm(dim=-1) > 0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small matmuls per step: threads only contend on a shared machine
    try:
        cc = train_crosscoder(acts, n_latents=128, k=4, steps=800, batch_size=256)
    finally:
        torch.set_num_threads(threads)
    r = diff_crosscoder(cc, acts)
    j = r.most_moved(1, "tuned")[0]
    fires = cc.encode(cc.normalize(acts))[:, j] > 0
    with torch.no_grad():
        assert torch.cosine_similarity(cc.W_dec[j, 1], v, 0) > 0.9
    assert r.rel_norm[j] > 0.8 and changed[fires].float().mean() > 0.9
    assert r.nu_error[j] < 0.3
    assert r.counts()["shared"] > 0.8 * cc.n_latents and r.fvu < 0.3
    cc.save(tmp_path / "cc")
    again = CrossCoder.load(tmp_path / "cc")
    x = cc.normalize(acts[:50])
    assert torch.equal(again.encode(x), cc.encode(x))


def test_activation_difference_lens_reads_and_steers_a_planted_shift():
    """GPT-2 fine-tuned by adding u to layer 0's MLP output bias: the fine-tuned stream at layer 1 is the base
    stream + u at every token. The lens recovers u exactly, reads the token u was built from (its unembedding row)
    at the top, and steering the base model by it reproduces the fine-tuned logits."""
    from workbench.diffing import activation_difference

    base = wb.tiny_model("gpt2")
    tuned = perturbed_copy(base, 0.0)
    target = base.to_single_token(" Paris")
    w_u = base.module("unembed").weight.detach()
    u = 3.0 * (w_u[target] - w_u[target].mean()) / w_u[target].norm()
    with torch.no_grad():
        tuned.module("mlp", 0).c_proj.bias += u
    diff = activation_difference(base, tuned, PROMPTS, 1, first_tokens=3)
    torch.testing.assert_close(diff.vector, u, atol=1e-5, rtol=0)
    assert diff.top_tokens[0][0] == " Paris"
    with torch.no_grad(), wb.steering.steer(base, diff.steering_vector(), 1.0):
        steered = base(PROMPTS)
        torch.testing.assert_close(steered, tuned(PROMPTS), atol=1e-4, rtol=0)


# -- the report -----------------------------------------------------------------------------------------------

def test_exact_first_token_agreement():
    """The sorted prefix-sum form equals the O(V^2) sum of DESIGN.md round 3; averaging P(keep | x) over x ~ p gives
    it again (an identity); and shared Gumbel noise drawn here agrees at that rate."""
    from workbench.counterfactual import gumbel_agreement, gumbel_keep

    agreement_probability = lambda p, q: float(gumbel_agreement(p, q))
    keep_probability = lambda p, q, x: float(gumbel_keep(p, q)[x])

    g = torch.Generator().manual_seed(0)
    p = (2 * torch.randn(50, generator=g)).softmax(-1).double()
    q = (0.5 * p + 0.5 * (2 * torch.randn(50, generator=g)).softmax(-1)).double()
    q[3] = 0.0
    q = q / q.sum()
    brute = sum(1.0 / float(torch.maximum(p / p[x], q / q[x]).sum()) for x in range(50) if q[x] > 0)
    assert agreement_probability(p, q) == pytest.approx(brute, rel=1e-10)
    assert sum(float(p[x]) * keep_probability(p, q, x) for x in range(50)) == pytest.approx(brute, rel=1e-10)
    gumbel = -torch.log(-torch.log(torch.rand(40000, 50, generator=g, dtype=torch.float64)))
    same = ((p.log() + gumbel).argmax(-1) == (q.log() + gumbel).argmax(-1)).double().mean()
    assert float(same) == pytest.approx(brute, abs=0.015)
    assert agreement_probability(p, p) == pytest.approx(1.0, abs=1e-12)


def test_workbench_diff_writes_the_report(tmp_path, capsys):
    """`workbench diff BASE FINETUNED --out DIR` on two models saved here: report.json holds every section, with
    the measured first-token agreement beside the exact one; an existing report needs --force."""
    import json

    from workbench.cli import main

    base = wb.tiny_model("llama")
    tuned = perturbed_copy(base, 0.1, seed=1)
    for name, m in (("base", base), ("tuned", tuned)):
        m.hf.save_pretrained(tmp_path / name)
        m.tokenizer.save_pretrained(tmp_path / name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat\nA dog ran in the park\nOne two three four\n")
    args = ["diff", str(tmp_path / "base"), str(tmp_path / "tuned"), "--prompts", str(prompts), "--steps", "100",
            "--samples", "4", "--max-new-tokens", "4", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(rep) >= {"tuco", "weights", "patching", "crosscoder", "lens", "counterfactuals", "agreement"}
    assert len(rep["tuco"]["by_layer"]) == 2 and len(rep["tuco"]["tuco"]) == 3
    a = rep["agreement"]
    assert a["n"] == 12 and 0 <= a["exact"] <= 1 and a["measured"] == np.mean(a["per_row_measured"])
    assert (tmp_path / "out" / "report.html").stat().st_size > 1e6  # plotly.js inlined
    assert main(args) == 2 and "report.json exists" in capsys.readouterr().err
    assert main(["diff", "tiny-llama", "tiny-gpt2", "--out", str(tmp_path / "x")]) == 2


def test_model_diff_reports_the_most_moved_sae_latents():
    """The SAE section is the mean change of each latent at the prompts' last token, computed here from the two
    models' own cached residuals and the SAE's own encoder; the shipped SAE is used only for the default model."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from workbench.diffing import model_diff

    base = wb.tiny_model("llama")
    tuned = perturbed_copy(base, 0.1, seed=1)
    cfg = TopKSAEConfig(d_in=base.dims.d_model, d_sae=48, k=6)
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.1.hook_resid_pre", base.name
    sae = TopKSAE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    kw = dict(patching=False, crosscoder=False, n_samples=1, max_new_tokens=1)
    r = model_diff(base, tuned, PROMPTS, sae=sae, **kw)
    with torch.no_grad():
        z = []
        for m in (base, tuned):
            z.append(torch.stack([sae.encode(m.run_with_cache(p, ["blocks.1.hook_resid_pre"])[1]
                                              ["blocks.1.hook_resid_pre"][0, -1].float()) for p in PROMPTS]))
    delta = (z[1] - z[0]).mean(0)
    assert delta.abs().max() > 0.01  # the fine-tune moved some latent
    torch.testing.assert_close(r.sae_latents.delta, delta, atol=1e-5, rtol=0)
    assert r.sae_latents.order[0] == int(delta.abs().argmax())
    assert len(r.to_json()["sae_latents"]["top"]) == 20 and "SAE: most moved latents" in r.view().body
    assert model_diff(base, tuned, PROMPTS, **kw).sae_latents is None  # "default": not the default model's family
