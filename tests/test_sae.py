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
    acts = wb.read_activations(m, TEXTS, [1], read_at="all")[1]
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
