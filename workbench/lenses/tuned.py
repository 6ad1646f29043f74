"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

Each layer l < L-1 gets an affine translator, initialised to the identity, and the lens reads

    TL_l(h_l) = W_U · final_norm(h_l + A_l h_l + b_l)                        (Belrose et al. eq. 3)

trained to match the model's own output distribution (the distillation loss, eq. 4):

    min_{A_l, b_l}  E_tokens [ KL( softmax(logits) || softmax(TL_l(h_l)) ) ]

The `tuned-lens` package (0.2.0, 2023) is not used: it is not installed here, it pins the transformers
and torch of its day, and it wraps the HF model itself instead of reading our cached sites. This is the
smallest loop that does the job: Adam, batches drawn from (seed, step) so a resumed run is the same run,
translators and optimizer state saved as safetensors (never a pickle) every `save_every` steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..core.io import read_safetensors, save_safetensors
from ..core.sites import Site
from ..core import checks
from ..core.generation import check_prompts
from ..toolkit.sweep import FolderLock, check_not_in_package, content_digest
from .logit import lens_logits


class TunedLens(nn.Module):
    """Affine translators for layers 0..n_layers-2 (the last layer's lens is the model's output)."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(n_layers - 1, d_model, d_model))  # A_l, zero: starts as the logit lens
        self.b = nn.Parameter(torch.zeros(n_layers - 1, d_model))

    def check(self, model, arg: str = "tuned") -> "TunedLens":
        """This lens fits `model`: one translator per layer but the last, each [d_model, d_model]."""
        want = (model.dims.n_layers - 1, model.dims.d_model, model.dims.d_model)
        if tuple(self.A.shape) != want:
            raise ValueError(f"{arg}: a tuned lens for a {self.A.shape[0] + 1}-layer model of width {self.A.shape[-1]}; "
                             f"expected one for this {want[0] + 1}-layer model of width {want[1]} (A {list(want)})")
        return self

    def translate(self, resid: Tensor, layer: int) -> Tensor:
        """[..., d_model] residual of `layer` -> h + A_l h + b_l (the identity for the last layer)."""
        if layer == self.A.shape[0]:
            return resid
        return resid + resid @ self.A[layer].T + self.b[layer]

    def logits(self, model, resid: Tensor, layer: int) -> Tensor:
        return lens_logits(model, self.translate(resid, layer))


def _meta(model, config: dict, step: int) -> dict[str, str]:
    return {"model": model.name, "fingerprint": model.fingerprint, "config": json.dumps(config, sort_keys=True),
            "step": str(step)}


def load_tuned_lens(path, model) -> tuple[TunedLens, dict, dict]:
    """(lens, metadata, tensors) from a file written by `train_tuned_lens`; refuses another model's file."""
    path = Path(path)
    tensors, meta = read_safetensors(path, "path")
    if not model.matches_fingerprint(meta.get("fingerprint")):
        raise ValueError(f"path: {path} was trained on model {meta.get('model')!r} "
                         f"(fingerprint {meta.get('fingerprint')}), not on {model.name!r} ({model.fingerprint})")
    n, d = model.dims.n_layers - 1, model.dims.d_model  # one translator per layer but the last
    for name, shape in (("A", (n, d, d)), ("b", (n, d))):
        if name not in tensors or tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape) if name in tensors else "missing"
            raise ValueError(f"path: {path}: tensor {name!r} expected shape {list(shape)} ({n} translators for "
                             f"{n + 1} layers, d_model {d}), got {got}")
    lens = TunedLens(model.dims.d_model, model.dims.n_layers).to(model.device)
    with torch.no_grad():
        lens.A.copy_(tensors["A"])
        lens.b.copy_(tensors["b"])
    return lens, meta, tensors


