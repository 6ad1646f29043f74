"""Per-layer transcoders: each layer's MLP, replaced by a sparse, wide, one-hidden-layer map, in SAELens's classes.

A transcoder at layer l reads the MLP's input x (the ln2 output, [..., d_model]) and predicts its output y:

    pre   = x W_enc + b_enc                              [..., d_sae]
    a     = pre * (pre > threshold)                      JumpReLU (threshold > 0, so a = ReLU(pre) where active)
    y_hat = a W_dec + b_dec (+ x W_skip^T)               [..., d_model]; W_skip only for skip transcoders

Classes and files are SAELens's (`sae_lens.saes.transcoder`): `JumpReLUTranscoder` /
`JumpReLUSkipTranscoder`, one folder per layer (`layer_<l>/cfg.json` + `sae_weights.safetensors`), plus
`transcoders.json` naming the model (fingerprint), its depth and width, and the layers.

Training (`train_transcoders`): every layer in one pass over the text. Each step runs the model once on a
batch of texts (no logits computed), catches every MLP's input and output, and takes one Adam step for
every layer's transcoder on those tokens. Training is BatchTopK (the batch keeps its k * n_tokens largest
activations), the JumpReLU threshold is the running mean of the smallest activation kept (SAELens saves
BatchTopK SAEs as JumpReLU the same way). Inputs and outputs are scaled
to mean squared norm d_model while training, the scales folded into the weights at the end. SAELens's
`SAETrainer` is not used: it trains SAEs (output = input) and has no training class for transcoders.
Checkpoints (weights, Adam moments, step, thresholds) are safetensors + JSON in a `SweepFolder`, every
`checkpoint_every` steps; a killed run resumes from the last one.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..core.io import atomic_write_text, save_safetensors
from ..toolkit.sweep import SweepFolder
from ..core import checks

SET_FILE = "transcoders.json"
DEFAULT_TRANSCODERS = "transcoders/smollm2-135m"  # the set shipped in workbench/data (float16; see docs/circuits.md)


# -- the MLPs' inputs and outputs -------------------------------------------------------------------------

@contextmanager
def on_mlps(model, fn: Callable[[int, Tensor, Tensor], Tensor | None], layers: Sequence[int] | None = None):
    """While in the body, `fn(layer, x, y)` sees every listed layer's MLP input x and output y [batch, pos,
    d_model]; a tensor it returns replaces the MLP's output."""
    handles = []

    def hook_for(layer):
        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            new = fn(layer, x, output)
            return output if new is None else new
        return hook

    try:
        for l in range(model.dims.n_layers) if layers is None else layers:
            handles.append(model.module("mlp", l).register_forward_hook(hook_for(l), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _no_logits_model(model):
    """The model without its unembedding (SAE training's reader: every block, no logits)."""
    from ..sae.train import reader_model

    return reader_model(model, f"blocks.{model.dims.n_layers - 1}.hook_resid_post")


# -- training --------------------------------------------------------------------------------------------

class _Trainable(torch.nn.Module):
    """All layers' transcoders as stacked parameters [n_layers, ...] (one Adam over them all)."""

    def __init__(self, n: int, d_model: int, d_sae: int, skip: bool, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, d_model, d_sae, generator=g) / math.sqrt(d_model)
        self.W_enc = torch.nn.Parameter(w)
        self.W_dec = torch.nn.Parameter(0.1 * w.transpose(1, 2) / w.transpose(1, 2).norm(dim=-1, keepdim=True))
        self.b_enc = torch.nn.Parameter(torch.zeros(n, d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(n, d_model))
        self.W_skip = torch.nn.Parameter(torch.zeros(n, d_model, d_model)) if skip else None
        self.register_buffer("threshold", torch.zeros(n))
        self.register_buffer("fired", torch.zeros(n, d_sae))  # tokens each latent fired on since the start

    def forward(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """x [n, tokens, d_model] -> (y_hat [n, tokens, d_model], acts [n, tokens, d_sae], smallest kept [n])."""
        pre = torch.relu(torch.einsum("ntd,nds->nts", x, self.W_enc) + self.b_enc[:, None])
        flat = pre.flatten(1)
        top = flat.topk(k * x.shape[1], dim=-1)  # BatchTopK: the batch's k * n_tokens largest
        acts = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(pre)
        y = torch.einsum("nts,nsd->ntd", acts, self.W_dec) + self.b_dec[:, None]
        if self.W_skip is not None:
            y = y + torch.einsum("ntd,nod->nto", x, self.W_skip)
        smallest = torch.where(top.values > 0, top.values, torch.inf).min(-1).values
        return y, acts, smallest


class _TrainableCLT(_Trainable):
    """A cross-layer transcoder as stacked parameters: W_dec [n, d_sae, n, d_model], source layer l writing to
    targets m >= l only (a fixed mask); the per-layer initialisation on the diagonal l = m, zeros elsewhere."""

    def __init__(self, n: int, d_model: int, d_sae: int, seed: int):
        super().__init__(n, d_model, d_sae, False, seed)
        w = torch.zeros(n, d_sae, n, d_model)
        w[torch.arange(n), :, torch.arange(n)] = self.W_dec.detach()
        self.W_dec = torch.nn.Parameter(w)
        self.register_buffer("mask", torch.ones(n, n).triu()[:, None, :, None])  # [source, 1, target, 1]

    def forward(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        pre = torch.relu(torch.einsum("ntd,nds->nts", x, self.W_enc) + self.b_enc[:, None])
        flat = pre.flatten(1)
        top = flat.topk(k * x.shape[1], dim=-1)
        acts = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(pre)
        # y_hat_m = sum_{l <= m} a_l W_dec[l, :, m] + b_dec[m]
        y = torch.einsum("lts,lsmd->mtd", acts, self.W_dec * self.mask) + self.b_dec[:, None]
        smallest = torch.where(top.values > 0, top.values, torch.inf).min(-1).values
        return y, acts, smallest


def _token_batches(model, texts: Sequence[str], texts_per_step: int, seed: int, start_step: int):
    """(ids, mask) for each step: seeded permutations of `texts`, `texts_per_step` at a time, resumable."""
    per_epoch = max(1, len(texts) // texts_per_step)
    step = start_step
    while True:
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        while i < per_epoch:
            yield model.encode([texts[j] for j in perm[i * texts_per_step:(i + 1) * texts_per_step]])
            i += 1
            step += 1


def read_mlp_io(model, ids: Tensor, mask: Tensor | None, skip_first: int = 1,
                layers: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Every listed layer's MLP (input, output) on the real tokens of `ids` but each text's first
    `skip_first`: two tensors [n_layers, n_tokens, d_model], from one forward."""
    layers = list(range(model.dims.n_layers)) if layers is None else list(layers)
    xs, ys = {}, {}

    def catch(layer, x, y):
        xs[layer], ys[layer] = x.detach(), y.detach()

    with torch.no_grad(), on_mlps(model, catch, layers):
        model.hf(input_ids=ids, attention_mask=mask)
    keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
    keep[:, :skip_first] = False
    return (torch.stack([xs[l][keep] for l in layers]).float(), torch.stack([ys[l][keep] for l in layers]).float())


def _save_state(folder: SweepFolder, net: _Trainable, opt, step: int, scales: Tensor) -> None:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        tensors[f"adam.{i}.exp_avg"], tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
        tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    tensors["scales"] = scales
    ck = folder.path / folder.items_dir
    save_safetensors(ck / "state.safetensors", tensors, {"step": str(step)})
    atomic_write_text(ck / "state.json", json.dumps({"step": step}))


def _load_state(folder: SweepFolder, net: _Trainable, opt) -> tuple[int, Tensor | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    ck = folder.path / folder.items_dir
    if not (ck / "state.json").is_file() or not (ck / "state.safetensors").is_file():
        return 0, None
    step = json.loads((ck / "state.json").read_text())["step"]
    with safe_open(str(ck / "state.safetensors"), "pt") as f:
        if (f.metadata() or {}).get("step") != str(step):
            raise ValueError(f"out: checkpoint files in {ck} are from different steps; delete the folder or use force")
    t = load_file(str(ck / "state.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    state = opt.state_dict()
    for i in range(len(state["param_groups"][0]["params"])):
        if f"adam.{i}.exp_avg" in t:
            state["state"][i] = {"step": t[f"adam.{i}.step"].reshape(()).float(), "exp_avg": t[f"adam.{i}.exp_avg"],
                                 "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"]}
    opt.load_state_dict(state)
    return step, t["scales"]


def _check_int(name, v, lo):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise checks.fail(name, f'an int >= {lo}', v)


def train_transcoders(model, texts: Sequence[str], *, d_sae: int = 1024, k: int = 32, steps: int = 300,
                      texts_per_step: int = 8, lr: float = 1e-3, skip: bool = False, seed: int = 0, skip_first: int = 1,
                      updates_per_step: int = 1, kind: str = "per_layer", out: str | Path | None = None, checkpoint_every: int = 50, force: bool = False,
                      stop_at: int | None = None, progress: bool = True) -> list | None:
    """One JumpReLU transcoder per layer of `model` (SAELens classes; see the module docstring), trained together.

    texts: training text; each step reads `texts_per_step` of them (every real token but the first
    `skip_first` of each). d_sae latents, k active per token on average (BatchTopK). skip: add a linear skip
    connection (`JumpReLUSkipTranscoder`). updates_per_step: Adam updates per forward pass, each on a seeded
    share of the step's tokens (the model's forward costs most of a step on a CPU; more updates per forward
    train more for nearly the same time). kind: "per_layer" (one transcoder per MLP) or "clt" (one cross-layer
    transcoder: features read at each layer's MLP input write to that and every later MLP's output; see clt.py;
    its decoder holds n_layers^2 / 2 d_sae x d_model matrices, so it is for small models or narrow widths). out: a resumable run folder (config.json, checkpoint/ every
    `checkpoint_every` steps, transcoders/ at the end). stop_at: stop after this step, checkpointed, and return
    None (call again to continue). Returns the transcoders, one per layer (a CrossLayerTranscoder for "clt"), in
    eval mode.
    """
    from tqdm.auto import tqdm

    for name, v, lo in (("d_sae", d_sae, 1), ("k", k, 1), ("steps", steps, 1), ("texts_per_step", texts_per_step, 1),
                        ("checkpoint_every", checkpoint_every, 1), ("skip_first", skip_first, 0),
                        ("updates_per_step", updates_per_step, 1)):
        _check_int(name, v, lo)
    if k > d_sae:
        raise checks.fail('k', f'k <= d_sae ({d_sae})', k)
    if kind not in ("per_layer", "clt"):
        raise checks.fail("kind", "'per_layer' or 'clt'", kind)
    if kind == "clt" and skip:
        raise ValueError("skip: a cross-layer transcoder has no skip connection; expected skip=False with kind='clt'")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise checks.fail('lr', 'a number > 0', lr)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if len(texts) < texts_per_step:
        raise checks.fail('texts', f'at least texts_per_step={texts_per_step} non-empty texts', len(texts))
    if stop_at is not None and (out is None or not isinstance(stop_at, int) or not 0 < stop_at < steps):
        raise checks.fail('stop_at', f'a step in 1..{steps - 1} and an out folder to continue from', stop_at)
    folder = None
    if out is not None:
        import hashlib

        config = {"model": model.name, "fingerprint": model.fingerprint, "kind": kind, "d_sae": d_sae, "k": k,
                  "steps": steps, "texts_per_step": texts_per_step, "lr": lr, "skip": skip, "seed": seed,
                  "skip_first": skip_first, **({"updates_per_step": updates_per_step} if updates_per_step > 1 else {}),
                  "texts": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]}
        folder = SweepFolder(out, config, items="checkpoint", force=force, ignore=("steps",)).start()

    try:  # the folder's lock is released however training ends (done, stopped at `stop_at`, or an error)
        n, d = model.dims.n_layers, model.dims.d_model
        reader = _no_logits_model(model)
        net = _TrainableCLT(n, d, d_sae, seed) if kind == "clt" else _Trainable(n, d, d_sae, skip, seed)
        params = [p for p in (net.W_enc, net.W_dec, net.b_enc, net.b_dec, net.W_skip) if p is not None]
        opt = torch.optim.Adam(params, lr=lr)
        start, scales = _load_state(folder, net, opt) if folder is not None else (0, None)
        batches = _token_batches(model, texts, texts_per_step, seed, start)
        history = []
        bar = tqdm(total=steps, initial=start, disable=not progress, desc=f"training {n} transcoders", unit="step")
        for step in range(start, steps):
            x, y = read_mlp_io(reader, *next(batches), skip_first=skip_first)
            if scales is None:  # [n, 2]: input and output scales making E||c x||^2 = d_model, fixed from the first batch
                scales = torch.stack([math.sqrt(d) / x.pow(2).sum(-1).mean(-1).sqrt(),
                                      math.sqrt(d) / y.pow(2).sum(-1).mean(-1).sqrt()], -1)
                with torch.no_grad():
                    net.b_dec.copy_(y.mean(1) * scales[:, 1:])
            x, y = x * scales[:, None, :1], y * scales[:, None, 1:]
            for g in opt.param_groups:  # cosine decay to lr / 10
                g["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * step / steps))
            parts = [slice(None)] if updates_per_step == 1 else \
                torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed * 7919 + step)).chunk(updates_per_step)
            for i, part in enumerate(parts):
                xb, yb = x[:, part], y[:, part]
                y_hat, acts, smallest = net(xb, k)
                # loss: squared error per token, summed over layers (each layer's parameters see only their own term)
                loss = (y_hat - yb).pow(2).sum(-1).mean(-1).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    net.threshold.copy_(smallest if step == 0 and i == 0 else 0.99 * net.threshold + 0.01 * smallest)
                    net.fired += (acts > 0).sum(1)
            bar.update(1)
            if (step + 1) % 25 == 0 or step + 1 in (1, steps):
                with torch.no_grad():
                    fve = 1 - (y_hat - yb).pow(2).sum((-1, -2)) / (yb - yb.mean(1, keepdim=True)).pow(2).sum((-1, -2))
                history.append({"step": step + 1, "loss": float(loss.detach()) / n, "fve": fve.tolist()})
                bar.set_postfix(mean_fve=f"{fve.mean():.3f}")
            if folder is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps or step + 1 == stop_at):
                _save_state(folder, net, opt, step + 1, scales)
            if stop_at is not None and step + 1 >= stop_at:
                bar.close()
                return None
        bar.close()
        if kind == "clt":
            tcs = _to_clt(net, scales, model, k, texts_per_step * steps)
        else:
            tcs = _to_saelens(net, scales, model, d_sae, k, skip, texts_per_step * steps)
        if folder is not None:
            if kind == "clt":
                from .clt import save_clt

                save_clt(tcs, folder.path / "clt")
            else:
                save_transcoders(tcs, model, folder.path / "transcoders")
            folder.write_json("history.json", history)
        return tcs
    finally:
        if folder is not None:
            folder.release()


def _to_saelens(net: _Trainable, scales: Tensor, model, d_sae: int, k: int, skip: bool, n_texts: int) -> list:
    """The trained stack as SAELens inference transcoders, one per layer, scales folded into the weights:
    W_enc' = c_in W_enc, W_dec' = W_dec / c_out, b_dec' = b_dec / c_out, W_skip' = W_skip c_in / c_out."""
    from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                          JumpReLUTranscoderConfig)

    cls, cfg_cls = (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig) if skip else (JumpReLUTranscoder,
                                                                                        JumpReLUTranscoderConfig)
    d = model.dims.d_model
    out = []
    for l in range(model.dims.n_layers):
        c_in, c_out = scales[l, 0].item(), scales[l, 1].item()
        tc = cls(cfg_cls(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False))
        with torch.no_grad():
            tc.W_enc.copy_(net.W_enc[l] * c_in)
            tc.b_enc.copy_(net.b_enc[l])
            tc.W_dec.copy_(net.W_dec[l] / c_out)
            tc.b_dec.copy_(net.b_dec[l] / c_out)
            tc.threshold.copy_(net.threshold[l].expand(d_sae))
            if skip:
                tc.W_skip.copy_(net.W_skip[l] * c_in / c_out)
        meta = tc.cfg.metadata
        meta["model_name"], meta["workbench_fingerprint"] = model.name, model.fingerprint
        meta["hook_name"], meta["hook_name_out"] = f"blocks.{l}.hook_mlp_in", f"blocks.{l}.hook_mlp_out"
        meta["hook_layer"], meta["train_k"], meta["train_texts"] = l, k, n_texts
        meta["train_dead_fraction"] = float((net.fired[l] == 0).float().mean())
        out.append(tc.eval().requires_grad_(False))
    return out


def _to_clt(net: _TrainableCLT, scales: Tensor, model, k: int, n_texts: int):
    """The trained stack as a CrossLayerTranscoder, scales folded in: W_enc[l]' = c_in[l] W_enc[l],
    W_dec[l][:, m]' = W_dec[l, :, m] / c_out[m], b_dec[m]' = b_dec[m] / c_out[m]."""
    from .clt import CrossLayerTranscoder

    n, d, s = model.dims.n_layers, model.dims.d_model, net.W_enc.shape[-1]
    meta = {"model_name": model.name, "workbench_fingerprint": model.fingerprint, "hook_name": "blocks.{l}.hook_mlp_in",
            "hook_name_out": "blocks.{m}.hook_mlp_out", "train_k": k, "train_texts": n_texts,
            "train_dead_fraction": [float((net.fired[l] == 0).float().mean()) for l in range(n)]}
    clt = CrossLayerTranscoder(n, d, s, d, meta)
    c_in, c_out = scales[:, 0], scales[:, 1]
    with torch.no_grad():
        clt.W_enc.copy_(net.W_enc * c_in[:, None, None])
        clt.b_enc.copy_(net.b_enc)
        clt.threshold.copy_(net.threshold[:, None].expand(n, s))
        clt.b_dec.copy_(net.b_dec / c_out[:, None])
        for l in range(n):
            clt.W_dec[l].copy_(net.W_dec[l, :, l:] / c_out[None, l:, None])
    return clt.eval().requires_grad_(False)


# -- files -----------------------------------------------------------------------------------------------

def save_transcoders(transcoders: Sequence, model, path: str | Path, *, weights_dtype: torch.dtype | None = None) -> Path:
    """Write one SAELens folder per layer (`layer_<l>/`) and `transcoders.json` (model, depth, width), atomically
    file by file, the index last."""
    from sae_lens.saes.transcoder import Transcoder

    from ..sae.format import save_sae

    tcs = list(transcoders)
    if len(tcs) != model.dims.n_layers or not all(isinstance(t, Transcoder) for t in tcs):
        raise checks.fail('transcoders', f'{model.dims.n_layers} sae_lens Transcoders (one per layer)',
                          [type(t).__name__ for t in tcs])
    path = Path(path)
    for l, tc in enumerate(tcs):
        save_sae(tc, path / f"layer_{l}", weights_dtype=weights_dtype)
    index = {"model_name": model.name, "workbench_fingerprint": model.fingerprint, "kind": "per_layer",
             "n_layers": model.dims.n_layers, "d_model": model.dims.d_model, "d_sae": tcs[0].cfg.d_sae,
             "architecture": tcs[0].cfg.architecture(), "layers": [f"layer_{l}" for l in range(len(tcs))]}
    atomic_write_text(path / SET_FILE, json.dumps(index, indent=2))
    return path


def load_transcoders(path: str | Path, model, *, allow_other_model: bool = False) -> list:
    """The per-layer transcoders in `path` (see `save_transcoders`), checked against `model`: the same model
    (fingerprint), the same depth (one per layer) and width (d_in = d_out = d_model). Reads safetensors only."""
    from safetensors.torch import load_file
    from sae_lens import SAE
    from sae_lens.saes.transcoder import Transcoder

    from ..sae.format import CFG_FILE, WEIGHTS_FILE, check_model

    path = Path(path)
    if not (path / SET_FILE).is_file():
        raise ValueError(f"transcoders: {path} has no {SET_FILE}; expected a folder written by save_transcoders")
    index = json.loads((path / SET_FILE).read_text())
    if index.get("n_layers") != model.dims.n_layers or len(index.get("layers", ())) != model.dims.n_layers:
        raise ValueError(f"transcoders: {path} holds {index.get('n_layers')} layers, but {model.name!r} has "
                         f"{model.dims.n_layers}; expected one transcoder per layer")
    if index.get("d_model") != model.dims.d_model:
        raise ValueError(f"transcoders: {path} was trained at width d_model={index.get('d_model')}, but "
                         f"{model.name!r} has d_model={model.dims.d_model}")
    if not allow_other_model and index.get("workbench_fingerprint") not in (None, model.fingerprint):
        raise ValueError(f"transcoders: trained on model {index.get('model_name')!r} (fingerprint "
                         f"{index.get('workbench_fingerprint')}), but the model is {model.name!r} (fingerprint "
                         f"{model.fingerprint}); pass allow_other_model=True to use them anyway")
    out = []
    for l, name in enumerate(index["layers"]):
        folder = path / name
        for f in (CFG_FILE, WEIGHTS_FILE):
            if not (folder / f).is_file():
                raise ValueError(f"transcoders: {folder} has no {f}; expected SAELens's format")
        try:
            load_file(str(folder / WEIGHTS_FILE))  # safetensors header checked against the file size
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ValueError(f"transcoders: {folder / WEIGHTS_FILE} is truncated or corrupt ({e})") from None
        tc = SAE.load_from_disk(str(folder), device=str(model.device))
        if not isinstance(tc, Transcoder):
            raise ValueError(f"transcoders: {folder} is a {tc.cfg.architecture()}, not a transcoder")
        if tc.cfg.d_in != model.dims.d_model or tc.cfg.d_out != model.dims.d_model:
            raise ValueError(f"transcoders: {folder} maps {tc.cfg.d_in} -> {tc.cfg.d_out}, but {model.name!r}'s MLPs "
                             f"map {model.dims.d_model} -> {model.dims.d_model}")
        check_model(tc, model, allow_other_model)
        out.append(tc.eval().requires_grad_(False))
    return out


def default_transcoders(model=None) -> list:
    """The per-layer transcoder set shipped with the package for the default model (`DEFAULT_TRANSCODERS` in
    workbench/data: d_sae 512, float16 on disk, built by `benchmarks/circuits_default.py`), loaded and checked."""
    from ..core.loading import load_model
    from ..data import data_path

    return load_transcoders(data_path(DEFAULT_TRANSCODERS), model if model is not None else load_model())


# -- evaluation ------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_transcoders(model, transcoders: Sequence, texts: Sequence[str], *, skip_first: int = 1,
                         batch_size: int = 8, progress: bool = False) -> dict:
    """Per layer {"fve", "l0", "dead_fraction"} on the MLP outputs of `texts`, and for the whole replacement
    (every MLP's output replaced by its transcoder's, no error term) the next-token cross-entropy next to the
    clean model's and the model with every MLP zero-ablated:
    ce_recovered = (ce_zero - ce_replaced) / (ce_zero - ce_clean). Positions before `skip_first` are left alone.
    progress: a tqdm bar over the batches (rate, time left)."""
    from tqdm.auto import tqdm

    from ..core.generation import check_prompts

    texts = check_prompts(list(texts), "texts")
    n = model.dims.n_layers
    resid = torch.zeros(n, dtype=torch.float64)
    l0 = torch.zeros(n, dtype=torch.float64)
    fired = [torch.zeros(tc.cfg.d_sae, dtype=torch.bool) for tc in transcoders]
    sums_x = []
    n_tok = 0
    ce = {"clean": [0.0, 0], "replaced": [0.0, 0], "zero": [0.0, 0]}
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="transcoders eval", unit="batch"):
        ids, mask = model.encode(texts[start:start + batch_size])
        x, y = read_mlp_io(model, ids, mask, skip_first)
        sums_x.append((y.sum(1), y.pow(2).sum((1, 2)), y.shape[1]))
        for l, tc in enumerate(transcoders):
            a = tc.encode(x[l])
            resid[l] += (_transcode(tc, x[l]) - y[l]).pow(2).sum().double()
            l0[l] += (a > 0).sum().double()
            fired[l] |= (a > 0).any(0).cpu()
        n_tok += x.shape[1]

        def replaced(layer, xi, yi):
            return _transcode(transcoders[layer], xi).to(yi.dtype) if skip_first == 0 else \
                torch.cat([yi[:, :skip_first], _transcode(transcoders[layer], xi[:, skip_first:]).to(yi.dtype)], 1)

        def zeroed(layer, xi, yi):
            return torch.cat([yi[:, :skip_first], torch.zeros_like(yi[:, skip_first:])], 1)

        for name, fn in (("clean", None), ("replaced", replaced), ("zero", zeroed)):
            if fn is None:
                logits = model.hf(input_ids=ids, attention_mask=mask).logits
            else:
                with on_mlps(model, fn):
                    logits = model.hf(input_ids=ids, attention_mask=mask).logits
            s, c = _ce(logits, ids, mask)
            ce[name][0] += s
            ce[name][1] += c
    # total variance of y per layer: sum ||y||^2 - n ||mean y||^2
    sy = torch.stack([s[0] for s in sums_x]).sum(0).double()
    sq = torch.stack([s[1] for s in sums_x]).sum(0).double()
    total = sq - sy.pow(2).sum(-1) / n_tok
    c = {k_: s / max(m, 1) for k_, (s, m) in ce.items()}
    per_layer = [{"layer": l, "fve": float(1 - resid[l] / total[l]), "l0": float(l0[l] / n_tok),
                  "dead_fraction": float((~fired[l]).float().mean())} for l in range(n)]
    return {"layers": per_layer, "n_tokens": n_tok, "n_texts": len(texts), "ce_clean": c["clean"],
            "ce_replaced": c["replaced"], "ce_zero": c["zero"],
            "ce_recovered": float((c["zero"] - c["replaced"]) / (c["zero"] - c["clean"])),
            "mean_fve": float(sum(p["fve"] for p in per_layer) / n)}


def _transcode(tc, x: Tensor) -> Tensor:
    """y_hat = decode(encode(x)) (+ x W_skip^T for a skip transcoder)."""
    return tc(x.to(tc.dtype))


def _ce(logits, ids, mask):
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    real = torch.ones_like(nll, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    return float(nll[real].sum()), int(real.sum())
