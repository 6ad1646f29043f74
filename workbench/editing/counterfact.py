"""CounterFact-style evaluation (ROME paper, Sec. 4.2) on requests built from the facts dataset.

A request rewrites (subject, relation, true object) to a new object of the same relation. It is scored
on its own prompt (efficacy), its two paraphrases (generalisation) and neighbourhood prompts, the
prompts of other subjects of the same relation (specificity). p(x) below is exp(mean token
log-probability of the text x after the prompt), as in the research code.

    ES = mean [p(new) > p(true)] on the prompt            EM = mean p(new) - p(true)
    PS = the same over paraphrase prompts                 PM = likewise
    NS = mean [p(neighbour's true object) > p(new)]       NM = mean p(neighbour's true) - p(new)
    S  = harmonic mean of ES, PS and NS
    GE = generation entropy: 2/3 H(bigrams) + 4/3 H(trigrams), averaged (bits), of sampled continuations

Neighbourhood prompts in CounterFact share the true object; where a relation has too few such
subjects (capitals are unique), other known subjects of the relation fill up, each scored against its
own true object (the same test: the neighbour keeps its answer over the new object).
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..data.facts import answer_text
from ..data import resolve
from ..core.generation import generate
from ..toolkit.sweep import SweepFolder, check_item_id
from ..toolkit.records import read_records
from .requests import EditError, target_logprobs
from ..core import checks

METRIC_KEYS = ("ES", "EM", "PS", "PM", "NS", "NM", "S", "GE", "n")


def _with_object(fact: dict, obj: str) -> str:
    return answer_text({**fact, "object": obj})


def build_requests(facts: list[dict], known: list[bool] | None = None, *, n: int | None = None, seed: int = 0,
                   n_neighbours: int = 10) -> list[dict]:
    """CounterFact-style requests from facts (only known ones when `known` is given), relations interleaved.

    Each: id, relation, subject, prompt, target_true, target_new, paraphrase_prompts, neighborhood
    ([{prompt, target}]), generation_prompts.
    """
    rng = random.Random(seed)
    pool = [f for i, f in enumerate(facts) if known is None or known[i]]
    by_rel: dict[str, list[dict]] = defaultdict(list)
    for f in pool:
        by_rel[f.get("relation", "?")].append(f)
    objects = {rel: sorted({f["object"] for f in facts if f.get("relation", "?") == rel}) for rel in by_rel}
    queues = {rel: rng.sample(fs, len(fs)) for rel, fs in sorted(by_rel.items())}
    order = []
    while any(queues.values()):
        for rel in sorted(queues):
            if queues[rel]:
                order.append(queues[rel].pop())
    out = []
    for f in order:
        rel = f.get("relation", "?")
        others = [o for o in objects[rel] if o != f["object"]]
        distinct = [o for o in others if o.split()[0] != f["object"].split()[0]]
        if not others:
            continue
        new = rng.choice(distinct or others)
        same = [g for g in by_rel[rel] if g["object"] == f["object"] and g["id"] != f["id"]]
        rest = [g for g in by_rel[rel] if g["object"] != f["object"] and g["object"] != new]
        neigh = [g for g in rng.sample(same, len(same)) + rng.sample(rest, len(rest))
                 if f["subject"] not in g["prompt"] and g["subject"] not in f["subject"]][:n_neighbours]
        out.append({
            "id": f["id"], "relation": rel, "subject": f["subject"], "prompt": f["prompt"],
            "target_true": answer_text(f), "target_new": _with_object(f, new),
            "paraphrase_prompts": list(f.get("paraphrases", []))[:2],
            "neighborhood": [{"prompt": g["prompt"], "target": answer_text(g)} for g in neigh],
            "generation_prompts": [f"{f['subject']} is", f"Here is a short text about {f['subject']}:"],
        })
        if n is not None and len(out) >= n:
            break
    return out


REQUEST_KEYS = ("id", "prompt", "subject", "target_new", "target_true")
REQUEST_OPTIONAL = ("relation", "paraphrase_prompts", "neighborhood", "neighborhood_prompts", "generation_prompts")
# CounterFact's counterfact.json (Meng et al. 2022): a JSON list of these records.
COUNTERFACT_KEYS = ("case_id", "pararel_idx", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
                    "attribute_prompts", "generation_prompts")
REWRITE_KEYS = ("prompt", "relation_id", "target_new", "target_true", "subject")


def _spaced(target: str, prompt: str) -> str:
    """ROME's convention: a target gets a leading space unless it has one (rome_main.py prepends " " to
    target_new; the CounterFact evaluation tokenizes f" {target}"). A prompt ending in whitespace keeps it."""
    return target if target.startswith(" ") or prompt[-1:].isspace() else " " + target


def _target_str(t, where: str, key: str) -> str:
    if isinstance(t, dict):  # CounterFact: {"str": "English", "id": "Q1860"}
        t = t.get("str")
    if not isinstance(t, str) or not t.strip():
        raise EditError(f"requests: {where}: {key!r} must be a non-empty string (or CounterFact's {{\"str\": ...}}), got {t!r}")
    return t


def _strings(x, where: str, key: str) -> list[str]:
    if not isinstance(x, list) or not all(isinstance(p, str) and p for p in x):
        raise EditError(f"requests: {where}: {key!r} must be a list of non-empty strings, got {x!r}")
    return x


def _from_counterfact(r: dict, where: str) -> dict:
    """A counterfact.json record as a request: the rewrite prompt's `{}` is the subject, targets get ROME's
    leading space, and every neighbourhood prompt is scored on the true target (they share its object)."""
    unknown = sorted(set(r) - set(COUNTERFACT_KEYS))
    rw = r.get("requested_rewrite")
    if unknown or not isinstance(rw, dict) or "case_id" not in r:
        raise EditError(f"requests: {where}: a CounterFact record with unknown keys {unknown} (or no case_id / "
                        f"requested_rewrite object); expected keys {list(COUNTERFACT_KEYS)}")
    bad = sorted(set(rw) - set(REWRITE_KEYS)) + [k for k in ("prompt", "subject", "target_new", "target_true") if k not in rw]
    if bad:
        raise EditError(f"requests: {where}: requested_rewrite has unknown or missing keys {bad}; "
                        f"expected keys {list(REWRITE_KEYS)}")
    if not isinstance(rw["prompt"], str) or "{}" not in rw["prompt"]:
        raise EditError(f"requests: {where}: requested_rewrite.prompt must contain '{{}}' for the subject, got {rw['prompt']!r}")
    prompt = rw["prompt"].replace("{}", rw["subject"])
    true = _spaced(_target_str(rw["target_true"], where, "target_true"), prompt)
    return {"id": r["case_id"], "relation": rw.get("relation_id"), "subject": rw["subject"], "prompt": prompt,
            "target_true": true, "target_new": _spaced(_target_str(rw["target_new"], where, "target_new"), prompt),
            "paraphrase_prompts": _strings(r.get("paraphrase_prompts", []), where, "paraphrase_prompts"),
            "neighborhood": [{"prompt": p, "target": true}
                             for p in _strings(r.get("neighborhood_prompts", []), where, "neighborhood_prompts")],
            "generation_prompts": _strings(r.get("generation_prompts", []), where, "generation_prompts")}


def _from_flat(r: dict, where: str) -> dict:
    """This project's request record (see `build_requests`); CounterFact's `neighborhood_prompts` (strings
    scored on the true target) are accepted in place of `neighborhood`, targets get ROME's leading space."""
    unknown = sorted(set(r) - set(REQUEST_KEYS) - set(REQUEST_OPTIONAL))
    missing = [k for k in REQUEST_KEYS if k not in r]
    if unknown or missing:
        what = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        raise EditError(f"requests: {where}: {' and '.join(what)}; expected keys {list(REQUEST_KEYS)} (optional "
                        f"{list(REQUEST_OPTIONAL)}), or a CounterFact record {list(COUNTERFACT_KEYS)}")
    if not isinstance(r["prompt"], str) or not isinstance(r["subject"], str) or not r["prompt"].strip():
        raise EditError(f"requests: {where}: 'prompt' and 'subject' must be non-empty strings")
    prompt = r["prompt"].replace("{}", r["subject"])
    true = _spaced(_target_str(r["target_true"], where, "target_true"), prompt)
    out = {**r, "prompt": prompt, "target_true": true,
           "target_new": _spaced(_target_str(r["target_new"], where, "target_new"), prompt)}
    neigh = list(r.get("neighborhood", []))
    if not isinstance(r.get("neighborhood", []), list) or not all(
            isinstance(g, dict) and set(g) == {"prompt", "target"} for g in neigh):
        raise EditError(f"requests: {where}: 'neighborhood' must be a list of {{\"prompt\", \"target\"}} objects "
                        "(or give CounterFact's 'neighborhood_prompts', a list of strings)")
    neigh += [{"prompt": p, "target": true} for p in _strings(out.pop("neighborhood_prompts", []), where, "neighborhood_prompts")]
    out["neighborhood"] = [{"prompt": g["prompt"], "target": _spaced(g["target"], g["prompt"])} for g in neigh]
    for k in ("paraphrase_prompts", "generation_prompts"):
        if k in out:
            _strings(out[k], where, k)
    return out


