"""What the lenses share: answer tokens."""
from __future__ import annotations

import torch
from torch import Tensor
from ..core import checks


def answer_ids(model, answer, n: int, arg: str = "answer") -> Tensor:
    """One single-token answer (shared) or one per prompt -> ids [n]."""
    items = [answer] * n if isinstance(answer, str) else list(answer) if isinstance(answer, (list, tuple)) else None
    if items is None or len(items) != n:
        raise checks.fail(arg, f'a single-token string or a list of {n} of them', answer)
    return torch.tensor([model.to_single_token(a, arg) for a in items], device=model.device)
