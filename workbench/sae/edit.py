"""The SAE site intervention and SAE latent activations.

SAEEdit runs at the SAE's site, on the selected block x [..., d_in]:

    z  = encode(x)                    [..., d_sae]
    z' = edit(z)                      set / scale / add / zero the chosen latents
    x' = decode(z') + (x - decode(z)) (keeping the reconstruction error; written x + (decode(z') - decode(z)),
                                       which is exactly x when nothing is edited, so an unedited SAE leaves
                                       the model's logits bit-for-bit unchanged)
    x' = decode(z')                   with splice=True (no error term: what CE-loss-recovered measures)

It is an ordinary `Intervention`, applied by the one hook layer (`model.hooks`, `run_with_interventions`,
`generate`), with the usual rows / positions selections.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..core.arch import module_device
from ..core.interventions import Index, Intervention, as_index
from ..core.sites import Site, parse_site
from ..core import checks

OPS = (None, "set", "scale", "add", "zero")


@dataclass
class SAEEdit(Intervention):
    """Encode -> edit latents -> decode at the SAE's site (`site` defaults to the SAE's bound site).

    sae: a SAELens SAE from `load_sae` (or trained here). latents: indices into d_sae (None: all).
    op: None (no edit), "zero", "set" (to `value`), "scale" (by `value`), "add" (`value`); `value` is a
    number or a tensor broadcasting to [..., n_latents]. splice: drop the error term (x' = decode(z')).
    keep_latents: keep the edited latents z' of the last call in `self.latents_out` [..., d_sae].
    latent_leaf: make z a leaf of the autograd graph (`self.latents_out`, requires grad) with x' = x +
    decode(z') - decode(z).detach(): d x'/d z = W_dec and d x'/d x = I, the SAE-error-node formulation
    that attribution over latents uses (edits then do not pass gradients upstream).
    max_norm: tokens whose activation norm exceeds it pass through unchanged (attention-sink tokens with
    massive activations, which the SAE was not trained on; `load_sae` SAEs trained here record theirs in
    metadata.max_norm, used when this is None). Set it to math.inf to edit every token.
    """

    site: Site | str | None = None
    sae: Any = None
    latents: Index = None
    op: str | None = None
    value: float | Tensor | None = None
    splice: bool = False
    keep_latents: bool = False
    latent_leaf: bool = False
    max_norm: float | None = None

    def __post_init__(self):
        from sae_lens import SAE

        if not isinstance(self.sae, SAE):
            raise checks.fail('sae', 'a sae_lens SAE (see workbench.load_sae)', type(self.sae).__name__)
        if self.site is None:
            self.site = self.sae.cfg.metadata.get("hook_name")
            if self.site is None:
                raise ValueError("site: the SAE names no hook_name in its metadata; pass site= or load it with load_sae")
        if self.op not in OPS:
            raise checks.fail('op', f'one of {OPS}', self.op)
        if self.op in ("set", "scale", "add"):
            if self.value is None:
                raise ValueError(f"value: op={self.op!r} needs a value (a number or a tensor over the latents)")
            if not isinstance(self.value, (int, float, Tensor)) or isinstance(self.value, bool):
                raise checks.fail('value', 'a number or a float tensor', type(self.value).__name__)
            if isinstance(self.value, (int, float)) and not math.isfinite(float(self.value)):
                raise checks.fail('value', 'a finite number', self.value)
        d_sae = self.sae.cfg.d_sae
        self._latents = as_index(self.latents, d_sae, "latents")
        if self._latents is not None and len(set(self._latents.tolist())) != len(self._latents):
            raise ValueError(f"latents: repeated indices in {self.latents!r}")
        self.latents_out: Tensor | None = None
        if self.max_norm is None:
            self.max_norm = self.sae.cfg.metadata.get("max_norm")
        checks.number(self.max_norm, "max_norm", positive=True, none_ok=True)

    def check(self, shape):
        if self.heads is not None:
            raise ValueError("heads: an SAE reads all heads of attn.hook_z at once; select rows/positions only")
        d = shape[-1] * shape[-2] if self.site.has_heads else shape[-1]
        if d != self.sae.cfg.d_in:
            raise ValueError(f"sae: d_in {self.sae.cfg.d_in} (W_enc [{self.sae.cfg.d_in}, {self.sae.cfg.d_sae}]) does "
                             f"not match {self.site.name}'s width {d} (block {tuple(shape)})")
        if isinstance(self.value, Tensor):
            n = self.sae.cfg.d_sae if self._latents is None else len(self._latents)
            if not self.value.is_floating_point():
                raise ValueError(f"value: expected a float tensor, got dtype {self.value.dtype}")
            try:
                torch.broadcast_shapes(self.value.shape, (*shape[:-2 if self.site.has_heads else -1], n))
            except RuntimeError:
                raise ValueError(f"value: shape {tuple(self.value.shape)} does not broadcast to the selected latents "
                                 f"[..., {n}]") from None

    def _edit(self, z: Tensor) -> Tensor:
        """z' from z [..., d_sae]: the chosen latents set, scaled, shifted or zeroed (out of place)."""
        if self.op is None:
            return z
        idx = slice(None) if self._latents is None else self._latents.to(z.device)
        chosen = z[..., idx]
        value = self.value.to(z.device, z.dtype) if isinstance(self.value, Tensor) else self.value
        new = {"zero": lambda: torch.zeros_like(chosen), "set": lambda: torch.zeros_like(chosen) + value,
               "scale": lambda: chosen * value, "add": lambda: chosen + value}[self.op]()
        out = z.clone()
        out[..., idx] = new
        return out

    def update(self, x: Tensor) -> Tensor:
        sae = self.sae
        flat = x.flatten(-2) if self.site.has_heads else x
        xs = flat.to(sae.dtype)
        z = sae.encode(xs)
        if self.latent_leaf:
            z = z.detach().requires_grad_(True)
        z_edit = self._edit(z)
        if self.keep_latents or self.latent_leaf:
            self.latents_out = z if self.latent_leaf else z_edit
        if self.splice:
            out = sae.decode(z_edit)
        elif self.latent_leaf:
            out = xs + (sae.decode(z_edit) - sae.decode(z).detach())
        else:
            # decode(z') + (x - decode(z)), as x + (decode(z') - decode(z)): exactly x when z' = z
            out = xs + (sae.decode(z_edit) - sae.decode(z))
        if self.max_norm is not None and math.isfinite(self.max_norm):
            out = torch.where(xs.norm(dim=-1, keepdim=True) > self.max_norm, xs, out)
        out = out.to(x.dtype)
        return out.unflatten(-1, x.shape[-2:]) if self.site.has_heads else out


@torch.no_grad()
def latent_activations(model, sae, texts: Sequence[str], *, batch_size: int = 32, site: str | Site | None = None) -> Tensor:
    """SAE latent activations [n_tokens, d_sae] (float32, CPU) at the SAE's site for every real token of `texts`.

    Activations come from the one reader (`read_activations(..., read_at="all")`): texts in order, tokens
    in order, pads never read; token i of the result is the i-th real token of the concatenated texts.
    """
    from ..directions import read_activations

    where = parse_site(site if site is not None else sae.cfg.metadata.get("hook_name"), model.dims.n_layers)
    acts = read_activations(model, texts, [where.layer], component=where.component, read_at="all",
                            batch_size=batch_size)[where.layer]
    acts = acts.flatten(1) if acts.ndim == 3 else acts
    if acts.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"sae: d_in {sae.cfg.d_in} does not match {where.name}'s width {acts.shape[-1]}")
    device = module_device(sae)
    return torch.cat([sae.encode(chunk.to(device, sae.dtype)).float().cpu() for chunk in acts.split(4096)])
