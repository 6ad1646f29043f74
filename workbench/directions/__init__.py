"""Directions and the activations they come from: the one activation reader (`activations`) and the one
direction file format (`store`), shared by probes, steering, CAFT and SAEs."""
from .activations import collect_activations, read_activations
from .store import DirectionFileError, load_direction, load_directions, save_direction, save_directions

__all__ = ["read_activations", "collect_activations", "save_directions", "load_directions", "save_direction",
           "load_direction", "DirectionFileError"]
