"""Circuits: per-layer transcoders (SAELens classes and files) and attribution graphs over them.

`train_transcoders` / `save_transcoders` / `load_transcoders` / `evaluate_transcoders` (transcoders.py);
`attribute` -> `Graph` (graph.py: the frozen local replacement model, edges by batched backward passes),
`prune_graph` and `graph_scores` (circuit-tracer's pruning and replacement / completeness scores);
`FeatureEdit` / `intervene` (interventions.py: switch off or scale features in the real model, next to the
graph's predicted effect); `graph_view` (view.py: plotly, hover labels, click to a node's ancestors);
`save_graph` / `load_graph` / `to_circuit_tracer_json` (export.py).
"""
from .clt import CrossLayerTranscoder, load_clt, save_clt
from .export import load_graph, node_ids, save_graph, to_circuit_tracer_json
from .graph import LOGIT_TARGETS, Coders, Graph, Pruned, Replacement, attribute, logit_targets, graph_scores, influence, normalize_matrix, prune_graph
from .interventions import (FeatureEdit, feature_edit_hooks, graph_edits, intervene, predicted_effect,
                            run_with_feature_edits)
from .transcoders import DEFAULT_TRANSCODERS, default_transcoders, evaluate_transcoders, load_transcoders, on_mlps, read_mlp_io, save_transcoders, train_transcoders
from .view import ancestors, feature_labels, graph_view, logit_effects, top_activations

__all__ = ["CrossLayerTranscoder", "load_clt", "save_clt", "DEFAULT_TRANSCODERS", "default_transcoders", "train_transcoders", "save_transcoders", "load_transcoders", "evaluate_transcoders", "on_mlps", "read_mlp_io",
           "LOGIT_TARGETS", "logit_targets", "Coders", "Graph", "Pruned", "Replacement", "attribute", "graph_scores", "influence", "normalize_matrix", "prune_graph",
           "FeatureEdit", "feature_edit_hooks", "graph_edits", "intervene", "predicted_effect", "run_with_feature_edits",
           "save_graph", "load_graph", "node_ids", "to_circuit_tracer_json",
           "graph_view", "feature_labels", "logit_effects", "top_activations", "ancestors"]
