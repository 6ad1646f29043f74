"""The one activation reader: activations at a site for a list of texts, batched through
`Model.run_with_cache` and read at each text's own tokens (never a pad). Probes, steering vectors,
CAFT's mean fill and PCA, and SAE training all read through it.

With `cache`, results are kept on disk keyed by the model's fingerprint, the site, the layers, where
they are read and a hash of the texts, so a changed model or prompt set never reads a stale file;
files are safetensors (never pickles), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..core.generation import check_prompts
from ..core.io import read_safetensors, save_safetensors
from ..core.io import cache_dir
from ..core.sites import check_layers, parse_site
from ..core import checks

ReadAt = int | str  # a token index (negative: from each text's end), "mean" (over its tokens) or "all" (every token)


def _check_read_at(read_at) -> None:
    if not (checks.is_int(read_at) or read_at in ("mean", "all")):
        raise checks.fail('read_at', "an int token index (negative counts from the end), 'mean' or 'all'", read_at)


def _key(model, texts: list[str], layers: list[int], component: str, read_at) -> str:
    h = hashlib.sha256(json.dumps([model.fingerprint, component, layers, read_at, texts]).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def read_activations(model, texts: Sequence[str], layers: Iterable[int] | None = None, *, component: str = "resid_pre",
                     read_at: ReadAt = -1, batch_size: int = 32, interventions: Iterable = (),
                     cache: bool | str | Path = False, progress: bool = False) -> dict[int, Tensor]:
    """{layer: float32 activations} at `blocks.{layer}.hook_{component}` (default: every layer), on the CPU.

    read_at: an int reads one token per text, [n_texts, d] (-1 = each text's last real token; a
    non-negative int is a token index); "mean" averages each text's real tokens, [n_texts, d]; "all"
    returns every real token of every text, [n_tokens, d] (texts in order, tokens in order).
    `interventions` are applied during the runs and activations are read after them (such runs are
    not cached). `cache`: True keeps results under $WORKBENCH_CACHE/activations, a path keeps them there.
    `progress`: a tqdm bar over the batches (rate, time left).
    """
    from tqdm.auto import tqdm

    texts = check_prompts(list(texts) if isinstance(texts, tuple) else texts, "texts")
    _check_read_at(read_at)
    checks.integer(batch_size, "batch_size")
    layers = list(range(model.dims.n_layers)) if layers is None else check_layers(list(layers), model.dims.n_layers)
    sites = [parse_site(component, model.dims.n_layers, l).name for l in layers]
    interventions = list(interventions)

    path = None
    if cache and not interventions:
        folder = Path(cache) if not isinstance(cache, bool) else cache_dir() / "activations"
        path = folder / f"{_key(model, texts, layers, component, read_at)}.safetensors"
        if path.is_file():
            stored, _ = read_safetensors(path, "cache")
            return {l: stored[f"layer.{l}"] for l in layers}

    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc=f"activations of {model.name}",
                      unit="batch"):
        chunk = texts[start:start + batch_size]
        ids, mask = model.encode(chunk)
        lengths = model.last_positions(ids, mask) + 1  # [batch] real tokens per row
        _, acts = model.run_with_cache(ids, sites, attention_mask=mask, interventions=interventions, logits=False)
        real = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]  # [batch, pos]
        if isinstance(read_at, int):
            idx = lengths + read_at if read_at < 0 else torch.full_like(lengths, read_at)
            bad = (idx < 0) | (idx >= lengths)
            if bad.any():
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"read_at: token {read_at} does not exist in text {start + i} "
                                 f"({int(lengths[i])} tokens): {chunk[i]!r}")
        rows = torch.arange(len(chunk), device=ids.device)
        for l, s in zip(layers, sites):
            act = acts[s].float()  # [batch, pos, d]
            if read_at == "mean":
                out[l].append(((act * real[..., None]).sum(1) / lengths[:, None].float()).cpu())
            elif read_at == "all":
                out[l].append(act[real].cpu())
            else:
                out[l].append(act[rows, idx].cpu())
    result = {l: torch.cat(v) for l, v in out.items()}

    if path is not None:
        save_safetensors(path, {f"layer.{l}": v for l, v in result.items()},
                         {"model": model.name, "component": component, "read_at": str(read_at), "n": str(len(texts))})
    return result


REDUCTIONS = {"last": -1, "mean": "mean"}


def collect_activations(model, prompts: list[str], layers: Iterable[int] | None = None, *, component: str = "resid_pre",
                        reduce: str = "last", batch_size: int = 32, cache: bool | str | Path = True,
                        interventions: Iterable = ()) -> dict[int, Tensor]:
    """0.1's name for `read_activations` (reduce="last" is read_at=-1, "mean" is "mean"; cached by default)."""
    warnings.warn("collect_activations is read_activations(..., read_at=-1 | 'mean', cache=True)", FutureWarning,
                  stacklevel=2)
    if reduce not in REDUCTIONS:
        raise checks.fail('reduce', f'one of {tuple(REDUCTIONS)}', reduce)
    return read_activations(model, prompts, layers, component=component, read_at=REDUCTIONS[reduce],
                            batch_size=batch_size, interventions=interventions, cache=cache)
