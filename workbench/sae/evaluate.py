"""The standard SAE evaluation: sparsity, reconstruction, and the model's loss with the SAE spliced in.

    L0                    mean number of active latents per token
    variance explained    1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2   over tokens
    dead fraction         latents that never fire on the evaluation tokens
    CE loss recovered     (L_zero - L_sae) / (L_zero - L_clean), with L the model's next-token cross-entropy
                          clean, with the SAE spliced in (decode(encode(x)), no error term), and with the site
                          zero-ablated; 1 = as good as the model, 0 = no better than removing the site.

Positions before `skip_first`, and tokens whose norm exceeds the SAE's `max_norm` (attention sinks), are left
alone in all three runs (the SAE was not trained on them: see `train.train_sae`) and counted in none of the
reconstruction numbers (`n_sink_tokens` says how many were left out).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.interventions import Scale
from ..core.sites import parse_site
from .edit import SAEEdit
from ..core import checks


def _next_token_ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """(summed cross-entropy, count) of predicting each real token from the ones before it."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    real = torch.ones_like(nll, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    return float(nll[real].sum()), int(real.sum())


@torch.no_grad()
def evaluate_sae(model, sae, texts: Sequence[str], *, skip_first: int | None = None, batch_size: int = 8,
                 progress: bool = False) -> dict:
    """{"l0", "variance_explained", "mse", "dead_fraction", "ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered",
    "n_tokens", "n_texts", "site"} for `sae` at its site over `texts` (see the module docstring)."""
    from tqdm.auto import tqdm

    from ..core.generation import check_prompts
    from .train import site_activations

    texts = check_prompts(list(texts), "texts")
    site = parse_site(sae.cfg.metadata.get("hook_name"), model.dims.n_layers)
    skip = int(sae.cfg.metadata.get("skip_first", 0) or 0) if skip_first is None else skip_first
    checks.integer(skip, "skip_first", 0)
    checks.integer(batch_size, "batch_size")

    x = site_activations(model, texts, site, skip_first=skip, batch_size=batch_size, progress=False)
    max_norm = sae.cfg.metadata.get("max_norm")
    n_sinks = 0
    if max_norm is not None:  # attention-sink tokens: SAEEdit leaves them alone, so they are no part of these numbers
        keep = x.norm(dim=-1) <= max_norm
        n_sinks, x = int((~keep).sum()), x[keep]
    xs = x.to(sae.dtype)
    z = torch.cat([sae.encode(c) for c in xs.split(4096)])
    x_hat = torch.cat([sae.decode(c) for c in z.split(4096)]).float()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    fired = (z > 0)

    sums = {"clean": [0.0, 0], "sae": [0.0, 0], "zero": [0.0, 0]}
    positions = slice(skip, None) if skip else None
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="CE with the SAE spliced in", unit="batch"):
        ids, mask = model.encode(texts[start:start + batch_size])
        if ids.shape[1] <= skip:
            continue
        runs = {"clean": [], "sae": [SAEEdit(sae=sae, splice=True, positions=positions)],
                "zero": [Scale(site, factor=0.0, positions=positions)]}
        for name, ivs in runs.items():
            logits = model.run_with_interventions(ids, ivs, attention_mask=mask)
            s, n = _next_token_ce(logits, ids, mask)
            sums[name][0] += s
            sums[name][1] += n
    ce = {k: s / max(n, 1) for k, (s, n) in sums.items()}
    return {
        "site": site.name, "n_texts": len(texts), "n_tokens": int(len(x)), "skip_first": skip, "n_sink_tokens": n_sinks,
        "l0": float(fired.sum(-1).float().mean()),
        "variance_explained": float(1 - resid / total),
        "mse": float(resid / len(x)),
        "dead_fraction": float((~fired.any(0)).float().mean()),
        "ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
        "ce_loss_recovered": float((ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"])),
    }
