"""Activation-space diffing: a BatchTopK crosscoder on paired base / fine-tuned activations, and the
activation-difference lens.

**Crosscoder** (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing"; the
BatchTopK variant of Minder, Dumas et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to Interpret
Chat-Tuning", as trained by dictionary_learning's `BatchTopKCrossCoderTrainer`). One shared code f over the two
models' activations x = (x_base, x_tuned) at one site, one decoder direction per model and latent:

    f      = BatchTopK_k( ReLU(sum_m x_m W_enc[m] + b_enc) )     kept: the k * batch largest of f_j * (|d_j^base| + |d_j^tuned|)
    x_m^   = sum_j f_j d_j^m + b_dec[m]
    loss   = mean_batch ||x - x^||_2  +  1/32 * auxk                 (the L2 norm over both models, not squared)

auxk (Gao et al. 2024): the error is reconstructed by the top d_model / 2 latents that have not fired for a while,
normalised by the error's variance, so dead latents get gradient. At inference each latent fires where its scaled
pre-activation exceeds a threshold (an exponential moving average of the smallest scaled activation BatchTopK kept),
so a token's code does not depend on its batch. Each model's activations are first scaled by one number so their
mean squared norm is d_model.

Latents are read by their relative decoder norm (Minder et al.), rel_j = (1 + (|d_tuned| - |d_base|) / max) / 2:
base-only below 0.1, fine-tuned-only above 0.9, shared in 0.4 .. 0.6 (between: "leans"). **Latent Scaling** (Minder et al., Sec. 3)
guards against latents that only look exclusive (run on every latent outside the shared band; Complete Shrinkage: the direction is in the other model but its
decoder shrank; Latent Decoupling: other latents carry it there): for an exclusive latent j with direction d (its
own model's decoder) and each model m, the least-squares scale of f_j d that best explains

    error target          y_m = x_m - (x^_m - f_j d_j^m)     (what the rest of the dictionary leaves of x_m)
    reconstruction target y_m = x^_m - f_j d_j^m              (what the other latents reconstruct)

is beta_m = sum f_j <d, y_m> / (|d|^2 sum f_j^2), and nu = beta_other / beta_own. A genuinely exclusive latent has
nu_error near 0 (its direction is not in the other model); we call it genuine at nu_error < 0.3 (our threshold;
the paper ranks by nu rather than fixing one).

**Activation-difference lens** (Minder et al. 2025, "Narrow Finetuning Leaves Clearly Readable Traces in Activation
Differences"): the mean of x_tuned - x_base over the first few tokens of unrelated texts at a layer, read through
the fine-tuned model's logit lens (its final norm and unembedding) and usable as a steering vector (added to the
base model with `workbench.steer`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..lenses.logit import lens_logits
from ..core.io import atomic_write_text
from ..core.model import Model
from ..directions import read_activations
from ..core import checks

EXCLUSIVE, SHARED = 0.1, (0.4, 0.6)  # relative decoder norm bands (Minder et al.)
GENUINE_NU = 0.3  # nu_error below this: an exclusive latent whose direction is not in the other model


class CrossCoder(nn.Module):
    """A BatchTopK crosscoder over two models' activations [batch, 2, d_model] (0: base, 1: fine-tuned)."""

    def __init__(self, d_model: int, n_latents: int, k: int, *, seed: int = 0):
        super().__init__()
        if not all(isinstance(v, int) and v >= 1 for v in (d_model, n_latents, k)) or k > n_latents:
            raise ValueError(f"k: expected positive ints with k <= n_latents, got d_model={d_model}, "
                             f"n_latents={n_latents}, k={k}")
        self.d_model, self.n_latents, self.k = d_model, n_latents, k
        g = torch.Generator().manual_seed(seed)
        dec = torch.randn(n_latents, 2, d_model, generator=g)
        dec = dec / dec.norm(dim=-1, keepdim=True)  # unit decoder directions in each model at the start
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone() / math.sqrt(2))  # [2, d, n]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(2, d_model))
        self.register_buffer("scale", torch.ones(2))  # per-model activation scale (mean squared norm -> d_model)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def decoder_norms(self) -> Tensor:
        """|d_j^m|, [n_latents, 2]."""
        return self.W_dec.norm(dim=-1)

    def pre_acts(self, x: Tensor) -> Tensor:
        """ReLU(sum_m x_m W_enc[m] + b_enc), [batch, n_latents], for normalised x [batch, 2, d]."""
        return torch.relu(torch.einsum("bmd,mdn->bn", x, self.W_enc) + self.b_enc)

    def encode(self, x: Tensor, *, batch_topk: bool = False) -> Tensor:
        """Codes [batch, n_latents] of normalised x: BatchTopK (training) or the learned threshold (inference)."""
        pre = self.pre_acts(x)
        scaled = pre * self.decoder_norms().sum(-1)
        if batch_topk or self.threshold < 0:
            keep = torch.zeros_like(scaled, dtype=torch.bool).flatten()
            keep[scaled.flatten().topk(min(self.k * len(x), scaled.numel())).indices] = True
            return pre * keep.view_as(pre)
        return pre * (scaled > self.threshold)

    def decode(self, f: Tensor) -> Tensor:
        return torch.einsum("bn,nmd->bmd", f, self.W_dec) + self.b_dec

    def normalize(self, acts: Tensor) -> Tensor:
        """Raw paired activations [batch, 2, d] -> the crosscoder's scale."""
        return acts * self.scale.to(acts.device)[None, :, None]

    # -- files: safetensors weights + a JSON config (never pickles) ------------------------------------------

    def save(self, folder: str | Path, meta: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "crosscoder.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(folder / "crosscoder.safetensors")
        atomic_write_text(folder / "cfg.json", json.dumps({"architecture": "batchtopk_crosscoder", "d_model": self.d_model,
                                                          "n_latents": self.n_latents, "k": self.k, **(meta or {})}))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CrossCoder":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "cfg.json").is_file() or not (folder / "crosscoder.safetensors").is_file():
            raise ValueError(f"folder: {folder} holds no crosscoder (cfg.json and crosscoder.safetensors)")
        cfg = json.loads((folder / "cfg.json").read_text())
        if cfg.get("architecture") != "batchtopk_crosscoder":
            raise ValueError(f"folder: {folder}/cfg.json is not a batchtopk_crosscoder config")
        cc = cls(cfg["d_model"], cfg["n_latents"], cfg["k"])
        cc.load_state_dict(load_file(str(folder / "crosscoder.safetensors")))
        return cc


def paired_activations(base: Model, tuned: Model, texts: Sequence[str], layer: int, *,
                       component: str = "resid_pre", batch_size: int = 32) -> Tensor:
    """Both models' activations at `blocks.{layer}.hook_{component}` on every real token of `texts`: [n_tokens, 2, d]."""
    from .tuco import check_pair

    check_pair(base, tuned)
    a = read_activations(base, texts, [layer], component=component, read_at="all", batch_size=batch_size)[layer]
    b = read_activations(tuned, texts, [layer], component=component, read_at="all", batch_size=batch_size)[layer]
    return torch.stack([a, b], 1)


def _auxk(cc: CrossCoder, err: Tensor, pre: Tensor, dead: Tensor) -> Tensor:
    """The dead latents' reconstruction of the error, normalised by its variance (Gao et al. 2024)."""
    if not dead.any():
        return err.new_zeros(())
    k_aux = min(cc.d_model // 2, int(dead.sum()))
    scaled = torch.where(dead[None], pre * cc.decoder_norms().sum(-1), -torch.inf)
    idx = scaled.topk(k_aux, dim=-1).indices
    f_aux = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))
    rec = torch.einsum("bn,nmd->bmd", f_aux, cc.W_dec)  # no decoder bias: it reconstructs an error
    num = (err - rec).flatten(1).pow(2).sum(-1).mean()
    den = (err - err.mean(0, keepdim=True)).flatten(1).pow(2).sum(-1).mean()
    return (num / den.clamp_min(1e-12)).nan_to_num(0.0)


