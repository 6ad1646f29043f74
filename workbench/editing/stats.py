"""Second-moment statistics of MLP keys, C = E[k k^T] (ROME Sec. 3.1, MEMIT's C_0), cached on disk.

The corpus must be available offline. Two kinds are supported:

- "samples": text sampled from the model itself (top-k 50 sampling, temperature 1, a fixed seed,
  sequences of `seq_len` tokens started from a fixed list of common words); its token ids are
  cached too, so every layer sees the same text;
- a path to a UTF-8 text file (for example one written into `data/`), cut into `seq_len`-token pieces.

A cache file lives at $WORKBENCH_CACHE/stats/<model fingerprint>/<corpus>/layer<l>-n<tokens>.safetensors
with its metadata (fingerprint, layer, corpus, token count, d_mlp) inside; a file whose metadata does not
match what was asked for is refused, never used. Files keyed by the fingerprint of earlier releases
(`Model.legacy_fingerprint`) are re-keyed to the current one, with a warning, the first time they are needed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import checks
from ..core.io import read_safetensors, write_json
from ..core.model import Model
from ..toolkit.corpora import corpus_id, corpus_tokens, read_meta, save_with_meta, stats_dir
from .requests import edit_layers


def second_moments(model: Model, layers, *, corpus: str | Path = "samples", n_tokens: int = 32768, seed: int = 0,
                   seq_len: int = 128, batch_size: int = 16, progress: bool = True) -> dict[int, torch.Tensor]:
    """{layer: C = E[k k^T] over corpus tokens, [d_mlp, d_mlp] float32}, k = blocks.{layer}.mlp.hook_post.

    Computed once (all missing layers in one pass over the corpus, with a progress bar) and cached on
    disk keyed by model fingerprint, layer, corpus and token count.
    """
    layers = edit_layers(model, layers, "layers")
    checks.integer(n_tokens, "n_tokens")
    fp, root = model.fingerprint, stats_dir(model)
    cid = corpus_id(corpus, seed, seq_len, model.tokenizer)
    want = {"fingerprint": fp, "corpus": cid, "n_tokens": n_tokens, "d_mlp": model.dims.d_mlp}
    out, missing = {}, []
    for l in layers:
        path = root / cid / f"layer{l}-n{n_tokens}.safetensors"
        if path.is_file():
            meta = read_meta(path)
            if meta != {**want, "layer": l}:
                raise ValueError(f"stats: cache file {path} holds {meta}, not {dict(want, layer=l)}; "
                                 "it is stale or foreign, delete it to recompute")
            out[l] = read_safetensors(path, "stats")[0]["C"]
        else:
            missing.append(l)
    if not missing:
        return out
    from tqdm.auto import tqdm

    ids = corpus_tokens(model, corpus, n_tokens, seed=seed, seq_len=seq_len, fingerprint=fp, progress=progress)
    d = model.dims.d_mlp
    sums = {l: torch.zeros(d, d, dtype=torch.float64) for l in missing}
    seen = 0
    sites = [f"blocks.{l}.mlp.hook_post" for l in missing]
    for b in tqdm(range(0, len(ids), batch_size), disable=not progress, desc=f"key statistics, layers {missing}", unit="batch"):
        take = min(batch_size * seq_len, n_tokens - seen)
        if take <= 0:
            break
        _, cache = model.run_with_cache(ids[b:b + batch_size].to(model.device), sites, logits=False)  # no unembedding
        for l, s in zip(missing, sites):
            k = cache[s].reshape(-1, d)[:take].double().cpu()  # [tokens, d_mlp]
            sums[l] += k.T @ k
        seen += take
    for l in missing:
        C = (sums[l] / seen).float()
        path = root / cid / f"layer{l}-n{n_tokens}.safetensors"
        save_with_meta({"C": C.contiguous()}, {**want, "layer": l}, path)
        write_json(path.with_suffix(".json"), {**want, "layer": l}, indent=2)
        out[l] = C
    return out


def second_moment(model: Model, layer: int, **kw) -> torch.Tensor:
    """C = E[k k^T] of one layer's MLP keys, [d_mlp, d_mlp] (see `second_moments`)."""
    return second_moments(model, [layer], **kw)[layer]
