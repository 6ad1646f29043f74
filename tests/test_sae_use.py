"""Using SAE latents (workbench.sae.inspect / use / diff) on a tiny Llama with a small SAELens top-k SAE trained
here on its activations (a few seconds), so the latents mean something."""
import copy
import re

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.interventions import Add, ProjectOut
from workbench.core.io import read_jsonl
from workbench.sae import (concept_latents, diff_latents, inspect_latent, latent_attribution, latent_steering_vector,
                           latent_subspaces, logit_effects, read_latents, save_latent_directions)

SITE = "blocks.1.hook_resid_pre"


def _texts(n=300):
    return [r["prompt"] for _, r in read_jsonl(wb.data.data_path("caft_task.jsonl"), "task")][:n]


def _trained_topk_sae(model, site, texts, d_sae=256, k=8, steps=300, seed=0):
    """A SAELens TopKSAE fitted to the model's activations at `site` (MSE, Adam, unit decoder rows)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    layer = int(site.split(".")[1])
    acts = wb.directions.read_activations(model, texts, [layer], read_at="all")[layer]
    sae = TopKSAE(TopKSAEConfig(d_in=model.dims.d_model, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=site)))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = acts[torch.randint(len(acts), (256,), generator=gen)]
        loss = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


@pytest.fixture(scope="module")
def setup(tiny):
    model = tiny("llama")
    texts = _texts()
    return model, _trained_topk_sae(model, SITE, texts), texts


def test_steering_with_a_decoder_direction_moves_that_latent(setup):
    model, sae, texts = setup
    texts = texts[:40]
    z0 = read_latents(model, sae, texts)
    latent = int((z0 > 0).float().mean(0).argsort()[len(z0[0]) // 2])  # a middling-frequency latent
    vec = latent_steering_vector(model, sae, latent)
    assert vec.layers == [1] and torch.equal(vec.vectors[1], sae.W_dec[latent])
    # the site's activation is exactly h + m W_dec[i] (read after the intervention)
    h0 = wb.directions.read_activations(model, texts, [1], read_at="all")[1]
    h1 = wb.directions.read_activations(model, texts, [1], read_at="all", interventions=vec.interventions(model, 4.0))[1]
    torch.testing.assert_close(h1 - h0, 4.0 * sae.W_dec[latent].expand_as(h0), atol=1e-5, rtol=0)
    z1 = read_latents(model, sae, texts, interventions=vec.interventions(model, 4.0))
    moved = (z1 - z0).mean(0)
    assert moved[latent] > 1.0  # the latent rises by about the multiplier
    assert int(moved.argmax()) == latent  # and more than any other latent
    # steering the other way lowers it where it was active
    zneg = read_latents(model, sae, texts, interventions=vec.interventions(model, -4.0))
    active = z0[:, latent] > 0
    if active.any():
        assert (zneg[active, latent] <= z0[active, latent] + 1e-6).all()


def test_latent_subspace_removes_the_decoder_directions(setup, tmp_path):
    model, sae, texts = setup
    latents = [3, 17, 42]
    subs = latent_subspaces(model, sae, latents)
    basis = subs[1]
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    h = wb.directions.read_activations(model, texts[:8], [1], read_at="all",
                            interventions=[ProjectOut(SITE, basis=basis)])[1]
    assert (h @ sae.W_dec[latents].T).abs().max() < 1e-4  # nothing left along any of the latents' directions
    # the one direction file format: CAFT reads it back as the same subspace
    from workbench.directions import caft

    path = save_latent_directions(tmp_path / "lat.safetensors", model, sae, latents)
    with pytest.warns(UserWarning, match="orthonormal"):
        back = caft.subspaces(wb.directions.load(path, model), model.dims.d_model)
    torch.testing.assert_close(back[1] @ back[1].T, torch.eye(3), atol=1e-5, rtol=0)
    proj = back[1].T @ back[1]
    torch.testing.assert_close(sae.W_dec[latents] @ proj, sae.W_dec[latents], atol=1e-5, rtol=0)  # same span


def test_attribution_over_latents_agrees_with_exact_patching(setup):
    model, sae, _ = setup
    clean = ["Mrs Laura enjoyed the soup.", "Mr John hated the film."]
    corrupted = ["Mr John enjoyed the soup.", "Mrs Laura hated the film."]
    out = latent_attribution(model, sae, clean, corrupted, [" A", " B"], [" B", " A"], top_k=6)
    top = out["top"]
    assert len(top) == 6 and out["attribution"].shape == (256,)
    att = np.array([t["attribution"] for t in top])
    exact = np.array([t["exact"] for t in top])
    assert (np.abs(att[:-1]) >= np.abs(att[1:]) - 1e-9).all()  # ordered by |AtP|
    big = np.abs(exact) > 0.1 * np.abs(exact).max()
    assert (np.sign(att[big]) == np.sign(exact[big])).all()  # same sign where the effect is not negligible
    from scipy.stats import spearmanr

    assert spearmanr(np.abs(att), np.abs(exact)).correlation > 0.5  # and about the same order
    # the engine's exact value equals a plain forward with the latent's edit added at the site
    from workbench.sae.use import encode

    i = top[0]["latent"]
    ids_c, ids_x = model.to_tokens(clean), model.to_tokens(corrupted)
    _, cc = model.run_with_cache(ids_c, [SITE])
    _, cx = model.run_with_cache(ids_x, [SITE])
    dz = encode(sae, cc[SITE])[..., i] - encode(sae, cx[SITE])[..., i]  # [n, pos]
    logits = model.run_with_interventions(ids_x, [Add(SITE, vector=dz[..., None] * sae.W_dec[i])])[:, -1]
    a, b = model.to_single_token(" A"), model.to_single_token(" B")
    ld = torch.stack([logits[0, a] - logits[0, b], logits[1, b] - logits[1, a]])
    base = model(ids_x)[:, -1]
    ld0 = torch.stack([base[0, a] - base[0, b], base[1, b] - base[1, a]])
    assert abs(float((ld - ld0).mean().detach()) - top[0]["exact"]) < 1e-4


def _finetuned_along(model, direction, c, texts, steps=40):
    """A full fine-tune of a copy of `model` whose loss asks the SAE site's activation to move by c * direction."""
    hf = copy.deepcopy(model.hf)
    ft = wb.Model(hf, model.tokenizer, name="tiny+ft")
    ids, mask = model.encode(texts)
    _, cache = model.run_with_cache(ids, [SITE], attention_mask=mask)
    goal = cache[SITE] + c * direction
    params = list(hf.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        _, cc = ft.run_with_cache(ids, [SITE], attention_mask=mask, grad=True)
        loss = ((cc[SITE] - goal).pow(2).sum(-1) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return ft


def test_diff_ranks_the_moved_latent_first(setup):
    model, sae, texts = setup
    target = 77
    ft = _finetuned_along(model, sae.W_dec[target], 3.0, texts[:32])
    d = diff_latents(model, ft, sae, texts[32:92])  # held-out prompts
    assert d.order[0] == target and d.delta[target] > 0
    same = diff_latents(model, model, sae, texts[:10])
    assert float(same.abs_delta.max()) == 0.0  # a model against itself moves nothing


def test_concept_latents_find_a_planted_difference(setup):
    model, sae, _ = setup
    a = ["Mrs Laura enjoyed the soup.", "Mrs Anna liked the cake."]
    b = ["Mr John enjoyed the soup.", "Mr Paul liked the cake."]
    dprime, order = concept_latents(model, sae, a, b)
    z_a, z_b = read_latents(model, sae, a, read_at=-1), read_latents(model, sae, b, read_at=-1)
    i = order[0]
    assert torch.sign(dprime[i]) == torch.sign(z_a[:, i].mean() - z_b[:, i].mean())
    assert dprime.abs()[i] == dprime.abs().max()
    # now plant one: a copy of the model whose embedding of " she" is that of " he" plus 4 * latent 77's decoder
    # direction (scaled to the embedding's norm). The two sets differ only in that last token, and the residual
    # stream carries the embedding to the SAE's site, so latent 77 must come first, firing more in set a
    target, she, he = 77, model.to_single_token(" she"), model.to_single_token(" he")
    hf = copy.deepcopy(model.hf)
    emb = hf.get_input_embeddings().weight
    with torch.no_grad():
        emb[she] = emb[he] + 4 * emb[he].norm() * sae.W_dec[target].to(emb.dtype)
    planted = wb.Model(hf, model.tokenizer, name="tiny+planted")
    contexts = [t.rsplit(" ", 1)[0] for t in _texts(40)]
    a, b = [c + " she" for c in contexts], [c + " he" for c in contexts]
    dprime, order = concept_latents(planted, sae, a, b)
    assert order[0] == target and dprime[target] > 0, (order[:5], dprime[order[:5]])
    _, order_unplanted = concept_latents(model, sae, a, b)
    assert order_unplanted[0] != target  # the untouched model does not single it out: the plant did


def test_inspect_page_is_self_contained(setup, tmp_path):
    model, sae, texts = setup
    z = read_latents(model, sae, texts[:50])
    latent = int(z.sum(0).argmax())
    rep = inspect_latent(model, sae, latent, texts[:50], top_k=5)
    assert len(rep.contexts) == 5
    assert rep.contexts[0]["activation"] == pytest.approx(float(z[:, latent].max()), rel=1e-5)
    assert rep.density == pytest.approx(float((z[:, latent] > 0).float().mean()))
    # logit effects: the decoder direction through the final norm's gain and the unembedding, as the model's own modules compute it
    le = logit_effects(model, sae, latent, k=3)
    with torch.no_grad():
        full = model.module("unembed")(model.module("final_norm").weight * sae.W_dec[latent])
    assert le["top"][0][1] == pytest.approx(float(full.max()), rel=1e-5)
    assert le["bottom"][0][1] == pytest.approx(float(full.min()), rel=1e-5)
    path = rep.save_html(tmp_path / "latent.html")
    page = path.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?:", page)
    assert "top-activating contexts" in page and "Plotly" in page and len(page) > 1e6  # plotly.js inlined


@pytest.mark.parametrize("call, match", [
    (lambda m, s: latent_steering_vector(m, s, 256), "latents: latent 256 out of range; the SAE has latents 0..255"),
    (lambda m, s: latent_steering_vector(m, s, [1, 1]), "latents: repeated"),
    (lambda m, s: inspect_latent(m, s, -1, ["a b c"]), "latent: latent -1 out of range"),
    (lambda m, s: latent_attribution(m, s, ["a b"], ["a c"], " d", " e", top_k=0), "top_k"),
    (lambda m, s: diff_latents(m, m, s, ["a b"], rank_by="x"), "rank_by"),
    (lambda m, s: latent_steering_vector(m, s, 0, site="blocks.9.hook_resid_pre"), "site: layer 9 out of range"),
])
def test_bad_input(setup, call, match):
    model, sae, _ = setup
    with pytest.raises(ValueError, match=match):
        call(model, sae)


def test_sae_of_another_width_is_refused(setup):
    from sae_lens import StandardSAE, StandardSAEConfig

    model, _, _ = setup
    other = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    with pytest.raises(ValueError, match="d_in=32 for a model with d_model=64"):
        latent_steering_vector(model, other, 0, site=SITE)


def test_cli_inspect_and_diff(setup, tmp_path):
    import json

    from workbench.cli import main

    model, sae, texts = setup
    wb.sae.save_sae(wb.sae.load_sae(sae, model), tmp_path / "sae")
    lines = [t.split("\n")[0] for t in texts[:30]]  # one text a line
    (tmp_path / "texts.txt").write_text("\n".join(lines))
    assert main(["sae", "inspect", "--model", "tiny-llama", "--sae", str(tmp_path / "sae"), "--latents", "3,5",
                 "--texts", str(tmp_path / "texts.txt"), "--top-k", "4", "--out", str(tmp_path / "pages")]) == 0
    reports = json.loads((tmp_path / "pages" / "latents.json").read_text())
    z = read_latents(model, sae, lines)
    assert [r["latent"] for r in reports] == [3, 5]
    assert reports[0]["density"] == pytest.approx(float((z[:, 3] > 0).float().mean()))
    assert (tmp_path / "pages" / "latent-5.html").stat().st_size > 1e6
    # the model against itself: every latent's change is zero
    assert main(["sae", "diff", "--model", "tiny-llama", "--finetuned", "tiny-llama", "--sae", str(tmp_path / "sae"),
                 "--texts", str(tmp_path / "texts.txt"), "--top", "5", "--out", str(tmp_path / "diff.json")]) == 0
    top = json.loads((tmp_path / "diff.json").read_text())["top"]
    assert len(top) == 5 and all(r["delta"] == 0.0 for r in top)


@pytest.mark.slow
def test_committed_sae_steering_raises_each_latent(default_model):
    """On the default model with the shipped SAE: adding 8 x a latent's decoder row raises that latent, for latents
    of different frequencies."""
    sae = wb.sae.default_sae(default_model)
    texts = _texts(16)
    z0 = read_latents(default_model, sae, texts)
    freq = (z0 > 0).float().mean(0)
    alive = freq.nonzero()[:, 0]
    picks = alive[freq[alive].argsort()][torch.linspace(0, len(alive) - 1, 4).long()].tolist()  # rare .. common
    for i in picks:
        vec = latent_steering_vector(default_model, sae, i)
        z1 = read_latents(default_model, sae, texts, interventions=vec.interventions(default_model, 8.0))
        assert z1[:, i].mean() > z0[:, i].mean() + 0.1, (i, float(z0[:, i].mean()), float(z1[:, i].mean()))
