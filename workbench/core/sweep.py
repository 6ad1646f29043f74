"""The one resumable sweep folder: every sweep (causal tracing over facts, CounterFact evaluation, and
whatever comes next) keeps its results in one of these.

    <out>/config.json        what the sweep is (model fingerprint, settings); a re-run must match it
    <out>/<items>/<id>.json  one file per finished item, written atomically as soon as it is done
    <out>/<name>.json ...    summaries, written atomically at the end

So a killed sweep loses at most the items in flight, re-running the same command skips finished items,
and a folder of another configuration is refused before anything is written (or cleared with `force`).
Nothing touches the disk until `start()`, so a caller can check all its arguments first.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .io import read_json, write_json


def check_item_id(item_id, seen: set, where: str, what: str, error=ValueError) -> None:
    """An item's id names its result file, so it must be an int or a plain name, and unique in its file."""
    if not isinstance(item_id, (int, str)) or isinstance(item_id, bool) or not re.fullmatch(r"[\w.-]+", str(item_id)):
        raise error(f"{what}: {where}: id must be an int or a plain name (letters, digits, _ . -), got {item_id!r}")
    if item_id in seen:
        raise error(f"{what}: {where}: duplicate id {item_id!r}")
    seen.add(item_id)


class SweepFolder:
    """A results folder for `config`, with finished items under `items/` (the name is the caller's)."""

    def __init__(self, out: str | Path, config: dict, *, items: str = "items", force: bool = False,
                 ignore: tuple[str, ...] = ()):
        """Check `out` against `config` (keys in `ignore` may differ, e.g. the list of items of a longer run);
        raise ValueError naming the first differing setting, unless `force` (then `start` clears the old results)."""
        if not isinstance(out, (str, Path)) or not str(out):
            raise ValueError(f"out: expected a folder path, got {out!r}")
        self.path, self.config, self.items_dir, self.force = Path(out), dict(config), items, force
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out: {self.path} is a file; expected a folder for the results")
        self.stale = False
        cfg = self.path / "config.json"
        if cfg.is_file():
            old = read_json(cfg, "out")
            why = next((f"{k} was {old.get(k)!r} there, is {config.get(k)!r} now"
                        for k in sorted(set(old) | set(config)) if k not in ignore and old.get(k) != config.get(k)), None)
            if why and not force:
                raise ValueError(f"out: {self.path} holds results of a different configuration ({why}); "
                                 "use another folder, or force=True (--force) to replace them")
            self.stale = bool(why)

    def start(self) -> "SweepFolder":
        """Create the folder and write config.json (after clearing another configuration's results if forced)."""
        if self.stale:
            shutil.rmtree(self.path / self.items_dir, ignore_errors=True)
            self.stale = False
        (self.path / self.items_dir).mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", self.config, indent=2)
        return self

    def item_path(self, item_id) -> Path:
        return self.path / self.items_dir / f"{item_id}.json"

    def done(self, item_id) -> bool:
        return self.item_path(item_id).is_file()

    def load(self, item_id) -> dict:
        return read_json(self.item_path(item_id), "out")

    def save(self, item_id, record: dict) -> Path:
        """Write one item's result atomically (a crash leaves the old file or the new one, never half)."""
        return write_json(self.item_path(item_id), record)

    def write_json(self, name: str, obj) -> Path:
        """A summary file `<out>/<name>`, written atomically."""
        return write_json(self.path / name, obj, indent=2)
