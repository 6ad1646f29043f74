"""Sparse autoencoders: SAELens format round trips, hook-name mapping, the SAE intervention's exactness,
training and evaluation (tiny models; the committed SAE on the default model in slow tests)."""
from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.sae import SAEEdit, latent_activations, load_sae, map_hook_name, save_sae

TEXTS = ["When Mary and John went to the store, John gave a drink to", "The cat sat on the mat and looked"]


def random_sae(model, site="blocks.1.hook_resid_pre", d_sae=96, arch="topk", seed=0, width=None):
    """A SAELens SAE with random (non-trivial) weights, bound to `site` of `model` by its metadata."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    d_in = width or model.dims.d_model
    cls, cfg = {"topk": (TopKSAE, TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8)),
                "standard": (StandardSAE, StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
                "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))}[arch]
    cfg.metadata.hook_name = site
    cfg.metadata.model_name = model.name
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "threshold" else 0.1))
    return sae


@pytest.mark.parametrize("arch,site", [("topk", "blocks.1.hook_resid_pre"), ("standard", "blocks.0.hook_mlp_out"),
                                       ("jumprelu", "blocks.1.hook_resid_post")])
def test_unedited_sae_with_error_term_keeps_logits_exactly(tiny, arch, site):
    m = tiny("llama")
    sae = load_sae(random_sae(m, site, arch=arch), m)
    ref = m.run_with_interventions(TEXTS, [])
    out = m.run_with_interventions(TEXTS, [SAEEdit(sae=sae)])
    assert torch.equal(out, ref)
    # the SAE is not a no-op: spliced in without its error term, it changes the logits
    spliced = m.run_with_interventions(TEXTS, [SAEEdit(sae=sae, splice=True)])
    assert (spliced - ref).abs().max() > 1e-2
    # tokens above max_norm (attention sinks) pass through unchanged, even spliced
    assert torch.equal(m.run_with_interventions(TEXTS, [SAEEdit(sae=sae, splice=True, max_norm=1e-6)]), ref)


def test_splice_and_edits_equal_the_equations_applied_by_hand(tiny):
    m = tiny("llama")
    site = "blocks.1.hook_resid_pre"
    sae = load_sae(random_sae(m, site), m)
    ids, mask = m.encode(TEXTS)
    _, cache = m.run_with_cache(ids, [site], attention_mask=mask)
    x = cache[site]
    z = sae.encode(x)
    recon = sae.decode(z)
    # splice: x' = decode(encode(x))
    want = m.run_with_interventions(ids, [wb.Replace(site, value=recon)], attention_mask=mask)
    got = m.run_with_interventions(ids, [SAEEdit(sae=sae, splice=True)], attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # scale latents 3 and 5 by 4 at position 2 only: x' = x + decode(z') - decode(z) there, x elsewhere
    active = int(z[0, 2].argmax())
    z2 = z.clone()
    z2[:, 2, [3, active]] *= 4.0
    edited = x.clone()
    edited[:, 2] = x[:, 2] + sae.decode(z2[:, 2]) - recon[:, 2]
    want = m.run_with_interventions(ids, [wb.Replace(site, value=edited)], attention_mask=mask)
    iv = SAEEdit(sae=sae, latents=[3, active], op="scale", value=4.0, positions=[2], keep_latents=True)
    got = m.run_with_interventions(ids, [iv], attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - m.run_with_interventions(ids, [], attention_mask=mask)).abs().max() > 1e-3
    assert torch.equal(iv.latents_out[:, 0, active], 4.0 * z[:, 2, active])


def test_save_sae_round_trips_through_saelens_own_loader(tiny, tmp_path):
    from sae_lens import SAE

    m = tiny("llama")
    for arch in ("topk", "standard", "jumprelu"):
        sae = load_sae(random_sae(m, arch=arch), m)
        save_sae(sae, tmp_path / arch)
        theirs = SAE.load_from_disk(str(tmp_path / arch))
        assert type(theirs).__name__ == type(sae).__name__
        for k, v in sae.state_dict().items():
            assert torch.equal(theirs.state_dict()[k], v), k
        x = torch.randn(7, m.dims.d_model)
        assert torch.equal(theirs.encode(x), sae.encode(x))
        assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_pre" and theirs.cfg.metadata.model_name == m.name
        # and back through ours
        ours = load_sae(tmp_path / arch, m)
        assert torch.equal(ours.decode(ours.encode(x)), sae.decode(sae.encode(x)))


def test_saelens_saved_sae_with_tl_or_module_hook_name_maps_to_our_site(tiny, tmp_path):
    m = tiny("llama")
    for hook, want in [("blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre"),
                       ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post"),  # Gemma Scope's names
                       ("model.layers.1", "blocks.1.hook_resid_post"),  # HookedProxyLM: the block's output
                       ("model.layers.0.mlp", "blocks.0.hook_mlp_out"),
                       ("model.layers.0.self_attn", "blocks.0.hook_attn_out")]:
        sae = random_sae(m, hook)
        sae.cfg.metadata.model_name = None  # a SAELens SAE from elsewhere: no model name recorded
        folder = tmp_path / hook.replace(".", "_")
        sae.save_model(str(folder))  # SAELens's own writer
        ours = load_sae(folder, m)
        assert ours.cfg.metadata.hook_name == want
        assert map_hook_name(hook, m).name == want
        ref = m.run_with_interventions(TEXTS, [])
        assert torch.equal(m.run_with_interventions(TEXTS, [SAEEdit(sae=ours)]), ref)
    gpt2 = tiny("gpt2")
    assert map_hook_name("transformer.h.1", gpt2).name == "blocks.1.hook_resid_post"


def test_latent_activations_are_the_encoded_reader_activations(tiny):
    m = tiny("llama")
    sae = load_sae(random_sae(m), m)
    acts = wb.directions.read_activations(m, TEXTS, [1], read_at="all")[1]
    got = latent_activations(m, sae, TEXTS)
    assert got.shape == (sum(len(m.to_tokens(t)[0]) for t in TEXTS), sae.cfg.d_sae)
    torch.testing.assert_close(got, sae.encode(acts))
    assert ((got > 0).sum(-1) <= 8).all()  # top-k


def test_bad_sae_input_is_refused_with_both_shapes_and_names(tiny, tmp_path):
    m = tiny("llama")
    with pytest.raises(ValueError, match=r"sae: .*32.*blocks.1.hook_resid_pre.*64"):
        load_sae(random_sae(m, width=32), m)
    other = wb.tiny_model("llama", seed=1)
    sae = load_sae(random_sae(m), m)
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["metadata"]["workbench_fingerprint"] = m.fingerprint
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=m.fingerprint):
        load_sae(tmp_path / "s", other)
    assert load_sae(tmp_path / "s", other, allow_other_model=True).cfg.d_sae == 96
    named = random_sae(m)
    named.cfg.metadata.model_name = "gemma-2-2b"
    with pytest.raises(ValueError, match="gemma-2-2b.*tiny-llama"):
        load_sae(named, m)
    # a truncated weights file
    blob = (tmp_path / "s" / "sae_weights.safetensors").read_bytes()
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_sae(tmp_path / "s", m)
    with pytest.raises(ValueError, match="latents: index 96 out of range"):
        SAEEdit(sae=sae, latents=[96], op="zero")
    with pytest.raises(ValueError, match="hook name"):
        load_sae(random_sae(m, "model.layers.1.input_layernorm"), m)
    with pytest.raises(ValueError, match="value"):
        SAEEdit(sae=sae, latents=[1], op="set")
    with pytest.raises(ValueError, match="no such folder"):
        load_sae(tmp_path / "missing", m)


def test_train_sae_reduces_error_and_resumes_exactly(tiny, tmp_path):
    from workbench.sae.train import data_file_texts

    m = tiny("llama")
    texts = data_file_texts()[:60]
    kw = dict(site="blocks.1.hook_resid_pre", d_sae=128, k=8, steps=120, batch_size=128, lr=3e-3, checkpoint_every=40,
              progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: more threads on a shared machine only thrash
    try:
        _train_and_resume(m, texts, kw, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _train_and_resume(m, texts, kw, tmp_path):
    from workbench.sae.train import train_sae

    whole = train_sae(m, texts, out=tmp_path / "whole", **kw)
    hist = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert hist[-1]["mse"] < 0.5 * hist[0]["mse"]
    assert hist[-1]["fve"] > 0.6
    # killed after step 60 (a checkpoint), then run again: the same SAE, bit for bit
    assert train_sae(m, texts, out=tmp_path / "resumed", stop_at=60, **kw) is None
    resumed = train_sae(m, texts, out=tmp_path / "resumed", **kw)
    for k_, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k_], v, atol=1e-6, rtol=1e-5)
    # the result is a SAELens SAE bound to the site and this model
    from sae_lens import SAE

    theirs = SAE.load_from_disk(str(tmp_path / "whole" / "sae"))
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert torch.equal(m.run_with_interventions(TEXTS, [SAEEdit(sae=load_sae(tmp_path / "whole" / "sae", m))]),
                       m.run_with_interventions(TEXTS, []))
    with pytest.raises(ValueError, match="different configuration"):
        train_sae(m, texts, out=tmp_path / "whole", **{**kw, "k": 4})


def test_evaluate_sae_numbers_match_their_definitions(tiny):
    from workbench.sae.evaluate import evaluate_sae

    m = tiny("llama")
    sae = load_sae(random_sae(m), m)
    r = evaluate_sae(m, sae, TEXTS, skip_first=0)
    x = wb.directions.read_activations(m, TEXTS, [1], read_at="all")[1]
    z = sae.encode(x)
    assert r["l0"] == pytest.approx(float((z > 0).sum(-1).float().mean())) and r["l0"] <= 8
    fve = 1 - (sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert r["variance_explained"] == pytest.approx(float(fve), rel=1e-4)
    assert r["dead_fraction"] == pytest.approx(float((z.sum(0) == 0).float().mean()))
    # CE by hand for the clean run: mean next-token NLL over real tokens
    nll = []
    for t in TEXTS:
        ids = m.to_tokens(t)
        logp = torch.log_softmax(m(ids)[0, :-1].detach(), -1)
        nll.append(-logp.gather(-1, ids[0, 1:, None])[:, 0])
    assert r["ce_clean"] == pytest.approx(float(torch.cat(nll).mean()), rel=1e-5)
    want = (r["ce_zero"] - r["ce_sae"]) / (r["ce_zero"] - r["ce_clean"])
    assert r["ce_loss_recovered"] == pytest.approx(want) and r["ce_sae"] != r["ce_clean"]
    # CE recovered by hand, independent of the code under test: one text at a time (no padding), a raw torch
    # pre-hook on block 1 puts decode(encode(x)) (the SAE spliced in) or 0 (the site ablated) in place of
    # resid_pre, then (L_zero - L_sae) / (L_zero - L_clean) over every predicted token of every text
    from conftest import reference_patch

    def ce(fn):
        nll = []
        for t in TEXTS:
            ids = m.to_tokens(t)
            logits = reference_patch(m, ids, "block", 1, "input", fn) if fn else m(ids).detach()
            nll.append(-torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0])
        return float(torch.cat(nll).mean())

    l_clean, l_sae, l_zero = ce(None), ce(lambda h: sae.decode(sae.encode(h)).to(h.dtype)), ce(torch.zeros_like)
    assert l_sae != pytest.approx(l_clean) and l_zero != pytest.approx(l_clean)  # both interventions matter here
    assert (r["ce_clean"], r["ce_sae"], r["ce_zero"]) == pytest.approx((l_clean, l_sae, l_zero), rel=1e-4)
    assert r["ce_loss_recovered"] == pytest.approx((l_zero - l_sae) / (l_zero - l_clean), rel=1e-4)


def test_cli_sae_train_then_eval(tmp_path, capsys):
    from workbench.cli import main
    from workbench.sae.train import data_file_texts

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data_file_texts()[:40]))
    out = tmp_path / "run"
    argv = ["sae", "train", "--model", "tiny-llama", "--site", "blocks.1.hook_resid_pre", "--texts", str(texts),
            "--d-sae", "64", "--k", "4", "--steps", "30", "--batch-size", "64", "--lr", "3e-3", "--out", str(out)]
    assert main(argv) == 0
    assert (out / "sae" / "cfg.json").is_file() and (out / "checkpoint" / "state.safetensors").is_file()
    assert main(["sae", "eval", "--model", "tiny-llama", "--sae", str(out / "sae"), "--texts", str(texts),
                 "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["l0"] <= 4 and 0 < report["variance_explained"] <= 1 and report["site"] == "blocks.1.hook_resid_pre"
    assert report["n_texts"] == 40
    assert main(["sae", "eval", "--model", "tiny-llama", "--sae", str(out / "sae"), "--texts", str(texts),
                 "--limit", "3", "--out", str(tmp_path / "eval3.json")]) == 0
    assert json.loads((tmp_path / "eval3.json").read_text())["n_texts"] == 3  # the first 3 texts only
    # another model's SAE is refused by eval, naming both
    assert main(["sae", "eval", "--model", "tiny-gpt2", "--sae", str(out / "sae"), "--texts", str(texts)]) == 2
    assert "tiny-llama" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_sae_on_the_default_model(default_model):
    """The committed SAE: the unedited SAE leaves the logits exactly; spliced in on held-out text of its corpus it
    explains >= 80% of the variance and recovers >= 80% of the CE loss at L0 <= 64."""
    from workbench.data import data_path
    from workbench.sae import DEFAULT_SAE, default_sae, evaluate_sae

    m = default_model
    sae = default_sae(m)
    assert sae.cfg.metadata.hook_name == "blocks.15.hook_resid_pre" and sae.cfg.d_in == m.dims.d_model
    ref = m.run_with_interventions(TEXTS, [])
    assert torch.equal(m.run_with_interventions(TEXTS, [SAEEdit(sae=sae)]), ref)
    held_out = [json.loads(l)["text"] for l in (data_path(DEFAULT_SAE) / "heldout.jsonl").read_text().splitlines()]
    r = evaluate_sae(m, sae, held_out[:8])
    assert r["l0"] <= 64
    assert r["variance_explained"] >= 0.80, r
    assert r["ce_loss_recovered"] >= 0.80, r


def test_latent_leaf_gradients_are_the_site_gradient_through_the_decoder(tiny):
    """latent_leaf=True: d metric / d z = (d metric / d x') W_dec^T (attribution over latents), logits unchanged."""
    m = tiny("llama")
    site = "blocks.1.hook_resid_pre"
    sae = load_sae(random_sae(m, site, arch="standard"), m)
    ids = m.to_tokens(TEXTS[0])
    iv = SAEEdit(sae=sae, latent_leaf=True)
    logits, cache = m.run_with_cache(ids, [site], interventions=[iv], grad=True)
    assert torch.equal(logits.detach(), m.run_with_interventions(ids, []).detach())
    metric = logits[0, -1, 5] - logits[0, -1, 7]
    g_x, g_z = torch.autograd.grad(metric, [cache[site], iv.latents_out])
    torch.testing.assert_close(g_z, g_x @ sae.W_dec.T, atol=1e-5, rtol=1e-4)
    assert g_z.abs().sum() > 0
