"""Transcoders and attribution graphs (workbench.circuits): identities of the frozen replacement model on three
families, a planted two-step circuit the graph must find, feature interventions in the real model, files."""
import json

import pytest
import torch

import workbench as wb
from workbench.circuits import attribute, evaluate_transcoders, graph_scores, load_transcoders, prune_graph, train_transcoders
from workbench.circuits.graph import Replacement

PROMPT = "The capital of France is Paris, and Rome is in"


def random_transcoders(model, d_sae=24, seed=0, skip=False, threshold=0.6):
    """Seeded random JumpReLU transcoders (SAELens classes), one per layer: enough for the identities, which hold
    for any transcoder (what they miss goes to the error nodes)."""
    from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                          JumpReLUTranscoderConfig)

    cls, cfg = (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig) if skip else (JumpReLUTranscoder,
                                                                                    JumpReLUTranscoderConfig)
    g = torch.Generator().manual_seed(seed)
    d = model.dims.d_model
    out = []
    for _ in range(model.dims.n_layers):
        tc = cls(cfg(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, d_sae, generator=g) / d ** 0.5)
            tc.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
            tc.W_dec.copy_(torch.randn(d_sae, d, generator=g) * 0.1)
            tc.b_dec.copy_(torch.randn(d, generator=g) * 0.01)
            tc.threshold.fill_(threshold)
            if skip:
                tc.W_skip.copy_(torch.randn(d, d, generator=g) * 0.05)
        out.append(tc.eval().requires_grad_(False))
    return out


@pytest.mark.parametrize("family,skip", [("llama", False), ("gpt2", False), ("qwen2", True), ("gemma2", False)])
def test_replacement_identities(family, skip):
    from workbench.core.arch import final_logits

    model = wb.tiny_model(family)
    tcs = random_transcoders(model, skip=skip)
    ids = model.to_tokens(PROMPT)
    with torch.no_grad():
        real = model.hf(input_ids=ids).logits[0, -1]
        # the logits before any final soft-cap, from the final residual (independent of the graph code)
        resid = model.run_with_cache(ids, [f"blocks.{model.dims.n_layers - 1}.hook_resid_post"])[1]
        z = model.module("unembed")(model.module("final_norm")(next(iter(resid.values()))))[0, -1]
    assert torch.allclose(final_logits(model.hf, model.arch, z), real, atol=1e-5)
    # 1. the replacement (stored patterns and scales, transcoders + error nodes) reproduces the model's logits
    # (before the soft-cap, for Gemma 2; the soft-cap of them is the model's output)
    rep = Replacement(model, tcs, ids)
    _, logits = rep.run(rep.leaves(1))
    assert (logits[0] - z).abs().max() < 1e-4
    assert (final_logits(model.hf, model.arch, logits[0]) - real).abs().max() < 1e-4
    # 2. every target = its incoming edges (one backward each) + its value with all sources at zero (a forward),
    # with each logit's target the logit minus the mean logit (circuit-tracer's), or the raw logit
    for target in ("demeaned", "raw"):
        g = attribute(model, PROMPT, tcs, batch_size=64, logit_target=target)
        assert g.n_features > 20 and g.meta["logit_target"] == target
        targets = list(range(g.n_features)) + list(range(g.logit_index(0), g.n_nodes))
        got = g.adjacency.sum(1) + g.bias
        assert (got - g.target_values)[targets].abs().max() < 1e-4
        expected = z[g.logit_tokens] - (z.mean() if target == "demeaned" else 0)
        assert (g.target_values[g.logit_index(0):] - expected).abs().max() < 1e-4
        assert torch.allclose(g.logit_probabilities, torch.softmax(real, -1)[g.logit_tokens], atol=1e-5)
    # features' real pre-activations, recomputed here from the MLP inputs (independent of the graph code)
    layer, pos, feat = g.active_features[0].tolist()
    assert abs(g.target_values[0] - (rep.mlp_in[layer][0, pos] @ tcs[layer].W_enc[:, feat] + tcs[layer].b_enc[feat])) < 1e-4
    # edges only run forward: from earlier layers and from positions <= the target's
    for i in range(g.n_features):
        l, p, _ = g.active_features[i].tolist()
        src = g.adjacency[i, :g.n_features].nonzero()[:, 0]
        assert (g.active_features[src, 0] < l).all() and (g.active_features[src, 1] <= p).all()
    s = graph_scores(g)
    assert 0 < s["replacement"] <= 1 and 0 < s["completeness"] <= 1


