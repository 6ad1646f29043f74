"""Steering: vectors built from contrast pairs (`vectors`), added at chosen layers and positions, also
while generating; sweeps of success rate against fluency cost (`sweep`); behaviour metrics that do
not come from the steering code (`behaviour`)."""
from .vectors import (METHODS, SENTIMENT_TEMPLATE, SteeringVector, build_steering_vector, generate, load_direction,
                      load_lines, load_pairs, read_activations, steer, steering_interventions)
from .sweeps import SteeringSweep, continuation_nll, kl_on_text, sweep

__all__ = ["SteeringVector", "build_steering_vector", "steer", "steering_interventions", "generate", "sweep",
           "SteeringSweep", "continuation_nll", "kl_on_text", "load_pairs", "load_lines", "load_direction",
           "read_activations", "METHODS", "SENTIMENT_TEMPLATE"]
