"""Loading models for the workbench: the embedded default, any Hugging Face causal LM by local path or hub
id, an already-built one, or a tiny seeded test model ("tiny-<family>")."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from . import checks
from .default_model import DEFAULT_MODEL, EMBEDDED, prepare_model
from .model import Model
from .tiny import tiny_model
from .validate import validate_once


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_dtype(dtype) -> torch.dtype:
    """None (float32), a floating torch dtype or its name ("bfloat16")."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise checks.fail("dtype", "one of " + ", ".join(DTYPES) + " (or the torch dtype)", dtype)
    return dtype


def check_model_path(model: str) -> None:
    """A local folder must exist and hold a readable config.json (else transformers' errors: "Repo id must be
    ...", a raw JSONDecodeError); a name that is not a path is a hub id."""
    from .io import read_json

    p = Path(model).expanduser()
    looks_local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if not looks_local:
        if not re.fullmatch(r"[A-Za-z0-9]([\w.-]{0,94}[A-Za-z0-9_])?(/[A-Za-z0-9]([\w.-]{0,94}[A-Za-z0-9_])?)?", model):
            raise checks.fail("model", "the embedded default, a Hugging Face folder, a hub id (org/name: letters, "
                              "digits, '-', '_', '.'), or tiny-<family>", model)
        return
    if not p.is_dir():
        raise ValueError(f"model: no such folder {model}; expected the embedded default, a Hugging Face folder or "
                         "hub id (org/name), or tiny-<family>")
    cfg = read_json(p / "config.json", "model")
    if not isinstance(cfg, dict):
        raise ValueError(f"model: {p / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")


def _load_dir(path: str | Path, device=None, dtype=torch.float32, attn_implementation="eager"):
    """Tokenizer and model from a Hugging Face folder or hub id. Weights the config names that the checkpoint
    lacks (they would be random), weights the config does not name, and weights of another shape are refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    hf, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                                    output_loading_info=True)
    for key, what in (("missing_keys", "weights the config names are missing from the checkpoint (they would be "
                                       "random)"),
                      ("unexpected_keys", "the checkpoint holds weights the config does not name"),
                      ("mismatched_keys", "weights of another shape than the config says")):
        bad = sorted(str(k) for k in info.get(key) or ())
        if bad:
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            raise ValueError(f"model: {path}: {what}: {bad[:4]}{more}; check config.json against the weights")
    if device is not None:
        hf.to(device)
    return hf, tok


def load_model(model=DEFAULT_MODEL, tokenizer=None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, attn_implementation: str = "eager", device_map=None,
               validate: bool = True) -> Model:
    """Load a model for the workbench (see `_load`). `device_map` ("auto", or {module name: device}) splits
    it over devices with accelerate (`workbench.core.devices.split_model`); not together with `device`.
    `dtype` (default float32) is honoured for every kind of model; an already-built one is used as it is, and
    another dtype for it is refused.

    `validate` (default on) runs `core.validate.validate_model` on a 6-token prompt, once per model (the verdict is
    kept by fingerprint, see `core.validate.validate_once`): the architecture table's modules must give Hugging
    Face's hidden states and logits, the residual-stream identity (post-norms included), attention probabilities
    that sum to one, and hooks that change the output; a failed check raises
    `ValidationError` naming the check, the layer and the module. `validate=False` skips it. An already-built
    `Model` is returned as it is."""
    dtype_given = dtype is not None
    dtype = check_dtype(dtype)
    if dtype_given and not isinstance(model, str):
        have = (model.hf if isinstance(model, Model) else model).dtype
        if have != dtype:
            raise ValueError(f"dtype: the model given is already built in {have}; expected dtype None or {have}, "
                             f"got {dtype} (convert it first)")
    if isinstance(model, Model):
        return model
    m = _load_split(model, tokenizer, device=device, dtype=dtype, attn_implementation=attn_implementation,
                    device_map=device_map)
    if validate:
        validate_once(m)
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
        m = tiny_model(model.removeprefix("tiny-"))
        m.hf.to(dtype=dtype)
        return m.to(device or "cpu")
    if not model:
        raise checks.fail("model", "a model name or folder", model)
    check_model_path(model)
    try:
        hf, tok = _load_dir(model, device, dtype, attn_implementation)
    except OSError as e:  # a hub id that is not cached and cannot be downloaded, or not a model repository
        raise ValueError(f"model: {model!r} is not a local folder and cannot be loaded from the hub "
                         f"({str(e).splitlines()[0]})") from None
    return Model(hf, tokenizer or tok, name=model)


