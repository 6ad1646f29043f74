"""What every verb shares: list arguments, number checks, output paths.

Every verb checks all of its arguments (lists, ranges, files) before any work and before anything is
written; the output path is checked last among them by `output_dir` / `output_file`, so a refused run
leaves nothing behind. `--force` means one thing everywhere: overwrite existing results.
"""
from __future__ import annotations

import math
from pathlib import Path


def parse_list(text: str, kind, arg: str) -> list:
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(kind, f"{kind.__name__}s")
        raise ValueError(f"{arg}: expected comma-separated {what}, got {text!r}") from None
    if not items:
        raise ValueError(f"{arg}: expected at least one value")
    if kind is float and not all(math.isfinite(x) for x in items):
        raise ValueError(f"{arg}: expected a finite number for each item, got {text!r}")
    return items


def check_int(value, arg: str, minimum: int = 1, *, none_ok: bool = False):
    """An int >= minimum (or None where allowed)."""
    if value is None and none_ok:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{arg}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_float(value, arg: str, *, positive: bool = False, none_ok: bool = False):
    """A finite number (> 0 if `positive`), or None where allowed."""
    if value is None and none_ok:
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{arg}: expected a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def input_file(path, arg: str) -> Path:
    """An input file that must exist (shipped data files are found by name; see `data.resolve`)."""
    from ..data import resolve

    p = resolve(path)
    if not p.is_file():
        raise ValueError(f"{arg}: no such file {path}")
    return p


def input_folder(path, arg: str, holds: str) -> Path:
    """An input folder that must exist and hold the file `holds` (shipped folders are found by name, e.g.
    `data/sae/<name>`; see `data.resolve`)."""
    from ..data import resolve

    p = resolve(path)
    if not (p / holds).is_file():
        raise ValueError(f"{arg}: expected a folder with {holds}, got {path}")
    return p


def output_dir(path, *, force: bool, arg: str = "out", writes: list[str] | None = None,
               resumes: str | None = None) -> Path:
    """Check a folder a verb writes its results into; creates nothing.

    An existing file there is an argument error (a folder is expected). `writes`: the files the verb will
    write; where one of them exists, `force` is needed (the message names it). A resumable verb (`trace`,
    `edit`: `resumes="config.json"`; `demo`: `"summary.json"`) continues the earlier run whose file `resumes`
    is there (trace and edit refuse another configuration themselves); any other non-empty folder needs `force`.
    """
    p = Path(path)
    if not str(path):
        raise ValueError(f"{arg}: expected a folder name, got an empty string")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{arg}: {p} is an existing file; expected a folder to write results into")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{arg}: {parent} is a file, so the folder {p} cannot be made")
    if not p.is_dir() or force:
        return p
    if resumes:
        entries = sorted(x.name for x in p.iterdir())
        if entries and resumes not in entries:
            raise ValueError(f"{arg}: {p} is not empty ({entries[0]} exists) and holds no earlier run of this verb; "
                             "pass --force to write into it anyway, or choose another folder")
        return p
    existing = [name for name in (writes or []) if (p / name).exists()] if writes is not None else \
        sorted(x.name for x in p.iterdir())
    if existing:
        raise ValueError(f"{arg}: {p / existing[0]} exists (results of an earlier run); pass --force to overwrite, "
                         "or choose another folder")
    return p


def output_file(path, *, force: bool, arg: str = "out") -> Path:
    """Check a single file a verb writes; creates nothing. An existing file needs `force`; a folder is an error."""
    p = Path(path)
    if not str(path):
        raise ValueError(f"{arg}: expected a file name, got an empty string")
    if p.is_dir():
        raise ValueError(f"{arg}: {p} is a folder; expected a file name")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{arg}: {parent} is a file, so {p} cannot be written")
    if p.exists() and not force:
        raise ValueError(f"{arg}: {p} exists; pass --force to overwrite it, or choose another file")
    return p


def add_force(parser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing results at --out")


def verb(sub, name: str, help: str):
    """A verb's parser with the argument every model-running verb shares (`--model`, the embedded default)."""
    s = sub.add_parser(name, help=help)
    s.add_argument("--model", default="smollm2-135m", help="the embedded default, a Hugging Face directory or hub id, "
                                                            "or tiny-<family>")
    return s


def add_workers(parser) -> None:
    """`--workers N` / `--ray-address ADDR`: run the sweep's items on Ray (optional extra `workbench[ray]`)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="run the items on N Ray workers (a local cluster unless --ray-address); needs workbench[ray]")
    parser.add_argument("--ray-address", default=None,
                        help="join a running Ray cluster ('auto' on a node of it, or host:port) and run the items there")


def check_workers(args) -> None:
    """The --workers / --ray-address values (and that Ray is installed when they are given), before any work."""
    from ..distributed import check_executor_args

    check_executor_args(args.workers, args.ray_address)
