"""The one resumable sweep folder and the one output-folder rule: every sweep (causal tracing over facts,
CounterFact evaluation, counterfactual strings, SAE and tuned-lens training, ...) keeps its results in one of
these, and every CLI verb checks its `--out` with the same `check_out_dir` / `check_out_file`.

    <out>/config.json        what the sweep is (model fingerprint, settings, hashes of its input files'
                             CONTENT); a re-run must match it
    <out>/<items>/<id>.json  one file per finished item, written atomically as soon as it is done
    <out>/<name>.json ...    summaries, written atomically at the end
    <out>/.lock              while a run holds the folder: {"pid", "host", "started"}; a second run is refused

So a killed sweep loses at most the items in flight, re-running the same command skips finished items,
a folder of another configuration is refused before anything is written (or cleared with `force`), and two
runs never write one folder at once (the second is refused naming the first; the lock of a run that died
without releasing it, e.g. SIGKILL, is taken over with a message). Nothing touches the disk until
`start()`, so a caller can check all its arguments first.

`Sweep(out, config, force=...).start()` then `.run(items, fn, model, executor)` runs the (id, payload)
items not yet done on any executor (`InProcess`, `RayExecutor`) and writes each result as it arrives.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from ..core.io import append_jsonl, read_json, write_json
from ..core import checks

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed `workbench` package: never an output


def check_item_id(item_id, seen: set, where: str, what: str, error=ValueError) -> None:
    """An item's id names its result file, so it must be an int or a plain name, and unique in its file."""
    if not isinstance(item_id, (int, str)) or isinstance(item_id, bool) or not re.fullmatch(r"[\w.-]+", str(item_id)):
        raise error(f"{what}: {where}: id must be an int or a plain name (letters, digits, _ . -), got {item_id!r}")
    if item_id in seen:
        raise error(f"{what}: {where}: duplicate id {item_id!r}")
    seen.add(item_id)


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (16 hex digits): sweeps key their input files by content, not by name, so
    `A/facts.jsonl` and `B/facts.jsonl` holding other facts are two configurations."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def content_digest(obj) -> str:
    """sha256 (16 hex digits) of an object's content: tensors by their values, models by their fingerprint,
    dataclasses, dicts, lists and tuples by their parts, anything else by its repr. Sweeps key their inputs by it
    (an intervention, a task, subspaces), so a folder of other inputs is refused."""
    return _digest(obj).hexdigest()[:16]


