"""Using SAE latents: as steering vectors, as CAFT concept directions, and as the nodes of attribution patching.

An SAE (a SAELens `SAE`: `encode`, `decode`, `W_dec` [d_sae, d_in], `cfg.d_sae`) reads one d_model-wide site
of the model (`blocks.L.hook_resid_pre`, say). With the reconstruction error kept,

    h' = decode(z') + (h - decode(z)) = h + (z' - z) W_dec          (decode is affine: z W_dec + b_dec)

so editing latent i by dz_i is adding dz_i * W_dec[i] at the site. That one identity makes a latent's decoder
row its steering vector (multiplier = the change of the latent's activation), its CAFT direction, and the
patch of one latent an overwrite of the site by h + dz_i W_dec[i].
"""
from __future__ import annotations

import warnings
import torch
from torch import Tensor

from ..core.sites import Site, parse_site
from ..directions import store
from ..directions.activations import read_activations
from ..steering.vectors import SteeringVector
from ..core import checks


# -- the SAE, its site and its latents --------------------------------------------------------------

def check_sae(sae) -> None:
    """An SAE is anything with SAELens's SAE interface: encode, decode, W_dec [d_sae, d_in], cfg.d_sae / d_in."""
    cfg = getattr(sae, "cfg", None)
    if not (callable(getattr(sae, "encode", None)) and isinstance(getattr(sae, "W_dec", None), Tensor)
            and hasattr(cfg, "d_sae") and hasattr(cfg, "d_in")):
        raise checks.fail('sae', 'a SAELens SAE (encode, decode, W_dec, cfg.d_sae)', type(sae).__name__)


def latent_site(model, sae, site=None) -> Site:
    """The site the SAE reads: `site` if given, else the SAE's own hook name (`cfg.metadata.hook_name`,
    a TransformerLens hook name, which is our site name); its width must be the model's d_model."""
    check_sae(sae)
    if site is None:
        site = sae.cfg.metadata.get("hook_name")
        if not site:
            raise ValueError("site: the SAE names no hook (cfg.metadata.hook_name); pass site='blocks.L.hook_resid_pre'")
    s = parse_site(site, model.dims.n_layers)
    if s.has_heads:
        raise ValueError(f"site: {s.name} has a head axis; SAE latents here live on d_model-wide sites")
    if sae.cfg.d_in != model.dims.d_model:
        raise ValueError(f"sae: an SAE of width d_in={sae.cfg.d_in} for a model with d_model={model.dims.d_model} "
                         f"({model.name}); it was made for another model")
    return s


def check_latents(sae, latents, arg: str = "latents") -> list[int]:
    """A latent index or a non-empty list of distinct ones, each in 0..d_sae-1."""
    n = sae.cfg.d_sae
    items = [latents] if checks.is_int(latents) else latents
    if isinstance(items, Tensor):
        items = items.tolist()
    if not isinstance(items, (list, tuple, range)) or not len(items) or not all(
            checks.is_int(i) for i in items):
        raise checks.fail(arg, 'a latent index or a non-empty list of them', latents)
    bad = [i for i in items if not 0 <= i < n]
    if bad:
        raise ValueError(f"{arg}: latent {bad[0]} out of range; the SAE has latents 0..{n - 1}")
    if len(set(items)) != len(items):
        raise ValueError(f"{arg}: repeated latents in {list(items)}")
    return list(items)


@torch.no_grad()
def encode(sae, acts: Tensor, batch: int = 4096) -> Tensor:
    """Latent activations z = sae.encode(acts): [..., d_in] -> [..., d_sae] (float32, on the CPU)."""
    flat = acts.reshape(-1, acts.shape[-1])
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    out = torch.cat([sae.encode(flat[i:i + batch].to(dev, dtype)).float().cpu() for i in range(0, len(flat), batch)]) \
        if len(flat) else torch.zeros(0, sae.cfg.d_sae)
    return out.reshape(*acts.shape[:-1], sae.cfg.d_sae)


def read_latents(model, sae, texts, *, site=None, read_at="all", batch_size: int = 32, interventions=(),
                 progress: bool = False) -> Tensor:
    """Latent activations on `texts` through the one activation reader: read_at "all" -> [n_tokens, d_sae]
    (every real token, texts in order), an int or "mean" -> [n_texts, d_sae]."""
    s = latent_site(model, sae, site)
    acts = read_activations(model, texts, [s.layer], component=s.component, read_at=read_at, batch_size=batch_size,
                            interventions=interventions, progress=progress)[s.layer]
    return encode(sae, acts)


def decoder_rows(sae, latents) -> Tensor:
    """The decoder directions W_dec[latents], [k, d_model] (float32, CPU)."""
    return sae.W_dec.detach()[check_latents(sae, latents)].float().cpu()


# -- steering and CAFT directions -------------------------------------------------------------------

def latent_steering_vector(model, sae, latents, *, site=None, weights=None) -> SteeringVector:
    """A `SteeringVector` at the SAE's site: sum_i w_i W_dec[i] over `latents` (w_i = 1 by default).

    With the error term kept, adding m * W_dec[i] is raising latent i's activation by m before re-encoding,
    so multipliers are in the latent's activation units (compare with its top activations, see `inspect`).
    """
    s = latent_site(model, sae, site)
    lat = check_latents(sae, latents)
    rows = decoder_rows(sae, lat)
    w = torch.ones(len(lat)) if weights is None else torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if w.shape != (len(lat),) or not torch.isfinite(w).all():
        raise checks.fail('weights', f'{len(lat)} finite numbers, one per latent', weights)
    meta = {"method": "sae_latent", "latents": lat, "weights": w.tolist(), "site": s.name, "model": model.name,
            "model_fingerprint": model.fingerprint, "n_layers": model.dims.n_layers}
    return SteeringVector({s.layer: w @ rows}, s.component, meta)


