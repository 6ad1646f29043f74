"""Every feature on every family (tiny seeded 2-layer models): TransformerLens's bridge agrees where it supports
the family; steering, probes, CAFT and ROME do what they are for, or refuse saying what is missing.

Each test asserts an effect a broken family adapter would lose: a planted direction steers one prompt into
another, a probe reads a token the model was given, the CAFT ablation stops the gradient along its subspace,
a ROME edit raises its target's log-probability.
"""
import copy
import random

import pytest
import torch

import probes
import workbench as wb
from workbench.core.sites import COMPONENTS
from workbench.core.tiny import TINY_FAMILIES

from conftest import IOI_CLEAN, IOI_CORRUPT, assert_no_hooks, tl_bridge

# TransformerLens 3.9's TransformerBridge has no adapter for these (model_type gemma3_text, olmo2)
NO_BRIDGE = ("gemma3", "olmo2")
BRIDGE = [f for f in TINY_FAMILIES if f not in NO_BRIDGE]
HOOKS = [v[0] for v in COMPONENTS.values()]


@pytest.mark.parametrize("family", BRIDGE)
def test_cache_and_resid_grid_match_transformer_lens_bridge(tiny, family):
    """Our cache equals the bridge's at every hook we share (1e-4), and our resid_pre grid equals TransformerLens's
    get_act_patch_resid_pre (one forward per cell) on the same weights."""
    from transformer_lens import patching

    m = tiny(family)
    bridge = tl_bridge(m)
    clean, corrupt = m.to_tokens(IOI_CLEAN), m.to_tokens(IOI_CORRUPT)
    logits, cache = m.run_with_cache(clean)
    tl_logits, tl_cache = bridge.run_with_cache(clean)
    assert (logits - tl_logits).abs().max() < 1e-4
    for layer in range(m.dims.n_layers):
        for hook in HOOKS:
            key = f"blocks.{layer}.{hook}"
            if key not in cache:  # Mixtral: no mlp.hook_post (no single down projection)
                assert m.arch.moe and hook == "mlp.hook_post"
                continue
            # The bridge exposes post-rotary queries/keys (hook_rot_q/k) only for some rotary families; GPT-2 has
            # no rotary, so its hook_q/k are what the kernel gets; NeoX, Phi-3 and GPT-J rotate with no hook after.
            theirs = key if key in tl_cache else key.replace("hook_rot_", "hook_") if family == "gpt2" else None
            if theirs is None:
                assert hook in ("attn.hook_rot_q", "attn.hook_rot_k"), key
                continue
            assert cache[key].shape == tl_cache[theirs].shape, key
            assert (cache[key] - tl_cache[theirs]).abs().max() < 1e-4, key
    a, f = m.to_single_token(" Mary"), m.to_single_token(" John")
    ours = wb.patching.activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John")["resid_pre"]
    tl = patching.get_act_patch_resid_pre(bridge, corrupt, tl_cache, lambda lg: (lg[:, -1, a] - lg[:, -1, f]).mean())
    assert (torch.as_tensor(ours.values) - tl).abs().max() < 1e-4
    assert_no_hooks(m)


@pytest.mark.parametrize("family", NO_BRIDGE)
def test_bridge_still_lacks_these_families(tiny, family):
    """Recorded so the list above is revisited when TransformerLens adds them."""
    with pytest.raises(ValueError, match="Could not determine supported architecture"):
        tl_bridge(tiny(family))


