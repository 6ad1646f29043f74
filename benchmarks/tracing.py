"""Benchmark: causal tracing of one fact (all three kinds) on the default model, this engine against a
loop with the research code's structure (one forward of batch samples+1 per cell), in one process.
Checks agreement within 1e-4, prints the ratio, writes benchmarks/results/tracing-<device>.json.

    python benchmarks/tracing.py [--device cpu|cuda] [--samples 10] [--window 10] [--model gemma-3-270m]

On a model other than the default the JSON is tracing-<model>-<device>.json. It also records the machine's load
averages at start and end (the ratio is in-run, but a shared machine slows both sides unevenly).
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
from workbench.patching.reference import research_trace_loop
from workbench.patching.tracing import KINDS, embedding_noise_std, trace_fact

PROMPT, SUBJECT, ANSWER = "The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    add_model(ap)
    args = ap.parse_args(argv)
    load_start = [round(x, 2) for x in os.getloadavg()]
    model = wb.load_model(args.model, device=args.device)
    nu = 3 * embedding_noise_std(model, [SUBJECT])
    seed = 0
    sync(args.device)
    t0 = time.perf_counter()
    tr = trace_fact(model, PROMPT, SUBJECT, ANSWER, noise_std=nu, samples=args.samples, window=args.window, seed=seed)
    sync(args.device)
    ours = time.perf_counter() - t0
    print(f"workbench trace_fact: {ours:.1f} s", flush=True)
    span = model.find_span(PROMPT, SUBJECT)
    eps = nu * torch.randn(args.samples, len(span), model.dims.d_model, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    ref = {k: research_trace_loop(model, PROMPT, SUBJECT, ANSWER, eps.to(model.device), args.window, k) for k in KINDS}
    sync(args.device)
    loop = time.perf_counter() - t0
    diff = max(float(np.abs(tr.scores[k] - ref[k]).max()) for k in KINDS)
    print(f"research-structured loop: {loop:.1f} s; ratio {loop / ours:.2f}x; max abs diff {diff:.2e}")
    result = {"benchmark": f"causal tracing, one fact, resid+mlp+attn, {model.name}", "model": model.name,
              **device_meta(args.device), "load_average_at_start": load_start,
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              "prompt": PROMPT, "subject": SUBJECT,
              "samples": args.samples, "window": args.window, "n_tokens": len(tr.tokens),
              "workbench_seconds": round(ours, 2), "research_loop_seconds": round(loop, 2),
              "speedup": round(loop / ours, 2), "max_abs_diff": diff, "agree_within_1e-4": diff < 1e-4,
              "p_clean": tr.p_clean, "p_corrupted": tr.p_corrupted}
    write_result(result, result_name("tracing", model.name), args.device, args.out)
    return result


if __name__ == "__main__":
    main()
