"""Gumbel-max sampling and hindsight noise inference (Ravfogel et al., ICLR 2025, "Gumbel Counterfactual
Generation From Language Models").

Sampling as a structural causal model: at generated position t the token is

    y_t = argmax_{j in A_t} ( l_tj / tau + g_tj ),   g_tj ~ Gumbel(0, 1) i.i.d.        (Gumbel-max, eq. 2)

with l_t the logits, tau the temperature and A_t the tokens allowed by top-k / top-p (masks on the argmax,
not inverse-CDF sampling, which is not counterfactually stable). Given an observed continuation, the
noise that produced it is inferred top-down (hindsight Gumbel sampling; Maddison et al. 2014, "A* sampling"):

    M_t ~ Gumbel(logsumexp_{j in A_t} l_tj / tau)                   the observed token's perturbed value
    v_tj ~ TruncGumbel(l_tj / tau, below M_t), j in A_t, j != y_t   every other allowed token's value
    g_tj = v_tj - l_tj / tau                                        (eq. 5 / Alg. 1 of the paper)

Tokens outside A_t never competed, so the observation says nothing about their noise: they keep prior
Gumbel(0, 1) noise (their perturbed value is -inf under the factual mask, so they stay below M_t anyway).
Temperature 0 is greedy decoding: the noise is ignored and only argmax continuations are possible.

Noise is reproducible without being stored: the prior noise of row r at position t comes from a generator
seeded with (stream, seed_r, t), so a sample replays exactly from its seeds, whatever the batching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.generation import check_prompts, pad_left, pad_right, stop_ids
from ..core.arch import cache_kwarg, output_cache
from ..core import checks

# Noise streams: the sampler's prior noise, the hindsight posterior draws, fresh noise for unobserved positions.
SAMPLE, POSTERIOR, FRESH = 0, 1, 2


@dataclass(frozen=True)
class Settings:
    """Sampling settings (the same for the observed string and its counterfactuals). temperature 0 = greedy;
    top_k 0 = no top-k mask; top_p 1 = no top-p mask."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        if t != 0:  # 0 = greedy; below MIN_TEMPERATURE logits / t overflow and every row is NaN
            checks.number(t, "temperature (0 = greedy)", minimum=checks.MIN_TEMPERATURE)
        checks.integer(k, "top_k (0 = no top-k)", 0)
        checks.number(p, "top_p", positive=True, maximum=1)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# -- the Gumbel-max choice: one function, used by the sampler, the hindsight check and the decoder --------

def scaled_logits(logits: Tensor, settings: Settings) -> Tensor:
    """l / tau in float32, [..., V] (greedy: the logits themselves)."""
    logits = logits.float()
    return logits if settings.greedy else logits / settings.temperature


def allowed(scaled: Tensor, settings: Settings) -> Tensor:
    """Bool [..., V]: the tokens top-k and top-p let compete (both masks; all tokens without them).

    top-k keeps tokens whose value is at least the k-th largest (ties kept); top-p keeps the most probable
    tokens until their probability mass reaches top_p (a token is kept if the mass strictly before it < top_p).
    """
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if settings.top_k and settings.top_k < scaled.shape[-1]:
        kth = scaled.topk(settings.top_k, dim=-1).values[..., -1:]
        keep &= scaled >= kth
    if settings.top_p < 1:
        probs, order = scaled.softmax(-1).sort(-1, descending=True)
        before = probs.cumsum(-1) - probs
        keep &= torch.zeros_like(keep).scatter(-1, order, before < settings.top_p)
    return keep


def perturbed(logits: Tensor, noise: Tensor, settings: Settings) -> Tensor:
    """l / tau + g with disallowed tokens at -inf, [..., V] (eq. 2 before the argmax)."""
    s = scaled_logits(logits, settings)
    return (s + noise).masked_fill(~allowed(s, settings), -math.inf)


def choose(logits: Tensor, noise: Tensor, settings: Settings) -> Tensor:
    """The Gumbel-max token [...] (greedy: argmax of the logits; the noise is ignored)."""
    if settings.greedy:
        return logits.argmax(-1)
    return perturbed(logits, noise, settings).argmax(-1)


# -- noise ------------------------------------------------------------------------------------------

