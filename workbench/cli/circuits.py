"""Circuits: `workbench transcoders train|eval` and `workbench graph` (attribution graphs over transcoders)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_allow_other_model, add_force, add_model, check_float, check_int, load, output_dir
from .sae import _texts, add_eval_flags, evaluate_verb, prepare_training
from ..core import checks


def _cmd_train(args) -> int:
    from ..circuits import evaluate_transcoders, train_transcoders
    from ..core.io import atomic_write_text

    out, model, texts = prepare_training(args, ("d_sae", "k", "steps", "texts_per_step", "samples", "threads",
                                                "checkpoint_every", "max_texts", "updates_per_step"))
    tcs = train_transcoders(model, texts, d_sae=args.d_sae, k=args.k, steps=args.steps,
                            texts_per_step=args.texts_per_step, lr=args.lr, skip=args.skip, seed=args.seed, out=out,
                            updates_per_step=args.updates_per_step, kind=args.kind,
                            checkpoint_every=args.checkpoint_every, force=args.force)
    print(f"wrote {out / ('clt' if args.kind == 'clt' else 'transcoders')}")
    if args.texts == "default" and args.kind == "per_layer":  # the per-layer evaluation (a CLT has none yet)
        report = evaluate_transcoders(model, tcs, _texts("default", model, "test", args.samples, args.seed)[:48], progress=True)
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k != "layers"}, indent=2))
    return 0


def _cmd_eval(args) -> int:
    from ..circuits import evaluate_transcoders, load_transcoders

    if not Path(args.transcoders).is_dir():
        raise checks.fail('transcoders', 'a folder written by `workbench transcoders train`', args.transcoders)
    return evaluate_verb(args, args.transcoders,
                         lambda f, m: load_transcoders(f, m, allow_other_model=args.allow_other_model), evaluate_transcoders,
                         progress=True)


def _cmd_graph(args) -> int:
    import time

    from ..circuits import (LOGIT_TARGETS, attribute, default_transcoders, feature_labels, graph_scores, graph_view,
                            intervene, load_transcoders, prune_graph, save_graph, to_circuit_tracer_json)
    from ..core.io import atomic_write_text
    from ..views import save_html

    if not isinstance(args.prompt, str) or not args.prompt:
        raise checks.fail("prompt", "a non-empty string", args.prompt)
    check_int(args.max_logits, "max_logits")
    check_int(args.batch_size, "batch_size")
    check_int(args.max_feature_nodes, "max_feature_nodes", none_ok=True)
    for name in ("node_threshold", "edge_threshold"):
        v = check_float(getattr(args, name), name)
        if not 0 <= v <= 1:
            raise checks.fail(name, 'a share in [0, 1]', v)
    if args.logit_target not in LOGIT_TARGETS:
        raise checks.fail("logit_target", f"one of {LOGIT_TARGETS}", args.logit_target)
    if args.transcoders != "default" and not Path(args.transcoders).is_dir():
        raise checks.fail("transcoders", "a folder written by `workbench transcoders train` (or 'default', the shipped "
                          "set)", args.transcoders)
    writes = ["graph.safetensors", "graph.json", "graph.html", "circuit_tracer.json", "summary.json"]
    out = output_dir(args.out, force=args.force, writes=writes)
    model = load(args)
    tcs = default_transcoders(model) if args.transcoders == "default" else \
        load_transcoders(args.transcoders, model, allow_other_model=args.allow_other_model)
    t0 = time.perf_counter()
    g = attribute(model, args.prompt, tcs, max_logits=args.max_logits, batch_size=args.batch_size,
                  max_feature_nodes=args.max_feature_nodes, logit_target=args.logit_target, progress=True)
    seconds = time.perf_counter() - t0
    kept = prune_graph(g, args.node_threshold, args.edge_threshold)
    save_graph(g, out)
    labels = feature_labels(model, tcs, g, texts=[args.prompt], nodes=kept.subgraph_nodes())
    save_html(graph_view(g, kept, labels), out / "graph.html")
    to_circuit_tracer_json(g, out / "circuit_tracer.json", node_threshold=args.node_threshold,
                           edge_threshold=args.edge_threshold)
    # the kept feature with the largest direct edge into the top logit, switched off in the real model
    row = g.adjacency[g.logit_index(0), :g.n_features] * kept.node_mask[:g.n_features]
    summary = {"prompt": args.prompt, "n_features": g.n_features, "n_nodes": g.n_nodes,
               "kept_nodes": int(kept.node_mask.sum()), "kept_edges": int(kept.edge_mask.sum()),
               "feature_rows": len(g.meta["rows"]) - len(g.logit_tokens), "attribution_seconds": round(seconds, 2),
               "top_logits": g.meta["logit_str"], "probabilities": g.logit_probabilities.tolist(), **graph_scores(g)}
    if g.n_features and row.abs().max() > 0:
        top = int(row.abs().argmax())
        summary["top_feature"] = g.node(top)["label"]
        summary["top_feature_off"] = intervene(model, g, tcs, [top], 0.0)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    t = sub.add_parser("transcoders", help="per-layer transcoders (SAELens format): train, eval",
                       description="per-layer transcoders (SAELens format): train, eval")
    subs = t.add_subparsers(dest="transcoders_command", required=True)
    s = subs.add_parser("train", help="train one transcoder per layer in one pass over the text, resumable",
                        description="train one transcoder per layer in one pass over the text, resumable")
    add_model(s)
    s.add_argument("--texts", default="default", help="'default' (the SAE training corpus) or a text file, one a line")
    s.add_argument("--samples", type=int, default=96, help="sequences the model samples for the default corpus")
    s.add_argument("--d-sae", type=int, default=768, help="latents per transcoder")
    s.add_argument("--k", type=int, default=24, help="active latents per token (BatchTopK while training)")
    s.add_argument("--steps", type=int, default=300, help="training steps (a rerun with more steps resumes)")
    s.add_argument("--texts-per-step", type=int, default=8, help="texts whose tokens make one step's batch")
    s.add_argument("--updates-per-step", type=int, default=1, help="Adam updates per forward, each on a share of "
                   "the step's tokens")
    s.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    s.add_argument("--kind", choices=["per_layer", "clt"], default="per_layer",
                   help="per_layer: one transcoder per MLP; clt: one cross-layer transcoder (no --skip)")
    s.add_argument("--skip", action="store_true", help="add a linear skip connection (JumpReLUSkipTranscoder)")
    s.add_argument("--max-texts", "--limit", dest="max_texts", type=int, default=2000,
                   help="use the first N training texts (CPU time)")
    s.add_argument("--seed", type=int, default=0, help="seed of the corpus samples and the initialisation")
    s.add_argument("--checkpoint-every", type=int, default=25, help="save a resumable checkpoint every N steps")
    s.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    s.add_argument("--out", required=True, help="run folder: config.json, checkpoint/, transcoders/, eval.json")
    add_force(s)
    s.set_defaults(fn=_cmd_train)
    e = subs.add_parser("eval", help="per-layer FVE, L0, dead features; CE with every MLP replaced",
                        description="per-layer FVE, L0, dead features; CE with every MLP replaced")
    add_model(e)
    e.add_argument("--transcoders", required=True, help="folder written by `transcoders train` (its transcoders/)")
    e.add_argument("--texts", default="default", help="'default' (the held-out part of the default corpus) or a text "
                                                       "file, one text a line")
    add_eval_flags(e, "the transcoders")
    e.set_defaults(fn=_cmd_eval)

    g = sub.add_parser("graph", help="attribution graph of a prompt over per-layer transcoders: view, JSON, scores",
                       description="attribution graph of a prompt over per-layer transcoders: view, JSON, scores")
    g.add_argument("prompt", help="the prompt whose next-token prediction is explained")
    add_model(g)
    g.add_argument("--transcoders", required=True, help="folder written by `transcoders train` (its transcoders/), "
                   "or 'default': the set shipped for the default model")
    add_allow_other_model(g, "the transcoders")
    g.add_argument("--logit-target", default="demeaned", help="each logit node's target: 'demeaned' (the logit minus "
                   "the mean logit, circuit-tracer's) or 'raw'")
    g.add_argument("--max-logits", type=int, default=5, help="at most N logit nodes (the most likely next tokens)")
    g.add_argument("--batch-size", type=int, default=32, help="target nodes per backward pass")
    g.add_argument("--max-feature-nodes", type=int, default=None,
                   help="compute the incoming edges of at most N features, the most influential first")
    g.add_argument("--node-threshold", type=float, default=0.8,
                   help="pruning: keep the nodes that carry this share of the influence on the logits")
    g.add_argument("--edge-threshold", type=float, default=0.98, help="pruning: keep the edges that carry this share")
    g.add_argument("--out", required=True, help="folder: graph.safetensors/.json, graph.html, circuit_tracer.json, "
                                                "summary.json")
    add_force(g)
    g.set_defaults(fn=_cmd_graph)
