"""Activation and attribution patching of one prompt pair, or of a file of pairs as a resumable sweep: patch."""
from __future__ import annotations

from pathlib import Path

from .common import (add_force, add_workers, check_float, check_int, check_workers, distinct_answer_foil, input_file,
                     output_dir, verb)
from ..core.io import write_json


def _cmd_patch(args) -> int:
    from ..core.loading import load_model
    from ..patching import activation_patching
    from ..core.io import atomic_write_text
    from ..core.sites import parse_components

    sites = parse_components(args.sites)
    check_float(args.memory_mb, "memory_mb", positive=True)
    if args.pairs is not None:
        return _patch_pairs(args, sites)
    if args.workers is not None or args.ray_address is not None:
        raise ValueError("workers: --workers / --ray-address run a sweep over a file of pairs (--pairs FILE)")
    for arg in ("clean", "corrupt", "answer", "foil"):
        if not getattr(args, arg):
            raise ValueError(f"{arg}: expected a non-empty string")
    distinct_answer_foil([args.answer], [args.foil])
    output_dir(args.out, force=args.force, writes=["result.json"] + [f"{s}.png" for s in sites])
    model = load_model(args.model)
    res = activation_patching(model, args.clean, args.corrupt, args.answer, args.foil, components=sites,
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
    write_json(out / "result.json", result, indent=2)
    print(f"wrote {out / 'result.json'} and {', '.join(f'{s}.png' for s in res)}")
    if args.html:  # interactive views next to the PNGs: one self-contained HTML file per component
        from ..views import save_html

        for site, arr in res.items():
            save_html(arr.view(title=f"{arr.name}: {args.metric}"), out / f"{site}.html")
        print(f"wrote {', '.join(f'{s}.html' for s in res)}")
    return 0


def _patch_pairs(args, sites) -> int:
    """`patch --pairs FILE`: every pair of the file, `--chunk` pairs per item of the one sweep driver (resumable in
    --out; on Ray with --workers / --ray-address); writes grids.json (mean over the pairs) and one PNG per site."""
    from ..core.loading import load_model
    from ..patching import patch_pairs, read_pairs

    given = [a for a in ("clean", "corrupt", "answer", "foil") if getattr(args, a) is not None]
    if given:
        raise ValueError(f"pairs: give --pairs FILE or --{given[0]} (one pair), not both")
    if args.method != "exact":
        raise ValueError(f"method: --pairs runs exact patching, got {args.method!r}")
    check_int(args.chunk, "chunk")
    run = check_workers(args)
    pairs = read_pairs(input_file(args.pairs, "pairs"))
    if "foil" in pairs[0]:
        distinct_answer_foil([p["answer"] for p in pairs], [p["foil"] for p in pairs])
    out = output_dir(args.out, force=args.force, resumes="config.json")
    model = load_model(args.model)
    grids = patch_pairs(model, pairs, out, components=sites, metric=args.metric, direction=args.direction,
                        chunk=args.chunk, memory_mb=args.memory_mb, run=run)
    for site, arr in grids.items():
        arr.plot(out / f"{site}.png", title=f"{arr.name}: {args.metric}, mean of {arr.meta['n_pairs']} pairs")
    print(f"wrote {out / 'grids.json'} and {', '.join(f'{s}.png' for s in grids)}")
    return 0


def register(sub) -> None:
    s = verb(sub, "patch", help="activation or attribution patching of one prompt pair (result.json and PNGs), or of "
                               "a file of pairs (--pairs: a resumable sweep, grids.json and PNGs)")
    s.add_argument("--clean")
    s.add_argument("--corrupt")
    s.add_argument("--answer", help="the clean run's answer, a single token (mind the leading space)")
    s.add_argument("--foil", help="the corrupted run's answer, a single token")
    s.add_argument("--pairs", default=None, help='instead of one pair: a JSONL file of {"clean", "corrupted", "answer", '
                                                 '"foil"}, all clean prompts of one length and all corrupted of another')
    s.add_argument("--chunk", type=int, default=8, help="with --pairs: pairs per item of the sweep")
    s.add_argument("--sites", default="resid_pre,attn_out,mlp_out", help="components, comma-separated")
    s.add_argument("--method", choices=["exact", "attribution"], default="exact")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff")
    s.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    s.add_argument("--memory-mb", type=float, default=1024)
    s.add_argument("--out", required=True, help="folder for result.json (grids.json with --pairs) and one PNG per site")
    add_force(s)
    add_workers(s)
    s.add_argument("--html", action="store_true", help="also write an interactive HTML view per component (opens offline)")
    s.set_defaults(fn=_cmd_patch)
