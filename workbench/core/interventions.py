"""Interventions: what happens to an activation at a site.

Every feature (patching, tracing, steering, concept ablation) is a list of these, run by the one
hook layer in `workbench.hooks`. Each intervention selects a block of the activation by batch
rows, positions and (for `attn.hook_z`) heads; the selections combine as an outer product, so
`rows=[3], positions=[5]` touches row 3 at position 5 only. Row i can thus get a different
intervention than row j in the same forward pass, which the batched patching engine relies on.

The selected block has shape [rows, positions, d] (or [rows, positions, heads, d_head]); a
`value` must broadcast to it. With `pointwise=True` the selections are instead equal-length index
lists, element k touching `(rows[k], positions[k][, heads[k]])`: the block is [k, d] (or [k, d_head]),
which lets one intervention scatter a different value into every row of a batch. All updates are out of place, so gradients flow through them
(concept ablation during fine-tuning depends on this).

`positions` may also be a `PositionSelector` (`FromPosition`, `AtPositions`, `Generated`): positions
chosen by each token's position id (its index in its own sequence) instead of its index in the
current activation. That is what generation with a KV cache needs, where each step's forward sees
only the new tokens. The selected block is then the whole activation (or the chosen rows), and the
update is kept only where the selector's mask is true.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import torch
from torch import Tensor

from .sites import Site
from . import checks

Index = int | slice | list[int] | tuple[int, ...] | range | Tensor | None


def as_index(sel: Index, size: int, arg: str) -> Tensor | None:
    """A checked LongTensor of indices into a dimension of `size`, or None for all of it."""
    if sel is None:
        return None
    if isinstance(sel, slice):
        return torch.arange(size)[sel]
    if isinstance(sel, Tensor):
        if sel.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"{arg}: expected integer indices, got a tensor of dtype {sel.dtype}")
        idx = sel.reshape(-1).long().cpu()
    elif checks.is_int(sel):
        idx = torch.tensor([sel])
    elif isinstance(sel, (list, tuple, range)) and all(checks.is_int(i) for i in sel):
        idx = torch.tensor(list(sel), dtype=torch.long)
    else:
        raise checks.fail(arg, 'an int, a list of ints, a slice or an integer tensor', sel)
    if idx.numel() == 0:
        raise checks.fail(arg, "a non-empty selection", sel)
    bad = (idx < -size) | (idx >= size)
    if bad.any():
        raise ValueError(f"{arg}: index {int(idx[bad][0])} out of range; expected -{size}..{size - 1}")
    return idx % size


@dataclass(frozen=True)
class PositionContext:
    """What the hook layer knows about the running forward's positions.

    `position_ids` [batch, seq]: each token's position in its own sequence (the model's position ids;
    with a KV cache they continue after the cached tokens). `prompt_end` [batch]: one past the last
    real token of the most recent forward that started from an empty cache (the prompt, in generation).
    """

    position_ids: Tensor
    prompt_end: Tensor


class PositionSelector:
    """Positions chosen by position id; `mask(ctx)` -> bool [batch, seq]."""

    def mask(self, ctx: PositionContext) -> Tensor:
        raise NotImplementedError


def _per_row(value, arg: str) -> Tensor:
    if checks.is_int(value):
        return torch.tensor([value])
    if isinstance(value, Tensor) and value.ndim == 1 and not value.is_floating_point():
        return value.long().cpu()
    if isinstance(value, (list, tuple)) and value and all(checks.is_int(v) for v in value):
        return torch.tensor(list(value), dtype=torch.long)
    raise checks.fail(arg, 'an int or a non-empty list of ints (one per batch row)', value)


@dataclass(frozen=True, eq=False)
class FromPosition(PositionSelector):
    """Every token whose position id is >= `start` (an int, or one int per batch row)."""

    start: int | list[int] | Tensor

    def __post_init__(self):
        if (_per_row(self.start, "start") < 0).any():
            raise checks.fail('start', 'positions >= 0', self.start)

    def mask(self, ctx):
        start = _per_row(self.start, "start").to(ctx.position_ids.device)
        if len(start) not in (1, ctx.position_ids.shape[0]):
            raise ValueError(f"start: {len(start)} per-row starts for a batch of {ctx.position_ids.shape[0]} rows")
        return ctx.position_ids >= start[:, None]


@dataclass(frozen=True, eq=False)
class AtPositions(PositionSelector):
    """The tokens whose position ids are in `indices` (the same for every row)."""

    indices: list[int] | tuple[int, ...] | range

    def __post_init__(self):
        idx = _per_row(list(self.indices) if isinstance(self.indices, range) else self.indices, "positions")
        if (idx < 0).any():
            raise checks.fail("positions", "position ids >= 0 (no counting from the end in generation)", self.indices)

    def mask(self, ctx):
        idx = torch.as_tensor(list(self.indices), dtype=torch.long, device=ctx.position_ids.device)
        return (ctx.position_ids[..., None] == idx).any(-1)


@dataclass(frozen=True, eq=False)
class Generated(PositionSelector):
    """Generated tokens only: position ids at or after the end of each row's prompt.

    The prompt is the most recent forward that started from an empty KV cache (what `generate` runs
    first), so this selects nothing in a plain forward or in generation without a cache.
    """

    def mask(self, ctx):
        return ctx.position_ids >= ctx.prompt_end[:, None]


@dataclass
class Intervention:
    """Base class: a site plus a selection of rows, positions and heads.

    The activation at the site is [batch, pos, d] ([batch, pos, n_heads, d_head] for `attn.hook_z`).
    `rows`, `positions`, `heads` select indices on those axes (None: all); the selection is their outer
    product, [n_rows, n_positions(, n_heads), d], unless `pointwise`, where the three index lists have one
    length n and select the n cells (row_i, position_i(, head_i)), [n, d]. Tensor arguments of the
    subclasses broadcast to the selected block.
    """

    site: Site | str
    _: KW_ONLY
    rows: Index = None
    positions: Index = None
    heads: Index = None
    pointwise: bool = False
    _index: tuple | None = field(default=None, init=False, repr=False)

    def bind(self, site: Site, shape: torch.Size, device: torch.device) -> None:
        """Check against the activation's shape and prepare indices; the hook layer calls this before any hook is set."""
        self.site = site
        axes = site.axes  # e.g. (rows, positions, heads) for attn.hook_z, (rows, heads, positions) for a pattern
        if self.heads is not None and "heads" not in axes:
            raise ValueError(f"heads: site {self.site.name} has no head dimension; heads apply to attn.hook_z "
                             "and attn.hook_pattern")
        sizes = shape[:len(axes)]
        by_id = isinstance(self.positions, PositionSelector)
        if by_id and self.pointwise:
            raise ValueError("positions: a PositionSelector cannot be combined with pointwise=True")
        if by_id and axes[1] != "positions":
            raise ValueError(f"positions: a PositionSelector cannot select the queries of {self.site.name}; "
                             "give query indices")
        sel = {"rows": self.rows, "positions": None if by_id else self.positions, "heads": self.heads}
        idx = [as_index(sel[a], n, a) for a, n in zip(axes, sizes)]
        if self.pointwise:
            given = [i for i in idx if i is not None]
            by_name = dict(zip(axes, idx))
            if by_name["rows"] is None or by_name["positions"] is None or len({len(i) for i in given}) != 1:
                raise ValueError("positions: pointwise=True needs rows, positions (and heads, if given) as index "
                                 f"lists of one length, got lengths {[None if i is None else len(i) for i in idx]}")
            # an axis left whole between two indexed ones (a pattern's heads) stays a slice: block [n, heads, key]
            last = max(k for k, i in enumerate(idx) if i is not None)
            self._index = tuple(slice(None) if i is None else i.to(device) for i in idx[:last + 1])
        elif all(i is None for i in idx):
            self._index = None
        else:
            full = [torch.arange(n) if i is None else i for i, n in zip(idx, sizes)]
            grids = torch.meshgrid(*full, indexing="ij")
            self._index = tuple(g.to(device) for g in grids)
        self._selected_shape = self._selected(torch.empty(shape, device="meta")).shape
        self._check_finite()
        self.check(self._selected_shape)

    def _check_finite(self) -> None:
        """Every tensor or number an intervention carries must be finite: a NaN vector would make NaN logits silently."""
        from dataclasses import fields

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("site", "rows", "positions", "heads", "pointwise", "_index"):
                continue
            if isinstance(v, Tensor) and v.is_floating_point():
                if not bool(torch.isfinite(v.detach()).all()):
                    raise ValueError(f"{f.name}: holds NaN or inf; expected finite values")
            elif isinstance(v, float):
                checks.number(v, f.name)

    def _selected(self, act: Tensor) -> Tensor:
        return act if self._index is None else act[self._index]

    @property
    def needs_positions(self) -> bool:
        """True when the selection depends on position ids (the hook layer then tracks them)."""
        return isinstance(self.positions, PositionSelector)

    def __call__(self, act: Tensor, ctx: PositionContext | None = None) -> Tensor:
        if self.needs_positions:
            return self._masked(act, ctx)
        if self._index is None:
            return self.update(act)
        out = act.clone()
        out[self._index] = self.update(act[self._index]).to(act.dtype)
        return out

    def _masked(self, act: Tensor, ctx: PositionContext | None) -> Tensor:
        if ctx is None or tuple(ctx.position_ids.shape) != tuple(act.shape[:2]):
            got = None if ctx is None else tuple(ctx.position_ids.shape)
            raise ValueError(f"positions: a PositionSelector needs the position ids of a full model forward "
                             f"matching the activation's [batch, pos] {tuple(act.shape[:2])}, got {got}")
        mask = self.positions.mask(ctx)  # [batch, pos]
        block = self._selected(act)
        keep = mask if self._index is None else mask[self._index[0], self._index[1]]
        keep = keep.reshape(keep.shape + (1,) * (block.ndim - keep.ndim))
        new = torch.where(keep, self.update(block).to(act.dtype), block)
        if self._index is None:
            return new
        out = act.clone()
        out[self._index] = new
        return out

    def check(self, selected_shape: torch.Size) -> None:
        """Validate the intervention's own arguments against the selected block's shape."""

    def update(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def _scalar(v, arg: str, minimum: float | None = None) -> float:
    """A finite number (not a bool); a one-element tensor is read as its value."""
    return checks.number(v.item() if isinstance(v, Tensor) and v.numel() == 1 else v, arg, minimum=minimum)


def check_value(value: Tensor, selected_shape: torch.Size, arg: str, site: Site) -> None:
    if not isinstance(value, Tensor):
        raise checks.fail(arg, 'a tensor', type(value).__name__)
    if not value.is_floating_point():
        raise ValueError(f"{arg}: expected a floating-point tensor, got dtype {value.dtype}")
    try:
        ok = torch.broadcast_shapes(value.shape, selected_shape) == selected_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{arg}: shape {tuple(value.shape)} does not broadcast to the selected block "
            f"{tuple(selected_shape)} of {site.name} ({', '.join(site.axes)}, features)"
        )


