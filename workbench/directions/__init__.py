"""Directions and the activations they come from: the one activation reader (`activations`) and the one
direction file format (`store`), shared by probes, steering, CAFT and SAEs."""
from .activations import collect_activations
from .store import load_direction, save_direction

__all__ = ["collect_activations", "save_direction", "load_direction"]
