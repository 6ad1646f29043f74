"""workbench: activation patching, causal tracing, weight edits, steering and concept ablation
for causal language models, on one site/intervention layer."""
from .interventions import Add, Intervention, Noise, ProjectOut, Replace, Scale, orthonormalize
from .models import DEFAULT_MODEL, Model, load_model, tiny_model
from .attribution import attribute_then_verify, attribution_patching
from .patching import activation_patching
from .tracing import trace_fact, trace_facts
from .results import LabelledArray
from .sites import Site, parse_site
from .interventions import AtPositions, FromPosition, Generated
from .steering import SteeringVector, build_steering_vector, steer, sweep as steering_sweep
from . import caft
from .editing import EditRequest, WeightEdit, ft_l, memit, rome, run_counterfact

__all__ = [
    "DEFAULT_MODEL", "Model", "load_model", "tiny_model",
    "Site", "parse_site",
    "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
    "activation_patching", "attribution_patching", "attribute_then_verify", "LabelledArray",
    "trace_fact", "trace_facts",
    "FromPosition", "AtPositions", "Generated", "SteeringVector", "build_steering_vector", "steer", "steering_sweep",
    "caft",
    "EditRequest", "WeightEdit", "rome", "memit", "ft_l", "run_counterfact",
]
__version__ = "0.1.0"
