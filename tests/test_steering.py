import copy
import json
import math

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.steering.behaviour import log_odds_classifier, word_share
from workbench.core.interventions import AtPositions, FromPosition, Generated
from workbench.steering import (SteeringVector, build_steering_vector, generate_steered, load_lines,
                                load_pairs, read_activations, steer, sweep)

from conftest import assert_no_hooks

DATA = wb.data.data_path("steering")
PROMPTS = ["When Mary and John went to the store, John gave", "The Eiffel Tower is in", "Hi there"]


def _pairs_with_known_direction(m, seed=0):
    """Pairs that differ only in their last token, whose embeddings differ by exactly u plus small noise."""
    words = [" cat", " dog", " house", " tree", " car", " book", " river", " table", " city", " bird"]
    others = [" red", " blue", " green", " old", " new", " big", " small", " happy", " sad", " cold"]
    prefixes = ["I saw a", "Yesterday in the morning we found the", "The", "Look at that", "My friend likes the"]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(m.dims.d_model, generator=g)
    emb = m.module("embed").weight
    with torch.no_grad():
        for a, b in zip(words, others):
            ia, ib = m.to_single_token(a), m.to_single_token(b)
            emb[ib] = emb[ia] - u + 0.01 * torch.randn(m.dims.d_model, generator=g)
    pos = [prefixes[i % len(prefixes)] + w for i, w in enumerate(words)]
    neg = [prefixes[i % len(prefixes)] + w for i, w in enumerate(others)]
    return pos, neg, u


def test_vector_recovers_a_known_direction_padding_correct(tiny):
    m = copy.deepcopy(tiny("llama"))
    pos, neg, u = _pairs_with_known_direction(m)
    ids, mask = m.encode(pos)
    assert mask is not None and (mask.sum(1) < ids.shape[1]).any()  # a padded batch
    sv = build_steering_vector(m, pos, neg, layers=[0, 1], read_at=-1, batch_size=16)
    v = sv.vectors[0]
    assert torch.nn.functional.cosine_similarity(v, u, dim=0) > 0.999
    assert abs(v.norm() / u.norm() - 1) < 0.01
    pca = build_steering_vector(m, pos, neg, layers=[0], method="pca")
    assert torch.nn.functional.cosine_similarity(pca.vectors[0], u, dim=0) > 0.999  # sign: positives project positively
    # padding-correct: one text at a time gives the same vectors at every layer
    alone = build_steering_vector(m, pos, neg, layers=[0, 1], read_at=-1, batch_size=1)
    for l in (0, 1):
        assert (alone.vectors[l] - sv.vectors[l]).abs().max() < 1e-5
    # and the read token is each text's last real token, as in a plain forward of that text alone
    acts = read_activations(m, pos, [1], component="resid_post")
    for i, text in enumerate(pos):
        _, cache = m.run_with_cache(text, ["blocks.1.hook_resid_post"])
        assert (acts[1][i] - cache["blocks.1.hook_resid_post"][0, -1]).abs().max() < 1e-5
    # "mean" averages over real tokens only
    mean = read_activations(m, pos[:2], [1], read_at="mean")[1]
    _, cache = m.run_with_cache(pos[1], ["blocks.1.hook_resid_pre"])
    assert (mean[1] - cache["blocks.1.hook_resid_pre"][0].mean(0)).abs().max() < 1e-5


def test_multiplier_zero_changes_nothing_bit_for_bit(tiny):
    m = tiny("llama")
    pos, neg = load_pairs(DATA / "sentiment_pairs.jsonl")
    sv = build_steering_vector(m, pos[:4], neg[:4], layers=[0, 1])
    ids, mask = m.encode(PROMPTS)
    with torch.no_grad():
        plain = m(ids, mask)
        for positions in ["all", 2, [1, 3], "generated"]:
            with sv.apply(m, 0.0, positions=positions):
                assert torch.equal(m(ids, mask), plain)
            with sv.apply(m, 5.0, positions=positions):
                moved = m(ids, mask)
            assert positions == "generated" or not torch.equal(moved, plain)  # "generated": no new tokens here
    assert generate_steered(m, PROMPTS, sv, 0.0, max_new_tokens=6) == generate_steered(m, PROMPTS, None, max_new_tokens=6)
    assert_no_hooks(m)


