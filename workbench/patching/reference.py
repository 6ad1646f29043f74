"""Plain reference implementations, one forward per cell, with raw PyTorch hooks and none of the
engine's machinery. Tests and benchmarks check the fast paths against them."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_TRACE_ROLES = {"resid": "block", "mlp": "mlp", "attn": "attn"}


def research_trace_loop(model, prompt: str, subject: str, answer: str, eps: Tensor, window: int,
                        kind: str) -> np.ndarray:
    """Causal tracing with the research code's structure: for every (token, layer) cell, one forward of
    batch samples+1 (row 0 clean), the subject's token embeddings noised by `eps` [samples, n_subject,
    d_model] in rows 1.., and row 0's outputs copied into the other rows at the restored sites.
    Returns p(answer's first token) averaged over the noised rows, [tokens, layers]."""
    ids = model.to_tokens(prompt)
    span = model.find_span(prompt, subject)
    target = model.tokenizer(answer, add_special_tokens=False).input_ids[0]
    samples = eps.shape[0]
    T, L = ids.shape[1], model.dims.n_layers
    embed = model.module("embed")

    def noised(mod, args, out):
        out = out.clone()
        out[1:, span.start:span.stop] += eps.to(out.dtype)
        return out

    scores = np.zeros((T, L))
    for t in range(T):
        for layer in range(L):
            # the research code's window, spelled out here (not the tracer's helper): `window` layers starting
            # window // 2 below `layer`, clipped to the model
            start = layer - window // 2
            layers = [layer] if kind == "resid" else [x for x in range(start, start + window) if 0 <= x < L]
            handles = [embed.register_forward_hook(noised)]
            for x in layers:
                def restore(mod, args, o, t=t):
                    h = o[0] if isinstance(o, tuple) else o
                    h = h.clone()
                    h[1:, t] = h[0, t]
                    return (h, *o[1:]) if isinstance(o, tuple) else h
                handles.append(model.module(_TRACE_ROLES[kind], x).register_forward_hook(restore))
            try:
                with torch.no_grad():
                    probs = model.hf(input_ids=ids.repeat(samples + 1, 1), use_cache=False).logits[1:, -1].softmax(-1)
            finally:
                for h in handles:
                    h.remove()
            scores[t, layer] = probs[:, target].mean().item()
    return scores
