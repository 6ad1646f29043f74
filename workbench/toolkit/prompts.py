"""Prompt lists, normalised in one place: in memory, a string or a list of non-empty strings
(`check_prompts`, from the kernel's generation helpers, which need it too); on disk, a text file with one prompt a
line (`#` lines are comments) or a JSONL file of records with a `prompt` or `text` field (`read_prompts`)."""
from __future__ import annotations

from pathlib import Path

from ..core.generation import check_prompts
from ..core.io import read_text
from .records import read_records

__all__ = ["check_prompts", "read_lines", "read_prompts"]


def read_lines(path: str | Path, arg: str = "file") -> list[str]:
    """Non-empty lines of a text file, `#` comment lines dropped (prompts, word lists, neutral text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no file {path}")
    lines = [l.rstrip("\n") for l in read_text(path, arg).splitlines()]  # the one file reader
    lines = [l for l in lines if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{arg}: {path} has no lines")
    return lines


def read_prompts(path: str | Path, arg: str = "prompts", field: tuple[str, ...] = ("prompt", "text")) -> list[str]:
    """The lines of a text file (`read_lines`), or of a `.jsonl` file the first of `field` each record has, a
    non-empty string."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return read_lines(path, arg)
    out = []
    for n, row in read_records(path, arg):
        text = next((row[f] for f in field if f in row), None)
        if not isinstance(text, str) or not text:
            raise ValueError(f"{arg}: {path}:{n}: expected an object with a non-empty {' or '.join(map(repr, field))} field")
        out.append(text)
    return out
