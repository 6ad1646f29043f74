"""Analysis methods: logit lens, direct logit attribution, path patching, DAS, cross-model patching."""
import pytest
import torch

import workbench as wb
from workbench.lenses import decompose_resid, direct_logit_attribution, lens_logits, logit_lens
from workbench.core.sites import Site
from workbench.core.tiny import TINY_FAMILIES

from conftest import IOI_CLEAN, IOI_CORRUPT, assert_no_hooks

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_logit_lens_last_layer_is_the_model(tiny, family):
    """On every family, soft-capped final logits (tiny Gemma 2 / 3) included."""
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


def _uncapped_logits(model, ids):
    """The model's logits before any final soft-capping: lm_head's output in its own forward (a raw hook)."""
    seen = {}
    handle = model.module("unembed").register_forward_hook(lambda mod, args, out: seen.setdefault("x", out.detach()))
    try:
        with torch.no_grad():
            capped = model.hf(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()
    return seen["x"], capped


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("by_head", [True, False])
def test_dla_sums_to_logit_diff(tiny, family, by_head):
    """The identity on every family: post-norm heads (Gemma 2/3, OLMo 2) and Gemma's 1 + weight gains included;
    soft-capped families decompose the logits before the cap (read here from lm_head's own output)."""
    model = tiny(family)
    prompts, answers, foils = [IOI_CLEAN, IOI_CORRUPT, "The capital of France is"], [" Mary", " John", " Paris"], [" John", " Mary", " London"]
    res = direct_logit_attribution(model, prompts, answers, foils, by_head=by_head)
    actual = torch.tensor(res.meta["logit_diff"])
    total = torch.tensor(res.values.sum(1))
    assert torch.allclose(total, actual, atol=1e-4), (total, actual)
    assert actual.abs().max() > 1e-2  # a non-trivial difference
    for i, (p, a, f) in enumerate(zip(prompts, answers, foils)):
        uncapped, capped = _uncapped_logits(model, model.to_tokens(p))
        a, f = model.to_single_token(a), model.to_single_token(f)
        assert abs(uncapped[0, -1, a] - uncapped[0, -1, f] - actual[i]) < 1e-4
        assert abs(capped[0, -1, a] - capped[0, -1, f] - res.meta["model_logit_diff"][i]) < 1e-4
    # no single component carries it all (tiny Gemma's attributions used to sum to 0 with a zero gain)
    assert (abs(res.values[:, :-1]) > 1e-3).sum() > 3
    labels = res.coords["component"]
    L, H = model.dims.n_layers, model.dims.n_heads
    assert ("pos_embed" in labels) == (family == "gpt2")
    if by_head:
        assert sum(lab.startswith("L") for lab in labels) == L * H
        assert ("0_attn_bias" in labels) == (getattr(model.module("attn_out_proj", 0), "bias", None) is not None)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_decompose_resid_heads_sum_to_attn_out(tiny, family):
    model = tiny(family)
    stack, labels, final = decompose_resid(model, PROMPTS)
    assert torch.allclose(stack.sum(0), final, atol=1e-5)
    ids, mask = model.encode(PROMPTS)
    last = model.last_positions(ids, mask)
    _, cache = model.run_with_cache(ids, [Site(1, "attn_out")], attention_mask=mask)
    heads = [i for i, lab in enumerate(labels) if lab.startswith("L1H") or lab == "1_attn_bias"]
    assert torch.allclose(stack[heads].sum(0), cache["blocks.1.hook_attn_out"][torch.arange(2), last], atol=1e-5)


# -- path patching ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny3(tokenizer):
    import copy

    made = {}

    def get(family):
        if family not in made:
            made[family] = wb.tiny_model(family, n_layers=3, tokenizer=copy.deepcopy(tokenizer))
        return made[family]
    return get


def _first_arg_hook(fn):
    """A raw forward pre-hook rewriting a module's first input (positional or `hidden_states`)."""
    def hook(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
    return hook


def reference_path_patching(model, clean, corrupt, answer, foil, sender, recv_layer, recv_heads, positions, proj=None):
    """Wang et al.'s three forwards (after the two caches) with raw torch hooks, one sender (list of
    (layer, head or None)), receivers at one layer; returns the logit difference of the final run.
    proj: 'q_proj', 'k_proj' or 'v_proj' (Llama): patch only that projection's output, computed from the
    recorded input, instead of the attention input (the query / key / value path)."""
    L, dh = model.dims.n_layers, model.dims.d_head
    clean_ids, corr_ids = model.to_tokens(clean), model.to_tokens(corrupt)
    a, f = model.to_single_token(answer), model.to_single_token(foil)

    def run(ids, pre=(), post=()):
        handles = [model.module(role, l).register_forward_pre_hook(h, with_kwargs=True) for role, l, h in pre]
        handles += [model.module(role, l).register_forward_hook(h) for role, l, h in post]
        try:
            with torch.no_grad():
                logits = model.hf(input_ids=ids, use_cache=False).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        return logits[a] - logits[f]

    def caches(ids):
        z, mlp = {}, {}
        def keep_z(l):
            return _first_arg_hook(lambda x: z.setdefault(l, x.clone()))
        def keep_mlp(l):
            def hook(mod, args, out):
                mlp[l] = out.clone()
            return hook
        run(ids, [("attn_out_proj", l, keep_z(l)) for l in range(L)], [("mlp", l, keep_mlp(l)) for l in range(L)])
        return z, mlp

    (cz, cm), (xz, xm) = caches(clean_ids), caches(corr_ids)
    # forward 1: sender from the corrupted run, everything else frozen at clean; record the receivers' input
    def z_frozen(l):
        def fn(x):
            new = cz[l].clone()
            for sl, sh in sender:
                if sl == l and sh is not None:
                    new[..., sh * dh:(sh + 1) * dh] = xz[l][..., sh * dh:(sh + 1) * dh]
            return new
        return _first_arg_hook(fn)
    def mlp_frozen(l):
        return lambda mod, args, out: (xm[l] if (l, None) in sender else cm[l]).clone()
    recorded = {}
    record = _first_arg_hook(lambda x: recorded.setdefault("x", x.clone()))
    logits_direct = run(clean_ids, [("attn_out_proj", l, z_frozen(l)) for l in range(L)] + [("attn", recv_layer, record)],
                        [("mlp", l, mlp_frozen(l)) for l in range(L)])
    # forward 2: only the receivers' input patched; the layer's other heads at their clean values
    def patch_in(x):
        x = x.clone()
        pos = slice(None) if positions is None else positions
        x[:, pos] = recorded["x"][:, pos]
        return x
    def keep_others(x):
        x = x.clone()
        for h in range(model.dims.n_heads):
            if h not in recv_heads:
                x[..., h * dh:(h + 1) * dh] = cz[recv_layer][..., h * dh:(h + 1) * dh]
        return x
    if proj is None:
        final = run(clean_ids, [("attn", recv_layer, _first_arg_hook(patch_in)),
                                ("attn_out_proj", recv_layer, _first_arg_hook(keep_others))])
        return final.item(), logits_direct.item()
    module = getattr(model.module("attn", recv_layer), proj)

    def patch_proj(mod, args, out):
        out = out.clone()
        pos = slice(None) if positions is None else positions
        with torch.no_grad():
            out[:, pos] = torch.nn.functional.linear(recorded["x"], mod.weight, mod.bias)[:, pos]  # not mod(): its hook
        return out
    handle = module.register_forward_hook(patch_proj)
    try:
        final = run(clean_ids, [("attn_out_proj", recv_layer, _first_arg_hook(keep_others))])
    finally:
        handle.remove()
    return final.item(), logits_direct.item()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_path_patching_matches_three_forward_reference(tiny3, family):
    from workbench.patching import path_patching

    model = tiny3(family)
    senders = ["L0H1", "mlp0", "L1H2", ["L0H0", "L1H3", "mlp1"]]
    parsed = [[(0, 1)], [(0, None)], [(1, 2)], [(0, 0), (1, 3), (1, None)]]
    for receivers, heads, positions in ((["L2H0", "L2H3"], [0, 3], None), (["L2H1"], [1], [-1])):
        res = path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders, receivers=receivers,
                            receiver_positions=positions)
        ref = [reference_path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", s, 2, heads, positions)[0]
               for s in parsed]
        assert torch.allclose(torch.tensor(res.values, dtype=torch.float32), torch.tensor(ref), atol=1e-4), (res.values, ref)
        # the path effect is real: it moves the metric away from the clean run's
        assert max(abs(v - res.meta["clean_metric"]) for v in res.values) > 1e-3
    direct = path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders, receivers="logits")
    ref = [reference_path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", s, 2, [0], None)[1] for s in parsed]
    assert torch.allclose(torch.tensor(direct.values, dtype=torch.float32), torch.tensor(ref), atol=1e-4)
    assert_no_hooks(model)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_query_key_value_receiver_paths_match_reference(tiny3, receiver_input):
    """Only the receiver heads' queries (keys, values) read the patched input: equal to a raw-hook reference
    patching that projection's output of Llama (grouped-query: 4 query heads share 2 key/value heads)."""
    from workbench.patching import path_patching

    model = tiny3("llama")
    senders = ["L0H1", "mlp0", "L1H2", ["L0H0", "L1H3", "mlp1"]]
    parsed = [[(0, 1)], [(0, None)], [(1, 2)], [(0, 0), (1, 3), (1, None)]]
    effects = {}
    for heads, positions in (([0, 3], None), ([1], [-1])):
        res = path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders,
                            receivers=[f"L2H{h}" for h in heads], receiver_positions=positions,
                            receiver_input=receiver_input)
        ref = [reference_path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", s, 2, heads, positions,
                                       proj=f"{receiver_input}_proj")[0] for s in parsed]
        assert torch.allclose(torch.tensor(res.values, dtype=torch.float32), torch.tensor(ref), atol=1e-4), (res.values, ref)
        effects[tuple(heads)] = res
    # the path is not the full (q, k, v) path: the two differ
    full = path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders, receivers=["L2H0", "L2H3"])
    assert max(abs(a - b) for a, b in zip(full.values, effects[(0, 3)].values)) > 1e-4
    assert max(abs(v - full.meta["clean_metric"]) for v in effects[(0, 3)].values) > 1e-4
    with pytest.raises(ValueError, match="receiver_input: expected one of"):
        path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders, receivers=["L2H0"],
                      receiver_input="query")
    with pytest.raises(ValueError, match="needs receiver heads"):
        path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=senders, receiver_input="q")
    assert_no_hooks(model)


