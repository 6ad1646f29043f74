"""Activation patching: exact sweeps over layers x positions (x heads), batched.

Conventions (as in TransformerLens): "denoise" patches clean activations into the corrupted
run; "noise" patches corrupted activations into the clean run. Metrics are read at the last
token of each prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .interventions import Replace
from .models import Model
from .results import LabelledArray
from .sites import Site, parse_components

METRICS = ("logit_diff", "prob", "logprob", "kl", "normalized")
MetricFn = Callable[[Tensor, Tensor], Tensor]  # (last-token logits [n, d_vocab], pair index [n]) -> [n]


@dataclass
class Pairs:
    """Clean and corrupted prompts tokenized together, with answer and foil ids per pair."""

    clean: Tensor  # [n_pairs, pos]
    corrupted: Tensor  # [n_pairs, pos]
    answer: Tensor  # [n_pairs]
    foil: Tensor | None  # [n_pairs]
    str_tokens: list[str]

    @property
    def n(self) -> int:
        return self.clean.shape[0]


def _as_list(x, n: int | None, arg: str) -> list[str]:
    items = [x] if isinstance(x, str) else list(x)
    if not items or not all(isinstance(t, str) for t in items):
        raise ValueError(f"{arg}: expected a string or a non-empty list of strings")
    if n is not None and len(items) == 1 and n > 1:
        items = items * n
    if n is not None and len(items) != n:
        raise ValueError(f"{arg}: expected {n} entries (one per prompt pair), got {len(items)}")
    return items


def make_pairs(model: Model, clean, corrupted, answer, foil=None) -> Pairs:
    """Tokenize prompt pairs; every prompt must have the same number of tokens."""
    clean_l = _as_list(clean, None, "clean")
    corr_l = _as_list(corrupted, len(clean_l), "corrupted")
    answers = [model.to_single_token(a, "answer") for a in _as_list(answer, len(clean_l), "answer")]
    foils = None if foil is None else [model.to_single_token(f, "foil") for f in _as_list(foil, len(clean_l), "foil")]
    toks_c = [model.to_tokens(t)[0] for t in clean_l]
    toks_x = [model.to_tokens(t)[0] for t in corr_l]
    n_pos = len(toks_c[0])
    for i, (c, x) in enumerate(zip(toks_c, toks_x)):
        if len(c) != len(x):
            raise ValueError(
                f"corrupted: pair {i} tokenizes to {len(x)} tokens but its clean prompt to {len(c)}; "
                f"patching needs aligned positions: {model.to_str_tokens(clean_l[i])} vs {model.to_str_tokens(corr_l[i])}"
            )
        if len(c) != n_pos:
            raise ValueError(f"clean: pair {i} has {len(c)} tokens but pair 0 has {n_pos}; use pairs of equal length")
    dev = model.device
    return Pairs(
        torch.stack(toks_c), torch.stack(toks_x), torch.tensor(answers, device=dev),
        None if foils is None else torch.tensor(foils, device=dev), model.to_str_tokens(clean_l[0]),
    )


def metric_fn(metric: str | MetricFn, pairs: Pairs, clean_logits: Tensor, corrupted_logits: Tensor) -> MetricFn:
    """A batched metric on last-token logits. Built-ins: logit_diff, prob, logprob, kl, normalized."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS} or a callable, got {metric!r}")
    if metric in ("logit_diff", "normalized") and pairs.foil is None:
        raise ValueError(f"foil: metric {metric!r} needs a foil token")

    def logit_diff(logits, idx):
        ans, foil = pairs.answer[idx], pairs.foil[idx]
        return logits.gather(1, ans[:, None])[:, 0] - logits.gather(1, foil[:, None])[:, 0]

    if metric == "logit_diff":
        return logit_diff
    if metric == "prob":
        return lambda logits, idx: logits.softmax(-1).gather(1, pairs.answer[idx, None])[:, 0]
    if metric == "logprob":
        return lambda logits, idx: logits.log_softmax(-1).gather(1, pairs.answer[idx, None])[:, 0]
    if metric == "kl":
        clean_logp = clean_logits.log_softmax(-1)
        return lambda logits, idx: F.kl_div(logits.log_softmax(-1), clean_logp[idx], log_target=True, reduction="none").sum(-1)
    all_idx = torch.arange(pairs.n, device=clean_logits.device)
    clean_ld, corr_ld = logit_diff(clean_logits, all_idx), logit_diff(corrupted_logits, all_idx)
    return lambda logits, idx: (logit_diff(logits, idx) - corr_ld[idx]) / (clean_ld[idx] - corr_ld[idx])


def _check_metric_out(out: Tensor, n: int) -> Tensor:
    if not isinstance(out, Tensor) or out.shape != (n,):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"metric: must return a tensor of shape [{n}] (one value per row), got {got}")
    return out


