"""Sparse autoencoders on our sites, in SAELens's classes and on-disk format.

`load_sae` / `save_sae` (format.py: SAELens's cfg.json + sae_weights.safetensors, hook names mapped to
our sites, model and width checks), `SAEEdit` (edit.py: the SAE site intervention, reconstruction error
kept), `latent_activations` (edit.py), `train_sae` (train.py: SAELens's SAETrainer fed our activations),
`evaluate_sae` (evaluate.py: L0, variance explained, CE loss recovered, dead latents).
Using latents: `inspect_latent` (inspect.py: top contexts, logit effects, density as an HTML page),
`latent_steering_vector` / `latent_subspaces` / `latent_attribution` (use.py: steering, CAFT directions,
attribution patching over latents verified exactly), `diff_latents` / `concept_latents` (diff.py: model diffing).
sae_lens itself is imported only when an SAE is built or loaded.
"""
from .edit import SAEEdit, latent_activations
from .evaluate import evaluate_sae
from .format import load_sae, map_hook_name, sae_site, save_sae
from .train import default_corpus, train_sae
from .diff import LatentDiff, concept_latents, diff_latents, overlap_at
from .inspect import LatentReport, inspect_latent, logit_effects
from .use import (check_latents, decoder_rows, latent_attribution, latent_site, latent_steering_vector,
                  latent_subspaces, read_latents, save_latent_directions)

DEFAULT_SAE = "sae/smollm2-135m-blocks.15.hook_resid_pre"  # shipped in workbench/data (see the README)


def default_sae(model=None):
    """The SAE shipped with the package for the default model (top-k, blocks.15.hook_resid_pre), loaded and bound."""
    from ..core.loading import load_model
    from ..data import data_path

    return load_sae(data_path(DEFAULT_SAE), model if model is not None else load_model())


__all__ = ["load_sae", "save_sae", "map_hook_name", "sae_site", "SAEEdit", "latent_activations", "default_sae",
           "train_sae", "evaluate_sae", "default_corpus", "DEFAULT_SAE",
           "inspect_latent", "LatentReport", "logit_effects", "latent_steering_vector", "latent_subspaces",
           "latent_attribution", "save_latent_directions", "read_latents", "latent_site", "check_latents",
           "decoder_rows", "diff_latents", "concept_latents", "overlap_at", "LatentDiff"]