def random_clt(model, d_sae=16, seed=0, threshold=0.6):
    """A seeded random cross-layer transcoder (features at layer l write to every MLP m >= l)."""
    from workbench.circuits import CrossLayerTranscoder

    g = torch.Generator().manual_seed(seed)
    L, d = model.dims.n_layers, model.dims.d_model
    clt = CrossLayerTranscoder(L, d, d_sae)
    with torch.no_grad():
        clt.W_enc.copy_(torch.randn(L, d, d_sae, generator=g) / d ** 0.5)
        clt.b_enc.copy_(torch.randn(L, d_sae, generator=g) * 0.1)
        clt.threshold.fill_(threshold)
        clt.b_dec.copy_(torch.randn(L, d, generator=g) * 0.01)
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=g) * 0.1)
    return clt.eval().requires_grad_(False)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_clt_replacement_identities(family):
    model = wb.tiny_model(family)
    clt = random_clt(model)
    ids = model.to_tokens(PROMPT)
    with torch.no_grad():
        real = model.hf(input_ids=ids).logits[0, -1]
    rep = Replacement(model, clt, ids)
    _, logits = rep.run(rep.leaves(1))
    assert (logits[0] - real).abs().max() < 1e-4
    # the errors: each MLP's output minus sum_{l <= m} a_l W_dec[l -> m] + b_dec[m], recomputed here
    acts = [clt.encode(l, rep.mlp_in[l][0]) for l in range(model.dims.n_layers)]
    last = model.dims.n_layers - 1
    y_hat = clt.b_dec[last] + sum(acts[l] @ clt.W_dec[l][:, last - l] for l in range(last + 1))
    assert torch.allclose(rep.errors[last], rep.mlp_out[last][0] - y_hat, atol=1e-5)
    g = attribute(model, PROMPT, clt, batch_size=64)
    assert g.meta["transcoders"] == "clt" and g.n_features > 20
    targets = list(range(g.n_features)) + list(range(g.logit_index(0), g.n_nodes))
    assert ((g.adjacency.sum(1) + g.bias) - g.target_values)[targets].abs().max() < 1e-4
    # a layer-0 feature reaches the logits directly through every later MLP: its direct edge into the top logit
    # equals a_f times the gradient of that logit along sum_m W_dec[0 -> m][f] (all MLP outputs), which is what
    # the per-layer decomposition of the same CLT cannot give; here: it is non-zero for some layer-0 feature
    layer0 = (g.active_features[:, 0] == 0).nonzero()[:, 0]
    assert g.adjacency[g.logit_index(0), layer0].abs().max() > 0
    # files: our format (cfg.json + clt_weights.safetensors), refused for another model
    import tempfile

    from workbench.circuits import load_clt, save_clt

    with tempfile.TemporaryDirectory() as tmp:
        back = load_clt(save_clt(clt, tmp), model)
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), clt.state_dict().values()))
        with pytest.raises(ValueError, match="layers"):
            load_clt(tmp, wb.tiny_model(family, n_layers=3))


def test_clt_training_reduces_error(tmp_path):
    from workbench.sae.train import data_file_texts

    model = wb.tiny_model("llama")
    texts = data_file_texts()[:40]
    clt = train_transcoders(model, texts, d_sae=32, k=4, steps=20, texts_per_step=4, lr=3e-3, kind="clt",
                            out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "clt" / "clt_weights.safetensors").is_file()
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(b > a + 0.05 for a, b in zip(hist[0]["fve"], hist[-1]["fve"]))  # every layer: measured +0.14, +0.20
    # what a layer-0 feature writes to the last MLP was learned (it starts at zero)
    assert clt.W_dec[0][:, -1].abs().max() > 0
    g = attribute(model, "one two three", clt)
    assert ((g.adjacency.sum(1) + g.bias) - g.target_values)[:g.n_features].abs().max() < 1e-4


