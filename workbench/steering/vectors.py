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

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..core.generation import check_generation, check_prompts, generate
from ..core.interventions import Add, AtPositions, FromPosition, Generated, PositionSelector
from ..data import resolve
from ..toolkit.prompts import read_lines
from ..toolkit.records import read_records
from ..core.sites import check_layers, check_residual_component, parse_site
from ..directions import store
from ..directions.activations import read_activations
from ..core import checks

METHODS = ("mean_diff", "pca", "probe")
# The unsteered model as a sentiment classifier: log p(" positive") - log p(" negative") after this
# prompt (right on all 32 sentences of data/steering/sentiment_eval.jsonl with the default model).
SENTIMENT_TEMPLATE = 'Review: "{text}"\nSentiment (positive or negative):'


# -- data ---------------------------------------------------------------------------------------

def load_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """A JSONL file of {"positive": str, "negative": str} lines -> (positives, negatives)."""
    pos, neg = [], []
    for n, row in read_records(resolve(path), "pairs", {"positive": str, "negative": str}):
        pos.append(row["positive"])
        neg.append(row["negative"])
    return _check_pairs(pos, neg)


def load_lines(path: str | Path, arg: str = "file") -> list[str]:
    """Non-empty lines of a text file, `#` comment lines dropped (prompts, word lists, neutral text)."""
    return read_lines(resolve(path), arg)


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
            raise checks.fail(arg, 'a list of strings', type(texts).__name__)
        if not texts:
            raise checks.fail(arg, "a non-empty list (a steering vector needs at least one contrast pair)", texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t:
                raise checks.fail(f"{arg}[{i}]", "a non-empty string", t)
    if len(positives) != len(negatives):
        raise ValueError(f"negatives: {len(negatives)} negative examples for {len(positives)} positive ones; "
                         "contrast pairs need one negative per positive")
    return list(positives), list(negatives)


def check_multiplier(m, arg: str = "multiplier") -> float:
    return checks.number(m, arg)


# -- the vector ---------------------------------------------------------------------------------

def position_selector(positions) -> PositionSelector | None:
    """'all' | None -> every position; 'generated'; int p -> position ids >= p; list -> those ids."""
    if positions is None or positions == "all":
        return None
    if positions == "generated":
        return Generated()
    if isinstance(positions, PositionSelector):
        return positions
    if checks.is_int(positions):
        if positions < 0:
            raise checks.fail("positions", "a position >= 0 ('from a position on')", positions)
        return FromPosition(positions)
    if isinstance(positions, (list, tuple, range)) and len(positions) and all(
            checks.is_int(p) for p in positions):
        return AtPositions(list(positions))
    raise checks.fail("positions", "'all', 'generated', an int (from that position on), a non-empty list of token "
                      "positions, or a PositionSelector", positions)


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
        check_residual_component(self.component)
        if not isinstance(self.vectors, dict) or not self.vectors:
            raise checks.fail("vectors", "a non-empty dict {layer: tensor [d_model]}", self.vectors)
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
        multiplier = check_multiplier(multiplier)
        selector = position_selector(positions)
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
        """Write the vectors in the one direction file format (`workbench.directions.store`), atomically."""
        meta = {**self.meta, "kind": "steering_vector", "component": self.component, "layers": self.layers}
        return store.save_directions(path, self.vectors, meta)

    @classmethod
    def load(cls, path: str | Path, model=None) -> "SteeringVector":
        """Read a file written by `save`; with `model`, refuse another width or layer count (and warn
        when the weights' fingerprint differs: same shape, other model)."""
        vectors, meta = store.load_directions(path)
        if None in vectors or "component" not in meta:
            raise store.DirectionFileError(f"path: {path} is not a steering vector (no per-layer vectors and component)")
        component = meta.pop("component")
        for k in ("layers", "d_model", "kind"):
            meta.pop(k, None)
        sv = cls(vectors, component, meta)
        if model is not None:
            sv.check_model(model)
            store.check_model(vectors, meta, model, path)
        return sv


def probe_directions(model, direction, layers: Sequence[int]) -> dict[int, Tensor]:
    """A probe direction as {layer: [d_model]} through the one direction reader (`directions.load`: a tensor
    [d_model] for every layer, [n_layers, d_model] row L for layer L, a dict {layer: [d_model]}, or a direction
    file); each must be one non-zero direction."""
    out = store.load(direction, model, layers, arg="direction")
    for l, d in out.items():
        if d.ndim != 1 or d.norm() == 0:
            raise ValueError(f"direction: layer {l}: expected a finite, non-zero direction [{model.dims.d_model}], "
                             f"got {tuple(d.shape)}")
    return out


def build_steering_vector(model, positives=None, negatives=None, *, layers, method: str = "mean_diff",
                          read_at: int | str = -1, component: str = "resid_pre", direction=None,
                          batch_size: int = 16) -> SteeringVector:
    """A steering vector per layer from contrast pairs (see the module docstring for the equations).

    `positives` / `negatives`: equal-length lists of texts (pair i = positives[i], negatives[i]), or
    `positives` alone as a list of (positive, negative) tuples or {"positive", "negative"} dicts.
    `method="probe"` takes `direction` (see `probe_directions`); with pairs its sign and length are fixed
    from them, without pairs it is used as given.
    """
    if method not in METHODS:
        raise checks.fail('method', f'one of {METHODS}', method)
    check_residual_component(component)
    layers = check_layers(layers, model.dims.n_layers)
    probe = probe_directions(model, direction, layers) if method == "probe" else None
    if method == "probe" and direction is None:
        raise ValueError("direction: method='probe' needs a direction")
    if method != "probe" and direction is not None:
        raise ValueError(f"direction: only used with method='probe', not {method!r}")
    meta = {"method": method, "read_at": read_at, "model": model.name, "model_fingerprint": model.fingerprint,
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
    zero = [l for l, v in vectors.items() if not v.norm() > 0]
    if zero and len(zero) == len(vectors):
        raise ValueError(f"positives: the steering vector has norm 0 at every layer {zero}: the positive and negative "
                         "texts give identical activations (identical texts?); a contrast pair must differ")
    if zero:
        warnings.warn(f"positives: the steering vector has norm 0 at layers {zero} (the pairs' activations are identical "
                      "there, e.g. at layer 0 when the texts end in the same token read at); steering there does nothing",
                      stacklevel=2)
    return SteeringVector({l: v.float() for l, v in vectors.items()}, component, {**meta, "n_pairs": len(positives)})


# -- applying -----------------------------------------------------------------------------------

SteeringSpec = SteeringVector | Sequence[tuple[SteeringVector, float]]


def _as_list(steering, multiplier) -> list[tuple[SteeringVector, float]]:
    if isinstance(steering, SteeringVector):
        return [(steering, multiplier)]
    if isinstance(steering, (list, tuple)) and steering and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], SteeringVector) for s in steering):
        return [(s, m) for s, m in steering]
    raise checks.fail("steering", "a SteeringVector or a non-empty list of (SteeringVector, multiplier) pairs",
                      steering)


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


def generate_steered(model, prompts, steering: SteeringSpec | None = None, multiplier: float = 1.0, *, positions="all",
             layers=None, max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16) -> list[str]:
    """Continuations of `prompts` (greedy by default; seeded sampling with `do_sample=True`), steered
    by `steering` (a vector, or a list of (vector, multiplier) pairs) or unsteered with None: the one `generate`
    (`workbench.generate`) run with the vectors' `steering_interventions`.

    Prompts are batched with left padding; `positions` are position ids (see `steer`), so
    "generated" means each row's own new tokens.
    """
    prompts = check_prompts(prompts)
    check_generation(max_new_tokens, batch_size, temperature, top_p)
    ivs = [] if steering is None else steering_interventions(model, steering, multiplier, positions=positions, layers=layers)
    return generate(model, prompts, ivs, max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                    temperature=temperature, top_p=top_p, batch_size=batch_size)
