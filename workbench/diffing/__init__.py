"""Model diffing: what fine-tuning changed between a base model and its fine-tuned version (issue 28).

`tuco` (the exact pre-training / fine-tuning split of the forward per layer, TuCo, the alpha-scaled fine-tune as a
Model), `weights` (intruder dimensions, update norm and effective rank per matrix; full, merged-LoRA and peft
fine-tunes), `crosscoder` (a BatchTopK crosscoder with the Latent Scaling check; the activation-difference lens),
`report` (`model_diff`: one page of all of them, with the exact first-token agreement), `build` (fine-tuned copies
for tests and demos). The CLI verb is `workbench diff BASE FINETUNED --out DIR` (`cli/diffing.py`).
"""
from .build import perturbed_copy
from .weights import WeightDiff, as_merged, effective_rank, intruder_dimensions, weight_diff
from .crosscoder import (ActivationDifference, CrossCoder, CrosscoderDiff, activation_difference, diff_crosscoder,
                         paired_activations, train_crosscoder)
from .tuco import ScaledFineTune, TuCo, check_pair, scaled_model, tuning_contribution

__all__ = ["perturbed_copy", "ActivationDifference", "CrossCoder", "CrosscoderDiff", "activation_difference",
           "diff_crosscoder", "paired_activations", "train_crosscoder", "WeightDiff", "as_merged", "effective_rank", "intruder_dimensions", "weight_diff", "ScaledFineTune", "TuCo", "check_pair", "scaled_model", "tuning_contribution"]
from .report import ModelDiff, model_diff  # noqa: E402

__all__ += ["ModelDiff", "model_diff"]
