"""Behaviour metrics for steering sweeps, independent of the steering code.

Each factory returns `score(prompts, continuations) -> np.ndarray [n]`. They read only the text
of the continuation, scored by the unsteered model (`log_odds_classifier`) or by a word list
(`word_share`), so a steering vector cannot grade itself.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..data import resolve
from ..core import checks
from ..core.io import read_text

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?", re.UNICODE)


def words_of(text: str) -> list[str]:
    """Lower-cased words of `text` (letters, with inner apostrophes: "l'eau", "don't")."""
    return [w.lower() for w in _WORD.findall(text)]


def word_share(words: Iterable[str] | str | Path, *, split_apostrophes: bool = True):
    """Share of each continuation's words found in `words` (a word list, or a file of one word per line);
    0 for a continuation with no words. With `split_apostrophes`, "l'eau" counts as "l'" and "eau"."""
    if isinstance(words, (str, Path)):
        path = resolve(words)
        if not path.is_file():
            raise FileNotFoundError(f"words: no word list {path}")
        words = [w.strip() for w in read_text(path, "words").splitlines() if w.strip() and not w.startswith("#")]
    vocab = {w.lower() for w in words}
    if not vocab:
        raise checks.fail("words", "a non-empty word list", words)

    def tokens(text):
        out = []
        for w in words_of(text):
            if split_apostrophes and re.search(r"['’]", w):
                head, tail = re.split(r"['’]", w, maxsplit=1)
                out += [head + "'", tail]
            else:
                out.append(w)
        return out

    def score(prompts, continuations):
        shares = []
        for text in continuations:
            ws = tokens(text)
            shares.append(sum(w in vocab for w in ws) / len(ws) if ws else 0.0)
        return np.array(shares)

    return score


def log_odds_classifier(model, template: str, positive: str, negative: str, *, batch_size: int = 32):
    """log p(`positive`) - log p(`negative`) for the next token after `template.format(text=continuation)`,
    under `model` as it is (use it unsteered). `positive`/`negative` must be single tokens."""
    if "{text}" not in template:
        raise ValueError("template: expected a '{text}' placeholder for the continuation")
    pos_id = model.to_single_token(positive, "positive")
    neg_id = model.to_single_token(negative, "negative")

    @torch.no_grad()
    def score(prompts, continuations):
        out = []
        for start in range(0, len(continuations), batch_size):
            texts = [template.format(text=c.strip()) for c in continuations[start:start + batch_size]]
            ids, mask = model.encode(texts)
            last = model.last_positions(ids, mask)
            logits = model(ids, mask)[torch.arange(len(texts), device=ids.device), last].float().log_softmax(-1)
            out.append((logits[:, pos_id] - logits[:, neg_id]).cpu())
        return torch.cat(out).numpy()

    return score
