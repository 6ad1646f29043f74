"""Directions in activation space and the activations they come from: the one activation reader
(`activations`), the one direction file format (`store`), concept ablation fine-tuning (`caft`), subspace
interchange and distributed alignment search (`subspace`). Probes (`probes/`), steering (`workbench.steering`)
and SAEs build on these."""
from . import caft
from .activations import collect_activations, read_activations
from .store import DirectionFileError, load, load_direction, load_directions, save_direction, save_directions
from .subspace import DASResult, SubspaceReplace, das, interchange_accuracy, rowspace_split

__all__ = ["load", "read_activations", "collect_activations", "save_directions", "load_directions", "save_direction",
           "load_direction", "DirectionFileError", "caft", "das", "DASResult", "SubspaceReplace",
           "interchange_accuracy", "rowspace_split"]
