"""Subspace interchange interventions and Distributed Alignment Search (Geiger et al. 2023, "Finding
Alignments Between Interpretable Causal Variables and Distributed Neural Representations").

An interchange intervention on a subspace with orthonormal basis R [k, d] replaces the component of the
base run's activation b in span(R) with that of a source run's activation s (DAS eq. 2):

    DII(b, s) = b + R^T R (s - b)

DAS learns R as the first k rows of an orthogonal matrix (torch.nn.utils.parametrizations.orthogonal) by
minimising the cross-entropy between the intervened model's output and the counterfactual label, the
output the high-level causal model gives when its variable takes the source's value (DAS eq. 3):

    min_R  sum_(b, s)  CE( M_{R: b <- s}(b), y_cf(b, s) )

The interpretability-illusion control (Makelov et al. 2023, "Is This the Subspace You Are Looking For?"):
a direction v splits into its part in the row space of the weights that read the site (the connected
part) and its part in their kernel (disconnected: it changes nothing by itself, but patching it can
wake a dormant path). `rowspace_split` gives both; `das` reports the interchange accuracy along v, along
its connected part alone, and along its disconnected part alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ..core.arch import weight_out_in
from ..core.interventions import Intervention, check_value
from ..core.sites import Site, parse_site
from ..core import checks


@dataclass
class SubspaceReplace(Intervention):
    """Take the selected block's component in span(`basis`) ([k, d], orthonormal rows) from `source`:
    x + ((source - x) B^T) B (DAS eq. 2). Differentiable in `basis` (DAS trains through it)."""

    basis: Tensor | None = None
    source: Tensor | None = None

    def check(self, shape):
        check_basis(self.basis, shape[-1], self.site)
        check_value(self.source, shape, "source", self.site)

    def update(self, x):
        basis = self.basis.to(x.device, x.dtype)
        return x + ((self.source.to(x.device, x.dtype) - x) @ basis.T) @ basis


def check_basis(basis, d: int, site: Site) -> None:
    if not isinstance(basis, Tensor) or basis.ndim != 2 or basis.shape[1] != d or not basis.is_floating_point():
        got = tuple(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__
        raise checks.fail('basis', f'a float tensor of shape [k, {d}] (the width of {site.name})', got)
    gram = basis.detach().double() @ basis.detach().double().T
    if not torch.allclose(gram, torch.eye(len(basis), dtype=torch.float64), atol=1e-4):
        raise ValueError("basis: rows must be orthonormal; pass workbench.orthonormalize(basis) first")


class Rotation(nn.Module):
    """An orthogonal d x d matrix; its first k rows are the learned subspace's basis."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        lin = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.linalg.qr(torch.randn(d, d, generator=gen))[0])
        self.lin = nn.utils.parametrizations.orthogonal(lin)
        self.k = k

    @property
    def basis(self) -> Tensor:
        return self.lin.weight[: self.k]


def _ids(model, inputs, arg: str) -> Tensor:
    if isinstance(inputs, Tensor):
        ids, _ = model.encode(inputs)
    else:
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise checks.fail(arg, 'a list of prompts or token ids [n, pos]', type(inputs).__name__)
        ids, mask = model.encode(list(inputs))
        if mask is not None:
            raise ValueError(f"{arg}: all prompts must tokenize to one length (the intervention reads one position)")
    return ids


def _labels(model, labels, n: int, arg: str) -> Tensor:
    if isinstance(labels, Tensor):
        out = labels.long().reshape(-1)
    elif isinstance(labels, (list, tuple)) and all(checks.is_int(x) for x in labels):
        out = torch.tensor(labels, dtype=torch.long)
    elif isinstance(labels, (list, tuple)) and all(isinstance(x, str) for x in labels):
        out = torch.tensor([model.to_single_token(x, arg) for x in labels])
    else:
        raise checks.fail(arg, 'token ids or single-token strings, one per example', labels)
    if len(out) != n:
        raise checks.fail(arg, f'{n} entries (one per base/source pair)', len(out))
    return out.to(model.device)


