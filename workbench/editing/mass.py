"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, Alg. 1).

Many requests at once, spread over a range of layers R = [l_1 .. l_L]:

    z_i = h_i^L + delta_i        target hidden state at the last edited layer's output (resid_post),
                                 delta_i optimised as ROME's v* (eq. 4 of ROME, here at blocks.L.hook_resid_post)
    for each layer l in R, lowest first, with the layers below already updated:
        K_l  [n, d_mlp]   keys k_i at layer l (mean over the context prefixes)
        R_l  [n, d_model] (z_i - h_i^L) / (number of layers left)       spread the remaining residual
        Delta_l = R_l^T K_l (lambda C_l + K_l^T K_l)^-1                  (eq. 14: Delta = R K^T (C_0 + K K^T)^-1)

C_l = E[k k^T] over the corpus (so lambda C_l weighs the corpus like lambda tokens' worth of keys).

Post-norm families (Gemma 2/3, OLMo 2). The block adds N(y), not y = W k (the down projection's output):

    N(y) = g * y / s(y),   s(y) = sqrt(mean(y^2) + eps)          the post-feedforward RMSNorm, g its gain

so a change dy of the down projection's output moves the residual by N(y + dy) - N(y), not by dy. Freeze N's
scale at its value on the current y (the linearisation `frozen_norm` gives direct logit attribution):

    N(y + dy) - N(y) ~= g * dy / s(y)          =>   dy_i = r_i * s(y_i) / g          (elementwise)

with y_i the current output of layer l's down projection at request i's subject's last token (bare prompt,
layers below already updated) and r_i its row of R_l. Then Delta_l = memit_update(dY_l, K_l, C_l, lambda) as
above, dY_l [n, d_model] in place of R_l. Gains span orders of magnitude (Gemma 3 270M: |g| from 0 to 741 in one
layer), and the exact inverse asks for a huge dy on the channels with a tiny gain; that raises s(y) itself and
shrinks every other channel (measured: the layer 4 update 26x its weight's norm, h^L farther from z than before).
So each channel is damped, the least-squares preimage (`frozen_norm_preimage`, a = g / s(y)):

    dy_i = argmin |a * dy - r_i|^2 + mu |dy|^2 = a * r_i / (a^2 + mu),    mu = damping * mean(a^2)

which leaves r's part on channels with a^2 << mu to the layers above. The linearisation is not exact either
(s moves as y moves; a dy along y does not move N(y) at all: a layer can rotate its output but hardly change its
norm), but Alg. 1 re-measures h^L after each layer's update, so each layer's error is handed on to the layers
above and the top layer takes the remainder.
How close h^L ends to z is measured, not assumed: `meta["relative_residual"]` is |z_i - h_i^L| / |z_i - h_i^L_0|
after the loop (h^L_0 before any update), for every family (pre-norm families too: there only the keys' and
C's trade-off leaves a residual).
"""
from __future__ import annotations

import torch

from ..core import checks
from ..core.arch import frozen_norm_preimage, norm_kind, weight_out_in
from .requests import EditError, EditRequest, as_requests, edit_layers, subject_last
from .rank_one import check_hparams, compute_keys, context_prefixes, default_layer, optimise_deltas, value_site
from .weights import AppliedEdit, WeightEdit


def default_memit_layers(model, n: int = 5) -> list[int]:
    """n consecutive layers centred on the ROME layer (MEMIT spreads GPT-J's edits over layers 3..8 around its trace peak)."""
    first = max(0, min(default_layer(model) - n // 2, model.dims.n_layers - n))
    return list(range(first, first + n))


def _at_subject(model, requests: list[EditRequest], sites: list[str]) -> list[torch.Tensor]:
    """Each of `sites` at each request's subject's last token in its bare prompt, [n, d_model] each (one forward)."""
    ids, mask = model.encode([r.prompt for r in requests])
    pos = torch.tensor([subject_last(model, r.prompt, r.subject) for r in requests], device=ids.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, sites, attention_mask=mask, logits=False)
    return [cache[site][torch.arange(len(requests), device=ids.device), pos] for site in sites]


def _resid_at_subject(model, requests: list[EditRequest], layer: int) -> torch.Tensor:
    """blocks.{layer}.hook_resid_post at each request's subject's last token in its bare prompt, [n, d_model]."""
    return _at_subject(model, requests, [f"blocks.{layer}.hook_resid_post"])[0]


def _check_closed_form_layers(model, layers: list[int]) -> None:
    """MEMIT's closed form needs one down projection per layer (a mixture of experts has none: refused, naming
    why) and, on a post-norm family, an RMSNorm after it (`frozen_norm_preimage` inverts only that)."""
    model.module("mlp_down", 0)
    if model.arch.mlp_out is None:
        return
    for l in layers:
        norm = model.module("mlp_out", l)
        if norm_kind(norm)[0] != "rmsnorm":
            raise EditError(f"model: MEMIT needs an RMSNorm after the MLP of a post-norm family; layer {l}'s "
                            f"{model.arch.mlp_out} is a {type(norm).__name__}, whose frozen map has no preimage")


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. (14): Delta = R^T K (lam C + K^T K)^-1 for residuals R [n, d_out] and keys K [n, d_in], [d_out, d_in].

    Delta minimises  lam * n_C * |Delta K_0|^2 / n_C + sum_i |(W + Delta) k_i - (W k_i + r_i)|^2  with C = K_0 K_0^T / n_C.
    """
    R, K, C = R.double(), K.double(), C.double()
    return R.T @ torch.linalg.solve(lam * C + K.T @ K, K.T).T


def memit(model, requests, layers=None, *, lam: float = 3000.0, damping: float = 1e-2,
          prefixes: list[str] | None = None, value_prefixes: int | None = None, Cs: dict | None = None, stats: dict | None = None,
          progress: bool = False, **hparams) -> "WeightEdit":
    """One `WeightEdit` that makes all `requests` at once over `layers` (default `default_memit_layers`).

    The model is changed only while the edit is computed (each layer's update must see the ones below)
    and is restored bit-exactly before returning, also on errors. `Cs` maps layer -> C (default:
    `second_moments(model, layers, **stats)`); `hparams` go to the value optimisation. `damping` (post-norm
    families only): the preimage's Tikhonov weight relative to the mean squared gain (see the module docstring).
    """
    from .stats import second_moments

    requests = as_requests(requests)
    for r in requests:
        r.check(model)
    layers = edit_layers(model, default_memit_layers(model) if layers is None else layers, "layers")
    _check_closed_form_layers(model, layers)
    check_hparams(hparams)
    checks.number(lam, "lam (the weight of the corpus statistics)", positive=True, error=EditError)
    checks.number(damping, "damping (of the post-norm preimage)", minimum=0, error=EditError)
    prefixes = context_prefixes(model) if prefixes is None else list(prefixes)
    v_prefixes = prefixes if value_prefixes is None else prefixes[:1 + value_prefixes]
    Cs = second_moments(model, layers, **(stats or {})) if Cs is None else Cs
    check_covariances(model, Cs, layers)
    Z, infos = memit_targets(model, requests, layers[-1], v_prefixes, progress=progress, **hparams)
    edit = memit_spread(model, requests, layers, Z, Cs, lam=lam, damping=damping, prefixes=prefixes)
    edit.meta.update({"hparams": hparams, "n_value_prefixes": len(v_prefixes), "value_opt": infos})
    return edit


def check_covariances(model, Cs, layers: list[int]) -> None:
    """Each edited layer's C must be a finite [d_mlp, d_mlp] tensor; checked before any optimisation runs."""
    d = model.dims.d_mlp
    if not isinstance(Cs, dict):
        raise EditError(f"Cs: expected a dict {{layer: C [{d}, {d}]}}, got {type(Cs).__name__}")
    missing = [l for l in layers if l not in Cs]
    if missing:
        raise EditError(f"Cs: no key statistics C for layers {missing}; expected one [{d}, {d}] tensor per layer of {layers}")
    for l in layers:
        C = Cs[l]
        if not isinstance(C, torch.Tensor) or tuple(C.shape) != (d, d):
            got = tuple(C.shape) if isinstance(C, torch.Tensor) else type(C).__name__
            raise EditError(f"Cs: layer {l}: expected shape [{d}, {d}] (d_mlp x d_mlp, the keys' second moment), got {got}")
        if not torch.isfinite(C).all():
            raise EditError(f"Cs: layer {l}: holds NaN or inf")


def memit_targets(model, requests: list[EditRequest], top: int, prefixes: list[str], *, progress: bool = False,
                  **hparams) -> tuple[torch.Tensor, list]:
    """z_i = h_i^L + delta_i at blocks.{top}.hook_resid_post, [n, d_model], and the optimisation's infos."""
    deltas, infos = optimise_deltas(model, requests, f"blocks.{top}.hook_resid_post", prefixes, progress=progress,
                                   **hparams)
    return _resid_at_subject(model, requests, top) + deltas, infos


def memit_spread(model, requests: list[EditRequest], layers: list[int], Z: torch.Tensor, Cs: dict, *,
                 lam: float, prefixes: list[str], damping: float = 1e-2) -> "WeightEdit":
    """Alg. 1's loop: spread the residuals Z - h^L over `layers`, lowest first, each update by eq. (14).

    `Z` [n, d_model] are the targets at the top layer's resid_post (`memit_targets`). On a post-norm family
    each layer's share of the residual passes `frozen_norm_preimage` first (see the module docstring). The
    model is changed while this runs and restored bit-exactly before returning, also on errors.
    """
    checks.number(lam, "lam (the weight of the corpus statistics)", positive=True, error=EditError)
    checks.number(damping, "damping (of the post-norm preimage)", minimum=0, error=EditError)
    if Z.shape != (len(requests), model.dims.d_model):
        raise EditError(f"Z: expected shape [{len(requests)}, {model.dims.d_model}], got {list(Z.shape)}")
    check_covariances(model, Cs, layers)
    _check_closed_form_layers(model, layers)
    fp, top, post_norm = model.fingerprint, layers[-1], model.arch.mlp_out is not None
    updates, handles = {}, []
    try:
        for i, l in enumerate(layers):
            with torch.no_grad():
                K = compute_keys(model, requests, l, prefixes).double()            # K_l  [n, d_mlp]
            if post_norm:  # one forward reads h^L and y = W k (the view's mlp_out is the down projection's output)
                view, site = value_site(model, l)
                H, Y = (t.double() for t in _at_subject(view, requests, [f"blocks.{top}.hook_resid_post", site]))
            else:
                H = _resid_at_subject(model, requests, top).double()                # h_i^L now
            if i == 0:
                H0 = H                                                              # h_i^L before any update
            R = (Z.double() - H) / (len(layers) - i)                                # R_l  [n, d_model]
            if post_norm:                                                           # dy = a r / (a^2 + mu)
                R = frozen_norm_preimage(model.module("mlp_out", l), Y, R, damping)
            update = memit_update(R, K, Cs[l].to(K.device), lam).float()            # Delta_l [d_model, d_mlp], eq. (14)
            if not torch.isfinite(update).all():
                raise EditError(f"requests: the layer {l} update is not finite; weights untouched")
            updates[l] = update
            handles.append(AppliedEdit(model, {l: update}))
        # how close h^L ended to z: |z - h^L| / |z - h^L_0| per request, after every layer's update
        left = (Z.double() - _resid_at_subject(model, requests, top).double()).norm(dim=-1)
        relative_residual = (left / (Z.double() - H0).norm(dim=-1)).tolist()
    finally:
        for h in reversed(handles):
            h.restore()
    meta = {"method": "memit", "layers": layers, "lam": lam, "n_requests": len(requests), "fingerprint": fp,
            "requests": [dict(r.__dict__) for r in requests], "n_key_prefixes": len(prefixes),
            "post_norm": post_norm, "damping": damping if post_norm else None, "relative_residual": relative_residual,
            "relative_norms": {l: (u.norm() / weight_out_in(model.module("mlp_down", l)).norm()).item()
                               for l, u in updates.items()}}
    return WeightEdit(updates, meta)