def test_path_patching_receivers_in_two_layers(tiny3):
    """Receivers at layers 1 and 2: the layer-2 heads that are not receivers keep the values they have in a
    run with only the layer-1 patches (a raw-hook reference of four forwards)."""
    from workbench.patching import path_patching

    model = tiny3("llama")
    L, H, dh = 3, model.dims.n_heads, model.dims.d_head
    clean_ids, corr_ids = model.to_tokens(IOI_CLEAN), model.to_tokens(IOI_CORRUPT)
    a, f = model.to_single_token(" John"), model.to_single_token(" Mary")
    res = path_patching(model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary", senders=["L0H2", "mlp0"],
                        receivers=["L1H0", "L2H1", "L2H3"])

    def run(ids, pre=()):
        handles = [model.module(role, l).register_forward_pre_hook(_first_arg_hook(fn), with_kwargs=True)
                   for role, l, fn in pre]
        try:
            with torch.no_grad():
                logits = model.hf(input_ids=ids, use_cache=False).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        return logits[a] - logits[f]

    def keep(store, key):
        return lambda x: store.setdefault(key, x.clone())

    clean_z, corr_z, clean_mlp, corr_mlp = {}, {}, {}, {}
    for ids, zs, ms in ((clean_ids, clean_z, clean_mlp), (corr_ids, corr_z, corr_mlp)):
        hs = [model.module("mlp", l).register_forward_hook(lambda m, a_, o, l=l, ms=ms: ms.setdefault(l, o.clone()))
              for l in range(L)]
        run(ids, [("attn_out_proj", l, keep(zs, l)) for l in range(L)])
        for h in hs:
            h.remove()
    for sender, mlp_sender in ((2, False), (None, True)):
        def frozen_z(l, sender=sender):
            def fn(x):
                new = clean_z[l].clone()
                if l == 0 and sender is not None:
                    new[..., sender * dh:(sender + 1) * dh] = corr_z[0][..., sender * dh:(sender + 1) * dh]
                return new
            return fn
        hs = [model.module("mlp", l).register_forward_hook(
            lambda m, a_, o, l=l, ms=mlp_sender: (corr_mlp if ms and l == 0 else clean_mlp)[l].clone()) for l in range(L)]
        rec = {}
        run(clean_ids, [("attn_out_proj", l, frozen_z(l)) for l in range(L)] + [("attn", l, keep(rec, l)) for l in (1, 2)])
        for h in hs:
            h.remove()

        def others(l, heads, source):
            def fn(x):
                x = x.clone()
                for h in range(H):
                    if h not in heads:
                        x[..., h * dh:(h + 1) * dh] = source[..., h * dh:(h + 1) * dh]
                return x
            return fn
        layer1 = [("attn", 1, lambda x: rec[1].clone()), ("attn_out_proj", 1, others(1, [0], clean_z[1]))]
        z2 = {}
        run(clean_ids, layer1 + [("attn_out_proj", 2, keep(z2, 2))])  # layer 2's own values with layer 1 patched
        final = run(clean_ids, layer1 + [("attn", 2, lambda x: rec[2].clone()), ("attn_out_proj", 2, others(2, [1, 3], z2[2]))])
        got = res.values[0 if sender is not None else 1]
        assert abs(got - final.item()) < 1e-4, (sender, got, final.item())
    assert_no_hooks(model)


