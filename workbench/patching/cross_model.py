"""Cross-model activation patching (Prakash et al. 2024, "Fine-Tuning Enhances Existing Mechanisms"):
run the same prompts through a base model and its fine-tuned version, and patch each (layer, position)
activation of one into the other's run; the metric after each patch says where the fine-tune's change
lives. Both models are loaded once by the caller; the grid runs in one call on the batched engine.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..toolkit.results import LabelledArray
from .engine import checked_metric, last_logits
from .grid import Setup, check_degenerate, check_grid, grid_cells, labelled_grid, make_pairs, metric_fn, run_grid
from ..core import checks

DIRECTIONS = ("tuned_into_base", "base_into_tuned")


def check_same_shape(base, tuned) -> None:
    """Refuse models whose activations cannot be exchanged, naming both shapes."""
    if base.arch.family != tuned.arch.family or base.dims != tuned.dims:
        raise ValueError(f"tuned: models of different shapes cannot exchange activations: base is {base.arch.family} "
                         f"{base.dims}, tuned is {tuned.arch.family} {tuned.dims}")
    if len(base.tokenizer) != len(tuned.tokenizer):
        raise ValueError(f"tuned: tokenizers differ ({len(base.tokenizer)} vs {len(tuned.tokenizer)} tokens)")


def cross_model_patching(base, tuned, prompts, answer, foil=None, *, components: str | Sequence[str] = "resid_pre",
                         by: str = "position", metric="logit_diff", direction: str = "tuned_into_base",
                         memory_mb: float = 1024, per_pair: bool = False, progress: bool = False) -> dict[str, LabelledArray]:
    """Patch every (layer, position) (or head, with by='head' and components='z') of `components` from one
    model's run into the other's, on the same prompts.

    direction: 'tuned_into_base' (the fine-tuned model's activations into the base model's run) or
    'base_into_tuned'. metric: as in activation_patching, with the source model's run as "clean" and the
    target's as "corrupted" (so 'normalized' is the fraction of the source model's metric restored).
    Returns {component: LabelledArray(layer, position[, head])}; meta holds source_metric and target_metric.
    """
    check_same_shape(base, tuned)
    comps = check_grid(components, by)
    if direction not in DIRECTIONS:
        raise checks.fail('direction', f'one of {DIRECTIONS}', direction)
    source_model, target_model = (tuned, base) if direction == "tuned_into_base" else (base, tuned)
    pairs = make_pairs(target_model, prompts, prompts, answer, foil)
    check_degenerate(pairs, metric, same_prompts_ok=True)  # one prompt, two models: only answer == foil
    sites = [s for s in target_model.all_sites(comps)]
    with torch.no_grad():
        # float32 last-position logits, as the engine computes them, so the baselines match the cells
        source_logits, source_cache = last_logits(source_model, pairs.clean.to(source_model.device), sites=sites)
        target_logits, target_cache = last_logits(target_model, pairs.clean, sites=sites)
    source_cache = {k: v.to(target_model.device) for k, v in source_cache.items()}
    source_logits = source_logits.to(target_model.device)
    fn = metric_fn(metric, pairs, source_logits, target_logits)
    idx = torch.arange(pairs.n, device=target_model.device)
    source_metric = checked_metric(fn(source_logits, idx), pairs.n)
    target_metric = checked_metric(fn(target_logits, idx), pairs.n)
    positions = list(range(pairs.clean.shape[1]))
    setup = Setup(pairs, sites, source_cache, target_cache, pairs.clean, positions, positions, fn,
                  source_metric, target_metric, target_metric, target_logits)
    L, H, P = target_model.dims.n_layers, target_model.dims.n_heads, len(positions)
    results = {}
    for comp in comps:
        grid, _, stats = run_grid(target_model, setup, comp, grid_cells(by, L, P, H), memory_mb=memory_mb,
                                  progress=progress)
        arr = labelled_grid(grid, setup, comp, by, metric, "denoise", stats, per_pair, L, H)
        arr.name = f"{comp} cross-model patching ({direction})"
        arr.meta.update(direction=direction, source_model=source_model.name, target_model=target_model.name,
                        source_metric=source_metric.mean().item(), target_metric=target_metric.mean().item())
        results[comp] = arr
    return results
