"""Loading models for the workbench: the embedded default, any Hugging Face causal LM by local path or hub
id, an already-built one, or a tiny seeded test model ("tiny-<family>")."""
from __future__ import annotations

from pathlib import Path

import torch

from .default_model import DEFAULT_MODEL, EMBEDDED, prepare_model
from .model import Model
from .tiny import tiny_model
from .validate import validate_model


def _load_dir(path: str | Path, device=None, dtype=torch.float32, attn_implementation="eager"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    if device is not None:
        hf.to(device)
    return hf, tok


def load_model(model=DEFAULT_MODEL, tokenizer=None, *, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32, attn_implementation: str = "eager", device_map=None,
               validate: bool = True) -> Model:
    """Load a model for the workbench (see `_load`). `device_map` ("auto", or {module name: device}) splits
    it over devices with accelerate (`workbench.core.devices.split_model`); not together with `device`.

    `validate` (default on) runs `core.validate.validate_model` on a 6-token prompt: the architecture table's
    modules must give Hugging Face's hidden states and logits, the residual-stream identity (post-norms
    included), attention probabilities that sum to one, and hooks that change the output; a failed check raises
    `ValidationError` naming the check, the layer and the module. `validate=False` skips it. An already-built
    `Model` is returned as it is."""
    if isinstance(model, Model):
        return model
    m = _load_split(model, tokenizer, device=device, dtype=dtype, attn_implementation=attn_implementation,
                    device_map=device_map)
    if validate:
        validate_model(m)
    return m


def _load_split(model, tokenizer, *, device, dtype, attn_implementation, device_map) -> Model:
    if device_map is not None:
        from .devices import check_device_map, split_model

        check_device_map(device_map)
        if device is not None:
            raise ValueError("device_map: give device or device_map, not both")
        return split_model(_load(model, tokenizer, device=None, dtype=dtype, attn_implementation=attn_implementation),
                           device_map)
    return _load(model, tokenizer, device=device, dtype=dtype, attn_implementation=attn_implementation)


def _load(model=DEFAULT_MODEL, tokenizer=None, *, device: str | torch.device | None = None,
          dtype: torch.dtype = torch.float32, attn_implementation: str = "eager") -> Model:
    """Load a model for the workbench.

    `model` is "smollm2-135m" (the embedded default) or "gemma-3-270m" (embedded models, converted once into
    the cache; see `core.default_model`), a local
    Hugging Face directory, a hub id (needs network access), an already-built `PreTrainedModel`
    (then give `tokenizer`; its attention implementation is left as it is), or a `Model`.

    Attention defaults to "eager": as fast as SDPA on CPU at these lengths, and bit-identical
    to TransformerLens (which switches to eager), where SDPA differs by float rounding.
    """
    if isinstance(model, Model):
        return model
    if not isinstance(model, str):
        m = Model(model, tokenizer)
        return m.to(device) if device is not None else m
    if model == "default":
        model = DEFAULT_MODEL
    if model in EMBEDDED:
        hf, tok = _load_dir(prepare_model(model), device, dtype, attn_implementation)
        return Model(hf, tokenizer or tok, name=model)
    if model.startswith("tiny-"):
        return tiny_model(model.removeprefix("tiny-")).to(device or "cpu")
    if not model:
        raise ValueError("model: empty name")
    hf, tok = _load_dir(model, device, dtype, attn_implementation)
    return Model(hf, tokenizer or tok, name=model)


