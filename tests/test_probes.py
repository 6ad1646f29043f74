import itertools
import json
import random

import pytest
import torch

import probes
import workbench as wb

WORDS_A = [" cat", " dog", " horse", " bird"]
WORDS_B = [" red", " blue", " green", " black"]
PRE = ["The", "A", "My", "Her", "This", "One"]
ADJ = [" big", " small", " old", " new", " tall", " short"]


def concept_prompts(n_contexts=40, seed=0):
    """Paired prompts: every context appears once with a class-A word and once with its class-B partner."""
    rng = random.Random(seed)
    contexts = rng.sample([p + a + b for p, a, b in itertools.product(PRE, ADJ, ADJ) if a != b], n_contexts)
    prompts, labels = [], []
    for ctx, (a, b) in itertools.product(contexts, zip(WORDS_A, WORDS_B)):
        prompts += [ctx + a, ctx + b]
        labels += [1, 0]
    return prompts, labels


def test_collect_activations_matches_run_with_cache_and_caches(tiny, tmp_path):
    model = tiny("llama")
    prompts = ["The cat sat", "A dog", "My big old horse ran"]
    for reduce in ("last", "mean"):
        acts = probes.collect_activations(model, prompts, [0, 1], reduce=reduce, batch_size=2, cache=tmp_path)
        for i, p in enumerate(prompts):  # one prompt at a time, no padding: the reference
            _, c = model.run_with_cache(p, ["blocks.1.hook_resid_pre"])
            ref = c["blocks.1.hook_resid_pre"][0]
            ref = ref[-1] if reduce == "last" else ref.mean(0)
            torch.testing.assert_close(acts[1][i], ref, atol=1e-5, rtol=1e-5)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 2  # one per reduction
    again = probes.collect_activations(model, prompts, [0, 1], reduce="mean", batch_size=2, cache=tmp_path)
    torch.testing.assert_close(again[1], acts[1], atol=0, rtol=0)
    probes.collect_activations(model, prompts[:2], [0, 1], cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # other prompts, another key


def test_probes_find_a_concept_and_not_random_labels(tiny):
    model = tiny("llama")
    prompts, labels = concept_prompts()
    acts = probes.collect_activations(model, prompts, [0, 1], cache=False)
    for method, floor in (("logreg", 0.9), ("diffmean", 0.75)):  # a random model mixes the words nonlinearly by layer 1
        res = probes.train_probes(acts, labels, method=method)
        assert res.accuracy(0) >= 0.95 and res.test_acc.min() >= floor, (method, res.test_acc)
        assert abs(float(res.direction(0).norm()) - 1) < 1e-5
    shuffled = random.Random(1).sample(labels, len(labels))
    res = probes.train_probes(acts, shuffled, method="logreg")
    assert res.test_acc.max() <= 0.7, res.test_acc
    # the difference-of-means direction is the (normalised) gap between the class means
    d = probes.diff_of_means(acts[0], labels)
    ref = acts[0][torch.tensor(labels) == 1].mean(0) - acts[0][torch.tensor(labels) == 0].mean(0)
    torch.testing.assert_close(d, ref)


def test_ablating_the_direction_drops_probes_to_chance(tokenizer):
    """A model built to carry the concept along one direction only: each class-A word's embedding is
    u_i + v and its class-B partner's is u_i - v. Projecting the probe's direction out of the stream at
    layer 0 must bring probes at every layer down to chance; before, they are near perfect."""
    model = wb.tiny_model("llama", seed=3, tokenizer=tokenizer)
    emb = model.module("embed").weight
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(model.dims.d_model, generator=gen)
    v = 0.5 * v / v.norm() * emb.detach().norm(dim=1).mean()
    with torch.no_grad():
        for a, b in zip(WORDS_A, WORDS_B):
            ia, ib = model.to_single_token(a), model.to_single_token(b)
            u = emb[ia].clone()
            emb[ia], emb[ib] = u + v, u - v
    prompts, labels = concept_prompts(n_contexts=30)
    acts = probes.collect_activations(model, prompts, [0, 1], cache=False)
    before = {m: probes.train_probes(acts, labels, method=m) for m in ("logreg", "diffmean")}
    for m, r in before.items():
        assert r.accuracy(0) >= 0.95 and r.test_acc.min() >= 0.75, (m, r.test_acc)
    direction = before["diffmean"].direction(0)
    assert abs(float(direction @ v / v.norm())) > 0.98  # the probe found the planted direction (fit on a 75% split)
    ablate = wb.ProjectOut("blocks.0.hook_resid_pre", basis=direction[None])
    after_acts = probes.collect_activations(model, prompts, [0, 1], cache=False, interventions=[ablate])
    for m in ("logreg", "diffmean"):
        r = probes.train_probes(after_acts, labels, method=m)
        assert r.test_acc.max() <= 0.6, (m, r.test_acc)


def test_direction_export_roundtrip_and_errors(tiny, tmp_path):
    model = tiny("llama")
    prompts, labels = concept_prompts(n_contexts=10)
    res = probes.train_probes(probes.collect_activations(model, prompts, [1], cache=False), labels, method="diffmean")
    path = res.save_direction(tmp_path / "concept.safetensors", model=model)
    direction, meta = probes.load_direction(path, model)
    torch.testing.assert_close(direction, res.direction(1))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side == meta
    assert meta["layer"] == 1 and meta["site"] == "blocks.1.hook_resid_pre"
    assert meta["model_fingerprint"] == model.fingerprint and meta["accuracy"] == res.accuracy(1)
    with pytest.raises(ValueError, match="d_model"):
        probes.save_direction(tmp_path / "bad.safetensors", torch.ones(7), model=model)
    with pytest.raises(ValueError, match=r"width 64 .*d_model 576"):
        probes.load_direction(path, _FakeDims(576))
    with pytest.raises(ValueError, match="two classes"):
        probes.train_probes({0: torch.zeros(6, 4)}, [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="expected 6 labels"):
        probes.train_probes({0: torch.zeros(6, 4)}, [0, 1])
    with pytest.raises(ValueError, match="layer 9 out of range"):
        probes.collect_activations(model, prompts, [9])
    with pytest.raises(ValueError, match="reduce"):
        probes.collect_activations(model, prompts, [0], reduce="max")


class _FakeDims:
    """Stands in for a model of another width (only `dims`, `name` and `fingerprint` are read)."""

    def __init__(self, d):
        self.dims = type("D", (), {"d_model": d})()
        self.name, self.fingerprint = "other", "0"
