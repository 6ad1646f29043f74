"""CounterFact-style requests and weight edits scored on them: counterfact, edit."""
from __future__ import annotations

import json
from pathlib import Path

from .common import (add_force, add_limit, add_workers, check_float, check_int, check_workers, first, input_file, load,
                     output_dir, output_file, parse_list, verb)
from .tracing import FACTS_HELP


def _cmd_counterfact(args) -> int:
    from ..editing.counterfact import build_requests
    from ..data.facts import known_facts, load_facts
    from ..core.io import atomic_write_text

    facts = first(load_facts(input_file(args.facts, "facts")), args.limit)
    check_int(args.n, "n", none_ok=True)
    check_int(args.neighbours, "neighbours", 0)
    out = output_file(args.out, force=args.force)
    if out.exists() and out.resolve() == input_file(args.facts, "facts").resolve():
        raise ValueError(f"out: {out} is the --facts file being read; write the requests elsewhere")
    known = None if args.all_facts else known_facts(load(args), facts, progress=True)
    reqs = build_requests(facts, known, n=args.n, seed=args.seed, n_neighbours=args.neighbours)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in reqs))
    print(f"wrote {len(reqs)} requests to {out}")
    return 0


def _cmd_edit(args) -> int:
    from ..editing.counterfact import load_requests, run_counterfact
    from ..editing.requests import edit_layers
    from ..editing.rank_one import check_hparams

    requests = load_requests(input_file(args.requests, "requests"))
    hparams = {k: getattr(args, k) for k in ("steps", "lr", "eps") if getattr(args, k) is not None}
    if args.eps is not None and args.method != "ft-l":
        raise ValueError("eps: the L-infinity radius applies to --method ft-l only")
    check_hparams(hparams, ("steps", "lr", "eps"))  # the library's own check, before the model loads
    if args.layers is not None and args.method != "memit":
        raise ValueError(f"layers: --layers is MEMIT's layer list; --method {args.method} takes --layer")
    if args.layer is not None and args.method not in ("rome", "ft-l"):
        raise ValueError(f"layer: --layer applies to --method rome or ft-l, not {args.method}")
    layers = parse_list(args.layers, int, "layers") if args.layers else None
    check_int(args.limit, "limit", none_ok=True)
    check_int(args.value_prefixes, "value_prefixes", 0, none_ok=True)
    check_int(args.stats_tokens, "stats_tokens")
    corpus = "samples" if args.stats_corpus == "samples" else str(input_file(args.stats_corpus, "stats_corpus"))
    check_int(args.gen_tokens, "gen_tokens", 0)
    check_float(args.lam, "lam", positive=True)
    run = check_workers(args)  # the sweep's one Run: --workers, --ray-address, --force
    if args.method == "memit" and (args.workers is not None or args.ray_address is not None):
        raise ValueError("workers: MEMIT makes one edit of all requests together; run it without --workers / --ray-address")
    output_dir(args.out, force=args.force, resumes="config.json")
    model = load(args)
    if args.layer is not None:
        edit_layers(model, args.layer, "layer")
    if layers is not None:
        edit_layers(model, layers, "layers")
    metrics = run_counterfact(model, requests, args.out, args.method, layer=args.layer,
                              layers=layers, limit=args.limit, gen_tokens=args.gen_tokens, hparams=hparams,
                              stats={"n_tokens": args.stats_tokens, "corpus": corpus}, value_prefixes=args.value_prefixes,
                              lam=args.lam, allow_abnormal=args.allow_abnormal, run=run)
    print(json.dumps({k: metrics[k] for k in ("ES", "EM", "PS", "PM", "NS", "NM", "S", "GE", "n")}))
    from ..toolkit.sweep import resume_note

    print(f"{resume_note('scored' if args.method == 'none' else 'edited', 'requests', metrics.get('this_run'))}; wrote {Path(args.out) / 'metrics.json'} and "
          f"per-request results in {Path(args.out) / 'results'}")
    return 0


def register(sub) -> None:
    s = verb(sub, "counterfact", help="build CounterFact-style edit requests from a facts file (known facts)")
    s.add_argument("--facts", default="data/facts.jsonl", help=FACTS_HELP)
    add_limit(s, "facts")
    s.add_argument("--out", required=True, help="JSONL file to write")
    add_force(s)
    s.add_argument("--n", type=int, default=None, help="at most N requests")
    s.add_argument("--seed", type=int, default=0, help="seed of the new targets and the neighbourhood prompts")
    s.add_argument("--neighbours", type=int, default=10, help="neighbourhood prompts (same relation, other subjects) per request")
    s.add_argument("--all-facts", action="store_true", help="use every fact, not only those the model knows")
    s.set_defaults(fn=_cmd_counterfact)
    s = verb(sub, "edit", help="ROME / MEMIT / FT-L edits scored with CounterFact metrics (resumable)")
    s.add_argument("--requests", default="data/counterfact.jsonl",
                   help="requests JSONL written by `workbench counterfact` (default: the shipped data/counterfact.jsonl)")
    s.add_argument("--method", choices=["rome", "memit", "ft-l", "none"], default="rome",
                   help="rome (one rank-one edit a request), memit (all requests in one edit), ft-l (constrained "
                        "fine-tuning) or none (the unedited model's scores)")
    s.add_argument("--out", required=True, help="folder for metrics.json and results/<id>.json (a rerun resumes)")
    s.add_argument("--layer", type=int, default=None, help="ROME / FT-L layer (default: the model's traced choice)")
    s.add_argument("--layers", default=None, help="MEMIT layers, comma-separated (default: 5 around the ROME layer)")
    add_limit(s, "requests")
    s.add_argument("--steps", type=int, default=None, help="optimisation steps (v* / z / fine-tuning)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (v* / z / fine-tuning)")
    s.add_argument("--eps", type=float, default=None, help="FT-L's L-infinity radius on the weights (default 5e-4)")
    s.add_argument("--value-prefixes", type=int, default=None, help="context prefixes used in the v* optimisation (default all)")
    s.add_argument("--stats-tokens", type=int, default=32768, help="corpus tokens for the key statistics C")
    s.add_argument("--stats-corpus", default="samples",
                   help="text for C: 'samples' (the model's own seeded samples) or a UTF-8 text file")
    s.add_argument("--lam", type=float, default=3000.0, help="MEMIT's weight of C (3000: the README's lambda sweep)")
    s.add_argument("--gen-tokens", type=int, default=40, help="tokens generated per prompt for GE (0: skip)")
    s.add_argument("--allow-abnormal", action="store_true", help="apply edits the safety check flags as abnormal")
    s.add_argument("--force", action="store_true",
                   help="replace the results of another configuration, or write into a non-empty --out that holds "
                        "no earlier run (a run of the same configuration resumes without it)")
    add_workers(s)
    s.set_defaults(fn=_cmd_edit)
