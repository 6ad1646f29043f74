"""Export and load a probe's direction: a safetensors file with one `direction` tensor [d_model]
(what the steering helper and `workbench caft --directions` read), its metadata as strings in the
safetensors header, and the same metadata as a JSON file next to it (model fingerprint, site, layer,
accuracy, ...)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from torch import Tensor

from ..core.io import atomic_write_text, save_safetensors


def save_direction(path: str | Path, direction: Tensor, meta: dict | None = None, model=None) -> Path:
    """Write `direction` ([d]) to `path` (.safetensors) and its metadata to `path` with suffix .json.

    With `model`, the metadata records its name and fingerprint, and the width is checked against it.
    """
    if not isinstance(direction, Tensor) or direction.ndim != 1 or not direction.is_floating_point():
        got = tuple(direction.shape) if isinstance(direction, Tensor) else type(direction).__name__
        raise ValueError(f"direction: expected a float tensor of shape [d_model], got {got}")
    meta = dict(meta or {})
    if model is not None:
        if direction.shape[0] != model.dims.d_model:
            raise ValueError(f"direction: width {direction.shape[0]}, expected d_model = {model.dims.d_model}")
        meta.update(model=model.name, model_fingerprint=model.fingerprint, d_model=model.dims.d_model)
    if "layer" in meta and "site" not in meta:
        meta["site"] = f"blocks.{meta['layer']}.hook_{meta.get('component', 'resid_pre')}"
    path = save_safetensors(path, {"direction": direction.float()}, {k: json.dumps(v) for k, v in meta.items()})
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def load_direction(path: str | Path, model=None) -> tuple[Tensor, dict]:
    """(direction [d], metadata). With `model`: width must match; another fingerprint is warned about."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {path}")
    with safe_open(str(path), "pt") as f:
        if "direction" not in f.keys():
            raise ValueError(f"path: {path} has no `direction` tensor (keys: {list(f.keys())})")
        direction = f.get_tensor("direction")
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    if model is not None:
        if direction.shape != (model.dims.d_model,):
            raise ValueError(f"direction: shape {tuple(direction.shape)}, expected [{model.dims.d_model}] for {model.name}")
        fp = meta.get("model_fingerprint")
        if fp is not None and fp != model.fingerprint:
            warnings.warn(f"direction: {path} was made on another model (fingerprint {fp}, this one {model.fingerprint})",
                          stacklevel=2)
    return direction, meta
