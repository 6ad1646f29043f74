"""`workbench` command line: models, info, prepare, demo, patch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.facts import DEFAULT_FACTS


def _cmd_prepare(args) -> int:
    from ..core.loading import prepare_default_model

    print(f"default model ready at {prepare_default_model()}")
    return 0


def _cmd_models(args) -> int:
    from ..core.loading import DEFAULT_MODEL, cache_dir, default_model_dir, locate_default_gguf
    from ..core.tiny import TINY_FAMILIES

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
    from ..core.loading import load_model

    m = load_model(args.model)
    d = m.dims
    info = {"name": m.name, "family": m.arch.family, "n_layers": d.n_layers, "d_model": d.d_model,
            "n_heads": d.n_heads, "n_kv_heads": d.n_kv_heads, "d_head": d.d_head, "d_mlp": d.d_mlp,
            "d_vocab": d.d_vocab, "parameters": sum(p.numel() for p in m.hf.parameters()),
            "fingerprint": m.fingerprint, "device": str(m.device)}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), model=args.model, facts=args.facts, samples=args.samples)
    return 0


def _cmd_patch(args) -> int:
    from ..core.loading import load_model
    from ..patching import activation_patching
    from ..core.io import atomic_write_text

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
    from ..core.loading import load_model
    from ..tracing import trace_facts

    model = load_model(args.model)
    summary = trace_facts(model, args.facts, args.out, limit=args.limit, samples=args.samples, noise=args.noise,
                          window=args.window, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
                          seed=args.seed, trace_unknown=args.trace_unknown, order=args.order,
                          figures=not args.no_figures)
    print(f"traced {summary['n_traced']} facts, skipped {summary['skipped']}; wrote {Path(args.out) / 'summary.json'}")
    return 0


def _cmd_known(args) -> int:
    from ..data.facts import known_facts, load_facts
    from ..core.loading import load_model
    from ..core.io import atomic_write_text

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


def _parse_list(text: str, kind, arg: str) -> list:
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{arg}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not items:
        raise ValueError(f"{arg}: expected at least one value")
    return items


def _cmd_steer(args) -> int:
    from ..steering.behaviour import log_odds_classifier, word_share
    from ..core.loading import load_model
    from ..steering import SENTIMENT_TEMPLATE, build_steering_vector, load_lines, load_pairs, sweep

    layers = _parse_list(args.layers, int, "layers")
    multipliers = _parse_list(args.multipliers, float, "multipliers")
    read_at = args.read_at if args.read_at == "mean" else int(args.read_at)
    positions = args.positions if args.positions in ("all", "generated") else int(args.positions)
    pos, neg = load_pairs(args.pairs)
    prompts = load_lines(args.prompts, "prompts")[: args.limit]
    model = load_model(args.model)
    if args.behaviour == "sentiment":
        behaviour, threshold, name = log_odds_classifier(model, SENTIMENT_TEMPLATE, " positive", " negative"), 0.0, \
            "log-odds positive vs negative (unsteered model as classifier)"
    elif args.behaviour.startswith("words:"):
        path = args.behaviour.removeprefix("words:")
        behaviour, threshold, name = word_share(path), 0.3, f"share of words in {Path(path).name}"
    else:
        raise ValueError(f"behaviour: expected 'sentiment' or 'words:FILE', got {args.behaviour!r}")
    if args.threshold is not None:
        threshold = args.threshold
    vec = build_steering_vector(model, pos, neg, layers=layers, method=args.method, read_at=read_at,
                                component=args.component, direction=args.direction)
    res = sweep(model, vec, prompts, multipliers=multipliers, behaviour=behaviour, threshold=threshold,
                behaviour_name=name, cost=args.cost, positions=positions,
                neutral_texts=load_lines(args.neutral, "neutral") if args.cost == "kl" else None,
                max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
                batch_size=args.batch_size, progress=True)
    res.meta.update(pairs=str(args.pairs), prompts=str(args.prompts), title=f"steering: {Path(args.pairs).stem}")
    out = Path(args.out)
    vec.save(out / "vector.safetensors")
    res.plot(out / "sweep.png")
    res.save(out / "sweep.json")
    print(res.to_dataframe().to_string(index=False))
    print(f"unsteered: {res.baseline}")
    print(f"best (cost <= 2x unsteered): {res.best()}")
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}, {out / 'vector.safetensors'}")
    return 0


def _cmd_caft(args) -> int:
    from .. import caft
    from ..core.loading import load_model
    from ..core.io import atomic_write_text

    model = load_model(args.model)
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else None
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"layers/seeds: expected comma-separated integers, got {args.layers!r} / {args.seeds!r}") from None
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    task = caft.load_task(args.task)
    subs = caft.load_directions(args.directions, model, layers)
    cfg = caft.FinetuneConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                              lora_rank=args.lora_rank)
    res = caft.compare(model, task, subs, seeds=seeds, fill=args.fill, component=args.component, config=cfg,
                       progress=True)
    res.update(model=model.name, task=str(args.task), directions=str(args.directions))
    out = Path(args.out)
    caft.plot_comparison(res, out / "caft.png")
    atomic_write_text(out / "results.json", json.dumps(res, indent=2))
    for c, v in caft.summarize(res).items():
        print(f"{c:<10} id {v['id_acc'][0]:.3f} +- {v['id_acc'][1]:.3f}   ood {v['ood_acc'][0]:.3f} +- {v['ood_acc'][1]:.3f}")
    print(f"wrote {out / 'results.json'} and {out / 'caft.png'}")
    return 0


def _cmd_counterfact(args) -> int:
    from ..editing.counterfact import build_requests
    from ..data.facts import known_facts, load_facts
    from ..core.loading import load_model
    from ..core.io import atomic_write_text

    facts = load_facts(args.facts)
    known = None if args.all_facts else known_facts(load_model(args.model), facts)
    reqs = build_requests(facts, known, n=args.n, seed=args.seed, n_neighbours=args.neighbours)
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in reqs))
    print(f"wrote {len(reqs)} requests to {args.out}")
    return 0


def _cmd_edit(args) -> int:
    from ..editing.counterfact import load_requests, run_counterfact
    from ..core.loading import load_model

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
    s.add_argument("--facts", type=int, default=20, help="known facts to trace (round-robin over relations)")
    s.add_argument("--samples", type=int, default=5, help="noised copies per fact (the paper: 10)")
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
    s.add_argument("--facts", default=str(DEFAULT_FACTS))
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, default=None, help="trace at most N facts (skipped ones do not count)")
    s.add_argument("--samples", type=int, default=10)
    s.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the subject embeddings' std")
    s.add_argument("--window", type=int, default=10)
    s.add_argument("--kinds", default="resid,mlp,attn")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trace-unknown", action="store_true", help="also trace facts the model does not know")
    s.add_argument("--order", choices=["file", "relations"], default="file",
                   help="'relations': take facts round-robin over relations (a limited sweep covers them all)")
    s.add_argument("--no-figures", action="store_true")
    s.set_defaults(fn=_cmd_trace)
    s = sub.add_parser("known", help="record which facts a model knows (top next token starts the object)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--facts", default=str(DEFAULT_FACTS))
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_known)
    s = sub.add_parser("steer", help="build a steering vector from contrast pairs and sweep layers x multipliers")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--pairs", required=True, help='JSONL of {"positive": ..., "negative": ...}')
    s.add_argument("--layers", required=True, help="comma-separated layers, e.g. 3,6,9")
    s.add_argument("--multipliers", required=True, help="comma-separated multipliers, e.g. 0,2,4,8")
    s.add_argument("--out", required=True)
    s.add_argument("--prompts", default="data/steering/prompts.txt", help="prompts to continue, one per line")
    s.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    s.add_argument("--behaviour", default="sentiment", help="'sentiment' (the unsteered model's log-odds) or 'words:FILE'")
    s.add_argument("--threshold", type=float, default=None, help="success when behaviour > this (0 for sentiment, 0.3 for words)")
    s.add_argument("--method", choices=["mean_diff", "pca", "probe"], default="mean_diff")
    s.add_argument("--direction", default=None, help="probe direction: a safetensors file with a 'direction' tensor")
    s.add_argument("--read-at", default="-1", help="token to read (negative counts from the end) or 'mean'")
    s.add_argument("--component", default="resid_pre", choices=["resid_pre", "resid_post", "attn_out", "mlp_out"])
    s.add_argument("--positions", default="all", help="'all', 'generated', or N (from position N on)")
    s.add_argument("--cost", choices=["perplexity", "kl"], default="perplexity")
    s.add_argument("--neutral", default="data/steering/neutral.txt", help="neutral text for --cost kl")
    s.add_argument("--max-new-tokens", type=int, default=20)
    s.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=32)
    s.set_defaults(fn=_cmd_steer)
    s = sub.add_parser("caft", help="concept ablation fine-tuning: plain vs CAFT vs random directions vs test-time ablation")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--task", required=True, help="task JSONL (splits train, id_test, ood_test; see workbench.caft)")
    s.add_argument("--directions", required=True,
                   help="safetensors: `layer.<n>` tensors [k, d_model], or one probe `direction` used at every --layers")
    s.add_argument("--layers", default=None, help="comma-separated layers to ablate at (default: those in the file)")
    s.add_argument("--component", default="resid_pre", help="site component the subspace is projected out of")
    s.add_argument("--fill", choices=["zero", "mean"], default="zero")
    s.add_argument("--method", choices=["lora", "full"], default="lora")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lora-rank", type=int, default=8)
    s.add_argument("--seeds", default="0,1,2")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_caft)
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