@dataclass
class Replace(Intervention):
    """Set the selected block to `value` (activation patching); `value` broadcasts to the selection, e.g. [d]."""

    value: Tensor | None = None

    def check(self, shape):
        check_value(self.value, shape, "value", self.site)

    def update(self, x):
        return self.value.to(x.device, x.dtype).expand_as(x)


@dataclass
class Add(Intervention):
    """Add `multiplier * vector` (steering); `vector` broadcasts to the selection, e.g. [d] or [n_rows, 1, d]."""

    vector: Tensor | None = None
    multiplier: float = 1.0

    def check(self, shape):
        check_value(self.vector, shape, "vector", self.site)
        _scalar(self.multiplier, "multiplier")

    def update(self, x):
        return x + self.multiplier * self.vector.to(x.device, x.dtype)


@dataclass
class Scale(Intervention):
    """Multiply by `factor` (0 gives zero ablation)."""

    factor: float = 0.0

    def check(self, shape):
        _scalar(self.factor, "factor")

    def update(self, x):
        return x * self.factor


@dataclass
class Noise(Intervention):
    """Add Gaussian noise of standard deviation `std`, drawn from `seed` (causal-tracing corruption)."""

    std: float = 1.0
    seed: int = 0

    def check(self, shape):
        _scalar(self.std, "std", minimum=0)

    def update(self, x):
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        return x + self.std * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)