def _digest(obj, h=None):
    import dataclasses

    import torch

    from ..core.model import Model

    h = h or hashlib.sha256()
    if isinstance(obj, Model):
        h.update(obj.fingerprint.encode())
    elif isinstance(obj, torch.Tensor):
        h.update(str(tuple(obj.shape)).encode() + obj.detach().float().cpu().contiguous().numpy().tobytes())
    elif dataclasses.is_dataclass(obj):
        h.update(type(obj).__name__.encode())
        for f in dataclasses.fields(obj):
            if not f.name.startswith("_") and f.name != "meta":
                h.update(f.name.encode())
                _digest(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _digest(x, h)
    else:
        h.update(repr(obj).encode())
    return h


# -- the output-folder rule (every verb, every sweep) ---------------------------------------------------

def check_not_in_package(path: str | Path, arg: str = "out") -> Path:
    """Refuse a path inside the installed workbench package (its shipped data, SAEs, code)."""
    p = Path(path)
    resolved = p.expanduser().resolve()
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise ValueError(f"{arg}: {p} is inside the installed workbench package ({PACKAGE_DIR}); "
                         "results never go there (they would overwrite shipped files): choose another folder")
    return p


def _check_parents(p: Path, arg: str, what: str) -> None:
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{arg}: {parent} is a file, so {what} cannot be made")


def check_out_dir(path, *, force: bool, arg: str = "out", writes: list[str] | None = None,
                  resumes: str | None = None) -> Path:
    """Check a folder a verb or sweep writes its results into; creates nothing.

    Refused: an empty name, an existing file (a folder is expected), a path inside the installed package.
    `writes`: the files the verb will write; where one of them exists, `force` is needed (the message names
    it). A resumable verb (`trace`, `edit`, sweeps: `resumes="config.json"`; `demo`: `"summary.json"`)
    continues the earlier run whose file `resumes` is there (the sweep itself refuses another configuration);
    any other non-empty folder needs `force`. With `writes=None` and no `resumes`, any non-empty folder needs it.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise checks.fail(arg, 'a folder name', path)
    p = check_not_in_package(path, arg)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{arg}: {p} is a file; expected a folder to write results into (an existing file is "
                         "never replaced by a folder)")
    _check_parents(p, arg, f"the folder {p}")
    if not p.is_dir():
        return p
    holder = _holder(p / SweepFolder.LOCK)
    if holder is not None and _alive(holder):  # refused before any model loads, --force or not
        raise ValueError(_in_use(p, holder))
    if force:
        return p
    if resumes:
        entries = sorted(x.name for x in p.iterdir() if x.name != FolderLock.NAME)  # a dead run's lock is no result
        if entries and resumes not in entries:
            raise ValueError(f"{arg}: {p} is not empty ({entries[0]} exists) and holds no earlier run of this verb; "
                             "pass --force to write into it anyway, or choose another folder")
        return p
    existing = [name for name in (writes or []) if (p / name).exists()] if writes is not None else \
        sorted(x.name for x in p.iterdir() if x.name != FolderLock.NAME)
    if existing:
        raise ValueError(f"{arg}: {p / existing[0]} exists (results of an earlier run); pass --force to overwrite, "
                         "or choose another folder")
    return p


def check_out_file(path, *, force: bool, arg: str = "out") -> Path:
    """Check a single file a verb writes; creates nothing. An existing file needs `force`; a folder, an empty
    name and a path inside the installed package are errors."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise checks.fail(arg, 'a file name', path)
    p = check_not_in_package(path, arg)
    if p.is_dir():
        raise ValueError(f"{arg}: {p} is a folder; expected a file name")
    _check_parents(p, arg, str(p))
    if p.exists() and not force:
        raise ValueError(f"{arg}: {p} exists; pass --force to overwrite it, or choose another file")
    return p


# -- the lock: one writer per folder ------------------------------------------------------------------

def _holder(lock: Path) -> dict | None:
    """Who holds a lock file ({"pid", "host", "started"}; pid None while it is being written), or None."""
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        try:
            return {"pid": None, "host": "?", "started": lock.stat().st_mtime}
        except FileNotFoundError:
            return None


def _in_use(path: Path, h: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started") or 0))
    return (f"out: {path} is in use by another run (pid {h.get('pid')} on host {h.get('host')}, since {since}); "
            f"wait for it to finish or use another folder (if that run is gone, delete {path / SweepFolder.LOCK})")


def _alive(holder: dict) -> bool:
    """Whether the run named in a lock file may still be running (another host's run cannot be checked; a lock
    being written has no pid yet for a moment, and an unreadable one older than 10 s is stale)."""
    if not isinstance(holder.get("pid"), int):
        return time.time() - (holder.get("started") or 0) < 10
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """One writer per folder: `<folder>/.lock` made exclusively (O_EXCL) with {"pid", "host", "started"}. A live
    holder refuses a second run, naming it; the lock of a run that is gone (its pid dead on this host) is taken
    over with a message on stderr. Used by every sweep folder and by resumable training runs (tuned lens)."""

    NAME = ".lock"

    def __init__(self, folder: str | Path):
        self.folder, self.held = Path(folder), False

    @property
    def path(self) -> Path:
        return self.folder / self.NAME

    def holder(self) -> dict | None:
        return _holder(self.path)

    def acquire(self) -> "FolderLock":
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                h = self.holder()
                if h is None:
                    continue  # released meanwhile
                if _alive(h):
                    raise ValueError(_in_use(self.folder, h))
                print(f"out: taking over {self.path} from a run that is gone (pid {h.get('pid')} on {h.get('host')})",
                      file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise ValueError(f"out: could not take the lock {self.path} (another run keeps taking it)")

    def release(self) -> None:
        if self.held:
            h = self.holder()
            if h is not None and h.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class SweepFolder:
    """A results folder for `config`, with finished items under `items/` (the name is the caller's)."""

    LOCK = FolderLock.NAME

    def __init__(self, out: str | Path, config: dict, *, items: str = "items", force: bool = False,
                 ignore: tuple[str, ...] = ()):
        """Check `out` against `config` (keys in `ignore` may differ, e.g. the list of items of a longer run);
        raise ValueError naming the first differing setting, unless `force` (then `start` clears the old results)."""
        if not isinstance(out, (str, Path)) or not str(out):
            raise checks.fail('out', 'a folder path', out)
        check_out_dir(out, force=True)  # a folder, not a file, not inside the package
        self.path, self.config, self.items_dir, self.force, self.ignore = Path(out), dict(config), items, force, ignore
        self.lock = FolderLock(self.path)
        self.stale = self._compare()
        self.counts = {"now": 0, "before": 0}  # items run by this object's `run`, and found done (`resume_note`)

    def _compare(self) -> bool:
        """True if the folder holds another configuration's results (refused unless `force`)."""
        cfg = self.path / "config.json"
        if not cfg.is_file():
            return False
        try:
            old = read_json(cfg, "out")
        except ValueError:
            old = {"config.json": "unreadable"}
        why = next((f"{k} was {old.get(k)!r} there, is {self.config.get(k)!r} now"
                    for k in sorted(set(old) | set(self.config))
                    if k not in self.ignore and old.get(k) != self.config.get(k)), None)
        if why and not self.force:
            raise ValueError(f"out: {self.path} holds results of a different configuration ({why}); "
                             "use another folder, or force=True (--force) to replace them")
        return bool(why)

    # the lock ------------------------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.lock.held

    def holder(self) -> dict | None:
        """Who holds the folder's lock ({"pid", "host", "started"}), or None."""
        return self.lock.holder()

    def release(self) -> None:
        """Give the folder's lock back (idempotent; a run that dies without it leaves a stale lock, taken over later)."""
        self.lock.release()

    def __enter__(self) -> "SweepFolder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.release()

    def start(self) -> "SweepFolder":
        """Take the folder's lock, then create it and write config.json (after clearing another
        configuration's results if forced). The configuration is compared again under the lock, so a run
        that wrote the folder after this one's check is seen."""
        if self.locked:
            return self
        self.lock.acquire()
        try:
            self.stale = self._compare()
            if self.stale:
                shutil.rmtree(self.path / self.items_dir, ignore_errors=True)
                for p in self.path.glob("*.json"):  # the old run's summaries describe the old configuration
                    p.unlink()
                self.stale = False
            (self.path / self.items_dir).mkdir(parents=True, exist_ok=True)
            write_json(self.path / "config.json", self.config, indent=2)
        except BaseException:
            self.release()
            raise
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

    def run(self, items: Iterable[tuple], fn: Callable, model, executor, *, total: int | None = None,
            done: int = 0, progress: bool = True, desc: str = "items", unit: str = "item",
            on_record: Callable | None = None, parts: Callable | None = None) -> None:
        """Run the (id, payload) items not yet done on `executor` (`fn(model, payload) -> record`, a module-level
        function) and write each result as it arrives, with where and how long it ran under "run".

        One tqdm bar over the sweep (`total` items, `done` of them finished before), with the throughput of all
        workers together. The driver is the only writer, and skips a result for an item already written, so
        every item is written once (also when Ray re-runs the item of a worker that died). `on_record(id,
        record)` runs after each write (figures). Records are the same on every executor (seeds belong to items).

        `parts(payload) -> [id, ...]`: an item that makes several results together (ROME's value optimisation of
        a chunk of requests): its record is {"parts": [record per id]}, each written to its own file; the item
        is done when all of them are (a run killed between two writes runs the item again, whole)."""
        from tqdm.auto import tqdm

        items = list(items)

        def finished(item_id, payload) -> bool:
            return all(map(self.done, parts(payload))) if parts is not None else self.done(item_id)

        todo = [(i, p) for i, p in items if not finished(i, p)]
        payloads = dict(todo) if parts is not None else {}
        total = (done + len(todo)) if total is None else total
        results = (lambda p: len(parts(p))) if parts is not None else (lambda p: 1)  # counted in results
        waiting = {i for i, _ in todo}
        self.counts = {"now": 0, "before": done + sum(results(p) for i, p in items if i not in waiting)}
        bar = tqdm(total=total, initial=done, disable=not progress, desc=desc, unit=unit)
        bar.set_postfix(workers=getattr(executor, "workers", 1))
        try:
            for item_id, record, info in executor.map(model, fn, todo):
                if finished(item_id, payloads.get(item_id)):
                    continue
                ids, records = ([item_id], [record]) if parts is None else (parts(payloads[item_id]), record["parts"])
                for part_id, part in zip(ids, records, strict=True):
                    self.save(part_id, {**part, "run": info})
                    append_jsonl(self.path / "runs.jsonl", {"id": part_id, **info})
                    if on_record is not None:
                        on_record(part_id, part)
                self.counts["now"] += len(ids)
                bar.update(1)
        finally:
            bar.close()


def resume_note(did: str, noun: str, counts: dict | None) -> str:
    """What a sweep did, counting this run and earlier ones apart: "traced 0 facts now, 2 before (resumed)", or
    "traced 2 facts" when nothing was done before. `counts`: {"now", "before"} (`SweepFolder.counts`)."""
    counts = counts or {"now": 0, "before": 0}
    if not counts["before"]:
        return f"{did} {counts['now']} {noun}"
    return f"{did} {counts['now']} {noun} now, {counts['before']} before (resumed)"


Sweep = SweepFolder  # the short name: `Sweep(out, config, force=...).start().run(items, fn, model, executor)`
