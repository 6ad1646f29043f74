"""`workbench sae inspect` and `workbench sae diff`: the sub-verbs that use a trained SAE (hooked into the `sae`
verb of cli/sae.py by `register_use(subs)`)."""
from __future__ import annotations

from .common import add_allow_other_model, add_force, check_int, first, input_folder, output_dir, output_file, parse_list, read_texts, verb, load
from ..core.io import write_json
from ..core import checks


def _cmd_inspect(args) -> int:
    from ..sae import inspect_latent, load_sae
    from ..sae.use import check_latents

    latents = parse_list(args.latents, int, "latents")
    check_int(args.top_k, "top_k")
    texts = first(read_texts(args.texts), args.limit)
    args.sae = input_folder(args.sae, "sae", "cfg.json")
    out = output_dir(args.out, force=args.force, writes=[f"latent-{i}.html" for i in latents] + ["latents.json"])
    model = load(args)
    sae = load_sae(args.sae, model, site=args.site, allow_other_model=args.allow_other_model)
    check_latents(sae, latents)

    from tqdm.auto import tqdm

    reports = []
    for i in tqdm(latents, desc="latents", unit="latent"):
        rep = inspect_latent(model, sae, i, texts, top_k=args.top_k)
        rep.save_html(out / f"latent-{i}.html")
        reports.append(rep.to_json())
        top = ", ".join(repr(t) for t, _ in rep.logits["top"][:5])
        print(f"latent {i}: density {100 * rep.density:.2f}%, max {rep.contexts[0]['activation'] if rep.contexts else 0:.3g}, "
              f"promotes {top}")
    write_json(out / "latents.json", reports, indent=1)
    print(f"wrote {len(latents)} pages and latents.json to {out}")
    return 0


def _cmd_diff(args) -> int:
    from ..sae import diff_latents, load_sae
    from ..sae.diff import RANK_BY

    if args.rank_by not in RANK_BY:
        raise checks.fail('rank_by', f'one of {RANK_BY}', args.rank_by)
    read_at = args.read_at if args.read_at in ("all", "mean") else int(args.read_at) if args.read_at.lstrip("-").isdigit() \
        else None
    if read_at is None:
        raise checks.fail('read_at', "'all', 'mean' or a token index", args.read_at)
    check_int(args.top, "top")
    texts = first(read_texts(args.texts), args.limit)
    args.sae = input_folder(args.sae, "sae", "cfg.json")
    out = output_file(args.out, force=args.force)
    base = load(args)
    ft = load(args, "finetuned")
    sae = load_sae(args.sae, base, site=args.site, allow_other_model=args.allow_other_model)
    d = diff_latents(base, ft, sae, texts, read_at=read_at, rank_by=args.rank_by, progress=True)
    print(d.to_dataframe(args.top).to_string(index=False))
    write_json(out, d.to_json(args.top), indent=1)
    print(f"wrote {out}")
    return 0


def add_sae_flags(parser) -> None:
    """--site and --allow-other-model: the fixes `load_sae`'s errors name (site=, allow_other_model=True)."""
    parser.add_argument("--site", default=None, help="the site the SAE reads, e.g. blocks.3.hook_resid_pre (default: "
                                                    "its cfg.metadata.hook_name; the library's site=)")
    add_allow_other_model(parser)


def register_use(subs) -> None:
    """Add `inspect` and `diff` to the `sae` verb's sub-parsers."""
    s = verb(subs, "inspect", help="an SAE latent's top contexts, logit effects and density, as HTML pages")
    s.add_argument("--sae", required=True, help="SAE folder (SAELens format: cfg.json + sae_weights.safetensors)")
    s.add_argument("--latents", required=True, help="comma-separated latent indices")
    add_sae_flags(s)
    s.add_argument("--texts", default="data/caft_task.jsonl", help="text file (one per line) or JSONL with 'prompt'")
    s.add_argument("--limit", type=int, default=None, help="use the first N texts")
    s.add_argument("--top-k", type=int, default=10, help="contexts per latent")
    s.add_argument("--out", required=True, help="folder for latent-<i>.html and latents.json")
    add_force(s)
    s.set_defaults(fn=_cmd_inspect)

    s = verb(subs, "diff", help="rank SAE latents by how a fine-tune (--finetuned) changed them vs the base (--model)")
    s.add_argument("--finetuned", required=True, help="the fine-tuned model (Hugging Face directory, or a model name)")
    s.add_argument("--sae", required=True, help="SAE folder, trained on the base model")
    add_sae_flags(s)
    s.add_argument("--texts", default="data/caft_task.jsonl", help="prompts run through both models")
    s.add_argument("--limit", type=int, default=None, help="use the first N texts")
    s.add_argument("--read-at", default="all", help="'all' tokens, 'mean', or a token index (-1: last)")
    s.add_argument("--rank-by", default="abs_delta", help="abs_delta (mean |change|) or score (standardised)")
    s.add_argument("--top", type=int, default=20, help="latents to print and save")
    s.add_argument("--out", required=True, help="JSON file for the ranking")
    add_force(s)
    s.set_defaults(fn=_cmd_diff)
