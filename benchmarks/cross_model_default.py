"""Cross-model activation patching on a real base / LoRA-fine-tuned pair of the default model.

The fine-tune: the CAFT task (data/caft_task.jsonl: "Mr John hated the movie.\\nLabel:" -> " A" / " B" by
sentiment), LoRA on every linear layer of the blocks (workbench.directions.caft.finetune, merged into a copy). Then the
fine-tuned model's activations are patched into the base model's run at each (layer, position) of
resid_pre, attn_out and mlp_out, on held-out prompts; the metric is the normalised logit difference
(answer - other label): 0 = the base model's, 1 = the fine-tuned model's.

    python benchmarks/cross_model_default.py [--steps 30] [--prompts 2]   (CPU, one thread)

Writes benchmarks/results/cross-model-<device>.json.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.directions.caft import FinetuneConfig, accuracy, finetune, load_task


def main():
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--eval", type=int, default=64, help="held-out examples for the accuracies")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = wb.load_model(device=args.device)
    task = load_task(wb.data.data_path("caft_task.jsonl"))
    t0 = time.time()
    tuned = finetune(base, task["train"], config=FinetuneConfig(method="lora", steps=args.steps,
                                                                batch_size=args.batch_size, lr=1e-3), seed=0)
    t_ft = time.time() - t0
    held = task["id_test"][:args.eval]
    acc = {"base": accuracy(base, held), "tuned": accuracy(tuned, held)}
    print(f"fine-tune {t_ft:.0f} s; held-out accuracy base {acc['base']:.3f}, tuned {acc['tuned']:.3f}")
    n_tok = [len(base.to_tokens(e["prompt"])[0]) for e in held]  # a grid's prompts share positions: one length
    ex = [e for e, n in zip(held, n_tok) if n == n_tok[0]][:args.prompts]
    prompts = [e["prompt"] for e in ex]
    answers = [e["answer"] for e in ex]
    foils = [next(c for c in e["choices"] if c != e["answer"]) for e in ex]
    t0 = time.time()
    grids = wb.patching.cross_model_patching(base, tuned, prompts, answers, foils, components="resid_pre,attn_out,mlp_out",
                                    metric="normalized", direction="tuned_into_base")
    t_patch = time.time() - t0
    out = {}
    for comp, g in grids.items():
        v = torch.as_tensor(g.values)  # [layer, position] (mean over prompts)
        out[comp] = {"by_layer_last_position": [round(x, 3) for x in v[:, -1].tolist()],
                     "by_layer_max_over_positions": [round(x, 3) for x in v.max(1).values.tolist()],
                     "by_layer_sum_over_positions": [round(x, 3) for x in v.sum(1).tolist()],
                     "positions": [str(p) for p in g.coords.get("position", [])]}
        print(comp, "last position:", out[comp]["by_layer_last_position"])
        print(comp, "max over positions:", out[comp]["by_layer_max_over_positions"])
    meta = next(iter(grids.values())).meta
    result = {"model": base.name, "meta": device_meta(args.device),
              "settings": {"steps": args.steps, "batch_size": args.batch_size, "lora_rank": 8, "prompts": prompts,
                           "answers": answers, "foils": foils, "n_eval": len(held)},
              "accuracy_heldout": acc, "finetune_losses": [round(x, 3) for x in tuned.train_losses],
              "source_metric_logit_diff": meta.get("source_metric"), "target_metric": meta.get("target_metric"),
              "seconds": {"finetune": round(t_ft, 1), "patching": round(t_patch, 1)}, "grids": out}
    write_result(result, "cross-model", args.device, args.out)


if __name__ == "__main__":
    main()
