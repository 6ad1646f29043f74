"""What exact and attribution patching share: prompt pairs, metrics, grid cells, patches, labelled grids.

Conventions (as in TransformerLens): "denoise" patches clean activations into the corrupted run;
"noise" patches corrupted activations into the clean run. Metrics are read at the last token.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import EngineStats, MetricFn, Patch, checked_metric, last_logits, run_patches
from ..core.model import Model
from ..toolkit.results import LabelledArray, token_labels
from ..core.sites import Site, parse_components
from ..core import checks

METRICS = ("logit_diff", "prob", "logprob", "kl", "normalized")
GRIDS = {"position": ("layer", "position"), "head": ("layer", "head"), "position_head": ("layer", "position", "head")}


@dataclass
class Pairs:
    """Clean and corrupted prompts tokenized, with answer and foil ids per pair."""

    clean: Tensor  # [n_pairs, clean_pos]
    corrupted: Tensor  # [n_pairs, corrupted_pos]
    answer: Tensor  # [n_pairs]
    foil: Tensor | None  # [n_pairs]
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    align: list[tuple[int, int]]  # (clean position, corrupted position) pairs that correspond

    @property
    def n(self) -> int:
        return self.clean.shape[0]


def _as_list(x, n: int | None, arg: str) -> list[str]:
    items = [x] if isinstance(x, str) else list(x) if isinstance(x, (list, tuple)) else None
    if not items or not all(isinstance(t, str) for t in items):
        raise checks.fail(arg, 'a string or a non-empty list of strings', x)
    if n is not None and len(items) == 1 and n > 1:
        items = items * n
    if n is not None and len(items) != n:
        raise checks.fail(arg, f'{n} entries (one per prompt pair)', len(items))
    return items


def _warn_leading_space(model: Model, prompts: list[str], texts: list[str], arg: str) -> None:
    """Warn when a token is given without its leading space where the spaced form is one token too: after a
    prompt the next word is almost always the spaced token, so the unspaced one is scored by mistake."""
    for p, t in zip(prompts, texts):
        if t[:1].isspace() or p[-1:].isspace():
            continue
        if len(model.tokenizer(" " + t, add_special_tokens=False).input_ids) == 1:
            warnings.warn(f"{arg}: {t!r} is scored as given, without a leading space; the word after a prompt is "
                          f"usually the spaced token {' ' + t!r} (also a single token). Pass {' ' + t!r} if that is meant.",
                          stacklevel=4)
            return


def check_degenerate(pairs: "Pairs", metric, *, same_prompts_ok: bool = False) -> None:
    """Refuse pairs whose metric cannot say anything: answer == foil (the logit difference is 0 whatever is
    patched) or a clean prompt identical to its corrupted one (every patch is a no-op; `same_prompts_ok` where
    the two runs differ otherwise, as in cross-model patching)."""
    if pairs.foil is not None and metric in ("logit_diff", "normalized"):
        checks.distinct_tokens(pairs.answer, pairs.foil, metric)
    if not same_prompts_ok and pairs.clean.shape == pairs.corrupted.shape:
        same = (pairs.clean == pairs.corrupted).all(1).nonzero()
        if len(same):
            i = int(same[0, 0])
            raise ValueError(f"corrupted: pair {i}: the corrupted prompt is identical to the clean one, so every "
                             "patch changes nothing (and metric='normalized' divides by 0); degenerate pair")


def make_pairs(model: Model, clean, corrupted, answer, foil=None, align=None) -> Pairs:
    """Tokenize prompt pairs. Clean prompts must share one length, corrupted prompts another; where the
    two lengths differ, `align` ({clean position: corrupted position}) says which positions correspond."""
    clean_l = _as_list(clean, None, "clean")
    corr_l = _as_list(corrupted, len(clean_l), "corrupted")
    answer_l = _as_list(answer, len(clean_l), "answer")
    foil_l = None if foil is None else _as_list(foil, len(clean_l), "foil")
    answers = [model.to_single_token(a, "answer") for a in answer_l]
    foils = None if foil is None else [model.to_single_token(f, "foil") for f in foil_l]
    _warn_leading_space(model, clean_l, answer_l, "answer")
    if foil_l is not None:
        _warn_leading_space(model, clean_l, foil_l, "foil")
    toks_c = [model.to_tokens(t)[0] for t in clean_l]
    toks_x = [model.to_tokens(t)[0] for t in corr_l]
    for arg, toks in (("clean", toks_c), ("corrupted", toks_x)):
        for i, t in enumerate(toks):
            if len(t) != len(toks[0]):
                raise ValueError(f"{arg}: prompt {i} has {len(t)} tokens but prompt 0 has {len(toks[0])}; "
                                 "batched pairs must share their lengths")
    Tc, Tx = len(toks_c[0]), len(toks_x[0])
    if align is None:
        if Tc != Tx:
            raise ValueError(
                f"corrupted: tokenizes to {Tx} tokens but clean to {Tc}, so positions do not line up: "
                f"{model.to_str_tokens(clean_l[0])} vs {model.to_str_tokens(corr_l[0])}; pass "
                "align={clean position: corrupted position} for the positions that correspond"
            )
        pairs_pos = [(i, i) for i in range(Tc)]
    else:
        if not isinstance(align, dict) or not align:
            raise checks.fail("align", "a non-empty dict {clean position: corrupted position}", align)
        for c, x in align.items():
            if not (checks.is_int(c) and 0 <= c < Tc and checks.is_int(x) and 0 <= x < Tx):
                raise ValueError(f"align: ({c}, {x}) out of range; clean positions 0..{Tc - 1}, corrupted 0..{Tx - 1}")
        pairs_pos = sorted(align.items())
    dev = model.device
    return Pairs(
        torch.stack(toks_c), torch.stack(toks_x), torch.tensor(answers, device=dev),
        None if foils is None else torch.tensor(foils, device=dev),
        model.to_str_tokens(clean_l[0]), model.to_str_tokens(corr_l[0]), pairs_pos,
    )


def metric_fn(metric: str | MetricFn, pairs: Pairs, clean_logits: Tensor, corrupted_logits: Tensor) -> MetricFn:
    """A batched metric on last-token logits: (logits [n, d_vocab], pair index [n]) -> [n].

    Built-ins: logit_diff (answer - foil), prob and logprob of the answer, kl (KL(clean || patched)),
    normalized ((logit_diff - corrupted) / (clean - corrupted)).
    """
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise checks.fail('metric', f'one of {METRICS} or a callable', metric)
    if metric in ("logit_diff", "normalized") and pairs.foil is None:
        raise ValueError(f"foil: metric {metric!r} needs a foil token")

    def logit_diff(logits, idx):
        return logits.gather(1, pairs.answer[idx, None])[:, 0] - logits.gather(1, pairs.foil[idx, None])[:, 0]

    if metric == "logit_diff":
        return logit_diff
    if metric == "prob":
        return lambda logits, idx: logits.softmax(-1).gather(1, pairs.answer[idx, None])[:, 0]
    if metric == "logprob":
        return lambda logits, idx: logits.log_softmax(-1).gather(1, pairs.answer[idx, None])[:, 0]
    if metric == "kl":
        clean_logp = clean_logits.log_softmax(-1)
        return lambda logits, idx: F.kl_div(logits.log_softmax(-1), clean_logp[idx], log_target=True,
                                            reduction="none").sum(-1)
    all_idx = torch.arange(pairs.n, device=clean_logits.device)
    clean_ld, corr_ld = logit_diff(clean_logits, all_idx), logit_diff(corrupted_logits, all_idx)
    zero = ((clean_ld - corr_ld).abs() <= 1e-6 * clean_ld.abs().clamp_min(1.0)).nonzero()
    if len(zero):
        i = int(zero[0, 0])
        raise ValueError(f"metric: 'normalized' divides by the clean minus the corrupted logit difference, which is 0 "
                         f"for pair {i} (both runs give {clean_ld[i].item():.4g}); degenerate pair, use metric='logit_diff'")
    return lambda logits, idx: (logit_diff(logits, idx) - corr_ld[idx]) / (clean_ld[idx] - corr_ld[idx])


@dataclass
class Setup:
    """Everything a sweep needs from the two baseline runs."""

    pairs: Pairs
    sites: list[Site]
    source: dict[str, Tensor]  # cache of the run patched from
    target: dict[str, Tensor]  # cache of the run patched into
    target_ids: Tensor
    target_pos: list[int]  # grid positions, in the target run
    source_pos: list[int]  # the corresponding source positions
    fn: MetricFn
    clean_metric: Tensor  # [n_pairs]
    corrupted_metric: Tensor
    target_metric: Tensor
    target_logits: Tensor  # [n_pairs, d_vocab] at the last token of the run patched into, float32


def prepare(model: Model, clean, corrupted, answer, foil, comps, metric, direction, align=None, grad=False) -> Setup:
    if direction not in ("denoise", "noise"):
        raise checks.fail('direction', "'denoise' (clean into corrupted) or 'noise'", direction)
    pairs = make_pairs(model, clean, corrupted, answer, foil, align)
    check_degenerate(pairs, metric)
    if not callable(metric) and metric not in METRICS:
        raise checks.fail('metric', f'one of {METRICS} or a callable', metric)
    if metric in ("logit_diff", "normalized") and pairs.foil is None:
        raise ValueError(f"foil: metric {metric!r} needs a foil token")
    sites = [Site(l, c) for c in comps for l in range(model.dims.n_layers)]
    with torch.no_grad():
        # last-position logits in float32 whatever the model's dtype, as the engine computes them
        clean_logits, clean_cache = last_logits(model, pairs.clean, sites=sites)
        corr_logits, corr_cache = last_logits(model, pairs.corrupted, sites=sites)
    fn = metric_fn(metric, pairs, clean_logits, corr_logits)
    idx = torch.arange(pairs.n, device=model.device)
    clean_metric = checked_metric(fn(clean_logits, idx), pairs.n)
    corr_metric = checked_metric(fn(corr_logits, idx), pairs.n)
    c_pos, x_pos = [c for c, _ in pairs.align], [x for _, x in pairs.align]
    if direction == "denoise":
        return Setup(pairs, sites, clean_cache, corr_cache, pairs.corrupted, x_pos, c_pos, fn, clean_metric, corr_metric,
                     corr_metric, corr_logits)
    return Setup(pairs, sites, corr_cache, clean_cache, pairs.clean, c_pos, x_pos, fn, clean_metric, corr_metric,
                 clean_metric, clean_logits)


def check_grid(components, by: str) -> list[str]:
    """The checked component list for a grid `by` position, head or position_head."""
    comps = parse_components(components)
    if "pattern" in comps:  # a pattern cell is a whole [query, key] row block, not a (position, width) cell
        raise ValueError("components: 'pattern' is not a grid component; patch attention patterns with "
                         "wb.Replace('blocks.L.attn.hook_pattern', heads=..., positions=<queries>, value=...)")
    if by not in GRIDS:
        raise checks.fail('by', f'one of {sorted(GRIDS)}', by)
    if by != "position" and comps != ["z"]:
        raise ValueError(f"by: {by!r} patches heads, which needs components='z', got {comps}")
    return comps


def grid_cells(by: str, n_layers: int, n_pos: int, n_heads: int):
    """(layer, grid position index or None for all, head or None), row-major over the grid."""
    if by == "position":
        return [(l, p, None) for l in range(n_layers) for p in range(n_pos)]
    if by == "head":
        return [(l, None, h) for l in range(n_layers) for h in range(n_heads)]
    return [(l, p, h) for l in range(n_layers) for p in range(n_pos) for h in range(n_heads)]


def patches_for(setup: Setup, comp: str, cells, skip_identical: bool) -> tuple[list[Patch], list[tuple[int, int]]]:
    """The patches of a grid, leaving out those that provably change nothing (source == target bit for bit)."""
    n = setup.pairs.n
    src_pos = torch.tensor(setup.source_pos)
    tgt_pos = torch.tensor(setup.target_pos)
    patches, where = [], []
    same_cache = {}
    for layer in {c[0] for c in cells}:
        name = Site(layer, comp).name
        src = setup.source[name][:, src_pos.to(setup.source[name].device)]
        tgt = setup.target[name][:, tgt_pos.to(setup.target[name].device)]
        # [n_pairs, grid_pos] or [n_pairs, grid_pos, heads]: one host sync per layer, none per patch
        same_cache[layer] = ((src == tgt).flatten(3 if comp == "z" else 2).all(-1)).cpu() if skip_identical else None
    for ci, (layer, p, h) in enumerate(cells):
        name = Site(layer, comp).name
        for pair in range(n):
            if skip_identical:
                same = same_cache[layer][pair]
                if p is not None:
                    same = same[p]
                if h is not None and comp == "z":
                    same = same[..., h]
                if bool(same.all()):
                    continue
            value = setup.source[name][pair]
            if p is None:
                value, positions = value[src_pos], list(setup.target_pos)
            else:
                value, positions = value[setup.source_pos[p]:setup.source_pos[p] + 1], [setup.target_pos[p]]
            if h is not None:
                value = value[:, h:h + 1]
            patches.append(Patch.at(pair, Site(layer, comp), positions, None if h is None else [h], value))
            where.append((pair, ci))
    return patches, where


def run_grid(model: Model, setup: Setup, comp: str, cells, *, top_k: int = 0, skip_identical: bool = True,
             **engine) -> tuple[Tensor, Tensor | None, EngineStats]:
    """Every cell of one component's grid through the engine: the metric [n_pairs, n_cells] and, with `top_k`,
    each patched run's top-k next tokens [n_pairs, n_cells, 2, top_k] (probabilities, token ids). Patches left
    out by `skip_identical` get the target run's own values."""
    patches, where = patches_for(setup, comp, cells, skip_identical)
    def with_top_k(logits, idx):  # the metric, then the top-k probabilities, then their ids (exact in float32)
        top = logits.softmax(-1).topk(top_k, -1)
        return torch.cat([setup.fn(logits, idx)[:, None], top.values, top.indices.float()], 1)
    fn = with_top_k if top_k else setup.fn
    vals, stats = run_patches(model, setup.target_ids, patches, fn, **engine)
    own = fn(setup.target_logits, torch.arange(setup.pairs.n, device=setup.target_logits.device))
    grid = own[:, None].repeat(1, len(cells), *([1] * (own.ndim - 1)))  # [n_pairs, n_cells(, 1 + 2k)]
    if where:
        pair_idx = torch.tensor([w[0] for w in where], device=grid.device)
        cell_idx = torch.tensor([w[1] for w in where], device=grid.device)
        grid[pair_idx, cell_idx] = vals.to(grid.device, grid.dtype)
    if not top_k:
        return grid, None, stats
    return grid[..., 0], grid[..., 1:].unflatten(-1, (2, top_k)), stats