def load_requests(path) -> list[dict]:
    """Edit requests from this project's JSONL (see `build_requests`) or CounterFact's own `counterfact.json`
    (a JSON list of records with `requested_rewrite`), told apart by their keys. Unknown or misspelt keys are
    refused naming the expected ones; targets get ROME's leading space where they lack one."""
    rows = read_records(resolve(path), "requests", json_list=True, error=EditError)
    out, ids = [], set()
    for i, r in rows:
        where = f"{path}:{i}"
        req = _from_counterfact(r, where) if ("requested_rewrite" in r or "case_id" in r) else _from_flat(r, where)
        check_item_id(req["id"], ids, where, "requests", EditError)
        out.append(req)
    if not out:
        raise EditError(f"requests: {path} holds no requests")
    return out


def ngram_entropy(text: str, n: int) -> float:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def generation_entropy(texts: list[str]) -> float:
    """Weighted bi- and tri-gram entropy (weights 2/3 and 4/3, as in the ROME code), mean over texts."""
    return float(np.mean([np.mean([2 / 3 * ngram_entropy(t, 2), 4 / 3 * ngram_entropy(t, 3)]) for t in texts]))


def score_request(model, req: dict, *, gen_tokens: int = 40) -> dict:
    """The model's probabilities (in its current, possibly edited, state) for one request."""
    new, true = req["target_new"], req["target_true"]
    prompts = [req["prompt"]] + list(req.get("paraphrase_prompts", [])) + [g["prompt"] for g in req.get("neighborhood", [])]
    trues = [true] * (1 + len(req.get("paraphrase_prompts", []))) + [g["target"] for g in req.get("neighborhood", [])]
    lp = target_logprobs(model, prompts + prompts, [new] * len(prompts) + trues)
    p_new, p_true = lp[:len(prompts)].exp().tolist(), lp[len(prompts):].exp().tolist()
    n_para = len(req.get("paraphrase_prompts", []))
    pairs = [{"p_new": a, "p_true": b} for a, b in zip(p_new, p_true)]
    out = {"id": req["id"], "rewrite": pairs[0], "paraphrase": pairs[1:1 + n_para], "neighborhood": pairs[1 + n_para:]}
    if gen_tokens and req.get("generation_prompts"):
        # top-k 5 sampling, one seed for the batch (the ROME code's fluency texts)
        texts = generate(model, req["generation_prompts"], do_sample=True, top_k=5, max_new_tokens=gen_tokens, seed=0,
                         batch_size=len(req["generation_prompts"]), skip_special_tokens=True)
        out["generations"] = texts
        out["entropy"] = generation_entropy(texts)
    return out


