"""Sparse autoencoders on the workbench's sites: inspect latents, use them (steering, CAFT, attribution
patching) and diff models through them."""
from .diff import LatentDiff, concept_latents, diff_latents, overlap_at
from .inspect import LatentReport, inspect_latent, logit_effects
from .use import (check_latents, decoder_rows, latent_attribution, latent_steering_vector, latent_subspaces,
                  read_latents, latent_site, save_latent_directions)
