"""Steering vectors from contrast pairs, swept over layers x multipliers: steer."""
from __future__ import annotations

from pathlib import Path
from .common import parse_list


def _cmd_steer(args) -> int:
    from ..steering.behaviour import log_odds_classifier, word_share
    from ..core.loading import load_model
    from ..steering import SENTIMENT_TEMPLATE, build_steering_vector, load_lines, load_pairs, sweep

    layers = parse_list(args.layers, int, "layers")
    multipliers = parse_list(args.multipliers, float, "multipliers")
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
    if args.html:  # the continuations under a layer menu and a multiplier slider, one self-contained file
        from ..views import save_html

        print(f"wrote {save_html(res, out / 'sweep.html')}")
    return 0


def register(sub) -> None:
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
    s.add_argument("--html", action="store_true", help="also write sweep.html: a multiplier slider over the continuations")
    s.set_defaults(fn=_cmd_steer)
