"""Concept-ablation fine-tuning, the four-way comparison: caft."""
from __future__ import annotations


from .common import add_force, first, input_file, load, names, output_dir, parse_list, verb
from ..core.sites import RESIDUAL_WIDTH
from ..core.io import write_json
from ..core import checks


def _cmd_caft(args) -> int:
    from ..directions import caft
    from ..directions import load as load_directions
    from ..core.io import read_safetensors

    layers = parse_list(args.layers, int, "layers") if args.layers else None
    seeds = parse_list(args.seeds, int, "seeds")
    task = {split: first(rows, args.limit) for split, rows in caft.load_task(input_file(args.task, "task")).items()}
    read_safetensors(input_file(args.directions, "directions"), "directions")  # whole and finite, before loading
    cfg = caft.FinetuneConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                              lora_rank=args.lora_rank)
    cfg.check()
    if args.component not in RESIDUAL_WIDTH:
        raise checks.fail("component", f"one of {names(RESIDUAL_WIDTH)} (a d_model-wide site)", args.component)
    out = output_dir(args.out, force=args.force, writes=["results.json", "caft.png"])
    model = load(args)
    subs = caft.subspaces(load_directions(args.directions, model, layers), model.dims.d_model)
    res = caft.compare(model, task, subs, seeds=seeds, fill=args.fill, component=args.component, config=cfg,
                       progress=True)
    res.update(model=model.name, task=str(args.task), directions=str(args.directions))
    caft.plot_comparison(res, out / "caft.png")
    write_json(out / "results.json", res, indent=2)
    for c, v in caft.summarize(res).items():
        print(f"{c:<10} id {v['id_acc'][0]:.3f} +- {v['id_acc'][1]:.3f}   ood {v['ood_acc'][0]:.3f} +- {v['ood_acc'][1]:.3f}")
    print(f"wrote {out / 'results.json'} and {out / 'caft.png'}")
    return 0


def register(sub) -> None:
    s = verb(sub, "caft", help="concept ablation fine-tuning: plain vs CAFT vs random directions vs test-time ablation")
    s.add_argument("--task", required=True, help="task JSONL (splits train, id_test, ood_test; see workbench.directions.caft)")
    s.add_argument("--directions", required=True,
                   help="safetensors: `layer.<n>` tensors [k, d_model], or one probe `direction` used at every --layers")
    s.add_argument("--limit", type=int, default=None, help="use the first N rows of each split of --task (default: all)")
    s.add_argument("--layers", default=None, help="comma-separated layers to ablate at (default: those in the file)")
    s.add_argument("--component", default="resid_pre",
                   help=f"site component the subspace is projected out of, one of: {names(RESIDUAL_WIDTH)}")
    s.add_argument("--fill", choices=["zero", "mean"], default="zero",
                   help="what replaces the projection: zero, or its mean over the training data")
    s.add_argument("--method", choices=["lora", "full"], default="lora", help="fine-tune LoRA adapters or all weights")
    s.add_argument("--steps", type=int, default=30, help="fine-tuning steps per condition and seed")
    s.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    s.add_argument("--batch-size", type=int, default=16, help="task rows per step")
    s.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA adapters (--method lora)")
    s.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: one fine-tuning per seed and condition")
    s.add_argument("--out", required=True, help="folder for results.json and caft.png")
    add_force(s)
    s.set_defaults(fn=_cmd_caft)