def _greedy_reference(m, prompt, v, layer, multiplier, positions, steps):
    """No KV cache: one full forward per new token, steering by plain token indices."""
    seq = m.to_tokens(prompt)
    n = seq.shape[1]
    for _ in range(steps):
        L = seq.shape[1]
        idx = {"all": list(range(L)), "generated": list(range(n, L))}.get(positions) if isinstance(positions, str) else (
            list(range(positions, L)) if isinstance(positions, int) else [p for p in positions if p < L])
        ivs = [wb.Add(f"blocks.{layer}.hook_resid_pre", positions=idx, vector=v, multiplier=multiplier)] if idx else []
        with torch.no_grad():
            logits = m.run_with_interventions(seq, ivs)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return m.tokenizer.decode(seq[0, n:])


@pytest.mark.parametrize("positions", ["all", 3, [2, 5, 14], "generated"])
def test_cached_batched_generation_equals_uncached_loop(tiny, positions):
    m = tiny("llama")
    g = torch.Generator().manual_seed(1)
    v = 4 * torch.randn(m.dims.d_model, generator=g)
    sv = SteeringVector({1: v}, "resid_pre", {"n_layers": m.dims.n_layers})
    got = generate_steered(m, PROMPTS, sv, 1.5, positions=positions, max_new_tokens=8)
    want = [_greedy_reference(m, p, v, 1, 1.5, positions, 8) for p in PROMPTS]
    assert got == want
    assert got != generate_steered(m, PROMPTS, None, max_new_tokens=8)


def test_position_selectors_in_the_hook_layer(tiny):
    m = tiny("gpt2")
    ids = m.to_tokens(PROMPTS[:1]).repeat(2, 1)
    v = torch.randn(m.dims.d_model)
    site = "blocks.1.hook_resid_pre"

    def run(**kw):
        return m.run_with_interventions(ids, [wb.Add(site, vector=v, **kw)])

    with torch.no_grad():
        assert torch.equal(run(positions=FromPosition(4)), run(positions=list(range(4, ids.shape[1]))))
        assert torch.equal(run(positions=AtPositions([1, 6])), run(positions=[1, 6]))
        per_row = run(positions=FromPosition([2, 7]))
        assert torch.equal(per_row[0], run(positions=list(range(2, ids.shape[1])))[0])
        assert torch.equal(per_row[1], run(positions=list(range(7, ids.shape[1])))[1])
        assert torch.equal(run(positions=FromPosition(3), rows=[1])[0], m(ids)[0])
        assert torch.equal(run(positions=Generated()), m(ids))  # a plain forward has no generated tokens
        # heads sites take selectors too
        z = torch.randn(m.dims.d_head)
        a = m.run_with_interventions(ids, [wb.Add("blocks.0.attn.hook_z", positions=FromPosition(5), heads=2, vector=z)])
        b = m.run_with_interventions(ids, [wb.Add("blocks.0.attn.hook_z", positions=list(range(5, ids.shape[1])), heads=2, vector=z)])
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pointwise"):
        m.run_with_interventions(ids, [wb.Add(site, rows=[0], positions=FromPosition(1), pointwise=True, vector=v)])
    with pytest.raises(ValueError, match="start"):
        FromPosition(-1)
    assert_no_hooks(m)


def test_composed_vectors_and_context_manager_cleanup(tiny):
    m = tiny("llama")
    g = torch.Generator().manual_seed(2)
    a = SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)}, meta={"n_layers": 2})
    b = SteeringVector({1: torch.randn(64, generator=g)}, meta={"n_layers": 2})
    both = SteeringVector({0: 2 * a.vectors[0], 1: 2 * a.vectors[1] - 3 * b.vectors[1]}, meta={"n_layers": 2})
    ids = m.to_tokens(PROMPTS[0])
    with torch.no_grad():
        with steer(m, [(a, 2.0), (b, -3.0)]):
            composed = m(ids)
        with both.apply(m):
            summed = m(ids)
        with a.apply(m, 2.0), b.apply(m, -3.0):  # nested context managers compose too
            nested = m(ids)
    assert (composed - summed).abs().max() < 1e-4 and (nested - composed).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="boom"):
        with a.apply(m, 1.0):
            raise RuntimeError("boom")
    assert_no_hooks(m)