def summarize(results: list[dict], edited_prompts=()) -> dict:
    """ES, EM, PS, PM, NS, NM, S (percent; magnitudes as percentage points), GE and n over request results.

    `edited_prompts`: the prompts of all requests edited together (MEMIT's batch). A neighbourhood prompt
    among them is another request of the batch, whose answer was changed on purpose, so it is not a
    neighbour: NS / NM leave it out, and NS_all / NM_all report the score over every neighbourhood prompt.
    Needs each result's "request" (as `run_counterfact` records it).
    """
    def mean(xs):
        xs = list(xs)
        return float(np.mean(xs)) if xs else float("nan")

    scored = [r for r in results if "rewrite" in r]
    edited = set(edited_prompts)
    if edited:
        if not all("request" in r for r in scored):
            raise ValueError("results: summarize(edited_prompts=...) needs each result's 'request'")
        scored = [{**r, "neighborhood_all": r["neighborhood"],
                   "neighborhood": [p for p, g in zip(r["neighborhood"], r["request"]["neighborhood"])
                                    if g["prompt"] not in edited]} for r in scored]
    es = mean(r["rewrite"]["p_new"] > r["rewrite"]["p_true"] for r in scored)
    em = mean(r["rewrite"]["p_new"] - r["rewrite"]["p_true"] for r in scored)
    ps = mean(mean(p["p_new"] > p["p_true"] for p in r["paraphrase"]) for r in scored if r["paraphrase"])
    pm = mean(mean(p["p_new"] - p["p_true"] for p in r["paraphrase"]) for r in scored if r["paraphrase"])
    ns = mean(mean(p["p_true"] > p["p_new"] for p in r["neighborhood"]) for r in scored if r["neighborhood"])
    nm = mean(mean(p["p_true"] - p["p_new"] for p in r["neighborhood"]) for r in scored if r["neighborhood"])
    s = 3 / (1 / es + 1 / ps + 1 / ns) if min(es, ps, ns) > 0 else 0.0
    ge = mean(r["entropy"] for r in scored if "entropy" in r)
    pct = lambda x: round(100 * x, 2)
    out = {"ES": pct(es), "EM": pct(em), "PS": pct(ps), "PM": pct(pm), "NS": pct(ns), "NM": pct(nm), "S": pct(s),
           "GE": round(ge, 3), "n": len(scored),
           "n_noop": sum(bool(r.get("noop")) for r in results), "n_rejected": sum(bool(r.get("rejected")) for r in results)}
    if edited:
        every = [r for r in scored if r["neighborhood_all"]]
        out["NS_all"] = pct(mean(mean(p["p_true"] > p["p_new"] for p in r["neighborhood_all"]) for r in every))
        out["NM_all"] = pct(mean(mean(p["p_true"] - p["p_new"] for p in r["neighborhood_all"]) for r in every))
        out["n_neighbours_edited"] = sum(len(r["neighborhood_all"]) - len(r["neighborhood"]) for r in scored)
    return out


