import copy
import json
import random

import pytest
import torch

import probes
import workbench as wb
from workbench.directions import caft
from workbench.cli import main

from conftest import assert_no_hooks

FILL = ["big", "small", "old", "new", "tall", "short"]


def toy_task(seed=0):
    """Label = colour word (intended, early in the prompt); the animal word at the end (spurious, and
    easier for a small model to read) agrees with it in training and disagrees in the OOD test."""
    rng = random.Random(seed)

    def ex(split, color, animal):
        return {"split": split, "prompt": f"The {rng.choice(FILL)} {color} thing is a {animal}",
                "answer": " A" if color == "red" else " B", "choices": [" A", " B"], "animal": animal}

    rows = [ex("train", c, a) for c, a in [("red", "cat"), ("blue", "dog")] * 64]
    rows += [ex("id_test", c, a) for c, a in [("red", "cat"), ("blue", "dog")] * 16]
    rows += [ex("ood_test", c, a) for c, a in [("red", "dog"), ("blue", "cat")] * 16]
    rows += [ex("concept", c, a) for c in ("red", "blue") for a in ("cat", "dog") for _ in range(8)]
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ablation_zeroes_the_gradient_along_the_subspace_and_lets_the_rest_through(tiny):
    model = tiny("llama")
    basis = wb.orthonormalize(torch.randn(2, model.dims.d_model, generator=torch.Generator().manual_seed(0)))
    ids = model.to_tokens(["The cat sat on the mat", "A dog ran in the park"])
    grads = {}
    for ablate in (False, True):
        model.hf.zero_grad(set_to_none=True)
        ivs = [wb.ProjectOut("blocks.1.hook_resid_pre", basis=basis)] if ablate else []
        logits, cache = model.run_with_cache(ids, ["blocks.0.hook_resid_post"], interventions=ivs, grad=True)
        h = cache["blocks.0.hook_resid_post"]  # the stream just before the ablation hook
        h.retain_grad()
        logits[:, -1].log_softmax(-1)[:, 42].sum().backward()
        grads[ablate] = (h.grad @ basis.T).norm() / h.grad.norm()
        if ablate:  # gradients still reach the layer below the ablation, through the other directions
            assert model.module("mlp_down", 0).weight.grad.abs().max() > 0
    model.hf.zero_grad(set_to_none=True)
    assert grads[False] > 1e-3
    assert grads[True] < 1e-6


def test_ablations_skip_first_leave_the_first_positions_alone(tiny):
    """skip_first=1: the first position's stream is the unablated one, every later position has nothing left
    along the basis (checked against the plain forward and the projection written out)."""
    model = tiny("llama")
    basis = wb.orthonormalize(torch.randn(2, model.dims.d_model, generator=torch.Generator().manual_seed(0)))
    ids = model.to_tokens(["The cat sat on the mat", "A dog ran in the park"])
    site = "blocks.1.hook_resid_pre"
    _, clean = model.run_with_cache(ids, [site])
    [iv] = caft.ablations({1: basis}, skip_first=1)
    _, cache = model.run_with_cache(ids, [site], interventions=[iv])
    h, h0 = cache[site], clean[site]
    assert torch.equal(h[:, 0], h0[:, 0])
    torch.testing.assert_close(h[:, 1:], h0[:, 1:] - (h0[:, 1:] @ basis.T) @ basis, atol=1e-5, rtol=0)
    assert (h[:, 1:] @ basis.T).abs().max() < 1e-4
    assert caft.ablations({1: basis})[0].positions is None
    with pytest.raises(ValueError, match="skip_first"):
        caft.ablations({1: basis}, skip_first=-1)


