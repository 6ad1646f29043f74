"""Steering vectors: build them from contrast pairs, add them to the residual stream, sweep them.

Build (one vector per layer, read at one token of each example, or averaged over its tokens):

    mean_diff   v_L = (1/N) sum_i [h_L(pos_i) - h_L(neg_i)]          (CAA, Rimsky et al. 2024, eq. 1;
                                                                        ActAdd, Turner et al. 2023)
    pca         u_L = first principal component of {+-(h_L(pos_i) - h_L(neg_i))}  (uncentred: the set is
                symmetric), sign fixed so that mean_i (pos_i - neg_i) . u > 0; v_L = (v_mean . u) u, the
                mean difference's length along u, so multipliers mean the same as for mean_diff
    probe       a given direction (e.g. a linear probe's, from `probes/`), sign and length fixed the
                same way from the pairs, or used as given without pairs

Apply: `Add(blocks.L.hook_<component>, vector=multiplier * v_L)` through the one hook layer, at all
positions, from a position on, at given positions, or on generated tokens only; positions are
position ids (`workbench.interventions.PositionSelector`), so they mean the same in a plain forward
and in cached generation, where each step's forward sees only the new token.

Sweep: layers x multipliers -> behaviour score, success rate and a fluency cost (perplexity of the
steered continuations under the unsteered model, or KL on neutral text), as labelled arrays.
"""
from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .interventions import Add, AtPositions, FromPosition, Generated, PositionSelector
from .results import LabelledArray, atomic_write_text, read_jsonl, save_safetensors
from .sites import check_layers, parse_site

METHODS = ("mean_diff", "pca", "probe")
# The unsteered model as a sentiment classifier: log p(" positive") - log p(" negative") after this
# prompt (right on all 32 sentences of data/steering/sentiment_eval.jsonl with the default model).
SENTIMENT_TEMPLATE = 'Review: "{text}"\nSentiment (positive or negative):'
STEERABLE = ("resid_pre", "resid_post", "attn_out", "mlp_out")  # components of width d_model


# -- data ---------------------------------------------------------------------------------------

def load_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """A JSONL file of {"positive": str, "negative": str} lines -> (positives, negatives)."""
    pos, neg = [], []
    for n, row in read_jsonl(path, "pairs"):
        if not isinstance(row, dict) or not isinstance(row.get("positive"), str) or not isinstance(row.get("negative"), str):
            raise ValueError(f"pairs: {path}:{n}: expected an object with string fields 'positive' and 'negative'")
        pos.append(row["positive"])
        neg.append(row["negative"])
    return _check_pairs(pos, neg)


