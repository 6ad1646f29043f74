"""Reproduction: steering with SAE decoder directions vs difference of means, on the sentiment sweep.

The README's sentiment demonstration (24 "love"/"hate" pairs, 16 neutral prompts, greedy, 20 new tokens,
behaviour = the unsteered model's log-odds of " positive" vs " negative", success = log-odds > 0, cost =
perplexity of the continuations under the unsteered model), at the committed SAE's layer only:

    mean_diff   the difference-of-means vector at the last token (build_steering_vector)
    sae_top1    the decoder row of the latent with the largest standardised positive-minus-negative difference
                at the last token (`concept_latents` on the same pairs), scaled to the mean-difference norm
    sae_top3    the three most positive such latents, decoder rows weighted by d', scaled the same way

Same multipliers for all, so each row of the table compares directions of one length. Success is compared at
equal fluency cost: the best success whose perplexity is at most 1.5x / 2x the unsteered one.

    python benchmarks/sae_steering.py [--sae workbench/data/sae/...] [--multipliers 1,2,4,8,12]
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.sae import concept_latents, latent_site, latent_steering_vector, load_sae
from workbench.steering import SENTIMENT_TEMPLATE, SteeringVector, build_steering_vector, load_lines, load_pairs, sweep
from workbench.steering.behaviour import log_odds_classifier


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--sae", default=None, help="an SAE folder (default: the committed one)")
    ap.add_argument("--multipliers", default="1,2,4,8,12")
    ap.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = wb.load_model(device=args.device)
    sae = load_sae(args.sae, model) if args.sae else wb.sae.default_sae(model)
    site = latent_site(model, sae)
    pos, neg = load_pairs("data/steering/sentiment_pairs.jsonl")
    prompts = load_lines("data/steering/prompts.txt", "prompts")[: args.limit]
    multipliers = [float(m) for m in args.multipliers.split(",")]
    behaviour = log_odds_classifier(model, SENTIMENT_TEMPLATE, " positive", " negative")

    md = build_steering_vector(model, pos, neg, layers=[site.layer], method="mean_diff", read_at=-1,
                               component=site.component)
    norm = float(md.vectors[site.layer].norm())
    dprime, order = concept_latents(model, sae, pos, neg, read_at=-1)
    positive = [i for i in order if dprime[i] > 0]
    vectors = {"mean_diff": md}
    for name, lat in (("sae_top1", positive[:1]), ("sae_top3", positive[:3])):
        v = latent_steering_vector(model, sae, lat, weights=dprime[lat].tolist())
        v = SteeringVector({site.layer: v.vectors[site.layer] * (norm / float(v.vectors[site.layer].norm()))},
                           site.component, {**v.meta, "scaled_to_norm": norm})
        vectors[name] = v
    res = {"site": site.name, "mean_diff_norm": norm, "multipliers": multipliers,
           "latents": {"top": [{"latent": i, "dprime": float(dprime[i])} for i in positive[:5]]},
           "cosine_with_mean_diff": {k: float(torch.nn.functional.cosine_similarity(
               v.vectors[site.layer], md.vectors[site.layer], dim=0)) for k, v in vectors.items()}}
    for name, vec in vectors.items():
        sw = sweep(model, vec, prompts, multipliers=multipliers, layers=[site.layer], behaviour=behaviour,
                   threshold=0.0, behaviour_name="log-odds positive vs negative")
        res[name] = {"success": sw.success.values[0].tolist(), "behaviour": sw.behaviour.values[0].tolist(),
                     "perplexity": sw.cost.values[0].tolist(), "best_1.5x": sw.best(1.5), "best_2x": sw.best(2.0),
                     "examples": [s for s in sw.samples if s["multiplier"] == 4.0][:3]}
        res["baseline"] = sw.baseline
        print(f"{name:<10} success {[round(x, 3) for x in res[name]['success']]} "
              f"ppl {[round(x, 2) for x in res[name]['perplexity']]}")
    res["runtime_s"] = time.perf_counter() - t0
    res["meta"] = {**device_meta(args.device), "model": model.name, "n_prompts": len(prompts), "n_pairs": len(pos),
                   "sae": str(args.sae or "the committed SAE")}
    print(f"unsteered {res['baseline']}  runtime {res['runtime_s']:.0f} s")
    write_result(res, "sae-steering", args.device, args.out)
    return res


if __name__ == "__main__":
    main()