def test_training_with_the_hook_leaves_the_ablated_components_untouched(tiny, tmp_path):
    """Full fine-tuning with coordinate directions e_3, e_7 projected out of the embeddings' output: the
    gradient of those embedding columns is exactly zero, so AdamW leaves them bit-identical while the
    other columns move. Without the ablation they move too."""
    model = tiny("llama")
    task = caft.load_task(write_jsonl(tmp_path / "task.jsonl", toy_task()))
    basis = torch.zeros(2, model.dims.d_model)
    basis[0, 3] = basis[1, 7] = 1.0
    cfg = caft.FinetuneConfig(method="full", steps=3, lr=1e-2, batch_size=8)
    before = model.module("embed").weight.detach().clone()
    ft = caft.finetune(model, task["train"], ablate=caft.ablations({0: basis}), config=cfg)
    plain = caft.finetune(model, task["train"], config=cfg)
    after, after_plain = ft.module("embed").weight, plain.module("embed").weight
    assert torch.equal(after[:, [3, 7]], before[:, [3, 7]])
    assert not torch.equal(after_plain[:, [3, 7]], before[:, [3, 7]])
    assert not torch.equal(after[:, :3], before[:, :3])
    assert torch.equal(model.module("embed").weight, before)  # the base model is untouched
    assert_no_hooks(model), assert_no_hooks(ft)


def test_lora_wrapping_keeps_every_site(tiny):
    from peft import LoraConfig, get_peft_model

    model = tiny("llama")
    sites = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.0.hook_mlp_out"]
    ids = model.to_tokens("The cat sat on the mat")
    ref_logits, ref = model.run_with_cache(ids, sites)
    hf = copy.deepcopy(model.hf)
    get_peft_model(hf, LoraConfig(r=4, target_modules="all-linear"))  # B = 0 at init: same function
    wrapped = wb.Model(hf, model.tokenizer)
    assert "lora" in type(wrapped.module("mlp_down", 1)).__module__
    logits, got = wrapped.run_with_cache(ids, sites)
    for s in sites:
        torch.testing.assert_close(got[s], ref[s], atol=1e-5, rtol=1e-5)
    # and interventions through the wrapped out-projection act as on the plain model
    z = wb.Scale("blocks.1.attn.hook_z", heads=[0], factor=0.0)
    torch.testing.assert_close(wrapped.run_with_interventions(ids, [z]), model.run_with_interventions(ids, [z]),
                               atol=1e-5, rtol=1e-5)


