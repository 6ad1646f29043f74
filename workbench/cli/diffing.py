"""`workbench diff BASE FINETUNED --out DIR`: one report on what a fine-tune changed (workbench.diffing.model_diff):
TuCo by layer, intruder dimensions, the cross-model patching grid, the most moved crosscoder latents, the
activation-difference lens, the most moved SAE latents, counterfactual strings base -> fine-tuned with the exact first-token agreement."""
from __future__ import annotations

import re

from .common import MODEL_HELP, add_force, add_model, check_int, load, output_dir, read_texts
from ..core import checks

WRITES = ["report.json", "report.html"]


def _cmd_diff(args) -> int:
    from ..diffing import model_diff

    prompts = read_texts(args.prompts, "prompts")[: check_int(args.limit, "limit")]
    corpus = read_texts(args.corpus, "corpus")[: check_int(args.corpus_limit, "corpus_limit")] if args.corpus else None
    for name in ("steps", "samples", "max_new_tokens", "k"):
        check_int(getattr(args, name), name)
    check_int(args.layer, "layer", 0, none_ok=True)
    if args.matrices is not None:
        try:
            re.compile(args.matrices)
        except re.error as e:
            raise checks.fail("matrices", f"a regular expression ({e})", args.matrices) from None
    out = output_dir(args.out, force=args.force, writes=WRITES)
    base = load(args, "base")
    tuned = load(args, "finetuned")
    r = model_diff(base, tuned, prompts, layer=args.layer, corpus=corpus, k=args.k, steps=args.steps,
                   n_samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed,
                   patching=not args.no_patching, crosscoder=not args.no_crosscoder,
                   sae=None if args.sae == "none" else args.sae, matrices=args.matrices, progress=True)
    r.save(out)
    a = r.agreement
    print(f"TuCo (mean over prompts) {float(r.tuco.tuco.mean()):.3f}; intruder dimensions {r.weights.total_intruders}; "
          f"first-token agreement measured {a['measured']:.3f}, exact {a['exact']:.3f} (n={a['n']})")
    print(f"wrote {', '.join(WRITES)} to {out}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("diff", help="what fine-tuning changed: one HTML report for a base / fine-tuned pair",
                       description="what fine-tuning changed: one HTML report for a base / fine-tuned pair")
    add_model(s, "base", help="the base model: " + MODEL_HELP)
    s.add_argument("finetuned", help="the fine-tuned model (same forms), of the same architecture and tokenizer")
    s.add_argument("--prompts", default="data/caft_task.jsonl", help="text file (one per line) or JSONL with 'prompt'")
    s.add_argument("--limit", type=int, default=8, help="use the first N prompts")
    s.add_argument("--corpus", default=None, help="texts for the crosscoder and the lens (default: the prompts)")
    s.add_argument("--corpus-limit", type=int, default=200, help="use the first N corpus texts")
    s.add_argument("--layer", type=int, default=None, help="layer the crosscoder and the lens read (default: middle)")
    s.add_argument("--k", type=int, default=8, help="BatchTopK k of the crosscoder")
    s.add_argument("--steps", type=int, default=600, help="crosscoder training steps")
    s.add_argument("--samples", type=int, default=8, help="observed strings sampled from the base model per prompt")
    s.add_argument("--max-new-tokens", type=int, default=12, help="length of each observed string")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampled strings and the crosscoder")
    s.add_argument("--no-patching", action="store_true", help="skip the cross-model patching grid")
    s.add_argument("--no-crosscoder", action="store_true", help="skip the crosscoder")
    s.add_argument("--matrices", default=None, help="a regular expression on the block-relative module names whose "
                   "weights are diffed, e.g. down_proj (default: every matrix)")
    s.add_argument("--sae", default="default", help="SAE folder of the base model whose most moved latents are "
                   "reported; 'default': the shipped SAE when BASE is the default model; 'none': no SAE section")
    s.add_argument("--out", required=True, help="folder for report.json and report.html")
    add_force(s)
    s.set_defaults(fn=_cmd_diff)
