"""Circuits: per-layer transcoders (SAELens classes and files) and attribution graphs over them.

`train_transcoders` / `save_transcoders` / `load_transcoders` / `evaluate_transcoders` (transcoders.py).
"""
from .transcoders import evaluate_transcoders, load_transcoders, on_mlps, read_mlp_io, save_transcoders, train_transcoders

__all__ = ["train_transcoders", "save_transcoders", "load_transcoders", "evaluate_transcoders", "on_mlps", "read_mlp_io"]
