"""A model too big for one device, split over several: accelerate places each module (embeddings, blocks,
final norm, unembedding) on a device and installs hooks that move each module's inputs to it.

What the workbench keeps on each layer's device: cached activations stay where their layer computed them,
interventions bind their indices to the device of the activation they change (`core.hooks`), and the
suffix engine (`patching.engine`) moves its running residual stream to each block's device in turn.
"""
from __future__ import annotations

import torch

from . import checks


def check_device_map(device_map) -> None:
    """"auto", or a dict of module name -> device (str, int or torch.device)."""
    if device_map == "auto":
        return
    if not isinstance(device_map, dict) or not device_map:
        raise checks.fail('device_map', "'auto' or a dict of module name -> device", device_map)
    for name, dev in device_map.items():
        if not isinstance(name, str):
            raise checks.fail("device_map", "module names that are strings", name)
        try:
            torch.device(dev)
        except (RuntimeError, TypeError):
            raise ValueError(f"device_map: {name!r}: {dev!r} is not a device") from None


def split_model(model, device_map):
    """Place `model`'s modules on devices (accelerate's `dispatch_model`, hooks installed even when every
    module is on one device, so the placement logic runs the same on a CPU-only machine). `device_map`:
    "auto" (accelerate spreads the blocks over the visible GPUs, then the CPU) or {module name: device}
    covering every parameter (e.g. {"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:0",
    "model.layers.1": "cpu", "model.norm": "cpu", "lm_head": "cpu"}). Returns the model."""
    from accelerate import dispatch_model, infer_auto_device_map

    check_device_map(device_map)
    hf = model.hf
    if device_map == "auto":
        device_map = infer_auto_device_map(hf, no_split_module_classes=getattr(hf, "_no_split_modules", None) or [])
    names = [n for n, _ in hf.named_parameters()]
    missing = [n for n in names if not any(n == k or n.startswith(k + ".") or k == "" for k in device_map)]
    if missing:
        raise ValueError(f"device_map: no device for {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                         "name a device for every module holding parameters")
    dispatch_model(hf, device_map=device_map, force_hooks=True)
    return model
