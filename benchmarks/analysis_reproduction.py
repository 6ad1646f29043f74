"""The README's analysis numbers on the default model, small:

1. logit lens on few-shot sentiment classification (Halawi et al., "Overthinking the Truth"): accuracy by
   layer with correct vs flipped demonstration labels (data/steering/sentiment_eval.jsonl, 4 demos each);
2. direct logit attribution on IOI pairs: the heads with the largest direct effect on logit(IO) - logit(S);
3. path patching on IOI (Wang et al.): every head -> logits (the name-mover candidates), then the heads
   of earlier layers -> the top name movers' input at the last token (the S-inhibition candidates);
4. the IOI resid_pre patching grid (denoising): per layer, the fraction of the logit difference restored
   by patching the second subject mention (S2) and the last token, and the layer where the last token
   takes over; the logit lens's last layer against the model's probability (an identity).

    python benchmarks/analysis_reproduction.py [--model NAME] [--pairs 2] [--queries 32] [--parts ...]

Writes benchmarks/results/analysis-reproduction-<device>.json (analysis-reproduction-<model>-<device>.json
on another model; analysis-<parts>-... when --parts names a subset).
"""
from __future__ import annotations

import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
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
        "n_pairs": len(pairs), "pairs": pairs[:2], "clean_logit_diff": round(base, 3),
        "corrupted_logit_diff": round(res.meta["corrupted_metric"], 3),
        "dla_identity_error": dla.meta["identity_error"], "dla_logit_diff": [round(x, 3) for x in dla.meta["logit_diff"]],
        "dla_top": top_dla,
        "direct_path_top": [(heads[i], round(float(effect[i]), 3)) for i in np.argsort(effect)[:8]],
        "name_mover_candidates": movers,
        "via_name_movers_top": [(senders[i], round(float(via_effect[i]), 3)) for i in np.argsort(via_effect)[:8]],
    }


def ioi_grid(model, n_pairs: int) -> dict:
    """The IOI resid_pre grid, denoising (clean patched into the corrupted run): the fraction of the clean
    logit difference restored, (metric - corrupted) / (clean - corrupted), per layer at S2 and at the last token."""
    pairs = ioi_pairs(model, n_pairs)
    clean, corr = [p["clean"] for p in pairs], [p["corrupted"] for p in pairs]
    grid = wb.patching.activation_patching(model, clean, corr, [p["answer"] for p in pairs],
                                           [p["foil"] for p in pairs], components="resid_pre")["resid_pre"]
    lo, hi = grid.meta["corrupted_metric"], grid.meta["clean_metric"]
    frac = (grid.values - lo) / (hi - lo)  # [layer, position]
    a, b = model.to_tokens(clean[0])[0], model.to_tokens(corr[0])[0]
    s2 = int((a != b).nonzero()[0, 0])  # the one position where the pair differs: the second subject mention
    at_s2, at_last = frac[:, s2], frac[:, -1]
    L = model.dims.n_layers
    moves = next((l for l in range(L) if at_last[l] > at_s2[l]), None)
    s2_half = next((l for l in range(L) if at_s2[l] < 0.5), None)
    return {"n_pairs": len(pairs), "pairs": pairs, "s2_position": s2, "n_positions": int(frac.shape[1]),
            "clean_logit_diff": round(hi, 3), "corrupted_logit_diff": round(lo, 3),
            "restored_at_s2": [round(float(x), 3) for x in at_s2],
            "restored_at_last": [round(float(x), 3) for x in at_last],
            "s2_below_half_from_layer": s2_half, "last_token_takes_over_at_layer": moves,
            "last_token_takes_over_at_depth": None if moves is None else round(moves / L, 3)}


def lens_identity(model, prompt: str = "The Eiffel Tower is located in the city of", answer: str = " Paris") -> dict:
    """The logit lens at the last layer's output equals the model: |lens p(answer) - model p(answer)|."""
    out = wb.lenses.logit_lens(model, prompt, answer)
    lens, p = out["prob"].values.reshape(-1), float(out["prob"].meta["model_prob"][0])
    return {"prompt": prompt, "answer": answer, "model_prob": round(p, 6), "lens_prob_last_layer": round(float(lens[-1]), 6),
            "abs_error": abs(float(lens[-1]) - p)}


PARTS = ("identities", "few_shot", "ioi", "grid")


def main(argv=None) -> dict:
    ap = add_model(parser(__doc__))
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--grid-pairs", type=int, default=2)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="which parts to run (default all); a subset writes analysis-<parts>-... instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = wb.load_model(args.model, device=args.device)
    result, seconds = {"model": model.name, **device_meta(args.device)}, {}
    for part in [p for p in PARTS if p in args.parts]:
        t0 = time.time()
        if part == "identities":  # the logit lens's last layer and DLA's sum: both identities
            pairs = ioi_pairs(model, args.pairs)
            dla = wb.lenses.direct_logit_attribution(model, [p["clean"] for p in pairs], [p["answer"] for p in pairs],
                                                     [p["foil"] for p in pairs])
            out = {"lens_last_layer": lens_identity(model), "dla_n_pairs": len(pairs),
                   "dla_identity_error": dla.meta["identity_error"],
                   "dla_logit_diff": [round(x, 3) for x in dla.meta["logit_diff"]]}
        else:
            out = {"few_shot": lambda: few_shot(model, args.queries), "ioi": lambda: ioi(model, args.pairs),
                   "grid": lambda: ioi_grid(model, args.grid_pairs)}[part]()
        result[{"few_shot": "few_shot_logit_lens", "grid": "ioi_grid"}.get(part, part)] = out
        seconds[part] = round(time.time() - t0, 1)
        print(part, out)
    result["seconds"] = seconds
    stem = "analysis-reproduction" if set(args.parts) == set(PARTS) else "analysis-" + "-".join(
        p for p in PARTS if p in args.parts)
    write_result(result, result_name(stem, args.model), args.device, args.out)
    return result


if __name__ == "__main__":
    main()
