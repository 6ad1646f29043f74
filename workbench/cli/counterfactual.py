"""Counterfactual strings under a steering vector, a weight edit or a second model: counterfactual."""
from __future__ import annotations

import json

from ..core import checks
from .common import check_int, first, input_file, output_dir, verb, load


def _replace_arg(text: str | None):
    if text is None:
        return None
    pos, sep, tok = text.partition(":")
    try:
        pos = int(pos)
    except ValueError:
        pos = None
    if not sep or pos is None or not tok:
        raise checks.fail('replace-token', 'POS:TEXT (e.g. 7: happy)', text)
    return pos, tok


def _cmd_counterfactual(args) -> int:
    from ..toolkit.records import read_records
    from ..counterfactual import counterfactual_sweep, measure, sample
    from ..counterfactual.gumbel import Settings
    from ..steering.vectors import SteeringVector, load_lines

    # every argument and input file before the model loads, and before anything is written
    chosen = [x for x in (args.steer, args.edit, args.model_b) if x]
    if len(chosen) > 1:
        raise ValueError("intervention: give at most one of --steer, --edit, --model-b")
    replace = _replace_arg(args.replace_token)
    for name in ("max_new_tokens", "batch_size"):
        check_int(getattr(args, name), name)
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    Settings(**settings)
    if (args.observed is None) == (args.prompts is None):
        raise ValueError("observed/prompts: give exactly one of --observed FILE.jsonl or --prompts FILE.txt")
    input_file(args.observed or args.prompts, "observed" if args.observed else "prompts")
    if args.steer:
        input_file(args.steer, "steer")
        checks.number(args.multiplier, "multiplier")
    if args.edit:
        from ..editing.weights import WeightEdit

        edit = WeightEdit.load(args.edit)  # read and checked (finite, whole) before the model loads
    if args.observed:
        rows = read_records(args.observed, "observed", {"prompt": str, "continuation": str})
        rows = first([r for _, r in rows], args.limit)
    else:
        prompts = first(load_lines(args.prompts, "prompts"), args.limit)
    out = output_dir(args.out, force=args.force, resumes="config.json")  # a rerun resumes its chunks
    model = load(args)
    if args.steer:
        intervention = SteeringVector.load(args.steer, model).interventions(model, args.multiplier)
    elif args.edit:
        intervention = edit
    elif args.model_b:
        intervention = load(args, "model_b")
    else:
        intervention = None
    if not chosen and replace is None and args.noise == "posterior":
        print("no intervention and no --replace-token: every counterfactual should equal its observed string")
    if args.observed:
        observed, prompts = [r["continuation"] for r in rows], [r["prompt"] for r in rows]
    else:
        observed = sample(model, prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                          batch_size=args.batch_size, **settings)
        prompts = None
    # resumable: finished chunks are kept in out/chunks/ and skipped when the same command runs again
    res = counterfactual_sweep(out, model, prompts, observed, intervention, seed=args.seed, replace=replace,
                               noise=args.noise, chunk=args.batch_size, force=args.force, **settings)
    df = measure(res, new=args.new, old=args.old)
    meta = {**res.meta, "model": model.name, "observed_from": args.observed or f"sampled from {args.prompts}",
            "steer": args.steer, "multiplier": args.multiplier if args.steer else None, "edit": args.edit,
            "model_b": args.model_b}
    res.save(out, new=args.new, old=args.old, meta=meta)
    summary = json.loads((out / "summary.json").read_text())
    print(df[["observed", "counterfactual", "identical", "prefix", "edit"]].to_string(index=False, max_colwidth=40))
    print(json.dumps({k: v for k, v in summary.items() if k != "meta"}))
    from ..toolkit.sweep import resume_note

    print(resume_note("computed", "chunks", res.meta.get("this_run")))
    written = [out / "counterfactuals.json", out / "pairs.csv", out / "pairs.jsonl", out / "summary.json"]
    if args.html:
        from ..views import counterfactual_view, save_html

        written.append(save_html(counterfactual_view(res, model), out / "counterfactuals.html"))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def register(sub) -> None:
    s = verb(sub, "counterfactual", help="counterfactual strings (Gumbel-max hindsight sampling) under "
                                              "steering, a weight edit, a second model or a replaced token")
    s.add_argument("--observed", default=None, help='JSONL of {"prompt": ..., "continuation": ...}')
    s.add_argument("--prompts", default=None, help="prompts, one per line: sample the observed strings here")
    s.add_argument("--limit", type=int, default=None, help="use the first N rows")
    s.add_argument("--out", required=True, help="results folder (pairs.csv, pairs.jsonl, summary.json; chunks/ "
                                                "holds finished rows, so re-running the command resumes)")
    s.add_argument("--force", action="store_true", help="replace the results of another configuration in --out")
    s.add_argument("--html", action="store_true", help="also write counterfactuals.html (side by side, differing "
                                                      "tokens marked)")
    s.add_argument("--steer", default=None, help="steering vector (.safetensors written by `workbench steer`)")
    s.add_argument("--multiplier", type=float, default=4.0, help="the steering vector's multiplier (with --steer)")
    s.add_argument("--edit", default=None, help="weight-edit directory written by WeightEdit.save")
    s.add_argument("--model-b", default=None, help="second model with the same tokenizer")
    s.add_argument("--replace-token", default=None, help="POS:TEXT, token-level counterfactual (POS over prompt + "
                                                         "continuation tokens, TEXT one token)")
    s.add_argument("--noise", choices=["posterior", "fresh"], default="posterior",
                   help="posterior: counterfactual; fresh: interventional baseline with new noise")
    s.add_argument("--new", default=None, help="targeted effect: text that should appear")
    s.add_argument("--old", default=None, help="targeted effect: text that should disappear")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of both models")
    s.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set with this mass (1: all)")
    s.add_argument("--max-new-tokens", type=int, default=20, help="tokens sampled per prompt (with --prompts)")
    s.add_argument("--seed", type=int, default=0, help="seed of the Gumbel noise (row r uses seed + r)")
    s.add_argument("--batch-size", type=int, default=16, help="rows per chunk (a chunk is the unit that resumes)")
    s.set_defaults(fn=_cmd_counterfactual)