def test_path_patching_bad_input(tiny3):
    from workbench.patching import path_patching

    model = tiny3("llama")
    args = (model, IOI_CLEAN, IOI_CORRUPT, " John", " Mary")
    with pytest.raises(ValueError, match="receivers: 'L1H0' .*before or with sender 'L1H2'"):
        path_patching(*args, senders=["L0H1", "L1H2"], receivers=["L1H0"])
    with pytest.raises(ValueError, match="receivers: 'mlp2' is an MLP"):
        path_patching(*args, senders=["L0H1"], receivers=["mlp2"])
    with pytest.raises(ValueError, match="senders: .*head 9 out of range"):
        path_patching(*args, senders=["L0H9"])
    with pytest.raises(ValueError, match="senders: expected 'L<layer>H<head>'"):
        path_patching(*args, senders=["head0"])
    with pytest.raises(ValueError, match="receiver_positions"):
        path_patching(*args, senders=["L0H1"], receivers=["L2H0"], receiver_positions=[99])


# -- subspace interchange and DAS --------------------------------------------------------------------

def planted_model(tokenizer, seed=1):
    """A tiny llama whose last MLP hidden state carries a binary variable along d* = (e0 - e1)/sqrt(2).

    The last token's embedding is +-4u (u a unit vector) plus a part orthogonal to u; attention writes
    nothing and MLP 0 writes nothing, so MLP 1 reads that embedding. Its neuron 0 is silu(u.x) u.x, large
    when the sign is +, neuron 1 the same for -u; every other neuron is 0. The down projection writes
    (h0 - h1) w0 (columns 0 and 1 are w0 and -w0, the others orthogonal to w0), and the unembedding of the
    tokens P and Q reads +-w0. So the output P-vs-Q is the variable, and it lives along d* only.
    """
    import copy

    m = wb.tiny_model("llama", n_layers=2, seed=seed, tokenizer=copy.deepcopy(tokenizer))
    assert not m.hf.config.tie_word_embeddings
    d = m.dims.d_model
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    plus, minus, P, Q = list(range(1000, 1008)), list(range(2000, 2008)), 3000, 3001
    with torch.no_grad():
        E = m.module("embed").weight
        for t, sign in [(t, 1) for t in plus] + [(t, -1) for t in minus]:
            E[t] += sign * 4.0 * u - (E[t] @ u) * u
        mlp = m.module("mlp", 1)
        mlp.gate_proj.weight.zero_()
        mlp.up_proj.weight.zero_()
        for row, sign in ((0, 1), (1, -1)):
            mlp.gate_proj.weight[row] = sign * u
            mlp.up_proj.weight[row] = sign * u
        W = mlp.down_proj.weight  # [d_model, d_mlp]
        W[:, 1] = -W[:, 0]
        w0 = W[:, 0] / W[:, 0].norm()
        W[:, 2:] -= w0[:, None] * (w0 @ W[:, 2:])[None]
        for l in range(2):
            m.module("attn_out_proj", l).weight.zero_()
        m.module("mlp_down", 0).weight.zero_()
        U = m.module("unembed").weight
        U[P], U[Q] = 0.1 * w0, -0.1 * w0
    true = torch.zeros(m.dims.d_mlp)
    true[0], true[1] = 2 ** -0.5, -(2 ** -0.5)
    return m, plus, minus, P, Q, true