def latent_subspaces(model, sae, latents, *, site=None) -> dict[int, Tensor]:
    """CAFT's concept subspace from SAE latents: {layer: orthonormal basis of span(W_dec[latents])} for
    `caft.ablations` / `caft.finetune` (decoder rows are not orthogonal; they are orthonormalised quietly)."""
    from ..directions.caft import subspaces

    s = latent_site(model, sae, site)
    if s.component not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"site: CAFT ablates residual-stream sites; the SAE reads {s.name}")
    with warnings.catch_warnings():  # the expected "not orthonormal" note
        warnings.simplefilter("ignore", UserWarning)
        return subspaces({s.layer: decoder_rows(sae, latents)}, model.dims.d_model)


def save_latent_directions(path, model, sae, latents, *, site=None, meta: dict | None = None):
    """Write W_dec[latents] as `layer.<L>` [k, d_model] in the one direction file format, e.g. for
    `workbench caft --directions` (orthonormalised on loading) or `SteeringVector`s."""
    s = latent_site(model, sae, site)
    lat = check_latents(sae, latents)
    info = {"kind": "sae_latents", "component": s.component, "site": s.name, "latents": lat,
            "d_sae": sae.cfg.d_sae, **(meta or {})}
    return store.save_directions(path, {s.layer: decoder_rows(sae, lat)}, info, model=model)


# -- attribution patching over latents --------------------------------------------------------------

def latent_attribution(model, sae, clean, corrupted, answer, foil=None, *, site=None, metric="logit_diff",
                       direction: str = "denoise", top_k: int = 10, align=None, memory_mb: float = 1024) -> dict:
    """Which SAE latents carry a behaviour: AtP over latents, then the top k patched exactly.

    For each latent i, summed over the aligned positions p and averaged over pairs (Kramar et al. 2024, AtP
    with the latents as nodes; dh/dz_i = W_dec[i] since h = z W_dec + b_dec + error):

        AtP_i = sum_p (z_src[p, i] - z_tgt[p, i]) * (W_dec[i] . d metric / d h_tgt[p])

    The gradient comes from one backward with the SAE spliced in (`SAEEdit(latent_leaf=True)`: z a leaf, error
    kept). Exact: the target run with latent i set to its source value at every aligned position and the error
    term kept (`SAEEdit(op="set")`), one forward per latent. Returns {"attribution": [d_sae] estimated metric change, "target_metric": float, "clean_metric",
    "corrupted_metric", "top": [{latent, attribution, exact}] sorted by |attribution|}.
    """
    from ..patching import prepare
    from .edit import SAEEdit

    s = latent_site(model, sae, site)
    checks.integer(top_k, "top_k (at most the SAE's latents)", 1, sae.cfg.d_sae)
    setup = prepare(model, clean, corrupted, answer, foil, [s.component], metric, direction, align)
    idx = torch.arange(setup.pairs.n, device=model.device)
    src_pos, tgt_pos = torch.tensor(setup.source_pos), torch.tensor(setup.target_pos)
    h_src = setup.source[s.name][:, src_pos.to(setup.source[s.name].device)]  # [n, P, d]
    z_src = encode(sae, h_src)  # [n, P, d_sae]
    # d metric / d z on the target run: the SAE spliced in with z as an autograd leaf and the error term kept
    leaf = SAEEdit(s.name, sae=sae, latent_leaf=True)
    with torch.enable_grad():
        logits, _ = model.run_with_cache(setup.target_ids, [], interventions=[leaf], grad=True)
        total = setup.fn(logits[:, -1].float(), idx).sum()
        (g_z,) = torch.autograd.grad(total, [leaf.latents_out])  # [n, T, d_sae]
    z_tgt = leaf.latents_out.detach()[:, tgt_pos].float().cpu()
    g_z = g_z[:, tgt_pos].float().cpu()
    dz = z_src - z_tgt
    atp = (dz * g_z).sum(1)  # [n, d_sae]
    mean_atp = atp.mean(0)
    top = mean_atp.abs().argsort(descending=True)[:top_k].tolist()

    base = setup.target_metric.float().cpu()
    exact = []
    with torch.no_grad():
        for i in top:  # the latent set to its source value at every aligned position, error term kept
            edit = SAEEdit(s.name, sae=sae, latents=[i], op="set", positions=setup.target_pos,
                           value=z_src[:, :, i:i + 1].to(model.device, sae.dtype))
            m = setup.fn(model.run_with_interventions(setup.target_ids, [edit])[:, -1].float(), idx).float().cpu()
            exact.append(float((m - base).mean()))
    return {"site": s.name, "attribution": mean_atp, "target_metric": float(base.mean()),
            "clean_metric": float(setup.clean_metric.float().mean()),
            "corrupted_metric": float(setup.corrupted_metric.float().mean()),
            "top": [{"latent": i, "attribution": float(mean_atp[i]), "exact": e} for i, e in zip(top, exact)]}
