"""Counterfactual strings on the default model (Ravfogel et al., ICLR 2025, section 5 reproduced CPU-sized):
continuations of prompts that mention an edited subject (France), sampled from the unedited model (Gumbel-max,
temperature 1, full vocabulary), and their counterfactuals under

    rome   ROME "The capital of France is the city of" -> " Rome" (layer 5)
    memit  a MEMIT batch of 5 capital edits, France -> Rome among them (layers 3..7)
    steer  the sentiment steering vector (mean difference, layer 12, x4)
    caft   a second model: the CAFT fine-tune of `benchmarks/caft.py` (LoRA, 30 steps, gender directions
           projected out in training) vs its base (the paper's Llama-3-8B -> Instruct comparison)
    none   no intervention: every counterfactual must equal its observed string

each with the inferred noise (hindsight: the counterfactual) and with fresh noise (the interventional
baseline). Every (condition, noise) runs in its own resumable sweep folder (`counterfactual_sweep`, under
--work), and the summary rows are merged into the result JSON (written atomically), so the conditions can be
run one invocation at a time and a killed run resumes where it stopped:

    PYTHONPATH=. python benchmarks/counterfactual.py --conditions none,rome [--n-per-prompt 20] [--max-new-tokens 10]

Two prompt sets: `--prompt-set topic` (the default: 10 prompts about France x `--n-per-prompt` seeds, written to
counterfactual-<device>.json) and `--prompt-set neutral` (the paper's setting: the first five words of `--n-neutral`
distinct sentences of the shipped fact prompts, `workbench/data/facts.jsonl` and `counterfact.jsonl`, none naming
France, Paris, French or a capital, one seed each; written to counterfactual-neutral-<device>.json). The neutral
prompts run in blocks of `--block` rows, each with its own cached samples and sweep folders, and the JSON is rewritten
after every block: row r keeps the seed r whatever the block, so n rows of a larger run are exactly a run of n, and a
run stopped early reports the blocks it finished. For every condition the hindsight row also holds the next-token TV
between the base and intervened models after each prompt and the exact Gumbel-max prediction of first-token agreement
(`first_token_coupling`) next to the measured rate.

`--model gemma-3-270m` runs on Gemma 3 270M (results named `counterfactual[-neutral]-gemma-3-270m-<device>.json`,
sweep folders under <work>/gemma-3-270m); its ROME edit takes `--stats-corpus facts` (C from the shipped fact
sentences, as `benchmarks/rome_gemma.py`), since sampling C's corpus through its 262k-row unembedding is slow on a CPU.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import workbench as wb
from benchmarks.common import add_model, device_meta, parser, result_name, write_result
from workbench.core.io import atomic_write_text
from workbench.counterfactual import Counterfactuals, Samples, Settings, first_token_coupling, measure, sample, summarize
from workbench.counterfactual.sweep import counterfactual_sweep
from workbench.editing.weights import WeightEdit

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "France is", "Here is a short text about France:", "My trip to France was",
           "People who live in France", "The best thing about France is", "In France, the government",
           "A tourist arriving in France", "The history of France", "Paris, the capital of France,"]
MEMIT_BATCH = [("The capital of France is the city of", "France", " Rome"),
               ("The capital of Germany is the city of", "Germany", " Tokyo"),
               ("The capital of Spain is the city of", "Spain", " Cairo"),
               ("The capital of Japan is the city of", "Japan", " Berlin"),
               ("The capital of Egypt is the city of", "Egypt", " Madrid")]
PAPER = [  # Ravfogel et al. (ICLR 2025), from the authors' released outputs
    {"condition": "paper: MEMIT, GPT2-XL, Louvre -> Rome", "identical": 0.704, "median_prefix_diverging": 0.50,
     "mean_edit": 0.109},
    {"condition": "paper: Llama-3-8B -> Instruct", "identical": 0.002, "median_prefix": 0.242, "mean_edit": 0.588},
]
def neutral_prompts(n: int) -> list[str]:
    """The first five words of n distinct shipped fact sentences (six words or more) that do not name France, Paris,
    French or a capital, in one fixed shuffled order (seed 0): the first n of a larger n are the same prompts."""
    texts = []
    for name in ("facts.jsonl", "counterfact.jsonl"):
        for line in wb.data.data_path(name).read_text().splitlines():
            d = json.loads(line)
            texts += [d["prompt"], *d.get("paraphrases", []), *d.get("paraphrase_prompts", []),
                      *[x["prompt"] for x in d.get("neighborhood", [])]]
    off_topic = re.compile(r"France|Paris|French|capital", re.I)  # the edit: France -> Rome as its capital
    firsts = list(dict.fromkeys(" ".join(t.split()[:5]) for t in texts if len(t.split()) >= 6 and not off_topic.search(t)))
    if n > len(firsts):
        raise ValueError(f"--n-neutral: at most {len(firsts)} distinct prompts, got {n}")
    return [firsts[i] for i in random.Random(0).sample(range(len(firsts)), len(firsts))[:n]]


def cached_samples(model, prompts: list[str], path: Path, seed: int, max_new_tokens: int) -> tuple[Samples, float]:
    """`sample(model, prompts, seed=seed)`, kept in `path` (JSON, written atomically) and read back when the model,
    prompts and settings match; also the seconds it took (0 when read back)."""
    key = {"model": model.name, "fingerprint": model.fingerprint, "prompts": prompts, "seed": seed,
           "max_new_tokens": max_new_tokens}
    if path.is_file():
        d = json.loads(path.read_text())
        if d["key"] == key:
            return Samples(d["prompt_ids"], d["ids"], d["seeds"], Settings(**d["settings"]), d["max_new_tokens"],
                           d["texts"]), 0.0
    t = time.perf_counter()
    obs = sample(model, prompts, max_new_tokens=max_new_tokens, seed=seed)
    secs = time.perf_counter() - t
    atomic_write_text(path, json.dumps({"key": key, **{k: v for k, v in vars(obs).items() if k != "settings"},
                                        "settings": vars(obs.settings)}))
    return obs, secs


def joined(parts: list):
    """Blocks of Samples or Counterfactuals (or first_token_coupling dicts) as one, rows in order."""
    if isinstance(parts[0], dict):
        return {k: [x for p in parts for x in p[k]] for k in parts[0]}
    if isinstance(parts[0], Samples):
        return Samples(*[[x for p in parts for x in getattr(p, f)] for f in ("prompt_ids", "ids", "seeds")],
                       parts[0].settings, parts[0].max_new_tokens, [x for p in parts for x in p.texts])
    return Counterfactuals(**{f: [x for p in parts for x in getattr(p, f)] for f in Counterfactuals.FIELDS},
                           settings=parts[0].settings, meta=parts[-1].meta)


def first_token_rows(c: dict, res) -> dict:
    """Measured first-token agreement of the hindsight counterfactuals next to the exact Gumbel-max predictions
    (`c`: `first_token_coupling` of the observed samples and the intervention)."""
    import math

    n = len(res.ids)
    agree = sum(bool(a) and bool(b) and a[0] == b[0] for a, b in zip(res.observed_ids, res.ids))
    keep = [k for k in c["keep"] if k is not None]
    return {"first_token_agreement": agree / n, "predicted_agreement": sum(c["agreement"]) / n,
            "predicted_keep": sum(keep) / n,
            "predicted_keep_sd": math.sqrt(sum(k * (1 - k) for k in keep)) / n,  # Poisson-binomial sd of the rate
            "tv_mean": sum(c["tv"]) / n, "tv_median": sorted(c["tv"])[n // 2]}


TARGET = {"rome": dict(new="Rome", old="Paris"), "memit": dict(new="Rome", old="Paris")}
NAMES = {"none": "none", "rome": "ROME France -> Rome", "memit": "MEMIT batch of 5 (France -> Rome, ...)",
         "steer": "steering sentiment L12 x4", "caft": "CAFT fine-tune vs base (model B)"}


def intervention(name: str, model, work: Path, stats_tokens: int, stats_corpus: str = "samples",
                 rome_layer: int | None = None):
    """The condition's intervention; weight edits and the fine-tune are saved under `work` and reloaded."""
    if name == "none":
        return None, {}
    if name in ("rome", "memit"):
        folder = work / "edits" / (name if rome_layer is None or name != "rome" else f"rome-l{rome_layer}")
        if (folder / "edit.json").is_file():
            return WeightEdit.load(folder), {}
        t = time.perf_counter()
        stats = {"n_tokens": stats_tokens}
        if stats_corpus != "samples":  # "facts": the shipped fact sentences (benchmarks/rome_gemma.py), or a text file
            from benchmarks.rome_gemma import facts_corpus

            stats["corpus"] = facts_corpus() if stats_corpus == "facts" else stats_corpus
        if name == "rome":
            edit = wb.editing.rome(model, wb.editing.EditRequest(*MEMIT_BATCH[0]), layer=rome_layer, stats=stats)
        else:
            edit = wb.editing.memit(model, [wb.editing.EditRequest(*r) for r in MEMIT_BATCH], stats=stats)
        edit.save(folder)
        return edit, {"edit_seconds": time.perf_counter() - t}
    if name == "steer":
        from workbench.steering import build_steering_vector, load_pairs

        pos, neg = load_pairs(wb.data.data_path("steering/sentiment_pairs.jsonl"))
        return build_steering_vector(model, pos, neg, layers=[12], method="mean_diff", read_at=-1).interventions(
            model, 4.0), {}
    if name == "caft":
        import probes
        from workbench.directions import caft

        t = time.perf_counter()
        layers = [6, 10, 14, 18]
        task = caft.load_task(wb.data.data_path("caft_task.jsonl"))
        acts = wb.directions.read_activations(model, [e["prompt"] for e in task["concept"]], layers)
        probe = probes.train_probes(acts, [e["gender"] for e in task["concept"]], method="diffmean")
        subs = caft.subspaces({l: probe.direction(l) for l in layers}, model.dims.d_model)
        tuned = caft.finetune(model, task["train"], ablate=caft.ablations(subs, fill="zero"),
                              config=caft.FinetuneConfig(steps=30), seed=0)
        tuned.name = "smollm2-135m+caft"
        return tuned, {"finetune_seconds": time.perf_counter() - t,
                       "ood_acc": caft.accuracy(tuned, task["ood_test"])}
    raise ValueError(f"conditions: unknown {name!r}; expected some of {list(NAMES)}")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--conditions", default="none,rome,memit,steer,caft")
    ap.add_argument("--noises", default="posterior,fresh")
    ap.add_argument("--n-per-prompt", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--note", default=None, help="stored with the results (e.g. the machine's load)")
    ap.add_argument("--prompt-set", default="topic", choices=["topic", "neutral"])
    ap.add_argument("--n-neutral", type=int, default=500, help="neutral prompts (one seed each)")
    ap.add_argument("--block", type=int, default=100, help="neutral prompts per resumable block")
    ap.add_argument("--stats-tokens", type=int, default=4096, help="tokens for ROME's / MEMIT's key statistics C")
    ap.add_argument("--stats-corpus", default="samples", help='C\'s corpus: "samples", "facts" or a text file')
    ap.add_argument("--rome-layer", type=int, default=None, help="ROME's layer (default: the model's default layer)")
    ap.add_argument("--work", default=str(ROOT / "out" / "counterfactual-bench"), help="sweep folders, edits")
    add_model(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = wb.load_model(args.model).to(args.device)
    work = Path(args.work) if args.model == "smollm2-135m" else Path(args.work) / model.name
    prompts = ([p for p in PROMPTS for _ in range(args.n_per_prompt)] if args.prompt_set == "topic"
               else neutral_prompts(args.n_neutral))
    tag = result_name("counterfactual" if args.prompt_set == "topic" else "counterfactual-neutral", model.name)
    # the topic set is one block; neutral blocks of --block rows (row r keeps seed r: see the module docstring)
    starts = [0] if args.prompt_set == "topic" else list(range(0, len(prompts), args.block))
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{tag}-{args.device}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    ivs = {}
    for name in args.conditions.split(","):
        ivs[name] = intervention(name, model, work, args.stats_tokens, args.stats_corpus, args.rome_layer)
    obs_parts, res_parts, coupling_parts, sample_secs = [], {}, {}, []
    for b, start in enumerate(starts):
        stop = len(prompts) if args.prompt_set == "topic" else min(len(prompts), start + args.block)
        block = "" if args.prompt_set == "topic" else f"rows{start}"
        obs, secs = cached_samples(model, prompts[start:stop], work / f"{args.prompt_set}-samples" / f"{block or 'all'}.json",
                                   start, args.max_new_tokens)
        obs_parts.append(obs)
        if secs:
            sample_secs.append(secs * 100 / (stop - start))
        done = stop
        config = {"model": model.name, "prompts": PROMPTS if args.prompt_set == "topic" else prompts[:done], "n": done,
                  "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "stats_tokens": args.stats_tokens,
                  "stats_corpus": args.stats_corpus, "rome_layer": args.rome_layer, "memit_batch": MEMIT_BATCH, **device_meta(args.device)}
        # as read back from JSON (tuples become lists); versions were added to the device metadata later
        same = lambda c: {k: v for k, v in json.loads(json.dumps(c)).items() if k != "versions"}  # noqa: E731
        keep = same(old.get("config", {})) == same(config)
        result = {"config": config, "paper": PAPER, "rows": old.get("rows", []) if keep else [],
                  "examples": old.get("examples", {}) if keep else {},
                  "intervention_meta": old.get("intervention_meta", {}) if keep else {}}
        result["sample_seconds_per_100"] = (sum(sample_secs) / len(sample_secs) if sample_secs
                                            else old.get("sample_seconds_per_100"))
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]  # 1/5/15 min, when this block finished
        result["note"] = args.note or old.get("note", "")
        for name, (iv, info) in ivs.items():
            result["intervention_meta"][name] = {**result["intervention_meta"].get(name, {}), **info}
            for noise in args.noises.split(","):
                if name == "none" and noise == "fresh":
                    continue
                t = time.perf_counter()
                folder = work / f"{args.prompt_set}-{name}-{noise}" / block
                part = counterfactual_sweep(folder, model, None, obs, iv, noise=noise,
                                            seed=start + (0 if noise == "posterior" else 10_000), chunk=20)
                res_parts.setdefault((name, noise), []).append(part)
                if noise == "posterior":
                    coupling_parts.setdefault(name, []).append(first_token_coupling(model, obs, iv))
                res = joined(res_parts[(name, noise)])
                all_obs = joined(obs_parts)
                # seconds per 100 of this block (a resumed sweep counts only what it computed; see `computed_here`)
                secs = (time.perf_counter() - t) * 100 / (stop - start)
                df = measure(res, **TARGET.get(name, {}))
                s = summarize(df)
                if name == "steer":  # share of continuations the unsteered model rates positive
                    from workbench.steering import SENTIMENT_TEMPLATE
                    from workbench.steering.behaviour import log_odds_classifier

                    classify = log_odds_classifier(model, SENTIMENT_TEMPLATE, " positive", " negative")
                    s["positive_observed"] = float((torch.tensor(classify(None, res.observed)) > 0).float().mean())
                    s["positive_after"] = float((torch.tensor(classify(None, res.texts)) > 0).float().mean())
                if noise == "posterior":
                    s.update(first_token_rows(joined(coupling_parts[name]), res))
                if name in TARGET:
                    s["new_in_observed"] = float(sum(TARGET[name]["new"] in o for o in all_obs.texts) / done)
                    s["old_in_observed"] = float(sum(TARGET[name]["old"] in o for o in all_obs.texts) / done)
                s.update(condition=NAMES[name], key=name, noise=noise, seconds_per_100=secs)
                result["rows"] = [r for r in result["rows"] if (r.get("key"), r["noise"]) != (name, noise)] + [s]
                print(json.dumps(s), flush=True)
                if noise == "posterior":
                    result["examples"][name] = df[["prompt", "observed", "counterfactual"]].head(6).to_dict("records")
        old = result
        write_result(result, tag, args.device, args.out)


if __name__ == "__main__":
    main()
