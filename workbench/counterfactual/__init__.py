"""Counterfactual strings (Gumbel-max SCM): Gumbel-max sampling, hindsight noise inference, counterfactual
decoding under interventions / weight edits / a second model, token-level counterfactuals, side-effect measures; resumable runs in a sweep folder."""
from .decode import Counterfactuals, check_same_vocabulary, counterfactuals, first_token_coupling
from .gumbel import (GivenNoise, PriorNoise, Samples, Settings, allowed, choose, gumbel_decode, hindsight_noise,
                     posterior_noise, replay, sample)
from .measures import gumbel_agreement, gumbel_keep, measure, pair_measures, save, summarize
from .sweep import counterfactual_sweep

__all__ = ["Counterfactuals", "check_same_vocabulary", "counterfactuals", "first_token_coupling", "GivenNoise", "PriorNoise", "Samples",
           "Settings", "allowed", "choose", "gumbel_decode", "hindsight_noise", "posterior_noise", "replay", "sample",
           "gumbel_agreement", "gumbel_keep", "measure", "pair_measures", "save", "summarize", "counterfactual_sweep"]
