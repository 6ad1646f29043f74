"""SAE files: SAELens's own classes and on-disk format, bound to one of our sites.

A folder holds `cfg.json` (SAELens's config dict: d_in, d_sae, architecture, dtype, ..., and a `metadata`
block with `hook_name`, `model_name`, ...) and `sae_weights.safetensors` (W_enc [d_in, d_sae], W_dec
[d_sae, d_in], b_enc [d_sae], b_dec [d_in], and e.g. `threshold` for JumpReLU). `save_sae` writes exactly
that (so `sae_lens.SAE.load_from_disk` opens it), `load_sae` reads it through SAELens's loader after
checking the file ourselves (safetensors only: nothing is ever unpickled).

Binding: the SAE's `metadata.hook_name` names where it reads. TransformerLens hook names
(`blocks.5.hook_resid_pre`, Gemma Scope's `blocks.N.hook_resid_post`) are our site names as they are;
a HookedProxyLM / nnsight module path (`model.layers.5`, `model.layers.5.mlp`, ...) names a module's
output, which we map to the site hooked there (the block's output is resid_post). After loading,
`metadata.hook_name` is our site name (the original is kept in `metadata.source_hook_name`), so saving
the SAE again writes a name both SAELens/TransformerLens and we understand.

The model check: an SAE written here carries `metadata.workbench_fingerprint` (the weights' hash) and
`model_name`; another model is refused with both names (`allow_other_model=True` for model diffing,
where a base model's SAE reads a fine-tune on purpose).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..core.io import read_json, read_safetensors, save_safetensors
from ..core.sites import COMPONENTS, Site, parse_site
from ..core.io import write_json
from ..core import checks

CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME


def _sae_classes():
    from sae_lens import SAE
    from sae_lens.saes.sae import TrainingSAE

    return SAE, TrainingSAE


def site_width(site: Site, dims) -> int:
    """The width an SAE at `site` reads: d_model, d_mlp, or n_heads * d_head for attn.hook_z (heads flattened)."""
    width = COMPONENTS[site.component][3]
    return dims.n_heads * dims.d_head if width == "heads" else getattr(dims, width)


def map_hook_name(hook_name: str, model) -> Site:
    """An SAE's hook name -> our site: a TransformerLens hook name as it is, or a module path (HookedProxyLM,
    nnsight: the module's output) -> the site hooked at that module's output. ValueError if neither."""
    if not isinstance(hook_name, str) or not hook_name:
        raise ValueError(f"sae: expected a hook name in the SAE's metadata, got {hook_name!r}; pass site=")
    n_layers = model.dims.n_layers
    if hook_name.startswith("blocks."):
        return parse_site(hook_name, n_layers)
    arch = model.arch
    m = re.fullmatch(re.escape(arch.blocks) + r"\.(\d+)(?:\.(.+))?", hook_name)
    if m:
        layer, sub = int(m.group(1)), m.group(2)
        if sub is None:
            return parse_site(Site(layer, "resid_post"), n_layers)
        for comp, (_, role, where, _) in COMPONENTS.items():
            if where == "output" and role != "block" and arch.has(role) and arch.path(role) == sub:
                return parse_site(Site(layer, comp), n_layers)
    raise ValueError(f"sae: hook name {hook_name!r} names no site of this {arch.family} model; expected a "
                     f"TransformerLens hook name ('blocks.5.hook_resid_pre') or a module path under "
                     f"'{arch.blocks}.<layer>' whose output is a site; pass site= to choose one")


def _norm_name(name) -> str:
    return str(name).rsplit("/", 1)[-1].strip().lower()


def check_model(sae, model, allow_other_model: bool = False) -> None:
    """Refuse an SAE trained on another model (by weights fingerprint where recorded, else by name)."""
    meta = sae.cfg.metadata
    theirs_fp, theirs_name = meta.get("workbench_fingerprint"), meta.get("model_name")
    if allow_other_model:
        return
    if theirs_fp is not None:
        if not model.matches_fingerprint(theirs_fp):
            ours = model.fingerprint
            raise ValueError(f"sae: trained on model {theirs_name!r} (fingerprint {theirs_fp}), but the model is "
                             f"{model.name!r} (fingerprint {ours}); pass allow_other_model=True to use it anyway")
    elif theirs_name is not None and _norm_name(theirs_name) != _norm_name(model.name):
        raise ValueError(f"sae: trained on model {theirs_name!r}, but the model is {model.name!r}; "
                         "pass allow_other_model=True to use it anyway")


def _check_files(path: Path) -> dict:
    """cfg.json as a dict, after checking the weights file is whole safetensors (header and sizes)."""
    if not path.is_dir():
        raise ValueError(f"sae: expected a folder with {CFG_FILE} and {WEIGHTS_FILE}, got {path} (no such folder)")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ValueError(f"sae: {path} has no {name}; expected SAELens's format ({CFG_FILE} + {WEIGHTS_FILE})")
    cfg = read_json(path / CFG_FILE, "sae")
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise ValueError(f"sae: {path / CFG_FILE} is not an SAELens config (no d_in / d_sae)")
    read_safetensors(path / WEIGHTS_FILE, "sae")  # whole (header against size) and finite (a NaN: all-NaN logits)
    return cfg


def sae_site(sae) -> str | None:
    """The site name an SAE is bound to (its metadata hook_name after `load_sae`)."""
    return sae.cfg.metadata.get("hook_name")


def load_sae(path_or_sae, model, *, site: str | Site | None = None, allow_other_model: bool = False,
             device: str | None = None):
    """A SAELens SAE (inference class: StandardSAE, TopKSAE, JumpReLUSAE, ...) bound to a site of `model`.

    `path_or_sae`: a folder in SAELens's format or an SAE object. `site`: overrides the SAE's hook name.
    Checks: the file is whole safetensors; the model is the one it was trained on (see `check_model`);
    d_in equals the site's width (the error names both shapes). The returned SAE's `cfg.metadata.hook_name`
    is our site name.
    """
    SAE, TrainingSAE = _sae_classes()
    if isinstance(path_or_sae, (str, Path)):
        path = Path(path_or_sae)
        _check_files(path)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SAELens's notes about model_from_pretrained_kwargs and deprecations
            try:
                sae = SAE.load_from_disk(str(path), device=str(device or model.device))
            except (RuntimeError, KeyError, TypeError, ValueError) as e:  # shapes or fields not matching cfg.json
                raise ValueError(f"sae: {path} does not load as a SAELens SAE ({type(e).__name__}: {e})") from None
    elif isinstance(path_or_sae, SAE):
        sae = path_or_sae
    else:
        raise checks.fail('sae', 'a folder path or a sae_lens SAE', type(path_or_sae).__name__)
    meta = sae.cfg.metadata
    source = meta.get("hook_name")
    bound = parse_site(site, model.dims.n_layers) if site is not None else map_hook_name(source, model)
    width = site_width(bound, model.dims)
    if sae.cfg.d_in != width:
        raise ValueError(f"sae: W_enc is [{sae.cfg.d_in}, {sae.cfg.d_sae}] (d_in {sae.cfg.d_in}), but {bound.name} "
                         f"of {model.name!r} is [batch, pos, {width}]; expected an SAE with d_in {width}")
    check_model(sae, model, allow_other_model)
    if source is not None and source != bound.name:
        meta["source_hook_name"] = source
    meta["hook_name"] = bound.name
    if device is not None or sae.device != model.device:
        sae = sae.to(device or model.device)
    return sae.eval().requires_grad_(False)  # a loaded SAE is used, not trained: no parameter graphs in forwards


def save_sae(sae, path: str | Path, *, weights_dtype: torch.dtype | None = None) -> Path:
    """Write `sae` in SAELens's format (cfg.json + sae_weights.safetensors), each file atomically.

    A training SAE is saved as its inference version (what `SAE.load_from_disk` builds), as SAELens's
    `save_inference_model` does. `weights_dtype` (e.g. torch.float16) stores the tensors smaller; the
    config keeps the SAE's dtype, which SAELens's loader casts them back to.
    """
    SAE, TrainingSAE = _sae_classes()
    if not isinstance(sae, SAE):
        raise checks.fail('sae', 'a sae_lens SAE', type(sae).__name__)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path: {path} is a file; expected a folder for {CFG_FILE} and {WEIGHTS_FILE}")
    state = {k: v.detach() for k, v in sae.state_dict().items()}
    if isinstance(sae, TrainingSAE):
        sae.process_state_dict_for_saving_inference(state)
        cfg = sae.cfg.get_inference_sae_cfg_dict()
    else:
        sae.process_state_dict_for_saving(state)
        cfg = sae.cfg.to_dict()
    if weights_dtype is not None:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    cfg["device"] = "cpu"
    # weights first, config last: a folder whose cfg.json is new always has the new weights
    save_safetensors(path / WEIGHTS_FILE, state)
    write_json(path / CFG_FILE, cfg, indent=2, default=str)
    return path


def bind_metadata(sae, model, site: Site | str) -> None:
    """Record where and on what an SAE reads (SAELens's metadata fields plus our fingerprint)."""
    meta = sae.cfg.metadata
    meta["model_name"] = model.name
    meta["hook_name"] = parse_site(site, model.dims.n_layers).name
    meta["hook_head_index"] = None
    meta["prepend_bos"] = bool(getattr(model.tokenizer, "add_bos_token", False))
    meta["workbench_fingerprint"] = model.fingerprint
