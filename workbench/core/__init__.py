"""The core every feature uses: architectures (`arch`), sites (`sites`), interventions (`interventions`),
the one hook layer (`hooks`), `Model` (`model`), loading (`loading`, `tiny`), padding and generation
(`generation`), files (`io`: the one reader and strict JSON), argument checks (`checks`) and labelled results
(`labelled`)."""
from .interventions import (Add, AtPositions, FromPosition, Generated, Intervention, Noise, ProjectOut, Replace, Scale,
                            orthonormalize)
from .labelled import LabelledArray
from .default_model import DEFAULT_MODEL
from .io import cache_dir
from .loading import load_model
from .model import Model
from .sites import COMPONENTS, Site, parse_site
from .tiny import tiny_model