def train_crosscoder(acts: Tensor, *, n_latents: int = 256, k: int = 8, steps: int = 1500, batch_size: int = 512,
                     lr: float | None = None, auxk_alpha: float = 1 / 32, dead_after: int = 50,
                     seed: int = 0, progress: bool = False) -> CrossCoder:
    """Train a BatchTopK crosscoder on paired activations [n_tokens, 2, d] (module docstring: loss and schedule).

    lr: default 2e-4 / sqrt(n_latents / 2^14) (dictionary_learning's rule), linearly decayed over the last 20% of
    steps; gradients clipped to norm 1. dead_after: steps without firing before a latent counts as dead (auxk).
    progress: a tqdm bar over the steps (rate, time left).
    """
    if not isinstance(acts, Tensor) or acts.ndim != 3 or acts.shape[1] != 2 or not acts.is_floating_point():
        raise checks.fail('acts', 'float activations [n_tokens, 2, d_model]',
                          tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__)
    if not torch.isfinite(acts).all():
        raise ValueError("acts: holds NaN or inf")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("dead_after", dead_after)):
        if not isinstance(v, int) or v < 1:
            raise checks.fail(name, 'a positive int', v)
    torch.manual_seed(seed)
    cc = CrossCoder(acts.shape[-1], n_latents, k, seed=seed)
    with torch.no_grad():
        # one number per model: mean squared norm d_model after scaling
        cc.scale.copy_((acts.shape[-1] / acts.pow(2).sum(-1).mean(0)).sqrt())
        x_all = cc.normalize(acts.float())
        cc.b_dec.copy_(x_all.mean(0))
    lr = lr if lr is not None else 2e-4 / math.sqrt(n_latents / 2 ** 14)
    opt = torch.optim.Adam(cc.parameters(), lr=lr)
    decay_from = int(0.8 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (steps - s) / max(1, steps - decay_from)))
    gen = torch.Generator().manual_seed(seed)
    since_fired = torch.zeros(n_latents, dtype=torch.long)
    threshold, beta = -1.0, 0.99
    from tqdm.auto import tqdm

    for step in tqdm(range(steps), disable=not progress, desc="crosscoder", unit="step"):
        x = x_all[torch.randint(len(x_all), (batch_size,), generator=gen)]
        pre = cc.pre_acts(x)
        f = cc.encode(x, batch_topk=True)
        err = x - cc.decode(f)
        fired = (f > 0).any(0)
        since_fired = torch.where(fired, 0, since_fired + 1)
        loss = err.flatten(1).norm(dim=-1).mean() + auxk_alpha * _auxk(cc, err.detach(), pre, since_fired >= dead_after)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(cc.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # the inference threshold: EMA of the smallest kept scaled activation
            kept = (f * cc.decoder_norms().sum(-1))[f > 0]
            if len(kept) and step >= steps // 4:
                low = float(kept.min())
                threshold = low if threshold < 0 else beta * threshold + (1 - beta) * low
    cc.threshold.fill_(threshold)
    cc.train_loss = float(loss.detach())
    return cc.eval()


@dataclass
class CrosscoderDiff:
    """Per latent: relative decoder norm, class (`KINDS`), firing frequency, Latent Scaling ratios (computed for
    every alive latent outside the shared band; NaN elsewhere), cosine between its two decoder directions."""

    rel_norm: Tensor
    kind: list[str]
    frequency: Tensor
    nu_error: Tensor
    nu_reconstruction: Tensor
    cos_decoders: Tensor
    fvu: float
    meta: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        alive = self.frequency > 0
        out = {c: int(sum(1 for k, a in zip(self.kind, alive) if k == c and a)) for c in KINDS}
        out["dead"] = int((~alive).sum())
        for side in ("base_only", "tuned_only"):
            out[f"{side}_genuine"] = len(self.exclusive(side))
        return out

    def exclusive(self, side: str = "tuned_only", genuine: bool = True) -> list[int]:
        """Latents of one class (alive), most frequent first; `genuine`: those passing the Latent Scaling check."""
        if side not in ("base_only", "tuned_only"):
            raise checks.fail('side', "'base_only' or 'tuned_only'", side)
        idx = [j for j, k in enumerate(self.kind) if k == side and self.frequency[j] > 0
               and (not genuine or bool(self.nu_error[j] < GENUINE_NU))]
        return sorted(idx, key=lambda j: -float(self.frequency[j]))

    def most_moved(self, n: int = 10, side: str = "tuned") -> list[int]:
        """The n alive latents leaning furthest toward one model (`side` 'tuned' or 'base'), by relative norm."""
        if side not in ("tuned", "base"):
            raise checks.fail('side', "'tuned' or 'base'", side)
        alive = [j for j in range(len(self.kind)) if self.frequency[j] > 0]
        return sorted(alive, key=lambda j: -float(self.rel_norm[j]) if side == "tuned" else float(self.rel_norm[j]))[:n]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"latent": range(len(self.kind)), "rel_norm": self.rel_norm.numpy(), "kind": self.kind,
                             "frequency": self.frequency.numpy(), "nu_error": self.nu_error.numpy(),
                             "nu_reconstruction": self.nu_reconstruction.numpy(),
                             "cos_decoders": self.cos_decoders.numpy()})

    def to_json(self, top: int = 20) -> dict:
        df = self.to_dataframe()
        moved = df.loc[self.most_moved(top, "tuned") + self.most_moved(top, "base")]
        return {"meta": self.meta, "counts": self.counts(), "fvu": self.fvu,
                "most_moved": json.loads(moved.to_json(orient="records"))}


