"""What every verb shares: list arguments, output paths."""
from __future__ import annotations


def parse_list(text: str, kind, arg: str) -> list:
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{arg}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not items:
        raise ValueError(f"{arg}: expected at least one value")
    return items
