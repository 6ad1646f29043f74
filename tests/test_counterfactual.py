"""Counterfactual strings (Gumbel-max SCM): sampler, replay, hindsight posterior, counterfactual decoding, measures."""
import collections
import copy
import json

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

import workbench as wb
from workbench.counterfactual import (GivenNoise, Settings, counterfactuals, first_token_coupling, gumbel_agreement,
                                      gumbel_decode, gumbel_keep, hindsight_noise, measure, replay, sample, save,
                                      summarize)
from workbench.counterfactual.gumbel import allowed, generator, gumbel, scaled_logits, truncated_gumbel
from workbench.counterfactual.measures import common_prefix, edit_distance

@pytest.fixture(autouse=True)
def one_thread():
    """Large batches of tiny ops (8-token vocabulary, 30000 rows) thrash with several threads on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


PROMPTS = ["The capital of France is", "Once upon a time, a little", "My favourite food"]
SETTINGS = [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=0.0)]


def small_vocab_model(seed: int, vocab: int = 8):
    """A one-layer Llama over `vocab` word-level tokens t0..t{vocab-1} (no stop token), built from a config."""
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)},
                                                                              unk_token="t0")), pad_token="t0")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      initializer_range=0.5, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    hf.generation_config.eos_token_id = None
    return wb.Model(hf, tok, name=f"v{vocab}-seed{seed}")


# -- identity and replay ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["t1", "t0.7-k20-p0.9", "greedy"])
def test_no_intervention_counterfactual_equals_observed(tiny, family, settings):
    model = tiny(family)
    obs = sample(model, PROMPTS, max_new_tokens=10, seed=11, batch_size=2, **settings)
    res = counterfactuals(model, None, obs)
    assert res.ids == obs.ids and res.texts == obs.texts and res.diverged_at == [None] * 3
    # also through the hook layer (a zero steering vector) and from text, batched differently
    zero = [wb.Add("blocks.1.hook_resid_pre", vector=torch.zeros(model.dims.d_model))]
    res = counterfactuals(model, PROMPTS, obs.ids, zero, batch_size=3, **settings)
    assert res.ids == obs.ids


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_replay_and_batch_independence(tiny, family):
    model = tiny(family)
    obs = sample(model, PROMPTS, max_new_tokens=8, seed=5, top_k=50, batch_size=3)
    assert replay(model, obs, batch_size=1).ids == obs.ids
    assert sample(model, PROMPTS, max_new_tokens=8, seed=5, top_k=50, batch_size=1).ids == obs.ids
    assert sample(model, PROMPTS, max_new_tokens=8, seed=6, top_k=50).ids != obs.ids


def test_kv_cached_decoder_matches_plain_loop(tiny):
    """The batched, left-padded, KV-cached decoder under an intervention = a plain loop of full forwards."""
    model = tiny("llama")
    ivs = [wb.Add("blocks.1.hook_resid_pre", vector=torch.randn(model.dims.d_model, generator=torch.Generator().manual_seed(0)) * 2)]
    prefixes = [model.tokenizer(p).input_ids for p in PROMPTS]
    noise = [gumbel((6, model.dims.d_vocab), generator(9, r)).float() for r in range(3)]
    s = Settings(0.8, top_k=30)
    got = gumbel_decode(model, prefixes, GivenNoise(noise, None), s, max_new_tokens=6, interventions=ivs)
    for r, p in enumerate(prefixes):
        seq = list(p)
        for t in range(6):
            logits = model.run_with_interventions(torch.tensor([seq]), ivs)[0, -1]
            pert = (scaled_logits(logits, s) + noise[r][t])
            keep = pert.clone().fill_(0).bool()
            keep[scaled_logits(logits, s).topk(30).indices] = True
            seq.append(int(pert.masked_fill(~keep, -float("inf")).argmax()))
        assert got[r] == seq[len(p):]


def test_gumbel_sampler_matches_softmax_with_top_k():
    """Gumbel-max over the top-k mask samples softmax restricted to the top k (goodness of fit)."""
    model = small_vocab_model(0)
    n = 3000
    obs = sample(model, [[3, 5]] * n, max_new_tokens=1, seed=0, top_k=5, batch_size=n)
    with torch.no_grad():
        logits = model.forward(torch.tensor([[3, 5]]))[0, -1]
    top = logits.topk(5).indices
    p = torch.zeros_like(logits, dtype=torch.float64)
    p[top] = logits[top].double().softmax(-1)
    counts = np.bincount([r[0] for r in obs.ids], minlength=8)
    assert counts[p.numpy() == 0].sum() == 0
    assert chisquare(counts[top], p[top].numpy() * n).pvalue > 1e-3


# -- the hindsight posterior ------------------------------------------------------------------------

def _chi2(a: collections.Counter, b: collections.Counter) -> float:
    cats = sorted(set(a) | set(b))
    tab = np.array([[a[c] for c in cats], [b[c] for c in cats]])
    big = tab.sum(0) >= 10
    tab = np.concatenate([tab[:, big], tab[:, ~big].sum(1, keepdims=True)], 1) if (~big).any() else tab
    return chi2_contingency(tab).pvalue


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=4, top_p=0.95)],
                         ids=["t1", "t0.8-k4-p0.95"])
def test_hindsight_posterior_matches_forward_conditioning(settings):
    """Counterfactuals of x under model B via hindsight noise have the distribution of B's outputs over the
    prior noise draws whose factual (model A) output was x; two wrong constructions fail the same test.
    With masks, tokens outside A's top-k / top-p keep prior noise and may compete under model B."""
    a, b = small_vocab_model(0), small_vocab_model(1)
    s = Settings(**settings)
    # masks make model B nearly deterministic here, so the masked case needs more draws for power
    prompt, T, (N, K) = [3, 5], 2, ((30000, 3000) if s.top_k else (20000, 2000))
    prior = gumbel((N, T, 8), torch.Generator().manual_seed(0)).float()
    fact = gumbel_decode(a, [prompt] * N, GivenNoise(prior, None), s, max_new_tokens=T, batch_size=N)
    cf = gumbel_decode(a, [prompt] * N, GivenNoise(prior, None), s, max_new_tokens=T, batch_size=N, runner=b)
    x, nx = collections.Counter(tuple(f) for f in fact).most_common(1)[0]
    assert nx > 2000
    forward = collections.Counter(tuple(y) for f, y in zip(fact, cf) if tuple(f) == x)

    def counterfactual_counts(noise):
        noise = torch.stack(list(noise))  # one [K, T, V] tensor: the decoder gathers it per step
        return collections.Counter(tuple(y) for y in gumbel_decode(a, [prompt] * K, GivenNoise(noise, None), s,
                                                                    max_new_tokens=T, batch_size=K, runner=b))

    noise = hindsight_noise(a, [prompt] * K, [list(x)] * K, seed=1, batch_size=K, **settings)
    assert all(n.shape == (T, 8) for n in noise)
    # every posterior draw reproduces x under model A
    assert all(tuple(y) == x for y in gumbel_decode(a, [prompt] * K, GivenNoise(noise, None), s, max_new_tokens=T,
                                                     batch_size=K))
    assert _chi2(forward, counterfactual_counts(noise)) > 0.01
    # the same through the public API (second model as the intervention)
    res = counterfactuals(a, [prompt] * K, [list(x)] * K, b, seed=1, batch_size=K, **settings)
    assert _chi2(forward, collections.Counter(tuple(y) for y in res.ids)) > 0.01

    # wrong 1: the prior's noise reused (the observation ignored)
    wrong_prior = gumbel((K, T, 8), torch.Generator().manual_seed(5)).float()
    assert _chi2(forward, counterfactual_counts(wrong_prior)) < 1e-3
    # wrong 2: the observed token's value drawn from Gumbel(0, 1) instead of Gumbel(logsumexp)
    with torch.no_grad():
        logits = a.forward(torch.tensor([prompt + list(x)]))[0, len(prompt) - 1:-1]
    sc = scaled_logits(logits, s).double()
    keep = allowed(scaled_logits(logits, s), s)
    gen, obs, wrong = torch.Generator().manual_seed(7), torch.tensor(x), []
    for _ in range(K):
        top = gumbel(T, gen)
        value = truncated_gumbel(sc, top[:, None], gen)
        value[torch.arange(T), obs] = top
        wrong.append(torch.where(keep, value - sc, gumbel((T, 8), gen)).float())
    assert _chi2(forward, counterfactual_counts(wrong)) < 1e-3


