"""The logit lens (nostalgebraist 2020; Halawi et al. 2023, "Overthinking the Truth"): read each layer's
residual stream through the model's own final norm and unembedding,

    lens_l(x) = W_U · final_norm(resid_post_l)          (eq. 1 of Halawi et al.)

(then the family's final logit soft-capping, c tanh(logits / c), where its config sets one: Gemma 2/3),

and report, layer by layer, the answer's probability and rank at each prompt's last real token.
At the last layer the lens is the model's own output (tested as an identity).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..core.arch import final_logits
from ..toolkit.results import LabelledArray
from ..core.sites import Site, check_layers
from ..core.generation import check_prompts
from ._common import answer_ids
from ..core import checks


def lens_logits(model, resid: Tensor) -> Tensor:
    """[..., d_model] residual -> [..., d_vocab] logits through the final norm, the unembedding and the final
    soft-capping (where the config has one), as the model's own forward."""
    return final_logits(model.hf, model.arch, model.module("unembed")(model.module("final_norm")(resid)))


def logit_lens(model, prompts, answer, *, layers=None, tuned=None) -> dict[str, LabelledArray]:
    """Per prompt and layer, the answer's probability and rank (0 = top token) under the logit lens.

    prompts: a string or a list (right-padded; each read at its last real token); answer: a single token,
    shared or one per prompt; layers: which layers' resid_post (default all); tuned: a `TunedLens` to read
    through its translators instead (the tuned lens).
    Returns {"prob": LabelledArray(prompt, layer), "rank": ..., "logit": ...}; `meta["top"]` holds the lens's
    top token per (prompt, layer) and `meta["model_prob"]` the model's own probability of the answer.
    """
    prompts = check_prompts(prompts)
    L = model.dims.n_layers
    layers = list(range(L)) if layers is None else check_layers(layers, L)
    if tuned is not None:
        if not hasattr(tuned, "check"):
            raise checks.fail('tuned', 'a TunedLens (from train_tuned_lens / load_tuned_lens)', type(tuned).__name__)
        tuned.check(model)
    ans = answer_ids(model, answer, len(prompts))
    ids, mask = model.encode(prompts)
    last = model.last_positions(ids, mask)
    rows = torch.arange(len(prompts), device=ids.device)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, [Site(l, "resid_post") for l in layers], attention_mask=mask)
        # [layer, prompt, d_model] at each prompt's last real token
        resid = torch.stack([cache[Site(l, "resid_post").name][rows, last] for l in layers])
        if tuned is not None:
            resid = torch.stack([tuned.translate(r, l) for r, l in zip(resid, layers)])
        lens = lens_logits(model, resid).float()  # [layer, prompt, d_vocab]
    answer_logit = lens.gather(-1, ans[None, :, None].expand(len(layers), -1, 1))[..., 0]
    prob = lens.softmax(-1).gather(-1, ans[None, :, None].expand(len(layers), -1, 1))[..., 0]
    rank = (lens > answer_logit[..., None]).sum(-1)
    top = lens.argmax(-1)
    coords = {"prompt": list(range(len(prompts))), "layer": layers}
    meta = {"prompts": prompts, "answer": [model.tokenizer.decode([a]) for a in ans.tolist()],
            "top": [[model.tokenizer.decode([t]) for t in top[:, i].tolist()] for i in range(len(prompts))],
            "model_prob": logits[rows, last].float().softmax(-1)[rows, ans].tolist()}
    out = {}
    for key, val in (("prob", prob), ("rank", rank), ("logit", answer_logit)):
        out[key] = LabelledArray(val.T.float().cpu().numpy(), ("prompt", "layer"), coords, name=f"{'tuned' if tuned is not None else 'logit'} lens: answer {key}", meta=meta)
    return out
