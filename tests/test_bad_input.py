"""Bad input, table-driven: every public function (`workbench.__all__`) and every CLI verb, given what a careless
user gives (out of range, wrong type, wrong shape, non-finite, empty, degenerate, existing output, malformed and
mismatched files), must fail early with the expected error type and a message naming the argument.

Each row also asserts that nothing was written (the row's work folder is byte-for-byte as before, pre-existing
results included), that the model's weights are bit-identical (a hash of every parameter) and that no hook is left.

Adding a public function or a verb means adding its rows here (see the README's "Contributing").
Rows: (id, call, expected error type, words the message must contain). `call` is a function of a context
(`c.m` the shared tiny model, `c.d` the work folder, `c.inp` the fixture files) or a CLI argv list in which
`{d}` and `{inp}` are filled in. CLI rows expect exit status 2 and the words on stderr. Rows whose argument
check must come before the model is loaded use `--model tiny-bert` (a model that cannot load): the row only
passes if the argument is refused first.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.directions import caft
from workbench.cli import main
from workbench.toolkit.sweep import PACKAGE_DIR as PKG
from workbench.toolkit import Run
from workbench.data.facts import load_facts
from workbench.editing import EditError, load_requests

from conftest import assert_no_hooks

NAN, INF = float("nan"), float("inf")
P = "The capital of France is the city of"
REQ = dict(prompt=P, subject="France", target=" Rome")
PREFIXES = ["", "Here is a fact. "]
CLEAN, CORRUPT = "When Mary and John went to the store, John gave a drink to", \
    "When Mary and John went to the store, Mary gave a drink to"


@dataclass
class Ctx:
    m: wb.Model
    d: Path  # the row's work folder (outputs go here; must be unchanged after the row)
    inp: Path  # fixture input files (shared, read-only)


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.hf.state_dict().items()):
        h.update(name.encode() + p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def folder_state(d: Path) -> dict:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- fixture files (written here, a couple of records each; no downloads) --------------------------------

FACT = {"id": 0, "relation": "capital_of", "subject": "France", "template": "The capital of {} is the city of",
        "prompt": P, "object": "Paris", "paraphrases": ["The capital city of France is"]}
REQUEST = {"id": 0, "relation": "capital_of", "subject": "France", "prompt": P, "target_true": " Paris",
           "target_new": " Rome", "paraphrase_prompts": ["The capital city of France is"],
           "neighborhood": [{"prompt": "The capital of Spain is the city of", "target": " Madrid"}],
           "generation_prompts": ["France is"]}
# CounterFact's counterfact.json and ROME's known_1000.json, record shapes as published
CF_RECORD = {"case_id": 7, "pararel_idx": 2796,
             "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                                   "target_new": {"str": "English", "id": "Q1860"},
                                   "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
             "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"],
             "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
             "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"],
             "generation_prompts": ["Danielle Darrieux's mother tongue is"]}
KNOWN_RECORD = {"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica",
                "template": "{} is located in the continent of", "prediction": " Antarctica, and is the highest",
                "prompt": "Vinson Massif is located in the continent of", "relation_id": "P30"}


@pytest.fixture(scope="module")
def inp(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    write_jsonl(d / "facts.jsonl", [FACT, {**FACT, "id": 1, "subject": "Spain", "prompt": "The capital of Spain is the city of", "object": "Madrid"}])
    write_jsonl(d / "facts_misspelt.jsonl", [{**{k: v for k, v in FACT.items() if k != "subject"}, "subjct": "France"}])
    write_jsonl(d / "facts_badjson.jsonl", ['{"id": 0, "subject": "France",'])
    (d / "known_misspelt.json").write_text(json.dumps([{**KNOWN_RECORD, "atribute": "x"}]))
    write_jsonl(d / "requests.jsonl", [REQUEST])
    write_jsonl(d / "requests_misspelt.jsonl", [{**REQUEST, "neighbourhood": REQUEST["neighborhood"]}])
    write_jsonl(d / "requests_nosubject.jsonl", [{**REQUEST, "subject": "Germany"}])
    (d / "cf_noslot.json").write_text(json.dumps([{**CF_RECORD, "requested_rewrite": {
        **CF_RECORD["requested_rewrite"], "prompt": "The mother tongue of Danielle Darrieux is"}}]))
    (d / "cf_extra.json").write_text(json.dumps([{**CF_RECORD, "neighbourhood_prompts": []}]))
    (d / "cf_notlist.json").write_text(json.dumps(CF_RECORD))
    write_jsonl(d / "pairs.jsonl", [{"positive": "I love this. It is", "negative": "I hate this. It is"}])
    write_jsonl(d / "pairs_same.jsonl", [{"positive": "I love this.", "negative": "I love this."}])
    write_jsonl(d / "pairs_bad.jsonl", [{"positive": "I love this.", "negativ": "I hate this."}])
    (d / "prompts.txt").write_text("Once upon a time\n")
    (d / "empty.txt").write_text("# only a comment\n")
    write_jsonl(d / "task.jsonl", [{"split": s, "prompt": "The red thing is a cat", "answer": " A", "choices": [" A", " B"]}
                                   for s in ("train", "id_test", "ood_test")])
    write_jsonl(d / "das.jsonl", [{"base": "a b", "source": "c d", "label": " yes"}] * 2)
    (d / "texts.txt").write_text("Once upon a time\nThe cat sat on the mat\n")
    write_jsonl(d / "task_nosplit.jsonl", [{"split": "train", "prompt": "x", "answer": " A", "choices": [" A", " B"]}])
    wb.core.io.save_safetensors(d / "dirs.safetensors", {"direction": torch.randn(64)})
    # issue 29: files that are not what they claim (not UTF-8, not safetensors, NaN inside, repeated choices)
    (d / "facts_latin1.jsonl").write_bytes(json.dumps(FACT).replace("France", "Fran\u00e7e").encode("latin-1") + b"\n")
    (d / "pairs_latin1.jsonl").write_bytes('{"positive": "caf\u00e9 is good", "negative": "bad"}\n'.encode("latin-1"))
    (d / "requests_latin1.jsonl").write_bytes(json.dumps(REQUEST, ensure_ascii=False).replace("Rome", "R\u00f4me")
                                              .encode("latin-1") + b"\n")
    (d / "texts_latin1.txt").write_bytes("caf\u00e9\nna\u00efve\n".encode("latin-1"))
    write_jsonl(d / "task_nan.jsonl", ['{"split": "train", "prompt": "x", "answer": " A", "choices": [" A", " B"], '
                                       '"weight": NaN}'])
    write_jsonl(d / "task_repeated.jsonl", [{"split": s, "prompt": "The red thing is a cat", "answer": " A",
                                             "choices": [" A", " A"]} for s in ("train", "id_test", "ood_test")])
    write_jsonl(d / "das.jsonl", [{"base": "Hi there", "source": "Hi you", "label": " yes"},
                                  {"base": "Hi you", "source": "Hi there", "label": " no"}])
    write_jsonl(d / "das_nan.jsonl", ['{"base": "Hi there", "source": "Hi you", "label": " yes", "w": Infinity}'])
    from safetensors.torch import save_file  # written raw: our own writer refuses non-finite tensors

    save_file({"direction": nan_at(torch.randn(64))}, str(d / "dirs_nan.safetensors"))
    (d / "dirs_garbage.safetensors").write_bytes(b"this is not a safetensors file at all")
    (d / "edit_nan").mkdir()
    save_file({"layer.1": nan_at(torch.zeros(64, 128))}, str(d / "edit_nan" / "deltas.safetensors"))
    (d / "edit_nan" / "edit.json").write_text(json.dumps({"noop": False, "layers": [1], "meta": {}}))
    (d / "edit_badjson").mkdir()
    save_file({"layer.1": torch.zeros(64, 128)}, str(d / "edit_badjson" / "deltas.safetensors"))
    (d / "edit_badjson" / "edit.json").write_text('{"noop": false, "layers": [1],')
    (d / "result_badjson.json").write_text('{"values": [1, 2')
    _model_folders(d)
    return d


def _model_folders(d: Path) -> None:
    """tiny-llama saved once (2 layers) and two folders whose config.json names 3 (missing weights: a random third
    layer) or 1 layer (extra weights), sharing the weights and tokenizer files by symlink."""
    m = wb.tiny_model("llama")
    m.hf.save_pretrained(d / "m2")
    m.tokenizer.save_pretrained(d / "m2")
    for name, n in (("m3", 3), ("m1", 1)):
        (d / name).mkdir()
        for f in (d / "m2").iterdir():
            if f.name != "config.json":
                (d / name / f.name).symlink_to(f)
        cfg = json.loads((d / "m2" / "config.json").read_text())
        (d / name / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": n}))
    (d / "mbad").mkdir()
    (d / "mbad" / "config.json").write_bytes(b"\xff\xfe not json")


@pytest.fixture(scope="module")
def m(tiny):
    return tiny("llama")


# -- helpers used by rows ----------------------------------------------------------------------------

def fwd(model, *ivs):
    return model.run_with_interventions("Hello world, this is a test", list(ivs))


def vec(model, value=0.0, n=None):
    return torch.full((n or model.dims.d_model,), value)


def nan_at(t: torch.Tensor, i=3):
    t = t.clone()
    t.view(-1)[i] = NAN
    return t


def out_of_order_restore(model):
    """Apply one edit twice, restore the first handle first: refused, and both undone in order afterwards."""
    d = model.dims
    e = wb.editing.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
    h1 = e.apply(model, check=False)
    h2 = e.apply(model, check=False)
    try:
        h1.restore()
    finally:
        h2.restore()
        h1.restore()


def sv(model, layers=(0, 1), value=0.1):
    return wb.steering.SteeringVector({l: vec(model, value) for l in layers}, "resid_pre", {"n_layers": model.dims.n_layers})


def steered_forward(model, steering, **kw):
    with wb.steering.steer(model, steering, **kw):
        model("Hello world")


def task(ctx):
    return caft.load_task(ctx.inp / "task.jsonl")


def cf(ctx, requests, **kw):
    return wb.editing.run_counterfact(ctx.m, requests, ctx.d / "run", gen_tokens=0, progress=False, **kw)


def locked(d: Path):
    """Setup: `{d}` is a sweep folder held by a live run (this process's parent, as named in its lock file)."""
    import os
    import socket

    (d / "config.json").write_text("{}")
    (d / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": 0}))


def existing(name, text="old results\n"):
    """Setup: a file of an earlier run at `{d}/name`."""
    def setup(d: Path):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return setup


E, V, FNF, SE = EditError, ValueError, FileNotFoundError, SystemExit


@dataclass
class Row:
    id: str
    call: Callable | list
    exc: type
    words: tuple[str, ...]
    setup: Callable | None = None


def R(id, call, exc, *words, setup=None):
    return Row(id, call, exc, words, setup)



# -- issue 29 (items 4-6): where numbers stop meaning anything, one argument check, one file reader -------------
# Each class has a row per function / verb it applies to; CLI rows use a model that cannot load (tiny-bert)
# wherever the check must come before loading.

_BAD = "tiny-bert"
TL = "tuned-lens"
IOI = ["--clean", CLEAN, "--corrupt", CORRUPT]


def _gpt2_long(c):
    """tiny-gpt2 has learned positions for 512 tokens: a 601-token prompt has no position embedding."""
    return wb.tiny_model("gpt2")("hi " * 600)


def _tuned_lens(n_layers):
    from workbench.lenses.tuned import TunedLens

    return TunedLens(64, n_layers)


def _other_depth_lens_file(d: Path) -> None:
    """A tuned-lens file claiming tiny-llama's fingerprint but holding translators for a 5-layer model."""
    m = wb.tiny_model("llama")
    wb.core.io.save_safetensors(d / "lens.safetensors", {"A": torch.zeros(4, 64, 64), "b": torch.zeros(4, 64)},
                                {"model": m.name, "fingerprint": m.fingerprint, "config": "{}", "step": "1"})


def _nan_sae(d: Path) -> None:
    """A saved SAE whose weights hold a NaN (all-NaN logits when used, before issue 29)."""
    from safetensors.torch import load_file, save_file

    _saved_sae(d)
    f = d / "sae" / "sae_weights.safetensors"
    t = load_file(str(f))
    t["W_dec"] = nan_at(t["W_dec"])
    save_file(t, str(f))


GUARDS_API = [
    # one argument check: booleans are not numbers, positions are ints (class: bool-as-int)
    R("checks-trace_fact-samples-bool", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, samples=True),
      V, "samples", "got True"),
    R("checks-caft-steps-bool", lambda c: caft.FinetuneConfig(steps=True).check(), V, "steps", "got True"),
    R("checks-patching-top_k-bool", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", top_k=True),
      V, "top_k", "got True"),
    R("checks-Scale-factor-bool", lambda c: fwd(c.m, wb.Scale("blocks.0.hook_mlp_out", factor=True)), V, "factor", "True"),
    R("checks-read_activations-batch_size-bool", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [0], batch_size=True),
      V, "batch_size", "True"),
    R("checks-counterfactuals-replace-position-bool", lambda c: wb.counterfactual.counterfactuals(
        c.m, ["Hello there"], [" world"], replace=(True, 5)), V, "replace position", "got True"),
    R("checks-generate-max_new_tokens-bool", lambda c: wb.generate(c.m, ["Hi"], max_new_tokens=True), V, "max_new_tokens"),
    # messages name the failing list item (class: list index)
    R("index-counterfactuals-replace", lambda c: wb.counterfactual.counterfactuals(
        c.m, ["Hello there", "Hi"], [" world", " you"], replace=[(0, 5), (True, 5)]), V, "replace[1]"),
    R("index-path_patching-receiver_positions", lambda c: wb.patching.path_patching(
        c.m, CLEAN, CORRUPT, " Mary", " John", senders=["L0H1"], receivers=["L1H0"], receiver_positions=[0, 99]),
      V, "receiver_positions[1]"),
    # one file reader: "argument: file: problem" (class: unreadable file)
    R("file-load_facts-not-utf8", lambda c: load_facts(c.inp / "facts_latin1.jsonl"), V, "facts", "not UTF-8"),
    R("file-load_requests-not-utf8", lambda c: load_requests(c.inp / "requests_latin1.jsonl"), V, "requests", "not UTF-8"),
    R("file-caft-load_task-nan", lambda c: caft.load_task(c.inp / "task_nan.jsonl"), V, "task", "NaN", "finite"),
    R("file-load_directions-garbage", lambda c: wb.directions.store.load_directions(c.inp / "dirs_garbage.safetensors"), V,
      "path", "dirs_garbage", "not a readable safetensors"),
    R("file-load_directions-nan", lambda c: wb.directions.store.load_directions(c.inp / "dirs_nan.safetensors"), V,
      "path", "dirs_nan", "non-finite"),
    R("file-SteeringVector-load-nan", lambda c: wb.steering.SteeringVector.load(c.inp / "dirs_nan.safetensors", c.m), V,
      "non-finite"),
    R("file-WeightEdit-load-nan", lambda c: wb.editing.WeightEdit.load(c.inp / "edit_nan"), E, "directory", "non-finite"),
    R("file-WeightEdit-load-bad-json", lambda c: wb.editing.WeightEdit.load(c.inp / "edit_badjson"), E, "directory", "edit.json",
      "not valid JSON"),
    R("file-load_sae-nan", lambda c: wb.sae.load_sae(c.d / "sae", c.m), V, "sae", "non-finite", setup=lambda d: _nan_sae(d)),
    R("file-load_tuned_lens-garbage", lambda c: wb.lenses.load_tuned_lens(c.inp / "dirs_garbage.safetensors", c.m), V,
      "path", "not a readable safetensors"),
    R("file-LabelledArray-load-bad-json", lambda c: wb.toolkit.LabelledArray.load(c.inp / "result_badjson.json"), V, "path",
      "not valid JSON"),
    R("file-load_model-config-not-utf8", lambda c: wb.load_model(str(c.inp / "mbad")), V, "model", "config.json", "UTF-8"),
    R("file-load_model-no-folder", lambda c: wb.load_model("./no/such/model"), V, "model", "no such folder"),
    R("file-load_model-not-a-hub-id", lambda c: wb.load_model("gpt2 small."), V, "model", "hub id", "'gpt2 small.'"),
    # weights the config does not match, dtypes (class: weights)
    R("weights-load_model-missing", lambda c: wb.load_model(str(c.inp / "m3")), V, "model", "missing", "layers.2"),
    R("weights-load_model-extra", lambda c: wb.load_model(str(c.inp / "m1")), V, "model", "does not name", "layers.1"),
    R("weights-load_model-dtype", lambda c: wb.load_model("tiny-llama", dtype=torch.int8), V, "dtype", "bfloat16"),
    R("weights-load_model-dtype-name", lambda c: wb.load_model("tiny-llama", dtype="float8"), V, "dtype"),
    R("weights-load_model-dtype-built", lambda c: wb.load_model(c.m, dtype=torch.bfloat16), V, "dtype", "already built"),
    # context length (class: context): learned positions refuse; rotary ones warn (test below)
    R("context-forward-learned-positions", _gpt2_long, V, "601 tokens", "context length 512"),
    R("context-generate-learned-positions", lambda c: wb.generate(wb.tiny_model("gpt2"), ["Hi"], max_new_tokens=600), V,
      "max_new_tokens", "context length 512"),
    R("context-sample-learned-positions", lambda c: wb.counterfactual.sample(wb.tiny_model("gpt2"), ["Hi"],
                                                                              max_new_tokens=600), V, "context length 512"),
    # interventions that make a forward non-finite or overflow the next norm (class: non-finite forward)
    R("forward-Add-overflow", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", vector=vec(c.m, 1e30))), V,
      "interventions", "Add", "overflow"),
    R("forward-Scale-overflow", lambda c: fwd(c.m, wb.Scale("blocks.1.hook_mlp_out", factor=1e30)), V, "interventions",
      "Scale"),
    R("forward-Replace-overflow", lambda c: fwd(c.m, wb.Replace("blocks.0.attn.hook_z", value=torch.full((16,), 1e30))), V,
      "interventions", "Replace"),
    R("forward-ProjectOut-mean-overflow", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.eye(64)[:1],
                                                                           fill="mean", mean=vec(c.m, 1e30))), V,
      "interventions", "ProjectOut"),
    R("forward-steer-overflow", lambda c: steered_forward(c.m, sv(c.m, value=1e30)), V, "interventions", "overflow"),
    R("forward-steering_sweep-overflow", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1.0, 1e30],
                                                                     behaviour=len, max_new_tokens=2), V, "interventions"),
    R("forward-run_with_cache-overflow", lambda c: c.m.run_with_cache("Hi there", ["blocks.1.hook_resid_pre"], interventions=[
        wb.Add("blocks.0.hook_resid_pre", vector=vec(c.m, 1e30))]), V, "interventions"),
    R("forward-counterfactuals-overflow", lambda c: wb.counterfactual.counterfactuals(
        c.m, ["Hello"], [" world"], [wb.Add("blocks.0.hook_resid_pre", vector=vec(c.m, 1e30))]), V, "interventions"),
    R("forward-SAEEdit-overflow", lambda c: fwd(c.m, wb.sae.SAEEdit(sae=_random_sae(c.m), latents=[0], op="set", value=1e30)),
      V, "interventions"),
    # degenerate comparisons, refused everywhere as patching does (class: degenerate)
    R("degenerate-dla-answer-eq-foil", lambda c: wb.lenses.direct_logit_attribution(c.m, CLEAN, " Mary", " Mary"), V, "foil",
      "same token", "degenerate"),
    R("degenerate-path_patching-answer-eq-foil", lambda c: wb.patching.path_patching(c.m, CLEAN, CORRUPT, " Mary", " Mary",
                                                                            senders=["L0H1"]), V, "foil", "degenerate"),
    R("degenerate-path_patching-identical", lambda c: wb.patching.path_patching(c.m, CLEAN, CLEAN, " Mary", " John",
                                                                       senders=["L0H1"]), V, "identical", "degenerate"),
    R("degenerate-cross_model-answer-eq-foil", lambda c: wb.patching.cross_model_patching(c.m, wb.tiny_model("llama", seed=1), CLEAN,
                                                                                 " Mary", " Mary"), V, "foil", "degenerate"),
    R("degenerate-attribution-answer-eq-foil-normalized", lambda c: wb.patching.attribution_patching(
        c.m, CLEAN, CORRUPT, " Mary", " Mary", metric="normalized"), V, "degenerate"),
    R("degenerate-das-one-candidate", lambda c: wb.directions.das(c.m, "blocks.1.hook_resid_pre", ["Hi there", "Hi you"],
                                                       ["Hi you", "Hi there"], [" yes", " yes"], [" yes"], k=1, steps=1),
      V, "candidates", "at least 2"),
    R("degenerate-das-repeated-candidates", lambda c: wb.directions.das(c.m, "blocks.1.hook_resid_pre", ["Hi there", "Hi you"],
                                                             ["Hi you", "Hi there"], [" yes", " yes"], [" yes", " yes"],
                                                             k=1, steps=1), V, "candidates[1]", "repeats candidates[0]"),
    R("degenerate-sae-latent_attribution-answer-eq-foil", lambda c: wb.sae.latent_attribution(
        c.m, _random_sae(c.m), CLEAN, CORRUPT, " Mary", " Mary"), V, "degenerate"),
    R("degenerate-caft-task-repeated-choices", lambda c: caft.load_task(c.inp / "task_repeated.jsonl"), V, "choices",
      "repeat"),
    # bounds: temperatures, learning rates, limits (class: bounds)
    R("bounds-sample-temperature-tiny", lambda c: wb.counterfactual.sample(c.m, ["Hello"], temperature=1e-300), V,
      "temperature", "0.001"),
    R("bounds-counterfactuals-temperature-tiny", lambda c: wb.counterfactual.counterfactuals(
        c.m, ["Hello"], [" world"], temperature=1e-300), V, "temperature"),
    R("bounds-generate-temperature-tiny", lambda c: wb.generate(c.m, ["Hi"], do_sample=True, temperature=1e-300), V,
      "temperature"),
    R("bounds-counterfactual_sweep-temperature", lambda c: wb.counterfactual.counterfactual_sweep(
        c.d / "cf", c.m, ["Hello"], [" world"], temperature=1e-300), V, "temperature"),
    R("bounds-train_tuned_lens-lr-inf", lambda c: wb.lenses.train_tuned_lens(c.m, ["Hello world", "Hi there"], steps=1,
                                                                               lr=INF, path=c.d / "l.safetensors"), V, "lr"),
    R("bounds-train_tuned_lens-lr-huge", lambda c: wb.lenses.train_tuned_lens(c.m, ["Hello world", "Hi there"], steps=1,
                                                                                lr=1e6, path=c.d / "l.safetensors"), V,
      "lr", "(0, 10.0]"),
    R("bounds-das-lr-inf", lambda c: wb.directions.das(c.m, "blocks.1.hook_resid_pre", ["Hi there", "Hi you"], ["Hi you", "Hi there"],
                                            [" yes", " no"], [" yes", " no"], k=1, steps=1, lr=INF), V, "lr"),
    R("bounds-caft-lr-huge", lambda c: caft.FinetuneConfig(lr=1e3).check(), V, "lr"),
    R("bounds-train_sae-lr-inf", lambda c: wb.sae.train_sae(c.m, ["Hello world"], "blocks.1.hook_resid_pre", d_sae=8, k=2,
                                                        lr=INF), V, "lr"),
    R("bounds-rome-lr-inf", lambda c: wb.editing.rome(c.m, REQ, 1, C=torch.eye(128), prefixes=PREFIXES, lr=INF), E, "lr"),
    R("bounds-memit-steps-bool", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, steps=True, Cs={}), E, "steps"),
    R("bounds-memit-lam-inf", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, lam=INF, Cs={}), E, "lam"),
    R("bounds-ft_l-lr-inf", lambda c: wb.editing.ft_l(c.m, REQ, 1, lr=INF), E, "lr"),
    R("bounds-run_counterfact-lr-huge", lambda c: cf(c, [REQUEST], method="ft-l", hparams={"lr": 1e6}), E, "lr"),
    R("bounds-trace_facts-limit-negative", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", limit=-1,
                                                                    progress=False), V, "limit"),
    R("bounds-run_counterfact-limit-negative", lambda c: cf(c, [REQUEST], limit=-1), E, "limit"),
    # a tuned lens for another model (class: lens shape)
    R("lens-logit_lens-tuned-other-depth", lambda c: wb.lenses.logit_lens(c.m, "Hi there", " Paris", tuned=_tuned_lens(5)), V,
      "tuned", "5-layer", "2-layer"),
    R("lens-lens_kl-other-depth", lambda c: wb.lenses.lens_kl(c.m, ["Hi there"], _tuned_lens(5)), V, "lens", "5-layer"),
    R("lens-load_tuned_lens-other-shape", lambda c: wb.lenses.load_tuned_lens(c.d / "lens.safetensors", c.m), V, "path",
      "'A'", "[1, 64, 64]", setup=lambda d: _other_depth_lens_file(d)),
]

