"""Transcoders and attribution graphs on the default model (SmolLM2-135M), on CPU: cost and quality.

Trains one JumpReLU transcoder per layer (30 layers, d_sae 768, k 24; every layer in one pass over the text;
resumable: a run folder that already holds the last checkpoint only converts and evaluates), evaluates it on
held-out text (per-layer FVE / L0 / dead features, CE with every MLP replaced vs clean and zero-ablated), then
builds the graphs of a fact prompt and an IOI prompt (the 128 most influential feature rows), and switches off,
in the real model, the kept feature with the largest direct edge into the top logit (in size, and the largest
positive one): predicted vs measured.

Corpus: the docstrings of Python's standard library and our data files (`workbench.sae.train`), 5 % held out.

    python benchmarks/circuits_default.py --run runs/tc-default --save workbench/data/transcoders/smollm2-135m

rebuilds the set shipped with the package (`workbench.circuits.default_transcoders`: these defaults, float16 on
disk) and evaluates it as loaded.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.circuits import (attribute, evaluate_transcoders, graph_scores, intervene, load_transcoders,
                                prune_graph, save_transcoders, train_transcoders)
from workbench.sae.train import data_file_texts, split_corpus, stdlib_docs

PROMPTS = {"fact": "The Eiffel Tower is in the city of",
           "ioi": "When Mary and John went to the store, John gave a drink to"}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--run", default="runs/tc-default", help="resumable training folder")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--d-sae", type=int, default=768)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--updates-per-step", type=int, default=1)
    ap.add_argument("--texts-per-step", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="also write the set in float16 here (the shipped set: "
                    "workbench/data/transcoders/smollm2-135m)")
    ap.add_argument("--max-feature-nodes", type=int, default=128)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = wb.load_model().to(args.device)
    train, test = split_corpus({"stdlib": stdlib_docs(), "data": data_file_texts()}, seed=0)
    t0 = time.perf_counter()
    tcs = train_transcoders(model, train, d_sae=args.d_sae, k=args.k, steps=args.steps,
                            texts_per_step=args.texts_per_step, lr=args.lr, updates_per_step=args.updates_per_step,
                            out=args.run, checkpoint_every=10, progress=True)
    train_s = time.perf_counter() - t0
    if args.save:  # the shipped set: float16 on disk, evaluated as loaded
        save_transcoders(tcs, model, args.save, weights_dtype=torch.float16)
        tcs = load_transcoders(args.save, model)
    t0 = time.perf_counter()
    ev = evaluate_transcoders(model, tcs, test[:24])
    eval_s = time.perf_counter() - t0
    graphs = {}
    for name, prompt in PROMPTS.items():
        t0 = time.perf_counter()
        g = attribute(model, prompt, tcs, max_feature_nodes=args.max_feature_nodes)
        seconds = time.perf_counter() - t0
        kept = prune_graph(g)
        row = g.adjacency[g.logit_index(0), :g.n_features] * kept.node_mask[:g.n_features]
        top, up = int(row.abs().argmax()), int(row.argmax())
        graphs[name] = {"prompt": prompt, "top_logits": g.meta["logit_str"], "probabilities": g.logit_probabilities.tolist(),
                        "n_features_active": g.n_features, "feature_rows": args.max_feature_nodes,
                        "kept_nodes": int(kept.node_mask.sum()), "kept_edges": int(kept.edge_mask.sum()),
                        "seconds": round(seconds, 1), **graph_scores(g), "top_feature": g.node(top)["label"],
                        "top_feature_direct_edge": float(g.adjacency[g.logit_index(0), top]),
                        "top_feature_off": intervene(model, g, tcs, [top], 0.0),
                        "top_positive_feature": g.node(up)["label"],
                        "top_positive_direct_edge": float(g.adjacency[g.logit_index(0), up]),
                        "top_positive_off": intervene(model, g, tcs, [up], 0.0)}
        print(name, graphs[name])
    result = {**device_meta(args.device), "model": model.name, "n_layers": model.dims.n_layers, "d_sae": args.d_sae,
              "k": args.k, "steps": args.steps, "texts_per_step": args.texts_per_step,
              "updates_per_step": args.updates_per_step, "lr": args.lr, "saved_float16": args.save,
              "train_seconds_this_call": round(train_s, 1), "eval_seconds": round(eval_s, 1),
              "eval": ev, "graphs": graphs}
    write_result(result, "circuits-default", args.device, args.out)
    return result


if __name__ == "__main__":
    main()