def check_run(model, requests, method: str, *, layer, layers, hparams, lam, gen_tokens, value_prefixes, stats) -> None:
    """Every argument of `run_counterfact` checked before anything is written (a refused run leaves no folder)."""

    from .requests import EditRequest, edit_layers
    from .rank_one import HPARAMS, check_hparams

    if isinstance(requests, (str, bytes, dict, Path)) or not isinstance(requests, (list, tuple)) or not requests:
        raise EditError("requests: expected a non-empty list of request dicts (`load_requests(path)` reads a file), "
                        f"got {type(requests).__name__}")
    for i, r in enumerate(requests):
        if not isinstance(r, dict) or any(k not in r for k in REQUEST_KEYS):
            raise EditError(f"requests: request {i} must be a dict with keys {list(REQUEST_KEYS)} (see load_requests)")
        try:
            EditRequest(r["prompt"], r["subject"], r["target_new"]).check(model)
        except EditError as e:
            raise EditError(f"requests: request {r['id']!r}: {e}") from None
    if layer is not None:
        edit_layers(model, layer, "layer")
    if layers is not None:
        edit_layers(model, layers, "layers")
    allowed = {"rome": HPARAMS, "memit": HPARAMS, "ft-l": ("steps", "lr", "eps"), "none": ()}[method]
    unknown = sorted(set(hparams or {}) - set(allowed))
    if unknown:
        raise EditError(f"hparams: unknown {unknown} for method {method!r}; expected some of {list(allowed)}")
    check_hparams(hparams or {}, allowed)
    if method == "memit":
        checks.number(lam, "lam", positive=True, error=EditError)
    checks.integer(gen_tokens, "gen_tokens", 0, error=EditError)
    checks.integer(value_prefixes, "value_prefixes", 0, none_ok=True, error=EditError)
    if stats is not None and not isinstance(stats, dict):
        raise EditError(f"stats: expected a dict of key-statistics options, got {type(stats).__name__}")


