"""TuCo's identity and alpha-scaling endpoints on Gemma 3 270M (the real model, offline, converted in the cache).

No fine-tuned Gemma 3 270M ships offline, so the tuned model is a planted change: `diffing.perturbed_copy` adds
Gaussian noise of `--scale` x each block matrix's own std to every block parameter (embeddings, final norm and
unembedding untouched, so alpha 0 must be the base model exactly). Measured, as in tests/test_diffing.py:

- identity: x_l + PTC_l + FTC_l against the fine-tuned model's own resid_post_l (max |difference| over layers,
  prompts and tokens), and x_0 + sum_l (PTC_l + FTC_l) against its last residual;
- endpoints: max |logits(alpha 1) - logits(tuned)| and max |logits(alpha 0) - logits(base)|, with
  max |logits(tuned) - logits(base)| for scale; alpha 0.5 lies between (its distance to each);
- TuCo per prompt and by layer.

    nice python benchmarks/diffing_gemma.py [--scale 0.05]          (CPU, a minute or two)

Writes benchmarks/results/diffing-gemma-<device>.json.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.diffing import perturbed_copy, scaled_model, tuning_contribution

PROMPTS = ["The capital of France is", "Mr John hated the movie.\nLabel:", "Once upon a time, there was a",
           "def fibonacci(n):"]


def main():
    ap = parser(__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--scale", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    base = wb.load_model(args.model, device=args.device)
    tuned = perturbed_copy(base, args.scale, seed=1)
    L = base.dims.n_layers
    pre = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    post = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    id_err, sum_err, end1, end0, spread, half_to = 0.0, 0.0, 0.0, 0.0, 0.0, []
    s = scaled_model(base, tuned, 1.0)
    with torch.no_grad():
        for p in PROMPTS:  # one prompt at a time: no padding in the comparison
            t_logits, cache = tuned.run_with_cache(p, pre + post)
            b_logits = base(p)
            with s.recording() as rec:
                s1_logits = s.set_alpha(1.0).hf(input_ids=s.to_tokens(p), use_cache=False).logits
            total = cache[pre[0]].clone()
            for l in range(L):
                ptc, ftc = rec[l][0]
                id_err = max(id_err, float((cache[pre[l]] + ptc + ftc - cache[post[l]]).abs().max()))
                total = total + ptc + ftc
            sum_err = max(sum_err, float((total - cache[post[-1]]).abs().max()))
            end1 = max(end1, float((s1_logits - t_logits).abs().max()))
            end0 = max(end0, float((s.set_alpha(0.0)(p) - b_logits).abs().max()))
            spread = max(spread, float((t_logits - b_logits).abs().max()))
            h = s.set_alpha(0.5)(p)
            half_to.append([float((h - b_logits).abs().max()), float((h - t_logits).abs().max())])
    tc = tuning_contribution(base, tuned, PROMPTS)
    result = {"model": base.name, "meta": device_meta(args.device),
              "settings": {"planted": f"perturbed_copy(scale={args.scale}, seed=1): Gaussian noise x each block "
                                      "matrix's std on every block parameter", "prompts": PROMPTS, "n_layers": L},
              "identity_max_abs_error_per_layer": id_err, "identity_max_abs_error_summed": sum_err,
              "alpha1_vs_tuned_logits_max_abs": end1, "alpha0_vs_base_logits_max_abs": end0,
              "tuned_vs_base_logits_max_abs": spread,
              "alpha_half_max_abs_to_base_and_to_tuned": half_to,
              "tuco_per_prompt": [round(float(v), 4) for v in tc.tuco],
              "tuco_by_layer": [round(float(v), 4) for v in tc.by_layer().values[0]],
              "outside_blocks_changed": tc.meta["outside_blocks_changed"],
              "seconds": round(time.time() - t0, 1)}
    print({k: v for k, v in result.items() if k not in ("meta", "settings", "tuco_by_layer")}, flush=True)
    write_result(result, "diffing-gemma", args.device, args.out)


if __name__ == "__main__":
    main()