KINDS = ("base_only", "leans_base", "shared", "leans_tuned", "tuned_only")


def kind_of(rel: float) -> str:
    """The class of a latent from its relative decoder norm (Minder et al.'s bands; between them it 'leans')."""
    if rel < EXCLUSIVE:
        return "base_only"
    if rel > 1 - EXCLUSIVE:
        return "tuned_only"
    if SHARED[0] <= rel <= SHARED[1]:
        return "shared"
    return "leans_base" if rel < 0.5 else "leans_tuned"


def _beta(f: Tensor, d: Tensor, y: Tensor) -> float:
    """argmin_beta sum_t |beta f_t d - y_t|^2 = sum f <d, y> / (|d|^2 sum f^2), over tokens with f > 0."""
    den = float(f.pow(2).sum() * d.pow(2).sum())
    return float((f * (y @ d)).sum()) / den if den > 0 else float("nan")


@torch.no_grad()
def diff_crosscoder(cc: CrossCoder, acts: Tensor, *, batch_size: int = 4096) -> CrosscoderDiff:
    """Classify every latent of `cc` and run the Latent Scaling check on the exclusive ones, on paired `acts`."""
    if not isinstance(acts, Tensor) or acts.ndim != 3 or acts.shape[1:] != (2, cc.d_model):
        raise checks.fail('acts', f'[n_tokens, 2, {cc.d_model}]',
                          tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__)
    x = cc.normalize(acts.float())
    f = torch.cat([cc.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    rec = cc.decode(f)
    fvu = float((x - rec).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    norms = cc.decoder_norms()
    nb, nt = norms[:, 0], norms[:, 1]
    rel = 0.5 * ((nt - nb) / torch.maximum(nt, nb).clamp_min(1e-12) + 1)
    kind = [kind_of(r) for r in rel.tolist()]
    freq = (f > 0).float().mean(0)
    cos = torch.nn.functional.cosine_similarity(cc.W_dec[:, 0], cc.W_dec[:, 1], dim=-1)
    nu_e = torch.full((cc.n_latents,), float("nan"))
    nu_r = torch.full_like(nu_e, float("nan"))
    for j, kd in enumerate(kind):
        if kd == "shared" or freq[j] == 0:
            continue
        own, other = (1, 0) if rel[j] > 0.5 else (0, 1)
        on = f[:, j] > 0
        fj, d = f[on, j], cc.W_dec[j, own]
        betas = {}
        for m in (own, other):
            rest = rec[on, m] - fj[:, None] * cc.W_dec[j, m]  # x^_m without latent j
            betas[m] = (_beta(fj, d, x[on, m] - rest), _beta(fj, d, rest))
        nu_e[j] = betas[other][0] / betas[own][0] if betas[own][0] else float("nan")
        nu_r[j] = betas[other][1] / betas[own][1] if betas[own][1] else float("nan")
    meta = {"n_tokens": len(acts), "n_latents": cc.n_latents, "k": cc.k, "genuine_nu_error": GENUINE_NU,
            "bands": {"exclusive": EXCLUSIVE, "shared": list(SHARED)}}
    return CrosscoderDiff(rel, kind, freq, nu_e, nu_r, cos, fvu, meta)


# -- the activation-difference lens -------------------------------------------------------------------------

@dataclass
class ActivationDifference:
    """The mean activation difference (fine-tuned - base) at one layer, with its logit-lens reading."""

    vector: Tensor  # [d_model]
    layer: int
    component: str
    top_tokens: list[tuple[str, float]]
    bottom_tokens: list[tuple[str, float]]
    meta: dict = field(default_factory=dict)

    def steering_vector(self):
        """As a `workbench.SteeringVector` (add it to the base model to move it toward the fine-tune)."""
        from ..steering import SteeringVector

        return SteeringVector({self.layer: self.vector}, self.component,
                              {"method": "activation_difference", **self.meta})

    def to_json(self) -> dict:
        return {"layer": self.layer, "component": self.component, "norm": float(self.vector.norm()),
                "top_tokens": self.top_tokens, "bottom_tokens": self.bottom_tokens, "meta": self.meta}


def activation_difference(base: Model, tuned: Model, texts: Sequence[str], layer: int, *, first_tokens: int = 5,
                          component: str = "resid_pre", top: int = 10) -> ActivationDifference:
    """Mean of x_tuned - x_base over the first `first_tokens` tokens of each text at `blocks.{layer}.hook_{component}`,
    read through the fine-tuned model's logit lens (its final norm and unembedding applied to the difference)."""
    from .tuco import check_pair

    check_pair(base, tuned)
    if not isinstance(first_tokens, int) or first_tokens < 1:
        raise checks.fail('first_tokens', 'a positive int', first_tokens)
    diffs = []
    for pos in range(first_tokens):
        short = [t for t in texts if len(base.tokenizer(t).input_ids) > pos]
        if not short:
            break
        a = read_activations(base, short, [layer], component=component, read_at=pos)[layer]
        b = read_activations(tuned, short, [layer], component=component, read_at=pos)[layer]
        diffs.append(b - a)
    vec = torch.cat(diffs).mean(0)
    with torch.no_grad():
        logits = lens_logits(tuned, vec.to(tuned.device)[None])[0].float().cpu()
    tok = tuned.tokenizer
    hi, lo = logits.topk(top), (-logits).topk(top)
    return ActivationDifference(vec, layer, component,
                                [(tok.decode([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices)],
                                [(tok.decode([int(i)]), float(-v)) for v, i in zip(lo.values, lo.indices)],
                                {"first_tokens": first_tokens, "n_texts": len(texts), "base": base.name,
                                 "tuned": tuned.name})
