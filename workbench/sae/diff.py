"""Model diffing with an SAE: which latents did fine-tuning move, and which latents carry a concept.

Both models read the same prompts; one SAE (trained on the base model) encodes both streams at its site:

    delta_i = mean_t [ z_ft(t)_i - z_base(t)_i ]             (t: the read tokens)
    score_i = |delta_i| / (std_t z_base(t)_i + eps)           (the change in units of the latent's own spread)

ranked by |delta_i| (default; on a tiny model fine-tuned to move one latent's decoder direction it ranks that
latent first, where the standardised score can prefer rare latents) or by score_i.

(the SAE model-diffing recipe behind "misaligned persona" features, Wang et al. 2025). `concept_latents`
ranks latents by a standardised difference of means between two text sets (e.g. female vs male), independently
of any fine-tune, so "the fine-tune moved the gender latents" can be checked rather than assumed.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .use import read_latents, latent_site
from ..core import checks

RANK_BY = ("abs_delta", "score")


@dataclass
class LatentDiff:
    """Per-latent statistics [d_sae] and the ranking (`order`, most moved first)."""

    delta: Tensor  # mean change of activation, fine-tuned - base
    abs_delta: Tensor  # |delta|
    score: Tensor  # |delta| / (base std + eps)
    base_mean: Tensor
    ft_mean: Tensor
    order: list[int]
    meta: dict

    def rank_of(self, latent: int) -> int:
        """0-based rank of `latent` in the ordering (0 = moved most)."""
        return self.order.index(int(latent))

    def to_dataframe(self, top: int | None = 20):
        import pandas as pd

        idx = self.order[:top] if top else self.order
        return pd.DataFrame({"latent": idx, "delta": self.delta[idx].numpy(), "score": self.score[idx].numpy(),
                             "base_mean": self.base_mean[idx].numpy(), "ft_mean": self.ft_mean[idx].numpy()})

    def to_json(self, top: int = 50) -> dict:
        return {"meta": self.meta, "top": self.to_dataframe(top).to_dict(orient="records")}


def _check_rank_by(rank_by):
    if rank_by not in RANK_BY:
        raise checks.fail('rank_by', f'one of {RANK_BY}', rank_by)


def diff_latents(base, finetuned, sae, prompts, *, site=None, read_at="all", rank_by: str = "abs_delta",
                 eps: float = 1e-3, batch_size: int = 32, progress: bool = False) -> LatentDiff:
    """Rank the SAE's latents by how much their activations change from `base` to `finetuned` on `prompts`
    (the same tokens through both; read_at as in `read_activations`: "all" tokens, an index, or "mean").
    progress: tqdm bars over each model's batches."""
    _check_rank_by(rank_by)
    if base.dims != finetuned.dims:
        raise ValueError(f"finetuned: must have the same architecture and sizes as base ({base.dims} vs {finetuned.dims})")
    s = latent_site(base, sae, site)
    kw = dict(site=s.name, read_at=read_at, batch_size=batch_size, progress=progress)
    z_base, z_ft = read_latents(base, sae, prompts, **kw), read_latents(finetuned, sae, prompts, **kw)
    d = (z_ft - z_base).double()
    delta = d.mean(0)
    score = delta.abs() / (z_base.double().std(0) + eps)
    key = score if rank_by == "score" else delta.abs()
    order = key.argsort(descending=True).tolist()
    meta = {"site": s.name, "read_at": read_at, "rank_by": rank_by, "n_prompts": len(prompts), "n_rows": len(z_base),
            "base": base.name, "finetuned": finetuned.name}
    return LatentDiff(delta.float(), delta.abs().float(), score.float(), z_base.mean(0), z_ft.mean(0), order, meta)


def concept_latents(model, sae, texts_a, texts_b, *, site=None, read_at=-1, eps: float = 1e-3,
                    batch_size: int = 32) -> tuple[Tensor, list[int]]:
    """(d' per latent [d_sae], latents ordered by |d'|): d'_i = (mean_a z_i - mean_b z_i) / (pooled std_i + eps),
    the standardised difference of a latent's activation between two sets of texts (e.g. female vs male)."""
    s = latent_site(model, sae, site)
    kw = dict(site=s.name, read_at=read_at, batch_size=batch_size)
    za, zb = read_latents(model, sae, texts_a, **kw).double(), read_latents(model, sae, texts_b, **kw).double()
    pooled = ((za.var(0, unbiased=False) + zb.var(0, unbiased=False)) / 2).sqrt()
    dprime = (za.mean(0) - zb.mean(0)) / (pooled + eps)
    return dprime.float(), dprime.abs().argsort(descending=True).tolist()


def overlap_at(diff: LatentDiff, latents, n: int) -> dict:
    """Where `latents` fall in the diff's ranking: their ranks, and how many are in the top `n`
    (with the chance level n * len(latents) / d_sae)."""
    ranks = [diff.rank_of(i) for i in latents]
    return {"ranks": ranks, "in_top": int(sum(r < n for r in ranks)), "n": n,
            "chance": n * len(ranks) / len(diff.order)}
