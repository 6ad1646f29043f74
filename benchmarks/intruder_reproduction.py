"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence") on fine-tunes
of the default model built here, trained long enough and at the learning rates that paper's recipe uses for LoRA.

The default model (SmolLM2-135M) is fine-tuned on the CAFT sentiment task (workbench/data/caft_task.jsonl, 256 training
prompts; cross-entropy of the answer token " A" / " B" at the last position) four ways, each for the same number of
steps (epochs) so every run saturates the task:

  full        every parameter of the trained blocks, AdamW lr 2e-5 (the usual full fine-tuning rate)
  lora_r1/8/64 LoRA (peft) on every linear layer of the trained blocks, alpha = 2 r, AdamW lr 1e-3
              (LoRA at a learning rate well above full fine-tuning's, as in the paper; 50x here)

To fit a 2-core machine shared with other jobs, only the last `--first-layer`.. blocks train (default 20..29, ten of
30 blocks, all seven matrices of each: q, k, v, o, gate, up, down = 70 matrices); the earlier blocks are frozen, so
backward stops at block 20. Every `--every` steps the held-out in-distribution accuracy (the first 64 id_test prompts) and the
intruder dimensions of all 70 trained matrices (top k = 10 singular vectors of W_ft whose best |cos| with every
singular vector of W_0 is < 0.5; left singular vectors, the output space) are measured and the JSON is rewritten, so
a cut-short run keeps its part (checkpointed: the trained matrices are saved as safetensors beside the log too).

    nice -n 10 python benchmarks/intruder_reproduction.py --runs full lora_r1 lora_r8 lora_r64 [--steps 160]
    python benchmarks/intruder_reproduction.py --smoke                        (tiny model, seconds)

Writes benchmarks/results/intruders-<device>.json (one key per run; runs given separately are merged into it).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.core.arch import weight_out_in
from workbench.directions.caft import accuracy, load_task
from workbench.diffing import intruder_dimensions
from workbench.diffing.weights import effective_rank

RUNS = {"full": dict(method="full", lr=2e-5)} | {
    f"lora_r{r}": dict(method="lora", lr=1e-3, rank=r, alpha=2.0 * r) for r in (1, 8, 64)}


def trained_matrices(model, layers) -> dict[str, torch.Tensor]:
    """'layer.name' -> the [out, in] weight of every linear matrix of those blocks (LoRA: base + scale B A)."""
    out = {}
    for l in layers:
        for name, mod in model.module("block", l).named_modules():
            if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):  # a peft LoRA wrapper
                w = mod.base_layer.weight.detach() + mod.get_delta_weight("default").detach()
                out[f"{l}.{name}"] = w.float()
            elif (isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.ndim == 2
                  and not re.search(r"(^|\.)(base_layer|lora_[AB]\.default)$", name)):
                out[f"{l}.{name}"] = weight_out_in(mod).detach().float()
    return out


def measure(base_w: dict, tuned_w: dict) -> dict:
    """Intruder dimensions and the update's size per matrix, summed over them."""
    rows = []
    for key, w0 in base_w.items():
        w1 = tuned_w[key]
        delta = (w1 - w0).double()
        r = intruder_dimensions(w0, w1)
        rows.append({"matrix": key, "intruders": r["intruders"], "min_max_cos": round(min(r["max_cos"]), 4),
                     "relative_norm": float(delta.norm() / w0.double().norm()),
                     "effective_rank": effective_rank(torch.linalg.svdvals(delta)),
                     "top_update_sigma_over_sigma10": float(torch.linalg.svdvals(delta)[0] / r["sigma"][-1])})
    kinds = sorted({re.sub(r"^\d+\.", "", r["matrix"]) for r in rows})
    return {"total_intruders": sum(r["intruders"] for r in rows),
            "matrices_with_intruders": sum(1 for r in rows if r["intruders"]),
            "intruders_by_matrix_kind": {k: sum(r["intruders"] for r in rows if r["matrix"].endswith(k)) for k in kinds},
            "mean_relative_norm": sum(r["relative_norm"] for r in rows) / len(rows),
            "max_relative_norm": max(r["relative_norm"] for r in rows),
            "mean_effective_rank": sum(r["effective_rank"] for r in rows) / len(rows),
            "rows": rows}


