"""The `workbench` command: one module per capability, each registering its verbs (`register(sub)`)."""
from __future__ import annotations

import argparse
import sys
import warnings

from . import analysis, caft, counterfactual, editing, models, patching, steering, tracing
from . import sae
from . import circuits, diffing

__all__ = ["main", "parser", "VERB_MODULES"]

VERB_MODULES = [models, patching, tracing, editing, steering, caft, analysis, counterfactual, sae, circuits, diffing]


def parser() -> argparse.ArgumentParser:
    """The whole command line: every verb's parser (the parity tests walk it)."""
    p = argparse.ArgumentParser(prog="workbench", description="mechanistic-interpretability workbench "
                                "(`workbench help VERB` or `workbench VERB --help` for a verb's flags)")
    sub = p.add_subparsers(dest="command", required=True, metavar="VERB")
    h = sub.add_parser("help", help="the flags of a verb: `workbench help patch` is `workbench patch --help`")
    h.add_argument("verb", nargs="*", help="the verb (and sub-verb, e.g. `sae train`); none: the list of verbs")
    for module in VERB_MODULES:
        module.register(sub)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The package's own warnings as one readable line ("workbench: warning: ..."); others keep Python's format."""
    if category.__module__.split(".")[0] == "workbench" or _from_package(filename):
        return f"workbench: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


def _from_package(filename: str) -> bool:
    from pathlib import Path

    try:
        return Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1])
    except (OSError, ValueError):
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` while a command runs: `_one_line_warning` written to stderr."""
    try:
        (file or sys.stderr).write(_one_line_warning(message, category, filename, lineno, line))
    except OSError:  # stderr gone (a closed pipe): a warning is not worth a crash
        pass


_python_format = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"]:  # `workbench help VERB [SUB]` == `workbench VERB [SUB] --help`
        p.parse_args(argv[1:] + ["--help"])
    args = p.parse_args(argv)
    before = warnings.showwarning
    warnings.showwarning = _show_warning  # set by the command only: importing workbench changes nothing
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = before


if __name__ == "__main__":
    sys.exit(main())
