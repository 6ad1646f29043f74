"""Lenses: reading the residual stream in the vocabulary. The logit lens (`logit`), the tuned lens (`tuned`),
direct logit attribution (`dla`)."""
from .dla import decompose_resid, direct_logit_attribution, logit_attrs
from .logit import lens_logits, logit_lens
from .tuned import TunedLens, lens_kl, load_tuned_lens, train_tuned_lens

__all__ = ["logit_lens", "lens_logits", "decompose_resid", "logit_attrs", "direct_logit_attribution",
           "TunedLens", "train_tuned_lens", "load_tuned_lens", "lens_kl"]
