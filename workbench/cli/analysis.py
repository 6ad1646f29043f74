"""Analysis verbs: lens (logit or tuned lens), tuned-lens (train one), dla (direct logit attribution), path-patch (path patching),
das (distributed alignment search), cross-patch (cross-model activation patching)."""
from __future__ import annotations

from pathlib import Path

from ..core import checks
from ..core.io import read_text, write_json
from .common import MODEL_HELP, add_force, add_limit, add_model, check_int, distinct_answer_foil, first, input_file, load, names, output_dir, parse_list, verb
from .patching import GRID_COMPONENTS, METRIC_HELP
from ..core.sites import check_choices


def _write(out: Path, result: dict, arrays: dict) -> None:
    for name, arr in arrays.items():
        arr.plot(out / f"{name}.png", title=arr.name)
    write_json(out / "result.json", result, indent=2)
    print(f"wrote {out / 'result.json'}" + "".join(f", {n}.png" for n in arrays))


def change_share(value: float, clean: float, corrupt: float) -> str:
    """(value - clean) as a share of (clean - corrupted): -100% is the whole corruption's effect (n/a when
    clean == corrupted)."""
    gap = clean - corrupt
    return f"{100 * (value - clean) / gap:+.1f}%" if gap else "n/a"


def _cmd_lens(args) -> int:
    from ..lenses import logit_lens

    if args.tuned is not None:
        input_file(args.tuned, "tuned")
    output_dir(args.out, force=args.force, writes=["result.json", "lens_prob.png"])
    model = load(args)
    tuned = None
    if args.tuned is not None:
        from ..lenses import load_tuned_lens

        tuned = load_tuned_lens(args.tuned, model)[0]
    res = logit_lens(model, args.prompt, args.answer if len(args.answer) > 1 else args.answer[0], tuned=tuned)
    result = {"model": model.name, "prompts": args.prompt, "answer": res["prob"].meta["answer"],
              "layers": res["prob"].coords["layer"], **{k: v.values.tolist() for k, v in res.items()},
              "top": res["prob"].meta["top"], "model_prob": res["prob"].meta["model_prob"]}
    for i, p in enumerate(args.prompt):
        print(f"{p!r}: rank by layer {res['rank'].values[i].tolist()}")
    _write(Path(args.out), result, {"lens_prob": res["prob"]})
    return 0


