"""The `workbench` command: one module per capability, each registering its verbs (`register(sub)`)."""
from __future__ import annotations

import argparse
import sys

from . import analysis, caft, counterfactual, editing, models, patching, steering, tracing
from . import sae
from . import circuits, diffing

__all__ = ["main", "VERB_MODULES"]

VERB_MODULES = [models, patching, tracing, editing, steering, caft, analysis, counterfactual, sae, circuits, diffing]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workbench", description="mechanistic-interpretability workbench")
    sub = p.add_subparsers(dest="command", required=True)
    for module in VERB_MODULES:
        module.register(sub)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
