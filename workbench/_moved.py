"""Old module paths (before the 0.2 layout) -> where their contents live now.

Importing an old path still works: it gives the new module, with a FutureWarning that names it, so
notebooks written against 0.1 keep running while they are updated.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "workbench.arch": "workbench.core.arch",
    "workbench.sites": "workbench.core.sites",
    "workbench.interventions": "workbench.core.interventions",
    "workbench.hooks": "workbench.core.hooks",
    "workbench.models": "workbench.core",  # Model, load_model, tiny_model, cache_dir (split over core.model/loading/tiny)
    "workbench.results": "workbench.core.io",  # and LabelledArray: workbench.core.labelled
    "workbench.engine": "workbench.patching.engine",
    "workbench.attribution": "workbench.patching.attribution",
    "workbench.reference": "workbench.patching.reference",
    "workbench.behaviour": "workbench.steering.behaviour",
    "workbench.facts": "workbench.data.facts",
    "workbench.datasets": "workbench.data.ioi",
    "probes.activations": "workbench.directions.activations",
    "probes.export": "workbench.directions.store",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", FutureWarning, stacklevel=3)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