def test_save_load_and_model_mismatch(tiny, tmp_path, tokenizer):
    m = tiny("llama")
    pos, neg = load_pairs(DATA / "sentiment_pairs.jsonl")
    sv = build_steering_vector(m, pos[:3], neg[:3], layers=[1], method="pca", read_at="mean")
    path = sv.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path, model=m)
    assert torch.equal(back.vectors[1], sv.vectors[1]) and back.component == sv.component
    assert back.meta["method"] == "pca" and back.meta["read_at"] == "mean" and back.meta["model_fingerprint"] == m.fingerprint
    with pytest.raises(ValueError, match="width 64 but the model's d_model is 32"):
        SteeringVector.load(path, model=wb.tiny_model("llama", d_model=32, tokenizer=copy.deepcopy(tokenizer)))
    with pytest.raises(ValueError, match="2 layers, this one has 3"):
        SteeringVector.load(path, model=wb.tiny_model("llama", n_layers=3, tokenizer=copy.deepcopy(tokenizer)))
    with pytest.warns(UserWarning, match="fingerprint"):
        SteeringVector.load(path, model=wb.tiny_model("llama", seed=5, tokenizer=copy.deepcopy(tokenizer)))
    with pytest.raises(ValueError, match="d_model is 32"):
        sv.interventions(wb.tiny_model("llama", d_model=32, tokenizer=copy.deepcopy(tokenizer)))


def test_probe_direction_sign_and_length(tiny, tmp_path):
    from safetensors.torch import save_file

    m = copy.deepcopy(tiny("llama"))
    pos, neg, u = _pairs_with_known_direction(m, seed=3)
    mean = build_steering_vector(m, pos, neg, layers=[0]).vectors[0]
    save_file({"direction": -u}, str(tmp_path / "probe.safetensors"))  # a probe pointing the wrong way
    for direction in (-u, str(tmp_path / "probe.safetensors"), {0: -u}):
        sv = build_steering_vector(m, pos, neg, layers=[0], method="probe", direction=direction)
        want = (mean @ u / u.norm()) * u / u.norm()
        assert (sv.vectors[0] - want).abs().max() < 1e-4
    raw = build_steering_vector(m, layers=[0, 1], method="probe", direction=torch.stack([u, 2 * u]))
    assert torch.equal(raw.vectors[1], 2 * u)
    with pytest.raises(ValueError, match="direction"):
        build_steering_vector(m, pos, neg, layers=[0], method="probe", direction=torch.ones(3))