def load_lines(path: str | Path, arg: str = "file") -> list[str]:
    """Non-empty lines of a text file, `#` comment lines dropped (prompts, word lists, neutral text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no file {path}")
    lines = [l.rstrip("\n") for l in path.read_text().splitlines()]
    lines = [l for l in lines if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{arg}: {path} has no lines")
    return lines


def _check_pairs(positives, negatives) -> tuple[list[str], list[str]]:
    if negatives is None:  # a list of (positive, negative) pairs or {"positive", "negative"} dicts
        if isinstance(positives, (list, tuple)) and all(isinstance(p, dict) for p in positives):
            try:
                positives, negatives = [p["positive"] for p in positives], [p["negative"] for p in positives]
            except KeyError as e:
                raise ValueError(f"positives: pair dicts need 'positive' and 'negative' keys, missing {e}") from None
        elif isinstance(positives, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in positives):
            positives, negatives = [p[0] for p in positives], [p[1] for p in positives]
        else:
            raise ValueError("positives: without negatives, expected a list of (positive, negative) pairs")
    for arg, texts in (("positives", positives), ("negatives", negatives)):
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise ValueError(f"{arg}: expected a list of strings, got {type(texts).__name__}")
        if not texts:
            raise ValueError(f"{arg}: empty; a steering vector needs at least one contrast pair")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t:
                raise ValueError(f"{arg}: item {i} is not a non-empty string: {t!r}")
    if len(positives) != len(negatives):
        raise ValueError(f"negatives: {len(negatives)} negative examples for {len(positives)} positive ones; "
                         "contrast pairs need one negative per positive")
    return list(positives), list(negatives)


def _check_multiplier(m, arg: str = "multiplier") -> float:
    try:
        f = float(m)
    except (TypeError, ValueError):
        raise ValueError(f"{arg}: expected a number, got {m!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{arg}: expected a finite number, got {m!r}")
    return f


def _check_component(component: str) -> str:
    if component not in STEERABLE:
        raise ValueError(f"component: expected one of {STEERABLE} (residual-stream-width sites), got {component!r}")
    return component


# -- reading activations ------------------------------------------------------------------------

@torch.no_grad()
def read_activations(model, texts: Sequence[str], layers: Sequence[int], *, component: str = "resid_pre",
                     read_at: int | str = -1, batch_size: int = 16) -> dict[int, Tensor]:
    """{layer: [n, d_model]}: each text's activation at one token, or averaged over its tokens.

    `read_at`: a negative int counts back from each text's last real token (-1 = last, the answer
    letter in A/B prompts that end in it); a non-negative int is a token index; "mean" averages over
    the real tokens. Batches are right-padded and every row is read at its own tokens, never a pad.
    """
    _check_component(component)
    layers = check_layers(list(layers), model.dims.n_layers)
    if not (read_at == "mean" or (isinstance(read_at, int) and not isinstance(read_at, bool))):
        raise ValueError(f"read_at: expected an int token index (negative counts from the end) or 'mean', got {read_at!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    sites = [parse_site(component, model.dims.n_layers, l).name for l in layers]
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        ids, mask = model.encode(chunk)
        lengths = model.last_positions(ids, mask) + 1  # [batch] real tokens per row
        _, cache = model.run_with_cache(ids, sites, attention_mask=mask)
        rows = torch.arange(len(chunk), device=ids.device)
        if read_at == "mean":
            real = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).float()  # [batch, pos]
        else:
            idx = lengths + read_at if read_at < 0 else torch.full_like(lengths, read_at)
            bad = (idx < 0) | (idx >= lengths)
            if bad.any():
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"read_at: token {read_at} does not exist in text {start + i} "
                                 f"({int(lengths[i])} tokens): {chunk[i]!r}")
        for l, s in zip(layers, sites):
            act = cache[s].float()  # [batch, pos, d_model]
            if read_at == "mean":
                out[l].append((act * real[..., None]).sum(1) / lengths[:, None].float())
            else:
                out[l].append(act[rows, idx])
    return {l: torch.cat(v).cpu() for l, v in out.items()}


# -- the vector ---------------------------------------------------------------------------------

def _position_selector(positions) -> PositionSelector | None:
    """'all' | None -> every position; 'generated'; int p -> position ids >= p; list -> those ids."""
    if positions is None or positions == "all":
        return None
    if positions == "generated":
        return Generated()
    if isinstance(positions, PositionSelector):
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        if positions < 0:
            raise ValueError(f"positions: 'from a position on' needs a position >= 0, got {positions}")
        return FromPosition(positions)
    if isinstance(positions, (list, tuple, range)) and len(positions) and all(
            isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return AtPositions(list(positions))
    raise ValueError("positions: expected 'all', 'generated', an int (from that position on), "
                     f"a non-empty list of token positions, or a PositionSelector; got {positions!r}")


@dataclass
class SteeringVector:
    """One direction per layer, `vectors[layer]` [d_model], added at `blocks.{layer}.hook_{component}`.

    `meta` records how it was built (method, read_at, number of pairs) and for which model
    (name, fingerprint, n_layers, d_model).
    """

    vectors: dict[int, Tensor]
    component: str = "resid_pre"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_component(self.component)
        if not isinstance(self.vectors, dict) or not self.vectors:
            raise ValueError("vectors: expected a non-empty dict {layer: tensor [d_model]}")
        widths = {tuple(v.shape) for v in self.vectors.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise ValueError(f"vectors: expected tensors of one shape [d_model], got shapes {sorted(widths)}")
        self.vectors = {int(l): v.detach().float().cpu() for l, v in sorted(self.vectors.items())}

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def __repr__(self) -> str:
        norms = ", ".join(f"{l}: {v.norm():.3g}" for l, v in self.vectors.items())
        return f"SteeringVector({self.meta.get('method', '?')}, {self.component}, |v| by layer {{{norms}}})"

    def check_model(self, model) -> None:
        """Refuse a model of another width or with too few layers (a vector belongs to one residual stream)."""
        d = model.dims
        if d.d_model != self.d_model:
            raise ValueError(f"model: steering vector has width {self.d_model} but the model's d_model is {d.d_model}")
        n = self.meta.get("n_layers")
        if n is not None and n != d.n_layers:
            raise ValueError(f"model: steering vector was built for a model with {n} layers, this one has {d.n_layers}")
        if max(self.layers) >= d.n_layers:
            raise ValueError(f"model: steering vector has layer {max(self.layers)}; the model has layers 0..{d.n_layers - 1}")

    def interventions(self, model, multiplier: float = 1.0, *, positions="all", layers=None) -> list[Add]:
        """The `Add` interventions that apply `multiplier * v_L` at each chosen layer L (default: all of them)."""
        self.check_model(model)
        multiplier = _check_multiplier(multiplier)
        selector = _position_selector(positions)
        layers = self.layers if layers is None else check_layers(layers, model.dims.n_layers)
        missing = [l for l in layers if l not in self.vectors]
        if missing:
            raise ValueError(f"layers: the steering vector has no direction for layers {missing}; it has {self.layers}")
        return [Add(parse_site(self.component, model.dims.n_layers, l), positions=selector,
                    vector=self.vectors[l].to(model.device), multiplier=multiplier) for l in layers]

    def apply(self, model, multiplier: float = 1.0, *, positions="all", layers=None):
        """Context manager: the model is steered inside the body (forward passes and `hf.generate`)."""
        return steer(model, [(self, multiplier)], positions=positions, layers=layers)

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (`layer.{L}` tensors, JSON metadata under 'workbench'), atomically."""
        meta = {**self.meta, "component": self.component, "layers": self.layers, "d_model": self.d_model}
        return save_safetensors(path, {f"layer.{l}": v for l, v in self.vectors.items()}, {"workbench": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, model=None) -> "SteeringVector":
        """Read a file written by `save`; with `model`, refuse another width or layer count (and warn
        when the weights' fingerprint differs: same shape, other model)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no steering vector file {path}")
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("workbench")
            if raw is None:
                raise ValueError(f"path: {path} has no workbench metadata; was it written by SteeringVector.save?")
            meta = json.loads(raw)
            vectors = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys() if k.startswith("layer.")}
        component = meta.pop("component")
        for k in ("layers", "d_model"):
            meta.pop(k, None)
        sv = cls(vectors, component, meta)
        if model is not None:
            sv.check_model(model)
            fp = meta.get("fingerprint")
            if fp is not None and fp != model.fingerprint:
                warnings.warn(f"steering vector was built on model fingerprint {fp}, this model is {model.fingerprint}")
        return sv


def load_direction(direction, d_model: int, layers: Sequence[int]) -> dict[int, Tensor]:
    """A probe direction as {layer: [d_model]}: a tensor [d_model] (every layer), [n_layers, d_model]
    (row L for layer L), a dict {layer: [d_model]}, or a safetensors file with a `direction` tensor."""
    if isinstance(direction, (str, Path)):
        from safetensors.torch import load_file

        if not Path(direction).is_file():
            raise FileNotFoundError(f"direction: no file {direction}")
        tensors = load_file(str(direction))
        if "direction" not in tensors:
            raise ValueError(f"direction: {direction} has no tensor named 'direction' (has {sorted(tensors)})")
        direction = tensors["direction"]
    if isinstance(direction, dict):
        got = {int(l): d for l, d in direction.items()}
        missing = [l for l in layers if l not in got]
        if missing:
            raise ValueError(f"direction: no direction for layers {missing}")
        out = {l: got[l] for l in layers}
    elif isinstance(direction, Tensor) and direction.ndim == 1:
        out = {l: direction for l in layers}
    elif isinstance(direction, Tensor) and direction.ndim == 2:
        if max(layers) >= direction.shape[0]:
            raise ValueError(f"direction: [{direction.shape[0]}, d] has no row for layer {max(layers)}")
        out = {l: direction[l] for l in layers}
    else:
        raise ValueError("direction: expected a tensor [d_model] or [n_layers, d_model], a dict {layer: tensor}, "
                         f"or a safetensors file with a 'direction' tensor; got {type(direction).__name__}")
    for l, d in out.items():
        if not isinstance(d, Tensor) or d.shape != (d_model,) or not d.is_floating_point():
            raise ValueError(f"direction: layer {l}: expected a float tensor of shape [{d_model}], got "
                             f"{tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__}")
        if not torch.isfinite(d).all() or d.norm() == 0:
            raise ValueError(f"direction: layer {l}: expected a finite, non-zero direction")
    return {l: d.detach().float().cpu() for l, d in out.items()}


def build_steering_vector(model, positives=None, negatives=None, *, layers, method: str = "mean_diff",
                          read_at: int | str = -1, component: str = "resid_pre", direction=None,
                          batch_size: int = 16) -> SteeringVector:
    """A steering vector per layer from contrast pairs (see the module docstring for the equations).

    `positives` / `negatives`: equal-length lists of texts (pair i = positives[i], negatives[i]), or
    `positives` alone as a list of (positive, negative) tuples or {"positive", "negative"} dicts.
    `method="probe"` takes `direction` (see `load_direction`); with pairs its sign and length are fixed
    from them, without pairs it is used as given.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    _check_component(component)
    layers = check_layers(layers, model.dims.n_layers)
    probe = load_direction(direction, model.dims.d_model, layers) if method == "probe" else None
    if method == "probe" and direction is None:
        raise ValueError("direction: method='probe' needs a direction")
    if method != "probe" and direction is not None:
        raise ValueError(f"direction: only used with method='probe', not {method!r}")
    meta = {"method": method, "read_at": read_at, "model": model.name, "fingerprint": model.fingerprint,
            "n_layers": model.dims.n_layers}
    if method == "probe" and positives is None and negatives is None:
        return SteeringVector(probe, component, {**meta, "n_pairs": 0})
    positives, negatives = _check_pairs(positives, negatives)
    kw = dict(component=component, read_at=read_at, batch_size=batch_size)
    h_pos = read_activations(model, positives, layers, **kw)
    h_neg = read_activations(model, negatives, layers, **kw)
    vectors = {}
    for l in layers:
        deltas = (h_pos[l] - h_neg[l]).double()  # [N, d]
        mean = deltas.mean(0)  # mean of differences (CAA eq. 1)
        if method == "mean_diff":
            vectors[l] = mean
            continue
        if method == "pca":
            # first right singular vector of the symmetric set {+d_i, -d_i} = top principal component
            u = torch.linalg.svd(torch.cat([deltas, -deltas]), full_matrices=False).Vh[0]
        else:
            u = probe[l].double() / probe[l].double().norm()
        u = u if (deltas @ u).mean() >= 0 else -u  # positive examples project positively
        vectors[l] = (mean @ u) * u
    return SteeringVector({l: v.float() for l, v in vectors.items()}, component, {**meta, "n_pairs": len(positives)})


# -- applying -----------------------------------------------------------------------------------

SteeringSpec = SteeringVector | Sequence[tuple[SteeringVector, float]]


def _as_list(steering, multiplier) -> list[tuple[SteeringVector, float]]:
    if isinstance(steering, SteeringVector):
        return [(steering, multiplier)]
    if isinstance(steering, (list, tuple)) and steering and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], SteeringVector) for s in steering):
        return [(s, m) for s, m in steering]
    raise ValueError("steering: expected a SteeringVector or a non-empty list of (SteeringVector, multiplier) pairs")