# -- interventions ------------------------------------------------------------------------------------

def test_steering_weight_edit_and_second_model(tiny):
    model = tiny("llama")
    obs = sample(model, PROMPTS, max_new_tokens=10, seed=2)
    steer = [wb.Add("blocks.0.hook_resid_post", vector=torch.randn(model.dims.d_model,
                                                                   generator=torch.Generator().manual_seed(1)) * 4)]
    res = counterfactuals(model, None, obs, steer)
    assert any(d is not None for d in res.diverged_at)
    for o, c, d in zip(obs.ids, res.ids, res.diverged_at):  # identical up to the divergence
        assert c[:d] == o[:d] if d is not None else c == o

    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    d = model.dims
    edit = wb.editing.WeightEdit({1: torch.randn(d.d_model, d.d_mlp, generator=torch.Generator().manual_seed(2)) * 0.05})
    res_e = counterfactuals(model, None, obs, edit, batch_size=2)
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())  # restored bit-exactly
    assert all(len(c) == len(o) for o, c in zip(obs.ids, res_e.ids)) and res_e.meta["intervention"].startswith("weight")
    assert counterfactuals(model, None, obs, wb.editing.WeightEdit({1: torch.zeros(d.d_model, d.d_mlp)})).ids == obs.ids

    twin = wb.Model(copy.deepcopy(model.hf), model.tokenizer, name="twin")
    assert counterfactuals(model, None, obs, twin).ids == obs.ids
    other = wb.tiny_model("llama", seed=1, tokenizer=model.tokenizer)
    assert counterfactuals(model, None, obs, other).ids != obs.ids
    gpt2 = tiny("gpt2")  # another family, same tokenizer: allowed
    assert len(counterfactuals(model, None, obs, gpt2).ids) == 3