GUARDS_CLI = [
    # one file reader, before the model loads
    R("file-trace-facts-not-utf8", ["trace", "--model", _BAD, "--facts", "{inp}/facts_latin1.jsonl", "--out", "{d}/t"], V,
      "facts", "not UTF-8"),
    R("file-known-facts-not-utf8", ["known", "--model", _BAD, "--facts", "{inp}/facts_latin1.jsonl", "--out", "{d}/k.jsonl"],
      V, "facts", "not UTF-8"),
    R("file-edit-requests-not-utf8", ["edit", "--model", _BAD, "--requests", "{inp}/requests_latin1.jsonl", "--out", "{d}/e"],
      V, "requests", "not UTF-8"),
    R("file-steer-pairs-not-utf8", ["steer", "--model", _BAD, "--pairs", "{inp}/pairs_latin1.jsonl", "--layers", "1",
                                    "--multipliers", "1", "--out", "{d}/s"], V, "pairs", "not UTF-8"),
    R("file-caft-directions-nan", ["caft", "--model", _BAD, "--task", "{inp}/task.jsonl", "--directions",
                                   "{inp}/dirs_nan.safetensors", "--out", "{d}/c"], V, "directions", "non-finite"),
    R("file-caft-task-nan", ["caft", "--model", _BAD, "--task", "{inp}/task_nan.jsonl", "--directions",
                             "{inp}/dirs.safetensors", "--out", "{d}/c"], V, "task", "NaN"),
    R("file-counterfactual-edit-nan", ["counterfactual", "--model", _BAD, "--prompts", "{inp}/prompts.txt", "--edit",
                                       "{inp}/edit_nan", "--out", "{d}/x"], E, "directory", "non-finite"),
    R("file-counterfactual-prompts-not-utf8", ["counterfactual", "--model", _BAD, "--prompts", "{inp}/texts_latin1.txt",
                                               "--out", "{d}/x"], V, "prompts", "not UTF-8"),
    R("file-das-data-nan", ["das", "--model", _BAD, "--site", "blocks.1.hook_resid_pre", "--data", "{inp}/das_nan.jsonl",
                            "--candidates", " yes, no", "--out", "{d}/o"], V, "data", "Infinity"),
    R("file-tuned-lens-texts-not-utf8", [TL, "--model", _BAD, "--texts", "{inp}/texts_latin1.txt", "--out", "{d}/tl"], V,
      "texts", "not UTF-8"),
    R("file-lens-tuned-missing", ["lens", "--model", _BAD, "--prompt", CLEAN, "--answer", " Mary", "--tuned",
                                  "{d}/nope.safetensors", "--out", "{d}/l"], V, "tuned", "no such file"),
    R("file-sae-eval-nan", ["sae", "eval", "--model", "tiny-llama", "--sae", "{d}/sae", "--texts", "{inp}/prompts.txt"],
      V, "sae", "non-finite", setup=lambda d: _nan_sae(d)),
    R("file-info-config-not-utf8", ["info", "--model", "{inp}/mbad"], V, "model", "UTF-8"),
    R("file-info-not-a-hub-id", ["info", "--model", "my model."], V, "model", "hub id"),
    # weights
    R("weights-info-missing", ["info", "--model", "{inp}/m3"], V, "model", "missing"),
    R("weights-trace-missing", ["trace", "--model", "{inp}/m3", "--facts", "{inp}/facts.jsonl", "--out", "{d}/t"], V,
      "missing"),
    R("weights-patch-extra", ["patch", "--model", "{inp}/m1", *IOI, "--answer", " Mary", "--foil", " John",
                              "--out", "{d}/o"], V, "does not name"),
    # context length
    R("context-lens-learned-positions", ["lens", "--model", "tiny-gpt2", "--prompt", "hi " * 600, "--answer", " Paris",
                                         "--out", "{d}/l"], V, "context length 512"),
    R("context-dla-learned-positions", ["dla", "--model", "tiny-gpt2", "--prompt", "hi " * 600, "--answer", " Paris",
                                        "--out", "{d}/o"], V, "context length 512"),
    # interventions that overflow
    R("forward-steer-multiplier-overflow", ["steer", "--model", "tiny-llama", "--pairs", "{inp}/pairs.jsonl", "--prompts",
                                            "{inp}/prompts.txt", "--layers", "1", "--multipliers", "1e30",
                                            "--out", "{d}/s"], V, "interventions"),
    # degenerate comparisons, before the model loads
    R("degenerate-patch-answer-eq-foil-before-load", ["patch", "--model", _BAD, *IOI, "--answer", " Mary", "--foil", " Mary",
                                                      "--out", "{d}/o"], V, "foil", "degenerate"),
    R("degenerate-dla-answer-eq-foil", ["dla", "--model", _BAD, "--prompt", CLEAN, "--answer", " Mary", "--foil", " Mary",
                                        "--out", "{d}/o"], V, "foil", "degenerate"),
    R("degenerate-path-patch-answer-eq-foil", ["path-patch", "--model", _BAD, *IOI, "--answer", " John", "--foil", " John",
                                               "--senders", "L0H1", "--out", "{d}/o"], V, "foil", "degenerate"),
    R("degenerate-cross-patch-answer-eq-foil", ["cross-patch", "--model", _BAD, "--tuned", _BAD, "--prompt", CLEAN,
                                                "--answer", " Mary", "--foil", " Mary", "--out", "{d}/o"], V, "degenerate"),
    R("degenerate-das-one-candidate", ["das", "--model", _BAD, "--site", "blocks.1.hook_resid_pre", "--data",
                                       "{inp}/das.jsonl", "--candidates", " yes, yes", "--out", "{d}/o"], V, "candidates",
      "at least 2"),
    R("degenerate-caft-repeated-choices", ["caft", "--model", _BAD, "--task", "{inp}/task_repeated.jsonl", "--directions",
                                           "{inp}/dirs.safetensors", "--out", "{d}/c"], V, "choices", "repeat"),
    # bounds, before the model loads
    R("bounds-counterfactual-temperature", ["counterfactual", "--model", _BAD, "--prompts", "{inp}/prompts.txt",
                                            "--temperature", "1e-300", "--out", "{d}/x"], V, "temperature"),
    R("bounds-counterfactual-limit-negative", ["counterfactual", "--model", _BAD, "--prompts", "{inp}/prompts.txt",
                                               "--limit", "-1", "--out", "{d}/x"], V, "limit"),
    R("bounds-counterfactual-max-new-tokens", ["counterfactual", "--model", _BAD, "--prompts", "{inp}/prompts.txt",
                                               "--max-new-tokens", "0", "--out", "{d}/x"], V, "max_new_tokens"),
    R("bounds-tuned-lens-lr-inf", [TL, "--model", _BAD, "--texts", "{inp}/prompts.txt", "--lr", "inf", "--out", "{d}/tl"], V,
      "lr"),
    R("bounds-tuned-lens-steps", [TL, "--model", _BAD, "--texts", "{inp}/prompts.txt", "--steps", "0", "--out", "{d}/tl"], V,
      "steps"),
    R("bounds-das-lr-inf", ["das", "--model", _BAD, "--site", "blocks.1.hook_resid_pre", "--data", "{inp}/das.jsonl",
                            "--candidates", " yes, no", "--lr", "inf", "--out", "{d}/o"], V, "lr"),
    R("bounds-das-k", ["das", "--model", _BAD, "--site", "blocks.1.hook_resid_pre", "--data", "{inp}/das.jsonl",
                       "--candidates", " yes, no", "--k", "0", "--out", "{d}/o"], V, "k"),
    R("bounds-edit-lr-huge", ["edit", "--model", _BAD, "--requests", "{inp}/requests.jsonl", "--lr", "1e6", "--out", "{d}/e"],
      E, "lr"),
    R("bounds-caft-lr-inf", ["caft", "--model", _BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/dirs.safetensors",
                             "--lr", "inf", "--out", "{d}/c"], V, "lr"),
    R("bounds-sae-train-lr-huge", ["sae", "train", "--model", _BAD, "--lr", "1e6", "--out", "{d}/o"], V, "lr"),
    R("bounds-trace-limit-negative", ["trace", "--model", _BAD, "--facts", "{inp}/facts.jsonl", "--limit", "-1",
                                      "--out", "{d}/t"], V, "limit"),
    R("bounds-steer-limit-negative", ["steer", "--model", _BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1",
                                      "--multipliers", "1", "--limit", "-1", "--out", "{d}/s"], V, "limit"),
    R("bounds-edit-limit-negative", ["edit", "--model", _BAD, "--requests", "{inp}/requests.jsonl", "--limit", "-1",
                                     "--out", "{d}/e"], V, "limit"),
    R("bounds-sae-inspect-limit-negative", ["sae", "inspect", "--model", _BAD, "--sae", "{d}/nope", "--latents", "1",
                                            "--limit", "-1", "--out", "{d}/o"], V, "limit"),
    R("bounds-sae-diff-limit-negative", ["sae", "diff", "--model", _BAD, "--finetuned", _BAD, "--sae", "{d}/nope",
                                         "--limit", "-1", "--out", "{d}/o.json"], V, "limit"),
    # a tuned lens for another model
    R("lens-lens-tuned-other-shape", ["lens", "--model", "tiny-llama", "--prompt", CLEAN, "--answer", " Mary", "--tuned",
                                      "{d}/lens.safetensors", "--out", "{d}/l"], V, "[1, 64, 64]",
      setup=lambda d: _other_depth_lens_file(d)),
]

