"""Facts datasets (JSONL: id, relation, subject, template, prompt, object, paraphrases) and which ones a model knows."""
from __future__ import annotations

from pathlib import Path

import torch

from ..toolkit.records import read_records
from ..toolkit.sweep import check_item_id
from . import resolve

REQUIRED = ("id", "subject", "prompt", "object")
OPTIONAL = ("relation", "template", "paraphrases", "known")
# ROME's known_1000.json (Meng et al. 2022): a JSON list of these records.
KNOWN_1000_KEYS = ("known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id")
# The dataset written for this project, shipped inside the package.
DEFAULT_FACTS = Path(__file__).resolve().parent / "facts.jsonl"


def _from_known_1000(r: dict) -> dict:
    """A known_1000.json record as a fact: the attribute is the object (the space before it is added by
    `answer_text`, as ROME adds it to targets); the template's `{}` is the subject."""
    fact = {"id": r["known_id"], "relation": r["relation_id"], "subject": r["subject"], "template": r["template"],
            "prompt": r["prompt"], "object": r["attribute"].strip()}
    return fact


def load_facts(path: str | Path) -> list[dict]:
    """Read a facts file: this project's JSONL (keys id, subject, prompt, object; optional relation,
    template, paraphrases, known) or ROME's `known_1000.json` (a JSON list of records with keys
    known_id, subject, attribute, template, prediction, prompt, relation_id), told apart by their keys.
    A malformed record, or one with unknown (e.g. misspelt) keys, is an error naming the file, the record
    and the expected keys."""
    facts, ids = [], set()
    for n, fact in read_records(resolve(path), "facts", json_list=True):
        if "known_id" in fact or "attribute" in fact:
            unknown = sorted(set(fact) - set(KNOWN_1000_KEYS))
            missing = [k for k in KNOWN_1000_KEYS if k not in fact and k != "prediction"]
            if unknown or missing:
                raise ValueError(f"facts: {path}:{n}: a known_1000 record with unknown keys {unknown} / missing keys "
                                 f"{missing}; expected keys {list(KNOWN_1000_KEYS)}")
            fact = _from_known_1000(fact)
        else:
            unknown = sorted(set(fact) - set(REQUIRED) - set(OPTIONAL))
            missing = [k for k in REQUIRED if k not in fact]
            if unknown or missing:
                what = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
                raise ValueError(f"facts: {path}:{n}: {' and '.join(what)}; expected keys {list(REQUIRED)} "
                                 f"(optional {list(OPTIONAL)}), or a known_1000.json record {list(KNOWN_1000_KEYS)}")
        for k in ("subject", "prompt", "object"):
            if not isinstance(fact[k], str) or not fact[k].strip():
                raise ValueError(f"facts: {path}:{n}: {k!r} must be a non-empty string, got {fact[k]!r}")
        check_item_id(fact["id"], ids, f"{path}:{n}", "facts")
        facts.append(fact)
    if not facts:
        raise ValueError(f"facts: {path} holds no facts")
    return facts


def answer_text(fact: dict) -> str:
    """What follows the prompt: the object with the space that separates it from the prompt."""
    return fact["object"] if fact["prompt"].endswith((" ", "\n")) else " " + fact["object"]


def known_facts(model, facts: list[dict], batch_size: int = 64, *, progress: bool = False) -> list[bool]:
    """Whether the model's top next token after each prompt starts the object (the paper's "known facts");
    `progress`: a tqdm bar over the batches (rate and time left) on stderr."""
    from tqdm.auto import tqdm

    known = []
    with torch.no_grad():
        for i in tqdm(range(0, len(facts), batch_size), disable=not progress, desc="checking facts", unit="batch"):
            chunk = facts[i:i + batch_size]
            ids, mask = model.encode([f["prompt"] for f in chunk])
            logits = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
            top = logits[torch.arange(len(chunk)), model.last_positions(ids, mask)].argmax(-1).tolist()
            for fact, tok in zip(chunk, top):
                piece = model.tokenizer.decode([tok]).strip()
                known.append(bool(piece) and fact["object"].startswith(piece))
    return known
