"""Small prompt sets written for this project (IOI pairs); larger datasets live in data/."""
from __future__ import annotations

import random

IOI_TEMPLATES = [
    "When {A} and {B} went to the store, {B} gave a drink to",
    "When {A} and {B} went to the park, {B} gave a ball to",
    "After {A} and {B} went to the market, {B} handed a bag to",
    "While {A} and {B} were at the house, {B} gave a book to",
]
IOI_NAMES = ["Mary", "John", "Anna", "Tom", "Sarah", "James", "Emma", "David", "Lucy", "Paul",
             "Kate", "Mark", "Alice", "Peter", "Laura", "Mike"]


def ioi_pairs(model, n: int, seed: int = 0, n_tokens: int | None = None) -> list[dict]:
    """`n` IOI prompt pairs {clean, corrupted, answer, foil}, all of one token length.

    The clean prompt's answer is the indirect object (A); the corrupted prompt swaps the second
    mention of B for A, so its answer flips to B. Names are single tokens (with a leading space).
    """
    names = [x for x in IOI_NAMES if len(model.tokenizer(" " + x, add_special_tokens=False).input_ids) == 1]
    rng = random.Random(seed)
    out, seen = [], set()
    n_tokens = n_tokens or len(model.to_tokens(IOI_TEMPLATES[0].format(A="Mary", B="John"))[0])
    for _ in range(200 * n):
        template = rng.choice(IOI_TEMPLATES)
        a, b = rng.sample(names, 2)
        clean = template.format(A=a, B=b)
        corrupted = template.replace("{B} gave", "{A} gave").replace("{B} handed", "{A} handed").format(A=a, B=b)
        if clean in seen or len(model.to_tokens(clean)[0]) != n_tokens or len(model.to_tokens(corrupted)[0]) != n_tokens:
            continue
        seen.add(clean)
        out.append({"clean": clean, "corrupted": corrupted, "answer": " " + a, "foil": " " + b})
        if len(out) == n:
            return out
    raise ValueError(f"n: could only build {len(out)} IOI pairs of {n_tokens} tokens, asked for {n}")
