"""Model diffing: what fine-tuning changed between a base model and its fine-tuned version.

`tuco` (the exact pre-training / fine-tuning split of the forward per layer, TuCo, the alpha-scaled fine-tune
as a Model), ...
"""
from .build import perturbed_copy
from .weights import WeightDiff, as_merged, effective_rank, intruder_dimensions, weight_diff
from .tuco import ScaledFineTune, TuCo, check_pair, scaled_model, tuning_contribution

__all__ = ["perturbed_copy", "WeightDiff", "as_merged", "effective_rank", "intruder_dimensions", "weight_diff", "ScaledFineTune", "TuCo", "check_pair", "scaled_model", "tuning_contribution"]
