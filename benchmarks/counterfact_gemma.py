"""ROME vs MEMIT vs FT-L on a post-norm family: Gemma 3 270M (issue 30), on the same held-out known facts.

    workbench bench counterfact_gemma [--edits 5] [--methods memit memit@6 ft-l rome rome@8] [--gen-tokens 40]

The requests are `rome_gemma`'s (known facts of the shipped set that no test uses, CounterFact-style: a new
object of the same relation, two paraphrases, five neighbourhood prompts). Each is scored before any edit and
after: ROME and FT-L edit one request at a time (each against the unedited model, as CounterFact does), MEMIT
edits all of them at once over its default 5 layers. C = E[k k^T] over `--n-tokens` tokens of the shipped fact
sentences (`rome_gemma.facts_corpus`; one pass for every layer needed, cached). `rome@L` (and `ft-l@L`) edit at
layer L instead of the default, `memit@L` over layers L..L+4. Fluency (GE, the generation entropy of CounterFact) from `--gen-tokens` sampled
tokens per generation prompt (0: skipped). One JSON per method: counterfact-<method>-gemma-3-270m-<device>.json.
Every edit is checked to restore the weights bit-exactly.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.data import data_path
from workbench.data.facts import known_facts, load_facts
from workbench.editing import EditRequest, context_prefixes, default_layer, memit, rome_many, second_moments
from workbench.editing.counterfact import build_requests, score_request, summarize
from workbench.editing.ftl import ft_l
from workbench.editing.mass import default_memit_layers

sys.path.insert(0, os.path.dirname(__file__))
from common import device_meta, parser, result_name, write_result  # noqa: E402
from rome_gemma import IN_TESTS, facts_corpus  # noqa: E402


def parse_method(spec: str, model) -> tuple[str, int | None]:
    """'rome', 'rome@8', 'memit', 'memit@6' or 'ft-l' -> (method, layer); layer None: the method's default
    (for MEMIT: the first of its 5 layers)."""
    name, _, layer = spec.partition("@")
    if name not in ("rome", "memit", "ft-l") or (layer and not layer.isdigit()):
        raise SystemExit(f"--methods: expected rome, memit or ft-l, each with an optional @<layer>, got {spec!r}")
    return name, int(layer) if layer else None


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--facts", type=int, default=64, help="shipped facts screened for known ones")
    ap.add_argument("--methods", nargs="+", default=["memit", "ft-l", "rome"])
    ap.add_argument("--n-tokens", type=int, default=16384, help="tokens of the fact sentences for C")
    ap.add_argument("--value-prefixes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="value optimisation steps (ROME, MEMIT)")
    ap.add_argument("--lam", type=float, default=3000.0, help="MEMIT's weight of the key statistics")
    ap.add_argument("--damping", type=float, default=1e-2, help="MEMIT's post-norm preimage damping")
    ap.add_argument("--memit-lr", type=float, default=5.0,
                    help="MEMIT's value learning rate (its z lives at resid_post, |h| ~ 4000 at layer 5 of Gemma 3 "
                         "270M: 0.5 reached p 0.01 in 10 steps, 5 reached 0.96)")
    ap.add_argument("--gen-tokens", type=int, default=40)
    ap.add_argument("--before-from", default=None,
                    help="an earlier result JSON of this benchmark whose before-scores to reuse (same requests)")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = wb.load_model(args.model, device=args.device)
    methods = [(spec, *parse_method(spec, model)) for spec in args.methods]
    facts = [f for f in load_facts(data_path("facts.jsonl")) if not any(s in f["subject"] for s in IN_TESTS)]
    facts = facts[:args.facts]
    known = known_facts(model, facts)
    requests = build_requests(facts, known, n=args.edits, n_neighbours=5)
    edit_reqs = [EditRequest(r["prompt"], r["subject"], r["target_new"]) for r in requests]
    def memit_layers(first):
        return default_memit_layers(model) if first is None else list(range(first, first + 5))

    layers = sorted({l for _, name, l in methods if name != "memit" for l in [default_layer(model) if l is None else l]}
                    | {x for _, name, l in methods if name == "memit" for x in memit_layers(l)})
    t = time.time()
    Cs = second_moments(model, layers, corpus=facts_corpus(), n_tokens=args.n_tokens, progress=False)
    stats_s = time.time() - t
    print(f"C at layers {layers}: {args.n_tokens} fact tokens in {stats_s:.1f} s", flush=True)
    prefixes = context_prefixes(model)
    downs = {l: model.module("mlp_down", l).weight for l in range(model.dims.n_layers)}
    w0 = {l: w.detach().clone() for l, w in downs.items()}

    def restored() -> bool:
        return all(torch.equal(downs[l], w0[l]) for l in downs)

    if args.before_from:  # the unedited model's scores are deterministic: reuse them, checking the requests match
        old = json.loads(Path(args.before_from).read_text())
        if [e["prompt"] for e in old["edits"]] != [r["prompt"] for r in requests] or old["gen_tokens"] != args.gen_tokens:
            raise SystemExit(f"--before-from: {args.before_from} scored other requests or another --gen-tokens")
        before = [e["before"] for e in old["edits"]]
    else:
        before = [score_request(model, req, gen_tokens=args.gen_tokens) for req in requests]
    print(f"{len(requests)} requests scored before editing ({time.time() - t0:.0f} s so far)", flush=True)
    common = {"model": model.name, "family": model.arch.family, "n_layers": model.dims.n_layers,
              "n_known_screened": f"{sum(known)} of {len(facts)}", "stats_tokens": args.n_tokens,
              "stats_corpus": "facts", "stats_seconds": round(stats_s, 1), "gen_tokens": args.gen_tokens,
              "edits_requested": len(requests), "before": summarize(before)}
    for spec, name, layer in methods:
        t = time.time()
        after, rows, extra = [], [], {}
        if name == "memit":
            edit = memit(model, edit_reqs, memit_layers(layer), lam=args.lam, damping=args.damping, Cs=Cs, prefixes=prefixes,
                         value_prefixes=args.value_prefixes, steps=args.steps, lr=args.memit_lr)
            seconds = time.time() - t
            with edit.applied(model, check=False):
                after = [{**score_request(model, req, gen_tokens=args.gen_tokens), "request": req} for req in requests]
            extra = {"layers": memit_layers(layer), "lam": args.lam, "damping": args.damping, "lr": args.memit_lr,
                     "value_prefixes": args.value_prefixes, "steps": args.steps,
                     "relative_residual": edit.meta["relative_residual"],
                     "relative_norms": edit.meta["relative_norms"], "value_opt": edit.meta["value_opt"]}
            rows = [{"seconds_all": round(seconds, 1), "restored_bit_exact": restored()}]
        else:
            layer = default_layer(model) if layer is None else layer
            if name == "rome":
                edits = rome_many(model, edit_reqs, layer, C=Cs[layer], prefixes=prefixes,
                                  value_prefixes=args.value_prefixes, steps=args.steps)
                extra = {"layer": layer, "value_prefixes": args.value_prefixes, "steps": args.steps}
            else:  # FT-L with counterfact.sh's radius and rate (the research radius barely moves these weights)
                edits = [ft_l(model, r, layer, lr=1e-3, eps=1e-2) for r in edit_reqs]
                extra = {"layer": layer, "lr": 1e-3, "eps": 1e-2}
            seconds = time.time() - t
            for req, edit in zip(requests, edits):
                with edit.applied(model, check=False):
                    after.append(score_request(model, req, gen_tokens=args.gen_tokens))
                rows.append({"subject": req["subject"], "target_new": req["target_new"], "restored_bit_exact": restored(),
                             "value_opt": {k: edit.meta.get(k) for k in ("steps", "p_target", "delta_norm", "h0_norm")}})
        result = {"benchmark": "counterfact_gemma", "method": spec, **common, **extra,
                  "edit_seconds": round(seconds, 1), "after": summarize(after, [r["prompt"] for r in requests] if
                                                                         name == "memit" else ()),
                  "edits": [{"prompt": r["prompt"], "target_true": r["target_true"], "target_new": r["target_new"],
                             "before": b, "after": {k: v for k, v in a.items() if k != "request"}}
                            for r, b, a in zip(requests, before, after)],
                  "checks": rows, "total_seconds": round(time.time() - t0, 1), **device_meta(args.device)}
        write_result(result, result_name(f"counterfact-{spec.replace('@', '-l')}", model.name), args.device, None)
        print(spec, {k: result["after"][k] for k in ("ES", "PS", "NS", "GE", "n")}, f"{seconds:.0f} s",
              extra.get("relative_residual", ""), flush=True)


if __name__ == "__main__":
    main()