def train_tuned_lens(model, texts, *, steps: int = 100, lr: float = 1e-3, batch_size: int = 8, max_len: int = 64,
                     seed: int = 0, path=None, save_every: int = 50,
                     tokens_per_step: int | None = None, progress: bool = False) -> tuple[TunedLens, list[float]]:
    """Train the translators on `texts` for `steps` Adam steps in total; returns (lens, loss per step run here).

    With `path`, the state is saved there every `save_every` steps and at the end, and a run finding a file
    with the same model, settings and texts (their content, hashed) resumes from its step; the file's folder is
    locked meanwhile (`core.sweep.FolderLock`: a second run on it is refused) (the batches depend only on seed and step, so
    stopping and resuming gives the same translators as one run). Loss: mean over layers of eq. 4.
    `tokens_per_step`: read the lens at only that many real tokens of each batch, drawn from (seed, step)
    (the full-vocabulary unembedding per layer and token is the cost: this keeps a CPU run small).
    """
    texts = check_prompts(texts, "texts")
    for name, val in (("steps", steps), ("batch_size", batch_size), ("max_len", max_len), ("save_every", save_every)):
        checks.integer(val, name)
    checks.integer(tokens_per_step, "tokens_per_step", none_ok=True)
    checks.learning_rate(lr)
    # keyed by the texts' content (not only their number): another corpus is another lens
    config = {"lr": lr, "batch_size": batch_size, "max_len": max_len, "seed": seed, "n_texts": len(texts),
              "texts_sha256": content_digest(list(texts))}
    if tokens_per_step is not None:
        config["tokens_per_step"] = tokens_per_step
    L = model.dims.n_layers
    lens = TunedLens(model.dims.d_model, L).to(model.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    if path is not None:
        check_not_in_package(path, "path")
    lock = FolderLock(Path(path).parent) if path is not None else None  # one writer per lens file's folder
    if lock is not None:
        lock.acquire()
    try:
        start = 0
        if path is not None and Path(path).is_file():
            lens, meta, tensors = load_tuned_lens(path, model)
            if json.loads(meta["config"]) != config:
                raise ValueError(f"path: {path} was trained with {meta['config']}, not {json.dumps(config, sort_keys=True)}; "
                                 "use another path or the same settings")
            opt = torch.optim.Adam(lens.parameters(), lr=lr)
            start = int(meta["step"])
            if start > 0:
                state = {"state": {i: {"step": tensors[f"opt.{i}.step"], "exp_avg": tensors[f"opt.{i}.exp_avg"],
                                       "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"]} for i in range(2)},
                         "param_groups": opt.state_dict()["param_groups"]}
                opt.load_state_dict(state)

        def save(step):
            tensors = {"A": lens.A, "b": lens.b}
            for i, p in enumerate(lens.parameters()):
                st = opt.state.get(p)
                if st:
                    tensors.update({f"opt.{i}.step": st["step"].reshape(1) if st["step"].ndim == 0 else st["step"],
                                    f"opt.{i}.exp_avg": st["exp_avg"], f"opt.{i}.exp_avg_sq": st["exp_avg_sq"]})
            save_safetensors(path, tensors, _meta(model, config, step))

        sites = [Site(l, "resid_post") for l in range(L - 1)]
        losses = []
        from tqdm.auto import tqdm

        for step in tqdm(range(start, steps), total=steps, initial=start, disable=not progress, desc="tuned lens",
                         unit="step"):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # the batch depends only on (seed, step)
            rows = torch.randint(len(texts), (batch_size,), generator=gen).tolist()
            ids, mask = model.encode([texts[i] for i in rows])
            ids, mask = ids[:, :max_len], None if mask is None else mask[:, :max_len]
            with torch.no_grad():
                logits, cache = model.run_with_cache(ids, sites, attention_mask=mask)
                target = logits.float().log_softmax(-1)
            keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
            real = keep.nonzero(as_tuple=True)  # (row, position) of every real token
            if tokens_per_step is not None and len(real[0]) > tokens_per_step:
                pick = torch.randperm(len(real[0]), generator=gen)[:tokens_per_step].sort().values.to(ids.device)
                real = (real[0][pick], real[1][pick])
            target = target[real]  # [tokens, d_vocab]
            total = 0.0
            for l in range(L - 1):
                # eq. 4: KL(model || lens) per token, averaged over the chosen real tokens and over layers
                lp = lens.logits(model, cache[sites[l].name][real], l).float().log_softmax(-1)
                kl = F.kl_div(lp, target, log_target=True, reduction="none").sum(-1)
                loss = kl.mean() / (L - 1)
                loss.backward()  # one layer's graph at a time keeps [batch, pos, d_vocab] memory to one layer
                total += loss.item()
            opt.step()
            opt.zero_grad()
            losses.append(total)
            if path is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
                save(step + 1)
        return lens, losses
    finally:
        if lock is not None:
            lock.release()


def lens_kl(model, texts, lens: TunedLens | None = None, max_len: int = 64) -> list[float]:
    """Per layer, mean KL(model || lens) over the tokens of `texts` (the logit lens when `lens` is None)."""
    texts = check_prompts(texts, "texts")
    if lens is not None:
        lens.check(model, "lens")
    L = model.dims.n_layers
    ids, mask = model.encode(texts)
    ids, mask = ids[:, :max_len], None if mask is None else mask[:, :max_len]
    keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, [Site(l, "resid_post") for l in range(L)], attention_mask=mask)
        target = logits.float().log_softmax(-1)
        out = []
        for l in range(L):
            h = cache[Site(l, "resid_post").name]
            lp = (lens.logits(model, h, l) if lens is not None else lens_logits(model, h)).float().log_softmax(-1)
            out.append(F.kl_div(lp, target, log_target=True, reduction="none").sum(-1)[keep].mean().item())
    return out
