"""The one direction file format: steering vectors, probe directions, CAFT subspaces (and SAE decoder
directions) are all written and read here.

A file is safetensors: tensors `layer.<l>` ([d_model] a direction, or [k, d_model] a subspace, for layer l)
or a single layer-free `direction` ([d_model] or [k, d_model], used at whatever layers the reader chooses);
the header holds one JSON object under the key "workbench" with the metadata (`kind`, `component`, `model`,
`model_fingerprint`, `d_model`, `n_layers`, and what made it: method, layer, accuracy, ...). The same
metadata is written beside it as `<name>.json` for people to read. Every problem with a file is a
`DirectionFileError` (a ValueError) that names the file; a file made for a model of another width or depth is
refused, one made on other weights of the same shape is accepted with a warning (a vector built on a base
model is routinely applied to its fine-tune).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from torch import Tensor

from ..core.io import FileProblem, parse_json, read_safetensors, save_safetensors, write_json
from ..core.sites import check_layers
from ..core import checks

FORMAT_KEY = "workbench"


class DirectionFileError(ValueError):
    """A direction file that is missing, unreadable, malformed, or made for another model."""


def _key(layer: int | None) -> str:
    return "direction" if layer is None else f"layer.{layer}"


def save_directions(path: str | Path, directions: dict[int | None, Tensor], meta: dict | None = None,
                    model=None) -> Path:
    """Write {layer (or None): [d_model] or [k, d_model]} to `path` (.safetensors) and `path`.json, atomically.

    With `model`, the widths are checked against it and the metadata records its name, fingerprint and shape.
    """
    if not isinstance(directions, dict) or not directions:
        raise checks.fail("directions", "a non-empty dict {layer or None: tensor [d_model] or [k, d_model]}",
                          directions)
    if None in directions and len(directions) > 1:
        raise ValueError("directions: a layer-free `direction` (key None) cannot be mixed with per-layer ones")
    widths = set()
    for layer, t in directions.items():
        if not isinstance(t, Tensor) or t.ndim not in (1, 2) or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"directions: layer {layer}: expected a float tensor [d_model] or [k, d_model], got {got}")
        if not t.isfinite().all():
            raise ValueError(f"directions: layer {layer}: holds non-finite values")
        widths.add(t.shape[-1])
    if len(widths) != 1:
        raise ValueError(f"directions: tensors of different widths {sorted(widths)}")
    meta = dict(meta or {})
    if model is not None:
        if widths != {model.dims.d_model}:
            raise ValueError(f"directions: width {widths.pop()}, expected d_model = {model.dims.d_model} of {model.name}")
        meta.update(model=model.name, model_fingerprint=model.fingerprint, n_layers=model.dims.n_layers)
    meta["d_model"] = widths.pop()
    tensors = {_key(l): t.detach().float().cpu().contiguous() for l, t in sorted(directions.items(), key=lambda x: -1 if x[0] is None else x[0])}
    path = save_safetensors(path, tensors, {FORMAT_KEY: json.dumps(meta)})
    write_json(Path(path).with_suffix(".json"), meta, indent=2)
    return Path(path)


def load_directions(path: str | Path, model=None) -> tuple[dict[int | None, Tensor], dict]:
    """({layer or None: tensor}, metadata) from a file written by `save_directions`.

    With `model`: a file of another width, or with layers the model does not have, or recorded for another
    depth, is refused; another fingerprint (same shape, other weights) gives a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DirectionFileError(f"path: no direction file {path}")
    try:
        tensors, header = read_safetensors(path, "path")
        if FORMAT_KEY in header:
            meta = parse_json(header[FORMAT_KEY], "path", f"{path} metadata")
        else:  # 0.1 probe exports: each metadata value JSON-encoded under its own key
            meta = {k: parse_json(v, "path", f"{path} metadata {k!r}") for k, v in header.items()}
    except FileProblem as e:
        raise DirectionFileError(str(e)) from None
    out: dict[int | None, Tensor] = {}
    for k, t in tensors.items():
        if k == "direction":
            out[None] = t
        elif k.startswith("layer.") and k[6:].isdigit():
            out[int(k[6:])] = t
        else:
            raise DirectionFileError(f"path: unexpected tensor {k!r} in {path}; expected `layer.<n>` or `direction`")
    if not out:
        raise DirectionFileError(f"path: {path} holds no directions")
    if None in out and len(out) > 1:
        raise DirectionFileError(f"path: {path} mixes a layer-free `direction` with per-layer tensors")
    if model is not None:
        check_model(out, meta, model, path)
    return out, meta


