"""The model kernel every feature stands on: architectures (`arch`), sites (`sites`), interventions
(`interventions`), the one hook layer (`hooks`), `Model` (`model`), loading (`loading`, `tiny`, `default_model`,
models split over devices: `devices`), padding and generation (`generation`), files (`io`: the one reader and
strict JSON) and argument checks (`checks`)."""
from .default_model import DEFAULT_MODEL
from .generation import generate
from .interventions import (Add, AtPositions, FromPosition, Generated, Intervention, Noise, ProjectOut, Replace, Scale,
                            orthonormalize)
from .io import cache_dir
from .loading import load_model
from .model import Model
from .sites import COMPONENTS, Site, parse_site
from .tiny import tiny_model

__all__ = ["DEFAULT_MODEL", "Model", "load_model", "tiny_model", "generate", "cache_dir", "COMPONENTS", "Site",
           "parse_site", "Intervention", "Replace", "Add", "Scale", "Noise", "ProjectOut", "orthonormalize",
           "FromPosition", "AtPositions", "Generated"]
