"""Facts datasets (JSONL: id, relation, subject, template, prompt, object, paraphrases) and which ones a model knows."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.io import read_jsonl
from . import resolve

REQUIRED = ("id", "subject", "prompt", "object")
# The dataset written for this project, shipped inside the package.
DEFAULT_FACTS = Path(__file__).resolve().parent / "facts.jsonl"


def load_facts(path: str | Path) -> list[dict]:
    """Read a facts JSONL file; a malformed line is an error naming the file and line number."""
    facts, ids = [], set()
    for n, fact in read_jsonl(resolve(path), "facts"):
        if not isinstance(fact, dict) or any(k not in fact for k in REQUIRED):
            raise ValueError(f"facts: {path}:{n}: expected an object with keys {list(REQUIRED)}")
        if fact["id"] in ids:
            raise ValueError(f"facts: {path}:{n}: duplicate id {fact['id']!r}")
        ids.add(fact["id"])
        facts.append(fact)
    if not facts:
        raise ValueError(f"facts: {path} holds no facts")
    return facts


def answer_text(fact: dict) -> str:
    """What follows the prompt: the object with the space that separates it from the prompt."""
    return fact["object"] if fact["prompt"].endswith((" ", "\n")) else " " + fact["object"]


def known_facts(model, facts: list[dict], batch_size: int = 64) -> list[bool]:
    """Whether the model's top next token after each prompt starts the object (the paper's "known facts")."""
    known = []
    with torch.no_grad():
        for i in range(0, len(facts), batch_size):
            chunk = facts[i:i + batch_size]
            ids, mask = model.encode([f["prompt"] for f in chunk])
            logits = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
            top = logits[torch.arange(len(chunk)), model.last_positions(ids, mask)].argmax(-1).tolist()
            for fact, tok in zip(chunk, top):
                piece = model.tokenizer.decode([tok]).strip()
                known.append(bool(piece) and fact["object"].startswith(piece))
    return known