def activation_patching(
    model: Model, clean, corrupted, answer, foil=None, *, components: str | Sequence[str] = "resid_pre",
    by: str = "position", metric: str | MetricFn = "logit_diff", direction: str = "denoise",
    batch_size: int = 64, per_pair: bool = False, progress: bool = False,
) -> dict[str, LabelledArray]:
    """Exact activation patching of every (layer, position), (layer, head) or (layer, position, head).

    Returns {component: LabelledArray} with dims (layer, position), (layer, head) or
    (layer, position, head), averaged over prompt pairs (or with a leading `pair` axis if
    `per_pair`). `by` other than "position" applies to component "z" (per-head outputs).
    `meta` holds clean_metric and corrupted_metric.
    """
    comps = parse_components(components)
    if by not in ("position", "head", "position_head"):
        raise ValueError(f"by: expected 'position', 'head' or 'position_head', got {by!r}")
    if by != "position" and comps != ["z"]:
        raise ValueError(f"by: {by!r} patches heads, which needs components='z', got {comps}")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction: expected 'denoise' (clean into corrupted) or 'noise', got {direction!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    pairs = make_pairs(model, clean, corrupted, answer, foil)
    L, P, H = model.dims.n_layers, pairs.clean.shape[1], model.dims.n_heads

    sites = [Site(l, c) for c in comps for l in range(L)]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(pairs.clean, sites)
        corr_logits, corr_cache = model.run_with_cache(pairs.corrupted, sites)
    clean_last, corr_last = clean_logits[:, -1], corr_logits[:, -1]
    fn = metric_fn(metric, pairs, clean_last, corr_last)
    all_idx = torch.arange(pairs.n, device=model.device)
    clean_metric = _check_metric_out(fn(clean_last, all_idx), pairs.n)
    corr_metric = _check_metric_out(fn(corr_last, all_idx), pairs.n)
    source, target = (clean_cache, pairs.corrupted) if direction == "denoise" else (corr_cache, pairs.clean)

    results = {}
    for comp in comps:
        cells = _cells(comp, by, L, P, H)
        values = patch_cells(model, comp, cells, source, target, fn, batch_size, progress)  # [n_pairs, n_cells]
        shape = {"position": (L, P), "head": (L, H), "position_head": (L, P, H)}[by]
        dims = {"position": ("layer", "position"), "head": ("layer", "head"),
                "position_head": ("layer", "position", "head")}[by]
        values = values.reshape(pairs.n, *shape)
        coords = {"layer": list(range(L)), "head": list(range(H)),
                  "position": [f"{i}:{t}" for i, t in enumerate(pairs.str_tokens)]}
        if per_pair:
            dims, coords = ("pair", *dims), {**coords, "pair": list(range(pairs.n))}
        else:
            values = values.mean(0)
        results[comp] = LabelledArray(
            values.cpu().numpy(), dims, {d: coords[d] for d in dims}, name=f"{comp} patching ({direction})",
            meta={"component": comp, "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
                  "direction": direction, "clean_metric": clean_metric.mean().item(),
                  "corrupted_metric": corr_metric.mean().item(), "tokens": pairs.str_tokens, "n_pairs": pairs.n},
        )
    return results


def _cells(comp: str, by: str, L: int, P: int, H: int) -> list[tuple[int, int | None, int | None]]:
    """(layer, position or None for all, head or None) for every cell of the grid, row-major."""
    if by == "position":
        return [(l, p, None) for l in range(L) for p in range(P)]
    if by == "head":
        return [(l, None, h) for l in range(L) for h in range(H)]
    return [(l, p, h) for l in range(L) for p in range(P) for h in range(H)]


def patch_cells(model: Model, comp: str, cells, source: dict, target: Tensor, fn: MetricFn,
                batch_size: int, progress: bool = False) -> Tensor:
    """Metric after each single-cell patch, [n_pairs, n_cells]; many patches per forward (batched full forwards)."""
    n_pairs = target.shape[0]
    jobs = [(pair, c) for c in range(len(cells)) for pair in range(n_pairs)]
    out = torch.empty(n_pairs, len(cells), device=model.device)
    with torch.no_grad():
        for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc=f"patching {comp}"):
            chunk = jobs[start:start + batch_size]
            pair_idx = torch.tensor([p for p, _ in chunk], device=model.device)
            ivs = []
            for row, (pair, c) in enumerate(chunk):
                layer, pos, head = cells[c]
                site = Site(layer, comp)
                value = source[site.name][pair]
                value = value if pos is None else value[pos:pos + 1]
                value = value if head is None else value[:, head:head + 1]
                ivs.append(Replace(site, rows=row, positions=pos, heads=head, value=value[None]))
            logits = model.run_with_interventions(target[pair_idx], ivs)[:, -1]
            vals = _check_metric_out(fn(logits, pair_idx), len(chunk))
            out[pair_idx, torch.tensor([c for _, c in chunk], device=model.device)] = vals
    return out
