"""Attribution patching (AtP): a first-order estimate of every patch from two forwards and one backward.

For a patch of site s from the source run into the target run, AtP estimates

    metric(patched) ~= metric(target) + (a_source(s) - a_target(s)) . d metric / d a_target(s)

(Nanda 2023; Kramar et al. 2024). `attribute_then_verify` ranks all cells by the estimated effect
and runs the top k exactly through the batched engine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .engine import run_patches
from .grid import check_grid, grid_cells, labelled_grid, patches_for, prepare
from ..toolkit.results import LabelledArray
from ..core.sites import Site
from ..core import checks


def _attribution_grid(model, setup, comp: str, by: str, grads: dict) -> torch.Tensor:
    """AtP estimates [n_pairs, n_cells] for one component, in the grid order of `grid_cells`."""
    L = model.dims.n_layers
    src_pos, tgt_pos = setup.source_pos, setup.target_pos
    rows = []
    for layer in range(L):
        name = Site(layer, comp).name
        delta = setup.source[name][:, src_pos] - setup.target[name][:, tgt_pos]  # [n, P, d] or [n, P, H, dh]
        effect = delta * grads[name][:, tgt_pos]
        per_pos = effect.sum(-1)  # [n, P] or [n, P, H]
        if by == "position":
            rows.append(per_pos if comp != "z" else per_pos.sum(-1))
        elif by == "head":
            rows.append(per_pos.sum(1))  # [n, H]
        else:
            rows.append(per_pos.flatten(1))  # [n, P * H]
    return setup.target_metric[:, None] + torch.cat(rows, dim=1)


def attribution_patching(model, clean, corrupted, answer, foil=None, *, components: str | Sequence[str] = "resid_pre",
                         by: str = "position", metric="logit_diff", direction: str = "denoise", align=None,
                         per_pair: bool = False) -> dict[str, LabelledArray]:
    """AtP estimates of the metric after each patch, in the same layout as `activation_patching`."""
    comps = check_grid(components, by)
    setup = prepare(model, clean, corrupted, answer, foil, comps, metric, direction, align)
    return _attribution_arrays(model, setup, comps, by, metric, direction, per_pair)


def _attribution_arrays(model, setup, comps, by, metric, direction, per_pair) -> dict[str, LabelledArray]:
    grads = target_gradients(model, setup)
    L, H = model.dims.n_layers, model.dims.n_heads
    out = {}
    for comp in comps:
        grid = _attribution_grid(model, setup, comp, by, grads)
        arr = labelled_grid(grid, setup, comp, by, metric, direction, None, per_pair, L, H)
        arr.name = f"{comp} attribution patching ({direction})"
        arr.meta["method"] = "attribution"
        out[comp] = arr
    return out


def target_gradients(model, setup) -> dict[str, torch.Tensor]:
    """d metric / d activation at every site of the setup, on the target run (one forward, one backward)."""
    logits, cache = model.run_with_cache(setup.target_ids, setup.sites, grad=True)
    idx = torch.arange(setup.pairs.n, device=model.device)
    total = setup.fn(logits[:, -1], idx).sum()
    names = [s.name for s in setup.sites]
    grads = torch.autograd.grad(total, [cache[n] for n in names])
    return {n: g.detach() for n, g in zip(names, grads)}


def attribute_then_verify(model, clean, corrupted, answer, foil=None, *, components="resid_pre", by="position",
                          metric="logit_diff", direction="denoise", top_k: int = 20, align=None,
                          memory_mb: float = 1024) -> dict:
    """Rank every cell by |AtP estimate - target metric| and patch the top k exactly.

    Returns {"attribution": {comp: LabelledArray}, "exact": {comp: LabelledArray, NaN where not
    verified}, "top": [{component, layer, position, head, attribution, exact}]}, averaged over pairs.
    """
    checks.integer(top_k, "top_k")
    comps = check_grid(components, by)
    setup = prepare(model, clean, corrupted, answer, foil, comps, metric, direction, align)
    att = _attribution_arrays(model, setup, comps, by, metric, direction, False)
    base = setup.target_metric.mean().item()
    ranked = sorted(((abs(float(v) - base), comp, idx) for comp in comps
                     for idx, v in enumerate(att[comp].values.reshape(-1))), reverse=True)[:top_k]
    L, H, P = model.dims.n_layers, model.dims.n_heads, len(setup.target_pos)
    exact, top = {}, []
    for comp in comps:
        cells_all = grid_cells(by, L, P, H)
        chosen = [idx for _, c, idx in ranked if c == comp]
        grid = torch.full((len(cells_all),), float("nan"))
        if chosen:
            patches, where = patches_for(setup, comp, [cells_all[i] for i in chosen], skip_identical=False)
            vals, _ = run_patches(model, setup.target_ids, patches, setup.fn, memory_mb=memory_mb)
            per_cell = torch.zeros(len(chosen))
            per_cell.index_add_(0, torch.tensor([w[1] for w in where]), vals.detach().cpu().float())
            grid[torch.tensor(chosen)] = per_cell / setup.pairs.n
        arr = LabelledArray(grid.reshape(att[comp].values.shape).float().numpy(), att[comp].dims, att[comp].coords,
                            name=f"{comp} exact patching of the top {top_k}", meta=dict(att[comp].meta, method="exact"))
        exact[comp] = arr
    for _, comp, idx in ranked:
        multi = np.unravel_index(idx, att[comp].values.shape)
        cell = {d: att[comp].coords[d][int(i)] for d, i in zip(att[comp].dims, multi)}
        top.append({"component": comp, **cell, "attribution": float(att[comp].values.reshape(-1)[idx]),
                    "exact": float(exact[comp].values.reshape(-1)[idx])})
    return {"attribution": att, "exact": exact, "top": top}