def test_token_level_counterfactual(tiny):
    model = tiny("llama")
    obs = sample(model, PROMPTS, max_new_tokens=10, seed=4)
    lp = [len(p) for p in obs.prompt_ids]
    # replacing a token by itself changes nothing
    same = [(lp[r] + 3, obs.ids[r][3]) for r in range(3)]
    assert counterfactuals(model, None, obs, replace=same).ids == obs.ids
    new_tok = model.to_single_token(" happy")
    res = counterfactuals(model, None, obs, replace=[(lp[r] + 3, new_tok) for r in range(3)])
    for o, c in zip(obs.ids, res.ids):
        assert c[:3] == o[:3] and c[3] == new_tok and len(c) == len(o)
    # in the prompt: the whole continuation is decoded again, with the same noise
    res_p = counterfactuals(model, None, obs, replace=(1, new_tok))
    assert all(len(c) == len(o) for o, c in zip(obs.ids, res_p.ids))
    # the interventional baseline: fresh noise, no reason to keep the observed string
    fresh = counterfactuals(model, None, obs, noise="fresh", seed=100)
    assert fresh.ids != obs.ids


# -- bad input ------------------------------------------------------------------------------------------

def test_bad_inputs(tiny):
    model = tiny("llama")
    with pytest.raises(ValueError, match="continuations"):
        counterfactuals(model, ["Hello"], [""])
    with pytest.raises(ValueError, match="continuations"):
        counterfactuals(model, ["Hello"], [[]])
    with pytest.raises(ValueError, match="v8-seed0.*tiny-llama"):
        counterfactuals(model, ["Hello"], [" world"], small_vocab_model(0))
    logits = model.forward("Hello")[0, -1]
    worst = int(logits.argmin())
    with pytest.raises(ValueError, match=f"token {worst} at position 0 .*top_k=5"):
        counterfactuals(model, ["Hello"], [[worst, 5]], temperature=1.0, top_k=5)
    with pytest.raises(ValueError, match=f"token {worst} at position 0 .*argmax"):
        hindsight_noise(model, ["Hello"], [[worst]], temperature=0)
    with pytest.raises(ValueError, match="position 1"):  # row 0 fine at position 0, impossible at 1
        ids = model.to_tokens("Hello")[0].tolist() + [int(logits.argmax())]
        worst1 = int(model.forward(torch.tensor([ids]))[0, -1].argmin())
        counterfactuals(model, ["Hello"], [[int(logits.argmax()), worst1]], top_p=0.5)
    obs = sample(model, ["Hello"], max_new_tokens=3)
    with pytest.raises(ValueError, match="temperature: the observed strings were sampled with temperature=1.0"):
        counterfactuals(model, None, obs, temperature=0.5)
    with pytest.raises(ValueError, match="intervention"):
        counterfactuals(model, None, obs, "steer")
    with pytest.raises(ValueError, match="replace: position 99"):
        counterfactuals(model, None, obs, replace=(99, 5))


