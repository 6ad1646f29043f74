"""Activation and attribution patching of one prompt pair: patch."""
from __future__ import annotations

from pathlib import Path

from .common import add_force, check_float, distinct_answer_foil, output_dir, verb
from ..core import checks
from ..core.io import write_json


def _cmd_patch(args) -> int:
    from ..core.loading import load_model
    from ..patching import activation_patching
    from ..core.sites import parse_components

    sites = parse_components(args.sites)
    check_float(args.memory_mb, "memory_mb", positive=True)
    for arg in ("clean", "corrupt", "answer", "foil"):
        if not getattr(args, arg):
            raise checks.fail(arg, "a non-empty string", getattr(args, arg))
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


def register(sub) -> None:
    s = verb(sub, "patch", help="activation or attribution patching of one prompt pair; writes result.json and PNGs")
    s.add_argument("--clean", required=True)
    s.add_argument("--corrupt", required=True)
    s.add_argument("--answer", required=True, help="the clean run's answer, a single token (mind the leading space)")
    s.add_argument("--foil", required=True, help="the corrupted run's answer, a single token")
    s.add_argument("--sites", default="resid_pre,attn_out,mlp_out", help="components, comma-separated")
    s.add_argument("--method", choices=["exact", "attribution"], default="exact")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff")
    s.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    s.add_argument("--memory-mb", type=float, default=1024)
    s.add_argument("--out", required=True, help="folder for result.json and one PNG per site")
    add_force(s)
    s.add_argument("--html", action="store_true", help="also write an interactive HTML view per component (opens offline)")
    s.set_defaults(fn=_cmd_patch)
