"""workbench: activation patching, causal tracing, weight edits, steering and concept ablation
for causal language models, on one site/intervention layer.

Layout: `core` (architectures, sites, interventions, hooks, models, generation, files), `patching`,
`tracing`, `editing`, `steering`, `directions` (activations and direction files), `caft`, `data`
(the datasets shipped with the package), `cli`.
"""
from . import _moved

_moved.install()

from . import analysis, caft, counterfactual  # noqa: E402
from .analysis import cross_model_patching, das, direct_logit_attribution, logit_lens, path_patching  # noqa: E402
from .core import (DEFAULT_MODEL, Add, AtPositions, FromPosition, Generated, Intervention, LabelledArray,  # noqa: E402
                   Model, Noise, ProjectOut, Replace, Scale, Site, load_model, orthonormalize, parse_site, tiny_model)
from .core.generation import generate  # noqa: E402
from .data import data_path  # noqa: E402
from .directions import read_activations  # noqa: E402
from .editing import EditRequest, WeightEdit, ft_l, memit, rome, run_counterfact  # noqa: E402
from .patching import activation_patching, attribute_then_verify, attribution_patching  # noqa: E402
from .steering import SteeringVector, build_steering_vector, steer  # noqa: E402
from .steering import sweep as steering_sweep  # noqa: E402
from .tracing import trace_fact, trace_facts  # noqa: E402
from . import views  # noqa: E402
from . import distributed  # noqa: E402
from .views import save_html  # noqa: E402
from . import sae  # noqa: E402
from .sae import SAEEdit, evaluate_sae, load_sae, save_sae, train_sae  # noqa: E402
from . import diffing  # noqa: E402
from .diffing import model_diff  # noqa: E402

__all__ = [
    "DEFAULT_MODEL", "Model", "load_model", "tiny_model", "generate", "data_path", "read_activations",
    "Site", "parse_site",
    "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
    "FromPosition", "AtPositions", "Generated",
    "activation_patching", "attribution_patching", "attribute_then_verify", "LabelledArray",
    "trace_fact", "trace_facts",
    "SteeringVector", "build_steering_vector", "steer", "steering_sweep",
    "caft", "counterfactual",
    "analysis", "logit_lens", "direct_logit_attribution", "path_patching", "das", "cross_model_patching",
    "views", "save_html",
    "EditRequest", "WeightEdit", "rome", "memit", "ft_l", "run_counterfact",
    "distributed",
    "sae", "load_sae", "save_sae", "SAEEdit", "train_sae", "evaluate_sae",
    "diffing", "model_diff",
]
__version__ = "0.2.0"


def __getattr__(name: str):
    """`wb.arch`, `wb.models`, ... (0.1's submodules) still resolve, to their new homes, with a FutureWarning."""
    if f"workbench.{name}" in _moved.MOVED:
        import importlib

        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