def planted_pairs(plus, minus, P, Q, n, seed):
    g = torch.Generator().manual_seed(seed)

    def prompts():
        ctx = torch.randint(5000, 6000, (n, 4), generator=g)
        var = torch.randint(0, 2, (n,), generator=g)
        pick = torch.randint(0, 8, (n,), generator=g)
        last = torch.where(var == 1, torch.tensor(plus)[pick], torch.tensor(minus)[pick])
        return torch.cat([ctx, last[:, None]], 1), var

    (base, base_var), (source, source_var) = prompts(), prompts()
    return base, source, [P if v else Q for v in source_var.tolist()], base_var, source_var


SITE = "blocks.1.mlp.hook_post"


def test_das_recovers_planted_variable(tokenizer):
    from workbench.directions import das, interchange_accuracy
    from workbench.directions.subspace import candidate_logits, prepare

    torch.manual_seed(0)
    model, plus, minus, P, Q, true = planted_model(tokenizer)
    base, source, labels, base_var, source_var = planted_pairs(plus, minus, P, Q, 256, seed=0)
    with torch.no_grad():
        logits = candidate_logits(model, base, torch.tensor([P, Q]))
        assert torch.allclose(logits[:8], model(base[:8])[:, -1, [P, Q]], atol=1e-5)
    assert ((logits[:, 0] > logits[:, 1]).long() == base_var).all()  # the model computes the variable
    test = (base[128:], source[128:], labels[128:])
    # the planted direction, fixed: the interchange is exact
    assert interchange_accuracy(model, prepare(model, SITE, *test, [P, Q]), true[None]) == 1.0
    res = das(model, SITE, base[:128], source[:128], labels[:128], [P, Q], steps=100, lr=1e-2, eval_data=test)
    cos = (res.basis[0] @ true).abs().item()
    print(f"DAS: cosine {cos:.3f}, interchange accuracy {res.accuracy:.3f}, control {res.control}")
    assert cos >= 0.95 and res.accuracy >= 0.95
    # the control: the learned direction's connected part carries the effect, its disconnected part none
    agree = (base_var[128:] == source_var[128:]).float().mean().item()  # accuracy of patching nothing
    assert res.control["connected_norm"] >= 0.95
    assert res.control["accuracy_connected"] >= 0.95
    assert res.control["accuracy_disconnected"] is None or abs(res.control["accuracy_disconnected"] - agree) < 0.05
    assert_no_hooks(model)


