"""Counterfactual strings: how an observed continuation would have read under an intervention, with the same
sampling noise (Ravfogel et al., ICLR 2025), and token-level counterfactuals (Chatzi et al.).

For each observed (prompt, continuation): infer the noise that produced it under the original model
(`hindsight`), then decode under the intervention with that noise, position by position.

What happens after the two strings diverge: the noise is indexed by position in the continuation and
reused position by position, also after the counterfactual has taken another token (as the paper does):
the noise of position t is the exogenous randomness of the t-th sampling step, whatever came before it.
Positions beyond the observed length (a counterfactual that goes on where the observation stopped) have
no observation, so their posterior is the prior: they get fresh Gumbel(0, 1) noise, seeded per row and
position, so results are reproducible. By default a counterfactual is as long as its observed string
(or shorter, if it samples a stop token), so that the two are compared over the same span.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.interventions import Intervention
from ..toolkit.results import Result
from ..core.model import Model
from .gumbel import (FRESH, GivenNoise, PriorNoise, Samples, Settings, _hindsight, _texts, allowed, gumbel_decode,
                     scaled_logits, token_rows)
from .measures import gumbel_agreement, gumbel_keep
from ..core import checks


def check_same_vocabulary(model: Model, other: Model, arg: str = "intervention") -> None:
    """Refuse a second model whose vocabulary or tokenizer differs from `model`'s (both named)."""
    if other.dims.d_vocab != model.dims.d_vocab or len(other.tokenizer) != len(model.tokenizer):
        raise ValueError(f"{arg}: model {other.name!r} has a vocabulary of {other.dims.d_vocab} "
                         f"(tokenizer {len(other.tokenizer)}), model {model.name!r} has {model.dims.d_vocab} "
                         f"(tokenizer {len(model.tokenizer)}); counterfactuals need one tokenizer")
    if other.tokenizer is not model.tokenizer and other.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise ValueError(f"{arg}: model {other.name!r} and model {model.name!r} have different tokenizers "
                         "(same size, other tokens); counterfactuals need one tokenizer")


def describe(intervention) -> str:
    from ..editing.weights import WeightEdit

    if intervention is None or (isinstance(intervention, (list, tuple)) and not intervention):
        return "none"
    if isinstance(intervention, Model):
        return f"model {intervention.name}"
    if isinstance(intervention, WeightEdit):
        return f"weight edit ({intervention.meta.get('method', '?')}, layers {sorted(intervention.deltas)})"
    return "interventions: " + ", ".join(f"{type(iv).__name__}@{iv.site}" for iv in intervention)


def _check_intervention(model, intervention):
    from ..editing.weights import WeightEdit

    if intervention is None:
        return []
    if isinstance(intervention, Model):
        check_same_vocabulary(model, intervention)
        return intervention
    if isinstance(intervention, WeightEdit):
        intervention.validate(model)
        return intervention
    if isinstance(intervention, (list, tuple)) and all(isinstance(iv, Intervention) for iv in intervention):
        return list(intervention)
    raise checks.fail('intervention',
                      'None, a list of Interventions (Add, ProjectOut, Replace, ...), a WeightEdit or a second Model',
                      type(intervention).__name__)


@contextmanager
def _intervened(model, intervention, first: bool):
    """(runner, interventions) for the body: a weight edit is applied (checked on the first batch only)
    and restored bit-exactly on exit."""
    from ..editing.weights import WeightEdit

    if isinstance(intervention, WeightEdit):
        with intervention.applied(model, check=first):
            yield model, []
    elif isinstance(intervention, Model):
        yield intervention, []
    else:
        yield model, intervention


