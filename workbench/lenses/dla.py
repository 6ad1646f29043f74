"""Direct logit attribution (Elhage et al. 2021; TransformerLens `decompose_resid` / `logit_attrs`).

The final residual at a position is a sum of component outputs,

    x_final = embed + pos_embed + sum_l ( sum_h W_O^{l,h} z^{l,h} + b_O^l + mlp_out^l ),

and the logit difference reads it through the final norm and the unembedding. With the norm's scale
s(x_final) frozen at its value on the actual final residual, the read-out is linear, so each component c
gets the share

    attr(c) = ( w ⊙ centre(c) / s(x_final) ) · (W_U[answer] - W_U[foil])          (TL apply_ln_to_stack)

(centre() subtracts the mean over d_model for LayerNorm; it is the identity for RMSNorm), and the
norm's bias b and the unembedding's bias add the constant terms b · (W_U[a] - W_U[f]) and b_U[a] - b_U[f].
These terms sum to the model's logit difference exactly (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..core.arch import final_softcap, frozen_norm, weight_out_in
from ..toolkit.results import LabelledArray
from ..core.sites import Site
from ..core.generation import check_prompts
from ..core import checks
from ._common import answer_ids


def decompose_resid(model, prompts, *, by_head: bool = True) -> tuple[Tensor, list[str], Tensor]:
    """The final residual of each prompt's last real token split into its components.

    Returns (stack [n_components, n_prompts, d_model], labels, final residual [n_prompts, d_model]).
    Labels: 'embed', 'pos_embed' (learned positions only), per layer 'L{l}H{h}' for each head and
    '{l}_attn_bias' (if the out projection has a bias) when by_head, else '{l}_attn_out'; then '{l}_mlp_out'.
    """
    prompts = check_prompts(prompts)
    L, H, dh = model.dims.n_layers, model.dims.n_heads, model.dims.d_head
    ids, mask = model.encode(prompts)
    last = model.last_positions(ids, mask)
    rows = torch.arange(len(prompts), device=ids.device)
    sites = [Site(0, "resid_pre"), Site(L - 1, "resid_post")]
    sites += [Site(l, c) for l in range(L) for c in (("z",) if by_head else ("attn_out",)) + ("mlp_out",)]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, sites, attention_mask=mask)
        at = lambda l, c: cache[Site(l, c).name][rows, last]  # noqa: E731  [n_prompts, ...] at the last token
        parts, labels = [], []
        embed = model.module("embed")(ids)[rows, last]
        parts.append(embed)
        labels.append("embed")
        if model.arch.rotary is None:  # learned absolute positions: what resid_pre[0] holds besides the tokens
            parts.append(at(0, "resid_pre") - embed)
            labels.append("pos_embed")
        for l in range(L):
            if by_head:
                out_proj = model.module("attn_out_proj", l)
                W_O = weight_out_in(out_proj)  # [d_model, n_heads * d_head]
                z = at(l, "z")  # [n_prompts, n_heads, d_head]
                heads = [z[:, h] @ W_O[:, h * dh:(h + 1) * dh].T for h in range(H)]
                labels += [f"L{l}H{h}" for h in range(H)]
                if getattr(out_proj, "bias", None) is not None:
                    heads.append(out_proj.bias.expand(len(prompts), -1))
                    labels.append(f"{l}_attn_bias")
                heads = torch.stack(heads)
                if model.arch.attn_out is not None:  # a post-norm: each head through its scale frozen at s'(o)
                    heads = frozen_norm(model.module("attn_out", l), heads.sum(0), heads)
                parts += list(heads)
            else:
                parts.append(at(l, "attn_out"))
                labels.append(f"{l}_attn_out")
            parts.append(at(l, "mlp_out"))
            labels.append(f"{l}_mlp_out")
        final = at(L - 1, "resid_post")
    return torch.stack(parts), labels, final


def apply_final_norm_to_stack(model, stack: Tensor, final: Tensor) -> Tensor:
    """Each component as the final norm sees it with the scale frozen at s(final): [n, batch, d_model]
    (centred for LayerNorm, divided by the scale, times the norm's gain; the bias is left out)."""
    return frozen_norm(model.module("final_norm"), final, stack)


def logit_attrs(model, stack: Tensor, final: Tensor, answer: Tensor, foil: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Direct contribution of each component to logit[answer] - logit[foil] (or logit[answer] without a foil).

    stack [n, batch, d_model], final [batch, d_model], answer/foil ids [batch].
    Returns (attrs [n, batch], constant [batch]: the final-norm bias and unembedding-bias terms).
    """
    unembed, norm = model.module("unembed"), model.module("final_norm")
    W_U = weight_out_in(unembed)  # [d_vocab, d_model]
    direction = W_U[answer] - (W_U[foil] if foil is not None else 0)  # [batch, d_model]
    attrs = (apply_final_norm_to_stack(model, stack, final) * direction).sum(-1)
    const = torch.zeros(len(answer), device=final.device, dtype=final.dtype)
    if getattr(norm, "bias", None) is not None:
        const = const + direction @ norm.bias
    if getattr(unembed, "bias", None) is not None:
        const = const + unembed.bias[answer] - (unembed.bias[foil] if foil is not None else 0)
    return attrs, const


def direct_logit_attribution(model, prompts, answer, foil=None, *, by_head: bool = True) -> LabelledArray:
    """Per prompt and component, the direct contribution to logit[answer] - logit[foil] at the last token.

    Components as in `decompose_resid`, plus 'bias' (the constant terms). `meta` holds the model's own
    logit difference per prompt and the largest |sum of attributions - logit difference| (the identity's error).
    """
    prompts = check_prompts(prompts)
    ans = answer_ids(model, answer, len(prompts))
    fo = None if foil is None else answer_ids(model, foil, len(prompts), "foil")
    checks.distinct_tokens(ans, fo, unit="prompt")
    with torch.no_grad():
        stack, labels, final = decompose_resid(model, prompts, by_head=by_head)
        attrs, const = logit_attrs(model, stack, final, ans, fo)
        ids, mask = model.encode(prompts)
        rows = torch.arange(len(prompts), device=ids.device)
        logits = model.forward(ids, mask)[rows, model.last_positions(ids, mask)]
        diff = lambda lg: lg[rows, ans] - (lg[rows, fo] if fo is not None else 0)  # noqa: E731
        model_diff = diff(logits)
        # what is decomposed: the logits before any final soft-capping (the model's own where there is none)
        actual = model_diff
        if final_softcap(model.hf, model.arch) is not None:
            actual = diff(model.module("unembed")(model.module("final_norm")(final)))
    values = torch.cat([attrs, const[None]]).T  # [prompt, component]
    err = (values.sum(1) - actual).abs().max().item()
    meta = {"prompts": prompts, "logit_diff": actual.tolist(), "model_logit_diff": model_diff.tolist(),
            "identity_error": err,
            "answer": [model.tokenizer.decode([a]) for a in ans.tolist()],
            "foil": None if fo is None else [model.tokenizer.decode([f]) for f in fo.tolist()]}
    return LabelledArray(values.float().cpu().numpy(), ("prompt", "component"),
                         {"prompt": list(range(len(prompts))), "component": labels + ["bias"]},
                         name="direct logit attribution", meta=meta)
