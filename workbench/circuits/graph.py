"""Attribution graphs over a local replacement model (Ameisen et al. 2025, "Circuit Tracing").

The local replacement model of one prompt is the real model with
    attention patterns    P_l = the real forward's (stored, not recomputed): attention is P_l V(x), linear in x
    norm scales           s = 1 / sqrt(var(x) + eps) (LayerNorm) or 1 / sqrt(mean(x^2) + eps) (RMSNorm), stored
    MLPs                  y_l = sum_f a_f W_dec[f] + b_dec (+ x W_skip^T) + e_l,  e_l = y_l - transcoder_l(x_l)
so it reproduces the real logits exactly and is affine in its sources: the embeddings (resid_pre of block 0,
per position), the active features' activations a_f and the error vectors e_l. Every target t (a feature's
pre-activation x_l W_enc[:, f] + b_enc[f], or a top output logit's target, below) is then

    t = sum_s A[t, s] + bias_t,    A[t, s] = (dt / d source_s) . source_s   (activation x gradient, exact here)

and bias_t is t with every source at zero (the model's biases and the encoder bias). A logit's target is, as in
circuit-tracer (`compute_salient_logits`: the unembedding column minus the mean column), the logit minus the mean
logit over the vocabulary,

    t_logit(v) = z_v - mean_u z_u,    z = final_norm(resid) W_U (+ b_U)                     logit_target="demeaned"

(what moves one token's probability against the rest, not what lifts every logit alike), or the raw logit z_v
(logit_target="raw"). z is the unembedding's output before any final soft-cap c tanh(z / c) (Gemma 2): the
soft-cap is monotone and not linear, so targets are taken before it, as the lenses' direct logit attribution
does. A row of A is one
backward pass of the frozen model; a batch of B copies of the prompt, each row with its own target, gives B
rows per backward. Nodes are ordered as circuit-tracer's: [active features (layer, pos, feature), errors
(layer, pos), embeddings (pos), logits]; rows of A are targets, columns sources.

Pruning and scores follow circuit-tracer (`graph.py`): influence on the logits through |A| with rows normalised
to sum 1, summed over paths (B = W + W^2 + ..., W = logit weights x normalised A); nodes kept until the
`node_threshold` share of total influence, edges scored by normalised weight x target influence and kept until
the `edge_threshold` share; the replacement score is the share of the logits' influence reaching embeddings
rather than errors, the completeness score the influence-weighted share of incoming edges not from errors.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.interventions import Replace
from .transcoders import on_mlps
from ..core import checks


@dataclass
class Graph:
    """An attribution graph of one prompt (see the module docstring for the node order and the identities)."""

    prompt: str
    tokens: Tensor  # [pos] input token ids
    str_tokens: list[str]
    active_features: Tensor  # [n_features, 3] (layer, pos, feature)
    activation_values: Tensor  # [n_features]
    adjacency: Tensor  # [n_nodes, n_nodes], rows = targets, columns = sources
    bias: Tensor  # [n_nodes]: each target's value with every source at zero (0 for sources)
    target_values: Tensor  # [n_nodes]: features' pre-activations and logits in the real forward (0 for others)
    logit_tokens: Tensor  # [n_logits]
    logit_probabilities: Tensor  # [n_logits]
    n_layers: int
    model_name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.active_features)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def embedding_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_index(self, i: int) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + i

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """The node of an active feature; ValueError if it is not active at that position."""
        hit = ((self.active_features == torch.tensor([layer, pos, feature])).all(-1)).nonzero()
        if len(hit) == 0:
            raise ValueError(f"feature: ({layer}, {pos}, {feature}) is not active on this prompt")
        return int(hit[0, 0])

    def node(self, i: int) -> dict:
        """{"kind", "layer", "pos", "feature" / "token", "label"} of node `i`."""
        nf, L, P = self.n_features, self.n_layers, self.n_pos
        if i < nf:
            l, p, f = self.active_features[i].tolist()
            return {"kind": "feature", "layer": l, "pos": p, "feature": f, "label": f"L{l} F{f} @{p}"}
        if i < nf + L * P:
            l, p = divmod(i - nf, P)
            return {"kind": "error", "layer": l, "pos": p, "label": f"L{l} error @{p}"}
        if i < nf + (L + 1) * P:
            p = i - nf - L * P
            return {"kind": "embedding", "layer": -1, "pos": p, "label": f"emb {self.str_tokens[p]!r} @{p}"}
        j = i - nf - (L + 1) * P
        return {"kind": "logit", "layer": L, "pos": P - 1, "token": int(self.logit_tokens[j]),
                "label": f"logit {self.meta.get('logit_str', [''] * (j + 1))[j]!r} p={float(self.logit_probabilities[j]):.3f}"}


# -- the frozen replacement model -----------------------------------------------------------------------

def _norm_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """Every normalisation module of the model (LayerNorm / *RMSNorm), by name."""
    return [(n, m) for n, m in model.hf.named_modules() if isinstance(m, torch.nn.LayerNorm) or "RMSNorm" in type(m).__name__]


def _norm_gain(module) -> tuple[str, float, Tensor, Tensor | None]:
    """(kind, eps, gain a, bias b) with the norm = a * normalised(x) + b. An RMSNorm's gain is read off the module
    itself, a = norm(1) * sqrt(1 + eps), so Gemma's (1 + weight) and Llama's weight are both right."""
    from ..core.arch import norm_kind

    kind, eps = norm_kind(module)
    if kind == "layernorm":
        return kind, eps, module.weight.detach().float(), None if module.bias is None else module.bias.detach().float()
    w = module.weight
    with torch.no_grad():
        a = module(torch.ones(1, w.shape[-1], dtype=w.dtype, device=w.device)).float()[0] * (1 + eps) ** 0.5
    return kind, eps, a, None


class Coders:
    """Per-layer transcoders (a list, SAELens classes) or one `CrossLayerTranscoder`, behind one interface: layer l's
    encoder, and the decoder rows from the features read at layer l to MLP m (m = l only, for per-layer ones)."""

    def __init__(self, transcoders, n_layers: int):
        from .clt import CrossLayerTranscoder

        self.clt = transcoders if isinstance(transcoders, CrossLayerTranscoder) else None
        self.tcs = None if self.clt is not None else list(transcoders)
        n = self.clt.n_layers if self.clt is not None else len(self.tcs)
        if n != n_layers:
            raise checks.fail("transcoders", f"one per layer ({n_layers}) or a cross-layer transcoder over {n_layers} "
                              "layers", n)
        self.n_layers = n_layers
        self.d_sae = self.clt.d_sae if self.clt is not None else self.tcs[0].cfg.d_sae
        self.dtype = self.clt.dtype if self.clt is not None else self.tcs[0].dtype

    def W_enc(self, l: int) -> Tensor:  # [d_model, d_sae]
        return self.clt.W_enc[l] if self.clt is not None else self.tcs[l].W_enc

    def b_enc(self, l: int) -> Tensor:  # [d_sae]
        return self.clt.b_enc[l] if self.clt is not None else self.tcs[l].b_enc

    def encode(self, l: int, x: Tensor) -> Tensor:
        return self.clt.encode(l, x) if self.clt is not None else self.tcs[l].encode(x)

    def sources(self, m: int) -> range:
        """The layers whose features write to MLP m."""
        return range(m + 1) if self.clt is not None else range(m, m + 1)

    def decoder(self, l: int, m: int) -> Tensor:  # [d_sae, d_model]
        return self.clt.decoder(l, m) if self.clt is not None else self.tcs[m].W_dec

    def b_dec(self, m: int) -> Tensor:
        return self.clt.b_dec[m] if self.clt is not None else self.tcs[m].b_dec

    def skip(self, m: int, x: Tensor) -> Tensor | float:
        """x W_skip^T of a skip transcoder, else 0."""
        tc = None if self.tcs is None else self.tcs[m]
        return x @ tc.W_skip.T if tc is not None and hasattr(tc, "W_skip") else 0.0

    def reconstruct(self, m: int, x: Tensor, acts: list[Tensor]) -> Tensor:
        """MLP m's output as the transcoders write it, from its input x and every layer's activations acts[l]."""
        out = self.b_dec(m) + self.skip(m, x)
        for l in self.sources(m):
            out = out + acts[l] @ self.decoder(l, m)
        return out


class Replacement:
    """The local replacement model of `ids` (one prompt): the real forward's patterns, norm scales, MLP inputs and
    outputs, transcoder activations and errors are recorded once; `run` is the frozen forward. `transcoders`: one
    per layer, or a `CrossLayerTranscoder` (features at layer l write to every MLP m >= l)."""

    def __init__(self, model, transcoders, ids: Tensor):
        from ..core.arch import pattern_unsupported

        if (why := pattern_unsupported(model.hf, model.arch)):
            raise ValueError(f"model: attention patterns cannot be frozen on this model: {why}")
        self.coders = Coders(transcoders, model.dims.n_layers)
        self.model, self.ids = model, ids
        L = model.dims.n_layers
        self.norms = [(m, *_norm_gain(m)) for _, m in _norm_modules(model)]
        scales: dict[torch.nn.Module, Tensor] = {}

        def record(module, args, output):
            kind, eps = next((k, e) for m, k, e, _, _ in self.norms if m is module)
            x = args[0].float()
            var = x.var(-1, unbiased=False, keepdim=True) if kind == "layernorm" else x.pow(2).mean(-1, keepdim=True)
            scales[module] = torch.rsqrt(var + eps)

        xs, ys = {}, {}

        def catch(layer, x, y):
            xs[layer], ys[layer] = x.detach().float(), y.detach().float()

        sites = [f"blocks.{l}.attn.hook_pattern" for l in range(L)] + ["blocks.0.hook_resid_pre"]
        handles = [m.register_forward_hook(record) for m, *_ in self.norms]
        try:
            with torch.no_grad(), model.hooks(cache_sites=sites) as cache, on_mlps(model, catch), \
                    _unembedded(model) as z:
                model.hf(input_ids=ids, logits_to_keep=1)
                self.logits = z[0][0, -1].float()  # [d_vocab]: the unembedding's output, before any soft-cap
        finally:
            for h in handles:
                h.remove()
        self.scales = scales
        self.patterns = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]
        self.embedding = cache["blocks.0.hook_resid_pre"][0].float()  # [pos, d_model]
        self.mlp_in, self.mlp_out = xs, ys
        # transcoder features per layer, then each MLP's error: its output minus what the transcoders write
        self.pre, self.active, self.acts, self.errors = [], [], [], []
        c, full = self.coders, []
        with torch.no_grad():
            for l in range(L):
                x = xs[l][0].to(c.dtype)
                pre = x @ c.W_enc(l) + c.b_enc(l)  # [pos, d_sae]
                a = c.encode(l, x)
                full.append(a)
                idx = (a > 0).nonzero()  # [n_active, 2] (pos, feature)
                self.pre.append(pre[idx[:, 0], idx[:, 1]].float())
                self.active.append(idx)
                self.acts.append(a[idx[:, 0], idx[:, 1]].float())
            for m in range(L):
                self.errors.append(ys[m][0] - c.reconstruct(m, xs[m][0].to(c.dtype), full).float())  # [pos, d_model]

    def leaves(self, batch: int, zero: bool = False) -> dict:
        """The sources as leaf tensors [batch, ...] requiring grad (copies of the real values, or zeros)."""
        def leaf(v):
            v = v.detach()[None].repeat(batch, *([1] * v.ndim))
            return (torch.zeros_like(v) if zero else v).requires_grad_(True)

        return {"embedding": leaf(self.embedding), "acts": [leaf(a) for a in self.acts],
                "errors": [leaf(e) for e in self.errors]}

    def run(self, leaves: dict, logit_tokens: Tensor | None = None,
            logit_target: str = "raw") -> tuple[list[Tensor], Tensor]:
        """The frozen forward: ([per layer feature pre-activations [B, n_active_l]], logits [B, d_vocab] at the last
        position (the unembedding's output, before any soft-cap), or [B, n_logits], the targets of `logit_tokens`:
        raw logits, or minus the mean logit for logit_target="demeaned")."""
        model, B = self.model, leaves["embedding"].shape[0]
        c = self.coders
        pre_out: list[Tensor | None] = [None] * c.n_layers

        def frozen_norm(module, args, output):
            _, kind, eps, a, b = next(n for n in self.norms if n[0] is module)
            x = args[0].float()
            xc = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
            y = a * xc * self.scales[module]  # a * normalised(x), with the real forward's scale
            return (y if b is None else y + b).to(output.dtype)

        def replace_mlp(layer, x, y):
            idx = self.active[layer]
            xf = x.float()
            # targets: pre-activations of this layer's active features, x[pos] . W_enc[:, f] + b_enc[f]
            pre_out[layer] = (xf[:, idx[:, 0]] * c.W_enc(layer).T[idx[:, 1]]).sum(-1) + c.b_enc(layer)[idx[:, 1]]
            # output: sum over source layers l (l = layer for per-layer transcoders, l <= layer for a CLT) of
            # sum_f a_f W_dec[l -> layer][f], + b_dec (+ x W_skip^T) + error
            out = leaves["errors"][layer] + c.b_dec(layer) + c.skip(layer, xf)
            for l in c.sources(layer):
                src = self.active[l]
                contrib = leaves["acts"][l][..., None] * c.decoder(l, layer)[src[:, 1]]  # [B, n_active_l, d_model]
                out = out.index_add(1, src[:, 0], contrib)
            return out.to(y.dtype)

        ivs = [Replace(f"blocks.{l}.attn.hook_pattern", value=p) for l, p in enumerate(self.patterns)]
        ivs.append(Replace("blocks.0.hook_resid_pre", value=leaves["embedding"]))
        handles = [m.register_forward_hook(frozen_norm) for m, *_ in self.norms]
        # the weights are constants here: a forward that tracks them would keep every linear layer's input
        weights = [w for w in model.hf.parameters() if w.requires_grad]
        try:
            for w in weights:
                w.requires_grad_(False)
            with model.hooks(ivs), on_mlps(model, replace_mlp), _unembedded(model) as z:
                model.hf(input_ids=self.ids.expand(B, -1), logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
            for w in weights:
                w.requires_grad_(True)
        logits = z[0][:, -1].float()
        return pre_out, logits if logit_tokens is None else logit_targets(logits, logit_tokens, logit_target)


LOGIT_TARGETS = ("demeaned", "raw")


def logit_targets(logits: Tensor, tokens: Tensor, logit_target: str = "demeaned") -> Tensor:
    """[..., n_tokens]: the logits of `tokens` (logits [..., d_vocab]), minus the mean logit for "demeaned"."""
    if logit_target not in LOGIT_TARGETS:
        raise checks.fail("logit_target", f"one of {LOGIT_TARGETS}", logit_target)
    picked = logits[..., tokens]
    return picked - logits.mean(-1, keepdim=True) if logit_target == "demeaned" else picked


@contextmanager
def _unembedded(model):
    """While in the body, the list yielded holds the unembedding's output of the last forward (logits before any
    final soft-cap, [batch, pos, d_vocab])."""
    out: list[Tensor] = []

    def hook(module, args, output):
        out[:] = [output]

    handle = model.module("unembed").register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


# -- the graph -------------------------------------------------------------------------------------------

def attribute(model, prompt: str, transcoders, *, max_logits: int = 5, logit_probability: float = 0.95,
              batch_size: int = 32, max_feature_nodes: int | None = None, max_features: int | None = None,
              logit_target: str = "demeaned", uncomputed: str = "keep", progress: bool = False) -> Graph:
    """The attribution graph of `prompt` (see the module docstring) over per-layer `transcoders` (a list, one per
    layer) or a `CrossLayerTranscoder` (a feature's edges then reach every later layer's MLP output).

    Logit nodes: the most likely next tokens at the last position until their probabilities sum to
    `logit_probability`, at most `max_logits`; each node's target is its logit minus the mean logit
    (logit_target="demeaned", circuit-tracer's) or the raw logit ("raw"), before any final soft-cap. batch_size: targets per backward pass. max_feature_nodes: compute
    the incoming edges of at most this many features, chosen as circuit-tracer does: the logits' rows first, then,
    batch by batch, the not yet computed features of most influence on the logits through the rows so far (the
    others stay sources only: their rows are zero, and the identity `row sum + bias = pre-activation` holds for
    the computed rows only; `graph.meta["rows"]` lists them). uncomputed="drop" leaves those features out of the
    graph instead, as circuit-tracer does: the graph then holds max_feature_nodes features, and its memory no longer
    grows with the square of all active features (a long prompt has tens of thousands), at the cost of their
    edges into the computed rows. max_features: refuse prompts with more active features (the adjacency matrix
    is dense, n_nodes^2 floats). progress: a tqdm bar over the target nodes whose rows are computed (rate, time
    left).
    """
    if not isinstance(prompt, str) or not prompt:
        raise checks.fail('prompt', 'a non-empty string', prompt)
    for name, v in (("max_logits", max_logits), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise checks.fail(name, 'an int >= 1', v)
    if not 0 < logit_probability <= 1:
        raise checks.fail('logit_probability', 'a number in (0, 1]', logit_probability)
    if logit_target not in LOGIT_TARGETS:
        raise checks.fail("logit_target", f"one of {LOGIT_TARGETS}", logit_target)
    if uncomputed not in ("keep", "drop"):
        raise checks.fail("uncomputed", "'keep' or 'drop'", uncomputed)
    ids, _ = model.encode(prompt)
    rep = Replacement(model, transcoders, ids)
    L, P = model.dims.n_layers, ids.shape[1]
    from ..core.arch import final_logits

    probs = torch.softmax(final_logits(model.hf, model.arch, rep.logits), -1)  # the model's own, soft-capped
    top = probs.topk(min(max_logits, len(probs)))
    n_logits = min(int((top.values.cumsum(0) < logit_probability).sum()) + 1, len(top.values))
    logit_tokens, logit_p = top.indices[:n_logits], top.values[:n_logits]

    features = torch.cat([torch.cat([torch.full((len(idx), 1), l), idx.cpu()], 1) for l, idx in enumerate(rep.active)])
    nf = len(features)
    if max_features is not None and nf > max_features:
        raise ValueError(f"max_features: the prompt has {nf} active features, more than {max_features}")
    N = nf + (L + 1) * P + n_logits
    first_logit = nf + (L + 1) * P
    targets = list(range(nf)) + list(range(first_logit, N))
    every_row = max_feature_nodes is None or max_feature_nodes >= nf
    # R holds the computed rows: every node's row (R is the adjacency matrix) or, with max_feature_nodes, the
    # rows in the order computed ([max_feature_nodes + n_logits, N], circuit-tracer's layout)
    R = torch.zeros(N if every_row else max_feature_nodes + n_logits, N)

    def all_targets(pre, logits):
        return torch.cat(pre + [logits], -1)  # [B, n_features + n_logits], in node order

    def chunks():
        if every_row:
            yield from (targets[s:s + batch_size] for s in range(0, len(targets), batch_size))
            return
        yield list(range(first_logit, N))
        done = torch.zeros(N, dtype=torch.bool)
        w = torch.zeros(N)
        w[first_logit:] = logit_p.cpu()
        budget = max_feature_nodes
        while budget > 0:
            inf = _partial_influence(R[:len(computed)], torch.tensor(computed), w)[:nf].masked_fill(done[:nf], -1.0)
            pick = inf.topk(min(batch_size, budget)).indices
            pick = pick[inf[pick] > 0]
            if len(pick) == 0:
                return
            done[pick] = True
            budget -= len(pick)
            yield pick.tolist()

    from tqdm.auto import tqdm

    # one forward of B copies of the prompt, kept for every backward (as circuit-tracer does): copy b carries the
    # chunk's b-th target; each backward starts from the chunk's targets only, so it stops at their deepest layer
    B = min(max(batch_size, n_logits), len(targets))  # the logits' rows come as one chunk
    leaves = rep.leaves(B)
    pre, logits = rep.run(leaves, logit_tokens, logit_target)
    sources = [leaves["embedding"], *leaves["acts"], *leaves["errors"]]
    layer_start = torch.tensor([0] + [len(a) for a in rep.active]).cumsum(0)
    computed = []
    total = len(targets) if max_feature_nodes is None or max_feature_nodes >= nf else max_feature_nodes + n_logits
    bar = tqdm(total=total, disable=not progress, desc="attribution (backward passes)", unit="node")
    for chunk in chunks():
        bar.update(len(chunk))
        t, b = torch.tensor(chunk), torch.arange(len(chunk))
        slot = t if every_row else torch.arange(len(computed), len(computed) + len(chunk))
        computed += chunk
        f = t < nf
        layer = features[t[f], 0]
        picked = [pre[l][b[f][layer == l], t[f][layer == l] - layer_start[l]] for l in layer.unique().tolist()]
        picked.append(logits[b[~f], t[~f] - first_logit])
        grads = torch.autograd.grad(torch.cat(picked).sum(), sources, retain_graph=True, allow_unused=True)
        with torch.no_grad():
            # activation x gradient, per source kind (a source the targets do not reach: zero)
            n = len(chunk)
            ge, ga, gr = grads[0], grads[1:L + 1], grads[L + 1:]
            R[slot, :nf] = torch.cat([(g[:n] * a[:n]) if g is not None else torch.zeros_like(a[:n])
                                   for g, a in zip(ga, leaves["acts"])], -1).cpu()
            err = torch.stack([(g[:n] * e[:n]).sum(-1) if g is not None else e.new_zeros(e[:n].shape[:-1])
                               for g, e in zip(gr, leaves["errors"])], 1)  # [n, L, pos]
            R[slot, nf:nf + L * P] = err.flatten(1).cpu()
            if ge is not None:
                R[slot, nf + L * P:first_logit] = (ge[:n] * leaves["embedding"][:n]).sum(-1).cpu()
    del pre, logits, leaves, sources

    bar.close()
    with torch.no_grad():
        pre0, logits0 = rep.run(rep.leaves(1, zero=True), logit_tokens, logit_target)
        bias = torch.zeros(N)
        bias[targets] = all_targets(pre0, logits0)[0].cpu()
        done = set(computed)
        bias[[t for t in targets if t not in done]] = 0.0  # rows not computed: no identity to keep
        values = torch.zeros(N)
        values[:nf] = torch.cat(rep.pre).cpu()
        values[first_logit:] = logit_targets(rep.logits, logit_tokens, logit_target).cpu()
    acts = torch.cat(rep.acts).cpu()
    if every_row:
        A = R
    elif uncomputed == "keep":
        A = torch.zeros(N, N)
        A[computed] = R[:len(computed)]
    else:  # the computed features and every other node, in node order
        kept = torch.tensor(sorted(t for t in computed if t < nf) + list(range(nf, N)), dtype=torch.long)
        new = torch.full((N,), -1, dtype=torch.long)
        new[kept] = torch.arange(len(kept))
        A = torch.zeros(len(kept), len(kept))
        A[new[computed]] = R[:len(computed), kept]
        features, acts, bias, values = features[kept[kept < nf]], acts[kept[kept < nf]], bias[kept], values[kept]
        computed = new[computed].tolist()
    tok = model.tokenizer
    return Graph(prompt=prompt, tokens=ids[0].cpu(), str_tokens=[tok.decode([t]) for t in ids[0].tolist()],
                 active_features=features, activation_values=acts, adjacency=A, bias=bias,
                 target_values=values, logit_tokens=logit_tokens.cpu(), logit_probabilities=logit_p.cpu(),
                 n_layers=L, model_name=model.name,
                 meta={"logit_str": [tok.decode([t]) for t in logit_tokens.tolist()], "d_sae": rep.coders.d_sae,
                       "transcoders": "clt" if rep.coders.clt is not None else "per_layer",
                       "logit_target": logit_target,
                       "rows": sorted(computed)})


# -- influence, pruning, scores (circuit-tracer's definitions) ---------------------------------------------

def normalize_matrix(A: Tensor) -> Tensor:
    """|A| with each row scaled to sum 1 (rows of zeros stay zero)."""
    a = A.abs()
    return a.div_(a.sum(1, keepdim=True).clamp(min=1e-10))  # in place: one n_nodes^2 copy, not two


def influence(A_norm: Tensor, logit_weights: Tensor, max_iter: int = 1000) -> Tensor:
    """w A + w A^2 + ... (w = logit weights): every node's influence on the logits through all paths. The graph is
    acyclic (sources come before targets in the forward), so the series ends."""
    cur = logit_weights @ A_norm
    total = cur.clone()
    for _ in range(max_iter):
        if not cur.any():
            return total
        cur = cur @ A_norm
        total += cur
    raise RuntimeError(f"influence: no convergence after {max_iter} steps; the adjacency matrix has a cycle")


def _partial_influence(rows_A: Tensor, rows: Tensor, logit_weights: Tensor, max_iter: int = 1000) -> Tensor:
    """`influence(normalize_matrix(A), w)` for an A whose only non-zero rows are `rows` (rows_A = A[rows]): paths
    run through computed rows only, so the series is taken on those (circuit-tracer's partial influences)."""
    An = normalize_matrix(rows_A)  # [n_rows, n_nodes]
    cur = logit_weights[rows] @ An
    total = cur.clone()
    for _ in range(max_iter):
        cur = cur[rows] @ An
        if not cur.any():
            return total
        total += cur
    raise RuntimeError(f"influence: no convergence after {max_iter} steps; the adjacency matrix has a cycle")


def _logit_weights(graph: Graph) -> Tensor:
    w = torch.zeros(graph.n_nodes)
    w[graph.logit_index(0):] = graph.logit_probabilities
    return w


def _threshold(scores: Tensor, share: float) -> Tensor:
    """The score above which the largest scores hold `share` of the total (zeros, most of a graph's entries when
    few rows are computed, add nothing to the total and are not sorted)."""
    s = scores[scores > 0].sort(descending=True).values
    if len(s) == 0:
        return torch.tensor(0.0)
    cum = s.cumsum(0) / s.sum().clamp(min=1e-30)
    return s[min(int(torch.searchsorted(cum, torch.tensor(share))), len(s) - 1)]


@dataclass
class Pruned:
    """Masks of the nodes [n_nodes] and edges [n_nodes, n_nodes] kept, and each node's cumulative influence share."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor

    def subgraph_nodes(self) -> list[int]:
        return self.node_mask.nonzero()[:, 0].tolist()


def prune_graph(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes holding `node_threshold` of the logits' total influence (embeddings and logits always), then
    the edges holding `edge_threshold` of the edge influence, then drop, repeatedly, feature and error nodes left
    without outgoing edges and features without incoming ones (circuit-tracer's `prune_graph`)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 <= v <= 1:
            raise checks.fail(name, 'a share in [0, 1]', v)
    A, nf = graph.adjacency, graph.n_features
    w = _logit_weights(graph)
    first_kept = graph.embedding_index(0)  # embeddings and logits
    node_inf = influence(normalize_matrix(A), w)
    node_mask = node_inf >= _threshold(node_inf, node_threshold)
    node_mask[first_kept:] = True
    pn = normalize_matrix(A * (node_mask[:, None] & node_mask[None, :]))  # edges between kept nodes only
    edge_scores = pn.mul_((influence(pn, w) + w)[:, None])  # in place (memory: n_nodes^2 floats each)
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:first_kept] &= edge_mask[:, :first_kept].any(0)  # features and errors need an outgoing edge
        node_mask[:nf] &= edge_mask[:nf].any(1)  # features need an incoming edge
        if torch.equal(old, node_mask):
            break
    order = node_inf.sort(descending=True)
    cum = torch.zeros_like(node_inf)
    cum[order.indices] = order.values.cumsum(0) / order.values.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, cum)


def graph_scores(graph: Graph) -> dict:
    """{"replacement", "completeness"} (circuit-tracer's `compute_graph_scores`): the share of the logits'
    influence that reaches embeddings rather than error nodes, and the influence-weighted share of each
    node's incoming (normalised) edge weight that does not come from errors."""
    w = _logit_weights(graph)
    An = normalize_matrix(graph.adjacency)
    inf = influence(An, w)
    e0, e1 = graph.error_index(0, 0), graph.embedding_index(0)
    token_inf, error_inf = inf[e1:graph.logit_index(0)].sum(), inf[e0:e1].sum()
    non_error = 1 - An[:, e0:e1].sum(-1)
    out = inf + w
    return {"replacement": float(token_inf / (token_inf + error_inf)),
            "completeness": float((non_error * out).sum() / out.sum())}