@dataclass
class InterchangeData:
    """Checked tensors of an interchange dataset."""

    site: Site
    base: Tensor  # [n, pos]
    source_act: Tensor  # [n, d] the source runs' activation at the position
    labels: Tensor  # [n] index into candidates of the counterfactual output
    candidates: Tensor  # [c] token ids the output is read over
    position: int


def prepare(model, site, base, source, labels, candidates, position: int = -1) -> InterchangeData:
    """Tokenize and check a base/source/label set; cache the sources' activations at `site`, `position`."""
    site = parse_site(site, model.dims.n_layers)
    if site.has_heads:
        raise ValueError(f"site: {site.name} has a head axis; give a site with one feature axis "
                         "(resid_pre, resid_post, attn_out, mlp_out, mlp_post, attn_in)")
    b, s = _ids(model, base, "base"), _ids(model, source, "source")
    if b.shape != s.shape:
        raise ValueError(f"source: shape {tuple(s.shape)} differs from base {tuple(b.shape)}; pairs need one length")
    checks.position(position, "position", b.shape[1])
    cand = _labels(model, candidates, len(candidates) if isinstance(candidates, (list, tuple, Tensor)) else -1, "candidates")
    ids = cand.tolist()
    if len(ids) < 2:
        raise checks.fail("candidates", "at least 2 distinct tokens (with one, accuracy is 1.0 whatever the "
                          "subspace)", candidates)
    for i, t in enumerate(ids):
        if t in ids[:i]:
            raise ValueError(f"candidates[{i}]: token {t} repeats candidates[{ids.index(t)}]; expected distinct "
                             "tokens (a repeated candidate makes the accuracy meaningless)")
    y = _labels(model, labels, len(b), "labels")
    where = (y[:, None] == cand[None]).int().argmax(1)
    if not (y[:, None] == cand[None]).any(1).all():
        raise ValueError("labels: every label must be one of the candidates")
    with torch.no_grad(), model.hooks(cache_sites=[site]) as cache:
        model.hf.base_model(input_ids=s, use_cache=False)
    return InterchangeData(site, b, cache[site.name][:, position], where, cand, position % b.shape[1])


def _intervened_logits(model, data: InterchangeData, basis: Tensor, rows: Tensor) -> Tensor:
    """[len(rows), candidates] logits at the last token with the subspace interchanged at the position."""
    iv = SubspaceReplace(data.site, positions=[data.position], basis=basis, source=data.source_act[rows][:, None])
    base = data.base[rows]
    with model.hooks([iv], input_shape=tuple(base.shape)):
        return candidate_logits(model, base, data.candidates)


def candidate_logits(model, ids: Tensor, candidates: Tensor) -> Tensor:
    """[batch, candidates] last-token logits of the candidate tokens only: the HF base model (which ends
    with the final norm in every supported family) then the candidates' rows of the unembedding, so
    training never pays for the full-vocabulary matmul."""
    h = model.hf.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    unembed = model.module("unembed")
    out = h @ weight_out_in(unembed)[candidates].T
    return out if getattr(unembed, "bias", None) is None else out + unembed.bias[candidates]


def interchange_accuracy(model, data: InterchangeData, basis: Tensor, batch_size: int = 256) -> float:
    """Fraction of pairs whose intervened output (argmax over the candidates) is the counterfactual label."""
    hits = 0
    with torch.no_grad():
        for start in range(0, len(data.base), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(data.base)), device=data.base.device)
            hits += (_intervened_logits(model, data, basis, rows).argmax(-1) == data.labels[rows]).sum().item()
    return hits / len(data.base)


