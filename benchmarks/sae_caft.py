"""Reproduction: CAFT with SAE latents, and model diffing through the SAE, on the CAFT gender task.

Same task and recipe as benchmarks/caft.py (data/caft_task.jsonl; LoRA rank 8, 30 steps of 16, lr 1e-3; zero
ablation at every position of `resid_pre`), at the committed SAE's site:

1. Gender latents, chosen without looking at any fine-tune: the latents with the largest standardised
   difference (d') of last-token activation between female and male prompts of the task's "concept" split
   (training words only); the top --n-latents by |d'|.
2. Model diffing: a plain fine-tune (seed 0) against the base model on the training prompts; latents ranked by
   the mean |change| of their last-token activation (`diff_latents`). Where do the gender latents rank, and do
   the most-moved latents separate gender or sentiment (their d' for each)?
3. CAFT with the gender latents' decoder directions projected out (their span, orthonormalised), with as
   many random directions at the same site (control), and with the gender difference-of-means direction at
   the same single site (the probe row at one layer), per seed. The four-layer probe, PCA, plain and
   test-time rows are benchmarks/results/caft-cpu.json's (same task, recipe and seeds), quoted beside them.

    python benchmarks/sae_caft.py [--seeds 0,1,2] [--n-latents 8] [--no-probe]
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

import workbench as wb
from common import device_meta, parser, write_result
from workbench import caft
from workbench.sae import concept_latents, diff_latents, latent_site, latent_subspaces, load_sae, overlap_at

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"plain": 0.083, "caft_pca": 0.637, "caft_sae": 0.760}  # Casademunt et al. 2025, Gemma-2-2B, OOD accuracy


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--sae", default=None, help="an SAE folder (default: the committed one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n-latents", type=int, default=8)
    ap.add_argument("--no-probe", action="store_true", help="skip the one-layer difference-of-means row")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    model = wb.load_model(device=args.device)
    from workbench.sae import DEFAULT_SAE

    sae = load_sae(args.sae or DEFAULT_SAE, model)
    site = latent_site(model, sae)
    task = caft.load_task(wb.data_path("caft_task.jsonl"))
    concept = task["concept"]
    female = [e["prompt"] for e in concept if e["gender"] == "female"]
    male = [e["prompt"] for e in concept if e["gender"] == "male"]
    pos = [e["prompt"] for e in concept if e["sentiment"] == "positive"]
    neg = [e["prompt"] for e in concept if e["sentiment"] == "negative"]
    d_gender, order = concept_latents(model, sae, female, male, read_at=-1)
    d_sent, _ = concept_latents(model, sae, pos, neg, read_at=-1)
    gender = order[:args.n_latents]
    res: dict = {"site": site.name, "d_sae": sae.cfg.d_sae, "seeds": seeds,
                 "gender_latents": [{"latent": i, "dprime_gender": float(d_gender[i]), "dprime_sentiment": float(d_sent[i])}
                                    for i in gender]}
    print("gender latents:", res["gender_latents"])

    # -- model diffing: what did plain fine-tuning move? ------------------------------------------------
    cfg = caft.FinetuneConfig(steps=args.steps)
    plain = caft.finetune(model, task["train"], config=cfg, seed=seeds[0])
    res["plain_seed0"] = {"id_acc": caft.accuracy(plain, task["id_test"]), "ood_acc": caft.accuracy(plain, task["ood_test"])}
    prompts = [e["prompt"] for e in task["train"][:128]]
    diff = diff_latents(model, plain, sae, prompts, read_at=-1)
    res["diff"] = {"rank_by": diff.meta["rank_by"], "n_prompts": len(prompts),
                   "gender_in_top": {n: overlap_at(diff, gender, n) for n in (10, 20, 50)},
                   "top": [{"latent": i, "delta": float(diff.delta[i]), "dprime_gender": float(d_gender[i]),
                            "dprime_sentiment": float(d_sent[i])} for i in diff.order[:20]]}
    top10 = diff.order[:10]
    res["diff"]["top10_mean_abs_dprime"] = {"gender": float(d_gender[top10].abs().mean()),
                                            "sentiment": float(d_sent[top10].abs().mean()),
                                            "all_latents_gender": float(d_gender.abs().mean())}
    print("diff: gender latents' ranks", res["diff"]["gender_in_top"][20]["ranks"], "top 10:", res["diff"]["top"][:10])
    del plain

    # -- CAFT with SAE latents, random, one-layer probe -------------------------------------------------
    subs = latent_subspaces(model, sae, gender)
    conds = {"caft_sae": caft.ablations(subs)}
    if not args.no_probe:
        import probes

        acts = wb.read_activations(model, [e["prompt"] for e in concept], [site.layer], component=site.component)
        probe = probes.train_probes(acts, [e["gender"] for e in concept], method="diffmean")
        conds["caft_probe_1layer"] = caft.ablations(caft.subspaces({site.layer: probe.direction(site.layer)},
                                                                    model.dims.d_model))
    for name in list(conds) + ["random_k"]:
        res[name] = {"id_acc": [], "ood_acc": []}
    for seed in seeds:
        runs = dict(conds, random_k=caft.ablations(caft.random_subspaces(subs, seed=1000 + seed)))
        for name, ablate in runs.items():
            m = caft.finetune(model, task["train"], ablate=ablate, config=cfg, seed=seed)
            res[name]["id_acc"].append(caft.accuracy(m, task["id_test"]))
            res[name]["ood_acc"].append(caft.accuracy(m, task["ood_test"]))
            print(f"seed {seed} {name}: ID {res[name]['id_acc'][-1]:.3f} OOD {res[name]['ood_acc'][-1]:.3f}")
    ref = json.loads((ROOT / "benchmarks" / "results" / "caft-cpu.json").read_text())
    res["reference_rows"] = {k: {"id_acc": ref[k]["id_acc"], "ood_acc": ref[k]["ood_acc"]}
                             for k in ("plain", "caft", "random", "test_time", "caft_pca", "caft_mean") if k in ref}
    res["reference_rows"]["layers"] = ref["config"]["layers"]
    res["runtime_s"] = time.perf_counter() - t0
    res["paper_ood_acc"] = PAPER
    res["config"] = {**cfg.__dict__, "n_latents": args.n_latents}
    res["meta"] = {**device_meta(args.device), "model": model.name, "sae": str(args.sae or DEFAULT_SAE)}
    for c in [k for k in res if isinstance(res[k], dict) and isinstance(res[k].get("ood_acc"), list)]:
        i, o = np.asarray(res[c]["id_acc"]), np.asarray(res[c]["ood_acc"])
        print(f"{c:<18} ID {100 * i.mean():5.1f} +- {100 * i.std():4.1f}   OOD {100 * o.mean():5.1f} +- {100 * o.std():4.1f}")
    print(f"runtime {res['runtime_s']:.0f} s")
    write_result(res, "sae-caft", args.device, args.out)
    return res


if __name__ == "__main__":
    main()
