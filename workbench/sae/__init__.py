"""Sparse autoencoders on our sites, in SAELens's classes and on-disk format.

`load_sae` / `save_sae` (format.py: SAELens's cfg.json + sae_weights.safetensors, hook names mapped to
our sites, model and width checks), `SAEEdit` (edit.py: the SAE site intervention, reconstruction error
kept), `latent_activations` (edit.py), `train_sae` (train.py: SAELens's SAETrainer fed our activations),
`evaluate_sae` (evaluate.py: L0, variance explained, CE loss recovered, dead latents).
sae_lens itself is imported only when an SAE is built or loaded.
"""
from .edit import SAEEdit, latent_activations
from .format import load_sae, map_hook_name, sae_site, save_sae

__all__ = ["load_sae", "save_sae", "map_hook_name", "sae_site", "SAEEdit", "latent_activations"]
