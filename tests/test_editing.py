"""ROME / MEMIT / FT-L weight edits: the update equations, bit-exact restore, refusal of bad input, the
statistics cache, CounterFact metrics, and a real edit on the default model."""
import json
import subprocess
import sys

import pytest
import torch

import workbench as wb
from workbench.core.arch import weight_out_in
from workbench.editing import (EditError, EditRejected, EditRequest, WeightEdit, build_requests, ft_l,
                               generation_entropy, memit, memit_update, rank_one_update, rome, second_moment, summarize)
from workbench.editing.requests import target_logprobs
from workbench.data.facts import DEFAULT_FACTS, load_facts

PREFIXES = ["", "I was reading about it yesterday. ", "Here is a fact. "]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text file written from the project's facts dataset (offline, a few thousand tokens)."""
    facts = load_facts(DEFAULT_FACTS)
    text = " ".join(f"{f['prompt']} {f['object']}. " + " ".join(f"{p} {f['object']}." for p in f["paraphrases"]) for f in facts)
    path = tmp_path_factory.mktemp("corpus") / "facts.txt"
    path.write_text(text)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty statistics cache (the converted default model is linked in, not converted again)."""
    from workbench.core.io import cache_dir

    models = cache_dir() / "models"
    (tmp_path / "cache").mkdir()
    if models.is_dir():
        (tmp_path / "cache" / "models").symlink_to(models)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.hf.state_dict().items()}


def assert_same(model, snap):
    for k, v in model.hf.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed"


def test_rank_one_update_solves_the_constrained_least_squares():
    # ROME eq. (2) against the KKT system of  min |W_hat K - W K|^2  s.t.  W_hat k = v
    g = torch.Generator().manual_seed(0)
    d_out, d_in, n = 5, 7, 40
    W, K = torch.randn(d_out, d_in, generator=g, dtype=torch.float64), torch.randn(d_in, n, generator=g, dtype=torch.float64)
    k, v = torch.randn(d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)
    C = K @ K.T / n
    upd = rank_one_update(W, C, k, v)
    # KKT per output row: [2 K K^T, k; k^T, 0] [w; mu] = [2 K K^T w_0; v_r]
    A = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    A[:d_in, :d_in], A[:d_in, d_in], A[d_in, :d_in] = 2 * K @ K.T, k, k
    ref = torch.stack([torch.linalg.solve(A, torch.cat([2 * K @ K.T @ W[r], v[r:r + 1]]))[:d_in] for r in range(d_out)])
    assert torch.allclose(W + upd, ref, atol=1e-8)
    assert torch.allclose((W + upd) @ k, v, atol=1e-10)


def test_memit_update_solves_the_regularised_least_squares():
    g = torch.Generator().manual_seed(1)
    d_out, d_in, n, lam = 4, 6, 3, 2.5
    K0 = torch.randn(d_in, 50, generator=g, dtype=torch.float64)
    C = K0 @ K0.T / 50
    K, R = torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(n, d_out, generator=g, dtype=torch.float64)
    delta = memit_update(R, K, C, lam)
    # gradient of  lam * tr(D C D^T) + |D K^T - R^T|^2  vanishes at the minimum
    grad = 2 * lam * delta @ C + 2 * (delta @ K.T - R.T) @ K
    assert grad.abs().max() < 1e-10


def test_rome_flips_a_tiny_model_and_restores_bit_exactly(tiny, cache, corpus):
    model = tiny("llama")
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    snap = snapshot(model)
    # layer 0: the subject's state must still pass through attention to reach the last token
    C = second_moment(model, 0, corpus=corpus, n_tokens=2048, progress=False)
    edit = rome(model, req, 0, prefixes=PREFIXES, C=C, steps=30)
    assert_same(model, snap)  # computing an edit changes nothing
    prompts = [req.prompt, "I was reading about it yesterday. " + req.prompt]
    before = target_logprobs(model, prompts, [" Rome"] * 2)
    with edit.applied(model, check=False):  # a random tiny model needs a large update (|Delta|/|W| > 1)
        after = target_logprobs(model, prompts, [" Rome"] * 2)
    assert_same(model, snap)
    assert (after > before + 2).all()  # target log-prob up by more than 2 nats on the prompt and a prefixed prompt
    handle = edit.apply(model, check=False)
    assert not torch.equal(weight_out_in(model.module("mlp_down", 0)), snap["model.layers.0.mlp.down_proj.weight"])
    handle.restore()
    assert_same(model, snap)
    with pytest.raises(RuntimeError):
        with edit.applied(model, check=False):
            raise RuntimeError("boom")
    assert_same(model, snap)


def test_rome_update_orientation_on_gpt2_conv1d(tiny, cache, corpus):
    # GPT-2 stores the down-projection transposed (Conv1D); the edit must still map k* to W k* + delta
    model = tiny("gpt2")
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    C = second_moment(model, 0, corpus=corpus, n_tokens=1024, progress=False)
    edit = rome(model, req, 0, prefixes=PREFIXES, C=C, steps=3)
    from workbench.editing.rank_one import compute_keys

    k = compute_keys(model, [req], 0, PREFIXES)[0]
    # rank one, its rows along C^-1 k*
    u = torch.linalg.solve(C.double(), k.double())
    delta = edit.deltas[0].double()
    assert torch.linalg.matrix_rank(delta, rtol=1e-5) == 1
    row = delta[delta.norm(dim=1).argmax()]
    assert abs(torch.nn.functional.cosine_similarity(row, u, dim=0)) > 1 - 1e-6


@pytest.mark.parametrize("bad, arg", [
    (dict(prompt="The capital of France is", subject="Spain", target=" Rome"), "subject"),
    (dict(prompt="The capital of France is", subject="France", target=""), "target"),
    (dict(prompt="The capital of France is", subject="France", target=" Rome\nand Paris"), "target"),
    (dict(prompt="The capital of France is", subject="France", target="   "), "target"),
])
def test_bad_requests_fail_early_and_touch_nothing(tiny, bad, arg):
    model = tiny("llama")
    snap = snapshot(model)
    for fn in (lambda: rome(model, bad, 1, prefixes=PREFIXES, C=torch.eye(128)),
               lambda: memit(model, [bad], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: torch.eye(128)}),
               lambda: ft_l(model, bad, 1)):
        with pytest.raises(EditError, match=arg):
            fn()
    assert_same(model, snap)


def test_layer_out_of_range_and_noop(tiny):
    model = tiny("llama")
    snap = snapshot(model)
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    with pytest.raises(EditError, match="layer: layer 2 out of range"):
        rome(model, req, 2, prefixes=PREFIXES, C=torch.eye(128))
    with pytest.raises(EditError, match="C: expected a \\[128, 128\\]"):
        rome(model, req, 1, prefixes=PREFIXES, C=torch.eye(64))
    with pytest.raises(EditError, match="hparams: unknown"):
        rome(model, req, 1, prefixes=PREFIXES, C=torch.eye(128), step=3)
    with pytest.raises(EditError, match="layers: layer -1 out of range"):
        memit(model, [req], [-1, 0], prefixes=PREFIXES, Cs={})
    # the target the model already predicts: reported as a no-op, nothing to apply
    ids = model.tokenizer(req.prompt).input_ids
    with torch.no_grad():
        top = model.hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
    edit = rome(model, dict(prompt=req.prompt, subject="France", target=model.tokenizer.decode([top])), 1,
                prefixes=PREFIXES, C=torch.eye(128))
    assert edit.noop and edit.deltas == {}
    assert_same(model, snap)


def test_failed_edits_leave_weights_untouched(tiny):
    model = tiny("llama")
    snap = snapshot(model)
    d = model.dims
    nan = torch.zeros(d.d_model, d.d_mlp)
    nan[3, 4] = float("nan")
    good = torch.full((d.d_model, d.d_mlp), 1e-3)
    with pytest.raises(EditError, match="NaN"):
        WeightEdit({0: good, 1: nan}).apply(model, check=False)
    with pytest.raises(EditError, match="shape"):
        WeightEdit({0: good[:, :5]}).apply(model, check=False)
    # MEMIT whose second layer's statistics hold NaN: refused up front, before any value optimisation
    req = EditRequest("The capital of France is the city of", "France", " Rome")
    with pytest.raises(EditError, match="Cs: layer 1: holds NaN or inf"):
        memit(model, [req], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: torch.full((128, 128), float("nan"))}, steps=2)
    # ... finite but overflowing in lambda C: the first layer was updated on the way, and is put back
    with pytest.raises(EditError, match="layer 1 update is not finite"):
        memit(model, [req], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: torch.full((128, 128), 1e308, dtype=torch.float64)},
              steps=2)
    assert_same(model, snap)


def test_abnormal_edit_is_rejected_unless_forced(tiny):
    model = tiny("llama")
    snap = snapshot(model)
    w = weight_out_in(model.module("mlp_down", 1))
    huge = WeightEdit({1: 5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.abs().mean()})
    report = huge.check(model)
    assert not report["ok"] and report["relative_norm"][1] > 1
    with pytest.raises(EditRejected, match="abnormal"):
        huge.apply(model)
    assert_same(model, snap)
    with huge.applied(model, allow_abnormal=True):
        assert not torch.equal(w, snap["model.layers.1.mlp.down_proj.weight"])
    assert_same(model, snap)
    small = WeightEdit({1: 1e-4 * torch.ones(w.shape)})
    assert small.check(model)["ok"]


def test_save_and_load_roundtrip(tiny, tmp_path):
    model = tiny("llama")
    d = model.dims
    edit = WeightEdit({0: torch.randn(d.d_model, d.d_mlp) * 1e-3, 1: torch.randn(d.d_model, d.d_mlp) * 1e-3},
                      {"method": "test", "fingerprint": model.fingerprint})
    edit.save(tmp_path / "e")
    back = WeightEdit.load(tmp_path / "e")
    assert back.meta == edit.meta and set(back.deltas) == {0, 1}
    assert all(torch.equal(back.deltas[l], edit.deltas[l]) for l in (0, 1))
    other = tiny("qwen2")
    with pytest.raises(EditError):
        back.apply(other)  # another model: wrong shapes / fingerprint
    (tmp_path / "e" / "edit.json").write_text(json.dumps({"layers": [0], "meta": {}}))
    with pytest.raises(EditError, match="layers"):
        WeightEdit.load(tmp_path / "e")


def test_second_moment_matches_a_plain_loop_and_refuses_stale_cache(tiny, cache, corpus):
    model = tiny("llama")
    C = second_moment(model, 1, corpus=corpus, n_tokens=600, seq_len=100, batch_size=4, progress=False)
    ids = model.tokenizer(corpus.read_text(), add_special_tokens=False).input_ids[:600]
    keys = []
    for s in range(0, 600, 100):  # one sequence at a time, read through the plain site cache
        _, c = model.run_with_cache(torch.tensor([ids[s:s + 100]]), ["blocks.1.mlp.hook_post"])
        keys.append(c["blocks.1.mlp.hook_post"][0].double())
    K = torch.cat(keys)
    assert torch.allclose(C.double(), K.T @ K / len(K), rtol=1e-4, atol=1e-7)
    files = list(cache.rglob("layer1-n600.safetensors"))
    assert len(files) == 1 and str(model.fingerprint) in str(files[0])
    assert torch.equal(second_moment(model, 1, corpus=corpus, n_tokens=600, seq_len=100, progress=False), C)
    from safetensors.torch import save_file

    save_file({"C": C}, str(files[0]), metadata={"workbench": json.dumps({"layer": 0})})  # a stale/foreign file
    with pytest.raises(ValueError, match="stale or foreign"):
        second_moment(model, 1, corpus=corpus, n_tokens=600, seq_len=100, progress=False)


def test_memit_and_ftl_raise_the_targets_on_a_tiny_model(tokenizer, cache, corpus):
    model = wb.tiny_model("llama", n_layers=4, tokenizer=tokenizer)
    snap = snapshot(model)
    reqs = [EditRequest("The capital of France is the city of", "France", " Rome"),
            EditRequest("The capital of Japan is the city of", "Japan", " Cairo")]
    Cs = wb.editing.second_moments(model, [0, 1], corpus=corpus, n_tokens=2048, progress=False)
    edit = memit(model, reqs, [0, 1], prefixes=PREFIXES, Cs=Cs, lam=1.0, steps=30)
    assert_same(model, snap)
    assert set(edit.deltas) == {0, 1}
    prompts, targets = [r.prompt for r in reqs], [r.target for r in reqs]
    before = target_logprobs(model, prompts, targets)
    with edit.applied(model, check=False):
        after = target_logprobs(model, prompts, targets)
    assert (after > before + 1).all()
    e = ft_l(model, reqs[0], 1, steps=10, lr=1e-2, eps=1e-2)
    assert_same(model, snap)
    assert 0 < e.deltas[1].abs().max() <= 1e-2 + 1e-6
    with e.applied(model, check=False):
        assert target_logprobs(model, prompts[:1], targets[:1])[0] > before[0]


def test_counterfact_metrics_by_hand():
    results = [
        {"rewrite": {"p_new": 0.6, "p_true": 0.1}, "paraphrase": [{"p_new": 0.5, "p_true": 0.2}, {"p_new": 0.1, "p_true": 0.3}],
         "neighborhood": [{"p_new": 0.1, "p_true": 0.7}], "entropy": 4.0},
        {"rewrite": {"p_new": 0.2, "p_true": 0.4}, "paraphrase": [{"p_new": 0.3, "p_true": 0.1}, {"p_new": 0.4, "p_true": 0.2}],
         "neighborhood": [{"p_new": 0.5, "p_true": 0.2}, {"p_new": 0.1, "p_true": 0.3}], "entropy": 5.0},
    ]
    m = summarize(results)
    assert m["ES"] == 50.0 and m["PS"] == 75.0 and m["NS"] == 75.0 and m["n"] == 2
    assert m["EM"] == pytest.approx(100 * (0.5 - 0.2) / 2)
    assert m["NM"] == pytest.approx(100 * (0.6 + (-0.3 + 0.2) / 2) / 2)
    assert m["S"] == pytest.approx(100 * 3 / (1 / 0.5 + 1 / 0.75 + 1 / 0.75), abs=0.01)
    assert m["GE"] == 4.5
    # "a b a b": bigrams ab, ba, ab -> H = 0.9183 bits; trigrams aba, bab -> 1 bit; weights 2/3, 4/3
    assert generation_entropy(["a b a b"]) == pytest.approx((2 / 3 * 0.918296 + 4 / 3 * 1.0) / 2, abs=1e-5)


def test_neighbours_edited_in_the_same_batch_are_not_neighbours():
    """In a MEMIT batch, a neighbourhood prompt that is another request's prompt was changed on purpose."""
    def res(prompt, neighbours):  # neighbours: (prompt, p_true > p_new?)
        return {"rewrite": {"p_new": 0.6, "p_true": 0.1}, "paraphrase": [], "request": {
                    "prompt": prompt, "neighborhood": [{"prompt": q} for q, _ in neighbours]},
                "neighborhood": [{"p_new": 0.1, "p_true": 0.5} if ok else {"p_new": 0.5, "p_true": 0.1}
                                 for _, ok in neighbours]}
    results = [res("A is in", [("B is in", False), ("C is in", True)]),
               res("B is in", [("A is in", False), ("C is in", True), ("D is in", False)])]
    assert summarize(results)["NS"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2, abs=0.01)
    m = summarize(results, edited_prompts={"A is in", "B is in"})
    assert m["NS"] == pytest.approx(100 * (1 + 1 / 2) / 2, abs=0.01)
    assert m["NS_all"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2, abs=0.01) and m["n_neighbours_edited"] == 2
    with pytest.raises(ValueError, match="request"):
        summarize([{k: v for k, v in results[0].items() if k != "request"}], edited_prompts={"A is in"})