def planted_gpt2():
    """A tiny GPT-2 with no attention output and MLPs of one hidden unit each, set so that the last token's
    embedding drives unit A (layer 0), A's output drives unit B (layer 1) and B writes the unembedding of
    `target`: the two-step circuit emb -> A -> B -> logit. Returns (model, transcoders, target, prompt); the
    transcoders hold A and B (feature 0) among random distractors."""
    model = wb.tiny_model("gpt2")
    hf, d = model.hf, model.dims.d_model
    g = torch.Generator().manual_seed(1)
    target = 1234
    prompt = "one two three four"
    ids = model.to_tokens(prompt)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_fc.weight.zero_()
            block.mlp.c_fc.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        u = torch.randn(d, generator=g)
        w_target = hf.lm_head.weight[target]
        writes = [30 * u / u.norm(), 100 * w_target / w_target.norm()]
        for l, block in enumerate(hf.transformer.h):
            x = {}
            h = block.mlp.register_forward_hook(lambda m, a, o: x.setdefault("in", a[0][0, -1].clone()))
            model.hf(input_ids=ids)
            h.remove()
            block.mlp.c_fc.weight[:, 0] = 4 * x["in"] / x["in"].pow(2).sum()  # pre-activation 4 - 2 = 2 here
            block.mlp.c_fc.bias[0] = -2.0
            block.mlp.c_proj.weight[0] = writes[l]
    tcs = random_transcoders(model, d_sae=16, seed=2, threshold=0.3)
    with torch.no_grad():
        for l, (tc, block) in enumerate(zip(tcs, hf.transformer.h)):
            tc.W_dec.mul_(0.1)
            tc.b_dec.zero_()
            tc.W_enc[:, 0] = block.mlp.c_fc.weight[:, 0]
            tc.b_enc[0] = block.mlp.c_fc.bias[0]
            tc.W_dec[0] = block.mlp.c_proj.weight[0]
    return model, tcs, target, prompt


def test_planted_two_step_circuit():
    model, tcs, target, prompt = planted_gpt2()
    g = attribute(model, prompt, tcs)
    last = g.n_pos - 1
    assert int(g.logit_tokens[0]) == target
    a, b, logit = g.feature_index(0, last, 0), g.feature_index(1, last, 0), g.logit_index(0)
    # the strongest input of the target logit is B, B's is A, A's is the last token's embedding
    assert int(g.adjacency[logit].abs().argmax()) == b
    assert int(g.adjacency[b].abs().argmax()) == a
    assert int(g.adjacency[a].abs().argmax()) == g.embedding_index(last)
    kept = prune_graph(g)
    assert kept.node_mask[[a, b, logit]].all()
    # with room for two feature rows, the influence-ordered search computes exactly A's and B's
    g2 = attribute(model, prompt, tcs, max_feature_nodes=2, batch_size=1)
    assert g2.meta["rows"] == sorted([a, b] + list(range(g.logit_index(0), g.n_nodes)))
    assert torch.allclose(g2.adjacency[[a, b, logit]], g.adjacency[[a, b, logit]], atol=1e-6)
    assert kept.edge_mask[b, a] and kept.edge_mask[logit, b]
    # no distractor feature survives pruning
    assert set(kept.node_mask[:g.n_features].nonzero()[:, 0].tolist()) <= {a, b}