# -- the table -----------------------------------------------------------------------------------------

API = [
    # models, tokens, sites
    R("load_model-unknown-tiny", lambda c: wb.load_model("tiny-bert"), V, "family"),
    R("tiny_model-family", lambda c: wb.tiny_model("bert"), V, "family"),
    R("data_path-empty", lambda c: wb.data.data_path(""), V, "name"),
    R("data_path-missing", lambda c: wb.data.data_path("nope.jsonl"), FNF, "nope.jsonl", "shipped"),
    R("Model-not-hf", lambda c: wb.Model(object(), None), V, "model", "PreTrainedModel"),
    R("to_single_token-multi", lambda c: c.m.to_single_token(" Paris and Rome"), V, "answer", "exactly one token"),
    R("to_tokens-empty", lambda c: c.m.to_tokens(""), V, "prompt", "empty"),
    R("to_tokens-float-ids", lambda c: c.m.to_tokens(torch.tensor([[1.5]])), V, "tokens", "integer"),
    R("to_tokens-out-of-vocab", lambda c: c.m.to_tokens(torch.tensor([[10 ** 6]])), V, "tokens", "0.."),
    R("find_span-missing", lambda c: c.m.find_span(P, "Spain"), V, "substring", "not found"),
    R("run_with_cache-layer", lambda c: c.m.run_with_cache("Hi there", ["blocks.9.hook_resid_pre"]), V, "layer 9", "out of range"),
    R("generate-empty-prompts", lambda c: wb.generate(c.m, []), V, "prompts"),
    R("read_activations-layers-string", lambda c: wb.directions.read_activations(c.m, ["Hi there"], "1"), V, "layers"),
    R("read_activations-layer-range", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [7]), V, "layer 7", "out of range"),
    R("read_activations-empty-texts", lambda c: wb.directions.read_activations(c.m, [], [0]), V, "texts"),
    R("read_activations-read_at", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [0], read_at="max"), V, "read_at"),
    R("read_activations-read_at-range", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [0], read_at=50), V, "read_at", "does not exist"),
    R("read_activations-batch_size", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [0], batch_size=0), V, "batch_size"),
    R("read_activations-component", lambda c: wb.directions.read_activations(c.m, ["Hi there"], [0], component="resid_mid"), V, "site"),
    R("Site-unknown-component", lambda c: wb.Site(0, "resid_mid"), V, "site", "resid_mid"),
    R("Site-layer-range", lambda c: c.m.run_with_cache("Hi", [wb.Site(5, "mlp_out")]), V, "layer 5", "out of range"),
    R("parse_site-unknown", lambda c: wb.parse_site("blocks.0.hook_foo", 2), V, "site", "unknown site"),
    R("parse_site-no-layer", lambda c: wb.parse_site("resid_pre", 2), V, "site", "give a layer"),
    R("parse_site-wrong-type", lambda c: wb.parse_site(3, 2), V, "site", "int"),
    R("parse_site-out-of-range", lambda c: wb.parse_site("blocks.2.hook_mlp_out", 2), V, "layer 2", "out of range"),
    # interventions: one finite check in the base class, shapes, selections
    R("Intervention-not-one", lambda c: c.m.run_with_interventions("Hi", ["blocks.0.hook_resid_pre"]), V, "interventions"),
    R("Add-nan-vector", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", vector=nan_at(vec(c.m)))), V, "vector", "nan"),
    R("Add-inf-vector", lambda c: fwd(c.m, wb.Add("blocks.1.hook_mlp_out", vector=vec(c.m, INF))), V, "vector", "inf"),
    R("Add-inf-multiplier", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", vector=vec(c.m), multiplier=INF)), V, "multiplier", "finite"),
    R("Add-wrong-shape", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", vector=vec(c.m, 1.0, 63))), V, "vector", "shape", "63"),
    R("Add-int-vector", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", vector=torch.ones(64, dtype=torch.long))), V, "vector", "floating"),
    R("Add-positions-range", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", positions=[99], vector=vec(c.m))), V, "positions", "out of range"),
    R("Add-rows-empty", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", rows=[], vector=vec(c.m))), V, "rows", "empty"),
    R("Add-heads-on-resid", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", heads=[0], vector=vec(c.m))), V, "heads", "attn.hook_z"),
    R("Add-positions-wrong-type", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", positions="last", vector=vec(c.m))), V, "positions"),
    R("Replace-nan-value", lambda c: fwd(c.m, wb.Replace("blocks.0.attn.hook_z", value=nan_at(torch.zeros(16)))), V, "value", "nan"),
    R("Replace-no-value", lambda c: fwd(c.m, wb.Replace("blocks.0.hook_resid_pre")), V, "value", "tensor"),
    R("Scale-nan-factor", lambda c: fwd(c.m, wb.Scale("blocks.0.hook_mlp_out", factor=NAN)), V, "factor", "finite"),
    R("Noise-negative-std", lambda c: fwd(c.m, wb.Noise("blocks.0.hook_resid_pre", std=-1.0)), V, "std"),
    R("Noise-inf-std", lambda c: fwd(c.m, wb.Noise("blocks.0.hook_resid_pre", std=INF)), V, "std"),
    R("ProjectOut-not-orthonormal", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.ones(2, 64))), V, "basis", "orthonormal"),
    R("ProjectOut-nan-basis", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=nan_at(torch.eye(64)[:2]))), V, "basis", "nan"),
    R("ProjectOut-wrong-width", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.eye(32)[:2])), V, "basis", "[k, 64]"),
    R("ProjectOut-nan-mean", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.eye(64)[:1], fill="mean",
                                                            mean=nan_at(torch.zeros(64)))), V, "mean", "nan"),
    R("ProjectOut-fill", lambda c: fwd(c.m, wb.ProjectOut("blocks.0.hook_resid_pre", basis=torch.eye(64)[:1], fill="median")), V, "fill"),
    R("orthonormalize-3d", lambda c: wb.orthonormalize(torch.zeros(2, 3, 4)), V, "directions", "[k, d]"),
    R("FromPosition-negative", lambda c: wb.FromPosition(-1), V, "start"),
    R("AtPositions-negative", lambda c: wb.AtPositions([-1]), V, "positions"),
    R("Generated-pointwise", lambda c: fwd(c.m, wb.Add("blocks.0.hook_resid_pre", rows=[0], positions=wb.Generated(),
                                                     pointwise=True, vector=vec(c.m))), V, "positions", "PositionSelector"),
    # patching: degenerate pairs, components, metrics, shapes
    R("patching-answer-eq-foil", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " Mary"), V, "foil", "same token", "degenerate"),
    R("patching-identical-normalized", lambda c: wb.patching.activation_patching(c.m, CLEAN, CLEAN, " Mary", " John", metric="normalized"),
      V, "corrupted", "identical", "degenerate"),
    R("patching-identical-prob", lambda c: wb.patching.activation_patching(c.m, CLEAN, CLEAN, " Mary", metric="prob"), V, "identical"),
    R("patching-metric", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", metric="accuracy"), V, "metric"),
    R("patching-component", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", components=["resid"]), V, "components", "'resid'"),
    R("patching-components-empty", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", components=""), V, "components"),
    R("patching-by-head-resid", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", by="head"), V, "by", "'z'"),
    R("patching-direction", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", direction="back"), V, "direction"),
    R("patching-method", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", method="fast"), V, "method"),
    R("patching-top-k", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", top_k=-1), V, "top_k"),
    R("patching-length-mismatch", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT + " her", " Mary", " John"), V, "corrupted", "align"),
    R("patching-align-range", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", align={99: 0}), V, "align", "out of range"),
    R("patching-no-foil", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary"), V, "foil", "needs a foil"),
    R("patching-answer-multi", lambda c: wb.patching.activation_patching(c.m, CLEAN, CORRUPT, " Mary Jane", " John"), V, "answer", "exactly one token"),
    R("patching-answers-count", lambda c: wb.patching.activation_patching(c.m, [CLEAN, CLEAN], [CORRUPT, CORRUPT], [" Mary"] * 3, " John"),
      V, "answer", "one per prompt pair"),
    R("patching-clean-empty", lambda c: wb.patching.activation_patching(c.m, [], CORRUPT, " Mary", " John"), V, "clean"),
    R("attribution-answer-eq-foil", lambda c: wb.patching.attribution_patching(c.m, CLEAN, CORRUPT, " John", " John"), V, "degenerate"),
    R("attribution-by", lambda c: wb.patching.attribution_patching(c.m, CLEAN, CORRUPT, " Mary", " John", by="neuron"), V, "by"),
    R("attribute_then_verify-top_k", lambda c: wb.patching.attribute_then_verify(c.m, CLEAN, CORRUPT, " Mary", " John", top_k=0), V, "top_k"),
    R("attribute_then_verify-identical", lambda c: wb.patching.attribute_then_verify(c.m, CLEAN, CLEAN, " Mary", " John"), V, "identical"),
    R("LabelledArray-dims", lambda c: wb.toolkit.LabelledArray(np.zeros((2, 3)), ("layer",), {"layer": [0, 1]}), V, "values", "axes"),
    R("LabelledArray-coords", lambda c: wb.toolkit.LabelledArray(np.zeros((2, 3)), ("layer", "pos"), {"layer": [0, 1], "pos": [0]}), V, "coords", "'pos'"),
    # causal tracing
    R("trace_fact-kinds-typo", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds="rsid"), V, "kinds", "'rsid'"),
    R("trace_fact-kinds-empty", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds=[]), V, "kinds"),
    R("trace_fact-kinds-repeated", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds=["mlp", "mlp"]), V, "kinds", "repeated"),
    R("trace_fact-samples", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, samples=0), V, "samples"),
    R("trace_fact-window", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, window=0), V, "window"),
    R("trace_fact-noise-negative", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=-1.0), V, "noise"),
    R("trace_fact-noise-nan", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std=NAN), V, "noise"),
    R("trace_fact-noise-str", lambda c: wb.patching.trace_fact(c.m, P, "France", " Paris", noise_std="3"), V, "noise"),
    R("trace_fact-subject-missing", lambda c: wb.patching.trace_fact(c.m, P, "Spain", " Paris", noise_std=0.1), V, "substring", "Spain"),
    R("trace_fact-answer-empty", lambda c: wb.patching.trace_fact(c.m, P, "France", "", noise_std=0.1), V, "answer"),
    R("trace_facts-missing-file", lambda c: wb.patching.trace_facts(c.m, c.inp / "nope.jsonl", c.d / "t", progress=False), V, "facts", "no such file"),
    R("trace_facts-misspelt-key", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts_misspelt.jsonl", c.d / "t", progress=False),
      V, "facts", "subjct", "expected keys"),
    R("trace_facts-bad-json", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts_badjson.jsonl", c.d / "t", progress=False), V, "facts", "not valid json"),
    R("trace_facts-kinds", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", kinds="resid,mpl", progress=False), V, "kinds", "'mpl'"),
    R("trace_facts-limit", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", limit=0, progress=False), V, "limit"),
    R("trace_facts-order", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", order="random", progress=False), V, "order"),
    R("load_facts-known_1000-misspelt", lambda c: load_facts(c.inp / "known_misspelt.json"), V, "atribute", "known_id"),
    # steering
    R("build-identical-texts", lambda c: wb.steering.build_steering_vector(c.m, ["I love this."], ["I love this."], layers=[0, 1]), V, "norm 0", "identical"),
    R("build-layer-range", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[5]), V, "layers", "out of range"),
    R("build-layers-string", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers="1"), V, "layers"),
    R("build-method", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], method="ica"), V, "method"),
    R("build-count-mismatch", lambda c: wb.steering.build_steering_vector(c.m, ["a b", "e f"], ["c d"], layers=[1]), V, "negatives", "one negative per positive"),
    R("build-positives-string", lambda c: wb.steering.build_steering_vector(c.m, "I love it", "I hate it", layers=[1]), V, "positives", "list of strings"),
    R("build-read_at", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], read_at="last"), V, "read_at"),
    R("build-read_at-range", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], read_at=-50), V, "read_at", "does not exist"),
    R("build-component", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], component="z"), V, "component"),
    R("build-probe-no-direction", lambda c: wb.steering.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], method="probe"), V, "direction"),
    R("directions-load-type", lambda c: wb.directions.load(3, c.m, [0]), V, "directions", "a direction file"),
    R("directions-load-width", lambda c: wb.directions.load(torch.ones(3), c.m, [0]), V, "directions", "expected d_model = 64"),
    R("directions-load-layer", lambda c: wb.directions.load({99: torch.ones(64)}, c.m), V, "directions", "layer 99 out of range"),
    R("directions-load-no-layers", lambda c: wb.directions.load(torch.ones(64), c.m), V, "layers", "layers to use it at"),
    R("directions-load-missing-layer", lambda c: wb.directions.load({0: torch.ones(64)}, c.m, [1]), V, "layers", "[1]"),
    R("records-missing-key", lambda c: wb.toolkit.read_records(c.inp / "facts_misspelt.jsonl", "facts", {"subject": str}),
      V, "facts", ":1: expected key 'subject'"),
    R("records-not-a-list", lambda c: wb.toolkit.read_records(c.inp / "cf_notlist.json", "requests", json_list=True),
      V, "requests", "expected a json list"),
    R("prompts-read-no-file", lambda c: wb.toolkit.read_prompts(c.inp / "nope.txt", "prompts"), FNF, "prompts", "no file"),
    R("build-probe-zero-direction", lambda c: wb.steering.build_steering_vector(c.m, layers=[1], method="probe", direction=torch.zeros(64)), V, "direction", "non-zero"),
    R("SteeringVector-empty", lambda c: wb.steering.SteeringVector({}), V, "vectors"),
    R("SteeringVector-width", lambda c: steered_forward(c.m, wb.steering.SteeringVector({0: torch.ones(32)})), V, "model", "width 32"),
    R("SteeringVector-nan", lambda c: steered_forward(c.m, wb.steering.SteeringVector({0: nan_at(vec(c.m))})), V, "vector", "nan"),
    R("steer-multiplier-nan", lambda c: steered_forward(c.m, sv(c.m), multiplier=NAN), V, "multiplier", "finite"),
    R("steer-not-a-vector", lambda c: steered_forward(c.m, "love"), V, "steering"),
    R("steer-positions", lambda c: steered_forward(c.m, sv(c.m), positions=-2), V, "positions"),
    R("steer-layer-missing", lambda c: steered_forward(c.m, sv(c.m, layers=(0,)), layers=[1]), V, "layers", "no direction"),
    R("sweep-multipliers-number", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=2.0, behaviour=len), V, "multipliers", "list"),
    R("sweep-multipliers-inf", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1, INF], behaviour=len), V, "multipliers", "finite"),
    R("sweep-prompts-empty", lambda c: wb.steering.sweep(c.m, sv(c.m), [], multipliers=[1], behaviour=len), V, "prompts"),
    R("sweep-cost", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, cost="bleu"), V, "cost"),
    R("sweep-kl-no-neutral", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, cost="kl"), V, "neutral_texts"),
    R("sweep-behaviour", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour="sentiment"), V, "behaviour", "callable"),
    R("sweep-max_new_tokens", lambda c: wb.steering.sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, max_new_tokens=0), V, "max_new_tokens"),
    R("generate-top_p", lambda c: wb.generate(c.m, ["Hi"], max_new_tokens=2, do_sample=True, top_p=2.0), V, "top_p"),
    # weight edits
    R("EditRequest-misspelt", lambda c: wb.editing.rome(c.m, {"prompt": P, "subjct": "France", "target": " Rome"}, 1), E, "subjct", "expected prompt, subject"),
    R("rome-subject-missing", lambda c: wb.editing.rome(c.m, {**REQ, "subject": "Spain"}, 1, C=torch.eye(128), prefixes=PREFIXES), E, "subject", "does not occur"),
    R("rome-layer", lambda c: wb.editing.rome(c.m, REQ, 2, C=torch.eye(128), prefixes=PREFIXES), E, "layer", "out of range"),
    R("rome-C-shape", lambda c: wb.editing.rome(c.m, REQ, 1, C=torch.eye(64), prefixes=PREFIXES), E, "C", "[128, 128]"),
    R("rome-request-string", lambda c: wb.editing.rome(c.m, "France -> Rome", 1), E, "request", "got str"),
    R("rome-hparams", lambda c: wb.editing.rome(c.m, REQ, 1, C=torch.eye(128), prefixes=PREFIXES, step=3), E, "hparams", "step"),
    R("memit-C-shape-up-front", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: torch.eye(64)}),
      E, "Cs", "layer 1", "[128, 128]", "(64, 64)"),
    R("memit-C-missing", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128)}), E, "Cs", "[1]"),
    R("memit-C-nan", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: nan_at(torch.eye(128))}), E, "Cs", "nan"),
    R("memit-lam", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], lam=0.0, Cs={}), E, "lam"),
    R("memit-lam-nan", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], lam=NAN, Cs={}), E, "lam"),
    R("memit-damping", lambda c: wb.editing.memit(c.m, [REQ], [0, 1], damping=-1.0, Cs={}), E, "damping"),
    R("memit-layers", lambda c: wb.editing.memit(c.m, [REQ], [1, 2, 3], Cs={}), E, "layers", "out of range"),
    R("memit-layers-repeated", lambda c: wb.editing.memit(c.m, [REQ], [1, 1], Cs={}), E, "layers", "repeated"),
    R("memit-no-requests", lambda c: wb.editing.memit(c.m, [], [1], Cs={}), E, "requests"),
    R("ft_l-eps", lambda c: wb.editing.ft_l(c.m, REQ, 1, eps=0.0), E, "eps"),
    R("ft_l-layer", lambda c: wb.editing.ft_l(c.m, REQ, -3), E, "layer", "out of range"),
    R("WeightEdit-nan", lambda c: wb.editing.WeightEdit({1: nan_at(torch.zeros(64, 128))}).apply(c.m, check=False), E, "deltas", "nan"),
    R("WeightEdit-inf", lambda c: wb.editing.WeightEdit({0: torch.zeros(64, 128), 1: torch.full((64, 128), INF)}).apply(c.m, check=False), E, "deltas", "inf"),
    R("WeightEdit-shape", lambda c: wb.editing.WeightEdit({1: torch.zeros(128, 64)}).apply(c.m, check=False), E, "deltas", "(64, 128)"),
    R("WeightEdit-layer", lambda c: wb.editing.WeightEdit({4: torch.zeros(64, 128)}).apply(c.m, check=False), E, "deltas", "out of range"),
    R("WeightEdit-restore-order", lambda c: out_of_order_restore(c.m), E, "restore", "reverse order"),
    R("WeightEdit-load-missing", lambda c: wb.editing.WeightEdit.load(c.d / "nothing"), E, "directory", "deltas.safetensors"),
    R("WeightEdit-fingerprint", lambda c: wb.editing.WeightEdit({1: torch.zeros(64, 128)}, {"fingerprint": "0" * 16}).apply(c.m, check=False),
      E, "fingerprint"),
    # CounterFact runs: every argument checked before the folder is made
    R("run_counterfact-path-not-list", lambda c: cf(c, str(c.inp / "requests.jsonl")), E, "requests", "load_requests"),
    R("run_counterfact-memit-layers", lambda c: cf(c, [REQUEST], method="memit", layers=[28, 29, 30]), E, "layers", "out of range"),
    R("run_counterfact-subject", lambda c: cf(c, [{**REQUEST, "subject": "Germany"}], method="rome"), E, "subject", "does not occur"),
    R("run_counterfact-method", lambda c: cf(c, [REQUEST], method="grace"), E, "method"),
    R("run_counterfact-limit", lambda c: cf(c, [REQUEST], limit=0), E, "limit"),
    R("run_counterfact-hparams", lambda c: cf(c, [REQUEST], method="ft-l", hparams={"kl_factor": 1.0}), E, "hparams", "kl_factor"),
    R("run_counterfact-lam", lambda c: cf(c, [REQUEST], method="memit", lam=-1.0), E, "lam"),
    R("run_counterfact-layer", lambda c: cf(c, [REQUEST], method="rome", layer=7), E, "layer", "out of range"),
    R("load_requests-misspelt", lambda c: load_requests(c.inp / "requests_misspelt.jsonl"), E, "neighbourhood", "expected keys"),
    R("load_requests-cf-no-slot", lambda c: load_requests(c.inp / "cf_noslot.json"), E, "requested_rewrite.prompt", "{}"),
    R("load_requests-cf-extra-key", lambda c: load_requests(c.inp / "cf_extra.json"), E, "neighbourhood_prompts", "expected keys"),
    R("load_requests-cf-not-a-list", lambda c: load_requests(c.inp / "cf_notlist.json"), E, "requests", "json list"),
    # concept-ablation fine-tuning
    R("caft-load_task-missing", lambda c: caft.load_task(c.inp / "nope.jsonl"), V, "task", "no such file"),
    R("caft-load_task-split", lambda c: caft.load_task(c.inp / "task_nosplit.jsonl"), V, "task", "id_test"),
    R("caft-subspaces-empty", lambda c: caft.subspaces({}, 64), V, "directions"),
    R("caft-subspaces-nan", lambda c: caft.subspaces({0: nan_at(torch.ones(64))}, 64), V, "directions", "finite"),
    R("caft-subspaces-width", lambda c: caft.subspaces({0: torch.ones(32)}, 64), V, "directions", "width 32"),
    R("caft-config", lambda c: caft.FinetuneConfig(steps=0).check(), V, "steps"),
    R("caft-config-lr", lambda c: caft.FinetuneConfig(lr=NAN).check(), V, "lr"),
    R("caft-finetune-empty", lambda c: caft.finetune(c.m, []), V, "examples"),
    R("caft-finetune-task-not-list", lambda c: caft.finetune(c.m, task(c)), V, "examples"),
    R("caft-compare-seeds", lambda c: caft.compare(c.m, task(c), {0: torch.eye(64)[:1]}, seeds=3), V, "seeds"),
    R("caft-compare-fill", lambda c: caft.compare(c.m, task(c), {0: torch.eye(64)[:1]}, fill="median"), V, "fill"),
    R("caft-ablations-component", lambda c: caft.ablations({0: torch.eye(64)[:1]}, component="z"), V, "component"),
    # views (issue 17)
    R("views-save_html-suffix", lambda c: wb.views.save_html(wb.toolkit.LabelledArray([[0.0, 1.0]], ("layer", "position"),
                                                                        {"layer": [0], "position": ["a", "b"]}), c.d / "x.png"),
      V, "path", ".html"),
    # counterfactual strings (issue 19)
    R("counterfactual-empty-continuation", lambda c: wb.counterfactual.counterfactuals(c.m, ["Hello"], [""]), V, "continuations"),
    R("counterfactual-intervention-type", lambda c: wb.counterfactual.counterfactuals(c.m, ["Hello"], [" world"], "steer"), V,
      "intervention"),
    R("counterfactual-sample-temperature", lambda c: wb.counterfactual.sample(c.m, ["Hello"], temperature=-1.0), V, "temperature"),
    # analysis (issue 16)
    R("analysis-logit_lens-layer", lambda c: wb.lenses.logit_lens(c.m, "Hi there", " Paris", layers=[7]), V, "layer"),
    R("analysis-logit_lens-answer-multi", lambda c: wb.lenses.logit_lens(c.m, "Hi there", " Paris and Rome"), V, "answer"),
    R("analysis-direct_logit_attribution-answer", lambda c: wb.lenses.direct_logit_attribution(c.m, "Hi there", " Paris and"), V, "answer"),
    R("analysis-path_patching-sender", lambda c: wb.patching.path_patching(c.m, CLEAN, CORRUPT, " Mary", " John", senders=["L1H9"]), V, "senders"),
    R("analysis-path_patching-receiver-before", lambda c: wb.patching.path_patching(c.m, CLEAN, CORRUPT, " Mary", " John", senders=["L1H1"],
                                                                           receivers=["L0H0"]), V, "receivers"),
    R("analysis-das-k", lambda c: wb.directions.das(c.m, "blocks.1.hook_resid_pre", ["Hi there"], ["Hi you"], [" yes"], [" yes", " no"],
                                         k=65), V, "k"),
    R("analysis-cross_model_patching-shapes", lambda c: wb.patching.cross_model_patching(c.m, wb.tiny_model("llama", d_model=32), CLEAN,
                                                                                 " Mary", " John"), V, "shapes"),
    # counterfactual strings: resumable runs, side-by-side view (issue 19)
    R("counterfactual-counterfactual_sweep-chunk", lambda c: wb.counterfactual.counterfactual_sweep(c.d / "cf", c.m, ["Hello"],
                                                                                             [" world"], chunk=0), V, "chunk"),
    R("views-counterfactual_view-result", lambda c: wb.views.counterfactual_view({"ids": []}, c.m), V, "result", "Counterfactuals"),
    # sweeps on Ray, models split over devices (issue 14)
    R("distributed-trace_facts-workers", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", workers=0,
                                                                  progress=False), V, "workers", ">= 1"),
    R("distributed-trace_facts-ray_address", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", ray_address="",
                                                                      progress=False), V, "ray_address"),
    R("distributed-trace_facts-executor-and-workers", lambda c: wb.patching.trace_facts(
        c.m, c.inp / "facts.jsonl", c.d / "t", workers=2, executor=wb.toolkit.InProcess(), progress=False), V, "executor"),
    R("distributed-model_spec-type", lambda c: wb.toolkit.model_spec("tiny-llama"), V, "model"),
    R("distributed-load_model-device_map", lambda c: wb.load_model("tiny-llama", device_map="everywhere"), V, "device_map"),
    R("distributed-load_model-device_map-and-device", lambda c: wb.load_model("tiny-llama", device="cpu", device_map="auto"),
      V, "device_map", "not both"),
    # sparse autoencoders (issue 15)
    R("sae-load_sae-width", lambda c: wb.sae.load_sae(_random_sae(c.m, width=32), c.m), V, "d_in", "32", "64"),
    R("sae-load_sae-truncated", lambda c: wb.sae.load_sae(c.d / "sae", c.m), V, "truncated or corrupt", setup=lambda d: _broken_sae(d)),
    R("sae-load_sae-other-model", lambda c: wb.sae.load_sae(_random_sae(c.m, model_name="gemma-2-2b"), c.m), V,
      "gemma-2-2b", "tiny-llama"),
    R("sae-save_sae-not-sae", lambda c: wb.sae.save_sae(object(), c.d / "s"), V, "sae"),
    R("sae-SAEEdit-latents", lambda c: wb.sae.SAEEdit(sae=_random_sae(c.m), latents=[96], op="zero"), V, "latents",
      "out of range"),
    R("sae-train_sae-k", lambda c: wb.sae.train_sae(c.m, ["Hello world"], "blocks.1.hook_resid_pre", d_sae=8, k=16), V, "k"),
    R("sae-evaluate_sae-texts", lambda c: wb.sae.evaluate_sae(c.m, wb.sae.load_sae(_random_sae(c.m), c.m), []), V, "texts"),
    # using SAE latents (issue 15: inspect, steering, CAFT, attribution, diffing)
    R("sae-latent_steering_vector-range", lambda c: wb.sae.latent_steering_vector(c.m, _random_sae(c.m), 96), V,
      "latents", "latent 96 out of range", "0..95"),
    R("sae-inspect_latent-range", lambda c: wb.sae.inspect_latent(c.m, _random_sae(c.m), -1, ["Hi there"]), V,
      "latent", "out of range"),
    R("sae-latent_subspaces-site", lambda c: wb.sae.latent_subspaces(c.m, _random_sae(c.m), [0], site="blocks.0.hook_mlp_out"),
      V, "site", "residual"),
    R("sae-latent_attribution-top_k", lambda c: wb.sae.latent_attribution(c.m, _random_sae(c.m), CLEAN, CORRUPT, " Mary",
                                                                          " John", top_k=0), V, "top_k"),
    R("sae-diff_latents-rank_by", lambda c: wb.sae.diff_latents(c.m, c.m, _random_sae(c.m), ["Hi there"], rank_by="max"),
      V, "rank_by"),
    R("sae-diff_latents-other-model", lambda c: wb.sae.diff_latents(c.m, wb.tiny_model("llama", d_model=32), _random_sae(c.m),
                                                                    ["Hi there"]), V, "finetuned", "same architecture"),
    R("sae-save_latent_directions-width", lambda c: wb.sae.save_latent_directions(c.d / "x.safetensors", c.m,
                                                                                  _random_sae(c.m, width=32), [0]),
      V, "d_in=32", "d_model=64"),
    # attribution graphs over transcoders (workbench.circuits)
    R("circuits-load_transcoders-missing", lambda c: wb.circuits.load_transcoders(c.d / "nope", c.m), V, "transcoders",
      "transcoders.json"),
    R("circuits-attribute-batch_size", lambda c: wb.circuits.attribute(c.m, "one two", [], batch_size=0), V,
      "batch_size", "got 0"),
    # model diffing (issue 28)
    R("diffing-model_diff-shapes", lambda c: wb.diffing.model_diff(c.m, wb.tiny_model("llama", d_model=32), ["Hi there"]), V,
      "tuned", "different shapes"),
    R("patching-patch_pairs-empty", lambda c: wb.patching.patch_pairs(c.m, []), V, "pairs", "at least one"),
    R("patching-patch_pairs-key", lambda c: wb.patching.patch_pairs(c.m, [{"clean": "a"}]), V, "pairs", "corrupted"),
    R("diffing-model_diff-layer", lambda c: wb.diffing.model_diff(c.m, c.m, ["Hi there"], layer=99), V, "layer"),
    R("diffing-scaled_model-alpha", lambda c: wb.diffing.scaled_model(c.m, c.m, [1.0]), V, "alpha"),
    R("diffing-weight_diff-tuned", lambda c: wb.diffing.weight_diff(c.m, 3), V, "tuned", "peft"),
    R("diffing-intruder_dimensions-epsilon", lambda c: wb.diffing.intruder_dimensions(torch.eye(4), torch.eye(4), epsilon=2),
      V, "epsilon"),
    R("diffing-train_crosscoder-acts", lambda c: wb.diffing.train_crosscoder(torch.ones(3, 64)), V, "acts", "[n_tokens, 2"),
] + GUARDS_API

