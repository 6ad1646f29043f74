"""Counterfactual strings on the default model: continuations of prompts that mention an edited subject, sampled
from the unedited model (Gumbel-max, temperature 1, full vocabulary), and their counterfactuals under a ROME
edit and under the sentiment steering vector (layer 12, x4), with the side-effect measures; also the identity
check (no intervention: every counterfactual equals its observed string) and the time per 100 counterfactuals.

    PYTHONPATH=. python benchmarks/counterfactual.py [--n-per-prompt 4] [--stats-tokens 4096]
"""
from __future__ import annotations

import time

import torch

import workbench as wb
from benchmarks.common import device_meta, parser, write_result
from workbench.counterfactual import counterfactuals, measure, sample, summarize
from workbench.steering import SENTIMENT_TEMPLATE, build_steering_vector, load_pairs
from workbench.steering.behaviour import log_odds_classifier

PROMPTS = ["The capital of France is", "France is", "Here is a short text about France:", "My trip to France was",
           "People who live in France"]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--stats-tokens", type=int, default=4096, help="tokens for ROME's key statistics C")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = wb.load_model().to(args.device)
    prompts = [p for p in PROMPTS for _ in range(args.n_per_prompt)]
    obs = sample(model, prompts, max_new_tokens=args.max_new_tokens, seed=0)
    result = {"config": {"prompts": PROMPTS, "n": len(prompts), "max_new_tokens": args.max_new_tokens,
                         "temperature": 1.0, "stats_tokens": args.stats_tokens, **device_meta(args.device)}}

    t = time.perf_counter()
    same = counterfactuals(model, None, obs)
    result["identity"] = {"identical": sum(a == b for a, b in zip(same.ids, obs.ids)) / len(prompts),
                          "seconds_per_100": (time.perf_counter() - t) * 100 / len(prompts)}
    print("identity", result["identity"])

    request = wb.EditRequest("The capital of France is the city of", "France", " Rome")
    t = time.perf_counter()
    edit = wb.rome(model, request, stats={"n_tokens": args.stats_tokens})
    result["rome_seconds"] = time.perf_counter() - t
    pos, neg = load_pairs(wb.data_path("steering/sentiment_pairs.jsonl"))
    love = build_steering_vector(model, pos, neg, layers=[12], method="mean_diff", read_at=-1)
    classify = log_odds_classifier(model, SENTIMENT_TEMPLATE, " positive", " negative")
    conditions = {"ROME France -> Rome": (edit, dict(new="Rome", old="Paris")),
                  "steering sentiment L12 x4": (love.interventions(model, 4.0), {})}
    rows = []
    for name, (iv, target) in conditions.items():
        for noise in ("posterior", "fresh"):
            t = time.perf_counter()
            res = counterfactuals(model, None, obs, iv, noise=noise, seed=0 if noise == "posterior" else 10_000)
            secs = (time.perf_counter() - t) * 100 / len(prompts)
            df = measure(res, **target)
            s = summarize(df)
            if not target:  # sentiment: share of continuations the unsteered model rates positive
                s["positive_observed"] = float((torch.tensor(classify(None, res.observed)) > 0).float().mean())
                s["positive_after"] = float((torch.tensor(classify(None, res.texts)) > 0).float().mean())
            if target:
                s["new_in_observed"] = float(sum(target["new"] in o for o in res.observed) / len(prompts))
            s.update(condition=name, noise=noise, seconds_per_100=secs)
            rows.append(s)
            print(s)
            if noise == "posterior":
                result.setdefault("examples", {})[name] = df[["prompt", "observed", "counterfactual"]].head(4).to_dict("records")
    result["rows"] = rows
    write_result(result, "counterfactual", args.device, args.out)


if __name__ == "__main__":
    main()
