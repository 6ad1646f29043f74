"""`workbench` command line: models, info, prepare, demo, patch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_prepare(args) -> int:
    from .models import prepare_default_model

    print(f"default model ready at {prepare_default_model()}")
    return 0


def _cmd_models(args) -> int:
    from .models import DEFAULT_MODEL, TINY_FAMILIES, cache_dir, default_model_dir, locate_default_gguf

    try:
        gguf = str(locate_default_gguf())
    except FileNotFoundError as e:
        gguf = f"missing ({e})"
    print(f"{DEFAULT_MODEL:<16} embedded default, SmolLM2-135M-Instruct Q4_1")
    print(f"{'':<16} GGUF file: {gguf}")
    print(f"{'':<16} converted: {default_model_dir() if (default_model_dir() / 'model.safetensors').is_file() else 'not yet (runs on first use)'}")
    for fam in TINY_FAMILIES:
        print(f"{'tiny-' + fam:<16} tiny random {fam} (seeded, for tests)")
    print(f"{'<path or id>':<16} any local Hugging Face causal LM directory, or a hub id with network access")
    print(f"cache: {cache_dir()}  (set WORKBENCH_CACHE to move it)")
    return 0


def _cmd_info(args) -> int:
    from .models import load_model

    m = load_model(args.model)
    d = m.dims
    info = {"name": m.name, "family": m.arch.family, "n_layers": d.n_layers, "d_model": d.d_model,
            "n_heads": d.n_heads, "n_kv_heads": d.n_kv_heads, "d_head": d.d_head, "d_mlp": d.d_mlp,
            "d_vocab": d.d_vocab, "parameters": sum(p.numel() for p in m.hf.parameters()),
            "fingerprint": m.fingerprint, "device": str(m.device)}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), model=args.model)
    return 0


def _cmd_patch(args) -> int:
    from .models import load_model
    from .patching import activation_patching
    from .results import atomic_write_text

    model = load_model(args.model)
    res = activation_patching(model, args.clean, args.corrupt, args.answer, args.foil, components=args.sites,
                              method=args.method, metric=args.metric, direction=args.direction,
                              memory_mb=args.memory_mb, progress=True)
    out = Path(args.out)
    first = next(iter(res.values()))
    result = {
        "model": model.name, "method": args.method, "metric": args.metric, "direction": args.direction,
        "clean": args.clean, "corrupted": args.corrupt, "answer": args.answer, "foil": args.foil,
        "tokens": first.meta["tokens"], "layers": first.coords["layer"],
        "clean_metric": first.meta["clean_metric"], "corrupted_metric": first.meta["corrupted_metric"],
        "values": {site: arr.values.tolist() for site, arr in res.items()},
    }
    for site, arr in res.items():
        arr.plot(out / f"{site}.png", title=f"{arr.name}: {args.metric}")
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    print(f"wrote {out / 'result.json'} and {', '.join(f'{s}.png' for s in res)}")
    return 0


def _cmd_bench(args) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"{args.name}.py"
    if not script.is_file():
        raise ValueError(f"name: no benchmark {args.name!r} (looked for {script}; benchmarks run from a source checkout)")
    sys.path.insert(0, str(script.parent))  # benchmarks import their shared helpers (common.py)
    runpy.run_path(str(script), run_name="workbench_bench")["main"](args.rest)
    return 0


def _cmd_trace(args) -> int:
    from .models import load_model
    from .tracing import trace_facts

    model = load_model(args.model)
    summary = trace_facts(model, args.facts, args.out, limit=args.limit, samples=args.samples, noise=args.noise,
                          window=args.window, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
                          seed=args.seed, trace_unknown=args.trace_unknown, figures=not args.no_figures)
    print(f"traced {summary['n_traced']} facts, skipped {summary['skipped']}; wrote {Path(args.out) / 'summary.json'}")
    return 0


def _cmd_known(args) -> int:
    from .facts import known_facts, load_facts
    from .models import load_model
    from .results import atomic_write_text

    model = load_model(args.model)
    facts = load_facts(args.facts)
    known = known_facts(model, facts)
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


def _cmd_counterfact(args) -> int:
    from .editing.counterfact import build_requests
    from .facts import known_facts, load_facts
    from .models import load_model
    from .results import atomic_write_text

    facts = load_facts(args.facts)
    known = None if args.all_facts else known_facts(load_model(args.model), facts)
    reqs = build_requests(facts, known, n=args.n, seed=args.seed, n_neighbours=args.neighbours)
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in reqs))
    print(f"wrote {len(reqs)} requests to {args.out}")
    return 0


def _cmd_edit(args) -> int:
    from .editing.counterfact import load_requests, run_counterfact
    from .models import load_model

    model = load_model(args.model)
    hparams = {}
    if args.steps is not None:
        hparams["steps"] = args.steps
    if args.lr is not None:
        hparams["lr"] = args.lr
    if args.eps is not None:
        if args.method != "ft-l":
            raise ValueError("eps: the L-infinity radius applies to --method ft-l only")
        hparams["eps"] = args.eps
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    metrics = run_counterfact(model, load_requests(args.requests), args.out, args.method, layer=args.layer,
                              layers=layers, limit=args.limit, gen_tokens=args.gen_tokens, hparams=hparams,
                              stats={"n_tokens": args.stats_tokens}, value_prefixes=args.value_prefixes,
                              lam=args.lam, force=args.force, progress=True)
    print(json.dumps({k: metrics[k] for k in ("ES", "EM", "PS", "PM", "NS", "NM", "S", "GE", "n")}))
    print(f"wrote {Path(args.out) / 'metrics.json'} and per-request results in {Path(args.out) / 'results'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workbench", description="mechanistic-interpretability workbench")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the embedded default model into the cache (once)").set_defaults(fn=_cmd_prepare)
    sub.add_parser("models", help="what can be loaded, what is cached").set_defaults(fn=_cmd_models)
    s = sub.add_parser("info", help="architecture facts of a model")
    s.add_argument("--model", default="smollm2-135m")
    s.set_defaults(fn=_cmd_info)
    s = sub.add_parser("demo", help="the main demo on the default model; writes figures")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--out", default="out/demo")
    s.set_defaults(fn=_cmd_demo)
    s = sub.add_parser("patch", help="activation or attribution patching of one prompt pair; writes result.json and PNGs")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--clean", required=True)
    s.add_argument("--corrupt", required=True)
    s.add_argument("--answer", required=True, help="the clean run's answer, a single token (mind the leading space)")
    s.add_argument("--foil", required=True, help="the corrupted run's answer, a single token")
    s.add_argument("--sites", default="resid_pre,attn_out,mlp_out", help="components, comma-separated")
    s.add_argument("--method", choices=["exact", "attribution"], default="exact")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff")
    s.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    s.add_argument("--memory-mb", type=float, default=1024)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_patch)
    s = sub.add_parser("trace", help="ROME-style causal tracing over a facts JSONL file (resumable)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--facts", default="data/facts.jsonl")
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, default=None, help="trace at most N facts (skipped ones do not count)")
    s.add_argument("--samples", type=int, default=10)
    s.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the subject embeddings' std")
    s.add_argument("--window", type=int, default=10)
    s.add_argument("--kinds", default="resid,mlp,attn")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trace-unknown", action="store_true", help="also trace facts the model does not know")
    s.add_argument("--no-figures", action="store_true")
    s.set_defaults(fn=_cmd_trace)
    s = sub.add_parser("known", help="record which facts a model knows (top next token starts the object)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--facts", default="data/facts.jsonl")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_known)
    s = sub.add_parser("counterfact", help="build CounterFact-style edit requests from a facts file (known facts)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--facts", default="data/facts.jsonl")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=None, help="at most N requests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--neighbours", type=int, default=10)
    s.add_argument("--all-facts", action="store_true", help="use every fact, not only those the model knows")
    s.set_defaults(fn=_cmd_counterfact)
    s = sub.add_parser("edit", help="ROME / MEMIT / FT-L edits scored with CounterFact metrics (resumable)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--requests", default="data/counterfact.jsonl")
    s.add_argument("--method", choices=["rome", "memit", "ft-l", "none"], default="rome")
    s.add_argument("--out", required=True)
    s.add_argument("--layer", type=int, default=None, help="ROME / FT-L layer (default: the model's traced choice)")
    s.add_argument("--layers", default=None, help="MEMIT layers, comma-separated (default: 5 around the ROME layer)")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--steps", type=int, default=None, help="optimisation steps (v* / z / fine-tuning)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (v* / z / fine-tuning)")
    s.add_argument("--eps", type=float, default=None, help="FT-L's L-infinity radius on the weights (default 5e-4)")
    s.add_argument("--value-prefixes", type=int, default=None, help="context prefixes used in the v* optimisation (default all)")
    s.add_argument("--stats-tokens", type=int, default=32768, help="corpus tokens for the key statistics C")
    s.add_argument("--lam", type=float, default=15000.0, help="MEMIT's weight of C")
    s.add_argument("--gen-tokens", type=int, default=40, help="tokens generated per prompt for GE (0: skip)")
    s.add_argument("--force", action="store_true", help="apply edits the safety check flags as abnormal")
    s.set_defaults(fn=_cmd_edit)
    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (e.g. `workbench bench patching`)")
    s.add_argument("name")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=_cmd_bench)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
