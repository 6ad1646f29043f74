"""The interactive attribution-graph view (plotly, one self-contained HTML file or a notebook output).

Nodes of the pruned graph sit at (token position, layer): embeddings below layer 0, logits above the last
layer, several nodes of one cell side by side; edges are lines (blue: positive, red: negative). Hovering a
node shows its label, activation, influence, and for features their top activating tokens and logit effects
(`feature_labels`). Clicking a node keeps only it and its ancestors (what drives it); a double click shows all
again. The page records the kept node indices in the plot element's `data-kept` (the browser test reads it).
"""
from __future__ import annotations

import html
import json
from typing import Sequence

import torch

from ..views.base import View, plotly_view
from .graph import Graph, Pruned, prune_graph
from .transcoders import read_mlp_io
from ..toolkit.results import token_labels

KIND_COLOURS = {"feature": "#4c78a8", "error": "#9d9d9d", "embedding": "#59a14f", "logit": "#f28e2b"}


def logit_effects(model, transcoder, features: Sequence[int], k: int = 5) -> list[tuple[list[str], list[str]]]:
    """For each feature: the `k` tokens its decoder row raises most and lowers most through the unembedding
    (W_dec[f] W_U^T; the final norm's scale left out)."""
    W_U = model.module("unembed").weight.float()  # [d_vocab, d_model]
    eff = transcoder.W_dec[list(features)].float() @ W_U.T  # [n, d_vocab]
    dec = model.tokenizer.decode
    return [([dec([t]) for t in row.topk(k).indices.tolist()], [dec([t]) for t in (-row).topk(k).indices.tolist()])
            for row in eff]


@torch.no_grad()
def top_activations(model, transcoders, graph: Graph, texts: Sequence[str], k: int = 5,
                    nodes: Sequence[int] | None = None) -> dict[int, list[tuple[float, str]]]:
    """Feature node -> its `k` largest activations over `texts`, as (activation, "...context [token]")."""
    nodes = list(range(graph.n_features)) if nodes is None else [i for i in nodes if i < graph.n_features]
    best: dict[int, list[tuple[float, str]]] = {i: [] for i in nodes}
    for text in texts:
        ids, mask = model.encode(text)
        x, _ = read_mlp_io(model, ids, mask, skip_first=0)
        toks = [model.tokenizer.decode([t]) for t in ids[0].tolist()]
        for i in nodes:
            l, _, f = graph.active_features[i].tolist()
            tc = transcoders[l]
            a = tc.encode(x[l].to(tc.dtype))[:, f]
            for p in a.topk(min(k, len(a))).indices.tolist():
                if a[p] > 0:
                    ctx = "".join(toks[max(0, p - 6):p]) + f"[{toks[p]}]"
                    best[i].append((float(a[p]), ctx))
            best[i] = sorted(best[i], reverse=True)[:k]
    return best


def feature_labels(model, transcoders, graph: Graph, texts: Sequence[str] = (), k: int = 5,
                   nodes: Sequence[int] | None = None) -> dict[int, str]:
    """Hover text (HTML lines) per feature node: logit effects and, given `texts`, top activating tokens."""
    nodes = list(range(graph.n_features)) if nodes is None else [i for i in nodes if i < graph.n_features]
    acts = top_activations(model, transcoders, graph, texts, k, nodes) if texts else {}
    out = {}
    for i in nodes:
        l, _, f = graph.active_features[i].tolist()
        (up, down), = logit_effects(model, transcoders[l], [f], k)
        lines = ["raises: " + html.escape(" ".join(repr(t) for t in up)),
                 "lowers: " + html.escape(" ".join(repr(t) for t in down))]
        lines += [f"{a:.2f} " + html.escape(repr(c)) for a, c in acts.get(i, [])]
        out[i] = "<br>".join(lines)
    return out