def _cmd_tuned_lens(args) -> int:
    from ..lenses import lens_kl, train_tuned_lens
    path = input_file(args.texts, "texts")  # shipped text files by their data/ name too
    texts = first([line.strip() for line in read_text(path, "texts").splitlines() if line.strip()], args.limit)
    for name in ("steps", "batch_size", "max_len", "save_every"):
        check_int(getattr(args, name), name)
    checks.learning_rate(args.lr)
    if len(texts) < 2:
        raise checks.fail('texts', f'at least 2 non-empty lines in {path}', len(texts))
    held_out = max(1, len(texts) // 10)  # the last tenth is held out for the KL report
    output_dir(args.out, force=args.force, resumes="tuned_lens.safetensors")  # a rerun with more --steps resumes
    model = load(args)
    out = Path(args.out)
    lens, losses = train_tuned_lens(model, texts[:-held_out], steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                    max_len=args.max_len, seed=args.seed, path=out / "tuned_lens.safetensors",
                                    save_every=args.save_every, progress=True)
    result = {"model": model.name, "steps": args.steps, "losses_this_run": losses, "held_out_texts": held_out,
              "kl_logit_lens": lens_kl(model, texts[-held_out:], None, args.max_len),
              "kl_tuned_lens": lens_kl(model, texts[-held_out:], lens, args.max_len)}
    write_json(out / "result.json", result, indent=2)
    print("held-out KL(model || lens) by layer, logit lens: " + " ".join(f"{x:.3f}" for x in result["kl_logit_lens"]))
    print("                                     tuned lens: " + " ".join(f"{x:.3f}" for x in result["kl_tuned_lens"]))
    from ..toolkit.sweep import resume_note

    print(resume_note("trained", "steps", {"now": len(losses), "before": args.steps - len(losses)}))
    print(f"wrote {out / 'result.json'}, {out / 'tuned_lens.safetensors'} (run again with more --steps to continue)")
    return 0


def _cmd_dla(args) -> int:
    from ..lenses import direct_logit_attribution

    distinct_answer_foil(args.answer, args.foil)
    output_dir(args.out, force=args.force, writes=["result.json", "dla.png"])
    model = load(args)
    one = lambda xs: xs if len(xs) > 1 else xs[0]  # noqa: E731
    res = direct_logit_attribution(model, args.prompt, one(args.answer), None if args.foil is None else one(args.foil),
                                   by_head=not args.by_layer)
    result = {"model": model.name, **res.to_json(), "logit_diff": res.meta["logit_diff"],
              "identity_error": res.meta["identity_error"]}
    top = sorted(zip(res.coords["component"], res.values.mean(0)), key=lambda t: -abs(t[1]))[:10]
    print("largest direct contributions (mean over prompts): " + ", ".join(f"{c} {v:+.3f}" for c, v in top))
    print(f"logit difference {res.meta['logit_diff']}; |sum - logit difference| <= {res.meta['identity_error']:.2e}")
    _write(Path(args.out), result, {"dla": res})
    return 0


def _cmd_path_patch(args) -> int:
    from ..patching import path_patching

    senders = [s.split("+") if "+" in s else s for s in parse_list(args.senders, str, "senders")]
    receivers = "logits" if args.receivers == "logits" else parse_list(args.receivers, str, "receivers")
    positions = None if args.receiver_positions is None else parse_list(args.receiver_positions, int, "receiver_positions")
    distinct_answer_foil([args.answer], [args.foil])
    output_dir(args.out, force=args.force, writes=["result.json"])
    model = load(args)
    res = path_patching(model, args.clean, args.corrupt, args.answer, args.foil, senders=senders, receivers=receivers,
                        receiver_positions=positions, receiver_input=args.receiver_input,
                        freeze_mlps=not args.no_freeze_mlps, metric=args.metric)
    clean, corrupt = res.meta["clean_metric"], res.meta["corrupted_metric"]
    print(f"clean {clean:+.4f}, corrupted {corrupt:+.4f}; each sender's path patched (corrupted) in the clean run:")
    for s, v in zip(res.coords["sender"], res.values):
        print(f"{s} -> {args.receivers}: {args.metric} {v:+.4f}, change from clean {v - clean:+.4f} "
              f"({change_share(v, clean, corrupt)} of clean - corrupted)")

    out = Path(args.out)
    write_json(out / "result.json", {"model": model.name, **res.to_json()}, indent=2)
    print(f"wrote {out / 'result.json'}")
    return 0


def _cmd_das(args) -> int:
    import torch

    from ..directions import das
    from ..core.io import save_safetensors
    from ..toolkit.records import read_records

    rows = first(read_records(args.data, "data", {"base": str, "source": str, "label": str}), args.limit)
    if len(rows) < 2:
        raise checks.fail('data', 'at least 2 examples', len(rows))
    candidates = parse_list(args.candidates, str, "candidates")
    if len(set(candidates)) < 2:
        raise checks.fail("candidates", "at least 2 distinct tokens (with one, accuracy is 1.0 whatever the subspace)",
                          args.candidates)
    for name in ("k", "steps", "batch_size"):
        check_int(getattr(args, name), name)
    checks.position(args.position, "position")
    checks.learning_rate(args.lr)
    output_dir(args.out, force=args.force, writes=["result.json", "subspace.safetensors"])
    model = load(args)
    base, source, labels = ([r[k] for _, r in rows] for k in ("base", "source", "label"))
    res = das(model, args.site, base, source, labels, candidates, k=args.k, position=args.position, steps=args.steps,
              lr=args.lr, batch_size=args.batch_size, seed=args.seed, progress=True)
    out = Path(args.out)
    save_safetensors(out / "subspace.safetensors", {"basis": res.basis},
                     {"model": model.name, "site": args.site, "position": str(args.position)})
    result = {"model": model.name, "site": args.site, "k": args.k, "accuracy": res.accuracy,
              "final_loss": res.losses[-1], "losses": res.losses, "control": res.control}
    write_json(out / "result.json", result, indent=2)
    control = res.control or "none (the row-space control needs --k 1 at an mlp_post site)"
    print(f"interchange accuracy {res.accuracy:.3f} (final loss {res.losses[-1]:.4f}); control {control}")
    print(f"wrote {out / 'result.json'}, {out / 'subspace.safetensors'}")
    return 0 if torch.isfinite(res.basis).all() else 1


def _cmd_cross_patch(args) -> int:
    from ..patching import cross_model_patching

    distinct_answer_foil(args.answer, args.foil)
    sites = check_choices(args.sites, GRID_COMPONENTS, "sites")
    output_dir(args.out, force=args.force, writes=["result.json"] + [f"{site}.png" for site in sites])
    base, tuned = load(args), load(args, "tuned")
    one = lambda xs: xs if len(xs) > 1 else xs[0]  # noqa: E731
    res = cross_model_patching(base, tuned, args.prompt, one(args.answer), None if args.foil is None else one(args.foil),
                               components=args.sites, metric=args.metric, direction=args.direction, progress=True)
    first = next(iter(res.values()))
    result = {"base": base.name, "tuned": tuned.name, "direction": args.direction, "metric": args.metric,
              "prompts": args.prompt, "tokens": first.meta["tokens"], "layers": first.coords["layer"],
              "source_metric": first.meta["source_metric"], "target_metric": first.meta["target_metric"],
              "values": {site: arr.values.tolist() for site, arr in res.items()}}
    print(f"{args.direction}: source metric {result['source_metric']:+.4f}, target {result['target_metric']:+.4f}")
    _write(Path(args.out), result, dict(res))
    return 0


def register(sub) -> None:
    s = verb(sub, "lens", help="logit lens: the answer's probability and rank layer by layer")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    s.add_argument("--answer", action="append", required=True, help="a single token; one, or one per prompt")
    s.add_argument("--tuned", help="a tuned_lens.safetensors from `workbench tuned-lens` (default: the logit lens)")
    s.add_argument("--out", required=True, help="folder for result.json and lens_prob.png")
    add_force(s)
    s.set_defaults(fn=_cmd_lens)

    s = verb(sub, "tuned-lens", help="train (or resume) a tuned lens; reports held-out KL by layer")
    s.add_argument("--texts", required=True, help="a text file, one training text per line (the last tenth held out)")
    add_limit(s, "lines (before the held-out tenth is split off)")
    s.add_argument("--steps", type=int, default=100, help="total steps; a rerun with more steps resumes")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    s.add_argument("--batch-size", type=int, default=8, help="texts per step")
    s.add_argument("--max-len", type=int, default=64, help="tokens per text (longer texts are cut)")
    s.add_argument("--seed", type=int, default=0, help="seed of the batches")
    s.add_argument("--save-every", type=int, default=50, help="save the lens (and its optimiser) every N steps")
    s.add_argument("--out", required=True, help="folder for tuned_lens.safetensors and result.json (a rerun resumes)")
    add_force(s)
    s.set_defaults(fn=_cmd_tuned_lens)

    s = verb(sub, "dla", help="direct logit attribution per head and MLP (final norm's scale frozen)")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    s.add_argument("--answer", action="append", required=True, help="a single token; one, or one per prompt")
    s.add_argument("--foil", action="append", help="a single token; one, or one per prompt (default: the answer's logit alone)")
    s.add_argument("--by-layer", action="store_true", help="attention output per layer instead of per head")
    s.add_argument("--out", required=True, help="folder for result.json and dla.png")
    add_force(s)
    s.set_defaults(fn=_cmd_dla)

    s = verb(sub, "path-patch", help="path patching: each sender's effect through the receivers only")
    s.add_argument("--clean", required=True, help="the clean prompt")
    s.add_argument("--corrupt", required=True, help="the corrupted prompt (the same number of tokens)")
    s.add_argument("--answer", required=True, help="the clean run's answer, a single token (mind the leading space)")
    s.add_argument("--foil", required=True, help="the corrupted run's answer, a single token")
    s.add_argument("--senders", required=True, help="comma-separated, each patched alone: L0H1,mlp2,L3H0+L3H4")
    s.add_argument("--receivers", default="logits", help="'logits' or comma-separated heads: L5H1,L5H3")
    s.add_argument("--receiver-positions", help="comma-separated positions of the receivers' input (default all)")
    s.add_argument("--receiver-input", default="qkv", choices=["qkv", "q", "k", "v"],
                   help="which input of the receiver heads the path ends in (default qkv: their attention input)")
    s.add_argument("--no-freeze-mlps", action="store_true", help="let MLPs recompute (Wang et al. freeze heads only)")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff",
                   help=METRIC_HELP)
    s.add_argument("--out", required=True, help="folder for result.json")
    add_force(s)
    s.set_defaults(fn=_cmd_path_patch)

    s = verb(sub, "das", help="distributed alignment search: learn a subspace of a site from interchange data")
    s.add_argument("--site", required=True, help="e.g. blocks.3.hook_resid_post or blocks.2.mlp.hook_post")
    s.add_argument("--data", required=True, help="JSONL: {base, source, label} per line (label: the counterfactual output token)")
    add_limit(s, "examples")
    s.add_argument("--candidates", required=True, help="comma-separated output tokens compared (single tokens)")
    s.add_argument("--k", type=int, default=1, help="dimension of the learned subspace")
    s.add_argument("--position", type=int, default=-1, help="token position intervened on (negative counts from the end)")
    s.add_argument("--steps", type=int, default=200, help="training steps of the rotation")
    s.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    s.add_argument("--batch-size", type=int, default=64, help="examples per step")
    s.add_argument("--seed", type=int, default=0, help="seed of the rotation and the batches")
    s.add_argument("--out", required=True, help="folder for result.json and subspace.safetensors")
    add_force(s)
    s.set_defaults(fn=_cmd_das)

    s = sub.add_parser("cross-patch", help="cross-model activation patching between a base and a fine-tuned model",
                       description="cross-model activation patching between a base and a fine-tuned model")
    add_model(s, help="the base model (" + MODEL_HELP + ")")
    s.add_argument("--tuned", required=True, help="the fine-tuned model (same shapes)")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts (one length)")
    s.add_argument("--answer", action="append", required=True, help="a single token; one, or one per prompt")
    s.add_argument("--foil", action="append", help="a single token; one, or one per prompt (default: the answer alone)")
    s.add_argument("--sites", default="resid_pre",
                   help=f"components, comma-separated, from: {names(GRID_COMPONENTS)} (default: %(default)s)")
    s.add_argument("--metric", choices=["logit_diff", "normalized", "prob", "logprob", "kl"], default="logit_diff",
                   help=METRIC_HELP)
    s.add_argument("--direction", choices=["tuned_into_base", "base_into_tuned"], default="tuned_into_base",
                   help="tuned_into_base: the fine-tuned model's activations patched into the base run; or the reverse")
    s.add_argument("--out", required=True, help="folder for result.json and one PNG per site")
    add_force(s)
    s.set_defaults(fn=_cmd_cross_patch)
