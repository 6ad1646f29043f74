"""Linear probes and concept directions (per-layer probes whose directions feed steering and ablation).

Activations for probes are read through `workbench.Model.run_with_cache`, like every other feature.

    acts = probes.collect_activations(model, prompts, layers=range(30))   # {layer: [n, d_model]}, cached on disk
    res = probes.train_probes(acts, labels, method="logreg")              # or "diffmean"
    res.plot("acc.png"); res.save_direction("gender.safetensors", layer=res.best_layer)
"""
from workbench.directions.activations import collect_activations
from .linear import ProbeResult, diff_of_means, train_probes
from workbench.directions.store import load_direction, save_direction

__all__ = ["collect_activations", "train_probes", "ProbeResult", "diff_of_means", "save_direction", "load_direction"]
