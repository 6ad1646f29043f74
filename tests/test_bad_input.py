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

import copy
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
from workbench import caft
from workbench.cli import main
from workbench.data.facts import load_facts
from workbench.editing import EditError, load_requests
from workbench.editing.weights import AppliedEdit

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
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
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
    write_jsonl(d / "task_nosplit.jsonl", [{"split": "train", "prompt": "x", "answer": " A", "choices": [" A", " B"]}])
    wb.core.io.save_safetensors(d / "dirs.safetensors", {"direction": torch.randn(64)})
    return d


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
    e = wb.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
    h1 = e.apply(model, check=False)
    h2 = e.apply(model, check=False)
    try:
        h1.restore()
    finally:
        h2.restore()
        h1.restore()


def sv(model, layers=(0, 1), value=0.1):
    return wb.SteeringVector({l: vec(model, value) for l in layers}, "resid_pre", {"n_layers": model.dims.n_layers})


def steered_forward(model, steering, **kw):
    with wb.steer(model, steering, **kw):
        model("Hello world")


def task(ctx):
    return caft.load_task(ctx.inp / "task.jsonl")


def cf(ctx, requests, **kw):
    return wb.run_counterfact(ctx.m, requests, ctx.d / "run", gen_tokens=0, progress=False, **kw)


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


# -- the table -----------------------------------------------------------------------------------------

