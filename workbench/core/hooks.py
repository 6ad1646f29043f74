"""The one hook layer: every read or write of an activation in the project goes through `hooks()`.

It resolves site names, checks every intervention against the activation shapes before a
single hook is registered, registers at most one PyTorch hook per (module, before/after), and
removes them all on every exit path, exceptions included.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor

from .arch import eager_attention, forward_cache, module_device, pattern_unsupported
from .interventions import Intervention, PositionContext
from .sites import COMPONENTS, Site, parse_site
from . import checks


def site_shape(site: Site, batch: int, seq: int, dims) -> torch.Size:
    """Shape of the activation at `site` for a [batch, seq] input."""
    width = COMPONENTS[site.component][3]
    if width == "heads":
        return torch.Size((batch, seq, dims.n_heads, dims.d_head))
    if width == "pattern":
        return torch.Size((batch, dims.n_heads, seq, seq))
    if width in ("q", "kv"):
        return torch.Size((batch, seq, dims.n_heads if width == "q" else dims.n_kv_heads, dims.d_head))
    return torch.Size((batch, seq, getattr(dims, width)))


class _PositionTracker:
    """Records the position ids of each full-model forward, for interventions that select by position id.

    A pre-hook on the whole causal LM reads them from the forward's arguments: `position_ids` where
    given (generation passes them: left padding counted out, continuing after the KV cache), else
    past length + arange(seq), which is what the model itself uses. The forward that starts from an
    empty cache sets `prompt_end` (one past each row's last real token), kept through the
    generation steps that follow.
    """

    def __init__(self):
        self.ctx: PositionContext | None = None
        self.prompt_end: Tensor | None = None

    def pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if not isinstance(ref, Tensor):  # unknown call convention: selections by position id will refuse to run
            self.ctx = None
            return
        batch, seq = ref.shape[:2]
        past = forward_cache(kwargs)
        past_len = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = torch.arange(past_len, past_len + seq, device=ref.device)[None]
        elif pos.ndim == 3:  # multimodal rotary ids [3, batch, seq]: the text axis
            pos = pos[0]
        pos = pos.expand(batch, seq)
        if past_len == 0 or self.prompt_end is None or len(self.prompt_end) != batch:
            mask = kwargs.get("attention_mask")
            real = mask[:, -seq:].bool() if isinstance(mask, Tensor) and mask.ndim == 2 else torch.ones_like(pos, dtype=torch.bool)
            self.prompt_end = torch.where(real, pos, -1).max(1).values + 1
        self.ctx = PositionContext(pos, self.prompt_end)

    def post(self, module, args, output):
        self.ctx = None  # stale ids must never reach a later forward of a submodule


class _ResultCheck:
    """An intervened activation must be finite and small enough that the next norm's sum of squares (float32)
    does not overflow: past that the norm gives inf or 0 and every number downstream is meaningless (an
    intervention of 1e30 gave logits of exactly 0).

    Each hook only records max |x| of its result as a tensor (one min and one max, no copy, no host sync);
    `check()` compares them all with their limits in one sync, after each forward of the model (and when the
    `hooks` block ends, for forwards run block by block)."""

    def __init__(self):
        self.pending: list[tuple[Tensor, float, Site, list]] = []

    def add(self, act: Tensor, site: Site, interventions) -> None:
        if act.numel() == 0:
            return
        lo, hi = torch.aminmax(act.detach())
        top = torch.maximum(lo.abs(), hi.abs())
        self.pending.append((top, (torch.finfo(torch.float32).max / act.shape[-1]) ** 0.5, site, interventions))

    def check(self, *_) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        device = pending[0][0].device
        bad = torch.stack([(~(top <= limit)).to(device) for top, limit, _, _ in pending])  # NaN fails `<=` too
        if not bool(bad.any()):  # the one host sync of the forward
            return
        top, limit, site, interventions = pending[int(bad.nonzero()[0, 0])]
        top = abs(float(top))
        names = ", ".join(type(iv).__name__ for iv in interventions)
        raise ValueError(f"interventions: {names} at {site.name} made the activation "
                         f"{'non-finite' if top != top or top == float('inf') else f'overflow (|x| up to {top:.3g})'}; "
                         f"expected finite values with |x| <= {limit:.3g} (the next norm's squares must fit float32)")


class _SiteHook:
    def __init__(self, site: Site, dims, interventions: list[Intervention], cache: dict | None, detach: bool,
                 tracker: _PositionTracker | None = None, *, results: _ResultCheck):
        self.site, self.dims, self.interventions = site, dims, interventions
        self.cache, self.detach = cache, detach
        self.tracker = tracker
        self.results = results  # the block's: checked after each forward
        self.bound_shape: torch.Size | None = None

    def transform(self, x: Tensor) -> Tensor:
        act = x.unflatten(-1, (self.dims.n_heads, self.dims.d_head)) if self.site.has_heads else x
        if self.interventions and act.shape != self.bound_shape:
            # A new shape (e.g. a generation step): re-check the selections against it.
            for iv in self.interventions:
                iv.bind(self.site, act.shape, act.device)
            self.bound_shape = act.shape
        ctx = self.tracker.ctx if self.tracker is not None else None
        for iv in self.interventions:
            act = iv(act, ctx) if iv.needs_positions else iv(act)
        if self.interventions:
            self.results.add(act, self.site, self.interventions)
        if self.cache is not None:
            if not self.detach and torch.is_grad_enabled() and not act.requires_grad:
                # A frozen model (no parameter requires grad) must still give gradients w.r.t. its activations:
                # start the graph here. The clone keeps downstream in-place ops off a leaf.
                act = act.detach().requires_grad_().clone()
            self.cache[self.site.name] = act.detach() if self.detach else act
        return act.flatten(-2) if self.site.has_heads else act

    def pre(self, module, args, kwargs):
        if args:
            return (self.transform(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.transform(kwargs["hidden_states"])}

    def post(self, module, args, output):
        if isinstance(output, tuple):
            return (self.transform(output[0]), *output[1:])
        return self.transform(output)


# -- attention patterns: transformers' AttentionInterface, the documented way to swap an attention kernel ----

PATTERN_KERNEL = "workbench_pattern"
# attention module -> {component: its hooks in force} for the sites inside the kernel (pattern, rot_q, rot_k, v)
_KERNEL_HOOKS: dict[torch.nn.Module, dict[str, list[_SiteHook]]] = {}


def _pattern_kernel(module, query, key, value, attention_mask, **kwargs):
    """The family's own eager kernel (`core.arch.eager_attention`) with its inputs and probabilities passed
    through `module`'s kernel hooks: q, k, v [batch, heads, pos, d_head] (seen by a hook as [batch, pos, heads,
    d_head]) before it, P [batch, head, query, key] after its softmax; if a hook changed P, the output is
    recomputed as P' V (the kernel's own last step; a GQA key/value head serves n_heads / n_kv_heads query
    heads, as `repeat_kv` does)."""
    hooks = _KERNEL_HOOKS.get(module, {})

    def through(x, component):
        for h in hooks.get(component, ()):
            x = h.transform(x.transpose(1, 2)).transpose(1, 2)
        return x

    query, key, value = through(query, "rot_q"), through(key, "rot_k"), through(value, "v")
    out, pattern = eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
    new = pattern
    for h in hooks.get("pattern", ()):
        new = h.transform(new)
    if new is not pattern:
        v = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)  # [batch, n_heads, key, d_head]
        out = torch.matmul(new.to(v.dtype), v).transpose(1, 2).contiguous()  # [batch, query, n_heads, d_head]
    return out, new


def _register_pattern_kernel() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if PATTERN_KERNEL not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(PATTERN_KERNEL, _pattern_kernel)
        AttentionMaskInterface.register(PATTERN_KERNEL, eager_mask)  # the eager kernel's additive float mask


class _PatternRoute:
    """While sites inside the attention kernel are hooked: the model's attention runs `_pattern_kernel` (the eager
    kernel, whatever the model was loaded with), and each hooked attention module's hooks are listed;
    `remove()` undoes both."""

    def __init__(self, model, site_hooks: list[_SiteHook]):
        _register_pattern_kernel()
        self.config = model.hf.config
        self.previous = self.config._attn_implementation
        self.entries = [(model.module("attn", h.site.layer), h) for h in site_hooks]
        for module, h in self.entries:
            _KERNEL_HOOKS.setdefault(module, {}).setdefault(h.site.component, []).append(h)
        self.config._attn_implementation = PATTERN_KERNEL

    def remove(self):
        for module, h in self.entries:
            by_comp = _KERNEL_HOOKS[module]
            by_comp[h.site.component].remove(h)
            if not by_comp[h.site.component]:
                del by_comp[h.site.component]
            if not by_comp:
                del _KERNEL_HOOKS[module]
        self.config._attn_implementation = self.previous


@contextmanager
def hooks(
    model,
    interventions: Iterable[Intervention] = (),
    cache_sites: Iterable[str | Site] = (),
    *,
    input_shape: tuple[int, int] | None = None,
    detach: bool = True,
) -> Iterator[dict[str, Tensor]]:
    """Run the body with `interventions` applied and `cache_sites` recorded into the yielded dict.

    `model` is a `workbench.Model`. `input_shape` ([batch, seq]) lets every selection be checked
    before the forward pass; without it, checks happen at the first hook call. With
    `detach=False` the cached tensors stay in the autograd graph (attribution patching).
    """
    dims = model.dims
    interventions = list(interventions)
    by_site: dict[Site, list[Intervention]] = defaultdict(list)
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise checks.fail('interventions', 'workbench Intervention objects', type(iv).__name__)
        site = parse_site(iv.site, dims.n_layers)
        if input_shape is not None:
            iv.bind(site, site_shape(site, *input_shape, dims), _site_device(model, site))
        else:
            iv.site = site
        by_site[site].append(iv)
    cache: dict[str, Tensor] = {}
    cached = {parse_site(s, dims.n_layers) for s in cache_sites}

    # Only interventions that select by position id need the forward's position ids tracked.
    tracker = _PositionTracker() if any(iv.needs_positions for iv in interventions) else None
    site_hooks = []
    results = _ResultCheck()
    for site in sorted(set(by_site) | cached):
        h = _SiteHook(site, dims, by_site.get(site, []), cache if site in cached else None, detach, tracker,
                      results=results)
        if input_shape is not None and h.interventions:
            h.bound_shape = site_shape(site, *input_shape, dims)
        site_hooks.append(h)

    kernel_hooks = [h for h in site_hooks if COMPONENTS[h.site.component][2] == "kernel"]
    if kernel_hooks and (why := pattern_unsupported(model.hf, model.arch)):
        raise ValueError(f"site: {kernel_hooks[0].site.name} (inside the attention kernel) cannot be hooked on "
                         f"this model: {why}")
    handles = []
    try:
        if kernel_hooks:
            handles.append(_PatternRoute(model, kernel_hooks))
        if tracker is not None:
            handles.append(model.hf.register_forward_pre_hook(tracker.pre, with_kwargs=True))
            handles.append(model.hf.register_forward_hook(tracker.post))
        if by_site:
            handles.append(model.hf.register_forward_hook(results.check))
        for h in site_hooks:
            _, where, when, _ = COMPONENTS[h.site.component]
            if when == "kernel":
                continue
            module = model.module(where, h.site.layer)
            if when == "input":
                handles.append(module.register_forward_pre_hook(h.pre, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(h.post))
        yield cache
        results.check()  # forwards run block by block, not through model.hf
    finally:
        for handle in handles:
            handle.remove()


def _site_device(model, site: Site):
    """The device of the activation at `site`: its block's (a model split over devices keeps each layer's
    tensors there), else the model's."""
    return model.device if site.layer is None else module_device(model.module("block", site.layer), model.device)


class StopForward(Exception):
    """Raised by `run_until`'s hook once the module it waits for has run."""


def run_until(module: torch.nn.Module, forward) -> None:
    """Call `forward()` but stop it right after `module` runs: a forward hook on `module` raises `StopForward`,
    caught here, so every hook up to and including `module`'s has run and nothing after it does (the later
    blocks, the final norm and the unembedding of a `run_with_cache(logits=False)`)."""

    def stop(mod, args, output):
        raise StopForward

    handle = module.register_forward_hook(stop)
    try:
        forward()
    except StopForward:
        return
    finally:
        handle.remove()
    raise RuntimeError(f"run_until: {type(module).__name__} never ran, so the forward was not stopped after it")


def check_logits(logits: Tensor, interventions) -> None:
    """A forward that interventions made non-finite downstream of their site (the site itself is checked by
    `hooks._ResultCheck`) is refused rather than returned."""
    if isinstance(interventions, list) and interventions and not bool(torch.isfinite(logits).all()):
        names = ", ".join(f"{type(iv).__name__} at {getattr(iv, 'site', '?')}" for iv in interventions)
        raise ValueError(f"interventions: with {names} the logits are not finite (an overflow downstream of the "
                         "intervened site); expected interventions that keep the forward finite")
