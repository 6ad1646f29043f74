"""Reproduction: concept ablation fine-tuning (CAFT) on the default model (or --model), CPU-sized.

Task `data/caft_task.jsonl` (written by data/make_caft_task.py): label = sentiment of a short sentence;
the gender of the person (title Mr / Mrs and first name) is perfectly correlated with it in training
and in the in-distribution test, and anti-correlated in the out-of-distribution test.

Concept directions: the gender direction per layer, as the difference of means of the base model's
last-token `resid_pre` between female and male prompts of the task's "concept" split (training words
only), via `probes`. Conditions, per seed (LoRA, rank 8, 30 steps of 16): plain fine-tuning; CAFT
(the gender directions projected out at --layers during training); CAFT with as many random
directions; the plain model with the gender directions projected out at test time only.
With --pca, also CAFT with PCA directions (CAFT's own recipe: PCA of fine-tuned minus base
activations of a plain fine-tuned model (seed 0); components chosen by inspecting their top-activating
tokens, printed and saved with the results; PCA_CHOICE below for the default model, or --pca-choice).

With --mean, also CAFT with mean instead of zero ablation of the same directions.

Layers: by default four, evenly spaced from 1/5 to 3/5 of the depth (`default_layers`; 6,10,14,18 of
SmolLM2-135M's 30, 4,6,8,11 of Gemma 3 270M's 18).

    python benchmarks/caft.py [--model gemma-3-270m] [--seeds 0,1,2] [--layers 6,10,14,18] [--pca] [--mean]
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import torch

import probes
import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
from workbench.directions import caft

ROOT = Path(__file__).resolve().parent.parent
# The PCA components ablated with --pca, chosen once by inspecting their top-activating tokens (names)
# and their separation of gender vs sentiment at the last token, both printed by this script: those
# that separate gender by at least 0.5 standard deviations and by 0.3 more than sentiment.
PCA_CHOICE = {6: [1], 10: [3, 4], 14: [1, 2], 18: [2, 3, 4]}  # SmolLM2-135M's default layers
PAPER = {  # Casademunt et al. (2025), Gemma-2-2B, gender/profession pronoun task, OOD accuracy
    "plain": 0.083, "caft_pca": 0.637, "caft_sae": 0.760,
}


def default_layers(n_layers: int) -> list[int]:
    """Four layers evenly spaced from 1/5 to 3/5 of the depth: round(n_layers * f), f = 1/5, 1/3, 7/15, 3/5."""
    return [round(n_layers * f) for f in np.linspace(0.2, 0.6, 4)]


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: default_layers of the model)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--fill", default="zero", choices=["zero", "mean"])
    ap.add_argument("--pca", action="store_true", help="also CAFT with PCA directions")
    ap.add_argument("--pca-choice", default=None, help='JSON {layer: [component, ...]} of the PCs to ablate')
    ap.add_argument("--mean", action="store_true", help="also CAFT with mean ablation of the same directions")
    ap.add_argument("--skip-first", type=int, default=0,
                    help="leave the first N positions unablated in every condition (1: Gemma 3's <bos> attention sink)")
    add_model(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    model = wb.load_model(args.model, device=args.device)
    layers = [int(l) for l in args.layers.split(",")] if args.layers else default_layers(model.dims.n_layers)
    if args.pca and not args.pca_choice and sorted(PCA_CHOICE) != layers:
        raise SystemExit(f"--pca-choice: PCA_CHOICE was chosen for layers {sorted(PCA_CHOICE)}; these are {layers}: "
                         "run once, inspect the printed components, and pass --pca-choice")
    task = caft.load_task(wb.data.data_path("caft_task.jsonl"))

    concept = task["concept"]
    acts = wb.directions.read_activations(model, [e["prompt"] for e in concept], layers)
    gender = [e["gender"] for e in concept]
    probe = probes.train_probes(acts, gender, method="diffmean")
    logreg = probes.train_probes(acts, gender, method="logreg")
    subs = caft.subspaces({l: probe.direction(l) for l in layers}, model.dims.d_model)
    cfg = caft.FinetuneConfig(steps=args.steps)
    res = caft.compare(model, task, subs, seeds=seeds, fill=args.fill, config=cfg, skip_first=args.skip_first)
    res["probe_accuracy"] = {"diffmean": dict(zip(map(str, layers), probe.test_acc.tolist())),
                             "logreg": dict(zip(map(str, layers), logreg.test_acc.tolist()))}

    if args.pca:
        plain = caft.finetune(model, task["train"], config=cfg, seed=seeds[0])
        pca = caft.pca_directions(model, plain, [e["prompt"] for e in task["train"][:128]], layers)
        res["pca_components"] = {str(l): pca.describe(l) for l in layers}
        for l in layers:
            print(pca.describe(l))
        # separation of the two concepts along each component at the last token (concept split), to help the choice
        g = torch.tensor([x == "female" for x in gender])
        s = torch.tensor([e["sentiment"] == "positive" for e in concept])
        sep = {}
        for l in layers:
            proj = acts[l] @ pca.components[l].T
            sep[str(l)] = {name: [round(float(x), 2) for x in (proj[y].mean(0) - proj[~y].mean(0)) / proj.std(0)]
                           for name, y in (("gender", g), ("sentiment", s))}
            print(f"layer {l}: separation per PC {sep[str(l)]}")
        res["pca_separation"] = sep
        choice = {int(k): v for k, v in json.loads(args.pca_choice).items()} if args.pca_choice else PCA_CHOICE
        pca_subs = caft.subspaces(pca.directions(choice), model.dims.d_model)
        concept_ablation = caft.ablations(pca_subs, fill="zero", skip_first=args.skip_first)
        res["caft_pca"] = {"id_acc": [], "ood_acc": [], "choice": {str(k): v for k, v in choice.items()}}
        for seed in seeds:
            m = caft.finetune(model, task["train"], ablate=concept_ablation, config=cfg, seed=seed)
            res["caft_pca"]["id_acc"].append(caft.accuracy(m, task["id_test"]))
            res["caft_pca"]["ood_acc"].append(caft.accuracy(m, task["ood_test"]))

    if args.mean:  # the CAFT critique's variant: fill the ablated subspace with the mean activation
        means = caft.mean_activations(model, [e["prompt"] for e in task["train"]], layers)
        mean_ablation = caft.ablations(subs, fill="mean", means=means, skip_first=args.skip_first)
        res["caft_mean"] = {"id_acc": [], "ood_acc": []}
        for seed in seeds:
            m = caft.finetune(model, task["train"], ablate=mean_ablation, config=cfg, seed=seed)
            res["caft_mean"]["id_acc"].append(caft.accuracy(m, task["id_test"]))
            res["caft_mean"]["ood_acc"].append(caft.accuracy(m, task["ood_test"]))

    res["runtime_s"] = time.perf_counter() - t0
    res["paper_ood_acc"] = PAPER
    res["meta"] = {**device_meta(args.device), "model": model.name, "n_train": len(task["train"]),
                   "n_id_test": len(task["id_test"]), "n_ood_test": len(task["ood_test"]),
                   "directions": "difference of means of gender at the last token (probes, concept split)"}
    conds = [c for c in ("plain", "caft", "random", "test_time", "caft_pca", "caft_mean") if c in res]
    for c in conds:
        i, o = np.asarray(res[c]["id_acc"]), np.asarray(res[c]["ood_acc"])
        print(f"{c:<10} ID {100 * i.mean():5.1f} +- {100 * i.std():4.1f}   OOD {100 * o.mean():5.1f} +- {100 * o.std():4.1f}")
    print(f"runtime {res['runtime_s']:.0f} s")
    name = result_name("caft", model.name) + (f"-skip{args.skip_first}" if args.skip_first else "")
    caft.plot_comparison(res, Path(args.out or ROOT / "benchmarks" / "results" / f"{name}-{args.device}.json").with_suffix(".png"),
                         title=f"CAFT on {model.name}: sentiment label, spurious gender")
    write_result(res, name, args.device, args.out)
    return res


if __name__ == "__main__":
    main()
