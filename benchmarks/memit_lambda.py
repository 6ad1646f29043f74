"""MEMIT's lambda (weight of the corpus statistics C) against efficacy and neighbourhood, 100 edits at once.

    python benchmarks/memit_lambda.py [--limit 100] [--lams 1500,3000,4500,6000,10000,15000] [--value-prefixes 0]

The z targets do not depend on lambda, so they are optimised once (cached in `out/memit-lambda/`,
resumable) and only the spreading over layers (Alg. 1, eq. 14) is redone per lambda. Each point is
scored like `workbench edit --method memit` without the generations (ES, PS, NS, S; GE needs them);
NS leaves out the neighbourhood prompts that are other requests of the batch, NS_all keeps them.
Writes `benchmarks/results/memit-lambda-vp<value prefixes>-<device>.json`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import workbench as wb
from safetensors.torch import load_file
from workbench.editing import EditRequest, context_prefixes, second_moments
from workbench.editing.counterfact import load_requests, score_request, summarize
from workbench.editing.mass import default_memit_layers, memit_spread, memit_targets
from workbench.core.io import save_safetensors

sys.path.insert(0, os.path.dirname(__file__))
from common import device_meta, parser, write_result  # noqa: E402


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", default="data/counterfact.jsonl")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--lams", default="1500,3000,4500,6000,10000,15000")
    ap.add_argument("--value-prefixes", type=int, default=0)
    ap.add_argument("--n-tokens", type=int, default=32768)
    ap.add_argument("--work", default="out/memit-lambda", help="where the z targets are cached")
    args = ap.parse_args(argv)
    model = wb.load_model(args.model, device=args.device)
    reqs = load_requests(args.requests)[:args.limit]
    edits = [EditRequest(r["prompt"], r["subject"], r["target_new"]) for r in reqs]
    layers = default_memit_layers(model)
    Cs = second_moments(model, layers, n_tokens=args.n_tokens)
    prefixes = context_prefixes(model)

    z_path = Path(args.work) / f"z-{model.fingerprint}-n{len(reqs)}-vp{args.value_prefixes}-L{layers[-1]}.safetensors"
    t0 = time.perf_counter()
    if z_path.is_file():
        Z, z_seconds = load_file(z_path)["z"].to(model.device), None
    else:
        Z, _ = memit_targets(model, edits, layers[-1], prefixes[:1 + args.value_prefixes], progress=True)
        z_seconds = time.perf_counter() - t0
        save_safetensors(z_path, {"z": Z.detach()}, {"requests": args.requests})

    batch = {r["prompt"] for r in reqs}
    score = lambda: [{**score_request(model, r, gen_tokens=0), "request": r} for r in reqs]
    points = []
    for lam in [float(x) for x in args.lams.split(",")]:
        t0 = time.perf_counter()
        edit = memit_spread(model, edits, layers, Z, Cs, lam=lam, prefixes=prefixes)
        spread = time.perf_counter() - t0
        with edit.applied(model, allow_abnormal=True):
            metrics = summarize(score(), edited_prompts=batch)
        point = {"lam": lam, **{k: metrics[k] for k in ("ES", "EM", "PS", "PM", "NS", "NM", "S", "NS_all", "NM_all")},
                 "relative_norms": edit.meta["relative_norms"], "spread_seconds": round(spread, 1)}
        points.append(point)
        print(json.dumps({k: point[k] for k in ("lam", "ES", "PS", "NS", "NS_all", "S")}), flush=True)
    unedited = summarize(score(), edited_prompts=batch)
    write_result({"benchmark": "memit-lambda", **device_meta(args.device), "model": model.name, "n": len(reqs),
                  "layers": layers, "value_prefixes": args.value_prefixes, "z_seconds": z_seconds,
                  "unedited_NS": unedited["NS"], "unedited_NS_all": unedited["NS_all"], "points": points}, f"memit-lambda-vp{args.value_prefixes}", args.device, None)


if __name__ == "__main__":
    main()