def test_rowspace_split_and_subspace_checks(tiny):
    from workbench.directions import SubspaceReplace, rowspace_split
    from workbench.core.arch import weight_out_in

    model = tiny("llama")
    v = torch.randn(model.dims.d_mlp)
    connected, disconnected = rowspace_split(model, "blocks.0.mlp.hook_post", v)
    W = weight_out_in(model.module("mlp_down", 0)).detach()
    assert torch.allclose(connected + disconnected, v, atol=1e-5)
    assert (W @ disconnected).abs().max() < 1e-4  # the disconnected part writes nothing
    assert torch.allclose(W @ connected, W @ v, atol=1e-4)
    ids = model.to_tokens(IOI_CLEAN)
    with pytest.raises(ValueError, match=r"basis: expected a float tensor of shape \[k, 64\]"):
        model.run_with_interventions(ids, [SubspaceReplace("blocks.0.hook_resid_pre", basis=torch.eye(128)[:1],
                                                           source=torch.zeros(64))])
    with pytest.raises(ValueError, match="orthonormal"):
        model.run_with_interventions(ids, [SubspaceReplace("blocks.0.hook_resid_pre", basis=2 * torch.eye(64)[:1],
                                                           source=torch.zeros(64))])
    with pytest.raises(ValueError, match="site: the row-space control"):
        rowspace_split(model, "blocks.0.hook_resid_pre", torch.randn(64))
    # an interchange along a full basis is a full patch; along nothing of the difference, no patch
    _, cache = model.run_with_cache(model.to_tokens(IOI_CORRUPT), ["blocks.1.hook_resid_pre"])
    src = cache["blocks.1.hook_resid_pre"]
    full = model.run_with_interventions(ids, [SubspaceReplace("blocks.1.hook_resid_pre", basis=torch.eye(64), source=src)])
    assert torch.allclose(full, model(model.to_tokens(IOI_CORRUPT)), atol=1e-4)


