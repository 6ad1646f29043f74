"""Activation patching and what is built on it: exact grids (`exact`) run by the batched suffix-only engine
(`engine`), attribution patching and AtP-then-verify (`attribution`), what both share (`grid`: pairs, metrics,
cells), many pairs as a resumable sweep on any executor (`batches`), causal tracing (`tracing`), path patching
(`paths`), cross-model patching (`cross_model`), and the plain one-forward-per-patch loops the fast paths are tested against (`reference`)."""
from .attribution import attribute_then_verify, attribution_patching
from .batches import patch_pairs, read_pairs
from .cross_model import cross_model_patching
from .engine import EngineStats, Overwrite, Patch, run_patches
from .exact import activation_patching
from .grid import METRICS, Setup, make_pairs, prepare
from .paths import path_patching
from .tracing import load_traces, trace_fact, trace_facts

__all__ = ["activation_patching", "patch_pairs", "read_pairs", "attribution_patching", "attribute_then_verify", "run_patches", "Patch",
           "Overwrite", "EngineStats", "make_pairs", "METRICS", "Setup", "prepare", "trace_fact", "trace_facts",
           "load_traces", "path_patching", "cross_model_patching"]
