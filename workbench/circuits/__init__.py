"""Circuits: per-layer transcoders (SAELens classes and files) and attribution graphs over them.

`train_transcoders` / `save_transcoders` / `load_transcoders` / `evaluate_transcoders` (transcoders.py);
`attribute` -> `Graph` (graph.py: the frozen local replacement model, edges by batched backward passes),
`prune_graph` and `graph_scores` (circuit-tracer's pruning and replacement / completeness scores);
`FeatureEdit` / `intervene` (interventions.py: switch off or scale features in the real model, next to the
graph's predicted effect).
"""
from .graph import Graph, Pruned, Replacement, attribute, graph_scores, influence, normalize_matrix, prune_graph
from .interventions import (FeatureEdit, feature_edit_hooks, graph_edits, intervene, predicted_effect,
                            run_with_feature_edits)
from .transcoders import evaluate_transcoders, load_transcoders, on_mlps, read_mlp_io, save_transcoders, train_transcoders

__all__ = ["train_transcoders", "save_transcoders", "load_transcoders", "evaluate_transcoders", "on_mlps", "read_mlp_io",
           "Graph", "Pruned", "Replacement", "attribute", "graph_scores", "influence", "normalize_matrix", "prune_graph",
           "FeatureEdit", "feature_edit_hooks", "graph_edits", "intervene", "predicted_effect", "run_with_feature_edits"]