@dataclass
class Counterfactuals(Result):
    """Observed continuations and their counterfactuals, row by row (token ids include a sampled stop token).

    `diverged_at[r]`: first continuation position where the two differ (None if identical).
    `save(folder)` writes the rows (counterfactuals.json, read back by `Counterfactuals.load(folder)`) and their
    measures (pairs.csv, pairs.jsonl, summary.json; see `counterfactual.measures`).
    """

    prompts: list[str]
    observed_ids: list[list[int]]
    ids: list[list[int]]
    observed: list[str]
    texts: list[str]
    diverged_at: list[int | None]
    settings: Settings
    meta: dict = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "observed": self.observed, "counterfactual": self.texts,
                             "diverged_at": self.diverged_at})

    FIELDS = ("prompts", "observed_ids", "ids", "observed", "texts", "diverged_at")

    def to_json(self) -> dict:
        return {**{f: getattr(self, f) for f in self.FIELDS}, "settings": vars(self.settings), "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "Counterfactuals":
        return cls(**{f: d[f] for f in cls.FIELDS}, settings=Settings(**d["settings"]), meta=d.get("meta", {}))

    def save(self, folder, *, new=None, old=None, meta: dict | None = None):
        """Write `folder`/counterfactuals.json (this object) and the measures of its pairs (`new` / `old`: the
        targeted effect's texts) as pairs.csv, pairs.jsonl and summary.json (with `meta`), each atomically."""
        from pathlib import Path

        from ..core.io import atomic_write_text
        from .measures import measure, save

        folder = Path(folder)
        atomic_write_text(folder / "counterfactuals.json", json.dumps(self.to_json(), default=str))
        return save(folder, measure(self, new=new, old=old), {**self.meta, **(meta or {})})

    @classmethod
    def load(cls, folder) -> "Counterfactuals":
        """The rows a `save(folder)` wrote (or a counterfactuals.json file)."""
        from pathlib import Path

        path = Path(folder)
        return super().load(path / "counterfactuals.json" if path.is_dir() else path)


def _settings(continuations, temperature, top_k, top_p) -> Settings:
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    if isinstance(continuations, Samples):
        s = continuations.settings
        for k, v in given.items():
            if v is not None and v != getattr(s, k):
                raise ValueError(f"{k}: the observed strings were sampled with {k}={getattr(s, k)}, got {v}")
        return s
    defaults = Settings()
    return Settings(*(getattr(defaults, k) if v is None else v for k, v in given.items()))


def _replacement(model, replace, n: int) -> list:
    """None or one (position, token) for every row, or a list of them (one per row); token: id or one-token text."""
    if replace is None:
        return [None] * n
    items = replace if isinstance(replace, list) else [replace] * n
    if len(items) != n:
        raise checks.fail('replace', f'one (position, token) per row ({n})', len(items))
    out = []
    for i, it in enumerate(items):
        arg = f"replace[{i}]" if isinstance(replace, list) else "replace"
        if not (isinstance(it, tuple) and len(it) == 2):
            raise checks.fail(arg, "(position, token id or one-token text)", it)
        pos, tok = checks.position(it[0], f"{arg} position"), it[1]
        tok = model.to_single_token(tok, arg) if isinstance(tok, str) else tok
        checks.integer(tok, f"{arg} token", 0, model.dims.d_vocab - 1)
        out.append((pos, tok))
    return out


def _diverged(a: list[int], b: list[int]) -> int | None:
    for t, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return t
    return None if len(a) == len(b) else min(len(a), len(b))


def counterfactuals(model: Model, prompts, continuations, intervention=None, *, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                    max_new_tokens: int | None = None, replace=None, noise: str = "posterior",
                    batch_size: int = 16, margin: float = 1e-3) -> Counterfactuals:
    """Counterfactuals of observed continuations under `intervention`, with the noise inferred in hindsight.

    prompts: strings or token-id lists [n]. continuations: strings / token-id lists [n], or `Samples` (then the
    prompts and settings are the samples' and other settings are refused). intervention: None, a list of site
    interventions (steering `Add`, `ProjectOut`, patching `Replace`, ...), a `WeightEdit` (applied per batch,
    restored bit-exactly) or a second `Model` with the same tokenizer.
    replace: (position, token) for a token-level counterfactual (Chatzi et al.): position counts over prompt +
    continuation tokens; the string is kept up to it, the token replaced, and decoding continues with the same
    noise. noise: "posterior" (hindsight; the counterfactual) or "fresh" (the interventional baseline: new
    prior noise, seeded with the row's seed, as if sampled again).
    max_new_tokens: length of each counterfactual; default the observed length (positions beyond it get fresh
    prior noise; see the module docstring).
    """
    settings = _settings(continuations, temperature, top_k, top_p)
    if noise not in ("posterior", "fresh"):
        raise checks.fail('noise', "'posterior' or 'fresh'", noise)
    if isinstance(continuations, Samples):
        p_rows, c_rows = continuations.prompt_ids, continuations.ids
        if prompts is not None and token_rows(model, prompts, "prompts", special=True) != p_rows:
            raise ValueError("prompts: differ from the prompts the samples were drawn from (pass None)")
    else:
        p_rows = token_rows(model, prompts, "prompts", special=True)
        c_rows = token_rows(model, continuations, "continuations", special=False)
    if len(p_rows) != len(c_rows):
        raise checks.fail('continuations', f'one per prompt ({len(p_rows)})', len(c_rows))
    checks.integer(max_new_tokens, "max_new_tokens", none_ok=True)
    checks.integer(batch_size, "batch_size")
    intervention = _check_intervention(model, intervention)
    repl = _replacement(model, replace, len(p_rows))
    V = model.dims.d_vocab
    prefixes, offsets, forced, budget = [], [], [], []
    for r, (p, c, rp) in enumerate(zip(p_rows, c_rows, repl)):
        n_new = len(c) if max_new_tokens is None else max_new_tokens
        if rp is None:
            prefixes.append(p), offsets.append(0), forced.append([])
        else:
            pos, tok = rp
            if not 0 <= pos < len(p) + len(c):
                raise ValueError(f"replace: position {pos} is outside row {r}'s {len(p)} prompt + {len(c)} "
                                 "continuation tokens")
            if pos < len(p):
                prefixes.append(p[:pos] + [tok] + p[pos + 1:]), offsets.append(0), forced.append([])
            else:
                k = pos - len(p)
                f = c[:k] + [tok]
                prefixes.append(p + f), offsets.append(k + 1), forced.append(f)
        budget.append(max(0, n_new - len(forced[-1])))
    seeds = [seed + r for r in range(len(p_rows))]
    out_ids: list[list[int]] = []
    for start in range(0, len(p_rows), batch_size):
        rows = list(range(start, min(len(p_rows), start + batch_size)))
        fresh = PriorNoise([seeds[r] for r in rows], V, FRESH)
        if noise == "posterior":
            inferred = _hindsight(model, [p_rows[r] for r in rows], [c_rows[r] for r in rows], settings,
                                  [seeds[r] for r in rows], len(rows), margin)
            source = GivenNoise(inferred, fresh)
        else:
            source = fresh
        with _intervened(model, intervention, first=start == 0) as (runner, ivs):
            new = gumbel_decode(model, [prefixes[r] for r in rows], source, settings,
                                max_new_tokens=[budget[r] for r in rows], offsets=[offsets[r] for r in rows],
                                interventions=ivs, runner=runner, batch_size=len(rows))
        out_ids += [forced[r] + x for r, x in zip(rows, new)]
    return Counterfactuals(
        prompts=[model.tokenizer.decode(p, skip_special_tokens=True) for p in p_rows], observed_ids=c_rows,
        ids=out_ids, observed=_texts(model, c_rows), texts=_texts(model, out_ids),
        diverged_at=[_diverged(a, b) for a, b in zip(c_rows, out_ids)], settings=settings,
        meta={"intervention": describe(intervention), "noise": noise, "seed": seed, "replace": replace,
              "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p})


def first_token_coupling(model: Model, samples: Samples, intervention=None) -> dict:
    """What an intervention's strength alone predicts for the first sampled token of each row of `samples`.

    Per row, from the base (p) and intervened (q) next-token distributions after the prompt (under the samples'
    temperature / top-k / top-p, renormalised over the allowed tokens): "tv" = 1/2 sum_j |p_j - q_j|;
    "agreement" = the exact Gumbel-max probability that both choose the same token (`measures.gumbel_agreement`);
    "keep" = the probability that a hindsight counterfactual keeps the observed first token (`measures.gumbel_keep`),
    each a list of n floats. A measured first-token agreement must match the mean of "keep" (and of "agreement")
    within binomial noise.
    """
    if not isinstance(samples, Samples):
        raise checks.fail("samples", "the Samples that `sample` returned", type(samples).__name__)
    if samples.settings.greedy:
        raise ValueError("samples: drawn greedily (temperature 0); the Gumbel-max coupling needs temperature > 0")
    intervention = _check_intervention(model, intervention)

    def probs(runner, ivs, prompt):
        ids = torch.tensor([prompt], device=model.device)
        with torch.no_grad():
            logits = runner.run_with_interventions(ids, ivs)[0, -1]  # [V]
        s = scaled_logits(logits, samples.settings)
        return s.masked_fill(~allowed(s, samples.settings), -math.inf).softmax(-1)

    out, seen = {"tv": [], "agreement": [], "keep": []}, {}
    for r, prompt in enumerate(samples.prompt_ids):
        if tuple(prompt) not in seen:  # rows that share a prompt share p and q
            p = probs(model, [], prompt)
            with _intervened(model, intervention, first=not seen) as (runner, ivs):
                q = probs(runner, ivs, prompt)
            seen[tuple(prompt)] = (float(0.5 * (p.double() - q.double()).abs().sum()), float(gumbel_agreement(p, q)),
                                   gumbel_keep(p, q))
        tv, agreement, keep = seen[tuple(prompt)]
        out["tv"].append(tv)
        out["agreement"].append(agreement)
        out["keep"].append(float(keep[samples.ids[r][0]]) if samples.ids[r] else None)
    return out
