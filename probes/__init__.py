"""Linear probes and concept directions (per-layer probes whose directions feed steering and ablation).

Activations for probes are read through `workbench.Model.run_with_cache`, like every other feature.
"""
