"""Resumable counterfactual runs over many observed strings, in THE sweep folder (`toolkit.sweep.SweepFolder`),
run by its one driver on any executor (in-process, or Ray workers: `run=Run(workers=2)`):

    <out>/config.json          model fingerprint, intervention (described and hashed), the observed strings'
                               hash, sampling settings, seed, noise, chunk size
    <out>/chunks/<i>.json      rows [i * chunk, (i + 1) * chunk): observed and counterfactual token ids and texts

A chunk is written atomically as soon as it is decoded, so a killed run loses at most the chunk in flight
and re-running the same call skips finished chunks. Row r's noise is seeded with seed + r whatever the chunk,
so a resumed (or differently chunked) run gives exactly the rows of one uninterrupted `counterfactuals` call.
"""
from __future__ import annotations

from ..core.model import Model
from ..toolkit.sweep import SweepFolder, content_digest
from .decode import Counterfactuals, _check_intervention, _settings, counterfactuals, describe
from .gumbel import Samples, token_rows
from ..core import checks


def counterfactual_sweep(out, model: Model, prompts, continuations, intervention=None, *, chunk: int = 16,
                         force: bool = False, temperature: float | None = None, top_k: int | None = None,
                         top_p: float | None = None, seed: int = 0, max_new_tokens: int | None = None, replace=None,
                         noise: str = "posterior", margin: float = 1e-3, run=None, progress: bool = False,
                         workers: int | None = None, ray_address: str | None = None, executor=None) -> Counterfactuals:
    """`counterfactuals(model, prompts, continuations, intervention, ...)`, resumable in the folder `out`.

    Same arguments and result as `counterfactuals` (rows in order, equal to one uninterrupted call), computed
    `chunk` rows at a time; each finished chunk is saved under `out/chunks/` and skipped when the same call
    is run again. A folder holding another configuration (model, intervention, observed strings, settings)
    is refused before anything is written, unless `force` (then its chunks are replaced). `run=Run(...)`
    (`workbench.distributed.Run`; its settings also accepted as keywords) runs the chunks on Ray workers with
    the same rows (a second model as the intervention runs in-process only); the folder is locked meanwhile.
    """
    from ..toolkit.executors import as_run

    run = as_run(run, force=force, progress=progress, workers=workers, ray_address=ray_address, executor=executor)
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
        raise checks.fail('continuations', f'one per prompt ({len(p_rows)})', len(c_rows))
    n = len(p_rows)
    if isinstance(replace, list) and len(replace) != n:
        raise checks.fail('replace', f'one (position, token) per row ({n})', len(replace))
    checked = _check_intervention(model, intervention)
    kw = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
              max_new_tokens=max_new_tokens, noise=noise, margin=margin)
    # Check every argument on the first row before touching the disk (a bad setting fails here, not mid-run).
    counterfactuals(model, p_rows[:1], [c_rows[0][:1]], None, seed=seed,
                    **{**kw, "max_new_tokens": 1, "noise": noise})
    config = {"what": "counterfactual strings", "model": model.name, "fingerprint": model.fingerprint,
              "intervention": describe(checked), "intervention_hash": content_digest(checked),
              "observed_hash": content_digest([p_rows, c_rows]), "n": n, "chunk": chunk, "seed": seed,
              "replace": content_digest(replace) if replace is not None else None,
              **{k: v for k, v in kw.items()}}
    if run.distributed and isinstance(checked, Model):
        raise ValueError("intervention: a second model runs in-process only (workers hold one model each); "
                         "run without workers / ray_address / a Ray executor")
    sweep = SweepFolder(out, config, items="chunks", force=run.force)
    items = []
    for i, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        # seed + start: row r of the whole run keeps the noise seed + r (see the module docstring)
        items.append((i, {"rows": [start, stop], "prompts": p_rows[start:stop], "continuations": c_rows[start:stop],
                          "intervention": checked, "seed": seed + start, "base_seed": seed, "kw": kw, "replace": replace,
                          "row_replace": replace[start:stop] if isinstance(replace, list) else replace}))
    with run.executor_for(model) as ex, sweep.start():
        sweep.run(items, _chunk_item, model, ex, progress=run.progress, desc="counterfactuals", unit="chunk")
        records = [sweep.load(i) for i, _ in items]
    rows = {f: [x for r in records for x in r[f]] for f in Counterfactuals.FIELDS}
    meta = records[-1]["meta"] if records else {}
    return Counterfactuals(**rows, settings=settings, meta={**meta, "folder": str(sweep.path), "this_run": sweep.counts})


def _chunk_item(model: Model, p: dict) -> dict:
    """One chunk of a `counterfactual_sweep` (an executor's item; the intervention travels in the payload)."""
    res = counterfactuals(model, p["prompts"], p["continuations"], p["intervention"], seed=p["seed"], replace=p["row_replace"], batch_size=len(p["prompts"]), **p["kw"])
    return {"rows": p["rows"], **{f: getattr(res, f) for f in Counterfactuals.FIELDS},
            "meta": {**res.meta, "seed": p["base_seed"], "replace": p["replace"]}}