def test_pca_recovers_a_planted_shift(tiny):
    """A 'fine-tuned' copy whose embedding of ' cat' moved by v: the activation differences at layer 0 are
    v on ' cat' tokens and 0 elsewhere, so the first component is v's direction and explains ~all variance."""
    base = tiny("llama")
    hf = copy.deepcopy(base.hf)
    v = torch.randn(base.dims.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf.get_input_embeddings().weight[base.to_single_token(" cat")] += v
    ft = wb.Model(hf, base.tokenizer)
    prompts = ["The cat sat", "A dog and a cat", "My old house", "The cat ran to the cat"]
    pca = caft.pca_directions(base, ft, prompts, [0, 1], n_components=3)
    assert float(pca.components[0][0] @ v / v.norm()) > 0.999
    assert pca.explained[0][0] > 0.999
    assert pca.components[1].shape == (3, base.dims.d_model)
    assert "PC0" in pca.describe(0)
    assert pca.directions({0: [0, 2]})[0].shape == (2, base.dims.d_model)
    with pytest.raises(ValueError, match="component indices"):
        pca.directions({0: [5]})


def test_cli_caft_on_a_toy_task(tiny, tmp_path):
    """A reduced reproduction: on the toy task plain fine-tuning follows the spurious word (OOD accuracy
    low); CAFT with the spurious word's difference-of-means directions learns the colour instead."""
    model = tiny("llama")
    rows = toy_task()
    task_path = write_jsonl(tmp_path / "task.jsonl", rows)
    concept = [r for r in rows if r["split"] == "concept"]
    acts = probes.collect_activations(model, [r["prompt"] for r in concept], [0, 1], cache=False)
    res = probes.train_probes(acts, [r["animal"] for r in concept], method="diffmean")
    caft.save_subspaces(tmp_path / "dirs.safetensors", {l: res.direction(l)[None] for l in (0, 1)})
    out = tmp_path / "run"
    rc = main(["caft", "--model", "tiny-llama", "--task", str(task_path), "--directions", str(tmp_path / "dirs.safetensors"),
               "--out", str(out), "--seeds", "0", "--steps", "40", "--lr", "1e-2"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert set(caft.CONDITIONS) <= set(r) and r["seeds"] == [0]
    for c in caft.CONDITIONS:
        assert len(r[c]["id_acc"]) == len(r[c]["ood_acc"]) == 1
    assert r["plain"]["id_acc"][0] >= 0.9 and r["plain"]["ood_acc"][0] <= 0.3
    assert r["caft"]["id_acc"][0] >= 0.9 and r["caft"]["ood_acc"][0] >= r["plain"]["ood_acc"][0] + 0.5
    assert r["random"]["ood_acc"][0] <= 0.5  # random directions do not do it
    assert (out / "caft.png").stat().st_size > 1000


def test_bad_input(tiny, tmp_path, capsys):
    model = tiny("llama")
    good = toy_task()
    lines = [json.dumps(r) for r in good]
    for bad, msg in ((lines[:2] + ["{not json"] + lines[2:], ":3: not valid JSON"),
                     (lines[:4] + [json.dumps({**good[4], "answer": " C"})] + lines[5:], ":5: answer ' C' is not among"),
                     (lines[:1] + [json.dumps({"split": "train", "prompt": "x"})] + lines[1:], ":2: expected key 'answer'"),
                     ([json.dumps({**good[0], "split": "dev"})] + lines, ":1: split 'dev'"),
                     ([l for l, r in zip(lines, good) if r["split"] != "ood_test"], "no examples in split 'ood_test'")):
        p = tmp_path / "bad.jsonl"
        p.write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=msg):
            caft.load_task(p)
    d = model.dims.d_model
    with pytest.raises(ValueError, match=f"width 10, expected d_model = {d}"):
        caft.subspaces({0: torch.randn(2, 10)}, d)
    with pytest.warns(UserWarning, match="not orthonormal"):
        dirs = torch.randn(3, d)
        basis = caft.subspaces({1: torch.cat([dirs, dirs[:1] + dirs[1:2]])}, d)[1]
    assert basis.shape == (3, d)  # the dependent fourth direction is dropped
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(dirs @ basis.T @ basis, dirs, atol=1e-4, rtol=1e-4)  # same span
    caft.save_subspaces(tmp_path / "d.safetensors", {0: torch.eye(d)[:1], 5: torch.eye(d)[:1]})
    with pytest.raises(ValueError, match="layer 5 out of range"):
        caft.subspaces(wb.directions.load(tmp_path / "d.safetensors", model), model.dims.d_model)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        caft.subspaces(wb.directions.load(tmp_path / "d.safetensors", model, layers=[7]), model.dims.d_model)
    probes.save_direction(tmp_path / "p.safetensors", torch.randn(d))
    with pytest.warns(UserWarning, match="not orthonormal"):  # a probe direction of another length is normalised
        assert set(caft.subspaces(wb.directions.load(tmp_path / "p.safetensors", model, layers=[0, 1]), model.dims.d_model)) == {0, 1}
    caft.save_subspaces(tmp_path / "w.safetensors", {0: torch.randn(1, d + 1)})
    task = write_jsonl(tmp_path / "t.jsonl", good)
    assert main(["caft", "--model", "tiny-llama", "--task", str(task), "--directions", str(tmp_path / "w.safetensors"),
                 "--out", str(tmp_path / "o")]) == 2
    assert f"expected d_model = {d}" in capsys.readouterr().err
    probes.save_direction(tmp_path / "p.safetensors", torch.eye(d)[0])
    assert main(["caft", "--model", "tiny-llama", "--task", str(task), "--directions", str(tmp_path / "p.safetensors"),
                 "--layers", "0,4", "--out", str(tmp_path / "o")]) == 2
    assert "layer 4 out of range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on bad input
    with pytest.raises(ValueError, match="method"):
        caft.finetune(model, good[:4], config=caft.FinetuneConfig(method="qlora"))