API = [
    # models, tokens, sites
    R("load_model-unknown-tiny", lambda c: wb.load_model("tiny-bert"), V, "family"),
    R("tiny_model-family", lambda c: wb.tiny_model("bert"), V, "family"),
    R("data_path-empty", lambda c: wb.data_path(""), V, "name"),
    R("data_path-missing", lambda c: wb.data_path("nope.jsonl"), FNF, "nope.jsonl", "shipped"),
    R("Model-not-hf", lambda c: wb.Model(object(), None), V, "model", "PreTrainedModel"),
    R("to_single_token-multi", lambda c: c.m.to_single_token(" Paris and Rome"), V, "answer", "exactly one token"),
    R("to_tokens-empty", lambda c: c.m.to_tokens(""), V, "prompt", "empty"),
    R("to_tokens-float-ids", lambda c: c.m.to_tokens(torch.tensor([[1.5]])), V, "tokens", "integer"),
    R("to_tokens-out-of-vocab", lambda c: c.m.to_tokens(torch.tensor([[10 ** 6]])), V, "tokens", "0.."),
    R("find_span-missing", lambda c: c.m.find_span(P, "Spain"), V, "substring", "not found"),
    R("run_with_cache-layer", lambda c: c.m.run_with_cache("Hi there", ["blocks.9.hook_resid_pre"]), V, "layer 9", "out of range"),
    R("generate-empty-prompts", lambda c: wb.generate(c.m, []), V, "prompts"),
    R("read_activations-layers-string", lambda c: wb.read_activations(c.m, ["Hi there"], "1"), V, "layers"),
    R("read_activations-layer-range", lambda c: wb.read_activations(c.m, ["Hi there"], [7]), V, "layer 7", "out of range"),
    R("read_activations-empty-texts", lambda c: wb.read_activations(c.m, [], [0]), V, "texts"),
    R("read_activations-read_at", lambda c: wb.read_activations(c.m, ["Hi there"], [0], read_at="max"), V, "read_at"),
    R("read_activations-read_at-range", lambda c: wb.read_activations(c.m, ["Hi there"], [0], read_at=50), V, "read_at", "does not exist"),
    R("read_activations-batch_size", lambda c: wb.read_activations(c.m, ["Hi there"], [0], batch_size=0), V, "batch_size"),
    R("read_activations-component", lambda c: wb.read_activations(c.m, ["Hi there"], [0], component="resid_mid"), V, "site"),
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
    R("patching-answer-eq-foil", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " Mary"), V, "foil", "same token", "degenerate"),
    R("patching-identical-normalized", lambda c: wb.activation_patching(c.m, CLEAN, CLEAN, " Mary", " John", metric="normalized"),
      V, "corrupted", "identical", "degenerate"),
    R("patching-identical-prob", lambda c: wb.activation_patching(c.m, CLEAN, CLEAN, " Mary", metric="prob"), V, "identical"),
    R("patching-metric", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", metric="accuracy"), V, "metric"),
    R("patching-component", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", components=["resid"]), V, "components", "'resid'"),
    R("patching-components-empty", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", components=""), V, "components"),
    R("patching-by-head-resid", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", by="head"), V, "by", "'z'"),
    R("patching-direction", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", direction="back"), V, "direction"),
    R("patching-method", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", method="fast"), V, "method"),
    R("patching-top-k", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", top_k=-1), V, "top_k"),
    R("patching-length-mismatch", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT + " her", " Mary", " John"), V, "corrupted", "align"),
    R("patching-align-range", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary", " John", align={99: 0}), V, "align", "out of range"),
    R("patching-no-foil", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary"), V, "foil", "needs a foil"),
    R("patching-answer-multi", lambda c: wb.activation_patching(c.m, CLEAN, CORRUPT, " Mary Jane", " John"), V, "answer", "exactly one token"),
    R("patching-answers-count", lambda c: wb.activation_patching(c.m, [CLEAN, CLEAN], [CORRUPT, CORRUPT], [" Mary"] * 3, " John"),
      V, "answer", "one per prompt pair"),
    R("patching-clean-empty", lambda c: wb.activation_patching(c.m, [], CORRUPT, " Mary", " John"), V, "clean"),
    R("attribution-answer-eq-foil", lambda c: wb.attribution_patching(c.m, CLEAN, CORRUPT, " John", " John"), V, "degenerate"),
    R("attribution-by", lambda c: wb.attribution_patching(c.m, CLEAN, CORRUPT, " Mary", " John", by="neuron"), V, "by"),
    R("attribute_then_verify-top_k", lambda c: wb.attribute_then_verify(c.m, CLEAN, CORRUPT, " Mary", " John", top_k=0), V, "top_k"),
    R("attribute_then_verify-identical", lambda c: wb.attribute_then_verify(c.m, CLEAN, CLEAN, " Mary", " John"), V, "identical"),
    R("LabelledArray-dims", lambda c: wb.LabelledArray(np.zeros((2, 3)), ("layer",), {"layer": [0, 1]}), V, "values", "axes"),
    R("LabelledArray-coords", lambda c: wb.LabelledArray(np.zeros((2, 3)), ("layer", "pos"), {"layer": [0, 1], "pos": [0]}), V, "coords", "'pos'"),
    # causal tracing
    R("trace_fact-kinds-typo", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds="rsid"), V, "kinds", "'rsid'"),
    R("trace_fact-kinds-empty", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds=[]), V, "kinds"),
    R("trace_fact-kinds-repeated", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, kinds=["mlp", "mlp"]), V, "kinds", "repeated"),
    R("trace_fact-samples", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, samples=0), V, "samples"),
    R("trace_fact-window", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=0.1, window=0), V, "window"),
    R("trace_fact-noise-negative", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=-1.0), V, "noise"),
    R("trace_fact-noise-nan", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std=NAN), V, "noise"),
    R("trace_fact-noise-str", lambda c: wb.trace_fact(c.m, P, "France", " Paris", noise_std="3"), V, "noise"),
    R("trace_fact-subject-missing", lambda c: wb.trace_fact(c.m, P, "Spain", " Paris", noise_std=0.1), V, "substring", "Spain"),
    R("trace_fact-answer-empty", lambda c: wb.trace_fact(c.m, P, "France", "", noise_std=0.1), V, "answer"),
    R("trace_facts-missing-file", lambda c: wb.trace_facts(c.m, c.inp / "nope.jsonl", c.d / "t", progress=False), V, "facts", "no such file"),
    R("trace_facts-misspelt-key", lambda c: wb.trace_facts(c.m, c.inp / "facts_misspelt.jsonl", c.d / "t", progress=False),
      V, "facts", "subjct", "expected keys"),
    R("trace_facts-bad-json", lambda c: wb.trace_facts(c.m, c.inp / "facts_badjson.jsonl", c.d / "t", progress=False), V, "facts", "not valid json"),
    R("trace_facts-kinds", lambda c: wb.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", kinds="resid,mpl", progress=False), V, "kinds", "'mpl'"),
    R("trace_facts-limit", lambda c: wb.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", limit=0, progress=False), V, "limit"),
    R("trace_facts-order", lambda c: wb.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", order="random", progress=False), V, "order"),
    R("load_facts-known_1000-misspelt", lambda c: load_facts(c.inp / "known_misspelt.json"), V, "atribute", "known_id"),
    # steering
    R("build-identical-texts", lambda c: wb.build_steering_vector(c.m, ["I love this."], ["I love this."], layers=[0, 1]), V, "norm 0", "identical"),
    R("build-layer-range", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[5]), V, "layers", "out of range"),
    R("build-layers-string", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers="1"), V, "layers"),
    R("build-method", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], method="ica"), V, "method"),
    R("build-count-mismatch", lambda c: wb.build_steering_vector(c.m, ["a b", "e f"], ["c d"], layers=[1]), V, "negatives", "one negative per positive"),
    R("build-positives-string", lambda c: wb.build_steering_vector(c.m, "I love it", "I hate it", layers=[1]), V, "positives", "list of strings"),
    R("build-read_at", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], read_at="last"), V, "read_at"),
    R("build-read_at-range", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], read_at=-50), V, "read_at", "does not exist"),
    R("build-component", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], component="z"), V, "component"),
    R("build-probe-no-direction", lambda c: wb.build_steering_vector(c.m, ["a b"], ["c d"], layers=[1], method="probe"), V, "direction"),
    R("build-probe-zero-direction", lambda c: wb.build_steering_vector(c.m, layers=[1], method="probe", direction=torch.zeros(64)), V, "direction", "non-zero"),
    R("SteeringVector-empty", lambda c: wb.SteeringVector({}), V, "vectors"),
    R("SteeringVector-width", lambda c: steered_forward(c.m, wb.SteeringVector({0: torch.ones(32)})), V, "model", "width 32"),
    R("SteeringVector-nan", lambda c: steered_forward(c.m, wb.SteeringVector({0: nan_at(vec(c.m))})), V, "vector", "nan"),
    R("steer-multiplier-nan", lambda c: steered_forward(c.m, sv(c.m), multiplier=NAN), V, "multiplier", "finite"),
    R("steer-not-a-vector", lambda c: steered_forward(c.m, "love"), V, "steering"),
    R("steer-positions", lambda c: steered_forward(c.m, sv(c.m), positions=-2), V, "positions"),
    R("steer-layer-missing", lambda c: steered_forward(c.m, sv(c.m, layers=(0,)), layers=[1]), V, "layers", "no direction"),
    R("sweep-multipliers-number", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=2.0, behaviour=len), V, "multipliers", "list"),
    R("sweep-multipliers-inf", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=[1, INF], behaviour=len), V, "multipliers", "finite"),
    R("sweep-prompts-empty", lambda c: wb.steering_sweep(c.m, sv(c.m), [], multipliers=[1], behaviour=len), V, "prompts"),
    R("sweep-cost", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, cost="bleu"), V, "cost"),
    R("sweep-kl-no-neutral", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, cost="kl"), V, "neutral_texts"),
    R("sweep-behaviour", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour="sentiment"), V, "behaviour", "callable"),
    R("sweep-max_new_tokens", lambda c: wb.steering_sweep(c.m, sv(c.m), ["Hi"], multipliers=[1], behaviour=len, max_new_tokens=0), V, "max_new_tokens"),
    R("generate-top_p", lambda c: wb.generate(c.m, ["Hi"], max_new_tokens=2, do_sample=True, top_p=2.0), V, "top_p"),
    # weight edits
    R("EditRequest-misspelt", lambda c: wb.rome(c.m, {"prompt": P, "subjct": "France", "target": " Rome"}, 1), E, "subjct", "expected prompt, subject"),
    R("rome-subject-missing", lambda c: wb.rome(c.m, {**REQ, "subject": "Spain"}, 1, C=torch.eye(128), prefixes=PREFIXES), E, "subject", "does not occur"),
    R("rome-layer", lambda c: wb.rome(c.m, REQ, 2, C=torch.eye(128), prefixes=PREFIXES), E, "layer", "out of range"),
    R("rome-C-shape", lambda c: wb.rome(c.m, REQ, 1, C=torch.eye(64), prefixes=PREFIXES), E, "C", "[128, 128]"),
    R("rome-request-string", lambda c: wb.rome(c.m, "France -> Rome", 1), E, "request", "got str"),
    R("rome-hparams", lambda c: wb.rome(c.m, REQ, 1, C=torch.eye(128), prefixes=PREFIXES, step=3), E, "hparams", "step"),
    R("memit-C-shape-up-front", lambda c: wb.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: torch.eye(64)}),
      E, "Cs", "layer 1", "[128, 128]", "(64, 64)"),
    R("memit-C-missing", lambda c: wb.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128)}), E, "Cs", "[1]"),
    R("memit-C-nan", lambda c: wb.memit(c.m, [REQ], [0, 1], prefixes=PREFIXES, Cs={0: torch.eye(128), 1: nan_at(torch.eye(128))}), E, "Cs", "nan"),
    R("memit-lam", lambda c: wb.memit(c.m, [REQ], [0, 1], lam=0.0, Cs={}), E, "lam"),
    R("memit-lam-nan", lambda c: wb.memit(c.m, [REQ], [0, 1], lam=NAN, Cs={}), E, "lam"),
    R("memit-layers", lambda c: wb.memit(c.m, [REQ], [1, 2, 3], Cs={}), E, "layers", "out of range"),
    R("memit-layers-repeated", lambda c: wb.memit(c.m, [REQ], [1, 1], Cs={}), E, "layers", "repeated"),
    R("memit-no-requests", lambda c: wb.memit(c.m, [], [1], Cs={}), E, "requests"),
    R("ft_l-eps", lambda c: wb.ft_l(c.m, REQ, 1, eps=0.0), E, "eps"),
    R("ft_l-layer", lambda c: wb.ft_l(c.m, REQ, -3), E, "layer", "out of range"),
    R("WeightEdit-nan", lambda c: wb.WeightEdit({1: nan_at(torch.zeros(64, 128))}).apply(c.m, check=False), E, "deltas", "nan"),
    R("WeightEdit-inf", lambda c: wb.WeightEdit({0: torch.zeros(64, 128), 1: torch.full((64, 128), INF)}).apply(c.m, check=False), E, "deltas", "inf"),
    R("WeightEdit-shape", lambda c: wb.WeightEdit({1: torch.zeros(128, 64)}).apply(c.m, check=False), E, "deltas", "(64, 128)"),
    R("WeightEdit-layer", lambda c: wb.WeightEdit({4: torch.zeros(64, 128)}).apply(c.m, check=False), E, "deltas", "out of range"),
    R("WeightEdit-restore-order", lambda c: out_of_order_restore(c.m), E, "restore", "reverse order"),
    R("WeightEdit-load-missing", lambda c: wb.WeightEdit.load(c.d / "nothing"), E, "directory", "deltas.safetensors"),
    R("WeightEdit-fingerprint", lambda c: wb.WeightEdit({1: torch.zeros(64, 128)}, {"fingerprint": "0" * 16}).apply(c.m, check=False),
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
    R("views-save_html-suffix", lambda c: wb.save_html(wb.LabelledArray([[0.0, 1.0]], ("layer", "position"),
                                                                        {"layer": [0], "position": ["a", "b"]}), c.d / "x.png"),
      V, "path", ".html"),
    # counterfactual strings (issue 19)
    R("counterfactual-empty-continuation", lambda c: wb.counterfactual.counterfactuals(c.m, ["Hello"], [""]), V, "continuations"),
    R("counterfactual-intervention-type", lambda c: wb.counterfactual.counterfactuals(c.m, ["Hello"], [" world"], "steer"), V,
      "intervention"),
    R("counterfactual-sample-temperature", lambda c: wb.counterfactual.sample(c.m, ["Hello"], temperature=-1.0), V, "temperature"),
    # analysis (issue 16)
    R("analysis-logit_lens-layer", lambda c: wb.logit_lens(c.m, "Hi there", " Paris", layers=[7]), V, "layer"),
    R("analysis-logit_lens-answer-multi", lambda c: wb.logit_lens(c.m, "Hi there", " Paris and Rome"), V, "answer"),
    R("analysis-direct_logit_attribution-answer", lambda c: wb.direct_logit_attribution(c.m, "Hi there", " Paris and"), V, "answer"),
    R("analysis-path_patching-sender", lambda c: wb.path_patching(c.m, CLEAN, CORRUPT, " Mary", " John", senders=["L1H9"]), V, "senders"),
    R("analysis-path_patching-receiver-before", lambda c: wb.path_patching(c.m, CLEAN, CORRUPT, " Mary", " John", senders=["L1H1"],
                                                                           receivers=["L0H0"]), V, "receivers"),
    R("analysis-das-k", lambda c: wb.das(c.m, "blocks.1.hook_resid_pre", ["Hi there"], ["Hi you"], [" yes"], [" yes", " no"],
                                         k=65), V, "k"),
    R("analysis-cross_model_patching-shapes", lambda c: wb.cross_model_patching(c.m, wb.tiny_model("llama", d_model=32), CLEAN,
                                                                                 " Mary", " John"), V, "shapes"),
    # counterfactual strings: resumable runs, side-by-side view (issue 19)
    R("counterfactual-counterfactual_sweep-chunk", lambda c: wb.counterfactual.counterfactual_sweep(c.d / "cf", c.m, ["Hello"],
                                                                                             [" world"], chunk=0), V, "chunk"),
    R("views-counterfactual_view-result", lambda c: wb.views.counterfactual_view({"ids": []}, c.m), V, "result", "Counterfactuals"),
    # sweeps on Ray, models split over devices (issue 14)
    R("distributed-trace_facts-workers", lambda c: wb.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", workers=0,
                                                                  progress=False), V, "workers", ">= 1"),
    R("distributed-trace_facts-ray_address", lambda c: wb.trace_facts(c.m, c.inp / "facts.jsonl", c.d / "t", ray_address="",
                                                                      progress=False), V, "ray_address"),
    R("distributed-trace_facts-executor-and-workers", lambda c: wb.trace_facts(
        c.m, c.inp / "facts.jsonl", c.d / "t", workers=2, executor=wb.distributed.InProcess(), progress=False), V, "executor"),
    R("distributed-model_spec-type", lambda c: wb.distributed.model_spec("tiny-llama"), V, "model"),
    R("distributed-load_model-device_map", lambda c: wb.load_model("tiny-llama", device_map="everywhere"), V, "device_map"),
    R("distributed-load_model-device_map-and-device", lambda c: wb.load_model("tiny-llama", device="cpu", device_map="auto"),
      V, "device_map", "not both"),
    # sparse autoencoders (issue 15)
    R("sae-load_sae-width", lambda c: wb.load_sae(_random_sae(c.m, width=32), c.m), V, "d_in", "32", "64"),
    R("sae-load_sae-truncated", lambda c: wb.load_sae(c.d / "sae", c.m), V, "truncated or corrupt", setup=lambda d: _broken_sae(d)),
    R("sae-load_sae-other-model", lambda c: wb.load_sae(_random_sae(c.m, model_name="gemma-2-2b"), c.m), V,
      "gemma-2-2b", "tiny-llama"),
    R("sae-save_sae-not-sae", lambda c: wb.save_sae(object(), c.d / "s"), V, "sae"),
    R("sae-SAEEdit-latents", lambda c: wb.SAEEdit(sae=_random_sae(c.m), latents=[96], op="zero"), V, "latents",
      "out of range"),
    R("sae-train_sae-k", lambda c: wb.train_sae(c.m, ["Hello world"], "blocks.1.hook_resid_pre", d_sae=8, k=16), V, "k"),
    R("sae-evaluate_sae-texts", lambda c: wb.evaluate_sae(c.m, wb.load_sae(_random_sae(c.m), c.m), []), V, "texts"),
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
]