def run_counterfact(model, requests: list[dict], out, method: str = "rome", *, layer: int | None = None,
                    layers=None, limit: int | None = None, chunk: int = 8, gen_tokens: int = 40,
                    stats: dict | None = None, hparams: dict | None = None, value_prefixes: int | None = None,
                    lam: float = 3000.0, allow_abnormal: bool = False, run=None, force: bool = False,
                    progress: bool = True, workers: int | None = None, ray_address: str | None = None,
                    executor=None) -> dict:
    """Edit and score each request (ROME, FT-L: one edit at a time on the unedited model; MEMIT: all requests
    in one edit; "none": the unedited model). `out` is a resumable sweep folder (`toolkit.sweep`): results go
    to `out/results/<id>.json` as they finish and a re-run skips them; `out/metrics.json` holds the summary.
    `allow_abnormal` applies edits the safety check flags; `force` replaces another configuration's results.
    `run=Run(...)` (`workbench.toolkit.Run`; its settings also accepted as keywords) runs the sweep's items on
    any executor (in-process, Ray workers) with the same results: FT-L and "none" one request per item, ROME
    `chunk` requests per item (their value optimisation batched by `rome_many`; chunks fixed by the requests'
    places in the list). MEMIT's one edit of all requests runs in-process (`workers` refused). Returns the metrics."""
    from ..toolkit.executors import as_run
    from .rank_one import default_layer

    try:
        run = as_run(run, force=force, progress=progress, workers=workers, ray_address=ray_address, executor=executor)
    except ValueError as e:
        raise EditError(str(e)) from None

    methods = ("rome", "memit", "ft-l", "none")
    if method not in methods:
        raise EditError(f"method: expected one of {methods}, got {method!r}")
    checks.integer(chunk, "chunk", error=EditError)
    if limit is not None:
        checks.integer(limit, "limit", error=EditError)
        requests = requests[:limit]
    check_run(model, requests, method, layer=layer, layers=layers, hparams=hparams, lam=lam, gen_tokens=gen_tokens,
              value_prefixes=value_prefixes, stats=stats)
    out = Path(out)
    hparams = dict(hparams or {})
    if method in ("rome", "ft-l"):
        layer = default_layer(model) if layer is None else layer
    config = {"method": method, "model": model.name, "fingerprint": model.fingerprint, "layer": layer,
              "layers": list(layers) if layers is not None else None, "hparams": hparams, "stats": stats or {},
              "value_prefixes": value_prefixes, "lam": lam if method == "memit" else None, "gen_tokens": gen_tokens,
              "request_ids": [r["id"] for r in requests]}
    try:
        sweep = SweepFolder(out, config, items="results", force=run.force, ignore=("request_ids",))
    except ValueError as e:
        raise EditError(str(e)) from None
    if method == "memit" and run.distributed:
        raise EditError("workers: MEMIT makes one edit of all requests together; run it without workers / ray_address")
    with ExitStack() as stack:
        try:
            ex = stack.enter_context(run.executor_for(model))
        except ValueError as e:
            raise EditError(str(e)) from None
        with sweep.start():
            todo = [r for r in requests if not sweep.done(r["id"])]
            item = {"method": method, "layer": layer, "hparams": hparams, "stats": stats, "gen_tokens": gen_tokens,
                    "value_prefixes": value_prefixes, "allow_abnormal": allow_abnormal}
            if method in ("ft-l", "none"):
                # each request alone, an item of the one sweep driver (in-process or on Ray workers)
                sweep.run([(r["id"], {**item, "request": r}) for r in todo], _counterfact_item, model, ex,
                          done=len(requests) - len(todo), progress=run.progress, desc=f"{method} edits", unit="edit")
            elif method == "rome":
                # `chunk` requests per item, their value optimisation batched (`rome_many`); chunks are fixed by the
                # requests' places in the list, so a resumed run forms the ones an uninterrupted run does
                chunks = [(c // chunk, {**item, "requests": requests[c:c + chunk]}) for c in range(0, len(requests), chunk)]
                sweep.run(chunks, _counterfact_chunk, model, ex, parts=_chunk_ids, progress=run.progress,
                          desc="rome edits", unit="chunk")
            else:
                metrics = _memit_counterfact(model, sweep, requests, todo, layers, hparams, stats, value_prefixes, lam,
                                             gen_tokens, allow_abnormal, run.progress, config, out)
                return {**metrics, "this_run": {"now": len(todo), "before": len(requests) - len(todo)}}
            return {**_counterfact_metrics(sweep, requests, method, layer, config, out), "this_run": sweep.counts}


def _memit_counterfact(model, sweep, requests, todo, layers, hparams, stats, value_prefixes, lam, gen_tokens,
                       allow_abnormal, progress, config, out) -> dict:
    """MEMIT: one edit of all requests (saved in `out/edit/` and reused by a resumed run), then each request scored
    on the edited model, in-process (the edit is not independent items, see docs/sweeps.md)."""
    from tqdm.auto import tqdm

    from .mass import memit
    from .stats import second_moments
    from .weights import WeightEdit

    bar = tqdm(total=len(requests), initial=len(requests) - len(todo), disable=not progress, desc="memit edits", unit="edit")
    if todo:
        edit_dir = out / "edit"
        if (edit_dir / "deltas.safetensors").is_file():
            edit = WeightEdit.load(edit_dir)
            seconds = edit.meta.get("seconds")
        else:
            Cs = second_moments(model, layers if layers is not None else _memit_layers(model), **(stats or {}))
            t0 = time.perf_counter()
            edit = memit(model, [_as_edit(r) for r in requests], layers, lam=lam, Cs=Cs, value_prefixes=value_prefixes,
                         progress=progress, **hparams)
            seconds = time.perf_counter() - t0
            edit.meta["seconds"] = seconds
            edit.save(edit_dir)
        with edit.applied(model, allow_abnormal=allow_abnormal):
            for req in todo:
                sweep.save(req["id"], {**score_request(model, req, gen_tokens=gen_tokens),
                                       "seconds_edit": seconds / len(requests), "request": req})
                bar.update(1)
    bar.close()
    return _counterfact_metrics(sweep, requests, "memit", config["layer"], config, out)


def _counterfact_metrics(sweep, requests, method, layer, config, out) -> dict:
    results = [sweep.load(r["id"]) for r in requests]
    batch = {r["prompt"] for r in requests} if method == "memit" else ()  # MEMIT's requests are edited together
    metrics = {**summarize(results, edited_prompts=batch), "method": method, "layer": layer, "layers": config["layers"],
               "seconds_per_edit": _mean_or_none([r.get("seconds_edit") for r in results])}
    if method == "memit":
        metrics["layers"] = json.loads((out / "edit" / "edit.json").read_text())["meta"]["layers"]
    sweep.write_json("metrics.json", metrics)
    return metrics


def _memit_layers(model):
    from .mass import default_memit_layers

    return default_memit_layers(model)


def _mean_or_none(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _score_edit(model, req, edit, record, seconds, gen_tokens, allow_abnormal, EditRejected):
    if edit.noop:
        record(req, score_request(model, req, gen_tokens=gen_tokens), seconds, noop=True)
        return
    try:
        report = edit.check(model)
        handle = edit.apply(model, check=False) if (report["ok"] or allow_abnormal) else None
    except EditRejected:
        handle = None
    if handle is None:
        record(req, score_request(model, req, gen_tokens=gen_tokens), seconds, rejected=True, check=report)
        return
    try:
        res = score_request(model, req, gen_tokens=gen_tokens)
    finally:
        handle.restore()
    record(req, res, seconds, check=report, relative_norm=report["relative_norm"], value_opt={
        k: edit.meta.get(k) for k in ("steps", "loss", "nll", "p_target", "delta_norm", "steps_run") if k in edit.meta})


def _as_edit(req: dict) -> dict:
    """A CounterFact request as the edit request ROME, MEMIT and FT-L take."""
    return {"prompt": req["prompt"], "subject": req["subject"], "target": req["target_new"]}


_WORKER_MEMO: dict = {}  # per process: a worker's context prefixes and key statistics, computed once


def _counterfact_item(model, p: dict) -> dict:
    """One request of a FT-L or "none" `run_counterfact` sweep (an executor's item): edit alone on the unedited
    model, score, restore; or score the unedited model ("none"). ROME's items are chunks (`_counterfact_chunk`)."""
    from .ftl import ft_l
    from .weights import EditRejected

    req, method, out = p["request"], p["method"], {}

    def record(req, res, seconds=None, **extra):
        out.update({**res, **extra, "seconds_edit": seconds, "request": req})

    if method == "none":
        record(req, score_request(model, req, gen_tokens=p["gen_tokens"]))
        return out
    t0 = time.perf_counter()
    edit = ft_l(model, _as_edit(req), p["layer"], **p["hparams"])
    _score_edit(model, req, edit, record, time.perf_counter() - t0, p["gen_tokens"], p["allow_abnormal"], EditRejected)
    return out


def _chunk_ids(p: dict) -> list:
    return [r["id"] for r in p["requests"]]


def _counterfact_chunk(model, p: dict) -> dict:
    """A chunk of requests of a ROME `run_counterfact` sweep (an executor's item): their value optimisation
    together (`rome_many`), then each edit alone on the unedited model: scored, restored. {"parts": [record]}."""
    from .rank_one import context_prefixes, rome_many
    from .stats import second_moment
    from .weights import EditRejected

    key = (id(model), p["layer"], json.dumps(p["stats"] or {}, sort_keys=True))
    if key not in _WORKER_MEMO:
        _WORKER_MEMO[key] = (context_prefixes(model), second_moment(model, p["layer"], **(p["stats"] or {})))
    prefixes, C = _WORKER_MEMO[key]
    t0 = time.perf_counter()
    edits = rome_many(model, [_as_edit(r) for r in p["requests"]], p["layer"], prefixes=prefixes, C=C,
                      value_prefixes=p["value_prefixes"], **p["hparams"])
    per, parts = (time.perf_counter() - t0) / len(edits), []

    def record(req, res, seconds=None, **extra):
        parts.append({**res, **extra, "seconds_edit": seconds, "request": req})

    for req, edit in zip(p["requests"], edits):
        _score_edit(model, req, edit, record, per, p["gen_tokens"], p["allow_abnormal"], EditRejected)
    return {"parts": parts}
