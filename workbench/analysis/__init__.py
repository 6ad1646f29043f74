"""Analysis methods on top of the site and hook layer, one module per method: the logit lens (`lens`),
direct logit attribution (`dla`)."""
from .dla import decompose_resid, direct_logit_attribution, logit_attrs
from .lens import lens_logits, logit_lens

__all__ = ["logit_lens", "lens_logits", "decompose_resid", "logit_attrs", "direct_logit_attribution"]
