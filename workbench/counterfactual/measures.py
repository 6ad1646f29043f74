"""Side-effect measures of counterfactual strings, per pair and aggregated (Ravfogel et al., section 5):
identical fraction, normalised longest common prefix (tokens), normalised character edit distance, and a
targeted-effect check (the new object appears, the old one does not); and the exact Gumbel-max coupling of two
next-token distributions (`gumbel_keep`, `gumbel_agreement`): the first-token agreement an intervention of a given
strength must give, whatever the code that decodes it."""
from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Sequence

import torch
from torch import Tensor

from ..core import checks
from ..core.io import atomic_write_text, dumps_json, write_json


def gumbel_keep(p: Tensor, q: Tensor) -> Tensor:
    """P(the intervened model keeps token x | the base model chose x) under shared Gumbel noise, for every x, [..., V]:

        keep_x = 1 / sum_j max(p_j, q_j p_x / q_x)          (exact; 0 where q_x = 0)

    p, q [..., V]: the base and intervened next-token probabilities. Ranking the tokens by r_j = log p_j - log q_j,
    the max is p_j for r_j >= r_x and q_j p_x / q_x below it (ties give the same term either way), so the sum is
    A_x + p_x B_x / q_x with A_x = sum_{r_j >= r_x} p_j and B_x = sum_{r_j < r_x} q_j: one sort, O(V log V), float64.
    """
    if p.shape != q.shape:
        raise checks.fail("p, q", "two distributions of the same shape", (tuple(p.shape), tuple(q.shape)))
    p, q = p.double(), q.double()
    r = (p.log() - q.log()).nan_to_num(nan=0.0)  # p_j = q_j = 0: adds nothing to either sum
    order = r.argsort(dim=-1, descending=True, stable=True)
    ps, qs = p.gather(-1, order), q.gather(-1, order)
    A = ps.cumsum(-1)                                # sum of p_j ranked at or above x
    B = qs.flip(-1).cumsum(-1).flip(-1) - qs         # sum of q_j ranked below x
    keep = (qs / (qs * A + ps * B)).nan_to_num(nan=0.0, posinf=0.0)  # = 1 / (A + p_x B / q_x)
    return torch.zeros_like(keep).scatter(-1, order, keep)


def gumbel_agreement(p: Tensor, q: Tensor) -> Tensor:
    """P(base and intervened models choose the same token) under shared Gumbel noise, [...]:

        sum_x 1 / sum_j max(p_j / p_x, q_j / q_x)  =  sum_x p_x keep_x      (exact; see `gumbel_keep`)

    It is also the expected first-token agreement of hindsight counterfactuals (the base token x drawn from p,
    kept with probability keep_x), so a measured rate far from it is an error in the code, not the intervention.
    """
    return (p.double() * gumbel_keep(p, q)).sum(-1)


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions; one row of the DP table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def pair_measures(observed_ids, cf_ids, observed: str, cf: str, new: str | None = None,
                  old: str | None = None) -> dict:
    """identical; prefix = common token prefix / longer length; edit = character edit distance / longer length;
    with `new`/`old` (an edit's new and old object): new_appears, old_absent, targeted (both)."""
    longest = max(len(observed_ids), len(cf_ids), 1)
    chars = max(len(observed), len(cf), 1)
    row = {"identical": list(observed_ids) == list(cf_ids),
           "prefix": common_prefix(observed_ids, cf_ids) / longest,
           "edit": edit_distance(observed, cf) / chars}
    if new is not None:
        row["new_appears"] = new in cf
    if old is not None:
        row["old_absent"] = old not in cf
    if new is not None and old is not None:
        row["targeted"] = row["new_appears"] and row["old_absent"]
    return row


def measure(result, new: str | Sequence[str] | None = None, old: str | Sequence[str] | None = None):
    """A DataFrame with one row per pair: prompt, observed, counterfactual, diverged_at and the measures.
    `new`/`old`: one string for all rows or one per row (targeted effect of an edit)."""
    import pandas as pd

    n = len(result.ids)
    news = [new] * n if new is None or isinstance(new, str) else list(new)
    olds = [old] * n if old is None or isinstance(old, str) else list(old)
    if len(news) != n or len(olds) != n:
        raise ValueError(f"new/old: expected one string or {n} strings")
    rows = [pair_measures(a, b, x, y, nw, od) for a, b, x, y, nw, od in
            zip(result.observed_ids, result.ids, result.observed, result.texts, news, olds)]
    return pd.concat([result.to_dataframe(), pd.DataFrame(rows)], axis=1)


def summarize(df) -> dict:
    """Aggregates: n, identical fraction, median prefix (all pairs, diverging pairs), mean edit distance,
    targeted-effect rate (where measured)."""
    div = df[~df["identical"]]
    out = {"n": int(len(df)), "identical": float(df["identical"].mean()),
           "median_prefix": float(median(df["prefix"])),
           "median_prefix_diverging": float(median(div["prefix"])) if len(div) else None,
           "mean_edit": float(df["edit"].mean())}
    for k in ("new_appears", "old_absent", "targeted"):
        if k in df:
            out[k] = float(df[k].mean())
    return out


def save(folder: str | Path, df, meta: dict | None = None) -> Path:
    """Write pairs.csv, pairs.jsonl and summary.json (with `meta`) into `folder`, each atomically."""
    folder = Path(folder)
    atomic_write_text(folder / "pairs.csv", df.to_csv(index=False))
    atomic_write_text(folder / "pairs.jsonl", "".join(dumps_json(r) + "\n" for r in df.to_dict("records")))
    write_json(folder / "summary.json", {**summarize(df), "meta": meta or {}}, indent=2, default=str)
    return folder
