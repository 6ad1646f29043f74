"""A tuned lens for the default model, trained offline, and its per-layer KL against the logit lens.

Corpus (nothing downloaded): the model's own seeded samples (core/generation.py) from the shipped prompts
(data/steering/prompts.txt) plus the shipped text (neutral sentences, sentiment reviews, fact prompts).
Held out: samples from another seed and the shipped lines not drawn for training.

    python benchmarks/tuned_lens_default.py [--model NAME] [--steps 60]  (CPU, one thread) [--lens PATH]

Resumable (rerun with more --steps). Writes benchmarks/results/tuned-lens-<device>.json (on another model
tuned-lens-<model>-<device>.json; its lens in out/tuned-lens-<model>/): per layer KL(model || lens) on the
held-out text, logit lens vs tuned lens, and both at relative depths 0, 1/4, 1/2, 3/4 (layer floor(f * L)).
"""
from __future__ import annotations

import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
from workbench.lenses.tuned import lens_kl, train_tuned_lens
from workbench.core.generation import generate
from workbench.core.io import read_jsonl


def shipped_lines() -> list[str]:
    lines = []
    for name in ("steering/neutral.txt", "steering/prompts.txt"):
        lines += [l.strip() for l in open(wb.data.data_path(name)) if l.strip() and not l.startswith("#")]
    lines += [r["text"] for _, r in read_jsonl(wb.data.data_path("steering/sentiment_eval.jsonl"), "sentiment")]
    facts = [r for _, r in read_jsonl(wb.data.data_path("facts.jsonl"), "facts")]
    lines += [f"{r['prompt']} {r['object']}." for r in facts][::4]
    return lines


def corpus(model, seed: int) -> tuple[list[str], list[str]]:
    prompts = [l.strip() for l in open(wb.data.data_path("steering/prompts.txt")) if l.strip() and not l.startswith("#")]
    train = [p + s for p, s in zip(prompts * 2, generate(model, prompts * 2, max_new_tokens=40, do_sample=True, seed=seed))]
    held = [p + s for p, s in zip(prompts[:8], generate(model, prompts[:8], max_new_tokens=24, do_sample=True,
                                                        seed=seed + 1000))]
    lines = shipped_lines()
    random.Random(seed).shuffle(lines)
    return train + lines[8:], held + lines[:8]


DEPTHS = (0.0, 0.25, 0.5, 0.75)


def by_depth(kl_logit: list[float], kl_tuned: list[float]) -> list[dict]:
    """Both lenses' KL at relative depths DEPTHS: layer floor(f * L) of L, so models of different depth compare."""
    L = len(kl_logit)
    return [{"depth": f, "layer": int(f * L), "logit_lens": round(kl_logit[int(f * L)], 3),
             "tuned_lens": round(kl_tuned[int(f * L)], 3)} for f in DEPTHS]


def main():
    ap = add_model(parser(__doc__))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--tokens-per-step", type=int, default=32)
    ap.add_argument("--eval-len", type=int, default=24)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lens", default=None, help="the lens file (default: out/<result name>/tuned_lens.safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = result_name("tuned-lens", args.model)
    args.lens = args.lens or f"out/{name}/tuned_lens.safetensors"
    model = wb.load_model(args.model, device=args.device)
    t0 = time.time()
    train, held = corpus(model, seed=0)
    t_corpus = time.time() - t0
    t0 = time.time()
    lens, losses = train_tuned_lens(model, train, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                    max_len=args.max_len, seed=0, path=args.lens, save_every=5,
                                    tokens_per_step=args.tokens_per_step)
    t_train = time.time() - t0
    print(f"trained to step {args.steps} ({len(losses)} steps here, {t_train:.0f} s): losses {[round(x, 3) for x in losses]}")
    kl_logit = lens_kl(model, held, None, max_len=args.eval_len)
    kl_tuned = lens_kl(model, held, lens, max_len=args.eval_len)
    for l, (a, b) in enumerate(zip(kl_logit, kl_tuned)):
        print(f"layer {l:2d}: logit lens KL {a:.3f}  tuned lens KL {b:.3f}")
    result = {"model": model.name, "meta": device_meta(args.device),
              "settings": {"steps": args.steps, "batch_size": args.batch_size, "max_len": args.max_len, "lr": args.lr,
                           "tokens_per_step": args.tokens_per_step, "eval_len": args.eval_len,
                           "n_train_texts": len(train), "n_heldout_texts": len(held)},
              "seconds": {"corpus": round(t_corpus, 1), "train_this_run": round(t_train, 1)},
              "loss_this_run": [round(x, 4) for x in losses],
              "kl_logit_lens": [round(x, 4) for x in kl_logit], "kl_tuned_lens": [round(x, 4) for x in kl_tuned],
              "by_relative_depth": by_depth(kl_logit, kl_tuned),
              "lens_file": args.lens, "lens_bytes": os.path.getsize(args.lens)}
    write_result(result, name, args.device, args.out)


if __name__ == "__main__":
    main()
