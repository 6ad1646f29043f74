"""ROME on a post-norm family: Gemma 3 270M (issue 30). Held-out known facts from the shipped fact set (none of
those the tests use), each edited alone at the default layer (a sixth of the depth: no trace on this model yet),
scored before and after with the CounterFact scores (ES / PS / NS), and the weights checked to restore bit-exactly.

    workbench bench rome_gemma [--edits 3] [--n-tokens 2048] [--value-prefixes 2] [--steps 20]

C = E[k k^T] over `--n-tokens` tokens of `--corpus` (cached per model fingerprint): "facts" (the default) is the
shipped fact sentences (every prompt, paraphrase and neighbourhood prompt of `workbench/data/facts.jsonl` and
`counterfact.jsonl` completed with its true object, shuffled with seed 0, one text), "samples" text sampled from
the model (through the 262k-row unembedding at every step: slow on a CPU), or a path to a text file. The
statistics forward stops after the edited layer (`run_with_cache(logits=False)`). `--n-tokens 0` uses C = I instead
(the minimum-norm rank-one update W k* = v*).
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.data import data_path
from workbench.data.facts import known_facts, load_facts
from workbench.editing import EditRequest, context_prefixes, default_layer, rome, second_moment
from workbench.editing.counterfact import build_requests, score_request, summarize

sys.path.insert(0, os.path.dirname(__file__))
from common import device_meta, parser, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def facts_corpus() -> Path:
    """The shipped fact sentences (prompt + true object + "."), shuffled with seed 0, one per line, as a text file
    under out/corpora (rewritten atomically each run: its content, hence its corpus id, depends only on the data)."""
    from workbench.core.io import atomic_write_text

    lines = []
    for line in data_path("facts.jsonl").read_text().splitlines():
        d = json.loads(line)
        lines += [f"{p} {d['object']}." for p in [d["prompt"], *d.get("paraphrases", [])]]
    for line in data_path("counterfact.jsonl").read_text().splitlines():
        d = json.loads(line)
        lines += [f"{p}{d['target_true']}." for p in [d["prompt"], *d["paraphrase_prompts"]]]
        lines += [f"{n['prompt']}{n['target']}." for n in d["neighborhood"]]
    lines = list(dict.fromkeys(lines))
    random.Random(0).shuffle(lines)
    path = ROOT / "out" / "corpora" / "facts.txt"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


IN_TESTS = ("Eiffel", "Trento", "Space Needle", "France", "Brazil", "Messi")  # subjects the tests and examples use


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--facts", type=int, default=64, help="shipped facts screened for known ones")
    ap.add_argument("--n-tokens", type=int, default=16384)
    ap.add_argument("--corpus", default="facts", help='"facts", "samples" or a text file (for C)')
    ap.add_argument("--value-prefixes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="value optimisation steps (early stop at loss 0.05)")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = wb.load_model(args.model, device=args.device)
    facts = [f for f in load_facts(data_path("facts.jsonl")) if not any(s in f["subject"] for s in IN_TESTS)]
    facts = facts[:args.facts]
    known = known_facts(model, facts)
    requests = build_requests(facts, known, n=args.edits, n_neighbours=5)
    layer = default_layer(model)
    t = time.time()
    corpus = facts_corpus() if args.corpus == "facts" else args.corpus
    C = (second_moment(model, layer, corpus=corpus, n_tokens=args.n_tokens, progress=False) if args.n_tokens
         else torch.eye(model.dims.d_mlp))
    stats_s = time.time() - t
    print(f"C at layer {layer}: {args.n_tokens} tokens of {args.corpus} in {stats_s:.1f} s", flush=True)
    prefixes = context_prefixes(model)
    down = model.module("mlp_down", layer).weight
    w0 = down.detach().clone()
    before, after, rows = [], [], []
    for req in requests:
        before.append(score_request(model, req, gen_tokens=0))
        t = time.time()
        edit = rome(model, EditRequest(req["prompt"], req["subject"], req["target_new"]), layer, C=C, prefixes=prefixes,
                    value_prefixes=args.value_prefixes, steps=args.steps)
        seconds = time.time() - t
        with edit.applied(model, check=False):
            after.append(score_request(model, req, gen_tokens=0))
        restored = torch.equal(down, w0)
        rows.append({"prompt": req["prompt"], "subject": req["subject"], "target_true": req["target_true"],
                     "target_new": req["target_new"], "seconds": round(seconds, 2), "restored_bit_exact": restored,
                     "before": before[-1], "after": after[-1],
                     "value_opt": {k: edit.meta.get(k) for k in ("steps", "p_target", "delta_norm", "h0_norm")}})
        print(f"{req['subject']}: {req['target_true']!r} -> {req['target_new']!r}: p_new "
              f"{before[-1]['rewrite']['p_new']:.3f} -> {after[-1]['rewrite']['p_new']:.3f} in {seconds:.1f} s, "
              f"restored {restored}", flush=True)
        # written after every edit (atomically), so a run stopped early keeps the edits it finished
        result = {"benchmark": "rome_gemma", "model": model.name, "family": model.arch.family, "layer": layer,
                  "n_layers": model.dims.n_layers, "n_known_screened": f"{sum(known)} of {len(facts)}",
                  "stats_tokens": args.n_tokens, "stats_corpus": args.corpus if args.n_tokens else None,
                  "C": "E[k k^T]" if args.n_tokens else "identity", "steps": args.steps,
                  "stats_seconds": round(stats_s, 1), "value_prefixes": args.value_prefixes,
                  "edits_requested": len(requests), "before": summarize(before), "after": summarize(after),
                  "edits": rows, "total_seconds": round(time.time() - t0, 1), **device_meta(args.device)}
        write_result(result, f"rome-{model.name}", args.device, args.out)
    print({k: result["after"][k] for k in ("ES", "PS", "NS", "n")}, "before:", {k: result["before"][k] for k in ("ES", "PS", "NS")})


if __name__ == "__main__":
    main()