def labelled_grid(grid: Tensor, setup: Setup, comp, by, metric, direction, stats: EngineStats | None, per_pair, L, H,
                  top: Tensor | None = None, tokenizer=None):
    """Shape a [n_pairs, n_cells] tensor into a LabelledArray of the grid; `top` [n_pairs, n_cells, 2, k] (the
    patched runs' top predictions, see `run_grid`) goes into meta["top_predictions"] for the first pair."""
    pairs = setup.pairs
    P = len(setup.target_pos)
    target_tokens = pairs.corrupted_tokens if direction == "denoise" else pairs.clean_tokens
    shape = {"position": (L, P), "head": (L, H), "position_head": (L, P, H)}[by]
    dims = GRIDS[by]
    values = grid.reshape(pairs.n, *shape)
    coords = {"layer": list(range(L)), "head": list(range(H)),
              "position": token_labels([target_tokens[p] for p in setup.target_pos], setup.target_pos)}
    if per_pair:
        dims, coords = ("pair", *dims), {**coords, "pair": list(range(pairs.n))}
    else:
        values = values.mean(0)
    meta = {"component": comp, "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
            "direction": direction, "clean_metric": setup.clean_metric.mean().item(),
            "corrupted_metric": setup.corrupted_metric.mean().item(), "tokens": target_tokens, "n_pairs": pairs.n}
    if top is not None:
        ids = top[0, :, 1].long().tolist()
        meta["top_predictions"] = {"pair": 0, "k": top.shape[-1], "probs": top[0, :, 0].tolist(),
                                   "tokens": [[tokenizer.decode([i]) for i in row] for row in ids]}
    if stats is not None:
        meta["engine"] = {"path": stats.path, "calls": stats.calls, "token_layers": stats.token_layers,
                          "padding": stats.padding, "notes": stats.notes}
    return LabelledArray(values.detach().float().cpu().numpy(), dims, {d: coords[d] for d in dims},
                         name=f"{comp} patching ({direction})", meta=meta)