@dataclass
class ProjectOut(Intervention):
    """Remove the component of the activation in span(`basis`) ([k, d], orthonormal rows).

    fill="zero": x - (x B^T) B.   fill="mean": x - ((x - mean) B^T) B, so the projection onto the
    subspace is replaced by that of `mean` ([d]) instead of zero.
    """

    basis: Tensor | None = None
    fill: str = "zero"
    mean: Tensor | None = None

    def check(self, shape):
        d = shape[-1]
        b = self.basis
        if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[1] != d or not b.is_floating_point():
            got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise checks.fail('basis', f'a float tensor of shape [k, {d}] for {self.site.name}', got)
        gram = b.double() @ b.double().T
        if not torch.allclose(gram, torch.eye(len(b), dtype=torch.float64), atol=1e-4):
            raise ValueError("basis: rows must be orthonormal; pass workbench.orthonormalize(basis) first")
        if self.fill not in ("zero", "mean"):
            raise checks.fail('fill', "'zero' or 'mean'", self.fill)
        if self.fill == "mean":
            if not isinstance(self.mean, Tensor) or self.mean.shape != (d,):
                got = tuple(self.mean.shape) if isinstance(self.mean, Tensor) else self.mean
                raise ValueError(f"mean: fill='mean' needs a tensor of shape [{d}], got {got}")

    def update(self, x):
        basis = self.basis.to(x.device, x.dtype)
        centred = x if self.fill == "zero" else x - self.mean.to(x.device, x.dtype)
        return x - (centred @ basis.T) @ basis


def orthonormalize(directions: Tensor, tol: float = 1e-6) -> Tensor:
    """Orthonormal rows spanning the same space as `directions` ([k, d]); drops dependent ones."""
    if directions.ndim == 1:
        directions = directions[None]
    if directions.ndim != 2:
        raise checks.fail('directions', 'shape [k, d]', tuple(directions.shape))
    q, r = torch.linalg.qr(directions.double().T)
    keep = r.diagonal().abs() > tol * r.diagonal().abs().max().clamp_min(1e-30)
    q = q[:, keep] * torch.sign(r.diagonal()[keep])
    return q.T.to(directions.dtype)
