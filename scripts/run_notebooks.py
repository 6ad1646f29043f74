"""Execute notebooks in place (WORKBENCH_QUICK=1, the default model) so that they are committed with their
outputs, small enough for the repository: an output over --max-kb (an interactive view carries 1.3 MB of
circuitsvis or 4.8 MB of plotly.js inline) and a widget (whose state is not saved) keep only a one-line
text note. The matplotlib PNGs, tables and printed numbers stay.

    python scripts/run_notebooks.py notebooks/activation_patching.ipynb [...] [--max-kb 200] [--timeout 600]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from workbench.core.io import atomic_write_text

LIVE_ONLY = ("application/vnd.jupyter.widget-view+json",)


def slim(nb, max_kb: float) -> int:
    """Replace outputs larger than `max_kb` by a text note and drop widget views; returns how many changed."""
    changed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if any(data.pop(mime, None) is not None for mime in LIVE_ONLY):
                out["data"] = {"text/plain": "[ipywidgets view: run the notebook in JupyterLab to use it]"}
                changed += 1
                continue
            size = sum(len(str(v)) for v in data.values()) / 1e3
            if size > max_kb:
                found = re.search(r'data-kind="(\w+)"', str(data.get("text/html", "")))  # set by workbench.views
                kind = found.group(1) if found else "interactive"
                out["data"] = {"text/plain": f"[{kind} view, {size / 1e3:.1f} MB of self-contained HTML: not committed; "
                                             "run the notebook in JupyterLab to explore it]"}
                changed += 1
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--max-kb", type=float, default=200)
    ap.add_argument("--timeout", type=int, default=600, help="per cell, seconds")
    args = ap.parse_args(argv)
    os.environ.setdefault("WORKBENCH_QUICK", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for live sessions
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - t0
        n = slim(nb, args.max_kb)
        atomic_write_text(path, nbformat.writes(nb) + "\n")
        print(f"{path}: ran in {seconds:.0f} s, {n} outputs slimmed, {path.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
