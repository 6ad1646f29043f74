"""Graph files: our own (safetensors + JSON, nothing unpickled) and circuit-tracer's graph JSON.

circuit-tracer's JSON (`circuit_tracer.frontend.graph_models.Model`, what Neuronpedia-style front ends read):
{"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold}, "qParams": {...},
 "nodes": [{node_id, feature, layer, ctx_idx, feature_type, jsNodeId, clerp, influence, activation, ...}],
 "links": [{source, target, weight}]}, with node ids "<layer>_<feature>_<pos>" (features),
"0_<layer>_<pos>" (errors), "E_<token id>_<pos>" (embeddings) and "<n_layers + 1>_<token id>_<pos>" (logits); where an error id would equal a layer-0 feature's, "_error" is
appended to it.
"""
from __future__ import annotations

import json
from pathlib import Path


from ..core.io import atomic_write_text, save_safetensors
from .graph import Graph, prune_graph

GRAPH_TENSORS = ("tokens", "active_features", "activation_values", "adjacency", "bias", "target_values",
                 "logit_tokens", "logit_probabilities")


def save_graph(graph: Graph, path: str | Path) -> Path:
    """`path`/graph.safetensors (the tensors) + graph.json (prompt, tokens, sizes), each written atomically."""
    path = Path(path)
    save_safetensors(path / "graph.safetensors", {k: getattr(graph, k) for k in GRAPH_TENSORS})
    atomic_write_text(path / "graph.json", json.dumps({"prompt": graph.prompt, "str_tokens": graph.str_tokens,
                                                       "n_layers": graph.n_layers, "model_name": graph.model_name,
                                                       "meta": graph.meta}, indent=2))
    return path


def load_graph(path: str | Path) -> Graph:
    """A graph written by `save_graph` (safetensors + JSON only)."""
    from safetensors.torch import load_file

    path = Path(path)
    for f in ("graph.safetensors", "graph.json"):
        if not (path / f).is_file():
            raise ValueError(f"path: {path} has no {f}; expected a folder written by save_graph")
    t = load_file(str(path / "graph.safetensors"))
    info = json.loads((path / "graph.json").read_text())
    return Graph(prompt=info["prompt"], str_tokens=info["str_tokens"], n_layers=info["n_layers"],
                 model_name=info.get("model_name", ""), meta=info.get("meta", {}), **{k: t[k] for k in GRAPH_TENSORS})


def _token_text(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "→")


def node_ids(graph: Graph) -> list[str]:
    """circuit-tracer's node id of every node, in node order."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.active_features.tolist()]
    taken = set(ids)  # circuit-tracer's error id "0_<layer>_<pos>" can equal a layer-0 feature's "0_<feature>_<pos>"
    ids += [f"0_{l}_{p}" + ("_error" if f"0_{l}_{p}" in taken else "") for l in range(graph.n_layers)
            for p in range(graph.n_pos)]
    ids += [f"E_{int(t)}_{p}" for p, t in enumerate(graph.tokens)]
    ids += [f"{graph.n_layers + 1}_{int(t)}_{graph.n_pos - 1}" for t in graph.logit_tokens]
    return ids


def to_circuit_tracer_json(graph: Graph, path: str | Path | None = None, *, slug: str = "workbench-graph",
                           scan: str = "workbench", node_threshold: float = 0.8, edge_threshold: float = 0.98,
                           clerps: dict[int, str] | None = None) -> dict:
    """The pruned graph (`prune_graph` with these thresholds) as circuit-tracer's graph JSON; written atomically to
    `path` if given. `clerps`: optional labels by node index."""
    kept = prune_graph(graph, node_threshold, edge_threshold)
    ids = node_ids(graph)
    nf, L, P = graph.n_features, graph.n_layers, graph.n_pos
    nodes = {}
    for i in kept.node_mask.nonzero()[:, 0].tolist():
        inf = float(kept.cumulative_scores[i])
        if i < nf:
            l, p, f = graph.active_features[i].tolist()
            nodes[i] = {"node_id": ids[i], "feature": f, "layer": str(l), "ctx_idx": p,
                        "feature_type": "cross layer transcoder", "jsNodeId": f"{l}_{f}-0", "influence": inf,
                        "activation": float(graph.activation_values[i])}
        elif i < nf + L * P:
            l, p = divmod(i - nf, P)
            nodes[i] = {"node_id": ids[i], "feature": -1, "layer": str(l), "ctx_idx": p,
                        "feature_type": "mlp reconstruction error", "jsNodeId": f"{l}_{p}-0", "influence": inf}
        elif i < nf + (L + 1) * P:
            p = i - nf - L * P
            nodes[i] = {"node_id": ids[i], "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding",
                        "jsNodeId": f"E_{int(graph.tokens[p])}-{p}", "influence": inf}
        else:
            j = i - graph.logit_index(0)
            tok, prob = int(graph.logit_tokens[j]), float(graph.logit_probabilities[j])
            text = _token_text(graph.meta.get("logit_str", [str(tok)] * (j + 1))[j])
            nodes[i] = {"node_id": ids[i], "feature": tok, "layer": str(L + 1), "ctx_idx": P - 1,
                        "feature_type": "logit", "token_prob": prob, "is_target_logit": j == 0,
                        "jsNodeId": f"L_{tok}-{P - 1}", "clerp": f'Output "{text}" (p={prob:.3f})'}
        nodes[i].setdefault("clerp", (clerps or {}).get(i, ""))
        nodes[i].setdefault("token_prob", 0.0)
        nodes[i].setdefault("is_target_logit", False)
        nodes[i].update(run_idx=0, reverse_ctx_idx=0)
    dst, src = kept.edge_mask.nonzero(as_tuple=True)
    links = [{"source": ids[s], "target": ids[d], "weight": float(graph.adjacency[d, s])}
             for s, d in zip(src.tolist(), dst.tolist()) if s in nodes and d in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    out = {"metadata": {"slug": slug, "scan": scan, "transcoder_list": [], "prompt": graph.prompt,
                        "prompt_tokens": [_token_text(t) for t in graph.str_tokens], "node_threshold": node_threshold},
           "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
           "nodes": [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")],
           "links": links}
    if path is not None:
        atomic_write_text(Path(path), json.dumps(out))
    return out
