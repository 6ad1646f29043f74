"""Text corpora that several methods read, available offline: text the model samples itself (a fixed seed, common
start words, cached token ids) or a UTF-8 text file cut into `seq_len`-token pieces (`corpus_tokens`). ROME/MEMIT's
key statistics and SAE training read the same samples.

Sampled ids are cached at $WORKBENCH_CACHE/stats/<model fingerprint>/samples-seed<seed>-len<seq_len>.safetensors
with their metadata inside; a file whose metadata does not match what was asked for is refused, never used.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from ..core.generation import generate_ids
from ..core.io import cache_dir, parse_json, read_json, read_safetensors, read_text, save_safetensors, write_json

START_WORDS = ["The", "In", "A", "It", "This", "When", "He", "She", "We", "I", "There", "My", "After", "One", "If", "On"]


def save_with_meta(tensors: dict, meta: dict, path: Path) -> None:
    save_safetensors(path, tensors, {"workbench": json.dumps(meta, sort_keys=True)})


def read_meta(path: Path) -> dict:
    return parse_json(read_safetensors(path, "stats")[1].get("workbench", "{}"), "stats", path)


def stats_dir(model) -> Path:
    """$WORKBENCH_CACHE/stats/<fingerprint>; corpora and statistics found under the model's legacy fingerprint
    (earlier releases hashed the folder the model was loaded from) are moved here, with a warning."""
    fp = model.fingerprint
    new = cache_dir() / "stats" / fp
    if new.exists() or not (old := cache_dir() / "stats" / model.legacy_fingerprint).is_dir():
        return new
    import shutil
    import warnings

    for src in sorted(old.rglob("*")):  # the same files, the key in each one's metadata rewritten
        if src.suffix == ".safetensors" and read_meta(src).get("fingerprint") == old.name:
            save_with_meta(read_safetensors(src, "stats")[0], {**read_meta(src), "fingerprint": fp}, new / src.relative_to(old))
        elif src.suffix == ".json" and (meta := read_json(src, "stats")).get("fingerprint") == old.name:
            write_json(new / src.relative_to(old), {**meta, "fingerprint": fp}, indent=2)
    shutil.rmtree(old)
    warnings.warn(f"stats: re-keyed the statistics in {old} to {new} (the model fingerprint now hashes every "
                  "weight and no longer the folder the model was loaded from)", stacklevel=3)
    return new


def start_ids(tokenizer, word: str) -> list[int]:
    """A sample's prompt: the word's first token, after the special tokens the tokenizer adds to any text (Gemma's
    <bos>; none for SmolLM2), so the model samples from the context it always sees."""
    full, bare = tokenizer(word).input_ids, tokenizer(word, add_special_tokens=False).input_ids
    return full[: len(full) - len(bare)] + bare[:1]


def corpus_id(corpus: str | Path, seed: int, seq_len: int, tokenizer=None) -> str:
    """The name of a corpus's cached tokens and statistics. Samples from a tokenizer that adds a <bos> are named
    `samples-bos-...`: until 0.3 their prompt was the <bos> alone (the start word was dropped), and such older
    samples must not be found under the new rule's name."""
    if str(corpus) == "samples":
        bos = tokenizer is not None and len(start_ids(tokenizer, "The")) > 1
        return f"samples{'-bos' if bos else ''}-seed{seed}-len{seq_len}"
    path = Path(corpus)
    if not path.is_file():
        raise ValueError(f"corpus: expected 'samples' or a text file, got {str(corpus)!r} (no such file)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file-{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem)}-{digest}-len{seq_len}"


def corpus_tokens(model, corpus: str | Path = "samples", n_tokens: int = 32768, *, seed: int = 0,
                  seq_len: int = 128, fingerprint: str | None = None, progress: bool = True) -> torch.Tensor:
    """Token ids [n_seqs, seq_len] holding at least `n_tokens` tokens of the corpus (sampled text is cached)."""
    n_seqs = -(-n_tokens // seq_len)
    if str(corpus) != "samples":
        ids = model.tokenizer(read_text(corpus, "corpus"), add_special_tokens=False).input_ids
        if len(ids) < n_seqs * seq_len:
            raise ValueError(f"n_tokens: the corpus {corpus} has {len(ids)} tokens, fewer than the {n_seqs * seq_len} asked for")
        return torch.tensor(ids[: n_seqs * seq_len]).reshape(n_seqs, seq_len)
    fp = fingerprint or model.fingerprint
    path = (cache_dir() / "stats" / fingerprint if fingerprint else stats_dir(model)) / f"{corpus_id(corpus, seed, seq_len, model.tokenizer)}.safetensors"
    if path.is_file():
        meta, ids = read_meta(path), read_safetensors(path, "stats")[0]["ids"]
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
            first = [start_ids(model.tokenizer, s) for s in starts]
            n_new = seq_len - len(first[0])  # every start is one word token after the same special tokens
            new = generate_ids(model, first, do_sample=True, top_k=50, temperature=1.0, max_new_tokens=n_new,
                               min_new_tokens=n_new, seed=None, batch_size=k, cut_at_stop=False)
            ids.append(torch.tensor([a + b for a, b in zip(first, new)])[:, :seq_len])
    ids = torch.cat(ids)
    save_with_meta({"ids": ids.contiguous()}, {"fingerprint": fp, "seed": seed, "seq_len": seq_len}, path)
    return ids