def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from the integers in `key` (mixed by numpy's SeedSequence, so nearby keys
    give unrelated streams)."""
    seed = int(np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(1, np.uint64)[0]) % 2**63
    return torch.Generator().manual_seed(seed)


def gumbel(shape, gen: torch.Generator) -> Tensor:
    """Standard Gumbel(0, 1) draws in float64: -log(-log U), U ~ Uniform(0, 1) (U = 0 avoided)."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp_min(1e-300)
    return -torch.log(-torch.log(u))


def truncated_gumbel(location: Tensor, bound: Tensor, gen: torch.Generator) -> Tensor:
    """Gumbel(location) truncated to values <= bound, in log space: -log(exp(-bound) + exp(-G)), G ~ Gumbel(location).

    (P(X <= x) = F(x) / F(bound) for x <= bound; computed with logaddexp, so nothing overflows.)
    """
    g = location + gumbel(location.shape, gen)
    return -torch.logaddexp(-bound, -g)


class PriorNoise:
    """Prior Gumbel(0, 1) noise of row r at position t from generator(stream, seeds[r], t)."""

    def __init__(self, seeds: Sequence[int], d_vocab: int, stream: int = SAMPLE):
        self.seeds, self.d_vocab, self.stream = list(seeds), d_vocab, stream

    def __call__(self, row: int, t: int) -> Tensor:
        return gumbel(self.d_vocab, generator(self.stream, self.seeds[row], t)).float()


class GivenNoise:
    """Noise given per row as [T_r, V] tensors (e.g. hindsight posteriors); positions t >= T_r take `fallback`
    (fresh prior noise: nothing was observed there)."""

    def __init__(self, noise: Sequence[Tensor] | Tensor, fallback: PriorNoise | None):
        self.noise, self.fallback = (noise if isinstance(noise, Tensor) else list(noise)), fallback

    def __call__(self, row: int, t: int) -> Tensor:
        n = self.noise[row]
        return n[t] if t < len(n) else self.fallback(row, t)

    def batch(self, rows: list[int], ts: list[int]) -> Tensor:
        """Noise [len(rows), V] of rows[i] at position ts[i] (one gather when the noise is one [n, T, V] tensor)."""
        if isinstance(self.noise, Tensor) and max(ts) < self.noise.shape[1]:
            return self.noise[torch.as_tensor(rows), torch.as_tensor(ts)]
        return torch.stack([self(r, t) for r, t in zip(rows, ts)])


# -- decoding ---------------------------------------------------------------------------------------

def token_rows(model, texts, arg: str, *, special: bool) -> list[list[int]]:
    """Strings or token-id lists -> token-id lists (strings without special tokens unless `special`)."""
    if isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], int)):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise checks.fail(arg, "a non-empty list of strings or token-id lists", texts)
    rows = []
    for i, x in enumerate(texts):
        if isinstance(x, str):
            check_prompts([x], arg)
            rows.append(model.tokenizer(x, add_special_tokens=special).input_ids)
        elif isinstance(x, (list, tuple)) and all(checks.is_int(t) for t in x):
            bad = [t for t in x if not 0 <= t < model.dims.d_vocab]
            if bad:
                raise ValueError(f"{arg}: item {i} holds token id {bad[0]}, expected 0..{model.dims.d_vocab - 1}")
            rows.append(list(x))
        else:
            raise checks.fail(f"{arg}[{i}]", "a string or a list of token ids", x)
        if not rows[-1]:
            raise ValueError(f"{arg}: item {i} is empty (no tokens)")
    return rows