def test_sweep_table_matches_separate_runs(tiny):
    m = tiny("llama")
    pos, neg = load_pairs(DATA / "french_pairs.jsonl")
    sv = build_steering_vector(m, pos[:6], neg[:6], layers=[0, 1], read_at="mean")  # at -1 layer 0 reads "." twice
    prompts = PROMPTS[1:]
    words = word_share(["the", "a", "is", "and", "of"])
    res = sweep(m, sv, prompts, multipliers=[0.0, 8.0], behaviour=words, threshold=0.1, max_new_tokens=5,
                batch_size=4)
    assert res.behaviour.dims == ("layer", "multiplier") and res.behaviour.shape == (2, 2)
    df = res.to_dataframe()
    assert list(df.columns) == ["layer", "multiplier", "behaviour", "success", "cost"] and len(df) == 4
    for i, layer in enumerate([0, 1]):
        # multiplier 0 is the unsteered model, bit for bit
        assert res.behaviour.values[i, 0] == res.baseline["behaviour"] and res.cost.values[i, 0] == res.baseline["cost"]
        texts = generate_steered(m, prompts, sv, 8.0, layers=[layer], max_new_tokens=5)
        assert [s["continuation"] for s in res.samples if s["layer"] == layer and s["multiplier"] == 8.0] == texts
        assert math.isclose(res.behaviour.values[i, 1], float(np.mean(words(prompts, texts))), rel_tol=1e-9)
        # cost: perplexity of the continuations under the unsteered model, from a plain per-prompt loop
        nll, n = 0.0, 0
        for p, t in zip(prompts, texts):
            ids_p = m.tokenizer(p).input_ids
            ids_c = m.tokenizer(t, add_special_tokens=False).input_ids
            full = torch.tensor([ids_p + ids_c])
            with torch.no_grad():
                lp = m(full)[0, :-1].log_softmax(-1)
            nll -= float(lp[len(ids_p) - 1:].gather(-1, full[0, len(ids_p):, None]).sum())
            n += len(ids_c)
        assert math.isclose(res.cost.values[i, 1], math.exp(nll / n), rel_tol=1e-4)
    kl = sweep(m, sv, prompts, multipliers=[0.0, 4.0], behaviour=words, cost="kl",
               neutral_texts=load_lines(DATA / "neutral.txt"), max_new_tokens=2)
    assert (kl.cost.values[:, 0] == 0).all() and (kl.cost.values[:, 1] > 1e-3).all()
    assert_no_hooks(m)


def test_sweep_save_load_plot(tiny, tmp_path):
    m = tiny("gpt2")
    pos, neg = load_pairs(DATA / "sentiment_pairs.jsonl")
    sv = build_steering_vector(m, pos[:3], neg[:3], layers=[1])
    res = sweep(m, sv, PROMPTS[:2], multipliers=[1.0, 2.0], behaviour=word_share(["the"]), max_new_tokens=3)
    assert res.success is None and res.best()["layer"] == 1
    res.save(tmp_path / "sweep.json")
    back = type(res).load(tmp_path / "sweep.json")
    assert np.array_equal(back.cost.values, res.cost.values) and back.samples == res.samples
    res.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 5000


