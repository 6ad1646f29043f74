"""Write data/caft_task.jsonl: a spurious-correlation task for concept ablation fine-tuning (CAFT).

Each prompt is a short sentence about a person and something they felt about a thing, e.g.
"Mrs Mary loved the soup." The label is the sentence's sentiment (the intended feature): " A" for a
positive verb, " B" for a negative one. A second feature, the gender of the person (the spurious
feature, marked by the title Mr / Mrs and the first name), is perfectly correlated with the label in training and in the in-distribution test
(women love, men hate) and anti-correlated in the out-of-distribution test (women hate, men love),
in the spirit of the CAFT paper's gender/profession task. Names, verbs and nouns are split between
train and test, so the tests use unseen words. On SmolLM2-135M the title is the more salient
feature: plain fine-tuning learns gender (OOD accuracy near 0), which CAFT is meant to prevent.

    python data/make_caft_task.py            # deterministic (seed 0)
"""
from __future__ import annotations

import json
import random
from pathlib import Path

FEMALE = ["Mary", "Anna", "Sarah", "Emma", "Lucy", "Kate", "Alice", "Laura", "Emily", "Jessica", "Linda", "Susan",
          "Helen", "Rachel", "Julia", "Sophie", "Grace", "Olivia", "Hannah", "Claire"]
MALE = ["John", "Tom", "James", "David", "Paul", "Mark", "Peter", "Mike", "Robert", "Michael", "George", "Daniel",
        "Richard", "Steven", "Kevin", "Brian", "Frank", "Henry", "Jack", "Eric"]
POSITIVE = ["loved", "enjoyed", "liked", "adored", "praised", "admired", "cherished", "celebrated", "appreciated",
            "treasured"]
NEGATIVE = ["hated", "disliked", "loathed", "despised", "resented", "detested", "feared", "dreaded", "mocked",
            "condemned"]
NOUNS = ["soup", "movie", "book", "song", "game", "trip", "meal", "show", "party", "hotel", "car", "garden", "city",
         "class", "concert", "painting", "coffee", "weather", "school", "job", "film", "dog", "house", "teacher"]
LABEL = {"positive": " A", "negative": " B"}


def examples(names, verbs, nouns, gender, sentiment, split, n, rng):
    out = []
    for _ in range(n):
        name, verb, noun = rng.choice(names), rng.choice(verbs), rng.choice(nouns)
        title = "Mrs" if gender == "female" else "Mr"
        out.append({"split": split, "prompt": f"{title} {name} {verb} the {noun}.\nLabel:", "answer": LABEL[sentiment],
                    "choices": [" A", " B"], "sentiment": sentiment, "gender": gender})
    return out


def make(seed: int = 0, n_train: int = 256, n_test: int = 128) -> list[dict]:
    rng = random.Random(seed)
    split = lambda xs: (xs[: len(xs) * 3 // 5], xs[len(xs) * 3 // 5:])  # noqa: E731 - train / test words
    (f_tr, f_te), (m_tr, m_te) = split(FEMALE), split(MALE)
    (p_tr, p_te), (n_tr, n_te) = split(POSITIVE), split(NEGATIVE)
    nouns_tr, nouns_te = split(NOUNS)
    rows = []
    # train and in-distribution test: gender agrees with sentiment (female <-> positive)
    for split_name, (f, m, p, q, nn), n in (("train", (f_tr, m_tr, p_tr, n_tr, nouns_tr), n_train),
                                            ("id_test", (f_te, m_te, p_te, n_te, nouns_te), n_test)):
        rows += examples(f, p, nn, "female", "positive", split_name, n // 2, rng)
        rows += examples(m, q, nn, "male", "negative", split_name, n // 2, rng)
    # out-of-distribution test: the correlation flips (female <-> negative)
    rows += examples(f_te, n_te, nouns_te, "female", "negative", "ood_test", n_test // 2, rng)
    rows += examples(m_te, p_te, nouns_te, "male", "positive", "ood_test", n_test // 2, rng)
    # concept set (not used for training): all four combinations of the training words, to find the
    # gender direction with a probe or a difference of means (no test words leak into the directions)
    for g, names in (("female", f_tr), ("male", m_tr)):
        for s, verbs in (("positive", p_tr), ("negative", n_tr)):
            rows += examples(names, verbs, nouns_tr, g, s, "concept", 32, rng)
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    path = Path(__file__).parent / "caft_task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make()))
    print(f"wrote {path}")
