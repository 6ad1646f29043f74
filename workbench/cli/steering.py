"""Steering vectors from contrast pairs, swept over layers x multipliers: steer."""
from __future__ import annotations

from pathlib import Path
from .common import (add_force, add_workers, check_float, check_int, check_workers, first, input_file, load,
                     output_dir, parse_list, verb)
from ..core import checks


def _cmd_steer(args) -> int:
    from ..steering.behaviour import log_odds_classifier, word_share
    from ..core.sites import check_layers
    from ..steering import SENTIMENT_TEMPLATE, build_steering_vector, load_lines, load_pairs, sweep

    layers = parse_list(args.layers, int, "layers")
    multipliers = parse_list(args.multipliers, float, "multipliers")
    if args.read_at == "mean":
        read_at = "mean"
    else:
        try:
            read_at = int(args.read_at)
        except ValueError:
            raise checks.fail('read_at', "a token index (negative counts from the end) or 'mean'",
                              args.read_at) from None
    if args.positions in ("all", "generated"):
        positions = args.positions
    else:
        try:
            positions = int(args.positions)
        except ValueError:
            raise checks.fail('positions', "'all', 'generated' or a position N >= 0", args.positions) from None
        check_int(positions, "positions", 0)
    check_int(args.limit, "limit", none_ok=True)
    check_float(args.threshold, "threshold", none_ok=True)
    check_int(args.max_new_tokens, "max_new_tokens")
    check_int(args.batch_size, "batch_size")
    pos, neg = load_pairs(input_file(args.pairs, "pairs"))
    pos, neg = first(pos, args.pairs_limit), first(neg, args.pairs_limit, "pairs_limit")
    prompts = first(load_lines(input_file(args.prompts, "prompts"), "prompts"), args.limit)
    neutral = load_lines(input_file(args.neutral, "neutral"), "neutral") if args.cost == "kl" else None
    if args.behaviour.startswith("words:"):
        words = input_file(args.behaviour.removeprefix("words:"), "behaviour")
    elif args.behaviour != "sentiment":
        raise checks.fail('behaviour', "'sentiment' or 'words:FILE'", args.behaviour)
    if args.method == "probe" and not args.direction:
        raise ValueError("direction: --method probe needs --direction FILE")
    if args.direction is not None:
        if args.method != "probe":
            raise ValueError(f"direction: only used with --method probe, not {args.method}")
        input_file(args.direction, "direction")
    run = check_workers(args)
    # resumable: a killed run's folder (config.json, cells/) continues; a finished one (sweep.json) needs --force
    out = output_dir(args.out, force=args.force, resumes="config.json")
    if (out / "sweep.json").exists() and not args.force:
        raise ValueError(f"out: {out / 'sweep.json'} exists (results of an earlier run); pass --force to overwrite, "
                         "or choose another folder")
    model = load(args)
    check_layers(layers, model.dims.n_layers)
    if args.behaviour == "sentiment":
        behaviour, threshold, name = log_odds_classifier(model, SENTIMENT_TEMPLATE, " positive", " negative"), 0.0, \
            "log-odds positive vs negative (unsteered model as classifier)"
    else:
        behaviour, threshold, name = word_share(words), 0.3, f"share of words in {words.name}"
    if args.threshold is not None:
        threshold = args.threshold
    vec = build_steering_vector(model, pos, neg, layers=layers, method=args.method, read_at=read_at,
                                component=args.component, direction=args.direction)
    res = sweep(model, vec, prompts, multipliers=multipliers, behaviour=behaviour, threshold=threshold,
                behaviour_name=name, cost=args.cost, positions=positions,
                neutral_texts=neutral,
                max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
                batch_size=args.batch_size, out=out, run=run)
    res.meta.update(pairs=str(args.pairs), prompts=str(args.prompts), title=f"steering: {Path(args.pairs).stem}")
    vec.save(out / "vector.safetensors")
    res.plot(out / "sweep.png")
    res.save(out / "sweep.json")
    print(res.to_dataframe().to_string(index=False))
    print(f"unsteered: {res.baseline}")
    print(f"best (cost <= 2x unsteered): {res.best()}")
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}, {out / 'vector.safetensors'}")
    if args.html:  # the continuations under a layer menu and a multiplier slider, one self-contained file
        from ..views import save_html

        print(f"wrote {save_html(res, out / 'sweep.html')}")
    return 0


def register(sub) -> None:
    s = verb(sub, "steer", help="build a steering vector from contrast pairs and sweep layers x multipliers")
    s.add_argument("--pairs", required=True, help='JSONL of {"positive": ..., "negative": ...}')
    s.add_argument("--pairs-limit", type=int, default=None, help="use the first N contrast pairs (default: all)")
    s.add_argument("--layers", required=True, help="comma-separated layers, e.g. 3,6,9")
    s.add_argument("--multipliers", required=True, help="comma-separated multipliers, e.g. 0,2,4,8")
    s.add_argument("--out", required=True, help="folder for vector.safetensors, sweep.json and sweep.png (and the resumable sweep: config.json, cells/)")
    add_force(s)
    add_workers(s)
    s.add_argument("--prompts", default="data/steering/prompts.txt", help="prompts to continue, one per line")
    s.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    s.add_argument("--behaviour", default="sentiment", help="'sentiment' (the unsteered model's log-odds) or 'words:FILE'")
    s.add_argument("--threshold", type=float, default=None, help="success when behaviour > this (0 for sentiment, 0.3 for words)")
    s.add_argument("--method", choices=["mean_diff", "pca", "probe"], default="mean_diff",
                   help="mean_diff (mean of positive - negative), pca (first principal component of the differences) "
                        "or probe (a direction from --direction)")
    s.add_argument("--direction", default=None, help="probe direction: a safetensors file with a 'direction' tensor")
    s.add_argument("--read-at", default="-1", help="token to read (negative counts from the end) or 'mean'")
    s.add_argument("--component", default="resid_pre", choices=["resid_pre", "resid_post", "attn_out", "mlp_out"],
                   help="the site the vector is read from and added to (at each of --layers)")
    s.add_argument("--positions", default="all", help="'all', 'generated', or N (from position N on)")
    s.add_argument("--cost", choices=["perplexity", "kl"], default="perplexity",
                   help="the price of steering: perplexity of the continuations, or KL on --neutral text")
    s.add_argument("--neutral", default="data/steering/neutral.txt", help="neutral text for --cost kl")
    s.add_argument("--max-new-tokens", type=int, default=20, help="tokens generated per prompt")
    s.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampling (with --sample)")
    s.add_argument("--batch-size", type=int, default=32, help="prompts generated together")
    s.add_argument("--html", action="store_true", help="also write sweep.html: a multiplier slider over the continuations")
    s.set_defaults(fn=_cmd_steer)
