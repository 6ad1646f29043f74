"""Token-coloured text and attention patterns, drawn by circuitsvis with its JavaScript bundle inlined
(`.local_src`; its `_repr_html_` would first probe http://google.com, and `str()` loads from a CDN)."""
from __future__ import annotations

import html as _html

import numpy as np
import torch

from .base import View
from ..core import checks


def _wrap(src: str, kind: str) -> str:
    # circuitsvis writes `<div id=.../>`, which HTML does not close: our own div keeps what follows outside it
    return f'<div class="workbench-view" data-kind="{kind}">{src}</div>'


def token_view(tokens: list[str], values, title: str = "token values") -> View:
    """Each token coloured by its value (e.g. a patching effect per position); hover shows the value."""
    from circuitsvis.tokens import colored_tokens

    values = np.asarray(values, dtype=float).reshape(-1)
    if len(tokens) != len(values):
        raise checks.fail('values', f'one value per token ({len(tokens)})', len(values))
    src = colored_tokens(tokens=[str(t) for t in tokens], values=values.tolist()).local_src
    return View(title, f"<p>{_html.escape(title)}</p>" + _wrap(src, "circuitsvis"), "circuitsvis")


def attention_view(tokens: list[str], pattern, title: str = "attention patterns") -> View:
    """Attention patterns of one layer, pattern [n_heads, query, key] (rows sum to 1), one panel per head."""
    from circuitsvis.attention import attention_patterns

    pattern = torch.as_tensor(pattern, dtype=torch.float32)
    if pattern.ndim != 3 or pattern.shape[1] != len(tokens) or pattern.shape[2] != len(tokens):
        raise checks.fail('pattern', f'[n_heads, {len(tokens)}, {len(tokens)}]', list(pattern.shape))
    src = attention_patterns(tokens=[str(t) for t in tokens], attention=pattern).local_src
    return View(title, f"<p>{_html.escape(title)}</p>" + _wrap(src, "circuitsvis"), "circuitsvis")


@torch.no_grad()
def attention_pattern(model, prompt: str, layer: int, interventions=()) -> tuple[list[str], torch.Tensor]:
    """(tokens, pattern [n_heads, query, key]) of `prompt` at `layer`, read at the `blocks.{layer}.attn.hook_pattern`
    site (the family's eager kernel, whatever attention the model was loaded with), in a run with `interventions`
    (e.g. a patched pattern or head) applied."""
    from ..core.sites import Site, check_layers

    (layer,) = check_layers([layer], model.dims.n_layers)
    site = Site(layer, "pattern")
    _, cache = model.run_with_cache(prompt, [site], interventions=interventions)
    return model.to_str_tokens(prompt), cache[site.name][0].float().cpu()