def main():
    ap = parser(__doc__)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--steps", type=int, default=128, help="training steps (batch 8: 128 steps = 4 epochs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=64, help="held-out id_test prompts for the accuracy")
    ap.add_argument("--every", type=int, default=32, help="measure every this many steps")
    ap.add_argument("--first-layer", type=int, default=20, help="blocks first-layer..last train; the rest are frozen")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base = wb.tiny_model("llama") if args.smoke else wb.load_model(device=args.device)
    task = load_task(wb.data.data_path("caft_task.jsonl"))
    steps, every = (4, 2) if args.smoke else (args.steps, args.every)
    first = 0 if args.smoke else args.first_layer
    layers = list(range(first, base.dims.n_layers))
    id_test = task["id_test"][:16] if args.smoke else task["id_test"][:args.n_eval]
    out_name = "intruders-smoke" if args.smoke else "intruders"
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{out_name}-{args.device}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"model": base.name, "meta": device_meta(args.device),
                   "settings": {"task": f"caft_task.jsonl (train 256, id_test first {len(id_test)})", "batch_size": args.batch_size,
                                "steps": steps, "trained_layers": layers, "matrices": "q,k,v,o,gate,up,down",
                                "runs": RUNS, "k": 10, "epsilon": 0.5, "side": "left", "optimizer": "AdamW, wd 0"}})
    result.setdefault("base_accuracy_id", accuracy(base, id_test))
    result.setdefault("runs", {})
    base_w = trained_matrices(base, layers)
    prompts = [ex["prompt"] for ex in task["train"]]
    answers = torch.tensor([base.to_single_token(ex["answer"]) for ex in task["train"]])

    for name in args.runs:
        cfg, t0 = RUNS[name], time.time()
        torch.manual_seed(0)
        import copy

        hf = copy.deepcopy(base.hf)
        for p in hf.parameters():
            p.requires_grad_(False)
        if cfg["method"] == "lora":
            from peft import LoraConfig, get_peft_model

            # peft wraps the linear layers of `hf` in place; the workbench Model keeps the plain model
            peft_model = get_peft_model(hf, LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"],
                                               layers_to_transform=layers))
            params = [p for p in peft_model.parameters() if p.requires_grad]
        else:
            params = [p for n, p in hf.named_parameters() if any(f"{base.arch.blocks}.{l}." in n for l in layers)]
            for p in params:
                p.requires_grad_(True)
        ft = wb.Model(hf, base.tokenizer, name=f"{base.name}+{name}")
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        order, log = [], []
        for step in range(1, steps + 1):
            if len(order) < args.batch_size:
                order += torch.randperm(len(prompts), generator=gen).tolist()
            batch, order = order[:args.batch_size], order[args.batch_size:]
            ids, mask = ft.encode([prompts[i] for i in batch])
            last = ft.last_positions(ids, mask)
            keep, col = torch.unique(last, return_inverse=True)  # unembed only the answer positions
            logits = hf(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
            logits = logits[torch.arange(len(batch)), col]
            loss = torch.nn.functional.cross_entropy(logits.float(), answers[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    acc = accuracy(ft, id_test)
                    m = measure(base_w, trained_matrices(ft, layers))
                entry = {"step": step, "loss": round(float(loss), 5), "id_accuracy": acc,
                         **{k: v for k, v in m.items() if k != "rows"}}
                log.append(entry)
                result["runs"][name] = {"config": cfg, "checkpoints": log, "final_rows": m["rows"],
                                        "seconds": round(time.time() - t0, 1)}
                write_result(result, out_name, args.device, args.out)
                print(name, {k: v for k, v in entry.items() if k != "intruders_by_matrix_kind"},
                      f"{time.time() - t0:.0f} s", flush=True)
        if not args.smoke:  # the trained matrices, so a later analysis needs no retraining
            from safetensors.torch import save_file

            ckpt = Path(__file__).resolve().parents[1] / ".cache" / "intruders" / f"{name}.safetensors"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in trained_matrices(ft, layers).items()}, str(ckpt))
        del hf, ft, opt


if __name__ == "__main__":
    main()