@torch.no_grad()
def gumbel_decode(model, prefixes: Sequence[Sequence[int]], noise, settings: Settings, *,
                  max_new_tokens: int | Sequence[int], offsets: Sequence[int] | None = None,
                  interventions: Sequence = (), runner=None, batch_size: int = 16) -> list[list[int]]:
    """Gumbel-max decoding with a KV cache, batched: new token ids per prefix, `[n][<= max_new_tokens]`.

    prefixes: token-id lists (left-padded per batch). noise(row, t) -> [V] gives the noise of global row `row`
    at continuation position t = offsets[row] + (tokens generated so far); offsets default to 0 (a token-level
    counterfactual continues an observed string part-way). A row stops after a stop token (kept in the output)
    or after its max_new_tokens. `interventions` are active for the whole decoding (`model.hooks`); `runner`
    (default `model`) is the Model whose weights decode (a second model of the same tokenizer).
    """
    runner = runner or model
    n = len(prefixes)
    budget = [max_new_tokens] * n if checks.is_int(max_new_tokens) else list(max_new_tokens)
    offsets = [0] * n if offsets is None else list(offsets)
    stop = stop_ids(model)
    kw_cache = cache_kwarg(runner.hf)
    out: list[list[int]] = [[] for _ in range(n)]
    with runner.hooks(list(interventions)):
        for start in range(0, n, batch_size):
            rows = list(range(start, min(n, start + batch_size)))
            live = [r for r in rows if budget[r] > 0]
            if not live:
                continue
            ids, mask = pad_left(model, [prefixes[r] for r in live])
            ids, mask = ids.to(runner.device), mask.to(runner.device)
            # position ids count real tokens only, so a left-padded row sees the positions it has alone
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            done = torch.zeros(len(live), dtype=torch.bool)
            cache = None
            for step in range(max(budget[r] for r in live)):
                res = runner.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                                **({kw_cache: cache} if cache is not None else {}))
                cache = output_cache(res)
                logits = res.logits[:, -1].float().cpu()  # [b, V]
                if settings.greedy:
                    tok = logits.argmax(-1)
                else:
                    ts = [offsets[r] + step for r in live]
                    g = noise.batch(live, ts) if hasattr(noise, "batch") else torch.stack(
                        [noise(r, t) for r, t in zip(live, ts)])
                    tok = choose(logits, g, settings)
                for b, (r, t) in enumerate(zip(live, tok.tolist())):
                    if not done[b]:
                        out[r].append(t)
                        done[b] = t in stop or len(out[r]) >= budget[r]
                if done.all():
                    break
                tok = torch.where(done, model.tokenizer.pad_token_id, tok).to(runner.device)
                ids = tok[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                pos = pos[:, -1:] + 1
    return out


@dataclass
class Samples:
    """Gumbel-max samples: prompt and continuation token ids per row (a stop token, if sampled, is kept),
    the seed of each row's noise and the settings. `replay(model)` reproduces them exactly."""

    prompt_ids: list[list[int]]
    ids: list[list[int]]
    seeds: list[int]
    settings: Settings
    max_new_tokens: int
    texts: list[str] = field(default_factory=list)

    def noise(self, row: int, t: int, d_vocab: int) -> Tensor:
        """The recorded noise [V] of `row` at continuation position t."""
        return PriorNoise(self.seeds, d_vocab)(row, t)


def _texts(model, rows) -> list[str]:
    return [model.tokenizer.decode(r, skip_special_tokens=True) for r in rows]


def sample(model, prompts, *, max_new_tokens: int = 20, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, interventions: Sequence = (), batch_size: int = 16) -> Samples:
    """Seeded, batched Gumbel-max sampling: row r uses noise seeded with seed + r at every position, so the
    result does not depend on the batch size and `replay` reproduces it exactly."""
    settings = Settings(temperature, top_k, top_p)
    checks.integer(max_new_tokens, "max_new_tokens")
    prefixes = token_rows(model, prompts, "prompts", special=True)
    model.check_length(max(map(len, prefixes)) + max_new_tokens, "max_new_tokens (with the longest prompt)")
    seeds = [seed + r for r in range(len(prefixes))]
    ids = gumbel_decode(model, prefixes, PriorNoise(seeds, model.dims.d_vocab), settings,
                        max_new_tokens=max_new_tokens, interventions=interventions, batch_size=batch_size)
    return Samples(prefixes, ids, seeds, settings, max_new_tokens, _texts(model, ids))


def replay(model, samples: Samples, *, interventions: Sequence = (), batch_size: int = 16) -> Samples:
    """Decode again with the recorded noise (equal to `samples` for the same model and no interventions)."""
    ids = gumbel_decode(model, samples.prompt_ids, PriorNoise(samples.seeds, model.dims.d_vocab), samples.settings,
                        max_new_tokens=samples.max_new_tokens, interventions=interventions, batch_size=batch_size)
    return Samples(samples.prompt_ids, ids, samples.seeds, samples.settings, samples.max_new_tokens, _texts(model, ids))


# -- hindsight --------------------------------------------------------------------------------------

def posterior_noise(logits: Tensor, observed: Sequence[int], settings: Settings, gen: torch.Generator, *,
                    margin: float = 1e-3, where: str = "continuation") -> Tensor:
    """One draw of the noise [T, V] (float32) given that Gumbel-max chose `observed` [T] from `logits` [T, V].

    Top-down construction (Alg. 1): M_t ~ Gumbel(logsumexp_{A_t} s_t), the observed token's value; every other
    allowed token's value ~ Gumbel(s_tj) truncated below M_t; g = value - s. Disallowed tokens keep prior noise.
    Computed in float64, stored in float32; an allowed rival whose float32 perturbed value comes within `margin`
    of the observed token's (probability about `margin` per position) is moved down to `margin` below it, so
    that decoding the same model again, whose logits differ from this forward's by float rounding (~1e-5),
    still picks the observed token.
    """
    T, V = logits.shape
    obs = torch.as_tensor(list(observed), dtype=torch.long)
    s32 = scaled_logits(logits, settings)
    keep = allowed(s32, settings)
    t_idx = torch.arange(T)
    if settings.greedy:
        bad = (logits.gather(-1, obs[:, None])[:, 0] < logits.max(-1).values).nonzero()
    else:
        bad = (~keep[t_idx, obs]).nonzero()
    if len(bad):
        t = int(bad[0])
        why = "not the argmax at temperature 0" if settings.greedy else \
            f"outside the allowed tokens (top_k={settings.top_k}, top_p={settings.top_p})"
        raise ValueError(f"{where}: token {int(obs[t])} at position {t} is {why}; these settings could not "
                         "have produced it")
    prior = gumbel((T, V), gen)
    if settings.greedy:
        return prior.float()  # greedy decoding ignores the noise
    s = s32.double().masked_fill(~keep, -math.inf)
    top = s.logsumexp(-1) + gumbel(T, gen)                                 # M_t ~ Gumbel(logsumexp_A s_t)
    value = truncated_gumbel(s.masked_fill(~keep, 0.0), top[:, None], gen)  # v_tj ~ TruncGumbel(s_tj, <= M_t)
    value[t_idx, obs] = top
    g = torch.where(keep, value - s.masked_fill(~keep, 0.0), prior).float()
    # Guard against float32 rounding putting a rival at or above the observed token (see the docstring).
    for _ in range(4):
        pv = perturbed(logits, g, settings)
        best = pv[t_idx, obs]
        rival = pv.clone()
        rival[t_idx, obs] = -math.inf
        close = rival > (best - margin)[:, None]
        if not close.any():
            break
        g = torch.where(close, g - (rival - best[:, None]) - 2 * margin, g)
    return g


@torch.no_grad()
def hindsight_noise(model, prompts, continuations, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, batch_size: int = 16, margin: float = 1e-3) -> list[Tensor]:
    """Posterior noise draws [T_r, V] per row for observed continuations of prompts (one forward per batch).

    prompts, continuations: strings or token-id lists (continuations are tokenised without special tokens).
    Row r's draw is seeded with seed + r. A continuation the settings could not have produced raises a
    ValueError naming the row, the position and the token.
    """
    settings = Settings(temperature, top_k, top_p)
    p_rows = token_rows(model, prompts, "prompts", special=True)
    c_rows = token_rows(model, continuations, "continuations", special=False)
    return _hindsight(model, p_rows, c_rows, settings, [seed + r for r in range(len(p_rows))], batch_size, margin)


def _hindsight(model, p_rows, c_rows, settings, seeds, batch_size, margin, interventions=()) -> list[Tensor]:
    if len(p_rows) != len(c_rows):
        raise checks.fail('continuations', f'one per prompt ({len(p_rows)})', len(c_rows))
    out = []
    for start in range(0, len(p_rows), batch_size):
        rows = range(start, min(len(p_rows), start + batch_size))
        ids, mask = pad_right(model, [p_rows[r] + c_rows[r] for r in rows])
        with model.hooks(list(interventions)):
            logits = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().cpu()
        for b, r in enumerate(rows):
            lp, T = len(p_rows[r]), len(c_rows[r])
            # logits at position i predict token i + 1: the continuation is predicted from lp - 1 .. lp + T - 2
            out.append(posterior_noise(logits[b, lp - 1:lp + T - 1], c_rows[r], settings,
                                       generator(POSTERIOR, seeds[r]), margin=margin,
                                       where=f"continuations: row {r}"))
    return out
