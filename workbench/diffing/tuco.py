"""TuCo: the exact split of a fine-tuned forward into a pre-training and a fine-tuning component, per layer
(Nuti, Franzmeyer & Henriques, "TuCo: Measuring the Contribution of Fine-Tuning to Individual Responses of
LLMs", ICML 2025, Algorithm 1), and the alpha-scaled fine-tune built on it.

On the fine-tuned model's own residual stream x_l (x_0: the fine-tuned model's embeddings), layer l's update
splits exactly into

    PTC_l = f_PT(x_l, l)                      the base (pre-trained) block's update, f(x) = block(x) - x
    FTC_l = f_FT(x_l, l) - f_PT(x_l, l)       the fine-tuning component: what the fine-tuned block adds to it
    x_{l+1} = x_l + PTC_l + FTC_l             (the fine-tuned forward, exactly)

and TuCo, at the last token, is the share of the summed fine-tuning component:

    TuCo = ||sum_l FTC_l[-1]|| / (||sum_l PTC_l[-1]|| + ||sum_l FTC_l[-1]||)

Scaling the fine-tuning component by alpha (the paper's steering experiment) runs

    x_{l+1} = x_l + PTC_l + alpha * FTC_l = lerp(base_block(x_l), tuned_block(x_l), alpha)

with both components recomputed on the scaled stream: alpha 0 runs the base blocks on the stream (the base
model exactly, where embeddings and unembedding were not tuned), alpha 1 the fine-tuned model bit for bit.

`ScaledFineTune` is that model as a `workbench.Model`: it shares both models' weights (nothing is copied but
module objects) and takes every site, intervention and tool a Model takes: steering sweeps, counterfactual
strings (as the second model), activation and cross-model patching (whose engine runs it as full forwards).
Block-level sites (resid_pre / resid_post) see the scaled stream; sites inside a block (attn_out, mlp_out,
z, ...) are the fine-tuned block's own internals on it.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..patching.cross_model import check_same_shape
from ..toolkit.results import LabelledArray
from ..core.model import Model
from ..counterfactual.decode import check_same_vocabulary
from ..core import checks

_SHADOW = "_workbench_base_cache"  # the base blocks' own KV cache, kept on the fine-tuned forward's cache object


def check_pair(base: Model, tuned: Model) -> None:
    """Refuse a base / fine-tuned pair that cannot be diffed block by block (shapes and tokenizer named)."""
    for arg, m in (("base", base), ("tuned", tuned)):
        if not isinstance(m, Model):
            raise checks.fail(arg, 'a workbench Model', type(m).__name__)
    check_same_shape(base, tuned)
    check_same_vocabulary(base, tuned, "tuned")


def _alphas(alpha, n_layers: int) -> list[float]:
    """One finite alpha per layer from a number or a per-layer sequence."""
    vals = [alpha] * n_layers if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else alpha
    if not isinstance(vals, (list, tuple)) or len(vals) != n_layers or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and np.isfinite(a) for a in vals):
        raise checks.fail('alpha', f'a finite number or {n_layers} finite numbers (one per layer)', alpha)
    return [float(a) for a in vals]


def _cache_in(args, kwargs):
    """(the KV cache a block call got, its argument index or keyword), or (None, None); some families (GPT-2)
    pass it positionally."""
    from transformers import Cache

    for where, v in [*enumerate(args), *kwargs.items()]:
        if isinstance(v, Cache):
            return v, where
    return None, None


class _BlockSplit:
    """The hooks on one (copied) fine-tuned block: run the base block on the same input and mix the outputs."""

    def __init__(self, owner: "ScaledFineTune", layer: int, base_block: torch.nn.Module):
        self.owner, self.layer, self.base_block = owner, layer, base_block

    def pre(self, module, args, kwargs):
        cache = _cache_in(args, kwargs)[0]
        if cache is not None and getattr(cache, _SHADOW, None) is None:
            if cache.get_seq_length() > 0:
                raise ValueError("model: this KV cache was filled by a forward without the base blocks; a TuCo-scaled "
                                 "model must start its cache itself (pass no cache on the first forward)")
            # an empty copy with the same layer kinds (sliding-window layers stay windowed), for the base blocks
            setattr(cache, _SHADOW, copy.deepcopy(cache))

    def post(self, module, args, kwargs, output):
        cache, where = _cache_in(args, kwargs)
        if cache is not None:  # the base block reads and extends its own cache
            args, kwargs = list(args), dict(kwargs)
            (args if isinstance(where, int) else kwargs)[where] = getattr(cache, _SHADOW)
        base_out = self.base_block(*args, **kwargs)
        tuned_h = output[0] if isinstance(output, tuple) else output
        base_h = base_out[0] if isinstance(base_out, tuple) else base_out
        x = args[0] if args else kwargs["hidden_states"]
        alpha = self.owner.alphas[self.layer]
        # x_{l+1} = x_l + PTC_l + alpha FTC_l = lerp(base_out, tuned_out, alpha): exact at alpha 0 and 1
        mixed = tuned_h if alpha == 1.0 else base_h if alpha == 0.0 else torch.lerp(base_h, tuned_h, alpha)
        if self.owner._record is not None:
            self.owner._record.setdefault(self.layer, []).append((base_h - x, tuned_h - base_h))  # (PTC_l, FTC_l)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


class ScaledFineTune(Model):
    """The fine-tuned model with its fine-tuning component scaled by `alpha` per layer (TuCo's steering).

    `alpha`: one number or one per layer; change it with `set_alpha` (no rebuild). Shares the weights of `base`
    and `tuned` (the module tree of `tuned` is copied, its parameters are not). Patching takes the engine's packed
    suffix path: `prefix_cache` hands each base block its own keys and values of the target run's prefix.
    """

    def __init__(self, base: Model, tuned: Model, alpha: float | Sequence[float] = 1.0):
        check_pair(base, tuned)
        shared = {id(t): t for t in (*tuned.hf.parameters(), *tuned.hf.buffers())}
        hf = copy.deepcopy(tuned.hf, memo=shared)  # new module objects (own hooks), the same weight tensors
        super().__init__(hf, tuned.tokenizer, name=tuned.name)
        self.base, self.tuned = base, tuned
        self._record: dict | None = None
        self.set_alpha(alpha)
        for l in range(self.dims.n_layers):
            split = _BlockSplit(self, l, base.module("block", l))
            block = self.module("block", l)
            block.register_forward_pre_hook(split.pre, with_kwargs=True)
            block.register_forward_hook(split.post, with_kwargs=True)  # first: the hook layer's sites see the mix

    def prefix_cache(self, cache, layer: int, rows):
        """The fine-tuned block's prefix keys and values, carrying the base block's own (from the same forward's
        shadow cache) for `_BlockSplit.post` to pass to the base block."""
        shadow = getattr(cache, _SHADOW, None)
        if shadow is None:
            raise ValueError("cache: not filled by a forward of this scaled model (no base-block cache on it)")
        past = super().prefix_cache(cache, layer, rows)
        setattr(past, _SHADOW, super().prefix_cache(shadow, layer, rows))
        return past

    def set_alpha(self, alpha: float | Sequence[float]) -> "ScaledFineTune":
        self.alphas = _alphas(alpha, self.dims.n_layers)
        self.name = f"{self.tuned.name} (fine-tuning component x {_short(self.alphas)})"
        return self

    @contextmanager
    def recording(self):
        """Record (PTC_l, FTC_l), each [batch, pos, d_model], of every block call in the body: {layer: [pairs]}."""
        self._record = {}
        try:
            yield self._record
        finally:
            self._record = None


def _short(alphas: list[float]) -> str:
    return f"{alphas[0]:g}" if len(set(alphas)) == 1 else "[" + ", ".join(f"{a:g}" for a in alphas) + "]"


def scaled_model(base: Model, tuned: Model, alpha: float | Sequence[float] = 1.0) -> ScaledFineTune:
    """`tuned` with its fine-tuning component scaled by `alpha` (0: base blocks, 1: the fine-tuned model)."""
    return ScaledFineTune(base, tuned, alpha)


@dataclass
class TuCo:
    """Component norms per prompt, position and layer, and the paper's TuCo per prompt.

    `ptc_norm`, `ftc_norm` [n_prompts, pos, n_layers]: ||PTC_l||, ||FTC_l|| per token (NaN at padding);
    `tuco` [n_prompts]: the paper's TuCo at each prompt's last real token (summed components);
    `tuco_per_token` [n_prompts, pos]: the same at every position; `tokens`: each prompt's token strings.
    """

    ptc_norm: Tensor
    ftc_norm: Tensor
    tuco: Tensor
    tuco_per_token: Tensor
    tokens: list[list[str]]
    meta: dict = field(default_factory=dict)

    def by_layer(self) -> LabelledArray:
        """||FTC_l|| / (||PTC_l|| + ||FTC_l||) averaged over prompts and real tokens, per layer."""
        share = self.ftc_norm / (self.ptc_norm + self.ftc_norm).clamp_min(1e-12)
        vals = torch.nanmean(share.reshape(-1, share.shape[-1]), 0)
        return LabelledArray(vals.numpy()[None], ("measure", "layer"), {"measure": ["TuCo share"],
                             "layer": list(range(share.shape[-1]))}, name="fine-tuning share by layer",
                             meta=dict(self.meta))

    def to_json(self) -> dict:
        return {"tuco": self.tuco.tolist(), "by_layer": self.by_layer().values[0].tolist(),
                "ptc_norm_mean": torch.nanmean(self.ptc_norm.reshape(-1, self.ptc_norm.shape[-1]), 0).tolist(),
                "ftc_norm_mean": torch.nanmean(self.ftc_norm.reshape(-1, self.ftc_norm.shape[-1]), 0).tolist(),
                "meta": self.meta}


def _outside_blocks_changed(base: Model, tuned: Model) -> list[str]:
    """Modules outside the blocks whose weights differ (embeddings, final norm, unembedding): TuCo does not see them."""
    changed = []
    for role in ("embed", "final_norm", "unembed"):
        a, b = base.module(role).state_dict(), tuned.module(role).state_dict()
        if any(not torch.equal(a[k], b[k]) for k in a):
            changed.append(role)
    return changed


def tuning_contribution(base: Model, tuned: Model, prompts, *, batch_size: int = 16,
                        scaled: ScaledFineTune | None = None) -> TuCo:
    """TuCo of `tuned` against `base` on `prompts` (strings), per prompt, position and layer (module docstring)."""
    check_pair(base, tuned)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise checks.fail("prompts", "a non-empty list of non-empty strings", prompts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise checks.fail('batch_size', 'a positive int', batch_size)
    model = scaled if scaled is not None else ScaledFineTune(base, tuned, 1.0)
    if model.alphas != [1.0] * model.dims.n_layers:
        raise ValueError(f"scaled: TuCo is measured on the fine-tuned forward (alpha 1), got alpha {model.alphas}")
    L = model.dims.n_layers
    T = max(len(model.tokenizer(p).input_ids) for p in prompts)
    ptc = torch.full((len(prompts), T, L), float("nan"))
    ftc = torch.full_like(ptc, float("nan"))
    tuco_tok = torch.full((len(prompts), T), float("nan"))
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        ids, mask = model.encode(chunk)
        with torch.no_grad(), model.recording() as rec:
            model.hf(input_ids=ids, attention_mask=mask, use_cache=False)
        p_l = torch.stack([rec[l][0][0] for l in range(L)], -2).float().cpu()  # [b, pos, L, d]
        f_l = torch.stack([rec[l][0][1] for l in range(L)], -2).float().cpu()
        real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool().cpu()
        rows = slice(start, start + len(chunk))
        w = ids.shape[1]
        ptc[rows, :w] = torch.where(real[..., None], p_l.norm(dim=-1), float("nan"))
        ftc[rows, :w] = torch.where(real[..., None], f_l.norm(dim=-1), float("nan"))
        # TuCo = ||sum FTC|| / (||sum PTC|| + ||sum FTC||), per token (Algorithm 1 reads the last one)
        sp, sf = p_l.sum(-2).norm(dim=-1), f_l.sum(-2).norm(dim=-1)
        tuco_tok[rows, :w] = torch.where(real, sf / (sp + sf).clamp_min(1e-12), float("nan"))
    last = torch.tensor([len(model.tokenizer(p).input_ids) - 1 for p in prompts])
    tuco = tuco_tok[torch.arange(len(prompts)), last]
    tokens = [model.to_str_tokens(p) for p in prompts]
    meta = {"base": base.name, "tuned": tuned.name, "n_prompts": len(prompts),
            "outside_blocks_changed": _outside_blocks_changed(base, tuned)}
    return TuCo(ptc, ftc, tuco, tuco_tok, tokens, meta)