def steering_interventions(model, steering: SteeringSpec, multiplier: float = 1.0, *, positions="all",
                           layers=None) -> list[Add]:
    """All `Add` interventions of one or several (composed) steering vectors; checked before anything runs."""
    out = []
    for sv, m in _as_list(steering, multiplier):
        out += sv.interventions(model, m, positions=positions, layers=layers)
    return out


@contextmanager
def steer(model, steering: SteeringSpec, multiplier: float = 1.0, *, positions="all", layers=None):
    """Steer `model` inside the body; the hooks are removed on every exit, exceptions included.

        with steer(model, vec, 4.0, positions="generated"):
            model.hf.generate(...)
        with steer(model, [(love, 4.0), (french, 2.0)]):   # several vectors add up
            ...
    """
    ivs = steering_interventions(model, steering, multiplier, positions=positions, layers=layers)
    with model.hooks(ivs):
        yield


def _left_padded(model, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Prompts left-padded for generation: ids [batch, pos], attention mask [batch, pos]."""
    tok = model.tokenizer
    rows = [tok(p).input_ids for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(model.device), mask.to(model.device)


def _check_prompts(prompts, arg: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{arg}: expected a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise ValueError(f"{arg}: item {i} is not a non-empty string: {p!r}")
    return list(prompts)


def _stop_ids(model) -> set[int]:
    eos = model.hf.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | ({model.tokenizer.eos_token_id} - {None})


@torch.no_grad()
def _generate_ids(model, prompts: list[str], interventions_for: Callable[[int, int], list], *, max_new_tokens: int,
                  do_sample: bool, seed: int, temperature: float, top_p: float, batch_size: int) -> list[list[int]]:
    """New token ids per prompt (cut at the first end-of-sequence token); `interventions_for(start, stop)`
    gives the interventions for rows start..stop-1 of the prompt list."""
    stop = _stop_ids(model)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = _left_padded(model, chunk)
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=model.tokenizer.pad_token_id)
        if do_sample:
            torch.manual_seed(seed + start)
            kw.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        with model.hooks(interventions_for(start, start + len(chunk))):
            gen = model.hf.generate(input_ids=ids, attention_mask=mask, **kw)
        for row in gen[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            out.append(row[:cut])
    return out


def _check_generation(max_new_tokens, batch_size, temperature, top_p):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p!r}")


def generate(model, prompts, steering: SteeringSpec | None = None, multiplier: float = 1.0, *, positions="all",
             layers=None, max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16) -> list[str]:
    """Continuations of `prompts` (greedy by default; seeded sampling with `do_sample=True`), steered
    by `steering` (a vector, or a list of (vector, multiplier) pairs) or unsteered with None.

    Prompts are batched with left padding; `positions` are position ids (see `steer`), so
    "generated" means each row's own new tokens.
    """
    prompts = _check_prompts(prompts)
    _check_generation(max_new_tokens, batch_size, temperature, top_p)
    ivs = [] if steering is None else steering_interventions(model, steering, multiplier, positions=positions, layers=layers)
    ids = _generate_ids(model, prompts, lambda a, b: ivs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        seed=seed, temperature=temperature, top_p=top_p, batch_size=batch_size)
    return [model.tokenizer.decode(r) for r in ids]


# -- costs --------------------------------------------------------------------------------------

@torch.no_grad()
def continuation_nll(model, prompts: Sequence[str], continuations: Sequence[list[int]],
                     batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood of each continuation's tokens given its prompt under `model` as it
    is (run it unsteered), and the token counts: ([n], [n])."""
    tok = model.tokenizer
    nll, count = [], []
    for start in range(0, len(prompts), batch_size):
        rows, n_prompt = [], []
        for p, c in zip(prompts[start:start + batch_size], continuations[start:start + batch_size]):
            p_ids = tok(p).input_ids
            rows.append(p_ids + list(c))
            n_prompt.append(len(p_ids))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)  # tokens to score (predicted from the one before)
        for i, (r, n) in enumerate(zip(rows, n_prompt)):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
            target[i, n:len(r)] = True
        logp = model(ids.to(model.device), mask.to(model.device)).float().log_softmax(-1)[:, :-1]
        tok_lp = logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].cpu()
        t = target[:, 1:]
        nll.append(-(tok_lp * t).sum(1))
        count.append(t.sum(1))
    return torch.cat(nll), torch.cat(count)


