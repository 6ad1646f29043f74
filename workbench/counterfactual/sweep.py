"""Resumable counterfactual runs over many observed strings, in THE sweep folder (`core.sweep.SweepFolder`):

    <out>/config.json          model fingerprint, intervention (described and hashed), the observed strings'
                               hash, sampling settings, seed, noise, chunk size
    <out>/chunks/<i>.json      rows [i * chunk, (i + 1) * chunk): observed and counterfactual token ids and texts

A chunk is written atomically as soon as it is decoded, so a killed run loses at most the chunk in flight
and re-running the same call skips finished chunks. Row r's noise is seeded with seed + r whatever the chunk,
so a resumed (or differently chunked) run gives exactly the rows of one uninterrupted `counterfactuals` call.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

from ..core.model import Model
from ..core.sweep import SweepFolder
from .decode import Counterfactuals, _check_intervention, _settings, counterfactuals, describe
from .gumbel import Samples, token_rows
from ..core import checks


def _digest(obj, h=None):
    """A hash of an intervention's content (tensors included), so a folder of another intervention is refused."""
    h = h or hashlib.sha256()
    if isinstance(obj, Model):
        h.update(obj.fingerprint.encode())
    elif isinstance(obj, torch.Tensor):
        h.update(str(tuple(obj.shape)).encode() + obj.detach().float().cpu().contiguous().numpy().tobytes())
    elif dataclasses.is_dataclass(obj):
        h.update(type(obj).__name__.encode())
        for f in dataclasses.fields(obj):
            if not f.name.startswith("_") and f.name != "meta":
                h.update(f.name.encode())
                _digest(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _digest(x, h)
    else:
        h.update(repr(obj).encode())
    return h


def counterfactual_sweep(out, model: Model, prompts, continuations, intervention=None, *, chunk: int = 16,
                         force: bool = False, temperature: float | None = None, top_k: int | None = None,
                         top_p: float | None = None, seed: int = 0, max_new_tokens: int | None = None, replace=None,
                         noise: str = "posterior", margin: float = 1e-3, progress: bool = False) -> Counterfactuals:
    """`counterfactuals(model, prompts, continuations, intervention, ...)`, resumable in the folder `out`.

    Same arguments and result as `counterfactuals` (rows in order, equal to one uninterrupted call), computed
    `chunk` rows at a time; each finished chunk is saved under `out/chunks/` and skipped when the same call
    is run again. A folder holding another configuration (model, intervention, observed strings, settings)
    is refused before anything is written, unless `force` (then its chunks are replaced).
    """
    from tqdm.auto import tqdm

    checks.integer(chunk, "chunk")
    settings = _settings(continuations, temperature, top_k, top_p)
    if isinstance(continuations, Samples):
        p_rows, c_rows = continuations.prompt_ids, continuations.ids
        if prompts is not None and token_rows(model, prompts, "prompts", special=True) != p_rows:
            raise ValueError("prompts: differ from the prompts the samples were drawn from (pass None)")
    else:
        p_rows = token_rows(model, prompts, "prompts", special=True)
        c_rows = token_rows(model, continuations, "continuations", special=False)
    if len(p_rows) != len(c_rows):
        raise ValueError(f"continuations: expected one per prompt ({len(p_rows)}), got {len(c_rows)}")
    n = len(p_rows)
    if isinstance(replace, list) and len(replace) != n:
        raise ValueError(f"replace: expected one (position, token) per row ({n}), got {len(replace)}")
    checked = _check_intervention(model, intervention)
    kw = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
              max_new_tokens=max_new_tokens, noise=noise, margin=margin)
    # Check every argument on the first row before touching the disk (a bad setting fails here, not mid-run).
    counterfactuals(model, p_rows[:1], [c_rows[0][:1]], None, seed=seed,
                    **{**kw, "max_new_tokens": 1, "noise": noise})
    config = {"what": "counterfactual strings", "model": model.name, "fingerprint": model.fingerprint,
              "intervention": describe(checked), "intervention_hash": _digest(checked).hexdigest()[:16],
              "observed_hash": _digest([p_rows, c_rows]).hexdigest()[:16], "n": n, "chunk": chunk, "seed": seed,
              "replace": _digest(replace).hexdigest()[:16] if replace is not None else None,
              **{k: v for k, v in kw.items()}}
    sweep = SweepFolder(out, config, items="chunks", force=force).start()
    fields = ("prompts", "observed_ids", "ids", "observed", "texts", "diverged_at")
    rows = {f: [] for f in fields}
    meta = None
    starts = range(0, n, chunk)
    for i, start in enumerate(tqdm(starts, disable=not progress, desc="counterfactuals", unit="chunk")):
        stop = min(n, start + chunk)
        if sweep.done(i):
            record = sweep.load(i)
        else:
            rp = replace[start:stop] if isinstance(replace, list) else replace
            # seed + start: row r of the whole run keeps the noise seed + r (see the module docstring)
            res = counterfactuals(model, p_rows[start:stop], c_rows[start:stop], checked, seed=seed + start,
                                  replace=rp, batch_size=stop - start, **kw)
            record = {"rows": [start, stop], **{f: getattr(res, f) for f in fields},
                      "meta": {**res.meta, "seed": seed, "replace": replace}}
            sweep.save(i, record)
        for f in fields:
            rows[f] += record[f]
        meta = record["meta"]
    return Counterfactuals(**rows, settings=settings, meta={**(meta or {}), "folder": str(sweep.path)})
