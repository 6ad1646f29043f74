"""The one records reader: datasets as JSONL (one JSON object a line) or, where a published dataset ships one,
a JSON list of objects (ROME's `known_1000.json`, CounterFact's `counterfact.json`). Each record is checked to be
an object with the named keys of the named types; an error names the argument, the file, the record number and
the expected key. Facts, edit requests, CAFT tasks, steering pairs, DAS pairs and observed strings are read here."""
from __future__ import annotations

from pathlib import Path

from ..core.io import parse_json, read_jsonl, read_text


def read_records(path: str | Path, what: str, keys: dict[str, type | tuple[type, ...]] | None = None, *,
                 json_list: bool = False, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
    """[(record number, record)] of the file at `path` (JSONL; with `json_list`, also a JSON list: a `.json` file or
    text starting with `[`). Every record must be a JSON object holding each of `keys` ({name: type}) with a value
    of that type; `what` (the argument's name) starts every error message, raised as `error`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ValueError(f"{what}: no such file {path}")
        text = read_text(path, what) if json_list else ""
        if json_list and (path.suffix == ".json" or text.lstrip().startswith("[")):
            data = parse_json(text, what, path)  # the one file reader: "what: file: problem"
            if not isinstance(data, list):
                raise ValueError(f"{what}: {path}: expected a JSON list of records, got {type(data).__name__}")
            rows = list(enumerate(data, 1))
        else:
            rows = read_jsonl(path, what)
    except ValueError as e:
        raise (e if error is ValueError else error(str(e))) from None
    for n, r in rows:
        if not isinstance(r, dict):
            raise error(f"{what}: {path}:{n}: expected a JSON object, got {type(r).__name__}")
        for key, kind in (keys or {}).items():
            if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool) and bool not in _types(kind):
                names = " or ".join(t.__name__ for t in _types(kind))
                raise error(f"{what}: {path}:{n}: expected key {key!r} of type {names}, got {r.get(key)!r}")
    return rows


def _types(kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