def rowspace_split(model, site, direction: Tensor, head: int | None = None) -> tuple[Tensor, Tensor]:
    """(connected, disconnected) parts of `direction` [d] at `site`: its projection on the row space of the
    weights that read the site, and the rest (in their kernel).

    Readers: mlp_post -> the MLP's down projection; z -> the head's slice of the out projection (give `head`).
    Residual-stream sites are read by every later layer (full rank in general), so they are refused.
    """
    site = parse_site(site, model.dims.n_layers)
    if site.component == "mlp_post":
        W = weight_out_in(model.module("mlp_down", site.layer))  # [d_model, d_mlp]
    elif site.component == "z":
        if head is None:
            raise ValueError("head: a z site needs the head whose out-projection slice reads the direction")
        dh = model.dims.d_head
        W = weight_out_in(model.module("attn_out_proj", site.layer))[:, head * dh:(head + 1) * dh]
    else:
        raise ValueError(f"site: the row-space control needs a site read by one weight matrix (mlp_post, z), got {site.name}")
    if direction.shape != (W.shape[1],):
        raise checks.fail('direction', f'shape [{W.shape[1]}] for {site.name}', tuple(direction.shape))
    W = W.detach().double()
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    rows = Vh[S > S.max() * 1e-6]  # orthonormal basis of the row space
    v = direction.detach().double().to(W.device)
    connected = (v @ rows.T) @ rows
    return connected.to(direction.dtype), (v - connected).to(direction.dtype)


@dataclass
class DASResult:
    basis: Tensor  # [k, d] the learned subspace
    accuracy: float  # interchange accuracy along it (on the evaluation set)
    losses: list[float] = field(default_factory=list)
    control: dict = field(default_factory=dict)  # the row-space control (k = 1, mlp_post or z sites)


def das(model, site, base, source, labels, candidates, *, k: int = 1, position: int = -1, steps: int = 200,
        lr: float = 1e-2, batch_size: int = 64, seed: int = 0, eval_data: tuple | None = None,
        progress: bool = False) -> DASResult:
    """Learn a k-dimensional subspace at `site` whose interchange turns base outputs into counterfactual ones.

    base, source: equal-length prompt lists or token ids [n, pos]; labels: the counterfactual output token
    per pair; candidates: the output tokens compared (the high-level model's output values). The model's
    weights are not changed (only the rotation gets gradients). eval_data: (base, source, labels) to
    report accuracy on instead of the training pairs. progress: a tqdm bar over the steps (rate, time left).
    """
    from tqdm.auto import tqdm

    data = prepare(model, site, base, source, labels, candidates, position)
    d = data.source_act.shape[-1]
    checks.integer(k, "k", 1, d)  # at most the width of the site
    for name, val in (("steps", steps), ("batch_size", batch_size)):
        checks.integer(val, name)
    checks.learning_rate(lr)
    rot = Rotation(d, k, seed).to(model.device)
    opt = torch.optim.Adam(rot.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc=f"DAS at {data.site.name}", unit="step"):
        rows = torch.randint(len(data.base), (min(batch_size, len(data.base)),), generator=gen).to(model.device)
        logits = _intervened_logits(model, data, rot.basis, rows)
        loss = nn.functional.cross_entropy(logits.float(), data.labels[rows])  # DAS eq. 3
        grads = torch.autograd.grad(loss, list(rot.parameters()))  # the model's own parameters get no .grad
        for p, g in zip(rot.parameters(), grads):
            p.grad = g
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    basis = rot.basis.detach().clone()
    test = data if eval_data is None else prepare(model, site, *eval_data, candidates, position)
    result = DASResult(basis, interchange_accuracy(model, test, basis), losses)
    if k == 1 and data.site.component == "mlp_post":
        connected, disconnected = rowspace_split(model, data.site, basis[0])
        c_norm, d_norm = connected.norm().item(), disconnected.norm().item()
        result.control = {
            "connected_norm": c_norm, "disconnected_norm": d_norm,
            "accuracy_connected": interchange_accuracy(model, test, (connected / c_norm)[None]) if c_norm > 1e-6 else None,
            "accuracy_disconnected": interchange_accuracy(model, test, (disconnected / d_norm)[None]) if d_norm > 1e-6 else None,
        }
    return result
