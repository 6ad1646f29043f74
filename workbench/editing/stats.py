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

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.model import Model
from ..core.io import cache_dir
from ..core.generation import generate_ids
from ..core.io import atomic_write_text, save_safetensors
from .requests import edit_layers

START_WORDS = ["The", "In", "A", "It", "This", "When", "He", "She", "We", "I", "There", "My", "After", "One", "If", "On"]


def _atomic_save(tensors: dict, meta: dict, path: Path) -> None:
    save_safetensors(path, tensors, {"workbench": json.dumps(meta, sort_keys=True)})


def _read_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("workbench", "{}"))


def stats_dir(model: Model) -> Path:
    """$WORKBENCH_CACHE/stats/<fingerprint>; statistics found under the model's legacy fingerprint are moved here."""
    fp = model.fingerprint
    new = cache_dir() / "stats" / fp
    if new.exists() or not (old := cache_dir() / "stats" / model.legacy_fingerprint).is_dir():
        return new
    import shutil
    import warnings

    for src in sorted(old.rglob("*")):  # the same files, the key in each one's metadata rewritten
        if src.suffix == ".safetensors" and _read_meta(src).get("fingerprint") == old.name:
            _atomic_save(load_file(str(src)), {**_read_meta(src), "fingerprint": fp}, new / src.relative_to(old))
        elif src.suffix == ".json" and (meta := json.loads(src.read_text())).get("fingerprint") == old.name:
            atomic_write_text(new / src.relative_to(old), json.dumps({**meta, "fingerprint": fp}, indent=2))
    shutil.rmtree(old)
    warnings.warn(f"stats: re-keyed the statistics in {old} to {new} (the model fingerprint now hashes every "
                  "weight and no longer the folder the model was loaded from)", stacklevel=3)
    return new


def corpus_id(corpus: str | Path, seed: int, seq_len: int) -> str:
    if str(corpus) == "samples":
        return f"samples-seed{seed}-len{seq_len}"
    path = Path(corpus)
    if not path.is_file():
        raise ValueError(f"corpus: expected 'samples' or a text file, got {str(corpus)!r} (no such file)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file-{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem)}-{digest}-len{seq_len}"


def corpus_tokens(model: Model, corpus: str | Path = "samples", n_tokens: int = 32768, *, seed: int = 0,
                  seq_len: int = 128, fingerprint: str | None = None, progress: bool = True) -> torch.Tensor:
    """Token ids [n_seqs, seq_len] holding at least `n_tokens` tokens of the corpus (sampled text is cached)."""
    n_seqs = -(-n_tokens // seq_len)
    if str(corpus) != "samples":
        ids = model.tokenizer(Path(corpus).read_text(encoding="utf-8"), add_special_tokens=False).input_ids
        if len(ids) < n_seqs * seq_len:
            raise ValueError(f"n_tokens: the corpus {corpus} has {len(ids)} tokens, fewer than the {n_seqs * seq_len} asked for")
        return torch.tensor(ids[: n_seqs * seq_len]).reshape(n_seqs, seq_len)
    fp = fingerprint or model.fingerprint
    path = (cache_dir() / "stats" / fingerprint if fingerprint else stats_dir(model)) / f"{corpus_id(corpus, seed, seq_len)}.safetensors"
    if path.is_file():
        meta, ids = _read_meta(path), load_file(str(path))["ids"]
        if meta.get("fingerprint") != fp or meta.get("seed") != seed or ids.shape[1] != seq_len:
            raise ValueError(f"corpus: cached samples {path} do not match this model/seed ({meta}); delete the file")
        if len(ids) >= n_seqs:
            return ids[:n_seqs]
    from tqdm.auto import tqdm

    ids, batch = [], 32
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for b in tqdm(range(0, n_seqs, batch), disable=not progress, desc="sampling corpus", unit="batch"):
            k = min(batch, n_seqs - b)
            starts = [START_WORDS[(b + i) % len(START_WORDS)] for i in range(k)]
            first = [model.tokenizer(s).input_ids[:1] for s in starts]
            new = generate_ids(model, first, do_sample=True, top_k=50, temperature=1.0, max_new_tokens=seq_len - 1,
                               min_new_tokens=seq_len - 1, seed=None, batch_size=k, cut_at_stop=False)
            ids.append(torch.tensor([a + b for a, b in zip(first, new)])[:, :seq_len])
    ids = torch.cat(ids)
    _atomic_save({"ids": ids.contiguous()}, {"fingerprint": fp, "seed": seed, "seq_len": seq_len}, path)
    return ids


def second_moments(model: Model, layers, *, corpus: str | Path = "samples", n_tokens: int = 32768, seed: int = 0,
                   seq_len: int = 128, batch_size: int = 16, progress: bool = True) -> dict[int, torch.Tensor]:
    """{layer: C = E[k k^T] over corpus tokens, [d_mlp, d_mlp] float32}, k = blocks.{layer}.mlp.hook_post.

    Computed once (all missing layers in one pass over the corpus, with a progress bar) and cached on
    disk keyed by model fingerprint, layer, corpus and token count.
    """
    layers = edit_layers(model, layers, "layers")
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens: expected an int >= 1, got {n_tokens!r}")
    fp, root = model.fingerprint, stats_dir(model)
    cid = corpus_id(corpus, seed, seq_len)
    want = {"fingerprint": fp, "corpus": cid, "n_tokens": n_tokens, "d_mlp": model.dims.d_mlp}
    out, missing = {}, []
    for l in layers:
        path = root / cid / f"layer{l}-n{n_tokens}.safetensors"
        if path.is_file():
            meta = _read_meta(path)
            if meta != {**want, "layer": l}:
                raise ValueError(f"stats: cache file {path} holds {meta}, not {dict(want, layer=l)}; "
                                 "it is stale or foreign, delete it to recompute")
            out[l] = load_file(str(path))["C"]
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
        _, cache = model.run_with_cache(ids[b:b + batch_size].to(model.device), sites)
        for l, s in zip(missing, sites):
            k = cache[s].reshape(-1, d)[:take].double().cpu()  # [tokens, d_mlp]
            sums[l] += k.T @ k
        seen += take
    for l in missing:
        C = (sums[l] / seen).float()
        path = root / cid / f"layer{l}-n{n_tokens}.safetensors"
        _atomic_save({"C": C.contiguous()}, {**want, "layer": l}, path)
        atomic_write_text(path.with_suffix(".json"), json.dumps({**want, "layer": l}, indent=2))
        out[l] = C
    return out


def second_moment(model: Model, layer: int, **kw) -> torch.Tensor:
    """C = E[k k^T] of one layer's MLP keys, [d_mlp, d_mlp] (see `second_moments`)."""
    return second_moments(model, [layer], **kw)[layer]