def graph_view(graph: Graph, pruned: Pruned | None = None, labels: dict[int, str] | None = None, *,
               node_threshold: float = 0.8, edge_threshold: float = 0.98, title: str | None = None) -> View:
    """The pruned graph as an interactive plotly View (see the module docstring)."""
    import plotly.graph_objects as go

    pruned = pruned if pruned is not None else prune_graph(graph, node_threshold, edge_threshold)
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    L, P = graph.n_layers, graph.n_pos
    cells: dict[tuple[int, int], list[int]] = {}
    info = {i: graph.node(i) for i in kept}
    for i in kept:
        n = info[i]
        cells.setdefault((n["layer"], n["pos"]), []).append(i)
    xy = {}
    for (layer, pos), members in cells.items():
        for j, i in enumerate(members):
            xy[i] = (pos + (j - (len(members) - 1) / 2) * min(0.8 / len(members), 0.2), layer)
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    edges = [(s, d, float(graph.adjacency[d, s])) for s, d in zip(src.tolist(), dst.tolist()) if s in xy and d in xy]
    labels = labels or {}
    text, colours, sizes = [], [], []
    for i in kept:
        n = info[i]
        lines = [f"<b>{html.escape(n['label'])}</b>", f"influence (cumulative share): {float(pruned.cumulative_scores[i]):.3f}"]
        if n["kind"] == "feature":
            lines.append(f"activation: {float(graph.activation_values[i]):.3f}")
        if i in labels:
            lines.append(labels[i])
        text.append("<br>".join(lines))
        colours.append(KIND_COLOURS[n["kind"]])
        sizes.append(14 if n["kind"] in ("logit", "embedding") else 10)
    fig = go.Figure()
    for sign, colour in ((1, "rgba(31,119,180,0.45)"), (-1, "rgba(214,39,40,0.45)")):
        ex, ey = [], []
        for s, d, w in edges:
            if (w >= 0) == (sign > 0):
                ex += [xy[s][0], xy[d][0], None]
                ey += [xy[s][1], xy[d][1], None]
        fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color=colour, width=1), hoverinfo="skip",
                                 name="positive edges" if sign > 0 else "negative edges"))
    fig.add_trace(go.Scatter(x=[xy[i][0] for i in kept], y=[xy[i][1] for i in kept], mode="markers",
                             marker=dict(color=colours, size=sizes, opacity=[1.0] * len(kept),
                                         line=dict(width=1, color="#333")),
                             text=text, customdata=kept, hovertemplate="%{text}<extra></extra>", name="nodes"))
    fig.update_layout(title=title or f"Attribution graph: {graph.prompt!r}", height=520, showlegend=False,
                      xaxis=dict(tickmode="array", tickvals=list(range(P)), ticktext=token_labels(graph.str_tokens),
                                 title="position"),
                      yaxis=dict(tickmode="array", tickvals=[-1] + list(range(L)) + [L],
                                 ticktext=["emb"] + [f"L{l}" for l in range(L)] + ["logits"], title="layer"),
                      margin=dict(l=60, r=20, t=50, b=60), plot_bgcolor="white")
    data = {"nodes": [{"i": i, "x": xy[i][0], "y": xy[i][1]} for i in kept],
            "edges": [{"s": s, "t": d, "w": w} for s, d, w in edges]}
    payload = json.dumps(data).replace("</", "<\\/")
    script = _CLICK_SCRIPT.replace("__DATA__", payload)
    return plotly_view(fig, title or "Attribution graph", script)


# clicked node -> it and its ancestors (breadth-first over incoming kept edges); double click -> everything
_CLICK_SCRIPT = """
(function() {
  const gd = document.getElementById('{plot_id}');
  const G = __DATA__;
  const at = {}; G.nodes.forEach(n => at[n.i] = n);
  const parents = {}; G.edges.forEach(e => (parents[e.t] = parents[e.t] || []).push(e.s));
  function draw(keep) {
    const ex = [[], []], ey = [[], []];
    G.edges.forEach(e => {
      if (keep && !(keep.has(e.s) && keep.has(e.t))) return;
      const k = e.w >= 0 ? 0 : 1;
      ex[k].push(at[e.s].x, at[e.t].x, null); ey[k].push(at[e.s].y, at[e.t].y, null);
    });
    Plotly.restyle(gd, {x: ex, y: ey}, [0, 1]);
    Plotly.restyle(gd, {'marker.opacity': [G.nodes.map(n => (!keep || keep.has(n.i)) ? 1.0 : 0.1)]}, [2]);
    gd.dataset.kept = keep ? JSON.stringify([...keep].sort((a, b) => a - b)) : '';
  }
  gd.on('plotly_click', ev => {
    const p = ev.points.find(q => q.curveNumber === 2);
    if (!p) return;
    const keep = new Set([p.customdata]), todo = [p.customdata];
    while (todo.length) { (parents[todo.pop()] || []).forEach(s => { if (!keep.has(s)) { keep.add(s); todo.push(s); } }); }
    draw(keep);
  });
  gd.on('plotly_doubleclick', () => draw(null));
})();
"""


def ancestors(pruned: Pruned, node: int) -> list[int]:
    """`node` and every kept node with a kept path of edges into it (what the view keeps on a click)."""
    keep, todo = {node}, [node]
    while todo:
        for s in pruned.edge_mask[todo.pop()].nonzero()[:, 0].tolist():
            if s not in keep and pruned.node_mask[s]:
                keep.add(s)
                todo.append(s)
    return sorted(keep)