WORDS = [" cat", " dog", " house", " tree", " car", " book", " river", " table"]
OTHERS = [" red", " blue", " green", " old", " new", " big", " small", " happy"]
PREFIXES = ["I saw a", "Yesterday we found the", "The", "Look at that"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_steering_moves_one_prompt_onto_its_pair(tiny, family):
    """Plant u: embed(other_i) = embed(word_i) - u (+ small noise). The layer-0 steering vector built from the
    pairs is u (as resid_pre sees it), and adding it at the last position of a negative prompt gives the
    positive prompt's logits."""
    m = copy.deepcopy(tiny(family))
    g = torch.Generator().manual_seed(0)
    u = torch.randn(m.dims.d_model, generator=g)
    emb = m.module("embed").weight
    with torch.no_grad():
        for a, b in zip(WORDS, OTHERS):
            emb[m.to_single_token(b)] = emb[m.to_single_token(a)] - u + 1e-3 * torch.randn(m.dims.d_model, generator=g)
    pos = [PREFIXES[i % len(PREFIXES)] + w for i, w in enumerate(WORDS)]
    neg = [PREFIXES[i % len(PREFIXES)] + w for i, w in enumerate(OTHERS)]
    sv = wb.steering.build_steering_vector(m, pos, neg, layers=[0])
    assert torch.nn.functional.cosine_similarity(sv.vectors[0], u, dim=0) > 0.999
    last = m.to_tokens(neg[0]).shape[1] - 1
    with torch.no_grad():
        want, plain = m.hf(input_ids=m.to_tokens(pos[0])).logits[0, -1], m.hf(input_ids=m.to_tokens(neg[0])).logits[0, -1]
        with wb.steering.steer(m, sv, 1.0, positions=[last]):
            steered = m.hf(input_ids=m.to_tokens(neg[0])).logits[0, -1]
    assert (steered - want).abs().max() < 0.1 * (plain - want).abs().max()
    assert_no_hooks(m)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_probe_reads_the_last_word(tiny, family):
    """Label = which of two words ends the prompt (after prefixes of different lengths, so batches are padded):
    a logistic-regression probe on the last token's resid_pre at layer 1 is exact on held-out texts; with
    shuffled labels it is not."""
    m = tiny(family)
    fills = ["big", "small", "old", "new", "tall", "short", "red", "blue"]
    texts, labels = [], []
    for i, fill in enumerate(fills * 3):
        for animal in (" cat", " dog"):
            texts.append(f"{'Once upon a time ' * (i % 3)}The {fill} thing is a{animal}")
            labels.append(animal.strip())
    acts = wb.directions.read_activations(m, texts, [1])
    assert probes.train_probes(acts, labels).accuracy(1) == 1.0
    shuffled = random.Random(0).sample(labels, len(labels))
    assert probes.train_probes(acts, shuffled).accuracy(1) < 0.8


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_caft_ablation_stops_the_gradient_and_lora_trains(tiny, family):
    """CAFT's guarantee on this family: with a subspace projected out of resid_pre[1], the loss gradient at
    resid_post[0] has no component along it (it has one without the ablation); and LoRA fine-tuning through
    the ablation hook runs on the family's linear layers and changes the model."""
    from workbench.directions import caft

    m = tiny(family)
    basis = wb.orthonormalize(torch.randn(2, m.dims.d_model, generator=torch.Generator().manual_seed(0)))
    ids = m.to_tokens(["The cat sat on the mat", "A dog ran in the park"])
    along = {}
    for ablate in (False, True):
        ivs = caft.ablations({1: basis}) if ablate else []
        logits, cache = m.run_with_cache(ids, ["blocks.0.hook_resid_post"], interventions=ivs, grad=True)
        h = cache["blocks.0.hook_resid_post"]
        h.retain_grad()
        logits[:, -1].log_softmax(-1)[:, 42].sum().backward()
        along[ablate] = float((h.grad @ basis.T).norm() / h.grad.norm())
    m.hf.zero_grad(set_to_none=True)
    assert along[False] > 1e-3 and along[True] < 1e-6
    examples = [{"prompt": f"The {c} thing is a", "answer": " A" if c == "red" else " B", "choices": [" A", " B"]}
                for c in ("red", "blue") * 4]
    ft = caft.finetune(m, examples, ablate=caft.ablations({1: basis}),
                       config=caft.FinetuneConfig(method="lora", steps=2, lr=1e-2, batch_size=4))
    with torch.no_grad():
        assert not torch.allclose(ft.hf(input_ids=ids).logits, m.hf(input_ids=ids).logits)
    assert_no_hooks(m), assert_no_hooks(ft)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_rome_raises_the_target_or_refuses(tiny, family):
    """ROME at layer 0 (C = identity: the rank-one update still maps k* to v*) raises the target's log-prob on
    the prompt (on random 2-layer weights by 0.4 to 2.6 nats in 10 steps, not enough to make it the argmax), on
    post-norm families too (the value is optimised before the post-norm), and applying then removing the edit
    restores the weights bit-exactly. Mixtral refuses ROME and MEMIT (no single down projection); MEMIT on the
    post-norm families is `test_memit_on_post_norm_families`."""
    from workbench.editing import EditRequest, memit, rome
    from workbench.editing.requests import target_logprobs

    m = tiny(family)
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    if m.arch.moe:
        for edit in (lambda: rome(m, req, 0, prefixes=[""], C=torch.eye(m.dims.d_mlp), steps=2),
                     lambda: memit(m, [req], [0], prefixes=[""], Cs={0: torch.eye(m.dims.d_mlp)}, steps=2)):
            with pytest.raises(ValueError, match="a mixture-of-experts MLP has no single down projection"):
                edit()
        return
    weights = {k: v.clone() for k, v in m.hf.state_dict().items()}
    edit = rome(m, req, 0, prefixes=[""], C=torch.eye(m.dims.d_mlp), steps=10)
    before = target_logprobs(m, [req.prompt], [" Rome"])
    with edit.applied(m, check=False):
        after = target_logprobs(m, [req.prompt], [" Rome"])
    assert (after > before + 0.3).all(), (float(before), float(after))
    assert all(torch.equal(v, weights[k]) for k, v in m.hf.state_dict().items())
    assert_no_hooks(m)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "olmo2"])
