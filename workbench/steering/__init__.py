"""Steering: vectors built from contrast pairs (`vectors`), added at chosen layers and positions, also
while generating (`generate_steered`); sweeps of success rate against fluency cost (`sweeps`); behaviour metrics that do
not come from the steering code (`behaviour`)."""
from .vectors import (METHODS, SENTIMENT_TEMPLATE, SteeringVector, build_steering_vector, generate_steered, probe_directions,
                      load_lines, load_pairs, read_activations, steer, steering_interventions)
from .sweeps import SteeringSweep, continuation_nll, kl_on_text, sweep

__all__ = ["SteeringVector", "build_steering_vector", "steer", "steering_interventions", "generate_steered", "sweep",
           "SteeringSweep", "continuation_nll", "kl_on_text", "load_pairs", "load_lines", "probe_directions",
           "read_activations", "METHODS", "SENTIMENT_TEMPLATE"]