# -- cross-model patching ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls are fastest on one thread, and a shared machine thrashes with more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cross_model_patching_matches_plain_loop(tiny, tokenizer, family):
    import copy

    from workbench.patching import cross_model_patching

    base = tiny(family)
    tuned = wb.tiny_model(family, seed=7, tokenizer=copy.deepcopy(tokenizer))
    prompts = [IOI_CLEAN, IOI_CORRUPT]
    res = cross_model_patching(base, tuned, prompts, [" Mary", " John"], [" John", " Mary"],
                               components=["resid_pre", "mlp_out"], per_pair=True)
    ids = base.to_tokens(prompts)
    a = torch.tensor([base.to_single_token(" Mary"), base.to_single_token(" John")])
    f = torch.tensor([a[1], a[0]])
    rows = torch.arange(2)
    for comp, arr in res.items():
        L, T = base.dims.n_layers, ids.shape[1]
        assert arr.shape == (2, L, T)
        _, src = tuned.run_with_cache(ids, [Site(l, comp) for l in range(L)])
        for layer in range(L):
            name = Site(layer, comp).name
            for p in range(T):
                logits = base.run_with_interventions(ids, [wb.Replace(name, positions=[p], value=src[name][:, p:p + 1])])
                ld = logits[rows, -1, a] - logits[rows, -1, f]
                assert torch.allclose(torch.tensor(arr.values[:, layer, p]), ld, atol=1e-4), (comp, layer, p)
    with torch.no_grad():
        lt, lb = tuned(ids)[:, -1], base(ids)[:, -1]
    assert abs(res["resid_pre"].meta["source_metric"] - (lt[rows, a] - lt[rows, f]).mean().item()) < 1e-4
    assert abs(res["resid_pre"].meta["target_metric"] - (lb[rows, a] - lb[rows, f]).mean().item()) < 1e-4
    back = cross_model_patching(base, tuned, prompts, [" Mary", " John"], [" John", " Mary"], direction="base_into_tuned")
    assert abs(back["resid_pre"].meta["target_metric"] - res["resid_pre"].meta["source_metric"]) < 1e-4


def test_cross_model_patching_refuses_other_shapes(tiny, tokenizer):
    import copy

    from workbench.patching import cross_model_patching

    other = wb.tiny_model("llama", d_model=32, tokenizer=copy.deepcopy(tokenizer))
    with pytest.raises(ValueError, match="tuned: models of different shapes.*d_model=64.*d_model=32"):
        cross_model_patching(tiny("llama"), other, IOI_CLEAN, " Mary", " John")
    with pytest.raises(ValueError, match="direction"):
        cross_model_patching(tiny("llama"), tiny("llama"), IOI_CLEAN, " Mary", " John", direction="sideways")


# -- tuned lens -------------------------------------------------------------------------------------

def _texts():
    from pathlib import Path

    lines = [l.strip() for l in (Path(wb.__file__).parent.parent / "README.md").read_text().splitlines()]
    return [l for l in lines if len(l.split()) > 8][:120]


