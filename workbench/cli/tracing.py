"""Causal tracing over a facts file, and which facts a model knows: trace, known."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.facts import DEFAULT_FACTS
from .common import (add_force, add_workers, check_float, check_int, check_workers, input_file, load, names, output_dir,
                     output_file, verb)
from ..core import checks
from ..patching.tracing import KINDS

FACTS_HELP = ('facts JSONL, one {"id", "prompt", "subject", "object", "relation"} per line '
              "(default: the shipped data/facts.jsonl)")


def _cmd_trace(args) -> int:
    from ..data.facts import load_facts
    from ..patching.tracing import check_kinds, trace_facts

    kinds = check_kinds(args.kinds)
    check_int(args.limit, "limit", none_ok=True)
    check_int(args.samples, "samples")
    check_int(args.window, "window")
    if not check_float(args.noise_scale, "noise_scale") >= 0:
        raise checks.fail('noise_scale', 'a number >= 0', args.noise_scale)
    load_facts(input_file(args.facts, "facts"))
    run = check_workers(args)  # the sweep's one Run: --workers, --ray-address, --force
    output_dir(args.out, force=args.force, resumes="config.json")
    model = load(args)
    summary = trace_facts(model, args.facts, args.out, limit=args.limit, samples=args.samples, noise_scale=args.noise_scale,
                          window=args.window, kinds=kinds,
                          seed=args.seed, trace_unknown=args.trace_unknown, order=args.order,
                          figures=not args.no_figures, run=run)
    from ..toolkit.sweep import resume_note

    print(f"{resume_note('traced', 'facts', summary['this_run'])}, skipped {summary['skipped']}; "
          f"{summary['n_traced']} traced in all; wrote {Path(args.out) / 'summary.json'}")
    if args.html and summary["n_traced"]:  # one self-contained page: average effects and each fact's Figure 1
        from ..patching.tracing import load_traces
        from ..views import save_html, trace_folder_view

        print(f"wrote {save_html(trace_folder_view(load_traces(args.out), summary), Path(args.out) / 'trace.html')}")
    return 0


def _cmd_known(args) -> int:
    from ..data.facts import known_facts, load_facts
    from ..core.io import atomic_write_text

    facts = load_facts(input_file(args.facts, "facts"))[: check_int(args.limit, "limit", none_ok=True)]
    output_file(args.out, force=args.force)
    model = load(args)
    known = known_facts(model, facts, progress=True)
    lines = [json.dumps({**f, "known": k}) for f, k in zip(facts, known)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    by_rel: dict[str, list[int]] = {}
    for f, k in zip(facts, known):
        by_rel.setdefault(f.get("relation", "?"), [0, 0])
        by_rel[f.get("relation", "?")][0] += k
        by_rel[f.get("relation", "?")][1] += 1
    for rel, (k, n) in sorted(by_rel.items()):
        print(f"{rel:<24} {k:>4} / {n}")
    print(f"{'total':<24} {sum(known):>4} / {len(facts)} known; wrote {args.out}")
    return 0


def register(sub) -> None:
    s = verb(sub, "trace", help="ROME-style causal tracing over a facts JSONL file (resumable)")
    s.add_argument("--facts", default=str(DEFAULT_FACTS), help=FACTS_HELP)
    s.add_argument("--out", required=True, help="folder for facts/<id>.json, summary.json and figures (a rerun resumes)")
    s.add_argument("--limit", type=int, default=None, help="trace at most N facts (skipped ones do not count)")
    s.add_argument("--samples", type=int, default=10, help="noised runs per fact (the paper: 10)")
    s.add_argument("--noise-scale", "--noise", dest="noise_scale", type=float, default=3.0,
                   help="noise std as a multiple of the subject embeddings' std (the paper: 3)")
    s.add_argument("--window", type=int, default=10, help="layers restored together for mlp and attn (the paper: 10)")
    s.add_argument("--kinds", default="resid,mlp,attn", help=f"what is restored, comma-separated, from: {names(KINDS)}")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise")
    s.add_argument("--trace-unknown", action="store_true", help="also trace facts the model does not know")
    s.add_argument("--order", choices=["file", "relations"], default="file",
                   help="'relations': take facts round-robin over relations (a limited sweep covers them all)")
    s.add_argument("--no-figures", action="store_true", help="write no PNG figures (results only)")
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no earlier trace (a same-configuration run resumes without it)")
    s.add_argument("--html", action="store_true", help="also write trace.html: interactive Figure 1 per fact and averages")
    add_workers(s)
    s.set_defaults(fn=_cmd_trace)
    s = verb(sub, "known", help="record which facts a model knows (top next token starts the object)")
    s.add_argument("--facts", default=str(DEFAULT_FACTS), help=FACTS_HELP)
    s.add_argument("--out", required=True, help="JSONL file to write")
    s.add_argument("--limit", type=int, default=None, help="check only the first N facts of --facts")
    add_force(s)
    s.set_defaults(fn=_cmd_known)
