"""The default model and the machine: prepare, models, info, demo, bench."""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import sys
from pathlib import Path

from .common import check_int, output_dir, verb, load


def _cmd_prepare(args) -> int:
    from ..core.default_model import EMBEDDED, prepare_model

    for name in args.models or list(EMBEDDED):
        print(f"{name} ready at {prepare_model(name)}")
    return 0


def _cmd_models(args) -> int:
    from ..core.default_model import EMBEDDED, is_prepared, locate_gguf, model_dir
    from ..core.io import cache_dir
    from ..core.tiny import TINY_FAMILIES

    for name, spec in EMBEDDED.items():
        try:  # a chunked model is not assembled just to list it: its installed wheel is enough
            gguf = f"{spec.dist} {importlib.metadata.version(spec.dist)}" if spec.assemble else str(locate_gguf(name))
        except (FileNotFoundError, importlib.metadata.PackageNotFoundError) as e:
            gguf = f"missing ({e})"
        print(f"{name:<16} {spec.title}")
        print(f"{'':<16} source: {spec.source}")
        print(f"{'':<16} licence: {spec.licence}")
        print(f"{'':<16} GGUF: {gguf}")
        print(f"{'':<16} converted: {model_dir(name) if is_prepared(name) else 'not yet (runs on first use, or `workbench prepare`)'}")
    for fam in TINY_FAMILIES:
        print(f"{'tiny-' + fam:<16} tiny random {fam} (seeded, for tests)")
    print(f"{'<path or id>':<16} any local Hugging Face causal LM directory, or a hub id with network access")
    print(f"cache: {cache_dir()}  (set WORKBENCH_CACHE to move it)")
    return 0


def _cmd_info(args) -> int:

    m = load(args)
    d = m.dims
    info = {"name": m.name, "family": m.arch.family, "n_layers": d.n_layers, "d_model": d.d_model,
            "n_heads": d.n_heads, "n_kv_heads": d.n_kv_heads, "d_head": d.d_head, "d_mlp": d.d_mlp,
            "d_vocab": d.d_vocab, "parameters": sum(p.numel() for p in m.hf.parameters()),
            "fingerprint": m.fingerprint, "device": str(m.device)}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    check_int(args.facts, "facts")
    check_int(args.samples, "samples")
    out = output_dir(args.out, force=args.force, resumes="summary.json")
    run_demo(out, model=args.model, facts=args.facts, samples=args.samples)
    return 0


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"  # in a source checkout only


@functools.lru_cache(maxsize=1)
def benchmarks() -> dict[str, str]:
    """{name: the first line of its docstring} of the scripts in benchmarks/ that `workbench bench` runs."""
    import ast

    found = {}
    for f in sorted(BENCHMARKS.glob("*.py")) if BENCHMARKS.is_dir() else []:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            doc = (ast.get_docstring(tree) or "").strip()
            found[f.stem] = doc.splitlines()[0] if doc else ""
    return found


def _cmd_bench(args) -> int:
    import runpy

    script = BENCHMARKS / f"{args.name}.py"
    if args.name not in benchmarks():
        raise ValueError(f"name: no benchmark {args.name!r}; expected one of {', '.join(benchmarks()) or 'none'} "
                         f"(looked in {BENCHMARKS}; benchmarks run from a source checkout)")
    sys.path.insert(0, str(script.parent))  # benchmarks import their shared helpers (common.py)
    runpy.run_path(str(script), run_name="workbench_bench")["main"](args.rest)
    return 0


def register(sub) -> None:
    s = sub.add_parser("prepare", help="convert the embedded models into the cache (once)")
    s.add_argument("models", nargs="*", help="embedded model names (default: all of them)")
    s.set_defaults(fn=_cmd_prepare)
    sub.add_parser("models", help="what can be loaded, what is cached",
                   description="what can be loaded, what is cached").set_defaults(fn=_cmd_models)
    s = verb(sub, "info", help="architecture facts of a model")
    s.set_defaults(fn=_cmd_info)
    s = verb(sub, "demo", help="the main demo on the default model; writes figures")
    s.add_argument("--out", default="out/demo", help="folder for the demo's figures and summary.json")
    s.add_argument("--facts", type=int, default=20, help="known facts to trace (round-robin over relations)")
    s.add_argument("--samples", type=int, default=5, help="noised copies per fact (the paper: 10)")
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no earlier demo (re-running the demo into its own folder needs no flag)")
    s.set_defaults(fn=_cmd_demo)
    listing = "".join(f"\n  {name:<22} {doc}" for name, doc in benchmarks().items()) or \
        "\n  (none here: benchmarks run from a source checkout)"
    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (e.g. `workbench bench patching`)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run a benchmark script of benchmarks/; `workbench bench NAME --help` shows its "
                                   "own flags. The benchmarks:" + listing)
    s.add_argument("name", help="the benchmark (listed above)")
    s.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags (`workbench bench NAME --help`)")
    s.set_defaults(fn=_cmd_bench)