def test_ft_l_on_post_norm_families(tiny, family):
    """FT-L trains the down projection through the post-norm: the target's log-prob rises, restore is bit-exact."""
    from workbench.editing import EditRequest
    from workbench.editing.ftl import ft_l
    from workbench.editing.requests import target_logprobs

    m = tiny(family)
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    weights = {k: v.clone() for k, v in m.hf.state_dict().items()}
    edit = ft_l(m, req, 0, steps=10, lr=1e-2, eps=5e-2)
    assert all(torch.equal(v, weights[k]) for k, v in m.hf.state_dict().items())  # ft_l restores before returning
    before = target_logprobs(m, [req.prompt], [" Rome"])
    with edit.applied(m, check=False):
        after = target_logprobs(m, [req.prompt], [" Rome"])
    assert (after > before + 0.3).all(), (float(before), float(after))
    assert all(torch.equal(v, weights[k]) for k, v in m.hf.state_dict().items())
    assert_no_hooks(m)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "olmo2"])
def test_frozen_norm_preimage_inverts_frozen_norm(tiny, family):
    """damping 0: dy = r * s(y) / g is the change of the post-norm's input that frozen_norm maps to r (1e-5 relative,
    with the module's own gain: Gemma's 1 + weight); a channel with g = 0 gets dy = 0. damping > 0: dy minimises
    |a * dy - r|^2 + mu |dy|^2 (a = g / s(y), mu = damping * mean(a^2)): its gradient vanishes. A LayerNorm (whose
    frozen map centres) is refused."""
    from workbench.core.arch import frozen_norm, frozen_norm_preimage, norm_gain, norm_kind

    m = tiny(family)
    norm = copy.deepcopy(m.module("mlp_out", 1))
    g = torch.Generator().manual_seed(0)
    y, r = torch.randn(3, m.dims.d_model, generator=g) * 5, torch.randn(3, m.dims.d_model, generator=g)
    back = frozen_norm(norm, y, frozen_norm_preimage(norm, y, r))
    assert ((back - r).abs().max() / r.abs().max()) < 1e-5
    with torch.no_grad():  # a dead channel: the gain is c + weight (c = 1 on Gemma, 0 on OLMo 2), so this zeroes it
        norm.weight[5] -= norm_gain(norm)[5]
    assert norm_gain(norm)[5].abs() < 1e-6
    dy = frozen_norm_preimage(norm, y, r)
    assert torch.isfinite(dy).all() and (dy[:, 5] == 0).all()
    a = norm_gain(norm).double() / (y.double().pow(2).mean(-1, keepdim=True) + norm_kind(norm)[1]).sqrt()
    mu = 0.1 * a.pow(2).mean(-1, keepdim=True)
    dy = frozen_norm_preimage(norm, y.double(), r.double(), 0.1)
    grad = 2 * a * (a * dy - r.double()) + 2 * mu * dy
    assert grad.abs().max() < 1e-9
    with pytest.raises(ValueError, match="expected an RMSNorm"):
        frozen_norm_preimage(torch.nn.LayerNorm(m.dims.d_model), y, r)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "olmo2", "llama"])
def test_memit_on_post_norm_families(tokenizer, family):
    """MEMIT of 3 requests over layers 0-2 of a 4-layer tiny model (C = I, lambda 1, |delta| <= |h0|, the default
    damping): every target's log-prob rises on its prompt (measured 0.56-1.37 nats on the post-norm families; the
    value optimisation itself reaches 0.85-1.77 on these random weights), h^L ends near z through each layer's
    frozen post-norm (relative residual |z - h^L| / |z - h^L_0| measured 0.08-0.19 there, 0.03 on Llama; with the
    default clamp of 4 |h0| it is 0.46-0.60 on the post-norm families: a layer adds N(y), whose norm hardly depends
    on y, so far targets are out of reach) and restoring the edit is bit-exact. Llama is the pre-norm control."""
    from workbench.editing import EditRequest, memit
    from workbench.editing.requests import target_logprobs

    m = wb.tiny_model(family, n_layers=4, tokenizer=copy.deepcopy(tokenizer))
    reqs = [EditRequest("The capital of France is the city of", "France", " Rome"),
            EditRequest("The capital of Japan is the city of", "Japan", " Cairo"),
            EditRequest("Messi plays the sport of", "Messi", " tennis")]
    weights = {k: v.clone() for k, v in m.hf.state_dict().items()}
    layers = [0, 1, 2]
    edit = memit(m, reqs, layers, prefixes=[""], Cs={l: torch.eye(m.dims.d_mlp) for l in layers}, lam=1.0, steps=30,
                 clamp_norm=1.0)
    assert all(torch.equal(v, weights[k]) for k, v in m.hf.state_dict().items())  # memit restores before returning
    assert edit.meta["post_norm"] == (family != "llama")
    assert max(edit.meta["relative_residual"]) < 0.3, edit.meta["relative_residual"]
    prompts, targets = [r.prompt for r in reqs], [r.target for r in reqs]
    before = target_logprobs(m, prompts, targets)
    with edit.applied(m, check=False):
        after = target_logprobs(m, prompts, targets)
    assert (after > before + 0.3).all(), (before.tolist(), after.tolist())
    assert all(torch.equal(v, weights[k]) for k, v in m.hf.state_dict().items())
    assert_no_hooks(m)
