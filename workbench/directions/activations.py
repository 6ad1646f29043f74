"""Activations at sites for labelled prompts: batched through `Model.run_with_cache`, cached on disk.

The disk cache is keyed by the model's fingerprint, the component, the layers, the reduction and a
hash of the prompts, so a changed model or prompt set never reads a stale file. Files are
safetensors (never pickles), written to a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from ..core.model import Model
from ..core.loading import cache_dir
from ..core.io import save_safetensors
from ..core.sites import parse_site

REDUCTIONS = ("last", "mean")


def _key(model: Model, prompts: list[str], layers: list[int], component: str, reduce: str) -> str:
    h = hashlib.sha256(json.dumps([model.fingerprint, component, layers, reduce, prompts]).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def collect_activations(model: Model, prompts: list[str], layers: Iterable[int] | None = None, *,
                        component: str = "resid_pre", reduce: str = "last", batch_size: int = 32,
                        cache: bool | str | Path = True, interventions: Iterable = ()) -> dict[int, Tensor]:
    """{layer: activations [n_prompts, d]} at `blocks.{layer}.hook_{component}`.

    `reduce`: "last" takes each prompt's last real token, "mean" averages over its real tokens.
    `cache`: True uses $WORKBENCH_CACHE/activations, a path uses that folder, False computes afresh.
    `interventions` (workbench Intervention objects, e.g. a ProjectOut) are applied during the runs;
    activations are read after them. Runs with interventions are not cached.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: expected a non-empty list of non-empty strings")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    layers = list(range(model.dims.n_layers) if layers is None else layers)
    sites = [parse_site(component, model.dims.n_layers, l).name for l in layers]  # checks the layer range
    prompts = list(prompts)
    interventions = list(interventions)

    path = None
    if cache and not interventions:
        folder = Path(cache) if not isinstance(cache, bool) else cache_dir() / "activations"
        path = folder / f"{_key(model, prompts, layers, component, reduce)}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            stored = load_file(str(path))
            return {l: stored[f"layer.{l}"] for l in layers}

    parts: dict[int, list[Tensor]] = {l: [] for l in layers}
    for i in range(0, len(prompts), batch_size):
        ids, mask = model.encode(prompts[i:i + batch_size])
        _, acts = model.run_with_cache(ids, sites, attention_mask=mask, interventions=interventions)
        if reduce == "last":
            rows = torch.arange(ids.shape[0], device=ids.device)
            last = model.last_positions(ids, mask)
            for l, s in zip(layers, sites):
                parts[l].append(acts[s][rows, last].float().cpu())
        else:
            m = (torch.ones_like(ids) if mask is None else mask).to(torch.float32)[..., None]
            for l, s in zip(layers, sites):
                parts[l].append(((acts[s].float() * m).sum(1) / m.sum(1)).cpu())
    out = {l: torch.cat(v) for l, v in parts.items()}

    if path is not None:
        save_safetensors(path, {f"layer.{l}": v for l, v in out.items()},
                         {"model": model.name, "component": component, "reduce": reduce, "n": str(len(prompts))})
    return out