def test_tuned_lens_trains_resumes_and_starts_as_logit_lens(tiny, tmp_path):
    from workbench.lenses import TunedLens, lens_kl, load_tuned_lens, logit_lens, train_tuned_lens

    model = tiny("llama")
    texts = _texts()
    train, test = texts[:90], texts[90:]
    untrained = TunedLens(model.dims.d_model, model.dims.n_layers)
    a = logit_lens(model, PROMPTS, [" Paris", " Mary"], tuned=untrained)
    b = logit_lens(model, PROMPTS, [" Paris", " Mary"])
    assert (a["prob"].values == b["prob"].values).all()  # zero translators: the logit lens
    kw = dict(lr=1e-2, batch_size=4, max_len=16)
    lens, losses = train_tuned_lens(model, train, steps=12, **kw)
    before, after = lens_kl(model, test, None, 16), lens_kl(model, test, lens, 16)
    print(f"held-out KL(model || lens) at layer 0: logit lens {before[0]:.4f}, tuned lens {after[0]:.4f}")
    assert after[0] < 0.9 * before[0] and abs(after[-1]) < 1e-5 and abs(before[-1]) < 1e-5
    # stopped after 4 steps and resumed to 8 = one run of 8 steps
    path = tmp_path / "lens.safetensors"
    one, _ = train_tuned_lens(model, train, steps=8, **kw)
    train_tuned_lens(model, train, steps=4, path=path, save_every=2, **kw)
    two, resumed = train_tuned_lens(model, train, steps=8, path=path, save_every=2, **kw)
    assert len(resumed) == 4 and torch.allclose(one.A, two.A, atol=1e-6) and torch.allclose(one.b, two.b, atol=1e-6)
    loaded, meta, _ = load_tuned_lens(path, model)
    assert meta["step"] == "8" and torch.equal(loaded.A, two.A.detach())
    with pytest.raises(ValueError, match="path: .* was trained with"):
        train_tuned_lens(model, train, steps=9, path=path, lr=1e-3, batch_size=4, max_len=16)
    with pytest.raises(ValueError, match="path: .* was trained on model"):
        load_tuned_lens(path, tiny("gpt2"))
    with pytest.raises(ValueError, match="steps"):
        train_tuned_lens(model, train, steps=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attn_in_site_patches_on_both_engine_paths(tiny, family):
    """The new site `blocks.{l}.attn.hook_in` (attention input, the ln1 output) is a grid component like the others."""
    model = tiny(family)
    grids = [wb.patching.activation_patching(model, IOI_CLEAN, IOI_CORRUPT, " Mary", " John", components="attn_in",
                                    path=p)["attn_in"] for p in ("suffix", "full")]
    assert abs(grids[0].values - grids[1].values).max() < 1e-4
    _, cache = model.run_with_cache(model.to_tokens(IOI_CLEAN), ["blocks.1.attn.hook_in"])
    last = cache["blocks.1.attn.hook_in"].shape[1] - 1  # the prompts differ before it, so the patch matters
    value = cache["blocks.1.attn.hook_in"][:, last:]
    logits = model.run_with_interventions(model.to_tokens(IOI_CORRUPT), [wb.Replace("blocks.1.attn.hook_in", positions=[last],
                                                                                     value=value)])[0, -1]
    ld = (logits[model.to_single_token(" Mary")] - logits[model.to_single_token(" John")]).item()
    assert abs(grids[0].values[1, last] - ld) < 1e-4 and abs(ld - grids[0].meta["corrupted_metric"]) > 1e-3
    with torch.no_grad():
        resid = model.run_with_cache(model.to_tokens(IOI_CLEAN), ["blocks.0.hook_resid_pre"])[1]["blocks.0.hook_resid_pre"]
        ln1 = model.module("ln1", 0)(resid)
    _, c0 = model.run_with_cache(model.to_tokens(IOI_CLEAN), ["blocks.0.attn.hook_in"])
    assert torch.allclose(c0["blocks.0.attn.hook_in"], ln1, atol=1e-6)  # it is the ln1 output


@pytest.mark.slow
def test_cross_model_patching_on_a_lora_finetune_of_the_default_model(default_model):
    """A real base / fine-tuned pair: a few LoRA steps of the CAFT task (sentiment -> ' A' / ' B') on the default
    model. The fine-tuned model's final residual patched into the base run gives the fine-tuned output
    (normalised 1: final norm and unembedding are not LoRA-adapted), the embeddings are shared (0 at layer 0's
    resid_pre), and the grid equals a plain patched forward."""
    from workbench.directions.caft import FinetuneConfig, finetune, load_task

    task = load_task(wb.data.data_path("caft_task.jsonl"))
    tuned = finetune(default_model, task["train"], config=FinetuneConfig(steps=6, batch_size=4, lr=3e-3), seed=0)
    ex = task["id_test"][0]
    foil = next(c for c in ex["choices"] if c != ex["answer"])
    res = wb.patching.cross_model_patching(default_model, tuned, ex["prompt"], ex["answer"], foil,
                                  components="resid_pre,resid_post", metric="logit_diff")
    post, pre = res["resid_post"], res["resid_pre"]
    src, tgt = post.meta["source_metric"], post.meta["target_metric"]
    assert abs(src - tgt) > 0.5  # the fine-tune changed the answer's logit difference
    L = default_model.dims.n_layers
    assert abs(post.values[L - 1, -1] - src) < 1e-3
    assert abs(pre.values[0] - tgt).max() < 1e-4
    # one cell against a plain forward of the base model with the tuned model's activation put in
    site, pos = Site(L // 2, "resid_pre").name, -1
    _, cache = tuned.run_with_cache(ex["prompt"], [site])
    ids = [default_model.to_single_token(ex["answer"]), default_model.to_single_token(foil)]
    ref = default_model.run_with_interventions(ex["prompt"], [wb.Replace(site, positions=[pos], value=cache[site][:, [pos]])])
    assert abs(pre.values[L // 2, -1] - (ref[0, -1, ids[0]] - ref[0, -1, ids[1]]).item()) < 1e-3