def test_transcoders_train_resume_save_load(tmp_path):
    from workbench.sae.train import data_file_texts

    model = wb.tiny_model("llama", n_layers=2)
    texts = data_file_texts()[:48]
    out = tmp_path / "run"
    assert train_transcoders(model, texts, d_sae=64, k=4, steps=12, texts_per_step=4, lr=3e-3, out=out, stop_at=6,
                             progress=False) is None
    resumed = train_transcoders(model, texts, d_sae=64, k=4, steps=12, texts_per_step=4, lr=3e-3, out=out,
                                progress=False)
    straight = train_transcoders(model, texts, d_sae=64, k=4, steps=12, texts_per_step=4, lr=3e-3, progress=False)
    for a, b in zip(resumed, straight):  # a resumed run is the uninterrupted run
        assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.threshold, b.threshold)
    loaded = load_transcoders(out / "transcoders", model)
    assert type(loaded[0]).__name__ == "JumpReLUTranscoder" and torch.equal(loaded[1].W_dec, resumed[1].W_dec)
    cfg = json.loads((out / "transcoders" / "layer_0" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_transcoder" and cfg["d_out"] == model.dims.d_model
    ev = evaluate_transcoders(model, loaded, texts[:8])
    assert len(ev["layers"]) == 2 and all(0 <= r["dead_fraction"] <= 1 and r["l0"] > 0 for r in ev["layers"])
    assert ev["ce_zero"] > 0 and ev["ce_replaced"] > 0
    # refused: another model, another depth, another width
    with pytest.raises(ValueError, match="fingerprint"):
        load_transcoders(out / "transcoders", wb.tiny_model("llama", seed=5))
    with pytest.raises(ValueError, match="layers"):
        load_transcoders(out / "transcoders", wb.tiny_model("llama", n_layers=3))
    with pytest.raises(ValueError, match="d_model"):
        load_transcoders(out / "transcoders", wb.tiny_model("llama", d_model=32, n_heads=4))
    # a pickle is never read: only sae_weights.safetensors
    (out / "transcoders" / "layer_0" / "sae_weights.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_transcoders(out / "transcoders", model)


def test_feature_edit_in_the_real_model():
    from workbench.circuits import FeatureEdit, feature_edit_hooks, run_with_feature_edits

    model = wb.tiny_model("llama")
    tcs = random_transcoders(model)
    ids = model.to_tokens(PROMPT)
    layer, pos = 1, 5
    with torch.no_grad():
        rep = Replacement(model, tcs, ids)
        a = tcs[layer].encode(rep.mlp_in[layer][0, pos])
    feats = a.nonzero()[:2, 0].tolist()
    assert len(feats) == 2
    site = f"blocks.{layer}.hook_mlp_out"
    with torch.no_grad():
        clean = model.hf(input_ids=ids).logits
        # factor 1 changes nothing, bit for bit
        same = run_with_feature_edits(model, ids, [FeatureEdit(site, transcoder=tcs[layer], features=feats, factor=1.0)])
        assert torch.equal(same, clean)
        # factor 0: the MLP output at `pos` loses exactly sum_f a_f W_dec[f]; other positions are untouched
        _, base = model.run_with_cache(ids, [site])
        edit = FeatureEdit(site, positions=[pos], transcoder=tcs[layer], features=feats, factor=0.0)
    with torch.no_grad(), feature_edit_hooks(model, [edit], cache_sites=[site]) as cache:
        model.hf(input_ids=ids)
    delta = cache[site][0] - base[site][0]
    expected = -(a[feats, None] * tcs[layer].W_dec[feats]).sum(0)
    assert (delta[pos] - expected).abs().max() < 1e-5
    assert delta[:pos].abs().max() == 0 and delta[pos + 1:].abs().max() == 0
    with pytest.raises(ValueError, match="hook_mlp_out"):
        FeatureEdit("blocks.1.hook_resid_post", transcoder=tcs[1], features=[0])
    with pytest.raises(ValueError, match="features"):
        FeatureEdit(site, transcoder=tcs[1], features=[10 ** 6])


def test_planted_circuit_intervention():
    from workbench.circuits import intervene

    model, tcs, target, prompt = planted_gpt2()
    g = attribute(model, prompt, tcs)
    last = g.n_pos - 1
    a = g.feature_index(0, last, 0)
    r = intervene(model, g, tcs, [a], 0.0)  # switch off A: B loses its input and the target logit falls
    assert r["predicted"][0] < -2 and r["measured"][0] < -2
    same = intervene(model, g, tcs, [a], 1.0)
    assert same["measured"][0] == 0 and same["predicted"][0] == 0


def test_graph_files_and_circuit_tracer_json(tmp_path):
    from workbench.circuits import load_graph, node_ids, save_graph, to_circuit_tracer_json

    model, tcs, target, prompt = planted_gpt2()
    g = attribute(model, prompt, tcs)
    back = load_graph(save_graph(g, tmp_path / "g"))
    assert torch.equal(back.adjacency, g.adjacency) and back.str_tokens == g.str_tokens
    data = to_circuit_tracer_json(g, tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text()) == data
    ids = node_ids(g)
    assert len(set(ids)) == len(ids)
    by_id = {n["node_id"]: n for n in data["nodes"]}
    last = g.n_pos - 1
    assert by_id[f"1_0_{last}"]["feature_type"] == "cross layer transcoder"
    logit = by_id[f"{g.n_layers + 1}_{target}_{last}"]
    assert logit["is_target_logit"] and logit["feature_type"] == "logit"
    index = {n: i for i, n in enumerate(ids)}
    for link in data["links"]:  # every link is an adjacency entry, source -> target
        assert link["weight"] == pytest.approx(float(g.adjacency[index[link["target"]], index[link["source"]]]))
    assert {"source": f"0_0_{last}", "target": f"1_0_{last}"} in [{k: l[k] for k in ("source", "target")} for l in data["links"]]
    assert len(data["metadata"]["prompt_tokens"]) == g.n_pos


def test_cli_transcoders_and_graph(tmp_path, capsys):
    from workbench.cli import main

    texts = tmp_path / "texts.txt"
    from workbench.sae.train import data_file_texts

    texts.write_text("\n".join(data_file_texts()[:24]))
    run = tmp_path / "run"
    assert main(["transcoders", "train", "--model", "tiny-llama", "--texts", str(texts), "--d-sae", "32", "--k", "4",
                 "--steps", "4", "--texts-per-step", "4", "--out", str(run)]) == 0
    assert (run / "transcoders" / "transcoders.json").is_file()
    out = tmp_path / "graph"
    assert main(["graph", PROMPT, "--model", "tiny-llama", "--transcoders", str(run / "transcoders"),
                 "--logit-target", "raw", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_nodes"] > 0 and 0 <= summary["replacement"] <= 1
    assert summary.get("top_feature_off", {"logit_target": "raw"})["logit_target"] == "raw"
    assert json.loads((out / "circuit_tracer.json").read_text())["metadata"]["prompt"] == PROMPT
    assert (out / "graph.html").stat().st_size > 1e6  # plotly.js inlined
    # refused before any work: the folder holds a graph, another model's transcoders
    assert main(["graph", PROMPT, "--model", "tiny-llama", "--transcoders", str(run / "transcoders"),
                 "--out", str(out)]) == 2
    assert main(["graph", PROMPT, "--model", "tiny-gpt2", "--transcoders", str(run / "transcoders"),
                 "--out", str(tmp_path / "g2")]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_graph_refusals():
    model = wb.tiny_model("llama")
    tcs = random_transcoders(model)
    with pytest.raises(ValueError, match="one per layer"):
        attribute(model, PROMPT, tcs[:1])
    with pytest.raises(ValueError, match="prompt"):
        attribute(model, "", tcs)
    with pytest.raises(ValueError, match="batch_size"):
        attribute(model, PROMPT, tcs, batch_size=0)
    with pytest.raises(ValueError, match="max_features"):
        attribute(model, PROMPT, tcs, max_features=3)
    with pytest.raises(ValueError, match="logit_target"):
        attribute(model, PROMPT, tcs, logit_target="mean")
    with pytest.raises(ValueError, match="node_threshold"):
        prune_graph(attribute(model, "one two", tcs), node_threshold=1.5)


def test_batching_and_partial_influence():
    """The graph does not depend on how targets are batched (one forward of B copies, one backward per batch
    from that batch's targets only); the influence taken on the computed rows only (what `max_feature_nodes`
    ranks by) equals the full series on the matrix whose other rows are zero; uncomputed="drop" is the "keep"
    graph without the features whose rows were not computed."""
    from workbench.circuits.graph import _partial_influence, influence, normalize_matrix

    model = wb.tiny_model("llama")
    tcs = random_transcoders(model)
    g1, g2 = attribute(model, PROMPT, tcs, batch_size=5), attribute(model, PROMPT, tcs, batch_size=64)
    assert (g1.adjacency - g2.adjacency).abs().max() < 1e-5 * g2.adjacency.abs().max()
    rows = torch.tensor(list(range(0, g2.n_features, 3)) + list(range(g2.logit_index(0), g2.n_nodes)))
    A = torch.zeros_like(g2.adjacency)
    A[rows] = g2.adjacency[rows]
    w = torch.zeros(g2.n_nodes)
    w[g2.logit_index(0):] = g2.logit_probabilities
    full, part = influence(normalize_matrix(A), w), _partial_influence(A[rows], rows, w)
    assert full.abs().max() > 0 and torch.allclose(part, full, rtol=1e-5, atol=1e-7)
    # max_feature_nodes with uncomputed="drop": the "keep" graph restricted to its computed features and all
    # other nodes (circuit-tracer's layout), node for node
    keep = attribute(model, PROMPT, tcs, batch_size=5, max_feature_nodes=12)
    drop = attribute(model, PROMPT, tcs, batch_size=5, max_feature_nodes=12, uncomputed="drop")
    fr = [r for r in keep.meta["rows"] if r < keep.n_features]
    assert len(fr) == drop.n_features == 12 and torch.equal(drop.active_features, keep.active_features[fr])
    kept = torch.tensor(fr + list(range(keep.n_features, keep.n_nodes)))
    assert torch.allclose(drop.adjacency, keep.adjacency[kept][:, kept], atol=1e-6)
    assert torch.equal(drop.bias, keep.bias[kept]) and torch.equal(drop.target_values, keep.target_values[kept])
