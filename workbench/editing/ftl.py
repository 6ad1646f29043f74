"""FT-L baseline (ROME paper, Sec. 4): fine-tune one layer's MLP down-projection on the request,
keeping every weight within an L-infinity ball of its original value, |W - W_0|_inf <= eps."""
from __future__ import annotations

import torch

from ..core.arch import weight_out_in
from ..core.generation import pad_right
from .requests import EditError, EditRequest, already_predicted, edit_layers
from .rank_one import check_hparams, default_layer
from .weights import WeightEdit, frozen


def ft_l(model, request, layer: int | None = None, *, steps: int = 25, lr: float = 5e-4, eps: float = 5e-4) -> WeightEdit:
    """The FT-L edit of one request (Adam on the NLL of the target after the prompt, projected to the
    eps-ball after each step). The model is restored bit-exactly before returning; apply the result."""
    request = EditRequest.of(request)
    target_ids = request.check(model)
    layer = edit_layers(model, default_layer(model) if layer is None else layer)[0]
    check_hparams({"steps": steps, "lr": lr, "eps": eps}, ("steps", "lr", "eps"))  # eps: the L-infinity radius
    meta = {"method": "ft-l", "layer": layer, "request": dict(request.__dict__), "fingerprint": model.fingerprint,
            "hparams": {"steps": steps, "lr": lr, "eps": eps}}
    if already_predicted(model, request.prompt, target_ids):
        return WeightEdit({}, {**meta, "note": "target already predicted; nothing to edit"}, noop=True)
    prompt_ids = model.tokenizer(request.prompt).input_ids
    ids, _ = pad_right(model, [prompt_ids + target_ids])
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1, device=ids.device)
    tgt = torch.tensor(target_ids, device=ids.device)
    module = model.module("mlp_down", layer)
    param = module.weight
    w0 = param.detach().clone()
    w0_oi = weight_out_in(module).detach().clone()
    try:
        with frozen(model):
            param.requires_grad_(True)
            opt = torch.optim.Adam([param], lr=lr)
            for it in range(steps):
                logits = model.hf(input_ids=ids, use_cache=False).logits[0, positions]
                loss = -logits.log_softmax(-1)[torch.arange(len(tgt)), tgt].mean()
                if not torch.isfinite(loss):
                    raise EditError(f"request: fine-tuning diverged (loss {loss.item()}); weights untouched")
                if loss.item() < 1e-2:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    param.copy_(torch.maximum(torch.minimum(param, w0 + eps), w0 - eps))
            update = (weight_out_in(module).detach() - w0_oi).clone()
            meta.update(steps_run=it + 1, loss=loss.item())
    finally:
        with torch.no_grad():
            param.copy_(w0)
        param.grad = None
    return WeightEdit({layer: update}, meta)