# -- measures and the CLI -------------------------------------------------------------------------------

def test_measures(tmp_path, tiny):
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("ab", "ab") == 0
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    model = tiny("llama")
    obs = sample(model, PROMPTS, max_new_tokens=6, seed=1)
    res = counterfactuals(model, None, obs, replace=[(len(p) + 2, 5) for p in obs.prompt_ids])
    df = measure(res, new=res.texts[0][-3:], old="zzz-not-there")
    assert list(df["identical"]) == [False] * 3 and (df["prefix"] == 2 / 6).all()
    assert df["new_appears"][0] and df["old_absent"].all()
    s = summarize(df)
    assert s["identical"] == 0 and s["median_prefix_diverging"] == pytest.approx(1 / 3)
    save(tmp_path / "out", df, res.meta)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == 3
    assert (tmp_path / "out" / "pairs.csv").read_text().count("\n") >= 4


def test_cli_counterfactual(tmp_path, capsys):
    from workbench.cli import main
    from workbench.steering import SteeringVector

    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat sat\nHello there\n")
    assert main(["counterfactual", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(tmp_path / "id"),
                 "--max-new-tokens", "6"]) == 0
    assert json.loads((tmp_path / "id" / "summary.json").read_text())["identical"] == 1.0
    model = wb.tiny_model("llama")
    vec = SteeringVector({1: torch.randn(model.dims.d_model) * 5}, meta={"n_layers": 2})
    vec.save(tmp_path / "v.safetensors")
    observed = tmp_path / "obs.jsonl"
    observed.write_text("\n".join(json.dumps({"prompt": p, "continuation": c}) for p, c in
                                  zip(["The cat sat", "Hello"], sample(model, ["The cat sat", "Hello"],
                                                                       max_new_tokens=6).texts)))
    assert main(["counterfactual", "--model", "tiny-llama", "--observed", str(observed), "--out",
                 str(tmp_path / "st"), "--steer", str(tmp_path / "v.safetensors"), "--multiplier", "3"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "st" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"identical", "prefix", "edit"} <= set(rows[0])
    assert main(["counterfactual", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(tmp_path / "b"),
                 "--model-b", "tiny-gpt2", "--replace-token", "2: dog", "--max-new-tokens", "4"]) == 0
    d = model.dims
    wb.editing.WeightEdit({1: torch.randn(d.d_model, d.d_mlp, generator=torch.Generator().manual_seed(2)) * 0.05},
                  meta={"method": "test"}).save(tmp_path / "edit")
    assert main(["counterfactual", "--model", "tiny-llama", "--observed", str(observed), "--out", str(tmp_path / "e"),
                 "--edit", str(tmp_path / "edit"), "--new", "the", "--old", "zzz"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["old_absent"] == 1.0 and "weight edit" in summary["meta"]["intervention"]
    assert main(["counterfactual", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(tmp_path / "x"),
                 "--replace-token", "two:dog"]) == 2
    assert "replace-token" in capsys.readouterr().err


# -- resumable runs, the side-by-side view --------------------------------------------------------------

def test_sweep_resumes_to_the_uninterrupted_result(tmp_path, tiny):
    from workbench.counterfactual import counterfactual_sweep

    model = tiny("llama")
    prompts = PROMPTS + ["Hello there", "A dog"]
    obs = sample(model, prompts, max_new_tokens=6, seed=5)
    push = [wb.Add("blocks.1.hook_resid_pre", vector=torch.randn(model.dims.d_model,
                                                                 generator=torch.Generator().manual_seed(0)) * 3)]
    ref = counterfactuals(model, None, obs, push)
    assert any(d is not None for d in ref.diverged_at)  # the intervention changes something
    full = counterfactual_sweep(tmp_path / "a", model, None, obs, push, chunk=2)
    assert full.ids == ref.ids and full.texts == ref.texts and full.diverged_at == ref.diverged_at
    assert sorted(p.name for p in (tmp_path / "a" / "chunks").iterdir()) == ["0.json", "1.json", "2.json"]
    # differently chunked: row r keeps its noise seed whatever its chunk
    assert counterfactual_sweep(tmp_path / "c3", model, None, obs, push, chunk=3).ids == ref.ids
    # a run killed after its first chunk: the later chunks are missing; re-running computes only those
    chunks = tmp_path / "a" / "chunks"
    (chunks / "1.json").unlink(), (chunks / "2.json").unlink()
    first = (chunks / "0.json").stat().st_mtime_ns
    resumed = counterfactual_sweep(tmp_path / "a", model, None, obs, push, chunk=2)
    assert resumed.ids == ref.ids and resumed.texts == ref.texts and resumed.prompts == ref.prompts
    assert (chunks / "0.json").stat().st_mtime_ns == first and (chunks / "2.json").is_file()
    # a folder of another intervention (or other observed strings) is refused, nothing written; force replaces
    other = [wb.Add("blocks.1.hook_resid_pre", vector=torch.ones(model.dims.d_model))]
    with pytest.raises(ValueError, match="intervention_hash"):
        counterfactual_sweep(tmp_path / "a", model, None, obs, other, chunk=2)
    with pytest.raises(ValueError, match="observed_hash"):
        counterfactual_sweep(tmp_path / "a", model, None, sample(model, prompts, max_new_tokens=6, seed=6), push, chunk=2)
    assert (chunks / "0.json").stat().st_mtime_ns == first
    forced = counterfactual_sweep(tmp_path / "a", model, None, obs, other, chunk=2, force=True)
    assert forced.ids == counterfactuals(model, None, obs, other).ids


def test_counterfactual_view_marks_exactly_the_differing_tokens(tmp_path, tiny):
    from workbench.views import counterfactual_view
    from workbench.views.counterfactual import diff_marks

    assert diff_marks([1, 2, 3, 4], [1, 9, 3, 4]) == ([False, True, False, False], [False, True, False, False])
    assert diff_marks([1, 2], [1, 2, 5]) == ([False, False], [False, False, True])
    model = tiny("llama")
    obs = sample(model, PROMPTS, max_new_tokens=6, seed=5)
    same = counterfactual_view(counterfactuals(model, None, obs), model)
    assert "<mark" not in same.body and "3 identical (100.0%)" in same.body
    res = counterfactuals(model, None, obs, replace=[(len(p) + 1, 7) for p in obs.prompt_ids])
    view = counterfactual_view(res, model)
    n_marked = sum(sum(a) + sum(b) for a, b in (diff_marks(x, y) for x, y in zip(res.observed_ids, res.ids)))
    assert n_marked > 0 and view.body.count("<mark") == n_marked
    path = wb.views.save_html(view, tmp_path / "cf.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "http" not in text and 'data-kind="counterfactual"' in text


def test_cli_counterfactual_resumes_and_writes_html(tmp_path):
    from workbench.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat sat\nHello there\nOnce upon\n")
    argv = ["counterfactual", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(tmp_path / "o"),
            "--model-b", "tiny-gpt2", "--max-new-tokens", "5", "--batch-size", "2", "--html"]
    assert main(argv) == 0
    first = (tmp_path / "o" / "pairs.jsonl").read_text()
    (tmp_path / "o" / "chunks" / "1.json").unlink()  # as if killed before the last chunk
    assert main(argv) == 0
    assert (tmp_path / "o" / "pairs.jsonl").read_text() == first
    assert "<table>" in (tmp_path / "o" / "counterfactuals.html").read_text()
    no_b = [a for a in argv if a not in ("--model-b", "tiny-gpt2")]
    assert main(no_b) == 2  # another configuration (no second model) in the same folder: refused


# -- the exact Gumbel-max coupling: what an intervention's strength predicts -------------------------------------

def test_gumbel_agreement_equals_the_quadratic_formula_and_shared_noise_draws():
    """O(V log V) `gumbel_agreement` equals the O(V^2) sum_x 1 / sum_j max(p_j/p_x, q_j/q_x) (also with masked, zero
    entries and ties), is 1 for q = p, and matches the rate of equal argmaxes over shared Gumbel draws."""
    g = torch.Generator().manual_seed(0)
    p = (torch.randn(4, 40, generator=g) * 2).softmax(-1).double()
    q = (torch.randn(4, 40, generator=g) * 2).softmax(-1).double()
    p[1, :10], q[1, 5:15] = 0, 0  # top-k style masks
    p[1], q[1] = p[1] / p[1].sum(), q[1] / q[1].sum()
    q[2] = p[2]  # ties everywhere
    q[3, :20] = p[3, :20] * 2  # a block of tied ratios
    q[3] /= q[3].sum()
    quad = torch.stack([sum((1 / torch.maximum(p[b] / p[b, x], q[b] / q[b, x]).sum()).nan_to_num(0.0)
                            for x in range(40) if p[b, x] > 0 and q[b, x] > 0) for b in range(4)])
    assert torch.allclose(gumbel_agreement(p, q), quad, atol=1e-12)
    assert abs(float(gumbel_agreement(p[2], q[2])) - 1) < 1e-12
    keep = gumbel_keep(p[0], q[0])  # keep_x = 1 / sum_j max(p_j, q_j p_x / q_x)
    assert torch.allclose(keep, torch.stack([1 / torch.maximum(p[0], q[0] * p[0, x] / q[0, x]).sum() for x in range(40)]))
    n = 200_000
    noise = gumbel((n, 40), torch.Generator().manual_seed(1))
    same = ((p[0].log() + noise).argmax(-1) == (q[0].log() + noise).argmax(-1)).double().mean()
    a = float(gumbel_agreement(p[0], q[0]))
    assert abs(float(same) - a) < 4 * (a * (1 - a) / n) ** 0.5


def test_first_token_agreement_of_counterfactuals_matches_the_exact_prediction():
    """1000 one-token samples of a vocabulary-8 model and their hindsight counterfactuals under another model: the
    share that keep the first token is the sum of the exact per-row keep probabilities within 4 binomial sd, and
    the prediction from the two distributions alone (`agreement`) within 4 sd too."""
    base, other = small_vocab_model(0), small_vocab_model(1)
    obs = sample(base, [[1, 2, 3]] * 1000, max_new_tokens=1, seed=0, batch_size=500)
    res = counterfactuals(base, None, obs, other, batch_size=500)
    c = first_token_coupling(base, obs, other)
    kept = sum(a[0] == b[0] for a, b in zip(res.observed_ids, res.ids))
    keep = torch.tensor(c["keep"], dtype=torch.float64)
    assert abs(kept - float(keep.sum())) < 4 * float((keep * (1 - keep)).sum().sqrt())
    a = c["agreement"][0]  # one prompt: every row shares p and q
    assert 0.1 < a < 0.9 and abs(kept / 1000 - a) < 4 * (a * (1 - a) / 1000) ** 0.5
    assert 0 < c["tv"][0] < 1 and first_token_coupling(base, obs, None)["agreement"][0] == pytest.approx(1.0)


@pytest.mark.slow
def test_first_token_agreement_on_the_default_model_matches_the_exact_prediction():
    """The default model, 16 shipped prompts x 16 seeds (256 rows), the sentiment steering vector (layer 12, x4):
    the measured first-token agreement of hindsight counterfactuals equals the exact Gumbel-max prediction (the sum of
    per-row keep probabilities) within 4 Poisson-binomial sd."""
    from workbench.steering import build_steering_vector, load_pairs

    model = wb.load_model()
    prompts = [l for l in wb.data.data_path("steering/prompts.txt").read_text().splitlines() if l and not l.startswith("#")]
    obs = sample(model, [p for p in prompts for _ in range(16)], max_new_tokens=1, seed=0)
    vec = build_steering_vector(model, *load_pairs(wb.data.data_path("steering/sentiment_pairs.jsonl")), layers=[12])
    iv = vec.interventions(model, 4.0)
    res = counterfactuals(model, None, obs, iv)
    c = first_token_coupling(model, obs, iv)
    kept = sum(a[0] == b[0] for a, b in zip(res.observed_ids, res.ids))
    keep = torch.tensor(c["keep"], dtype=torch.float64)
    assert 0.05 < float(keep.mean()) < 0.95  # a test with power: neither all kept nor none
    assert abs(kept - float(keep.sum())) < 4 * float((keep * (1 - keep)).sum().sqrt())