BAD = "tiny-bert"  # a model that cannot load: the row passes only if the argument is refused before loading
CLI = [
    # patch
    R("patch-out-is-file", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                            "--foil", " John", "--out", "{d}/x.json"], V, "out", "existing file", setup=existing("x.json")),
    R("patch-out-has-results", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                                "--foil", " John", "--out", "{d}"], V, "result.json", "--force", setup=existing("result.json")),
    R("patch-sites", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John",
                      "--sites", "resid_pre,mlp", "--out", "{d}/o"], V, "components", "'mlp'"),
    R("patch-memory", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--foil", " John",
                       "--memory-mb", "-5", "--out", "{d}/o"], V, "memory_mb"),
    R("patch-empty-answer", ["patch", "--model", BAD, "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", "", "--foil", " John",
                             "--out", "{d}/o"], V, "answer"),
    R("patch-answer-eq-foil", ["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                               "--foil", " Mary", "--out", "{d}/o"], V, "degenerate"),
    R("patch-identical-normalized", ["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CLEAN, "--answer", " Mary",
                                     "--foil", " John", "--metric", "normalized", "--out", "{d}/o"], V, "identical"),
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
    R("sae-diff-rank-by", ["sae", "diff", "--model", BAD, "--finetuned", BAD, "--sae", "{d}/nope", "--rank-by", "max",
                           "--out", "{d}/o.json"], V, "rank_by"),
]

ROWS = API + CLI


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
    """Each name in workbench.__all__ (bar the constant and the plain data types) and each CLI verb has rows."""
    import inspect
    import argparse

    from workbench.cli import VERB_MODULES

    ids = " ".join(r.id for r in ROWS).lower()
    sources = " ".join(inspect.getsource(r.call) if callable(r.call) else " ".join(r.call) for r in ROWS)
    for name in wb.__all__:
        if name in ("DEFAULT_MODEL", "__version__"):
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
    e = wb.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
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
    a, b = wb.WeightEdit({0: torch.full((d.d_model, d.d_mlp), 1e-3)}), wb.WeightEdit({1: torch.full((d.d_model, d.d_mlp), 1e-3)})
    ha, hb = a.apply(m, check=False), b.apply(m, check=False)
    ha.restore()
    hb.restore()
    assert weights_hash(m) == before
    h = e.apply(m, check=False)
    h.restore()
    h.restore()  # twice is harmless
    assert weights_hash(m) == before


def test_kinds_as_a_string_traces_those_kinds(m):
    one = wb.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds="resid")
    listed = wb.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds=["resid"])
    assert list(one.scores) == ["resid"] and np.array_equal(one.scores["resid"], listed.scores["resid"])
    two = wb.trace_fact(m, P, "France", " Paris", noise_std=0.1, samples=2, kinds="resid,mlp")
    assert list(two.scores) == ["resid", "mlp"]


def test_unspaced_answer_warns_with_the_hint(m):
    with pytest.warns(UserWarning, match="' Mary'"):
        wb.activation_patching(m, CLEAN, CORRUPT, "Mary", " John")


def test_steering_vector_zero_at_some_layers_warns(m):
    # texts ending in the same token: resid_pre at layer 0 (the embedding of that token) is identical
    with pytest.warns(UserWarning, match="norm 0 at layers \\[0\\]"):
        vec = wb.build_steering_vector(m, ["I love it."], ["I hate it."], layers=[0, 1])
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
    wb.save_sae(_random_sae(wb.load_model("tiny-llama")), d / "sae")
