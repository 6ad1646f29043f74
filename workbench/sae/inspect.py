"""Inspect an SAE latent: its top-activating contexts (tokens shaded by activation), its logit effects (the
decoder direction through the final norm's gain and the unembedding), and its activation density.

    logit effect of latent i = W_U (gamma * W_dec[i])        [d_vocab]

(direct logit attribution of the direction with the final norm's scale frozen, as in `lenses.dla`; gamma is the
final norm's weight). The report is a `workbench.views.View`: shown in a notebook, saved as one HTML file that
opens offline (plotly.js inlined, no external script).
"""
from __future__ import annotations

import html as _html
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arch import weight_out_in
from ..toolkit.results import Result
from ..core.generation import check_prompts
from .use import check_latents, read_latents, latent_site
from ..core import checks


@torch.no_grad()
def logit_effects(model, sae, latent: int, k: int = 10) -> dict:
    """The latent's decoder direction through the unembedding: {"top": [(token, value)], "bottom": [...]}."""
    (latent,) = check_latents(sae, [latent], "latent")
    checks.integer(k, "k")
    unembed, norm = model.module("unembed"), model.module("final_norm")
    d = sae.W_dec.detach()[latent].float().to(model.device)
    gain = getattr(norm, "weight", None)
    d = d * gain.float() if gain is not None else d
    effect = (weight_out_in(unembed).float() @ d).cpu()  # [d_vocab]
    tok = model.tokenizer

    def named(idx):
        return [(tok.decode([int(i)]), float(effect[i])) for i in idx]

    return {"top": named(effect.argsort(descending=True)[:k]), "bottom": named(effect.argsort()[:k])}


@dataclass
class LatentReport(Result):
    """Everything `inspect_latent` found for one latent."""

    latent: int
    site: str
    contexts: list[dict]  # {text, position, activation, tokens: [str], acts: [float]} (a window), strongest first
    logits: dict  # logit_effects
    density: float  # fraction of read tokens where the latent is active (> 0)
    activations: np.ndarray = field(repr=False)  # the latent's activation on every read token
    meta: dict = field(default_factory=dict)

    def view(self):
        from ..views.base import View, concat, plotly_view
        import plotly.graph_objects as go

        peak = max([c["activation"] for c in self.contexts] or [1.0]) or 1.0
        rows = []
        for c in self.contexts:
            spans = []
            for j, (t, a) in enumerate(zip(c["tokens"], c["acts"])):
                alpha = max(0.0, min(1.0, a / peak))
                border = "border-bottom:2px solid #c00;" if j == c["focus"] else ""
                spans.append(f'<span title="{a:.3g}" style="background:rgba(255,90,0,{alpha:.2f});{border}">'
                             f"{_html.escape(t).replace(' ', '&nbsp;')}</span>")
            rows.append(f"<tr><td>{c['activation']:.3g}</td><td style='font-family:monospace'>{''.join(spans)}</td></tr>")
        ctx = View("top-activating contexts", "<table><tr><th>act.</th><th>context (shaded by activation)</th></tr>"
                   + "".join(rows) + "</table>", "html")
        cells = "".join(f"<tr><td>{_html.escape(repr(a[0]))}</td><td>{a[1]:+.3g}</td><td>{_html.escape(repr(b[0]))}</td>"
                        f"<td>{b[1]:+.3g}</td></tr>" for a, b in zip(self.logits["top"], self.logits["bottom"]))
        lg = View("logit effects (decoder direction through the unembedding)",
                  f"<table><tr><th>promoted</th><th></th><th>suppressed</th><th></th></tr>{cells}</table>", "html")
        active = self.activations[self.activations > 0]
        fig = go.Figure(go.Histogram(x=np.log10(active) if len(active) else [], nbinsx=40))
        fig.update_layout(height=260, width=520, margin=dict(l=40, r=10, t=30, b=40),
                          xaxis_title="log10 activation (active tokens)", yaxis_title="tokens",
                          title=f"density: {100 * self.density:.2f}% of {len(self.activations)} tokens active")
        hist = plotly_view(fig, "activation density")
        return concat([ctx, lg, hist], f"SAE latent {self.latent} at {self.site}")

    def _repr_html_(self):
        return self.view()._repr_html_()

    def to_json(self) -> dict:
        return {"latent": self.latent, "site": self.site, "density": self.density, "contexts": self.contexts,
                "logits": self.logits, "meta": self.meta}


def inspect_latent(model, sae, latent: int, texts, *, site=None, top_k: int = 10, window: int = 8,
                   n_logits: int = 10, batch_size: int = 32) -> LatentReport:
    """Top-`top_k` activating tokens of `latent` over `texts` with `window` tokens of context before (and 3
    after), its logit effects and its density."""
    s = latent_site(model, sae, site)
    (latent,) = check_latents(sae, [latent], "latent")
    texts = check_prompts(list(texts), "texts")
    checks.integer(top_k, "top_k")
    checks.integer(window, "window", 0)
    z = read_latents(model, sae, texts, site=s.name, read_at="all", batch_size=batch_size)[:, latent]  # [n_tokens]
    tokens = [model.to_str_tokens(t) for t in texts]
    where = [(i, p) for i, toks in enumerate(tokens) for p in range(len(toks))]
    if len(where) != len(z):
        raise RuntimeError(f"token count mismatch: {len(where)} tokens vs {len(z)} activations")
    starts = np.cumsum([0] + [len(t) for t in tokens])
    contexts = []
    for r in z.argsort(descending=True)[:top_k].tolist():
        if z[r] <= 0:
            break
        i, p = where[r]
        lo, hi = max(0, p - window), min(len(tokens[i]), p + 4)
        contexts.append({"text": i, "position": p, "activation": float(z[r]), "focus": p - lo,
                         "tokens": tokens[i][lo:hi], "acts": z[starts[i] + lo:starts[i] + hi].tolist()})
    zn = z.numpy()
    return LatentReport(latent, s.name, contexts, logit_effects(model, sae, latent, n_logits), float((zn > 0).mean()),
                        zn, {"n_texts": len(texts), "n_tokens": len(zn), "model": model.name})
