"""Activation patching: exact grids (`exact`) run by the batched suffix-only engine (`engine`), attribution
patching and AtP-then-verify (`attribution`), what both share (`grid`: pairs, metrics, cells), and the
plain one-forward-per-patch loops the fast paths are tested against (`reference`)."""
from .attribution import attribute_then_verify, attribution_patching
from .engine import EngineStats, Overwrite, Patch, run_patches
from .exact import activation_patching
from .grid import METRICS, make_pairs

__all__ = ["activation_patching", "attribution_patching", "attribute_then_verify", "run_patches", "Patch",
           "Overwrite", "EngineStats", "make_pairs", "METRICS"]