# -- sweeps -------------------------------------------------------------------------------------

Behaviour = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class SteeringSweep:
    """A layers x multipliers sweep: `behaviour` (mean score), `success` (share of continuations
    scoring above the threshold, or None), `cost` (fluency cost) as [layer, multiplier] arrays;
    `baseline` holds the unsteered scores; `samples` every continuation with its score."""

    behaviour: LabelledArray
    success: LabelledArray | None
    cost: LabelledArray
    baseline: dict
    samples: list[dict]
    meta: dict

    @property
    def layers(self) -> list[int]:
        return self.behaviour.coords["layer"]

    @property
    def multipliers(self) -> list[float]:
        return self.behaviour.coords["multiplier"]

    def to_dataframe(self):
        """One row per (layer, multiplier): behaviour, success, cost."""
        df = self.behaviour.to_dataframe().rename(columns={"value": "behaviour"})
        if self.success is not None:
            df["success"] = self.success.values.reshape(-1)
        df["cost"] = self.cost.values.reshape(-1)
        return df

    def best(self, max_cost_ratio: float = 2.0) -> dict:
        """The (layer, multiplier) with the highest success rate (else behaviour) whose cost is at most
        `max_cost_ratio` x the unsteered cost (for KL, which is 0 unsteered: at most `max_cost_ratio` nats)."""
        score = (self.success if self.success is not None else self.behaviour).values
        base = self.baseline["cost"]
        limit = max_cost_ratio * base if base > 0 else max_cost_ratio
        ok = self.cost.values <= limit
        if not ok.any():
            return {}
        key = np.where(ok, score, -np.inf) + 1e-9 * np.where(ok, self.behaviour.values, 0)
        i, j = np.unravel_index(int(np.argmax(key)), key.shape)
        return {"layer": self.layers[i], "multiplier": self.multipliers[j], "behaviour": float(self.behaviour.values[i, j]),
                "success": None if self.success is None else float(self.success.values[i, j]),
                "cost": float(self.cost.values[i, j]), "cost_limit": float(limit)}

    def to_json(self) -> dict:
        return {"meta": self.meta, "baseline": self.baseline, "behaviour": self.behaviour.to_json(),
                "success": None if self.success is None else self.success.to_json(),
                "cost": self.cost.to_json(), "best": self.best(), "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "SteeringSweep":
        d = json.loads(Path(path).read_text())
        return cls(LabelledArray.from_json(d["behaviour"]),
                   None if d["success"] is None else LabelledArray.from_json(d["success"]),
                   LabelledArray.from_json(d["cost"]), d["baseline"], d["samples"], d["meta"])

    def plot(self, path: str | Path | None = None):
        """Success rate (or behaviour) and fluency cost against the multiplier, one line per layer."""
        import matplotlib.pyplot as plt

        from .plotting import save_figure

        top = self.success if self.success is not None else self.behaviour
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, layer in enumerate(self.layers):
            axes[0].plot(self.multipliers, top.values[i], marker="o", label=f"layer {layer}")
            axes[1].plot(self.multipliers, self.cost.values[i], marker="o", label=f"layer {layer}")
        base_top = self.baseline["success"] if self.success is not None else self.baseline["behaviour"]
        axes[0].axhline(base_top, color="grey", ls="--", lw=1, label="unsteered")
        axes[1].axhline(self.baseline["cost"], color="grey", ls="--", lw=1, label="unsteered")
        axes[0].set_ylabel("success rate" if self.success is not None else self.meta.get("behaviour_name", "behaviour"))
        axes[1].set_ylabel({"perplexity": "perplexity (unsteered model)", "kl": "KL on neutral text (nats/token)"}.get(
            self.meta.get("cost"), "cost"))
        if self.meta.get("cost") == "perplexity":
            axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("multiplier")
            ax.legend(fontsize=7)
        axes[0].set_title(self.meta.get("title", "steering: behaviour"), fontsize=10)
        axes[1].set_title("fluency cost", fontsize=10)
        return save_figure(fig, path)


def _row_adds(model, vector: SteeringVector, cells: list[tuple[int, float]], positions) -> list[Add]:
    """Per-row steering for a batch where row r gets multiplier m_r at layer l_r (cells[r] = (l_r, m_r)):
    one Add per layer with a [batch, 1, d_model] vector, zero on rows of other layers (adding 0.0 is exact)."""
    selector = _position_selector(positions)
    adds = []
    for layer in sorted({l for l, _ in cells if l is not None}):
        scale = torch.tensor([m if l == layer else 0.0 for l, m in cells])
        adds.append(Add(parse_site(vector.component, model.dims.n_layers, layer), positions=selector,
                        vector=(scale[:, None, None] * vector.vectors[layer]).to(model.device)))
    return adds


@torch.no_grad()
def kl_on_text(model, vector: SteeringVector, texts: Sequence[str], cells: list[tuple[int, float]],
               batch_size: int = 16) -> np.ndarray:
    """Mean over the texts' real tokens of KL(p_unsteered || p_steered) of the next-token distribution,
    steering at all positions, for each (layer, multiplier) cell: [len(cells)]."""
    texts = _check_prompts(list(texts), "neutral_texts")
    ids, mask = model.encode(texts)
    base = model(ids, mask).float().log_softmax(-1)  # [n, pos, vocab]
    real = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
    out = []
    per = max(1, batch_size // len(texts))
    for start in range(0, len(cells), per):
        chunk = cells[start:start + per]
        rows = [c for c in chunk for _ in texts]
        big_ids = ids.repeat(len(chunk), 1)
        big_mask = None if mask is None else mask.repeat(len(chunk), 1)
        steered = model.run_with_interventions(big_ids, _row_adds(model, vector, rows, "all"), big_mask)
        lp = steered.float().log_softmax(-1).view(len(chunk), *base.shape)
        kl = (base.exp() * (base - lp)).sum(-1)  # [cells, n, pos]
        out += [float(k[real].mean()) for k in kl]
    return np.array(out)


def sweep(model, vector: SteeringVector, prompts: Sequence[str], *, multipliers: Sequence[float], layers=None,
          behaviour: Behaviour, threshold: float | None = None, behaviour_name: str = "behaviour",
          cost: str = "perplexity", neutral_texts: Sequence[str] | None = None, positions="all",
          max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0, temperature: float = 1.0,
          top_p: float = 1.0, batch_size: int = 32, progress: bool = False) -> SteeringSweep:
    """Steer at one layer at a time with each multiplier, generate a continuation per prompt and score it.

    `behaviour(prompts, continuations) -> scores` must not depend on the steering (e.g. the unsteered
    model's own log-odds of " positive" vs " negative", or a word-list share); success is
    score > `threshold`. `cost`: "perplexity" of the continuations under the unsteered model
    (exp of the mean token NLL), or "kl" on `neutral_texts`. Every (layer, multiplier, prompt) is a
    row of one batched generation; the unsteered baseline is computed once.
    """
    vector.check_model(model)
    prompts = _check_prompts(prompts)
    layers = vector.layers if layers is None else check_layers(layers, model.dims.n_layers)
    missing = [l for l in layers if l not in vector.vectors]
    if missing:
        raise ValueError(f"layers: the steering vector has no direction for layers {missing}; it has {vector.layers}")
    if isinstance(multipliers, (int, float)) or not isinstance(multipliers, (list, tuple, np.ndarray)) or not len(multipliers):
        raise ValueError(f"multipliers: expected a non-empty list of numbers, got {multipliers!r}")
    multipliers = [_check_multiplier(m, "multipliers") for m in multipliers]
    if cost not in ("perplexity", "kl"):
        raise ValueError(f"cost: expected 'perplexity' or 'kl', got {cost!r}")
    if cost == "kl" and not neutral_texts:
        raise ValueError("neutral_texts: cost='kl' needs neutral texts to measure the KL on")
    if threshold is not None:
        threshold = _check_multiplier(threshold, "threshold")
    if not callable(behaviour):
        raise ValueError("behaviour: expected a callable (prompts, continuations) -> scores")
    _check_generation(max_new_tokens, batch_size, temperature, top_p)
    _position_selector(positions)

    cells = [(None, 0.0)] + [(l, m) for l in layers for m in multipliers]  # cell 0: unsteered
    rows = [(c, p) for c in cells for p in prompts]
    row_prompts = [p for _, p in rows]
    row_cells = [c for c, _ in rows]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), desc="steering sweep", disable=not progress)

    def ivs(a, b):
        bar.update(b - a)
        return _row_adds(model, vector, row_cells[a:b], positions)

    new_ids = _generate_ids(model, row_prompts, ivs, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                            temperature=temperature, top_p=top_p, batch_size=batch_size)
    bar.close()
    texts = [model.tokenizer.decode(r) for r in new_ids]
    # Scores come from outside the steering code, on the model with no hooks active.
    scores = np.asarray(behaviour(row_prompts, texts), dtype=float)
    if scores.shape != (len(rows),):
        raise ValueError(f"behaviour: returned shape {scores.shape}, expected one score per continuation ({len(rows)})")
    n_p = len(prompts)
    by_cell = scores.reshape(len(cells), n_p)
    if cost == "perplexity":
        nll, cnt = continuation_nll(model, row_prompts, new_ids, batch_size=batch_size)
        nll, cnt = nll.view(len(cells), n_p).sum(1), cnt.view(len(cells), n_p).sum(1)
        cost_cells = torch.exp(nll / cnt.clamp_min(1)).numpy()
        cost_name = "perplexity of steered continuations under the unsteered model"
    else:
        cost_cells = np.concatenate([[0.0], kl_on_text(model, vector, neutral_texts, cells[1:], batch_size=batch_size)])
        cost_name = "KL(unsteered || steered) on neutral text, nats/token"
    shape = (len(layers), len(multipliers))
    coords = {"layer": layers, "multiplier": multipliers}
    dims = ("layer", "multiplier")
    beh = LabelledArray(by_cell[1:].mean(1).reshape(shape), dims, coords, name=behaviour_name, meta={"metric": behaviour_name})
    succ = None if threshold is None else LabelledArray(
        (by_cell[1:] > threshold).mean(1).reshape(shape), dims, coords, name="success rate",
        meta={"metric": f"share with {behaviour_name} > {threshold}"})
    cst = LabelledArray(np.asarray(cost_cells[1:]).reshape(shape), dims, coords, name="cost", meta={"metric": cost_name})
    baseline = {"behaviour": float(by_cell[0].mean()), "cost": float(cost_cells[0]),
                "success": None if threshold is None else float((by_cell[0] > threshold).mean())}
    samples = [{"layer": c[0], "multiplier": c[1], "prompt": p, "continuation": t, "score": float(s)}
               for (c, p), t, s in zip(rows, texts, scores)]
    meta = {"model": model.name, "fingerprint": model.fingerprint, "component": vector.component,
            "vector": vector.meta, "positions": positions if isinstance(positions, (str, int, list)) else repr(positions),
            "cost": cost, "behaviour_name": behaviour_name, "threshold": threshold, "n_prompts": n_p,
            "max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
            "temperature": temperature if do_sample else None, "top_p": top_p if do_sample else None}
    return SteeringSweep(beh, succ, cst, baseline, samples, meta)
