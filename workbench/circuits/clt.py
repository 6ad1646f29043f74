"""Cross-layer transcoders (CLT): features that read one layer's MLP input and write to the MLP outputs of that layer
and of every later one (Ameisen et al. 2025), as one module for the whole model.

    pre_l   = x_l W_enc[l] + b_enc[l]                          [..., d_sae]   x_l: layer l's MLP input (ln2 output)
    a_l     = pre_l * (pre_l > threshold[l])                   JumpReLU
    y_hat_m = sum_{l <= m} a_l W_dec[l][:, m - l] + b_dec[m]   [..., d_model] the replacement of layer m's MLP output

SAELens 6.54 has no CLT class (its loaders read a CLT layer only as a per-layer transcoder with the decoders summed,
for activations, not reconstruction), so the format is our own, in SAELens's style: one folder with `cfg.json`
({"architecture": "jumprelu_clt", "n_layers", "d_in", "d_sae", "d_out", "dtype", "metadata": {model_name,
workbench_fingerprint, hook_name: blocks.{l}.hook_mlp_in, hook_name_out: blocks.{m}.hook_mlp_out, ...}}) and
`clt_weights.safetensors` (W_enc [L, d_in, d_sae], b_enc [L, d_sae], threshold [L, d_sae], b_dec [L, d_out] and,
per source layer l, W_dec_<l> [d_sae, L - l, d_out]). Training: `train_transcoders(..., kind="clt")`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..core import checks
from ..core.io import atomic_write_text, save_safetensors

CLT_CFG = "cfg.json"
CLT_WEIGHTS = "clt_weights.safetensors"
ARCHITECTURE = "jumprelu_clt"


class CrossLayerTranscoder(torch.nn.Module):
    """A JumpReLU cross-layer transcoder over `n_layers` MLPs (see the module docstring for the equations)."""

    def __init__(self, n_layers: int, d_in: int, d_sae: int, d_out: int | None = None, metadata: dict | None = None):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        self.n_layers, self.d_in, self.d_sae, self.d_out = n_layers, d_in, d_sae, d_out
        self.metadata = dict(metadata or {})
        self.W_enc = torch.nn.Parameter(torch.zeros(n_layers, d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_layers, d_sae))
        self.threshold = torch.nn.Parameter(torch.zeros(n_layers, d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(n_layers, d_out))
        self.W_dec = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(d_sae, n_layers - l, d_out))
                                             for l in range(n_layers)])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def pre(self, layer: int, x: Tensor) -> Tensor:
        """x [..., d_in] (layer `layer`'s MLP input) -> pre-activations [..., d_sae]."""
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """x [..., d_in] -> JumpReLU activations [..., d_sae] of the features read at `layer`."""
        pre = self.pre(layer, x)
        return pre * (pre > self.threshold[layer])

    def decoder(self, source: int, target: int) -> Tensor:
        """[d_sae, d_out]: what one unit of each feature read at `source` writes to MLP `target` (target >= source)."""
        if not 0 <= source <= target < self.n_layers:
            raise ValueError(f"layers: expected 0 <= source <= target < {self.n_layers}, got {source}, {target}")
        return self.W_dec[source][:, target - source]

    def decode(self, target: int, acts: list[Tensor]) -> Tensor:
        """y_hat of MLP `target` [..., d_out] from the activations of layers 0..target (acts[l]: [..., d_sae])."""
        y = self.b_dec[target]
        for l in range(target + 1):
            y = y + acts[l] @ self.decoder(l, target)
        return y

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Every layer's MLP input [..., d_in] -> every layer's replaced MLP output [..., d_out]."""
        acts = [self.encode(l, x) for l, x in enumerate(xs)]
        return [self.decode(m, acts) for m in range(self.n_layers)]


def save_clt(clt: CrossLayerTranscoder, path: str | Path, *, weights_dtype: torch.dtype | None = None) -> Path:
    """Write `cfg.json` and `clt_weights.safetensors` (the module docstring's format), atomically, weights first."""
    if not isinstance(clt, CrossLayerTranscoder):
        raise checks.fail("clt", "a CrossLayerTranscoder", type(clt).__name__)
    path = Path(path)
    dt = weights_dtype or clt.dtype
    tensors = {"W_enc": clt.W_enc, "b_enc": clt.b_enc, "threshold": clt.threshold, "b_dec": clt.b_dec,
               **{f"W_dec_{l}": w for l, w in enumerate(clt.W_dec)}}
    save_safetensors(path / CLT_WEIGHTS, {k: v.detach().to(dt).contiguous().cpu() for k, v in tensors.items()})
    cfg = {"architecture": ARCHITECTURE, "n_layers": clt.n_layers, "d_in": clt.d_in, "d_sae": clt.d_sae,
           "d_out": clt.d_out, "dtype": str(dt).removeprefix("torch."), "metadata": clt.metadata}
    atomic_write_text(path / CLT_CFG, json.dumps(cfg, indent=2))
    return path


def load_clt(path: str | Path, model, *, allow_other_model: bool = False) -> CrossLayerTranscoder:
    """The CLT in `path`, checked against `model` (fingerprint, depth, width), as float32 on the model's device.
    Reads safetensors only."""
    from safetensors.torch import load_file

    path = Path(path)
    for f in (CLT_CFG, CLT_WEIGHTS):
        if not (path / f).is_file():
            raise ValueError(f"clt: {path} has no {f}; expected a folder written by save_clt")
    cfg = json.loads((path / CLT_CFG).read_text())
    if cfg.get("architecture") != ARCHITECTURE:
        raise ValueError(f"clt: {path} holds a {cfg.get('architecture')!r}, expected {ARCHITECTURE!r}")
    if cfg["n_layers"] != model.dims.n_layers or cfg["d_in"] != model.dims.d_model or cfg["d_out"] != model.dims.d_model:
        raise ValueError(f"clt: {path} has {cfg['n_layers']} layers of width {cfg['d_in']} -> {cfg['d_out']}, but "
                         f"{model.name!r} has {model.dims.n_layers} of width {model.dims.d_model}")
    fp = cfg.get("metadata", {}).get("workbench_fingerprint")
    if not allow_other_model and fp not in (None, model.fingerprint):
        raise ValueError(f"clt: trained on model {cfg['metadata'].get('model_name')!r} (fingerprint {fp}), but the model "
                         f"is {model.name!r} (fingerprint {model.fingerprint}); pass allow_other_model=True to use it anyway")
    try:
        t = load_file(str(path / CLT_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"clt: {path / CLT_WEIGHTS} is truncated or corrupt ({e})") from None
    clt = CrossLayerTranscoder(cfg["n_layers"], cfg["d_in"], cfg["d_sae"], cfg["d_out"], cfg.get("metadata"))
    clt.load_state_dict({("W_dec." + k[6:] if k.startswith("W_dec_") else k): v.float() for k, v in t.items()})
    return clt.to(model.device).eval().requires_grad_(False)
