"""Interventions on transcoder features, run in the real model, next to what the graph predicts.

`FeatureEdit` is an ordinary `Intervention` at a layer's `hook_mlp_out` (with the usual rows / positions
selection): with x the MLP's input in that same forward,

    y' = y + sum_{f in features} (factor - 1) a_f(x) W_dec[f]        a_f(x): the transcoder's activation

so factor 0 switches the features off, 2 doubles them, and the real MLP's output (not the transcoder's) is
what the rest of the model sees otherwise. The MLP input is caught by a hook on the MLP module, which
`feature_edit_hooks` (or `run_with_feature_edits`) sets next to the intervention hooks.

The graph's prediction (`predicted_effect`) is the same edit in the linear local replacement: with
W[t, g] = A[t, g] / a_g the effect of one unit of feature g on target t, every feature's change solves
    da_f = (c_f - 1) a_f + c_f sum_g W[f, g] da_g         (c_f = factor for edited features, else 1)
and the logit nodes' targets (see graph.py: logit minus mean logit, or raw) move by sum_g W[logit, g] da_g. It is exact in the frozen model while no feature crosses its
threshold; the measured change also holds whatever the frozen attention patterns, norm scales and errors miss.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..core.interventions import Intervention
from ..core.sites import Site, parse_site
from .graph import _unembedded, logit_targets
from .transcoders import on_mlps
from ..core import checks


@dataclass
class FeatureEdit(Intervention):
    """Scale transcoder `features` by `factor` at `site` = blocks.<l>.hook_mlp_out (see the module docstring)."""

    transcoder: Any = None
    features: Sequence[int] = ()
    factor: float = 0.0

    def __post_init__(self):
        from sae_lens.saes.transcoder import Transcoder

        if not isinstance(self.transcoder, Transcoder):
            raise checks.fail('transcoder', 'a sae_lens Transcoder', type(self.transcoder).__name__)
        self.features = [int(f) for f in self.features]
        if not self.features or not all(0 <= f < self.transcoder.cfg.d_sae for f in self.features):
            raise checks.fail('features', f'indices in 0..{self.transcoder.cfg.d_sae - 1}', self.features)
        if not isinstance(self.factor, (int, float)) or not torch.isfinite(torch.tensor(float(self.factor))):
            raise checks.fail('factor', 'a finite number', self.factor)
        name = self.site.name if isinstance(self.site, Site) else str(self.site)
        if not name.endswith(".hook_mlp_out"):
            raise ValueError(f"site: a FeatureEdit acts at blocks.<layer>.hook_mlp_out, got {name}")
        self.mlp_in: Tensor | None = None  # set by feature_edit_hooks in each forward

    def update(self, y: Tensor) -> Tensor:
        if self.mlp_in is None:
            raise ValueError("FeatureEdit: the MLP input was not caught; run it inside feature_edit_hooks(model, edits) "
                             "or with run_with_feature_edits")
        tc = self.transcoder
        x = self._selected(self.mlp_in).to(tc.dtype)
        a = tc.encode(x)[..., self.features]  # [..., n_features]
        return y + ((self.factor - 1) * a @ tc.W_dec[self.features]).to(y.dtype)


@contextmanager
def feature_edit_hooks(model, edits: Sequence[FeatureEdit], cache_sites=()):
    """The edits applied (model.hooks, which also caches `cache_sites`, after the edits) with each one's MLP input
    caught in the same forward; yields the cache."""
    by_layer = {}
    for e in edits:
        if not isinstance(e, FeatureEdit):
            raise checks.fail('edits', 'FeatureEdit objects', type(e).__name__)
        site = parse_site(e.site, model.dims.n_layers)
        by_layer.setdefault(site.layer, []).append(e)
    if model.arch.mlp_out is not None and model.arch.mlp_out != model.arch.mlp:
        raise ValueError(f"model: {model.arch.family} normalises its MLP output ({model.arch.mlp_out}) before the "
                         "residual add; FeatureEdit needs hook_mlp_out to be the MLP's own output")

    def catch(layer, x, y):
        for e in by_layer.get(layer, ()):
            e.mlp_in = x

    with on_mlps(model, catch, sorted(by_layer)), model.hooks(edits, cache_sites) as cache:
        yield cache
    for e in edits:
        e.mlp_in = None


def run_with_feature_edits(model, inputs, edits: Sequence[FeatureEdit]) -> Tensor:
    """Logits [batch, pos, d_vocab] of the real model with `edits` applied."""
    ids, mask = model.encode(inputs)
    with torch.no_grad(), feature_edit_hooks(model, edits):
        return model.hf(input_ids=ids, attention_mask=mask).logits


def graph_edits(graph, transcoders, nodes: Sequence[int], factor: float = 0.0) -> list[FeatureEdit]:
    """FeatureEdits for feature nodes of `graph` (one per layer and position), each scaled by `factor`."""
    if graph.meta.get("transcoders") == "clt" or not isinstance(transcoders, (list, tuple)):
        raise ValueError("transcoders: interventions on cross-layer transcoder features are not supported yet; "
                         "expected the per-layer transcoders the graph was built from")
    groups: dict[tuple[int, int], list[int]] = {}
    for i in nodes:
        if not 0 <= int(i) < graph.n_features:
            raise ValueError(f"nodes: {i} is not a feature node (features are 0..{graph.n_features - 1})")
        l, p, f = graph.active_features[int(i)].tolist()
        groups.setdefault((l, p), []).append(f)
    return [FeatureEdit(f"blocks.{l}.hook_mlp_out", positions=[p], transcoder=transcoders[l], features=fs, factor=factor)
            for (l, p), fs in sorted(groups.items())]


def predicted_effect(graph, nodes: Sequence[int], factor: float = 0.0) -> Tensor:
    """The change of the graph's logit nodes [n_logits] when feature `nodes` are scaled by `factor`, in the
    graph's linear model (see the module docstring). Only features whose incoming edges were computed (R) can
    respond; the others move by (c_f - 1) a_f alone, so the system is solved on R:
        (I - c_R W[R, R]) da_R = (c_R - 1) a_R + c_R W[R, not R] da_(not R)."""
    nf = graph.n_features
    a = graph.activation_values.double()
    c = torch.ones(nf, dtype=torch.float64)
    c[torch.as_tensor(list(nodes), dtype=torch.long)] = float(factor)
    da = (c - 1) * a  # exact for the features that have no computed incoming edges
    R = graph.adjacency[:nf].any(1).nonzero()[:, 0]
    if len(R):
        W_R = graph.adjacency[R, :nf].double() / a.clamp(min=1e-12)  # effect per unit of each source's activation
        rest = torch.ones(nf, dtype=torch.bool)
        rest[R] = False
        lhs = torch.eye(len(R), dtype=torch.float64) - c[R, None] * W_R[:, R]
        da[R] = torch.linalg.solve(lhs, da[R] + c[R] * (W_R[:, rest] @ da[rest]))
    W_logits = graph.adjacency[graph.logit_index(0):, :nf].double() / a.clamp(min=1e-12)
    return (W_logits @ da).float()


def intervene(model, graph, transcoders, nodes: Sequence[int], factor: float = 0.0) -> dict:
    """Scale feature `nodes` of `graph` by `factor` in the real model; {"tokens", "logit_target", "predicted",
    "measured", "clean"}: the graph's logit tokens (as strings), what their values are (the graph's logit target:
    "demeaned", each logit minus the mean logit, or "raw"; before any final soft-cap), the predicted and measured
    change of those values, and their clean values."""
    edits = graph_edits(graph, transcoders, nodes, factor)
    ids = graph.tokens[None].to(model.device)
    target = graph.meta.get("logit_target", "raw")
    toks = graph.logit_tokens.to(model.device)
    with torch.no_grad(), _unembedded(model) as z:
        model.hf(input_ids=ids, logits_to_keep=1)
        clean = logit_targets(z[0][0, -1].float(), toks, target).cpu()
        with feature_edit_hooks(model, edits):
            model.hf(input_ids=ids, logits_to_keep=1)
        edited = logit_targets(z[0][0, -1].float(), toks, target).cpu()
    return {"tokens": graph.meta.get("logit_str"), "logit_target": target,
            "predicted": predicted_effect(graph, nodes, factor).tolist(), "measured": (edited - clean).tolist(),
            "clean": clean.tolist()}
