"""What every verb shares: list arguments, number checks, output paths.

Every verb checks all of its arguments (lists, ranges, files) before any work and before anything is
written; the output path is checked last among them by `output_dir` / `output_file`, so a refused run
leaves nothing behind. `--force` means one thing everywhere: overwrite existing results.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..core import checks


def parse_list(text: str, kind, arg: str) -> list:
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(kind, f"{kind.__name__}s")
        raise checks.fail(arg, f'comma-separated {what}', text) from None
    if not items:
        raise checks.fail(arg, "at least one value", text)
    if kind is float and not all(math.isfinite(x) for x in items):
        raise checks.fail(arg, 'a finite number for each item', text)
    return items


def check_int(value, arg: str, minimum: int = 1, *, none_ok: bool = False):
    """An int >= minimum (or None where allowed): the library's own check (`core.checks.integer`)."""
    return checks.integer(value, arg, minimum, none_ok=none_ok)


def check_float(value, arg: str, *, positive: bool = False, none_ok: bool = False):
    """A finite number (> 0 if `positive`), or None where allowed: `core.checks.number`."""
    return checks.number(value, arg, positive=positive, none_ok=none_ok)


def distinct_answer_foil(answers, foils) -> None:
    """answer == foil gives a logit difference of 0 whatever is done: refused before any model loads."""
    if not foils:
        return
    pairs = list(zip(answers, foils)) if len(answers) == len(foils) else \
        [(a, f) for a in answers for f in foils] if 1 in (len(answers), len(foils)) else []
    for i, (a, f) in enumerate(pairs):
        if a == f:
            raise ValueError(f"foil: {'pair ' + str(i) + ': ' if len(pairs) > 1 else ''}answer and foil are the same "
                             f"({a!r}); degenerate comparison (the logit difference is 0 whatever is done)")


def first(items: list, limit, arg: str = "limit") -> list:
    """The first `limit` items (None: all); `limit` an int >= 1 (a slice by -1 would silently drop the last)."""
    return list(items) if check_int(limit, arg, none_ok=True) is None else list(items)[:limit]


def input_file(path, arg: str) -> Path:
    """An input file that must exist (shipped data files are found by name; see `data.resolve`)."""
    from ..data import resolve

    p = resolve(path)
    if not p.is_file():
        raise ValueError(f"{arg}: no such file {path}")
    return p


def read_texts(path, arg: str = "texts") -> list[str]:
    """The texts of an input file: its lines ('#' lines are comments), or the `prompt` / `text` field of each
    record of a .jsonl file (the held-out texts shipped with the default SAE are such records)."""
    from ..toolkit.prompts import read_prompts

    return read_prompts(input_file(path, arg), arg)


def input_folder(path, arg: str, holds: str) -> Path:
    """An input folder that must exist and hold the file `holds` (shipped folders are found by name, e.g.
    `data/sae/<name>`; see `data.resolve`)."""
    from ..data import resolve

    p = resolve(path)
    if not (p / holds).is_file():
        raise checks.fail(arg, f'a folder with {holds}', path)
    return p


def output_dir(path, *, force: bool, arg: str = "out", writes: list[str] | None = None,
               resumes: str | None = None) -> Path:
    """The one output-folder rule (`core.sweep.check_out_dir`, the same code the sweep folders use): a folder,
    not a file, not inside the installed package; existing results (`writes`, or any entry) need --force; a
    resumable verb (`resumes="config.json"`) continues its own earlier run. Creates nothing."""
    from ..toolkit.sweep import check_out_dir

    return check_out_dir(path, force=force, arg=arg, writes=writes, resumes=resumes)


def output_file(path, *, force: bool, arg: str = "out") -> Path:
    """The one rule for a single output file (`core.sweep.check_out_file`): an existing file needs --force."""
    from ..toolkit.sweep import check_out_file

    return check_out_file(path, force=force, arg=arg)


def add_force(parser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing results at --out")


MODEL_HELP = "the embedded default, a Hugging Face directory or hub id, or tiny-<family>"


def add_model(parser, flag: str = "--model", default: str | None = "smollm2-135m", help: str = MODEL_HELP) -> None:
    """`--model` (or another model flag / positional) and, once per parser, `--no-validate` (the library's
    `load_model(validate=False)`, which its validation error names)."""
    if flag.startswith("--"):
        parser.add_argument(flag, default=default, help=help)
    else:
        parser.add_argument(flag, help=help)
    if not any("--no-validate" in a.option_strings for a in parser._actions):
        parser.add_argument("--no-validate", action="store_true",
                            help="skip the architecture checks when a model loads (load_model(validate=False)); "
                                 "for a model the architecture table does not yet describe")


def load(args, attr: str = "model"):
    """Load the model named by `args.<attr>`, validated unless --no-validate."""
    from ..core.loading import load_model

    return load_model(getattr(args, attr), validate=not getattr(args, "no_validate", False))


def names(choices) -> str:
    """Valid names for a help text or an error: 'a, b, c'."""
    return ", ".join(sorted(choices))


def add_allow_other_model(parser, what: str = "the SAE") -> None:
    """--allow-other-model: the library's `allow_other_model=True` (use a file made for another model's fingerprint)."""
    parser.add_argument("--allow-other-model", action="store_true",
                        help=f"use {what} even if made for another model (or another fingerprint of this one); "
                             "the library's allow_other_model=True")


def add_limit(parser, what: str = "rows") -> None:
    """`--limit N`: use the first N items of the dataset a verb reads."""
    parser.add_argument("--limit", type=int, default=None, help=f"use the first N {what} of the file (default: all)")


def verb(sub, name: str, help: str):
    """A verb's parser with the arguments every model-running verb shares (`--model`, the embedded default, and
    `--no-validate`)."""
    s = sub.add_parser(name, help=help, description=help)
    add_model(s)
    return s


def add_workers(parser) -> None:
    """`--workers N` / `--ray-address ADDR`: run the sweep's items on Ray (optional extra `workbench[ray]`)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="run the items on N Ray workers (a local cluster unless --ray-address); needs workbench[ray]")
    parser.add_argument("--ray-address", default=None,
                        help="join a running Ray cluster ('auto' on a node of it, or host:port) and run the items there")


def check_workers(args):
    """The --workers / --ray-address / --force values as the sweep's one `Run` (checked, and Ray importable
    when asked for), before any work."""
    from ..toolkit.executors import Run

    return Run(workers=args.workers, ray_address=args.ray_address, force=bool(getattr(args, "force", False))).check()
