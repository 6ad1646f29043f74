"""Half-precision patching grids against float32 on the default model (SmolLM2-135M weights, IOI pair).

For each dtype: the resid_pre grid of a copy of the model cast to it, against the float32 grid of the same
weights: Spearman over all cells and over the cells whose float32 effect |cell - corrupted| exceeds 1% (10%)
of the largest, the argmax cell, the max abs difference. `--paths` adds the plain-forward path
(`dtype:full`), which separates the engine's error from the model's own half-precision forward.

    python benchmarks/dtype_grid.py [--dtypes bfloat16,float16] [--paths auto,full]
"""
from __future__ import annotations

import copy
import time

import torch

import workbench as wb
from common import device_meta, parser, write_result
from gpu_bench import spearman
from workbench.patching import activation_patching

ARGS = ("When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


def compare(g: torch.Tensor, g32: torch.Tensor, corrupted: float) -> dict:
    """Agreement of a grid g with the float32 grid g32 (same shape)."""
    effect = (g32 - corrupted).abs()
    out = {"spearman_all": spearman(g, g32), "n_all": g.numel()}
    for pct in (1, 10):
        keep = effect > pct / 100 * effect.max()
        out[f"spearman_effect_{pct}pct"], out[f"n_effect_{pct}pct"] = spearman(g[keep], g32[keep]), int(keep.sum())
    return {**out, "same_argmax": bool(g.argmax() == g32.argmax()), "max_abs_diff": float((g - g32).abs().max()),
            "max_abs_cell": float(g32.abs().max())}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--paths", default="auto")
    args = ap.parse_args()
    model = wb.load_model().to(args.device)
    r32 = activation_patching(model, *ARGS)["resid_pre"]
    g32 = torch.as_tensor(r32.values).double()
    result = {**device_meta(args.device), "model": model.name, "runs": {}}
    for name in args.dtypes.split(","):
        half = wb.Model(copy.deepcopy(model.hf).to(getattr(torch, name)), model.tokenizer, name=f"{model.name}-{name}")
        for path in args.paths.split(","):
            start = time.perf_counter()
            g = torch.as_tensor(activation_patching(half, *ARGS, path=path)["resid_pre"].values).double()
            run = {**compare(g, g32, float(r32.meta["corrupted_metric"])), "seconds": time.perf_counter() - start}
            result["runs"][f"{name}:{path}"] = run
            print(name, path, run, flush=True)
    write_result(result, "dtype-grid", args.device, args.out)


if __name__ == "__main__":
    main()
