"""Sparse autoencoders: `workbench sae train|eval` (one `sae` verb; each sub-verb registers itself in SUBVERBS)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_allow_other_model, add_force, add_limit, add_model, first, check_int, input_file, input_folder, load, output_dir, output_file, read_texts
from ..core import checks
from ..core.io import write_json


def _texts(spec: str, model, part: str, samples: int, seed: int) -> list[str]:
    """'default': our corpus's training or held-out part (see workbench.sae.train); else a text file, one text a line."""
    if spec == "default":
        from ..sae.train import default_corpus, split_corpus

        train, test = split_corpus(default_corpus(model, samples, seed=seed), seed=seed)
        return train if part == "train" else test
    return read_texts(spec)


def _check_texts_arg(spec: str) -> None:
    if spec != "default":
        input_file(spec, "texts")


def prepare_training(args, int_args: tuple[str, ...]):
    """What a training verb (`sae train`, `transcoders train`) checks and loads first: its int arguments, lr,
    k <= d_sae, the texts and the resumable output folder (all before any work), then the threads, the model and
    the training texts. Returns (out, model, texts)."""
    import torch

    for name in int_args:
        check_int(getattr(args, name), name)
    checks.learning_rate(args.lr)
    if args.k > args.d_sae:
        raise checks.fail('k', f'k <= d_sae ({args.d_sae})', args.k)
    _check_texts_arg(args.texts)
    out = output_dir(args.out, force=args.force, resumes="config.json")
    torch.set_num_threads(args.threads)
    model = load(args)
    return out, model, _texts(args.texts, model, "train", args.samples, args.seed)[: args.max_texts]


def _cmd_train(args) -> int:
    from ..core.sites import parse_site
    from ..sae.evaluate import evaluate_sae
    from ..sae.train import train_sae

    out, model, texts = prepare_training(args, ("d_sae", "k", "steps", "batch_size", "samples", "threads",
                                                "checkpoint_every", "max_texts"))
    site = parse_site(args.site, model.dims.n_layers)
    sae = train_sae(model, texts, site, d_sae=args.d_sae, k=args.k, steps=args.steps, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, out=out, checkpoint_every=args.checkpoint_every, force=args.force)
    print(f"wrote {out / 'sae'}")
    if args.texts == "default":
        report = evaluate_sae(model, sae, _texts("default", model, "test", args.samples, args.seed), progress=True)
        write_json(out / "eval.json", report, indent=2)
        print(json.dumps(report, indent=2))
    return 0


def evaluate_verb(args, folder: Path, load_from, evaluate, **kw) -> int:
    """The `eval` verbs' shared part (SAEs and transcoders): arguments and --out checked before the model loads,
    then load_from(folder, model), evaluate(model, loaded, texts, batch_size=...), the report printed and written."""
    from ..core.io import atomic_write_text

    check_int(args.batch_size, "batch_size")
    check_int(args.samples, "samples")
    check_int(args.limit, "limit", none_ok=True)
    _check_texts_arg(args.texts)
    out = output_file(args.out, force=args.force) if args.out else None
    model = load(args)
    texts = first(_texts(args.texts, model, "test", args.samples, args.seed), args.limit)
    report = evaluate(model, load_from(folder, model), texts, batch_size=args.batch_size, **kw)
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        atomic_write_text(out, text)
        print(f"wrote {out}")
    return 0


def _cmd_eval(args) -> int:
    from ..sae.evaluate import evaluate_sae
    from ..sae.format import load_sae

    folder = input_folder(args.sae, "sae", "cfg.json")
    return evaluate_verb(args, folder, lambda f, m: load_sae(f, m, allow_other_model=args.allow_other_model),
                         evaluate_sae, progress=True)


def _register_train(subs) -> None:
    s = subs.add_parser("train", help="train a top-k SAE on the model's activations (SAELens's trainer), resumable",
                        description="train a top-k SAE on the model's activations (SAELens's trainer), resumable")
    add_model(s)
    s.add_argument("--site", default="blocks.15.hook_resid_pre", help="TransformerLens hook name of the site")
    s.add_argument("--texts", default="default", help="'default' (model samples + stdlib docstrings + our data "
                                                       "files) or a text file, one text a line")
    s.add_argument("--samples", type=int, default=96, help="sequences the model samples for the default corpus")
    s.add_argument("--d-sae", type=int, default=2048, help="latents of the SAE")
    s.add_argument("--k", type=int, default=48, help="active latents per token (top-k)")
    s.add_argument("--steps", type=int, default=500, help="training steps (a rerun with more steps resumes)")
    s.add_argument("--batch-size", type=int, default=1024, help="token activations per step")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    s.add_argument("--max-texts", "--limit", dest="max_texts", type=int, default=800,
                   help="use the first N training texts (CPU time)")
    s.add_argument("--seed", type=int, default=0, help="seed of the corpus samples and the SAE's initialisation")
    s.add_argument("--checkpoint-every", type=int, default=200, help="save a resumable checkpoint every N steps")
    s.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    s.add_argument("--out", required=True, help="run folder: config.json, activations/, checkpoint/, sae/, eval.json")
    add_force(s)
    s.set_defaults(fn=_cmd_train)


def _register_eval(subs) -> None:
    s = subs.add_parser("eval", help="L0, variance explained, CE loss recovered, dead latents of an SAE",
                        description="L0, variance explained, CE loss recovered, dead latents of an SAE")
    add_model(s)
    s.add_argument("--sae", required=True, help="SAE folder (SAELens format: cfg.json + sae_weights.safetensors)")
    s.add_argument("--texts", default="default", help="'default' (the held-out part of the default corpus) or a "
                                                       "text file, one text a line, or a .jsonl of {\"text\": ...} records")
    add_eval_flags(s, "the SAE")
    s.set_defaults(fn=_cmd_eval)


def add_eval_flags(parser, what: str) -> None:
    """The flags the `eval` verbs share (`evaluate_verb`): the default corpus, batches, --limit,
    --allow-other-model, --out, --force."""
    parser.add_argument("--samples", type=int, default=96, help="sequences the model samples for the default corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default corpus")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    add_limit(parser, "texts")
    add_allow_other_model(parser, what)
    parser.add_argument("--out", default=None, help="JSON file for the numbers (printed either way)")
    add_force(parser)


from .sae_use import register_use  # noqa: E402  (inspect, diff)

SUBVERBS = [_register_train, _register_eval, register_use]  # the `sae` sub-verbs; add a registrar here for a new one


def register(sub) -> None:
    s = sub.add_parser("sae", help="sparse autoencoders: train, eval, inspect, diff (SAELens format)",
                       description="sparse autoencoders: train, eval, inspect, diff (SAELens format)")
    subs = s.add_subparsers(dest="sae_command", required=True)
    for reg in SUBVERBS:
        reg(subs)