BAD = "tiny-bert"  # a model that cannot load: the row passes only if the argument is refused before loading
CLI = [
    # patch
    R("patch-out-is-file", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                            "--foil", " John", "--out", "{d}/x.json"], V, "out", "existing file", setup=existing("x.json")),
    R("patch-out-has-results", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                                "--foil", " John", "--out", "{d}"], V, "result.json", "--force", setup=existing("result.json")),
    R("patch-sites", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John",
                      "--sites", "resid_pre,mlp", "--out", "{d}/o"], V, "sites", "'mlp'", "resid_post"),
    R("patch-memory", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John",
                       "--memory-mb", "-5", "--out", "{d}/o"], V, "memory_mb"),
    R("patch-empty-answer", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", "", "--foil", " John",
                             "--out", "{d}/o"], V, "answer"),
    R("patch-answer-eq-foil", ["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                               "--foil", " Mary", "--out", "{d}/o"], V, "degenerate"),
    R("patch-identical-normalized", ["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CLEAN, "--answer", " Mary",
                                     "--foil", " John", "--metric", "normalized", "--out", "{d}/o"], V, "identical"),
    R("patch-pairs-and-clean", ["patch", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--clean", CLEAN,
                                "--out", "{d}/o"], V, "pairs", "not both"),
    R("patch-pairs-chunk", ["patch", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--chunk", "0", "--out", "{d}/o"],
      V, "chunk"),
    R("patch-pairs-missing", ["patch", "--model", BAD, "--pairs", "{inp}/nope.jsonl", "--out", "{d}/o"], V, "pairs",
      "no such file"),
    R("patch-pairs-method", ["patch", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--method", "attribution",
                             "--out", "{d}/o"], V, "method"),
    R("patch-metric-choice", ["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John",
                              "--metric", "acc", "--out", "{d}/o"], SE, "invalid choice"),
    # trace, known
    R("trace-kinds", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--kinds", "resid,mpl", "--out", "{d}/t"], V, "kinds", "'mpl'"),
    R("trace-samples", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--samples", "0", "--out", "{d}/t"], V, "samples"),
    R("trace-window", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--window", "0", "--out", "{d}/t"], V, "window"),
    R("trace-limit", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--limit", "0", "--out", "{d}/t"], V, "limit"),
    R("trace-noise", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--noise", "nan", "--out", "{d}/t"], V, "noise"),
    R("trace-facts-missing", ["trace", "--model", BAD, "--facts", "{inp}/nope.jsonl", "--out", "{d}/t"], V, "facts", "no such file"),
    R("trace-facts-misspelt", ["trace", "--model", BAD, "--facts", "{inp}/facts_misspelt.jsonl", "--out", "{d}/t"], V, "subjct"),
    R("trace-out-is-file", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", "{d}/t"], V, "out", "existing file",
      setup=existing("t")),
    R("trace-out-foreign", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", "{d}"], V, "notes.txt", "--force",
      setup=existing("notes.txt")),
    R("known-out-exists", ["known", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", "{d}/known.jsonl"], V, "exists", "--force",
      setup=existing("known.jsonl")),
    R("known-out-is-folder", ["known", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", "{d}"], V, "folder"),
    R("known-facts-bad-json", ["known", "--model", BAD, "--facts", "{inp}/facts_badjson.jsonl", "--out", "{d}/k.jsonl"], V, "not valid json"),
    R("known-limit", ["known", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--limit", "0", "--out", "{d}/k.jsonl"], V, "limit", "integer >= 1"),
    # counterfact, edit
    R("counterfact-out-exists", ["counterfact", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", "{d}/cf.jsonl"],
      V, "exists", "--force", setup=existing("cf.jsonl", '{"id": 1}\n' * 360)),
    R("counterfact-n", ["counterfact", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--n", "0", "--out", "{d}/cf.jsonl"], V, "n:"),
    R("counterfact-neighbours", ["counterfact", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--neighbours", "-1",
                                 "--out", "{d}/cf.jsonl"], V, "neighbours"),
    R("counterfact-known_1000-misspelt", ["counterfact", "--model", BAD, "--facts", "{inp}/known_misspelt.json",
                                          "--out", "{d}/cf.jsonl"], V, "atribute"),
    R("counterfact-n-not-int", ["counterfact", "--facts", "{inp}/facts.jsonl", "--n", "three", "--out", "{d}/cf.jsonl"], SE, "invalid int"),
    R("edit-stats-corpus-missing", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--stats-corpus", "{inp}/nope.txt",
                                    "--out", "{d}/e"], V, "stats_corpus", "no such file"),
    R("edit-memit-layers", ["edit", "--model", "tiny-llama", "--requests", "{inp}/requests.jsonl", "--method", "memit",
                            "--layers", "28,29,30", "--out", "{d}/e"], E, "layers", "out of range"),
    R("edit-rome-layer", ["edit", "--model", "tiny-llama", "--requests", "{inp}/requests.jsonl", "--layer", "5", "--out", "{d}/e"],
      E, "layer", "out of range"),
    R("edit-subject-missing", ["edit", "--model", "tiny-llama", "--requests", "{inp}/requests_nosubject.jsonl", "--out", "{d}/e"],
      E, "subject", "does not occur"),
    R("edit-layers-for-rome", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--layers", "0,1", "--out", "{d}/e"], V, "layers", "memit"),
    R("edit-eps-for-rome", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--eps", "0.1", "--out", "{d}/e"], V, "eps"),
    R("edit-layers-parse", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--method", "memit", "--layers", "1,x",
                            "--out", "{d}/e"], V, "layers", "integers"),
    R("edit-requests-missing", ["edit", "--model", BAD, "--requests", "{inp}/nope.jsonl", "--out", "{d}/e"], E, "requests", "no such file"),
    R("edit-requests-misspelt", ["edit", "--model", BAD, "--requests", "{inp}/requests_misspelt.jsonl", "--out", "{d}/e"], E, "neighbourhood"),
    R("edit-cf-no-slot", ["edit", "--model", BAD, "--requests", "{inp}/cf_noslot.json", "--out", "{d}/e"], E, "{}"),
    R("edit-lam", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--method", "memit", "--lam", "0", "--out", "{d}/e"], V, "lam"),
    R("edit-steps", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--steps", "0", "--out", "{d}/e"], V, "steps"),
    R("edit-lr", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--lr", "inf", "--out", "{d}/e"], V, "lr"),
    R("edit-limit", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--limit", "0", "--out", "{d}/e"], V, "limit"),
    R("edit-out-is-file", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--out", "{d}/e"], V, "existing file",
      setup=existing("e")),
    R("edit-out-foreign", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--out", "{d}"], V, "--force",
      setup=existing("metrics.json")),
    # steer
    R("steer-layers-parse", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "a,b", "--multipliers", "1",
                             "--out", "{d}/s"], V, "layers", "integers"),
    R("steer-multipliers-nan", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1,nan",
                                "--out", "{d}/s"], V, "multipliers", "finite"),
    R("steer-multipliers-empty", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", ",",
                                  "--out", "{d}/s"], V, "multipliers", "at least one"),
    R("steer-layer-range", ["steer", "--model", "tiny-llama", "--pairs", "{inp}/pairs.jsonl", "--prompts", "{inp}/prompts.txt",
                            "--layers", "7", "--multipliers", "1", "--out", "{d}/s"], V, "layers", "out of range"),
    R("steer-identical-pairs", ["steer", "--model", "tiny-llama", "--pairs", "{inp}/pairs_same.jsonl", "--prompts", "{inp}/prompts.txt",
                                "--layers", "0,1", "--multipliers", "1", "--out", "{d}/s"], V, "norm 0"),
    R("steer-read-at", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                        "--read-at", "last", "--out", "{d}/s"], V, "read_at"),
    R("steer-positions", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                          "--positions", "-1", "--out", "{d}/s"], V, "positions"),
    R("steer-pairs-missing", ["steer", "--model", BAD, "--pairs", "{inp}/nope.jsonl", "--layers", "1", "--multipliers", "1",
                              "--out", "{d}/s"], V, "pairs", "no such file"),
    R("steer-pairs-misspelt", ["steer", "--model", BAD, "--pairs", "{inp}/pairs_bad.jsonl", "--layers", "1", "--multipliers", "1",
                               "--out", "{d}/s"], V, "pairs", "negative"),
    R("steer-prompts-empty", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--prompts", "{inp}/empty.txt", "--layers", "1",
                              "--multipliers", "1", "--out", "{d}/s"], V, "prompts", "no lines"),
    R("steer-behaviour", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                          "--behaviour", "joy", "--out", "{d}/s"], V, "behaviour"),
    R("steer-words-missing", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                              "--behaviour", "words:{inp}/nope.txt", "--out", "{d}/s"], V, "behaviour", "no such file"),
    R("steer-probe-no-direction", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                                   "--method", "probe", "--out", "{d}/s"], V, "direction"),
    R("steer-limit", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                      "--limit", "0", "--out", "{d}/s"], V, "limit"),
    R("steer-out-is-file", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                            "--out", "{d}/s"], V, "existing file", setup=existing("s")),
    R("steer-out-has-results", ["steer", "--model", BAD, "--pairs", "{inp}/pairs.jsonl", "--layers", "1", "--multipliers", "1",
                                "--out", "{d}"], V, "sweep.json", "--force", setup=existing("sweep.json")),
    # caft
    R("caft-seeds", ["caft", "--model", BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/dirs.safetensors", "--seeds", "x",
                     "--out", "{d}/c"], V, "seeds"),
    R("caft-task-missing", ["caft", "--model", BAD, "--task", "{inp}/nope.jsonl", "--directions", "{inp}/dirs.safetensors",
                            "--out", "{d}/c"], V, "task", "no such file"),
    R("caft-directions-missing", ["caft", "--model", BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/nope.safetensors",
                                  "--out", "{d}/c"], V, "directions", "no such file"),
    R("caft-steps", ["caft", "--model", BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/dirs.safetensors", "--steps", "0",
                     "--out", "{d}/c"], V, "steps"),
    R("caft-component", ["caft", "--model", BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/dirs.safetensors",
                         "--component", "resid", "--out", "{d}/c"], V, "component"),
    R("caft-out-is-file", ["caft", "--model", BAD, "--task", "{inp}/task.jsonl", "--directions", "{inp}/dirs.safetensors",
                           "--out", "{d}/c"], V, "existing file", setup=existing("c")),
    # demo, bench, info
    R("demo-facts", ["demo", "--model", BAD, "--facts", "0", "--out", "{d}/demo"], V, "facts"),
    R("demo-out-foreign", ["demo", "--model", BAD, "--out", "{d}"], V, "notes.txt", "--force", setup=existing("notes.txt")),
    R("demo-out-is-file", ["demo", "--model", BAD, "--out", "{d}/demo"], V, "existing file", setup=existing("demo")),
    R("bench-unknown", ["bench", "nosuchbench"], V, "name", "no benchmark"),
    R("info-model", ["info", "--model", BAD], V, "family"),
    # counterfactual verb (issue 19)
    R("counterfactual-replace-token", ["counterfactual", "--model", "tiny-llama", "--prompts", "{inp}/prompts.txt",
                                       "--out", "{d}/x", "--replace-token", "two:dog"], V, "replace-token"),
    # analysis verbs (issue 16)
    R("lens-answer", ["lens", "--model", "tiny-llama", "--prompt", CLEAN, "--answer", " Mary is", "--out", "{d}/l"], V, "answer"),
    R("tuned-lens-texts", ["tuned-lens", "--model", "tiny-llama", "--texts", "{inp}/prompts.txt", "--out", "{d}/tl"],
      V, "texts", "at least 2"),
    R("dla-answers", ["dla", "--model", "tiny-llama", "--prompt", CLEAN, "--answer", " Mary", "--answer", " John", "--answer", " Bob",
                      "--out", "{d}/o"], V, "answer"),
    R("path-patch-receivers", ["path-patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " John",
                               "--foil", " Mary", "--senders", "L1H1", "--receivers", "L0H0", "--out", "{d}/o"], V, "receivers"),
    R("das-data-missing", ["das", "--model", "tiny-llama", "--site", "blocks.1.hook_resid_pre", "--data", "{inp}/nope.jsonl",
                           "--candidates", " yes, no", "--out", "{d}/o"], V, "data"),
    R("cross-patch-shapes", ["cross-patch", "--model", "tiny-llama", "--tuned", "tiny-gpt2", "--prompt", CLEAN, "--answer", " Mary",
                             "--foil", " John", "--out", "{d}/o"], V, "shape"),
    # counterfactual verb: resumable folder, html (issue 19)
    R("counterfactual-out-is-file", ["counterfactual", "--model", "tiny-llama", "--prompts", "{inp}/prompts.txt",
                                     "--out", "{d}/x", "--html"], V, "out", "is a file", setup=existing("x")),
    # --workers / --ray-address (issue 14)
    R("trace-workers", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--workers", "0", "--out", "{d}/t"], V, "workers"),
    R("trace-ray-address", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--ray-address", " ", "--out", "{d}/t"], V,
      "ray_address"),
    R("edit-workers-memit", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--method", "memit", "--workers", "2",
                             "--out", "{d}/e"], V, "MEMIT"),
    # sparse autoencoders (issue 15)
    R("sae-train-k", ["sae", "train", "--model", BAD, "--d-sae", "16", "--k", "32", "--out", "{d}/o"], V, "k", "d_sae"),
    R("sae-train-texts", ["sae", "train", "--model", BAD, "--texts", "{inp}/nope.txt", "--out", "{d}/o"], V, "texts"),
    R("sae-eval-missing", ["sae", "eval", "--model", BAD, "--sae", "{d}/nope"], V, "sae"),
    R("sae-inspect-latents", ["sae", "inspect", "--model", BAD, "--sae", "{d}/nope", "--latents", "a,b", "--out", "{d}/o"],
      V, "latents", "integers"),
    R("sae-inspect-missing", ["sae", "inspect", "--model", BAD, "--sae", "{d}/nope", "--latents", "1", "--out", "{d}/o"],
      V, "sae", "cfg.json"),
    R("sae-inspect-latent-range", ["sae", "inspect", "--model", "tiny-llama", "--sae", "{d}/sae", "--latents", "3,500",
                                   "--texts", "{inp}/prompts.txt", "--out", "{d}/o"], V, "latent 500 out of range", "0..95",
      setup=lambda d: _saved_sae(d)),
    R("sae-diff-read-at", ["sae", "diff", "--model", BAD, "--finetuned", BAD, "--sae", "{d}/nope", "--read-at", "last",
                           "--out", "{d}/o.json"], V, "read_at"),
    R("diff-steps", ["diff", BAD, BAD, "--prompts", "{inp}/prompts.txt", "--steps", "0", "--out", "{d}/o"], V, "steps"),
    R("diff-matrices-regex", ["diff", BAD, BAD, "--prompts", "{inp}/prompts.txt", "--matrices", "(down", "--out", "{d}/o"],
      V, "matrices", "regular expression"),
    R("diff-out-has-results", ["diff", BAD, BAD, "--prompts", "{inp}/prompts.txt", "--out", "{d}"], V, "report.json",
      "--force", setup=existing("report.json")),
    R("sae-diff-rank-by", ["sae", "diff", "--model", BAD, "--finetuned", BAD, "--sae", "{d}/nope", "--rank-by", "max",
                           "--out", "{d}/o.json"], V, "rank_by"),
    R("graph-transcoders-missing", ["graph", "one two", "--model", BAD, "--transcoders", "{d}/nope", "--out", "{d}/g"],
      V, "transcoders", "expected a folder"),
    R("transcoders-train-steps", ["transcoders", "train", "--model", BAD, "--steps", "0", "--out", "{d}/t"], V,
      "steps", "got 0"),
    # one output-folder rule for every verb (issue 29): existing results need --force, checked before the model loads
    R("lens-out-has-results", ["lens", "--model", BAD, "--prompt", CLEAN, "--answer", " Mary", "--out", "{d}"], V,
      "result.json", "--force", setup=existing("result.json")),
    R("dla-out-has-results", ["dla", "--model", BAD, "--prompt", CLEAN, "--answer", " Mary", "--out", "{d}"], V,
      "dla.png", "--force", setup=existing("dla.png")),
    R("path-patch-out-has-results", ["path-patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " John",
                                     "--foil", " Mary", "--senders", "L0H0", "--out", "{d}"], V, "result.json", "--force",
      setup=existing("result.json")),
    R("das-out-has-results", ["das", "--model", BAD, "--site", "blocks.1.hook_resid_pre", "--data", "{inp}/das.jsonl",
                              "--candidates", " yes, no", "--out", "{d}"], V, "subspace.safetensors", "--force",
      setup=existing("subspace.safetensors")),
    R("cross-patch-out-has-results", ["cross-patch", "--model", BAD, "--tuned", BAD, "--prompt", CLEAN, "--answer", " Mary",
                                      "--out", "{d}"], V, "resid_pre.png", "--force", setup=existing("resid_pre.png")),
    R("tuned-lens-out-foreign", ["tuned-lens", "--model", BAD, "--texts", "{inp}/texts.txt", "--out", "{d}"], V,
      "notes.txt", "--force", setup=existing("notes.txt")),
    R("counterfactual-out-foreign", ["counterfactual", "--model", BAD, "--prompts", "{inp}/prompts.txt", "--out", "{d}"], V,
      "notes.txt", "--force", setup=existing("notes.txt")),
    R("counterfactual-prompts-missing", ["counterfactual", "--model", BAD, "--prompts", "{inp}/nope.txt", "--out", "{d}/x"],
      V, "prompts", "no such file"),
    # ... and never inside the installed package, --force or not (a `sae train --force` there overwrote shipped files)
    R("sae-train-out-in-package", ["sae", "train", "--model", BAD, "--force", "--out", str(PKG / "data" / "sae")], V,
      "inside the installed workbench package"),
    R("lens-out-in-package", ["lens", "--model", BAD, "--prompt", CLEAN, "--answer", " Mary", "--force",
                              "--out", str(PKG / "data")], V, "inside the installed workbench package"),
    R("trace-out-in-package", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--out", str(PKG / "data" / "t")], V,
      "inside the installed workbench package"),
    R("known-out-in-package", ["known", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--force",
                               "--out", str(PKG / "data" / "facts.jsonl")], V, "inside the installed workbench package"),
    # sweep folders: one writer at a time (a live holder's lock refuses a second run before its model loads)
    R("trace-out-locked", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--force", "--out", "{d}"], V,
      "in use", "pid", setup=locked),
    R("edit-out-locked", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--out", "{d}"], V, "in use",
      setup=locked),
    # bounded Ray: workers checked against the CPUs, an unreachable address refused in seconds (before the model loads)
    R("trace-workers-past-cpus", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--workers", "10000",
                                  "--out", "{d}/t"], V, "workers", "CPUs"),
    R("trace-ray-address-unreachable", ["trace", "--model", BAD, "--facts", "{inp}/facts.jsonl", "--ray-address", "127.0.0.1:1",
                                        "--out", "{d}/t"], V, "ray_address", "127.0.0.1:1"),
    R("edit-ray-address-unreachable", ["edit", "--model", BAD, "--requests", "{inp}/requests.jsonl", "--ray-address",
                                       "127.0.0.1:1", "--out", "{d}/e"], V, "ray_address", "127.0.0.1:1"),
] + GUARDS_CLI

# the sweep folder and Run from the library side (issues 25, 29)
SWEEP_API = [
    R("trace_facts-out-in-package", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", PKG / "data" / "t", progress=False),
      V, "inside the installed workbench package"),
    R("trace_facts-locked", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d, progress=False, force=True), V,
      "in use", setup=locked),
    R("counterfactual_sweep-locked", lambda c: wb.counterfactual.counterfactual_sweep(c.d, c.m, ["a b"], [" c"], force=True),
      V, "in use", setup=locked),
    R("trace_facts-run-and-keywords", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", run=Run(), force=True),
      V, "run", "not both"),
    R("trace_facts-run-type", lambda c: wb.patching.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", run={"workers": 2}),
      V, "run", "Run"),
    R("counterfactual_sweep-model-on-workers", lambda c: wb.counterfactual.counterfactual_sweep(
        c.d / "x", c.m, ["a b"], [" c"], c.m, workers=1), V, "in-process only"),
]

ROWS = API + SWEEP_API + CLI


def _fill(argv, c: Ctx):
    return [a.replace("{d}", str(c.d)).replace("{inp}", str(c.inp)) for a in argv]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, m, inp, tmp_path, capsys):
    d = tmp_path / "work"
    d.mkdir()
    if row.setup:
        row.setup(d)
    c = Ctx(m, d, inp)
    before_files, before_weights = folder_state(d), weights_hash(m)
    if callable(row.call):
        with pytest.raises(row.exc) as err:
            row.call(c)
        message = str(err.value)
    else:
        try:
            code = main(_fill(row.call, c))
        except SystemExit as e:  # argparse's own refusals
            code = e.code
            assert row.exc is SystemExit, f"argparse refused it, expected {row.exc.__name__}"
        assert code == 2, f"exit status {code}"
        message = capsys.readouterr().err
    for w in row.words:
        assert w.lower() in message.lower(), f"{w!r} not in message: {message}"
    assert folder_state(d) == before_files, "something was written"
    assert weights_hash(m) == before_weights, "weights changed"
    assert_no_hooks(m)


def test_table_covers_every_public_name_and_verb():
    """Each name in workbench.__all__ and each capability's entry point (bar the constant and the plain data types)
    and each CLI verb has rows."""
    import inspect
    import argparse

    from workbench.cli import VERB_MODULES

    ids = " ".join(r.id for r in ROWS).lower()
    sources = " ".join(inspect.getsource(r.call) if callable(r.call) else " ".join(r.call) for r in ROWS)
    # the top level (kernel + capability subpackages) and each capability's entry points (0.2's top-level names)
    entry_points = ["activation_patching", "attribution_patching", "attribute_then_verify", "trace_fact", "trace_facts",
                    "SteeringVector", "build_steering_vector", "steer", "logit_lens", "direct_logit_attribution",
                    "path_patching", "das", "cross_model_patching", "save_html", "EditRequest", "WeightEdit", "rome",
                    "memit", "ft_l", "run_counterfact", "load_sae", "save_sae", "SAEEdit", "train_sae", "evaluate_sae",
                    "read_activations", "data_path", "LabelledArray", "read_records", "read_prompts"]
    for name in wb.__all__ + entry_points:
        if name in ("DEFAULT_MODEL", "__version__", "core"):  # core: its names are the kernel names at the top level
            continue
        assert f"wb.{name}" in sources or name.lower() in ids or f"{name}" in sources, f"no bad-input row for {name}"
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    for module in VERB_MODULES:
        module.register(sub)
    verbs = set(sub.choices) - {"prepare", "models"}  # take no arguments
    covered = {r.call[0] for r in CLI}
    assert verbs <= covered, f"verbs without rows: {verbs - covered}"
    assert len(ROWS) >= 80


# -- what the table cannot say: behaviour on the good side of each fix -----------------------------------

def test_weight_edit_handles_restore_bit_exactly_in_reverse_order_and_refuse_otherwise(m):
    d = m.dims
    before = weights_hash(m)
    e = wb.editing.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
    h1 = e.apply(m, check=False)
    h2 = e.apply(m, check=False)
    after_two = weights_hash(m)
    with pytest.raises(EditError, match="reverse order"):
        h1.restore()
    assert weights_hash(m) == after_two  # refused before changing anything
    h2.restore()
    h1.restore()
    assert weights_hash(m) == before
    # edits on different layers may be restored in any order
    a, b = wb.editing.WeightEdit({0: torch.full((d.d_model, d.d_mlp), 1e-3)}), wb.editing.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
    ha, hb = a.apply(m, check=False), b.apply(m, check=False)
    ha.restore()
    hb.restore()
    assert weights_hash(m) == before
    h = e.apply(m, check=False)
    h.restore()
    h.restore()  # twice is harmless
    assert weights_hash(m) == before


def test_kinds_as_a_string_traces_those_kinds(m):
    one = wb.patching.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds="resid")
    listed = wb.patching.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds=["resid"])
    assert list(one.scores) == ["resid"] and np.array_equal(one.scores["resid"], listed.scores["resid"])
    two = wb.patching.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds="resid,mlp")
    assert list(two.scores) == ["resid", "mlp"]


def test_unspaced_answer_warns_with_the_hint(m):
    with pytest.warns(UserWarning, match="' Mary'"):
        wb.patching.activation_patching(m, CLEAN, CORRUPT, "Mary", " John")


def test_steering_vector_zero_at_some_layers_warns(m):
    # texts ending in the same token: resid_pre at layer 0 (the embedding of that token) is identical
    with pytest.warns(UserWarning, match="norm 0 at layers \\[0\\]"):
        vec = wb.steering.build_steering_vector(m, ["I love it."], ["I hate it."], layers=[0, 1])
    assert vec.vectors[1].norm() > 0


def test_counterfact_json_is_read_as_published(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps([CF_RECORD, {**CF_RECORD, "case_id": 8, "requested_rewrite": {
        **CF_RECORD["requested_rewrite"], "target_new": {"str": " Italian", "id": "Q652"}}}]))
    reqs = load_requests(path)
    r = reqs[0]
    assert r["id"] == 7 and r["prompt"] == "The mother tongue of Danielle Darrieux is"
    assert r["target_new"] == " English" and r["target_true"] == " French"  # ROME's leading space
    assert reqs[1]["target_new"] == " Italian"  # already spaced: kept as is
    assert r["neighborhood"] == [{"prompt": p, "target": " French"} for p in CF_RECORD["neighborhood_prompts"]]
    assert r["paraphrase_prompts"] == CF_RECORD["paraphrase_prompts"] and r["relation"] == "P103"
    # CounterFact's keys in a flat JSONL record: the neighbourhood prompts are kept (scored on the true target)
    flat = {"id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English",
            "target_true": "French", "neighborhood_prompts": ["The mother tongue of Léon Blum is"]}
    r = load_requests(write_jsonl(tmp_path / "flat.jsonl", [flat]))[0]
    assert r["prompt"] == "The mother tongue of Danielle Darrieux is" and r["target_true"] == " French"
    assert r["neighborhood"] == [{"prompt": "The mother tongue of Léon Blum is", "target": " French"}]


def test_known_1000_json_is_read_as_published(tmp_path):
    from workbench.data.facts import answer_text

    path = tmp_path / "known_1000.json"
    path.write_text(json.dumps([KNOWN_RECORD, {**KNOWN_RECORD, "known_id": 1, "subject": "Beats Music",
                                               "attribute": "Apple", "template": "{} is owned by",
                                               "prompt": "Beats Music is owned by", "relation_id": "P127"}]))
    facts = load_facts(path)
    assert [f["id"] for f in facts] == [0, 1] and facts[1]["object"] == "Apple" and facts[0]["relation"] == "P30"
    assert answer_text(facts[1]) == " Apple"


def test_cli_force_overwrites_and_known_writes(tmp_path, inp, capsys):
    out = tmp_path / "known.jsonl"
    out.write_text("old\n")
    assert main(["known", "--model", "tiny-llama", "--facts", str(inp / "facts.jsonl"), "--out", str(out), "--force"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and all("known" in r for r in rows)


def _random_sae(model, width=None, model_name=None):
    from test_sae import random_sae

    sae = random_sae(model, width=width)
    if model_name:
        sae.cfg.metadata.model_name = model_name
    return sae


def _broken_sae(d: Path) -> None:
    (d / "sae").mkdir()
    (d / "sae" / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 8, "architecture": "topk"}))
    (d / "sae" / "sae_weights.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"W_enc\"")


def _saved_sae(d: Path) -> None:
    """A random SAE for tiny-llama at blocks.1.hook_resid_pre, saved in SAELens's format at d/sae."""
    wb.sae.save_sae(_random_sae(wb.load_model("tiny-llama")), d / "sae")


# -- issue 29: the good side of each guard ----------------------------------------------------------------

def test_rotary_context_overrun_warns_and_runs(m):
    """Rotary positions past the trained context run (a warning), learned ones are refused (rows above)."""
    assert m.n_ctx == 512
    with pytest.warns(UserWarning, match="601 tokens, past the model's context length 512"):
        logits = m("hi " * 600)
    assert logits.shape[1] == 601 and torch.isfinite(logits).all()


def test_a_folder_that_matches_its_config_loads_with_the_dtype_asked(inp):
    m2 = wb.load_model(str(inp / "m2"))
    ref = wb.tiny_model("llama")
    assert weights_hash(m2) == weights_hash(ref)  # the guard refuses mismatches, not good folders
    assert wb.load_model("tiny-llama", dtype="bfloat16").hf.dtype == torch.bfloat16
    assert wb.load_model(str(inp / "m2"), dtype=torch.float16).hf.dtype == torch.float16
    assert wb.load_model(ref, dtype=torch.float32) is not None  # the dtype it has is accepted for a built model


def test_infinite_results_save_as_strict_json_and_plot_at_the_range_end(tmp_path):
    values = np.array([[1.0, INF], [-2.0, NAN]])
    arr = wb.toolkit.LabelledArray(values, ("layer", "position"), {"layer": [0, 1], "position": ["a", "b"]})
    path = arr.save(tmp_path / "r.json")

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(path.read_text(), parse_constant=no_constants)  # strict JSON: no Infinity / NaN tokens
    back = wb.toolkit.LabelledArray.load(path)
    assert back.values[0, 1] == INF and back.values[1, 0] == -2.0 and math.isnan(back.values[1, 1])
    drawn, lim, note = arr.plot_values()
    assert lim == 2.0 and drawn[0, 1] == 2.0 and "1 infinite" in note and "1 NaN" in note
    ax = arr.plot(tmp_path / "r.png")
    assert ax.images[0].get_clim() == (-2.0, 2.0)  # a finite colour range: the finite cells are drawn
    fig = arr.view().figure
    assert fig.data[0].zmax == 2.0 and fig.data[0].text[0][1] == "inf"  # hover shows the true value


def test_bfloat16_tracing_and_rome_work():
    """Before issue 29 both failed with a dtype error after the work (numpy has no bfloat16; index_add mixed dtypes)."""
    bf = wb.load_model("tiny-llama", dtype="bfloat16")
    t = wb.patching.trace_fact(bf, P, "France", " Paris", noise_std=0.1, samples=2, kinds="resid")
    assert t.scores["resid"].dtype == np.float32 and np.isfinite(t.scores["resid"]).all()
    before = weights_hash(bf)
    edit = wb.editing.rome(bf, REQ, 1, C=torch.eye(128), prefixes=PREFIXES, steps=2)
    assert weights_hash(bf) == before and all(torch.isfinite(d).all() for d in edit.deltas.values())


def test_cli_and_library_share_one_argument_check():
    from workbench.cli import common
    from workbench.core import checks

    for bad in (True, 0, 1.5, "3"):
        with pytest.raises(ValueError) as lib:
            checks.integer(bad, "samples")
        with pytest.raises(ValueError) as cli:
            common.check_int(bad, "samples")
        assert str(lib.value) == str(cli.value) == f"samples: expected an integer >= 1, got {bad!r}"
