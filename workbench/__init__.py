"""workbench: activation patching, causal tracing, weight edits, steering and concept ablation
for causal language models, on one site/intervention layer."""
from .interventions import Add, Intervention, Noise, ProjectOut, Replace, Scale, orthonormalize
from .models import DEFAULT_MODEL, Model, load_model, tiny_model
from .patching import activation_patching
from .results import LabelledArray
from .sites import Site, parse_site

__all__ = [
    "DEFAULT_MODEL", "Model", "load_model", "tiny_model",
    "Site", "parse_site",
    "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
    "activation_patching", "LabelledArray",
]
__version__ = "0.1.0"
