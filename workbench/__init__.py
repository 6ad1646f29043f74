"""workbench: activation patching, causal tracing, lenses, weight edits, steering, concept ablation, SAEs and
counterfactual strings for causal language models, on one site/intervention layer.

The top level is the model kernel (`Model`, `load_model`, `tiny_model`, `generate`, sites, interventions: all
from `workbench.core`) and one subpackage per capability, stacked (each imports only the ones below it):

    core < toolkit (sweeps, executors, results, records, prompts, corpora) | data
         < views < patching | lenses | directions | editing < steering < sae < counterfactual | circuits < diffing < cli, demo
"""
from .core import (DEFAULT_MODEL, Add, AtPositions, FromPosition, Generated, Intervention, Model, Noise, ProjectOut,
                   Replace, Scale, Site, generate, load_model, orthonormalize, parse_site, tiny_model)
from . import core, toolkit, data, views, patching, lenses, directions, editing, steering, sae, counterfactual, circuits, diffing  # noqa: E402

__version__ = "0.3.0"

__all__ = [
    "DEFAULT_MODEL", "Model", "load_model", "tiny_model", "generate", "Site", "parse_site",
    "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
    "FromPosition", "AtPositions", "Generated",
    "core", "toolkit", "data", "views", "patching", "lenses", "directions", "editing", "steering", "sae",
    "counterfactual", "circuits", "diffing",
]
