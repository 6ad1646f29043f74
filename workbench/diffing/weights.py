"""Weight-space diffing: how each matrix of the blocks moved, and whether fine-tuning grew intruder dimensions.

Intruder dimensions (Shuttleworth, Andreas, Torralba & Sharma, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", 2024, Definition 1): a singular vector y_j of the fine-tuned matrix W_ft is an intruder when

    max_i |cos(y_j, x_i)| < epsilon          x_i: every singular vector of the pre-trained W_0

among the top k singular vectors of W_ft (by singular value). The paper's main setting is k = 10 and
epsilon = 0.5 (its Figure 1 and main-text counts), the defaults here. We read left singular vectors (the
matrix's output space, the residual stream for o_proj / down_proj); `side="right"` reads the input space.
A random direction in d dimensions scores about sqrt(2 log d / d) against the base, far below 0.5, so an
intruder means "not aligned with any one pre-trained singular vector" (a new direction), not "outside their span".

Per matrix we also report the update dW = W_ft - W_0: its Frobenius norm, its norm relative to ||W_0||, and its
effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised singular values p_i = s_i / sum s).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.arch import weight_out_in
from ..core.model import Model
from ..core import checks

K_TOP = 10  # Shuttleworth et al.: the top 10 singular vectors of the fine-tuned matrix
EPSILON = 0.5  # ... are intruders when no pre-trained singular vector has |cos| >= 0.5 with them


def _svd(w: Tensor):
    """(U, S, Vh) in float64 (small matrices: exact; large ones stay on their device)."""
    return torch.linalg.svd(w.detach().double(), full_matrices=False)


def intruder_dimensions(w_base: Tensor, w_tuned: Tensor, *, k: int = K_TOP, epsilon: float = EPSILON,
                        side: str = "left") -> dict:
    """Intruder dimensions of one matrix pair ([out, in] each): {'max_cos': [k] (per top singular vector of
    w_tuned, its best |cos| against every singular vector of w_base), 'intruders': count below epsilon,
    'intruder_ranks': their ranks (0 = largest), 'sigma': the top k singular values of w_tuned}."""
    if not (isinstance(w_base, Tensor) and isinstance(w_tuned, Tensor)) or w_base.ndim != 2 or w_base.shape != w_tuned.shape:
        raise ValueError(f"w_tuned: expected two 2-D tensors of one shape, got "
                         f"{getattr(w_base, 'shape', w_base)} and {getattr(w_tuned, 'shape', w_tuned)}")
    if not isinstance(k, int) or k < 1:
        raise checks.fail('k', 'a positive int', k)
    if not (isinstance(epsilon, (int, float)) and 0 < epsilon <= 1):
        raise checks.fail('epsilon', 'a number in (0, 1]', epsilon)
    if side not in ("left", "right"):
        raise checks.fail('side', "'left' or 'right'", side)
    ub, _, vbh = _svd(w_base)
    ut, st, vth = _svd(w_tuned)
    base_vecs, tuned_vecs = (ub, ut) if side == "left" else (vbh.T, vth.T)
    k = min(k, tuned_vecs.shape[1])
    # cos(y_j, x_i) for unit singular vectors is their dot product; the best match over every x_i
    max_cos = (tuned_vecs[:, :k].T @ base_vecs).abs().max(1).values
    ranks = [int(j) for j in torch.nonzero(max_cos < epsilon).flatten()]
    return {"max_cos": max_cos.tolist(), "intruders": len(ranks), "intruder_ranks": ranks, "sigma": st[:k].tolist()}


def effective_rank(s: Tensor) -> float:
    """exp(H(p)), p_i = s_i / sum_j s_j (Roy & Vetterli 2007); 0 for a zero matrix."""
    s = s.double().clamp_min(0)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class WeightDiff:
    """One row per matrix of the blocks: layer, name, shape, intruders, max_cos, update norms, effective rank."""

    rows: list[dict]
    meta: dict = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def by_layer(self) -> dict[str, list]:
        """Per layer: intruders summed over its matrices, ||dW||_F summed in quadrature, the mean effective rank."""
        layers = sorted({r["layer"] for r in self.rows})
        out = {"layer": layers, "intruders": [], "update_norm": [], "relative_norm": [], "effective_rank": []}
        for l in layers:
            rs = [r for r in self.rows if r["layer"] == l]
            out["intruders"].append(sum(r["intruders"] for r in rs))
            out["update_norm"].append(float(np.sqrt(sum(r["update_norm"] ** 2 for r in rs))))
            out["relative_norm"].append(float(np.sqrt(sum(r["update_norm"] ** 2 for r in rs)) /
                                              max(1e-30, np.sqrt(sum(r["base_norm"] ** 2 for r in rs)))))
            out["effective_rank"].append(float(np.mean([r["effective_rank"] for r in rs])))
        return out

    @property
    def total_intruders(self) -> int:
        return sum(r["intruders"] for r in self.rows)

    def to_json(self) -> dict:
        return {"meta": self.meta, "by_layer": self.by_layer(), "rows": self.rows}


def _block_matrices(model: Model):
    """(layer, name in the block, [out, in] weight) for every linear / Conv1D matrix of the blocks."""
    for l in range(model.dims.n_layers):
        for name, mod in model.module("block", l).named_modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, Tensor) and w.ndim == 2 and not isinstance(mod, torch.nn.Embedding):
                yield l, name, weight_out_in(mod)


def weight_diff(base: Model, tuned, *, k: int = K_TOP, epsilon: float = EPSILON, side: str = "left",
                matrices: str | None = None) -> WeightDiff:
    """Intruder dimensions and update size of every matrix of the blocks of `tuned` against `base`.

    tuned: a Model (a full fine-tune, or LoRA already merged), a peft `PeftModel`, or the folder of a saved peft
    adapter for `base` (merged into a copy of `base`; `base` is untouched). matrices: a regular expression on the
    block-relative module name (e.g. "o_proj|down_proj"); default every matrix.
    """
    tuned = as_merged(base, tuned)
    from .tuco import check_pair

    check_pair(base, tuned)
    pattern = re.compile(matrices) if matrices is not None else None
    rows = []
    for (l, name, w0), (_, name_t, w1) in zip(_block_matrices(base), _block_matrices(tuned)):
        if name != name_t:
            raise ValueError(f"tuned: block {l} module {name_t!r} where base has {name!r}")
        if pattern is not None and not pattern.search(name):
            continue
        w0, w1 = w0.detach().double(), w1.detach().to(w0.device).double()
        delta = w1 - w0
        s_delta = torch.linalg.svdvals(delta)
        row = {"layer": l, "matrix": name, "shape": list(w0.shape),
               **intruder_dimensions(w0, w1, k=k, epsilon=epsilon, side=side),
               "update_norm": float(delta.norm()), "base_norm": float(w0.norm()),
               "relative_norm": float(delta.norm() / w0.norm().clamp_min(1e-30)),
               "effective_rank": effective_rank(s_delta),
               "update_sigma": s_delta[:k].tolist()}
        rows.append(row)
    if not rows:
        raise ValueError(f"matrices: {matrices!r} matches no matrix of the blocks")
    meta = {"base": base.name, "tuned": tuned.name, "k": k, "epsilon": epsilon, "side": side,
            "criterion": "Shuttleworth et al. 2024: max_i |cos(y_j, x_i)| < epsilon over the top k of W_ft"}
    return WeightDiff(rows, meta)


def as_merged(base: Model, tuned) -> Model:
    """`tuned` as a Model with plain weights: a Model as it is; a peft model or an adapter folder merged (into a
    copy of `base` for a folder)."""
    if isinstance(tuned, Model):
        return tuned
    if isinstance(tuned, (str, Path)):
        path = Path(tuned)
        if not (path / "adapter_config.json").is_file():
            raise ValueError(f"tuned: {path} is not a peft adapter folder (no adapter_config.json)")
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(copy.deepcopy(base.hf), str(path))
        return Model(peft_model.merge_and_unload().eval(), base.tokenizer, name=f"{base.name}+{path.name}")
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()
    if isinstance(tuned, PeftModel):
        merged = copy.deepcopy(tuned).merge_and_unload().eval()
        return Model(merged, base.tokenizer, name=f"{base.name}+lora")
    raise checks.fail('tuned', 'a workbench Model, a peft PeftModel or a peft adapter folder', type(tuned).__name__)
