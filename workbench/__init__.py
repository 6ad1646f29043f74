"""workbench: activation patching, causal tracing, weight edits, steering and concept ablation
for causal language models, on one site/intervention layer.

Layout: `core` (architectures, sites, interventions, hooks, models, generation, files), `patching`,
`tracing`, `editing`, `steering`, `directions` (activations and direction files), `caft`, `data`
(the datasets shipped with the package), `cli`.
"""
from . import _moved

_moved.install()

from . import caft  # noqa: E402
from .core import (DEFAULT_MODEL, Add, AtPositions, FromPosition, Generated, Intervention, LabelledArray,  # noqa: E402
                   Model, Noise, ProjectOut, Replace, Scale, Site, load_model, orthonormalize, parse_site, tiny_model)
from .core.generation import generate  # noqa: E402
from .data import data_path  # noqa: E402
from .editing import EditRequest, WeightEdit, ft_l, memit, rome, run_counterfact  # noqa: E402
from .patching import activation_patching, attribute_then_verify, attribution_patching  # noqa: E402
from .steering import SteeringVector, build_steering_vector, steer  # noqa: E402
from .steering import sweep as steering_sweep  # noqa: E402
from .tracing import trace_fact, trace_facts  # noqa: E402
from . import views  # noqa: E402
from .views import save_html  # noqa: E402

__all__ = [
    "DEFAULT_MODEL", "Model", "load_model", "tiny_model", "generate", "data_path",
    "Site", "parse_site",
    "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
    "FromPosition", "AtPositions", "Generated",
    "activation_patching", "attribution_patching", "attribute_then_verify", "LabelledArray",
    "trace_fact", "trace_facts",
    "SteeringVector", "build_steering_vector", "steer", "steering_sweep",
    "caft",
    "views", "save_html",
    "EditRequest", "WeightEdit", "rome", "memit", "ft_l", "run_counterfact",
]
__version__ = "0.2.0"
