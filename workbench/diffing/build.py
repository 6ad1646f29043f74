"""Fine-tuned copies built here, for tests, demos and reproductions (no base / fine-tuned pair ships offline)."""
from __future__ import annotations

import copy

import torch

from ..core.model import Model
from ..core import checks


def perturbed_copy(model: Model, scale: float = 0.02, *, seed: int = 0, blocks_only: bool = True,
                   name: str | None = None) -> Model:
    """A copy of `model` whose weights get Gaussian noise of std `scale` x each matrix's own std (a stand-in for a
    full fine-tune: a small full-rank update of every matrix). `blocks_only`: leave embeddings, final norm and
    unembedding as they are (then TuCo's alpha 0 is the base model exactly)."""
    if not isinstance(model, Model):
        raise checks.fail('model', 'a workbench Model', type(model).__name__)
    if not (isinstance(scale, (int, float)) and scale >= 0):
        raise checks.fail('scale', 'a number >= 0', scale)
    hf = copy.deepcopy(model.hf)
    blocks = model.arch.blocks + "."
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if blocks_only and not n.startswith(blocks):
                continue
            std = p.float().std().item() if p.numel() > 1 and p.ndim > 1 else 0.1
            p.add_((scale * std * torch.randn(p.shape, generator=gen)).to(p.dtype))
    return Model(hf, model.tokenizer, name=name or f"{model.name} (perturbed {scale:g}, seed {seed})")
