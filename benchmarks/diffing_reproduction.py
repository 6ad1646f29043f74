"""Model diffing reproductions on fine-tunes built here (no base / fine-tuned pair of a family ships offline).

The default model fine-tuned on the CAFT task (data/caft_task.jsonl: "Mr John hated the movie.\\nLabel:" -> " A" /
" B" by sentiment) fully and with LoRA of rank 1, 8 and 64 (workbench.directions.caft.finetune; LoRA on every linear layer of
the blocks, alpha = 2 x rank, merged). Then:

1. Intruder dimensions (Shuttleworth et al. 2024: top 10 singular vectors of each fine-tuned matrix whose best
   |cos| with every base singular vector is < 0.5), per fine-tune, on the q_proj and down_proj matrices of every
   layer (a subset, to keep the run short), with each update's norm and effective rank.
2. TuCo's alpha-scaling of the fully fine-tuned model (and LoRA rank 8): accuracy and mean answer margin on held-out
   examples at alpha = 0, 0.5, 1, 1.25 (the paper: behaviour moves with alpha).
3. TuCo per prompt on the out-of-distribution split, where the fine-tune sometimes fails: mean TuCo on prompts
   where the tuned answer is right vs wrong, with a Mann-Whitney U test (the paper: lower where the tuned
   behaviour fails).

    nice python benchmarks/diffing_reproduction.py [--steps 20] [--eval 24]     (CPU, one thread, ~10 min)
    python benchmarks/diffing_reproduction.py --smoke                         (tiny model, seconds)

Writes benchmarks/results/diffing-<device>.json.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.directions.caft import FinetuneConfig, accuracy, finetune, load_task
from workbench.diffing import scaled_model, tuning_contribution, weight_diff


ALPHAS = (0.0, 0.5, 1.0, 1.25)


def margins(model, examples) -> np.ndarray:
    """logit(answer) - logit(other choice) at the last token, per example."""
    out = []
    with torch.no_grad():
        for ex in examples:
            logits = model(ex["prompt"])[0, -1].float()
            a = model.to_single_token(ex["answer"])
            other = model.to_single_token([c for c in ex["choices"] if c != ex["answer"]][0])
            out.append(float(logits[a] - logits[other]))
    return np.array(out)


def mann_whitney(a: np.ndarray, b: np.ndarray) -> dict:
    """U statistic of a vs b and its two-sided p-value (normal approximation), as scipy.stats.mannwhitneyu."""
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return {"U": None, "p": None}
    res = mannwhitneyu(a, b, alternative="two-sided")
    return {"U": float(res.statistic), "p": float(res.pvalue)}


def main():
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval", type=int, default=24, help="held-out examples per split")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and a few steps (checks the script)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    base = wb.tiny_model("llama") if args.smoke else wb.load_model(device=args.device)
    task = load_task(wb.data.data_path("caft_task.jsonl"))
    steps = 2 if args.smoke else args.steps
    n_eval = 8 if args.smoke else args.eval
    id_test, ood = task["id_test"][:n_eval], task["ood_test"][:n_eval]
    runs = {"full": dict(method="full", lr=1e-4)} | {f"lora_r{r}": dict(method="lora", lr=1e-3, lora_rank=r,
                                                                        lora_alpha=2.0 * r) for r in (1, 8, 64)}
    result = {"model": base.name, "meta": device_meta(args.device),
              "settings": {"steps": steps, "batch_size": args.batch_size, "n_eval": n_eval, "smoke": args.smoke,
                           "runs": runs, "matrices": "q_proj|down_proj", "k": 10, "epsilon": 0.5},
              "accuracy": {"base": {"id_test": accuracy(base, id_test), "ood_test": accuracy(base, ood)}},
              "weights": {}, "alpha": {}, "tuco": {}, "seconds": {}}
    tuned = {}
    out_name = "diffing-smoke" if args.smoke else "diffing"

    def fine_tune(name):
        t0 = time.time()
        tuned[name] = finetune(base, task["train"], config=FinetuneConfig(steps=steps, batch_size=args.batch_size,
                                                                          **runs[name]), seed=0)
        result["accuracy"][name] = {"id_test": accuracy(tuned[name], id_test), "ood_test": accuracy(tuned[name], ood)}
        d = weight_diff(base, tuned[name], matrices="q_proj|down_proj")
        by = d.by_layer()
        result["weights"][name] = {"total_intruders": d.total_intruders, "n_matrices": len(d.rows),
                                   "intruders_by_layer": by["intruders"],
                                   "relative_norm_by_layer": [round(v, 6) for v in by["relative_norm"]],
                                   "effective_rank_by_layer": [round(v, 3) for v in by["effective_rank"]],
                                   "matrices_with_intruders": sum(1 for r in d.rows if r["intruders"])}
        result["seconds"][name] = round(time.time() - t0, 1)
        print(name, result["accuracy"][name], "intruders", d.total_intruders, f"{time.time() - t0:.0f} s", flush=True)

    def alpha_and_tuco(name):
        t0 = time.time()
        scaled = scaled_model(base, tuned[name], 1.0)
        rows = []
        for alpha in ALPHAS:
            scaled.set_alpha(alpha)
            m = margins(scaled, id_test)
            rows.append({"alpha": alpha, "accuracy": float((m > 0).mean()), "mean_margin": float(m.mean())})
        ms = [r["mean_margin"] for r in rows if 0 <= r["alpha"] <= 1]
        result["alpha"][name] = {"rows": rows, "monotone_0_to_1": bool(all(b >= a for a, b in zip(ms, ms[1:])))}
        tc = tuning_contribution(base, tuned[name], [ex["prompt"] for ex in ood])
        right = margins(tuned[name], ood) > 0
        t = tc.tuco.numpy()
        result["tuco"][name] = {"n_right": int(right.sum()), "n_wrong": int((~right).sum()),
                                "mean_right": float(t[right].mean()) if right.any() else None,
                                "mean_wrong": float(t[~right].mean()) if (~right).any() else None,
                                "mann_whitney_wrong_vs_right": mann_whitney(t[~right], t[right]),
                                "by_layer": [round(float(v), 4) for v in tc.by_layer().values[0]]}
        result["seconds"][f"alpha_tuco_{name}"] = round(time.time() - t0, 1)
        print(name, result["alpha"][name], result["tuco"][name], flush=True)

    # the most important comparison first; the JSON is rewritten after every stage, so a cut-short run keeps its part
    for stage in (lambda: fine_tune("full"), lambda: fine_tune("lora_r1"), lambda: alpha_and_tuco("full"),
                  lambda: fine_tune("lora_r8"), lambda: fine_tune("lora_r64"), lambda: alpha_and_tuco("lora_r8")):
        stage()
        result["seconds"]["total"] = round(time.time() - t_start, 1)
        write_result(result, out_name, args.device, args.out)


if __name__ == "__main__":
    main()