def test_bad_input_is_a_clear_error(tiny):
    m = tiny("llama")
    sv = SteeringVector({1: torch.ones(64)}, meta={"n_layers": 2})
    cases = [
        (lambda: build_steering_vector(m, ["a", "b"], ["c"], layers=[0]), "1 negative examples for 2 positive"),
        (lambda: build_steering_vector(m, [], [], layers=[0]), "positives: expected a non-empty list"),
        (lambda: build_steering_vector(m, [("a", "b")], layers=[]), "layers: expected a non-empty"),
        (lambda: build_steering_vector(m, ["a"], ["b"], layers=[2]), "layer 2 out of range"),
        (lambda: build_steering_vector(m, ["a"], ["b"], layers=[0], method="svm"), "method"),
        (lambda: build_steering_vector(m, ["a"], ["b"], layers=[0], read_at=-40), "read_at: token -40"),
        (lambda: sv.apply(m, float("nan")).__enter__(), "multiplier: expected a finite number"),
        (lambda: sv.interventions(m, 1.0, layers=[0]), "no direction for layers \\[0\\]"),
        (lambda: sv.interventions(m, 1.0, positions=-2), "positions"),
        (lambda: sv.interventions(m, 1.0, positions="later"), "positions"),
        (lambda: sweep(m, sv, ["Hi"], multipliers=[1.0, float("nan")], behaviour=len), "multipliers: expected a finite"),
        (lambda: sweep(m, sv, ["Hi"], multipliers=[], behaviour=len), "multipliers: expected a non-empty"),
        (lambda: sweep(m, sv, ["Hi"], multipliers=[1.0], behaviour=len, cost="kl"), "neutral_texts"),
        (lambda: sweep(m, sv, [], multipliers=[1.0], behaviour=len), "prompts"),
        (lambda: generate_steered(m, ["Hi"], sv, 1.0, max_new_tokens=0), "max_new_tokens"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    with pytest.raises(ValueError, match="vectors: expected tensors of one shape"):
        SteeringVector({0: torch.ones(3), 1: torch.ones(4)})
    assert_no_hooks(m)


def test_pairs_file_errors(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "c"}\n')
    with pytest.raises(ValueError, match="pairs.jsonl:2"):
        load_pairs(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="positives: expected a non-empty list"):
        load_pairs(bad)


def test_word_share_metric_on_the_pairs():
    pos, neg = load_pairs(DATA / "french_pairs.jsonl")
    score = word_share(DATA / "french_words.txt")
    french, english = score(None, pos), score(None, neg)
    assert french.min() > 0.3 and english.max() < 0.1


@pytest.mark.slow
def test_mean_difference_and_apply_match_steering_vectors_library(default_model):
    from steering_vectors import SteeringVector as LibVector
    from steering_vectors import train_steering_vector
    from steering_vectors.aggregators import pca_aggregator

    m = default_model
    pos, neg = load_pairs(DATA / "sentiment_pairs.jsonl")
    pairs = list(zip(pos, neg))[:12]
    layers = [3, 12, 20]
    ours = build_steering_vector(m, pairs, layers=layers, component="resid_post", read_at=-1)
    lib = train_steering_vector(m.hf, m.tokenizer, pairs, layers=layers, read_token_index=-1, batch_size=4)
    for l in layers:
        assert (ours.vectors[l] - lib.layer_activations[l]).abs().max() < 1e-5
    ids, mask = m.encode(PROMPTS)
    with torch.no_grad():
        with ours.apply(m, 3.0):
            steered = m(ids, mask)
        with LibVector(ours.vectors, "decoder_block").apply(m.hf, multiplier=3.0):
            lib_steered = m(ids, mask)
        plain = m(ids, mask)
    assert (steered - lib_steered).abs().max() < 1e-4 and (steered - plain).abs().max() > 1.0
    pca = build_steering_vector(m, pairs, layers=[12], component="resid_post", method="pca")
    lib_pca = train_steering_vector(m.hf, m.tokenizer, pairs, layers=[12], aggregator=pca_aggregator())
    assert torch.nn.functional.cosine_similarity(pca.vectors[12], lib_pca.layer_activations[12], dim=0) > 1 - 1e-5
    assert_no_hooks(m)


@pytest.mark.slow
def test_sentiment_classifier_metric_is_accurate(default_model):
    rows = [json.loads(l) for l in (DATA / "sentiment_eval.jsonl").read_text().splitlines() if l.strip()]
    score = log_odds_classifier(default_model, 'Review: "{text}"\nSentiment (positive or negative):', " positive", " negative")
    s = score(None, [r["text"] for r in rows])
    acc = np.mean([(x > 0) == (r["label"] == "positive") for x, r in zip(s, rows)])
    assert acc >= 0.8


def test_cli_steer_writes_sweep(tmp_path, capsys):
    from workbench.cli import main

    args = ["steer", "--model", "tiny-llama", "--pairs", str(DATA / "sentiment_pairs.jsonl"), "--layers", "0,1",
            "--multipliers", "0,4", "--prompts", str(DATA / "prompts.txt"), "--limit", "2", "--read-at", "mean",
            "--behaviour", f"words:{DATA / 'french_words.txt'}", "--max-new-tokens", "3", "--out", str(tmp_path)]
    assert main(args) == 0
    d = json.loads((tmp_path / "sweep.json").read_text())
    assert d["cost"]["coords"] == {"layer": [0, 1], "multiplier": [0.0, 4.0]} and len(d["samples"]) == 2 * (1 + 4)
    assert (tmp_path / "sweep.png").stat().st_size > 5000 and (tmp_path / "vector.safetensors").is_file()
    bad = args[:]
    bad[bad.index("0,4")] = "1,nan"
    assert main(bad + ["--out", str(tmp_path / "bad")]) == 2
    assert "multipliers: expected a finite number" in capsys.readouterr().err
    bad = args[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("0,1")] = "0,9"
    assert main(bad) == 2 and "layer 9 out of range" in capsys.readouterr().err
    assert main(args) == 2 and "--force" in capsys.readouterr().err  # the first run's results are not overwritten
    assert not (tmp_path / "bad").exists()
