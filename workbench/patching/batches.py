"""Activation patching over many prompt pairs, resumable, on any executor: the pairs are cut into chunks of
`chunk` pairs, and each chunk is an item of the one sweep driver (`toolkit.sweep`):

    <out>/config.json        model fingerprint, the pairs' content hash, components, by, metric, direction, chunk
    <out>/chunks/<i>.json    pairs [i * chunk, (i + 1) * chunk): their per-pair grids, one per component

A killed run loses at most the chunks in flight, and the same call skips finished chunks; on Ray workers
(`run=Run(workers=2)`) the chunks give the same grids as in-process (bit for bit at equal thread counts). The
result is `activation_patching`'s over the whole batch: every metric is per pair, so a pair's grid does not
depend on the chunk it ran in (up to the float rounding of another batch composition).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import checks
from ..core.model import Model
from ..toolkit.results import LabelledArray
from .exact import activation_patching
from .grid import METRICS, check_degenerate, check_grid, make_pairs

KEYS = ("clean", "corrupted", "answer", "foil")


def read_pairs(pairs) -> list[dict]:
    """Pairs as a list of {"clean", "corrupted", "answer", "foil"} dicts (foil optional, for all pairs or none),
    given as such a list or a JSONL / JSON-list file of them (`toolkit.read_records`)."""
    from ..toolkit.records import read_records

    if isinstance(pairs, (str, Path)):
        rows = [r for _, r in read_records(pairs, "pairs", {"clean": str, "corrupted": str, "answer": str},
                                           json_list=True)]
    elif isinstance(pairs, (list, tuple)) and all(isinstance(r, dict) for r in pairs):
        rows = list(pairs)
    else:
        raise checks.fail("pairs", 'a list of {"clean", "corrupted", "answer", "foil"} dicts or a JSONL file of them',
                          pairs)
    if not rows:
        raise ValueError("pairs: expected at least one pair, got none")
    for i, r in enumerate(rows):
        for key in KEYS[:3]:
            if not isinstance(r.get(key), str) or not r[key]:
                raise ValueError(f"pairs: pair {i}: expected key {key!r} with a non-empty string, got {r.get(key)!r}")
    with_foil = ["foil" in r for r in rows]
    if any(with_foil) and not all(with_foil):
        raise ValueError(f"pairs: pair {with_foil.index(False)} has no 'foil' but pair {with_foil.index(True)} has "
                         "one; give a foil for every pair or for none")
    return [{k: r[k] for k in KEYS if k in r} for r in rows]


def patch_pairs(model: Model, pairs, out=None, *, components="resid_pre", by: str = "position",
                metric: str = "logit_diff", direction: str = "denoise", chunk: int = 8, per_pair: bool = False,
                align: dict[int, int] | None = None, path: str = "auto", memory_mb: float = 1024,
                skip_identical: bool = True, run=None, progress: bool = False) -> dict[str, LabelledArray]:
    """`activation_patching` over many prompt pairs, `chunk` pairs at a time, each chunk an item of the one
    sweep driver: `out` (a folder) makes it resumable (one file per finished chunk under `out/chunks/`, the
    grids in `out/grids.json`; a folder of another configuration refused unless `run.force`; locked while it
    runs), `run=Run(workers=...)` (`workbench.toolkit.Run`) runs the chunks on Ray workers.

    pairs: a list of {"clean", "corrupted", "answer", "foil"} dicts or a JSONL file of them; as in one
    `activation_patching` batch, clean prompts share one length and corrupted prompts another (checked for all
    pairs before anything runs). `metric` is one of the built-in per-pair metrics (a callable cannot be keyed
    or sent to a worker). Returns {component: LabelledArray} averaged over all pairs (a leading `pair` axis
    if `per_pair`); meta["clean_metric"] / ["corrupted_metric"] are the means over all pairs.
    """
    from ..toolkit.executors import as_run
    from ..toolkit.sweep import SweepFolder, content_digest

    run = as_run(run, progress=progress)
    rows = read_pairs(pairs)
    if not isinstance(metric, str) or metric not in METRICS:
        raise checks.fail("metric", f"one of {METRICS} (a per-pair metric by name)", metric)
    comps = check_grid(components, by)
    checks.integer(chunk, "chunk")
    checks.number(memory_mb, "memory_mb", positive=True)
    if direction not in ("denoise", "noise"):
        raise checks.fail("direction", "'denoise' (clean into corrupted) or 'noise'", direction)
    if path not in ("auto", "suffix", "full"):
        raise checks.fail("path", "'auto', 'suffix' or 'full'", path)
    foil = [r["foil"] for r in rows] if "foil" in rows[0] else None
    if foil is None and metric in ("logit_diff", "normalized"):
        raise ValueError(f"foil: metric {metric!r} needs a foil token in every pair")
    # every pair checked (single tokens, shared lengths, no degenerate pair) before anything is written
    check_degenerate(make_pairs(model, *([r[k] for r in rows] for k in KEYS[:3]), foil, align), metric)
    kw = {"components": comps, "by": by, "metric": metric, "direction": direction, "align": align, "path": path,
          "memory_mb": memory_mb, "skip_identical": skip_identical}
    items = [(i, {"pairs": rows[start:start + chunk], "kw": kw}) for i, start in enumerate(range(0, len(rows), chunk))]
    folder = None if out is None else SweepFolder(
        out, {"what": "patching over pairs", "model": model.name, "fingerprint": model.fingerprint,
              "pairs_sha256": content_digest(rows), "n_pairs": len(rows), "chunk": chunk,
              **{k: v for k, v in kw.items() if k != "align"}, "align": content_digest(align)},
        items="chunks", force=run.force)
    records = run.records(model, items, _chunk_item, folder, desc="patching pairs", unit="chunk")
    grids = {comp: _joined([LabelledArray.from_json(records[i][comp]) for i, _ in items], per_pair) for comp in comps}
    if folder is not None:
        folder.write_json("grids.json", {comp: g.to_json() for comp, g in grids.items()})
    return grids


def _joined(chunks: list[LabelledArray], per_pair: bool) -> LabelledArray:
    """Per-pair grids of consecutive chunks -> one grid over all pairs (their mean unless `per_pair`)."""
    values = np.concatenate([np.asarray(c.values, dtype=np.float32) for c in chunks])  # [n_pairs, ...]
    n = [c.meta["n_pairs"] for c in chunks]
    meta = {k: v for k, v in chunks[0].meta.items() if k not in ("engine", "top_predictions")}
    meta["n_pairs"] = int(sum(n))
    for key in ("clean_metric", "corrupted_metric"):  # chunk means, weighted by their pairs
        meta[key] = float(sum(c.meta[key] * k for c, k in zip(chunks, n)) / sum(n))
    coords = dict(chunks[0].coords)
    if per_pair:
        return LabelledArray(values, chunks[0].dims, {**coords, "pair": list(range(len(values)))}, chunks[0].name, meta)
    dims = chunks[0].dims[1:]
    return LabelledArray(values.mean(0), dims, {d: coords[d] for d in dims}, chunks[0].name, meta)


def _chunk_item(model: Model, p: dict) -> dict:
    """One chunk of `patch_pairs` (an executor's item): {component: its per-pair grid as JSON}."""
    rows = p["pairs"]
    res = activation_patching(model, *([r[k] for r in rows] for k in KEYS[:3]),
                              [r["foil"] for r in rows] if "foil" in rows[0] else None, per_pair=True, **p["kw"])
    return {comp: arr.to_json() for comp, arr in res.items()}
