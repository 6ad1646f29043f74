"""ROME: rank-one model editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 3).

The MLP down-projection W of layer l is a linear associative memory: keys k (blocks.l.mlp.hook_post,
[d_mlp]) map to values v = W k (blocks.l.hook_mlp_out, [d_model]). To make the subject's key recall a new
value v*, ROME solves  min |W_hat K - V|  s.t.  W_hat k* = v*,  whose solution is eq. (2):

    W_hat = W + Lambda (C^-1 k*)^T,        Lambda = (v* - W k*) / ((C^-1 k*)^T k*)

    k*  mean key at the subject's last token over the prompt and short generated prefixes (eq. 3)
    C   E[k k^T] over a corpus (workbench.editing.stats)
    v*  W k* + delta, delta optimised so the prompts predict the target (eq. 4): NLL of the target,
        plus a KL term keeping "{subject} is a" unchanged (essence drift), weight decay, norm clamp

The same averaged k* is used in the numerator (W k*) and the denominator; the research code uses the
bare prompt's key in one place and the average in the other, the cause of the "disabling edits" fixed
in r-ROME (Gupta et al. 2024). With v* = W k* + delta, Lambda = delta / ((C^-1 k*)^T k*).

Post-norm families (Gemma 2/3, OLMo 2) add N(W k) to the residual, N(y) = g * y / sqrt(mean(y^2) + eps) the
post-feedforward norm, not W k itself. The closed form only constrains what W maps k* to, W_hat k* = v*; it
does not care what follows W, provided v* is the down projection's output that makes the prompts predict the
target. So delta is added at the down projection's output (the MLP module's output, before N) and optimised
through N and everything after it (eq. 4 with the site moved before the norm): then W_hat k* = v* = W k* + delta
gives N(W_hat k*) = N(v*), exactly the contribution the optimisation found. Optimising after N and inverting it
does not work: N's outputs satisfy mean((N(y) / g)^2) < 1, so a delta added after N has in general no preimage.
The clamp and weight decay then compare |delta| with |W k*| before the norm (N is scale-invariant, so only the
direction of v* matters once |v*| >> sqrt(eps)).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..core import checks
from ..core.arch import float32_logits
from ..core.interventions import Add
from ..core.default_model import MEASURED
from ..core.generation import generate_ids, pad_right
from .requests import EditError, EditRequest, already_predicted, as_requests, edit_layers, subject_last
from .weights import WeightEdit, frozen

# Layer edited by default on the embedded SmolLM2-135M (30 layers), chosen from causal tracing; see the README.
PREFIX_STARTS = ["The", "Therefore", "Because", "I", "You"]
HPARAMS = ("steps", "lr", "kl_factor", "weight_decay", "clamp_norm")  # of the value optimisation


def check_hparams(hparams: dict, allowed=HPARAMS) -> dict:
    """Names among `allowed` and values that mean something: steps an int >= 1, lr a learning rate, eps and
    clamp_norm > 0, kl_factor and weight_decay >= 0 (all finite). Shared by ROME, MEMIT, FT-L and the CLI."""
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise EditError(f"hparams: unknown {unknown}; expected some of {list(allowed)}")
    for name, v in hparams.items():
        if name == "steps":
            checks.integer(v, name, error=EditError)
        elif name == "lr":
            checks.learning_rate(v, error=EditError)
        elif name in ("eps", "clamp_norm"):
            checks.number(v, name, positive=True, error=EditError)
        else:
            checks.number(v, name, minimum=0, error=EditError)
    return hparams


def default_layer(model) -> int:
    """The edit layer: the traced choice for the default model, else about a sixth of the depth."""
    return MEASURED.get(model.name, {}).get("edit_layer", max(0, model.dims.n_layers // 6))


def context_prefixes(model, n: int = 5, length: int = 10, seed: int = 0) -> list[str]:
    """"" plus `n` short texts sampled from the model (top-k 5, fixed seed), each followed by ". " (ROME's templates)."""
    if n == 0:
        return [""]
    starts = [model.tokenizer(PREFIX_STARTS[i % len(PREFIX_STARTS)]).input_ids for i in range(n)]
    new = generate_ids(model, starts, do_sample=True, top_k=5, max_new_tokens=length, seed=seed, batch_size=n,
                       cut_at_stop=False)
    texts = [model.tokenizer.decode(a + b, skip_special_tokens=True) for a, b in zip(starts, new)]
    return [""] + [t.replace("{", " ").replace("}", " ").replace("\n", " ").strip() + ". " for t in texts]


def _rows(model, prompt: str, subject: str, prefixes: list[str], suffix_ids: list[int] = ()):
    """Token rows prefix+prompt(+suffix) and the subject's last position in each."""
    rows, pos = [], []
    for p in prefixes:
        text = p + prompt
        rows.append(model.tokenizer(text).input_ids + list(suffix_ids))
        pos.append(subject_last(model, text, subject, occurrence=p.count(subject)))
    return rows, pos


def compute_keys(model, requests: list[EditRequest], layer: int, prefixes: list[str]) -> Tensor:
    """k*: for each request, the mean of blocks.{layer}.mlp.hook_post at the subject's last token
    over the prefixed prompts (eq. 3), [n_requests, d_mlp]."""
    rows, pos = [], []
    for r in requests:
        rr, pp = _rows(model, r.prompt, r.subject, prefixes)
        rows += rr
        pos += pp
    ids, mask = pad_right(model, rows)
    site = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(ids, [site], attention_mask=mask, logits=False)
    keys = cache[site][torch.arange(len(rows)), torch.tensor(pos)]  # [n_requests * n_prefixes, d_mlp]
    return keys.reshape(len(requests), len(prefixes), -1).mean(1)


def optimise_deltas(model, requests: list[EditRequest], site: str, prefixes: list[str], *, steps: int = 20,
                    lr: float = 0.5, kl_factor: float = 0.0625, weight_decay: float = 0.5, clamp_norm: float = 4.0,
                    progress: bool = False) -> tuple[Tensor, list[dict]]:
    """delta_i [d_model] added to `site` at request i's subject's last token so that its prompts predict its
    target (eq. 4); all requests in one batch, each with its own delta, loss and early stop. [n, d_model].

    Rows per request: every prefix + prompt + target (teacher forcing), and "{subject} is a" for the KL term.
    loss_i = mean NLL(target tokens) + kl_factor * KL(p || p_0)("{subject} is a")
             + weight_decay * |delta_i| / |h0_i|^2,   |delta_i| <= clamp_norm * |h0_i|,
    h0_i the site's value at the subject's last token of the bare prompt. Adam is elementwise, so
    optimising the sum of the losses gives each delta_i exactly what optimising it alone would.
    """
    rows, pos, owner, tgt_rows = [], [], [], []   # tgt_rows: (row, position, token, request) per target token
    kl_rows, first_rows = [], []
    for i, r in enumerate(requests):
        t_ids = r.check(model)
        rr, pp = _rows(model, r.prompt, r.subject, prefixes, t_ids)
        first_rows.append(len(rows))
        for row in rr:
            for j, t in enumerate(t_ids):
                tgt_rows.append((len(rows), len(row) - len(t_ids) - 1 + j, t, i))
            rows.append(row)
            owner.append(i)
        pos += pp
        kl_text = f"{r.subject} is a"
        kl_rows.append(len(rows))
        rows.append(model.tokenizer(kl_text).input_ids)
        pos.append(subject_last(model, kl_text, r.subject))
        owner.append(i)
    ids, mask = pad_right(model, rows)
    dev = ids.device
    t_row, t_pos, t_tok, t_req = (torch.tensor(c, device=dev) for c in zip(*tgt_rows))
    n_tok = torch.zeros(len(requests), device=dev).index_add_(0, t_req, torch.ones(len(t_req), device=dev))
    kl_rows_t, kl_pos = torch.tensor(kl_rows, device=dev), torch.tensor([pos[k] for k in kl_rows], device=dev)
    owner_t = torch.tensor(owner, device=dev)
    # only the target and KL positions are unembedded (on a 262k vocabulary the full unembedding is most of the cost)
    last = f"blocks.{model.dims.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, [site, last], attention_mask=mask, logits=False)
        h0 = cache[site][torch.tensor(first_rows, device=dev), torch.tensor([pos[k] for k in first_rows], device=dev)]
        kl_init = float32_logits(model.hf, model.arch, cache[last][kl_rows_t, kl_pos]).log_softmax(-1)  # [n, vocab]
    h0_norm = h0.norm(dim=-1)                                                        # [n]
    delta = torch.zeros(len(requests), model.dims.d_model, device=dev, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    active = torch.ones(len(requests), dtype=torch.bool, device=dev)
    infos = [{} for _ in requests]
    from tqdm.auto import tqdm

    with frozen(model):
        for it in tqdm(range(steps), disable=not progress, desc=f"optimising {len(requests)} value(s)", unit="step"):
            add = Add(site, rows=list(range(len(rows))), positions=pos, pointwise=True, vector=delta[owner_t])
            _, cache = model.run_with_cache(ids, [last], interventions=[add], attention_mask=mask, grad=True, logits=False)
            resid = cache[last]                                                   # float32 loss in any dtype
            tok_logp = float32_logits(model.hf, model.arch, resid[t_row, t_pos]).log_softmax(-1).gather(-1, t_tok[:, None])[:, 0]
            nll = -torch.zeros(len(requests), device=dev).index_add(0, t_req, tok_logp) / n_tok   # [n]
            kl_logp = float32_logits(model.hf, model.arch, resid[kl_rows_t, kl_pos]).log_softmax(-1)
            kl = kl_factor * (kl_logp.exp() * (kl_logp - kl_init)).sum(-1)                   # [n]
            wd = weight_decay * delta.norm(dim=-1) / h0_norm ** 2                               # [n]
            loss = nll + kl + wd
            if not torch.isfinite(loss).all():
                raise EditError(f"request: the value optimisation diverged (loss {loss.tolist()}); weights untouched")
            for i in range(len(requests)):
                if active[i]:
                    infos[i] = {"steps": it + 1, "loss": loss[i].item(), "nll": nll[i].item(), "kl": kl[i].item(),
                                "p_target": (-nll[i]).exp().item()}
            active &= loss.detach() >= 5e-2
            if not active.any() or it == steps - 1:
                break
            kept = delta.detach().clone()
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():  # finished requests keep their delta; project into |delta_i| <= clamp_norm |h0_i|
                delta[~active] = kept[~active]
                scale = (clamp_norm * h0_norm / delta.norm(dim=-1)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    for i in range(len(requests)):
        infos[i].update(delta_norm=delta[i].norm().item(), h0_norm=h0_norm[i].item())
    return delta.detach(), infos


def value_site(model, layer: int):
    """(model, site) at which ROME optimises its value delta: blocks.{layer}.hook_mlp_out where the block adds the
    down projection's output as is; on a post-norm family the same site on a view of the model whose table reads
    the MLP module's own output (the down projection's, before the post-norm that still runs after it)."""
    import copy
    import dataclasses

    site = f"blocks.{layer}.hook_mlp_out"
    if model.arch.mlp_out is None:
        return model, site
    view = copy.copy(model)  # the same weights and tokenizer; only the table entry differs
    view.arch = dataclasses.replace(model.arch, mlp_out=None)
    return view, site


def rank_one_update(W: Tensor, C: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Eq. (2): the update W_hat - W = Lambda (C^-1 k)^T with Lambda = (v - W k) / ((C^-1 k)^T k), [d_out, d_in].

    W_hat minimises |W_hat K - W K| (C = K K^T / n) subject to W_hat k = v. Computed in float64.
    """
    W, C, k, v = W.double(), C.double(), k.double(), v.double()
    u = torch.linalg.solve(C, k)                                                   # C^-1 k
    lam = (v - W @ k) / (u @ k)                                                    # Lambda
    return torch.outer(lam, u)


def rome_many(model, requests, layer: int | None = None, *, prefixes: list[str] | None = None,
              value_prefixes: int | None = None, C: Tensor | None = None, stats: dict | None = None,
              **hparams) -> list[WeightEdit]:
    """ROME edits of several requests, each computed alone against the unedited model (as if by `rome`),
    with the value optimisations batched. Apply them one at a time (use `memit` for edits made together)."""
    from ..core.arch import weight_out_in
    from .stats import second_moment

    model.module("mlp_down", 0)  # a mixture of experts has no single down projection: refused here, naming why
    requests = as_requests(requests)
    targets = [r.check(model) for r in requests]
    layer = edit_layers(model, default_layer(model) if layer is None else layer)[0]
    check_hparams(hparams)
    d = model.dims.d_mlp
    if C is not None and (not isinstance(C, Tensor) or tuple(C.shape) != (d, d)):
        raise EditError(f"C: expected a [{d}, {d}] tensor (the layer's key second moment), got "
                        f"{tuple(C.shape) if isinstance(C, Tensor) else type(C).__name__}")
    prefixes = context_prefixes(model) if prefixes is None else list(prefixes)
    fp = model.fingerprint
    edits: list[WeightEdit | None] = [None] * len(requests)
    todo = []
    for i, (r, t) in enumerate(zip(requests, targets)):
        meta = {"method": "rome", "layer": layer, "request": dict(r.__dict__), "fingerprint": fp}
        if already_predicted(model, r.prompt, t):
            edits[i] = WeightEdit({}, {**meta, "note": "target already predicted; nothing to edit"}, noop=True)
        else:
            todo.append((i, meta))
    if not todo:
        return edits
    if C is None:
        C = second_moment(model, layer, **(stats or {}))
    W = weight_out_in(model.module("mlp_down", layer)).detach().double()          # [d_model, d_mlp]
    todo_req = [requests[i] for i, _ in todo]
    with torch.no_grad():
        K = compute_keys(model, todo_req, layer, prefixes).double()                # k*  [n, d_mlp]
    v_prefixes = prefixes if value_prefixes is None else prefixes[:1 + value_prefixes]
    view, site = value_site(model, layer)
    deltas, infos = optimise_deltas(view, todo_req, site, v_prefixes, **hparams)
    C = C.double().to(K.device)
    for (i, meta), k, delta, info in zip(todo, K, deltas.double(), infos):
        v = W @ k + delta                                                          # v* = W k* + delta
        update = rank_one_update(W, C, k, v).float()                               # eq. (2), same k* throughout
        if not torch.isfinite(update).all():
            raise EditError("request: the rank-one update is not finite (singular C?); weights untouched")
        meta.update(info, n_key_prefixes=len(prefixes), n_value_prefixes=len(v_prefixes), hparams=hparams)
        edits[i] = WeightEdit({layer: update}, meta)
    return edits


def rome(model, request, layer: int | None = None, **kw) -> WeightEdit:
    """Compute the ROME edit of one request; the model is not changed (apply the returned `WeightEdit`).

    `layer` defaults to `default_layer(model)`. Keyword arguments: `prefixes` (default
    `context_prefixes(model)`), `value_prefixes` (use only the first n prefixes in the value optimisation),
    `C` (the layer's key second moment; default `second_moment(model, layer, **stats)`), `stats`, and the
    value optimisation's `steps`, `lr`, `kl_factor`, `weight_decay`, `clamp_norm`. A request the model
    already fulfils gives an edit with `noop=True` and no updates.
    """
    return rome_many(model, [request], layer, **kw)[0]
