"""Analysis methods on top of the site and hook layer, one module per method: the logit lens (`lens`),
the tuned lens (`tuned_lens`),
direct logit attribution (`dla`), path patching (`path_patching`), subspace interchange and DAS (`das`),
cross-model activation patching (`cross_model`)."""
from .cross_model import cross_model_patching
from .das import DASResult, SubspaceReplace, das, interchange_accuracy, rowspace_split
from .dla import decompose_resid, direct_logit_attribution, logit_attrs
from .path_patching import path_patching
from .lens import lens_logits, logit_lens
from .tuned_lens import TunedLens, lens_kl, load_tuned_lens, train_tuned_lens

__all__ = ["logit_lens", "lens_logits", "decompose_resid", "logit_attrs", "direct_logit_attribution", "path_patching",
           "das", "DASResult", "SubspaceReplace", "interchange_accuracy", "rowspace_split",
           "cross_model_patching", "TunedLens", "train_tuned_lens", "load_tuned_lens", "lens_kl"]
