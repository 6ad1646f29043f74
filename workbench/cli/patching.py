"""Activation and attribution patching of one prompt pair, or of a file of pairs as a resumable sweep: patch."""
from __future__ import annotations

from pathlib import Path

from .common import (add_force, add_limit, add_workers, check_float, check_int, check_workers, distinct_answer_foil, first,
                     input_file, load, names, output_dir, verb)
from ..core import checks
from ..core.io import write_json
from ..core.sites import COMPONENTS

GRID_COMPONENTS = [c for c in COMPONENTS if c != "pattern"]  # a pattern cell is a block of rows, not a grid cell
METRIC_HELP = ("the metric: logit_diff (answer - foil logits), normalized ((m - corrupted) / (clean - corrupted)), "
               "prob or logprob of the answer, kl (to the clean run's distribution)")


def parse_align(text: str | None, arg: str = "align") -> dict[int, int] | None:
    """'0:0,1:1,3:2' -> {0: 0, 1: 1, 3: 2} (clean position: corrupted position), the library's `align=`."""
    if text is None:
        return None
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        align = {int(c): int(x) for c, x in pairs}
    except ValueError:
        raise checks.fail(arg, "comma-separated CLEAN:CORRUPT position pairs (e.g. 0:0,1:1,3:2)", text) from None
    if not align or len(align) != len(pairs):
        raise checks.fail(arg, "distinct CLEAN:CORRUPT position pairs (e.g. 0:0,1:1,3:2)", text)
    return align


def _cmd_patch(args) -> int:
    from ..patching import activation_patching
    from ..core.sites import check_choices

    sites = check_choices(args.sites, GRID_COMPONENTS, "sites")
    align = parse_align(args.align)
    check_float(args.memory_mb, "memory_mb", positive=True)
    if args.pairs is not None:
        return _patch_pairs(args, sites)
    if args.workers is not None or args.ray_address is not None:
        raise ValueError("workers: --workers / --ray-address run a sweep over a file of pairs (--pairs FILE)")
    for arg in ("clean", "corrupt", "answer", "foil"):
        if not getattr(args, arg):
            raise checks.fail(arg, "a non-empty string", getattr(args, arg))
    distinct_answer_foil([args.answer], [args.foil])
    output_dir(args.out, force=args.force, writes=["result.json"] + [f"{s}.png" for s in sites])
    model = load(args)
    res = activation_patching(model, args.clean, args.corrupt, args.answer, args.foil, components=sites,
                              method=args.method, metric=args.metric, direction=args.direction,
                              memory_mb=args.memory_mb, align=align, progress=True)
    out = Path(args.out)
    grid = next(iter(res.values()))
    result = {
        "model": model.name, "method": args.method, "metric": args.metric, "direction": args.direction,
        "clean": args.clean, "corrupted": args.corrupt, "answer": args.answer, "foil": args.foil,
        "tokens": grid.meta["tokens"], "layers": grid.coords["layer"],
        "clean_metric": grid.meta["clean_metric"], "corrupted_metric": grid.meta["corrupted_metric"],
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
    from ..patching import patch_pairs, read_pairs

    given = [a for a in ("clean", "corrupt", "answer", "foil") if getattr(args, a) is not None]
    if given:
        raise ValueError(f"pairs: give --pairs FILE or --{given[0]} (one pair), not both")
    if args.method != "exact":
        raise ValueError(f"method: --pairs runs exact patching, got {args.method!r}")
    check_int(args.chunk, "chunk")
    run = check_workers(args)
    pairs = first(read_pairs(input_file(args.pairs, "pairs")), args.limit)
    if "foil" in pairs[0]:
        distinct_answer_foil([p["answer"] for p in pairs], [p["foil"] for p in pairs])
    out = output_dir(args.out, force=args.force, resumes="config.json")
    model = load(args)
    grids = patch_pairs(model, pairs, out, components=sites, metric=args.metric, direction=args.direction,
                        chunk=args.chunk, memory_mb=args.memory_mb, run=run)
    for site, arr in grids.items():
        arr.plot(out / f"{site}.png", title=f"{arr.name}: {args.metric}, mean of {arr.meta['n_pairs']} pairs")
    print(f"wrote {out / 'grids.json'} and {', '.join(f'{s}.png' for s in grids)}")
    return 0


def register(sub) -> None:
    s = verb(sub, "patch", help="activation or attribution patching of one prompt pair (result.json and PNGs), or of "
                               "a file of pairs (--pairs: a resumable sweep, grids.json and PNGs)")
    s.add_argument("--clean", help="the clean prompt (the run whose answer is --answer)")
    s.add_argument("--corrupt", help="the corrupted prompt (same token count, or give --align)")
    s.add_argument("--answer", help="the clean run's answer, a single token (mind the leading space)")
    s.add_argument("--foil", help="the corrupted run's answer, a single token")
    s.add_argument("--pairs", default=None, help='instead of one pair: a JSONL file of {"clean", "corrupted", "answer", '
                                                 '"foil"}, all clean prompts of one length and all corrupted of another')
    s.add_argument("--chunk", type=int, default=8, help="with --pairs: pairs per item of the sweep")
    add_limit(s, "pairs (with --pairs)")
    s.add_argument("--sites", default="resid_pre,attn_out,mlp_out",
                   help=f"components, comma-separated, from: {names(GRID_COMPONENTS)} (default: %(default)s)")
    s.add_argument("--align", default=None, help="when the prompts' token counts differ: which positions correspond, "
                                                "CLEAN:CORRUPT pairs, e.g. 0:0,1:1,3:2 (the library's align=)")
    s.add_argument("--method", choices=["exact", "attribution"], default="exact",
                   help="exact: one patched run per cell; attribution: the gradient approximation (one backward)")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff",
                   help=METRIC_HELP)
    s.add_argument("--direction", choices=["denoise", "noise"], default="denoise",
                   help="denoise: clean activations into the corrupted run; noise: corrupted into the clean run")
    s.add_argument("--memory-mb", type=float, default=1024, help="memory budget of the batched patched runs, MB")
    s.add_argument("--out", required=True, help="folder for result.json (grids.json with --pairs) and one PNG per site")
    add_force(s)
    add_workers(s)
    s.add_argument("--html", action="store_true", help="also write an interactive HTML view per component (opens offline)")
    s.set_defaults(fn=_cmd_patch)
