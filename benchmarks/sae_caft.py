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

The control rows (one-layer probe, random) need only the SAE's site and the number of latents; `--part controls
--layer 15` runs them alone (to sae-caft-controls-<device>.json), and `--part sae` then runs the rest and takes
the controls from that file when its settings match.
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
from workbench.directions import caft
from workbench.core.sites import Site
from workbench.sae import concept_latents, diff_latents, latent_site, latent_subspaces, load_sae, overlap_at

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"plain": 0.083, "caft_pca": 0.637, "caft_sae": 0.760}  # Casademunt et al. 2025, Gemma-2-2B, OOD accuracy


def run_condition(model, task, ablate, seeds, cfg, name) -> dict:
    out = {"id_acc": [], "ood_acc": []}
    for seed in seeds:
        m = caft.finetune(model, task["train"], ablate=ablate, config=cfg, seed=seed)
        out["id_acc"].append(caft.accuracy(m, task["id_test"]))
        out["ood_acc"].append(caft.accuracy(m, task["ood_test"]))
        print(f"seed {seed} {name}: ID {out['id_acc'][-1]:.3f} OOD {out['ood_acc'][-1]:.3f}")
    return out


def controls(model, task, site, k, seeds, cfg, probe_row: bool) -> dict:
    """CAFT with k random orthonormal directions at `site` (seed 1000 + s), and with the gender difference of means
    at `site` alone (the probe row at one layer)."""
    out = {"random_k": {"id_acc": [], "ood_acc": []}}
    for seed in seeds:
        rand = caft.random_subspaces({site.layer: torch.zeros(k, model.dims.d_model)}, seed=1000 + seed)
        r = run_condition(model, task, caft.ablations(rand, component=site.component), [seed], cfg, "random_k")
        for key in r:
            out["random_k"][key] += r[key]
    if probe_row:
        import probes

        concept = task["concept"]
        acts = wb.directions.read_activations(model, [e["prompt"] for e in concept], [site.layer], component=site.component)
        probe = probes.train_probes(acts, [e["gender"] for e in concept], method="diffmean")
        subs = caft.subspaces({site.layer: probe.direction(site.layer)}, model.dims.d_model)
        out["caft_probe_1layer"] = run_condition(model, task, caft.ablations(subs, component=site.component), seeds, cfg,
                                                 "caft_probe_1layer")
    return out


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--sae", default=None, help="an SAE folder (default: the committed one)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n-latents", type=int, default=8)
    ap.add_argument("--no-probe", action="store_true", help="skip the one-layer difference-of-means row")
    ap.add_argument("--part", choices=["all", "controls", "sae"], default="all")
    ap.add_argument("--layer", type=int, default=None, help="with --part controls: the SAE's layer (resid_pre)")
    ap.add_argument("--plain", default=None, help="a Hugging Face folder of the plain fine-tune (seed 0) to diff, "
                                                  "written there by --part controls, read by --part sae")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    model = wb.load_model(device=args.device)
    task = caft.load_task(wb.data.data_path("caft_task.jsonl"))
    concept = task["concept"]
    cfg = caft.FinetuneConfig(steps=args.steps)
    controls_path = ROOT / "benchmarks" / "results" / f"sae-caft-controls-{args.device}.json"
    settings = {"seeds": seeds, "steps": args.steps, "n_latents": args.n_latents}
    if args.part == "controls":
        if args.layer is None:
            raise ValueError("layer: --part controls needs the SAE's --layer")
        site = Site(args.layer, "resid_pre")
        res = {"site": site.name, **settings}
        if args.plain:
            plain = caft.finetune(model, task["train"], config=cfg, seed=seeds[0])
            plain.hf.save_pretrained(args.plain)
            plain.tokenizer.save_pretrained(args.plain)
        res.update(controls(model, task, site, args.n_latents, seeds, cfg, not args.no_probe))
        write_result(res, "sae-caft-controls", args.device, None)
        return res

    sae = load_sae(args.sae, model) if args.sae else wb.sae.default_sae(model)
    site = latent_site(model, sae)
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
    if args.plain and Path(args.plain).is_dir():
        plain = wb.load_model(args.plain, device=args.device)
    else:
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

    # -- CAFT with SAE latents (and the controls, unless already run with these settings) -----------------
    subs = latent_subspaces(model, sae, gender)
    res["caft_sae"] = run_condition(model, task, caft.ablations(subs), seeds, cfg, "caft_sae")
    done = json.loads(controls_path.read_text()) if controls_path.is_file() else {}
    if args.part == "sae" and done.get("site") == site.name and len(subs[site.layer]) == args.n_latents and all(
            done.get(k) == v for k, v in settings.items()):
        res.update({k: done[k] for k in ("random_k", "caft_probe_1layer") if k in done})
        res["controls_from"] = controls_path.name
    else:
        res.update(controls(model, task, site, len(subs[site.layer]), seeds, cfg, not args.no_probe))
    ref = json.loads((ROOT / "benchmarks" / "results" / "caft-cpu.json").read_text())
    res["reference_rows"] = {k: {"id_acc": ref[k]["id_acc"], "ood_acc": ref[k]["ood_acc"]}
                             for k in ("plain", "caft", "random", "test_time", "caft_pca", "caft_mean") if k in ref}
    res["reference_rows"]["layers"] = ref["config"]["layers"]
    res["runtime_s"] = time.perf_counter() - t0
    res["paper_ood_acc"] = PAPER
    res["config"] = {**cfg.__dict__, "n_latents": args.n_latents}
    res["meta"] = {**device_meta(args.device), "model": model.name, "sae": str(args.sae or "the committed SAE"),
                   "sae_metadata": {k: str(v) for k, v in dict(sae.cfg.metadata.items()).items()
                                    if k in ("hook_name", "model_name", "workbench_fingerprint")}}
    for c in [k for k in res if isinstance(res[k], dict) and isinstance(res[k].get("ood_acc"), list)]:
        i, o = np.asarray(res[c]["id_acc"]), np.asarray(res[c]["ood_acc"])
        print(f"{c:<18} ID {100 * i.mean():5.1f} +- {100 * i.std():4.1f}   OOD {100 * o.mean():5.1f} +- {100 * o.std():4.1f}")
    print(f"runtime {res['runtime_s']:.0f} s")
    write_result(res, "sae-caft", args.device, args.out)
    return res


if __name__ == "__main__":
    main()