def test_build_requests_from_facts():
    facts = load_facts(DEFAULT_FACTS)
    reqs = build_requests(facts, n=40, seed=1)
    by_id = {f["id"]: f for f in facts}
    assert len(reqs) == 40 and len({r["relation"] for r in reqs}) == 19
    for r in reqs:
        f = by_id[r["id"]]
        same_rel = {g["object"] for g in facts if g["relation"] == f["relation"]}
        assert r["target_new"].strip() in same_rel and r["target_new"].strip() != f["object"]
        assert r["paraphrase_prompts"] == f["paraphrases"]
        assert r["neighborhood"] and all(f["subject"] not in n["prompt"] for n in r["neighborhood"])


def test_cli_edit_writes_metrics(tmp_path, cache):
    reqs = build_requests(load_facts(DEFAULT_FACTS), n=2, seed=0)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "workbench.cli", "edit", "--model", "tiny-llama", "--requests", str(tmp_path / "r.jsonl"),
           "--method", "rome", "--layer", "1", "--out", str(out), "--steps", "3", "--stats-tokens", "512",
           "--gen-tokens", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert set("ES EM PS PM NS NM S GE n".split()) <= set(m) and m["n"] == 2
    assert len(list((out / "results").glob("*.json"))) == 2
    p = subprocess.run(cmd[:-10] + ["--method", "rome", "--layer", "9", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert p.returncode == 2 and "layer 9 out of range" in p.stderr


@pytest.mark.slow
def test_rome_flips_a_fact_on_the_default_model(default_model, cache):
    model = default_model
    snap = snapshot(model)
    prompt = "The capital of France is the city of"
    top = lambda: model.tokenizer.decode(model(prompt)[0, -1].argmax())
    assert top() == " Paris"
    # C from 2048 tokens sampled from the model (the default corpus, smaller) keeps the test quick. Fact sentences
    # alone make C ill-conditioned: C^-1 k* then tells the bare prompt's key from k* and the edit does not generalise.
    C = second_moment(model, 5, n_tokens=2048, progress=False)
    edit = rome(model, dict(prompt=prompt, subject="France", target=" Rome"), C=C, value_prefixes=1)
    assert edit.meta["layer"] == 5
    with edit.applied(model):  # passes the safety check
        assert top() == " Rome"
        # an unrelated fact is kept (with this small C, other capitals can bleed; the 100-edit NS measures that)
        assert model.tokenizer.decode(model("The Eiffel Tower is located in the city of")[0, -1].argmax()) == " Paris"
    assert top() == " Paris"
    assert_same(model, snap)