def check_model(directions: dict[int | None, Tensor], meta: dict, model, path: str | Path = "directions") -> None:
    """Refuse directions of another width or depth than `model`; warn on another fingerprint."""
    d = model.dims
    for layer, t in directions.items():
        if t.shape[-1] != d.d_model:
            raise DirectionFileError(f"{path}: directions of width {t.shape[-1]} ({tuple(t.shape)}), but {model.name} "
                                     f"has d_model {d.d_model}")
        if layer is not None and not 0 <= layer < d.n_layers:
            raise DirectionFileError(f"{path}: a direction for layer {layer}, but {model.name} has layers 0..{d.n_layers - 1}")
    if meta.get("n_layers") not in (None, d.n_layers):
        raise DirectionFileError(f"{path}: made for a model with {meta['n_layers']} layers, {model.name} has {d.n_layers}")
    fp = meta.get("model_fingerprint")
    if fp is not None and not model.matches_fingerprint(fp):
        warnings.warn(f"{path}: made on a model of the same shape with other weights (fingerprint {fp}, "
                      f"this one {model.fingerprint})", stacklevel=3)


def save_direction(path: str | Path, direction: Tensor, meta: dict | None = None, model=None) -> Path:
    """One layer-free direction [d_model] (a probe's), e.g. for `workbench steer --direction` or `caft --directions`."""
    if not isinstance(direction, Tensor) or direction.ndim != 1 or not direction.is_floating_point():
        got = tuple(direction.shape) if isinstance(direction, Tensor) else type(direction).__name__
        raise checks.fail('direction', 'a float tensor of shape [d_model]', got)
    meta = {"kind": "direction", **(meta or {})}
    if "layer" in meta and "site" not in meta:
        meta["site"] = f"blocks.{meta['layer']}.hook_{meta.get('component', 'resid_pre')}"
    return save_directions(path, {None: direction}, meta, model)


def load_direction(path: str | Path, model=None) -> tuple[Tensor, dict]:
    """(direction [d_model], metadata) from a file holding one layer-free direction."""
    out, meta = load_directions(path, model)
    if set(out) != {None} or out[None].ndim != 1:
        raise DirectionFileError(f"path: {path} holds {sorted(k for k in out if k is not None) or 'a subspace'}, "
                                 "expected one layer-free `direction` [d_model]")
    return out[None], meta


def load(source, model, layers=None, *, arg: str = "directions") -> dict[int, Tensor]:
    """The one direction reader: {layer: direction [d_model] or subspace [k, d_model]} (float32, on the CPU) for
    `model`, from any of

        a path        a direction file (`save_directions`): its per-layer tensors, or its one layer-free
                      `direction` used at every layer of `layers`;
        a tensor      [d_model], used at every layer of `layers`; or [n_layers, d_model], row L for layer L;
        a dict        {layer: tensor}.

    With `layers` only those layers are returned (each must be there); every layer must be one of the model's and
    every tensor a finite float tensor of width d_model."""
    n_layers, d_model = model.dims.n_layers, model.dims.d_model
    if layers is not None:
        layers = check_layers(layers, n_layers, "layers")
    where = arg
    if isinstance(source, (str, Path)):
        found, _ = load_directions(source)
        where = str(source)
        if None in found:
            if layers is None:
                raise ValueError(f"layers: {source} holds one layer-free `direction`; give the layers to use it at")
            found = {l: found[None] for l in layers}
    elif isinstance(source, dict):
        found = {}
        for l, t in source.items():
            if isinstance(l, bool) or not isinstance(l, (int, str)) or not str(l).lstrip("-").isdigit():
                raise ValueError(f"{arg}: expected a dict {{layer: tensor}}, got key {l!r}")
            found[int(l)] = t
    elif isinstance(source, Tensor) and source.ndim == 1:
        if layers is None:
            raise ValueError("layers: one direction [d_model] needs the layers to use it at")
        found = {l: source for l in layers}
    elif isinstance(source, Tensor) and source.ndim == 2:
        if source.shape[0] != n_layers and (layers is None or max(layers) >= source.shape[0]):
            raise ValueError(f"{arg}: [{source.shape[0]}, d] has no row for layer "
                             f"{n_layers - 1 if layers is None else max(layers)}; expected [n_layers, d_model]")
        found = {l: source[l] for l in (range(n_layers) if layers is None else layers)}
    else:
        raise ValueError(f"{arg}: expected a direction file, a tensor [d_model] or [n_layers, d_model], or a dict "
                         f"{{layer: tensor}}; got {type(source).__name__}")
    if layers is not None:
        missing = [l for l in layers if l not in found]
        if missing:
            raise ValueError(f"layers: {where} has no directions for layers {missing}; it has {sorted(found)}")
        found = {l: found[l] for l in layers}
    for l, t in found.items():
        if not 0 <= l < n_layers:
            raise ValueError(f"{arg}: layer {l} out of range; the model has layers 0..{n_layers - 1}")
        if not isinstance(t, Tensor) or t.ndim not in (1, 2) or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{arg}: layer {l}: expected a float tensor [d_model] or [k, d_model], got {got}")
        if t.shape[-1] != d_model:
            raise ValueError(f"{arg}: layer {l}: width {t.shape[-1]} ({tuple(t.shape)}), expected d_model = {d_model} "
                             f"of {model.name}")
        if not t.isfinite().all():
            raise ValueError(f"{arg}: layer {l}: holds non-finite values")
    return {l: t.detach().float().cpu() for l, t in found.items()}
