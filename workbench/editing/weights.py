"""Weight edits as data: additive updates to MLP down-projections, applied and restored bit-exactly,
checked before they are applied, saved as safetensors deltas with JSON metadata.

    edit = wb.editing.rome(model, request)          # computes, changes nothing
    with edit.applied(model):               # applied for the body, restored bit-exactly after
        ...
    handle = edit.apply(model); handle.restore()
    edit.save("edits/france"); edit = WeightEdit.load("edits/france")
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..core.arch import weight_out_in
from ..core.io import FileProblem, read_json, read_safetensors, save_safetensors
from .requests import EditError, edit_layers
from ..core.io import write_json

# Prompts unrelated to any edit; an edit that moves their next-token distributions a lot is abnormal.
UNRELATED_PROMPTS = [
    "The weather today is", "My favourite food is", "Water boils at a temperature of",
    "The cat sat on the", "She opened the door and", "Two plus two equals",
    "The best way to learn a language is", "In the morning I usually",
]


class EditRejected(EditError):
    """An edit that looks abnormal (huge update, large effect on unrelated prompts); pass allow_abnormal=True to apply it anyway."""


def _down_weight(model, layer: int) -> Tensor:
    return weight_out_in(model.module("mlp_down", layer))  # [d_model, d_mlp] view of the parameter


@dataclass
class WeightEdit:
    """Updates Delta_l ([d_model, d_mlp], [out, in] orientation) to the MLP down-projection of each layer l.

    `meta` holds the method, the requests, the hyper-parameters and the edited model's fingerprint.
    `noop` is True when the request was already what the model predicts (nothing to change).
    """

    deltas: dict[int, Tensor]
    meta: dict = field(default_factory=dict)
    noop: bool = False

    def validate(self, model) -> None:
        edit_layers(model, list(self.deltas) or [0], "deltas")
        shape = (model.dims.d_model, model.dims.d_mlp)
        for l, d in self.deltas.items():
            if not isinstance(d, Tensor) or tuple(d.shape) != shape:
                got = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
                raise EditError(f"deltas: layer {l} update has shape {got}, expected {shape}")
            if not torch.isfinite(d).all():
                raise EditError(f"deltas: layer {l} update holds NaN or inf; refusing to apply it")

    def norms(self, model) -> dict[int, dict]:
        """Per layer: Frobenius norm of the update and its ratio to the weight's norm."""
        out = {}
        for l, d in self.deltas.items():
            w = _down_weight(model, l)
            out[l] = {"norm": d.norm().item(), "relative": (d.norm() / w.norm()).item()}
        return out

    def check(self, model, *, max_relative_norm: float = 0.5, max_kl: float = 0.5, prompts=UNRELATED_PROMPTS) -> dict:
        """Measure the update's size and its effect on unrelated prompts; `ok` False with `reasons` if abnormal.

        kl is the mean KL(edited || original) of the next-token distributions after `prompts` (nats).
        The model's weights are the same after the check as before it (bit-exact).
        """
        self.validate(model)
        norms = self.norms(model)
        ids, mask = model.encode(list(prompts))
        last = model.last_positions(ids, mask)
        rows = torch.arange(len(ids), device=ids.device)
        with torch.no_grad():
            before = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, last].log_softmax(-1)
            with self.applied(model, check=False):
                after = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, last].log_softmax(-1)
        kl = (after.exp() * (after - before)).sum(-1).mean().item()
        reasons = [f"layer {l}: |Delta|/|W| = {n['relative']:.3g} > {max_relative_norm}" for l, n in norms.items()
                   if not n["relative"] <= max_relative_norm]
        if not kl <= max_kl:
            reasons.append(f"mean KL on {len(prompts)} unrelated prompts = {kl:.3g} nats > {max_kl}")
        return {"ok": not reasons, "reasons": reasons, "kl_unrelated": kl,
                "relative_norm": {l: n["relative"] for l, n in norms.items()}}

    def apply(self, model, *, check: bool = True, allow_abnormal: bool = False, **check_kw) -> "AppliedEdit":
        """Add the updates to the model's weights; returns a handle whose `restore()` undoes them bit-exactly.

        With `check`, an abnormal edit raises `EditRejected` (unless `allow_abnormal`); nothing is changed then.
        """
        self.validate(model)
        if check and self.deltas:
            report = self.check(model, **check_kw)
            if not report["ok"] and not allow_abnormal:
                raise EditRejected("edit looks abnormal: " + "; ".join(report["reasons"]) + " (allow_abnormal=True applies it anyway)")
        fp = self.meta.get("fingerprint")
        if fp and not allow_abnormal and self.deltas and not model.matches_fingerprint(fp):
            raise EditRejected(f"edit was made for a model with fingerprint {fp}, this one is {model.fingerprint} "
                               "(allow_abnormal=True applies it anyway)")
        return AppliedEdit(model, self.deltas)

    @contextmanager
    def applied(self, model, **kw):
        """The edit applied for the body of the `with`, restored bit-exactly on every exit."""
        handle = self.apply(model, **kw)
        try:
            yield model
        finally:
            handle.restore()

    def save(self, directory: str | Path) -> Path:
        """Write `deltas.safetensors` and `edit.json` (metadata) into `directory`, each atomically."""
        directory = Path(directory)
        save_safetensors(directory / "deltas.safetensors", {f"layer.{l}": d for l, d in self.deltas.items()})
        write_json(directory / "edit.json", {"noop": self.noop, "layers": sorted(self.deltas), "meta": self.meta},
                   indent=2, default=str)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "WeightEdit":
        directory = Path(directory)
        for name in ("deltas.safetensors", "edit.json"):
            if not (directory / name).is_file():
                raise EditError(f"directory: {directory} has no {name}; expected a directory written by WeightEdit.save")
        try:
            info = read_json(directory / "edit.json", "directory")
            tensors, _ = read_safetensors(directory / "deltas.safetensors", "directory")
        except FileProblem as e:
            raise EditError(str(e)) from None
        if not isinstance(info, dict) or not isinstance(info.get("layers"), list):
            raise EditError(f"directory: {directory / 'edit.json'}: expected an object with a 'layers' list")
        deltas = {int(k.split(".")[1]): v for k, v in tensors.items()}
        if sorted(deltas) != sorted(info["layers"]):
            raise EditError(f"directory: {directory}: edit.json names layers {info['layers']}, the deltas hold {sorted(deltas)}")
        return cls(deltas, info.get("meta", {}), info.get("noop", False))


