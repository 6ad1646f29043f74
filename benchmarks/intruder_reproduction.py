"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence") on fine-tunes
of the default model built here, trained long enough and at the learning rates that paper's recipe uses for LoRA.

The default model (SmolLM2-135M) is fine-tuned on the CAFT sentiment task (workbench/data/caft_task.jsonl, 256 training
prompts; cross-entropy of the answer token " A" / " B" at the last position) four ways, each for the same number of
steps (epochs) so every run saturates the task:

  full        every parameter of the trained blocks, AdamW lr 2e-5 (the usual full fine-tuning rate)
  lora_r1/8/64 LoRA (peft) on every linear layer of the trained blocks, alpha = 2 r, AdamW lr 1e-3
              (LoRA at a learning rate well above full fine-tuning's, as in the paper; 50x here)

To fit a 2-core machine shared with many other jobs, only the last blocks train (`--first-layer`, default 26: blocks
26..29, four of 30, all seven matrices of each: q, k, v, o, gate, up, down = 28 matrices); the earlier blocks are
frozen, their output (resid_pre of block 26) is computed once per prompt and fed as `inputs_embeds` to a copy whose
frozen blocks are identities (checked: before training that copy scores exactly the base model's accuracy). Every `--every` steps the held-out in-distribution accuracy (the first 64 id_test prompts) and the
intruder dimensions of all trained matrices (top k = 10 singular vectors of W_ft whose best |cos| with every
singular vector of W_0 is < 0.5; left singular vectors, the output space) are measured and the JSON is rewritten, so
a cut-short run keeps its part (checkpointed: the trained matrices are saved as safetensors beside the log too).

    nice -n 10 python benchmarks/intruder_reproduction.py --runs full lora_r1 lora_r8 lora_r64 [--steps 192]
    python benchmarks/intruder_reproduction.py --grow     (then: intruders of W_0 + c dW, c = 1, 2, 4, 8, from the saved runs)
    python benchmarks/intruder_reproduction.py --smoke                        (tiny model, seconds)

Writes benchmarks/results/intruders-<device>.json (one key per run; runs given separately are merged into it).
"""
from __future__ import annotations

import copy
import json
import os
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
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Skip(torch.nn.Module):
    """A frozen block standing in for its computed output: the stream entering the first trained block is cached
    once and fed as `inputs_embeds`, so the frozen prefix is never recomputed."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def trained_matrices(blocks: dict[int, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """'layer.name' -> the [out, in] weight of every linear matrix of these blocks (LoRA: W_0 + scale B A)."""
    out = {}
    for l, block in blocks.items():
        for name, mod in block.named_modules():
            if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):  # a peft LoRA wrapper
                out[f"{l}.{name}"] = (mod.base_layer.weight + mod.get_delta_weight("default")).detach().float()
            elif name.split(".")[-1] in LINEAR:
                out[f"{l}.{name}"] = weight_out_in(mod).detach().float()
    return out


def measure(base_w: dict, tuned_w: dict) -> dict:
    """Intruder dimensions and the update's size per matrix, summed over them."""
    rows = []
    for key, w0 in base_w.items():
        w1 = tuned_w[key]
        delta = (w1 - w0).double()
        r = intruder_dimensions(w0, w1)
        s_delta = torch.linalg.svdvals(delta)
        rows.append({"matrix": key, "intruders": r["intruders"], "intruder_ranks": r["intruder_ranks"],
                     "min_max_cos": round(min(r["max_cos"]), 4), "relative_norm": float(delta.norm() / w0.double().norm()),
                     "effective_rank": effective_rank(s_delta),
                     # the update's top singular value against W_ft's 10th: an intruder needs it near 1 or above
                     "update_sigma1_over_sigma10": float(s_delta[0] / r["sigma"][-1])})
    kinds = [k for k in LINEAR if any(r["matrix"].endswith(k) for r in rows)]
    return {"total_intruders": sum(r["intruders"] for r in rows),
            "matrices_with_intruders": sum(1 for r in rows if r["intruders"]),
            "intruders_by_matrix_kind": {k: sum(r["intruders"] for r in rows if r["matrix"].endswith(k)) for k in kinds},
            "mean_relative_norm": sum(r["relative_norm"] for r in rows) / len(rows),
            "max_relative_norm": max(r["relative_norm"] for r in rows),
            "mean_effective_rank": sum(r["effective_rank"] for r in rows) / len(rows),
            "max_update_sigma1_over_sigma10": max(r["update_sigma1_over_sigma10"] for r in rows),
            "rows": rows}


def prefix_stream(model, prompts: list[str], layer: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Each prompt's resid_pre at `layer` over its real tokens, [pos_i, d_model] (the frozen prefix's output)."""
    site, out = f"blocks.{layer}.hook_resid_pre", []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            ids, mask = model.encode(chunk)
            _, cache = model.run_with_cache(ids, [site], attention_mask=mask)
            n = mask.sum(1) if mask is not None else torch.full((len(chunk),), ids.shape[1])
            out += [cache[site][j, :int(n[j])].clone() for j in range(len(chunk))]
    return out


def last_logits(hf, streams: list[torch.Tensor]) -> torch.Tensor:
    """Logits at each row's last token, [batch, d_vocab], running the trained suffix on the cached streams."""
    lengths = torch.tensor([len(x) for x in streams])
    emb = torch.nn.utils.rnn.pad_sequence(streams, batch_first=True)  # right-padded, as Model.encode pads
    mask = (torch.arange(emb.shape[1])[None] < lengths[:, None]).long()
    keep, col = torch.unique(lengths - 1, return_inverse=True)  # unembed only the answer positions
    logits = hf(inputs_embeds=emb, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    return logits[torch.arange(len(streams)), col].float()


def grown(base_w: dict, tuned_w: dict, multipliers=(1, 2, 4, 8), k: int = 10, epsilon: float = 0.5) -> dict:
    """Intruders of W_0 + c dW for each multiplier c (the update grown as by longer or faster training), all matrices:
    how far the measured update is from producing intruder dimensions."""
    out = {}
    for c in multipliers:
        n = 0
        for key, w0 in base_w.items():
            n += intruder_dimensions(w0, w0 + c * (tuned_w[key] - w0), k=k, epsilon=epsilon)["intruders"]
        out[str(c)] = n
    return out


def main():
    ap = parser(__doc__)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--steps", type=int, default=192, help="training steps (batch 8: 192 steps = 6 epochs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=64, help="held-out id_test prompts for the accuracy")
    ap.add_argument("--every", type=int, default=48, help="measure every this many steps")
    ap.add_argument("--first-layer", type=int, default=26, help="blocks first-layer..last train; the rest are frozen")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--grow", action="store_true", help="only count intruders of W_0 + c dW (c = 1, 2, 4, 8) from the "
                    "trained matrices saved by earlier runs, into the JSON")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base = wb.tiny_model("llama") if args.smoke else wb.load_model(device=args.device)
    task = load_task(wb.data.data_path("caft_task.jsonl"))
    steps, every = (4, 2) if args.smoke else (args.steps, args.every)
    first = 1 if args.smoke else args.first_layer
    layers = list(range(first, base.dims.n_layers))
    id_test = task["id_test"][:16] if args.smoke else task["id_test"][:args.n_eval]
    out_name = "intruders-smoke" if args.smoke else "intruders"
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{out_name}-{args.device}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"model": base.name, "meta": device_meta(args.device),
                   "settings": {"task": f"caft_task.jsonl (train 256, id_test first {len(id_test)})",
                                "batch_size": args.batch_size, "steps": steps, "trained_layers": layers,
                                "matrices": "q,k,v,o,gate,up,down of each trained block", "runs": RUNS, "k": 10,
                                "epsilon": 0.5, "side": "left", "optimizer": "AdamW, weight decay 0, constant lr"}})
    if "base_accuracy_id" not in result:
        result["base_accuracy_id"] = accuracy(base, id_test)
    result.setdefault("runs", {})
    block = lambda hf, l: hf.get_submodule(base.arch.blocks)[l]
    base_w = trained_matrices({l: block(base.hf, l) for l in layers})
    saved = Path(__file__).resolve().parents[1] / ".cache" / "intruders"
    if args.grow:
        from safetensors.torch import load_file

        for name in args.runs:
            if (saved / f"{name}.safetensors").is_file() and name in result["runs"]:
                result["runs"][name]["grown_update_intruders"] = grown(base_w, load_file(saved / f"{name}.safetensors"))
                print(name, result["runs"][name]["grown_update_intruders"], flush=True)
                write_result(result, out_name, args.device, args.out)
        return
    t0 = time.time()
    train_x = prefix_stream(base, [ex["prompt"] for ex in task["train"]], first)
    test_x = prefix_stream(base, [ex["prompt"] for ex in id_test], first)
    result["seconds_prefix"] = round(time.time() - t0, 1)
    answers = torch.tensor([base.to_single_token(ex["answer"]) for ex in task["train"]])
    test_choices = torch.tensor([[base.to_single_token(c) for c in ex["choices"]] for ex in id_test])
    test_gold = torch.tensor([ex["choices"].index(ex["answer"]) for ex in id_test])

    def test_accuracy(hf) -> float:
        with torch.no_grad():
            logits = last_logits(hf, test_x)
        return float((logits.gather(1, test_choices).argmax(1) == test_gold).float().mean())

    for name in args.runs:
        cfg, t0 = RUNS[name], time.time()
        torch.manual_seed(0)
        hf = copy.deepcopy(base.hf)
        for l in range(first):
            hf.get_submodule(base.arch.blocks)[l] = _Skip()
        for p in hf.parameters():
            p.requires_grad_(False)
        if cfg["method"] == "lora":
            from peft import LoraConfig, get_peft_model

            # peft wraps the linear layers of `hf` in place
            peft_model = get_peft_model(hf, LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                                       target_modules=LINEAR, layers_to_transform=layers))
            params = [p for p in peft_model.parameters() if p.requires_grad]
        else:
            params = [p for l in layers for p in block(hf, l).parameters()]
            for p in params:
                p.requires_grad_(True)
        acc0 = test_accuracy(hf)  # before training: the cached prefix + suffix must be the base model
        if acc0 != result["base_accuracy_id"]:
            raise RuntimeError(f"the cached-prefix model's accuracy {acc0} is not the base model's {result['base_accuracy_id']}")
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        order, log = [], []
        for step in range(1, steps + 1):
            if len(order) < args.batch_size:
                order += torch.randperm(len(train_x), generator=gen).tolist()
            batch, order = order[:args.batch_size], order[args.batch_size:]
            loss = torch.nn.functional.cross_entropy(last_logits(hf, [train_x[i] for i in batch]), answers[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    acc = test_accuracy(hf)
                    m = measure(base_w, trained_matrices({l: block(hf, l) for l in layers}))
                entry = {"step": step, "epochs": round(step * args.batch_size / len(train_x), 2),
                         "loss": round(float(loss), 5), "id_accuracy": acc, **{k: v for k, v in m.items() if k != "rows"}}
                log.append(entry)
                result["runs"][name] = {"config": cfg, "checkpoints": log, "final_rows": m["rows"],
                                        "seconds": round(time.time() - t0, 1)}
                write_result(result, out_name, args.device, args.out)
                print(name, {k: v for k, v in entry.items() if k != "intruders_by_matrix_kind"},
                      f"{time.time() - t0:.0f} s", flush=True)
        if not args.smoke:  # the trained matrices, so a later analysis needs no retraining
            from safetensors.torch import save_file

            ckpt = saved / f"{name}.safetensors"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in trained_matrices({l: block(hf, l) for l in layers}).items()},
                      str(ckpt))
        del hf, opt


if __name__ == "__main__":
    main()
