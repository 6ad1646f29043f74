"""The README's analysis numbers on the default model, small:

1. logit lens on few-shot sentiment classification (Halawi et al., "Overthinking the Truth"): accuracy by
   layer with correct vs flipped demonstration labels (data/steering/sentiment_eval.jsonl, 4 demos each);
2. direct logit attribution on IOI pairs: the heads with the largest direct effect on logit(IO) - logit(S);
3. path patching on IOI (Wang et al.): every head -> logits (the name-mover candidates), then the heads
   of earlier layers -> the top name movers' input at the last token (the S-inhibition candidates).

    python benchmarks/analysis_reproduction.py [--pairs 2] [--queries 32]

Writes benchmarks/results/analysis-reproduction-<device>.json.
"""
from __future__ import annotations

import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.core.io import read_jsonl
from workbench.data.ioi import ioi_pairs


def few_shot(model, n_queries: int, n_demos: int = 4, seed: int = 0) -> dict:
    rows = [r for _, r in read_jsonl(wb.data.data_path("steering/sentiment_eval.jsonl"), "sentiment")]
    rng = random.Random(seed)
    flip = {"positive": "negative", "negative": "positive"}
    out = {}
    queries = rows[:n_queries]
    demos_of = [rng.sample([r for r in rows if r is not q], n_demos) for q in queries]
    for cond in ("correct", "flipped"):
        prompts = []
        for q, demos in zip(queries, demos_of):
            shots = "".join(f"Review: {d['text']}\nSentiment: {d['label'] if cond == 'correct' else flip[d['label']]}\n\n"
                            for d in demos)
            prompts.append(shots + f"Review: {q['text']}\nSentiment:")
        truth = [" " + q["label"] for q in queries]
        pos = wb.lenses.logit_lens(model, prompts, " positive")["logit"].values  # [query, layer]
        neg = wb.lenses.logit_lens(model, prompts, " negative")["logit"].values
        says_pos = pos > neg
        correct = np.array([[s == (t == " positive") for s in row] for row, t in zip(says_pos, truth)])
        out[cond] = correct.mean(0).round(3).tolist()
    out["n_queries"], out["n_demos"] = len(queries), n_demos
    gap = np.array(out["correct"]) - np.array(out["flipped"])
    out["first_layer_gap_over_0.2"] = next((i for i, g in enumerate(gap) if g > 0.2), None)
    return out


def ioi(model, n_pairs: int, chunk: int = 45) -> dict:
    pairs = ioi_pairs(model, n_pairs)
    clean, corr = [p["clean"] for p in pairs], [p["corrupted"] for p in pairs]
    ans, foil = [p["answer"] for p in pairs], [p["foil"] for p in pairs]
    dla = wb.lenses.direct_logit_attribution(model, clean, ans, foil)
    mean = dla.values.mean(0)
    order = np.argsort(-np.abs(mean))
    top_dla = [(dla.coords["component"][i], round(float(mean[i]), 3)) for i in order[:10]]
    L, H = model.dims.n_layers, model.dims.n_heads
    heads = [f"L{l}H{h}" for l in range(L) for h in range(H)]
    direct = []
    for i in range(0, len(heads), chunk):
        res = wb.patching.path_patching(model, clean, corr, ans, foil, senders=heads[i:i + chunk], receivers="logits")
        direct += res.values.tolist()
    base = res.meta["clean_metric"]
    effect = np.array(direct) - base  # < 0: patching the head's direct path lowers logit(IO) - logit(S)
    movers = [heads[i] for i in np.argsort(effect)[:3]]
    lowest = min(int(m[1:].split("H")[0]) for m in movers)
    senders = [h for h in heads if int(h[1:].split("H")[0]) < lowest]
    via = []
    for i in range(0, len(senders), chunk):
        res = wb.patching.path_patching(model, clean, corr, ans, foil, senders=senders[i:i + chunk], receivers=movers,
                               receiver_positions=[-1])
        via += res.values.tolist()
    via_effect = np.array(via) - base
    return {
        "n_pairs": len(pairs), "clean_logit_diff": round(base, 3),
        "corrupted_logit_diff": round(res.meta["corrupted_metric"], 3),
        "dla_identity_error": dla.meta["identity_error"], "dla_top": top_dla,
        "direct_path_top": [(heads[i], round(float(effect[i]), 3)) for i in np.argsort(effect)[:8]],
        "name_mover_candidates": movers,
        "via_name_movers_top": [(senders[i], round(float(via_effect[i]), 3)) for i in np.argsort(via_effect)[:8]],
    }


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--queries", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = wb.load_model(device=args.device)
    t0 = time.time()
    result = {"model": model.name, **device_meta(args.device), "few_shot_logit_lens": few_shot(model, args.queries)}
    t1 = time.time()
    print(result["few_shot_logit_lens"])
    result["ioi"] = ioi(model, args.pairs)
    result["seconds"] = {"few_shot": round(t1 - t0, 1), "ioi": round(time.time() - t1, 1)}
    print(result["ioi"])
    write_result(result, "analysis-reproduction", args.device, args.out)
    return result


if __name__ == "__main__":
    main()
