"""Datasets written for this project, shipped inside the package (so `pip install .` has them):

    facts.jsonl            700 facts over 19 relations, with paraphrases (causal tracing, `data.facts`)
    counterfact.jsonl      360 edit requests built from the facts the default model knows (ROME / MEMIT)
    caft_task.jsonl        the spurious-correlation task for concept-ablation fine-tuning (`make_caft_task.py`)
    steering/              contrast pairs, prompts, neutral text, a French word list, labelled sentences

and the loaders that belong to them (`facts`, `ioi`).
"""
from __future__ import annotations

from pathlib import Path
from ..core import checks

ROOT = Path(__file__).resolve().parent

__all__ = ["data_path", "resolve", "ROOT"]


def data_path(name: str | Path) -> Path:
    """The path of a shipped data file or folder (`"facts.jsonl"`, `"steering/prompts.txt"`, `"steering"`), or `name` itself where it
    names an existing file (a user's own dataset). A leading `data/` is accepted, as in 0.1's paths."""
    if not isinstance(name, (str, Path)) or not str(name):
        raise checks.fail('name', 'a file name or path', name)
    if Path(name).exists():
        return Path(name)
    rel = str(name).removeprefix("data/")
    if (ROOT / rel).exists():
        return ROOT / rel
    shipped = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.suffix in (".jsonl", ".txt"))
    raise FileNotFoundError(f"{name}: no such file, and not a shipped data file; shipped: {shipped}")


def resolve(path: str | Path) -> Path:
    """`path` where it exists, else the shipped file or folder of that name (`data/facts.jsonl` and
    `facts.jsonl` both find it, from any directory; `data/sae/<name>` the shipped SAE), else `path` unchanged
    so the caller's own missing-file error names it."""
    if Path(path).exists():
        return Path(path)
    shipped = ROOT / str(path).removeprefix("data/")
    return shipped if str(path) and shipped.exists() else Path(path)
