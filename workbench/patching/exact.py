"""Exact activation patching: every cell of a grid, run by the batched suffix-only engine."""
from __future__ import annotations

from typing import Sequence

from ..toolkit.results import LabelledArray
from ..core.model import Model
from .engine import MetricFn
from .grid import check_grid, grid_cells, labelled_grid, prepare, run_grid
from ..core import checks


def activation_patching(
    model: Model, clean, corrupted, answer, foil=None, *, components: str | Sequence[str] = "resid_pre",
    by: str = "position", metric: str | MetricFn = "logit_diff", direction: str = "denoise",
    method: str = "exact", path: str = "auto", memory_mb: float = 1024, max_batch_tokens: int | None = None,
    skip_identical: bool = True, align: dict[int, int] | None = None, per_pair: bool = False, progress: bool = False,
    top_k: int = 0,
) -> dict[str, LabelledArray]:
    """Patch every (layer, position), (layer, head) or (layer, position, head) of each component.

    clean, corrupted: a prompt or a list of prompts (a batch of pairs); answer, foil: single tokens,
    one or one per pair. components: any of resid_pre, resid_post, attn_out, mlp_out, z, mlp_post;
    by="head"/"position_head" applies to "z" (all positions of a head / one position of a head).
    method: "exact" (the batched engine) or "attribution" (AtP: two forwards and one backward).
    path: "auto" | "suffix" | "full", how the engine runs (see `workbench.patching.engine`). memory_mb / max_batch_tokens bound a
    batch. skip_identical: patches whose value equals the target's bit for bit are not run (they
    cannot change anything); their cell is the target's metric. top_k: also keep each patched run's top-k
    next tokens (of the first pair), which the grid's view shows when a cell is clicked.

    Returns {component: LabelledArray} with dims (layer, position[, head]) or (layer, head), averaged
    over pairs (or with a leading `pair` axis if per_pair). `meta` holds clean_metric,
    corrupted_metric and the engine's statistics.
    """
    comps = check_grid(components, by)
    checks.integer(top_k, "top_k (predictions per cell, 0 = none)", 0, 100)
    if method not in ("exact", "attribution"):
        raise checks.fail('method', "'exact' or 'attribution'", method)
    if method == "attribution":
        from .attribution import attribution_patching

        return attribution_patching(model, clean, corrupted, answer, foil, components=comps, by=by, metric=metric,
                                    direction=direction, align=align, per_pair=per_pair)
    setup = prepare(model, clean, corrupted, answer, foil, comps, metric, direction, align)
    L, H, P = model.dims.n_layers, model.dims.n_heads, len(setup.target_pos)
    results = {}
    for comp in comps:
        grid, top, stats = run_grid(model, setup, comp, grid_cells(by, L, P, H), top_k=top_k,
                                    skip_identical=skip_identical, memory_mb=memory_mb,
                                    max_batch_tokens=max_batch_tokens, path=path, progress=progress)
        results[comp] = labelled_grid(grid, setup, comp, by, metric, direction, stats, per_pair, L, H, top,
                                      model.tokenizer)
    return results