class AppliedEdit:
    """Handle of an applied edit: keeps the original weights and puts them back with `restore()`.

    Handles of edits to the same layers nest: each keeps the weights it found, so they must be restored
    last-applied first. Restoring an earlier one while a later one on a shared layer is still applied
    raises `EditError` before anything changes (the weights would silently keep the later edit).
    """

    def __init__(self, model, deltas: dict[int, Tensor]):
        self.model, self._saved = model, {}
        try:
            with torch.no_grad():
                for l, d in deltas.items():
                    w = _down_weight(model, l)
                    self._saved[l] = w.detach().clone()
                    w.add_(d.to(w.device, w.dtype))
        except BaseException:
            self.restore()
            raise
        _applied(model).append(weakref.ref(self))

    def restore(self) -> None:
        """Copy the original weights back (bit-exact); calling it twice is harmless."""
        stack = _applied(self.model)
        stack[:] = [r for r in stack if r() is not None]  # handles dropped without restoring
        handles = [r() for r in stack]
        if self in handles:
            i = handles.index(self)
            shared = sorted({l for h in handles[i + 1:] for l in h._saved if l in self._saved})
            if shared:
                raise EditError(f"restore: an edit applied after this one still changes layers {shared}; restore "
                                "handles in reverse order of applying them (last applied first); weights unchanged")
            del stack[i]
        with torch.no_grad():
            for l, w0 in self._saved.items():
                _down_weight(self.model, l).copy_(w0)
        self._saved = {}


def _applied(model) -> list:
    """Weak references to the model's applied, not yet restored edit handles, in the order they were applied."""
    if not hasattr(model, "_applied_edits"):
        model._applied_edits = []
    return model._applied_edits


@contextmanager
def frozen(model):
    """Parameters do not require grad in the body (optimising a vector must not fill every weight's .grad)."""
    flags = [(p, p.requires_grad) for p in model.hf.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
