"""Hoverable plotly heatmaps: any 2-D or 3-D LabelledArray (patching grids), and causal tracing's Figure 1
and average effects (Meng et al. 2022)."""
from __future__ import annotations

import numpy as np

from .base import PAGE_WIDTH, View, plotly_view
from ..toolkit.results import token_labels

_TRACE_COLORS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
# A click on a cell writes the cell's third customdata entry (the patched run's top predictions) under the figure.
_CLICK_SCRIPT = """(function () {
  const gd = document.getElementById('{plot_id}'), box = document.createElement('pre');
  box.className = 'workbench-click'; box.style.margin = '4px 0 12px 60px';
  box.textContent = 'Click a cell to see the top predictions of its patched run.';
  gd.after(box);
  gd.on('plotly_click', d => { const p = d.points[0]; box.textContent = p.customdata[2]; });
})();"""
_TRACE_NAMES = {"resid": "single restored layer (residual stream)", "mlp": "MLP window", "attn": "attention window"}


def _cell_labels(row_name, rows, col_name, cols) -> np.ndarray:
    """[n_rows, n_cols, 2] strings: the hover text of each cell's row and column labels."""
    r = np.array([str(x) for x in rows], dtype=object)
    c = np.array([str(x) for x in cols], dtype=object)
    return np.stack(np.broadcast_arrays(r[:, None], c[None, :]), -1)


def labelled_heatmap(arr, title: str | None = None, colorscale: str = "RdBu_r", centre="baseline") -> View:
    """A 2-D LabelledArray (rows: its first axis, e.g. layer; columns: its second, e.g. position "3: Paris"
    or head) as a heatmap white at `centre` ("baseline": a patching grid's unpatched run, so cells with no effect
    are white; or a number, e.g. 0; see `LabelledArray.colour_centre`), named in the title; hovering a cell shows both labels and the value. A 3-D array
    (layer, position, head) gets a slider over its last axis, one heatmap per entry. A patching grid run with
    `top_k` (meta["top_predictions"]) shows a cell's patched-run top predictions when it is clicked."""
    import plotly.graph_objects as go

    if arr.values.ndim not in (2, 3):
        raise ValueError(f"arr: a heatmap view needs a 2-D or 3-D array, got dims {arr.dims}; select an axis first")
    rows, cols = arr.dims[:2]
    raw = arr.values.astype(float)
    mid, white = arr.colour_centre(centre)
    values, lim, note = arr.plot_values(mid)  # +-inf drawn at the range's end, named in the title
    metric = arr.meta.get("metric", "value")
    slices = [(None, values, raw)] if values.ndim == 2 else \
        [(h, values[:, :, k], raw[:, :, k]) for k, h in enumerate(arr.coords[arr.dims[2]])]
    extra = arr.dims[2] if values.ndim == 3 else None
    top = arr.meta.get("top_predictions")
    if top is not None and len(top["tokens"]) != values.size:
        top = None  # a per-pair array: the predictions are those of the first pair only
    if top is not None:  # [n_cells] texts in the grid's row-major order -> [rows, cols(, extra)]
        said = [f"{arr.name}, pair {top['pair']}: top {top['k']} after patching this cell\n" +
                "\n".join(f"  {t!r:>16}  p = {p:.4f}" for t, p in zip(toks, probs))
                for toks, probs in zip(top["tokens"], top["probs"])]
        said = np.array(said, dtype=object).reshape(values.shape)
    fig = go.Figure()
    for k, (h, z, zraw) in enumerate(slices):
        labels = _cell_labels(rows, arr.coords[rows], cols, arr.coords[cols])
        if top is not None:
            labels = np.concatenate([labels, (said if extra is None else said[:, :, k])[..., None]], -1)
        head = f"{extra}: {h}<br>" if extra else ""
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), customdata=labels,
            text=[[f"{x:.4g}" for x in row] for row in zraw.tolist()],
            zmin=mid - lim, zmax=mid + lim, zmid=mid, colorscale=colorscale,
            colorbar={"title": {"text": f"{metric}<br>white: {mid:.4g}"}},
            visible=k == 0, name=f"{extra} {h}" if extra else arr.name,
            hovertemplate=f"{rows}: %{{customdata[0]}}<br>{cols}: %{{customdata[1]}}<br>{head}"
                          f"value: %{{text}}<extra></extra>"))
    fig.update_xaxes(title=cols, tickmode="array", tickvals=list(range(values.shape[1])),
                     ticktext=[str(c) for c in arr.coords[cols]], tickangle=-60)
    fig.update_yaxes(title=rows, autorange="reversed", tickmode="array", tickvals=list(range(values.shape[0])),
                     ticktext=[str(r) for r in arr.coords[rows]])
    if extra:  # a slider over the last axis: step k shows heatmap k
        steps = [{"label": str(h), "method": "update",
                  "args": [{"visible": [i == k for i in range(len(slices))]}]} for k, (h, _, _) in enumerate(slices)]
        fig.update_layout(sliders=[{"active": 0, "currentvalue": {"prefix": f"{extra}: "}, "steps": steps}])
    fig.update_layout(title=(title or arr.name) + f" (white: {white}" + (f"; {note})" if note else ")"), height=max(320, 22 * values.shape[0] + 160),
                      width=min(PAGE_WIDTH, max(480, 40 * values.shape[1] + 220)), margin={"b": 120})
    return plotly_view(fig, title or arr.name or "heatmap", _CLICK_SCRIPT if top is not None else None)


def trace_heatmaps(trace) -> View:
    """Causal tracing's Figure 1 for one fact: p(answer) after restoring each (token, layer), a panel per
    kind (resid / mlp / attn), tokens down with the subject starred; hover shows token, layer, p and IE."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = list(trace.scores)
    start, stop = trace.subject_span
    tokens = token_labels(trace.tokens, marked=range(start, stop))
    answer = trace.answer.strip()
    fig = make_subplots(1, len(kinds), subplot_titles=[_TRACE_NAMES.get(k, k) for k in kinds], horizontal_spacing=0.1)
    for n, kind in enumerate(kinds):
        z = np.asarray(trace.scores[kind], dtype=float)
        labels = _cell_labels("token", tokens, "layer", range(z.shape[1]))
        ie = z - trace.p_corrupted
        custom = np.concatenate([labels, ie[..., None].astype(object)], -1)
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), customdata=custom, zmin=trace.p_corrupted,
            colorscale=_TRACE_COLORS.get(kind, "Blues"), name=kind,
            colorbar={"x": fig.layout[f"xaxis{n + 1 if n else ''}"].domain[1] + 0.005, "len": 0.9, "thickness": 10},
            hovertemplate=f"{kind}<br>token %{{customdata[0]}}<br>layer %{{customdata[1]}}<br>"
                          f"p({answer}) = %{{z:.4g}}<br>IE = %{{customdata[2]:.4g}}<extra></extra>"), 1, n + 1)
        fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(len(tokens))),
                         ticktext=tokens if n == 0 else [""] * len(tokens), row=1, col=n + 1)
        fig.update_xaxes(title="layer" if kind == "resid" else f"center of a {trace.config.get('window', '')}-layer window",
                         tickmode="array", tickvals=list(range(0, z.shape[1], max(1, z.shape[1] // 10))), row=1, col=n + 1)
    title = (f"{trace.prompt} → {answer}: p(clean) = {trace.p_clean:.3f}, p(corrupted) = {trace.p_corrupted:.3f}")
    fig.update_layout(title=title, height=24 * len(tokens) + 200, width=min(PAGE_WIDTH, 320 * len(kinds) + 200))
    return plotly_view(fig, title)


def trace_average_heatmaps(summary: dict) -> View:
    """The average indirect effect over traced facts, token group x layer per kind (the paper's Fig. 2)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ie = summary["indirect_effect"]
    kinds = list(ie)
    groups = list(next(iter(ie.values())))
    fig = make_subplots(1, len(kinds), subplot_titles=[_TRACE_NAMES.get(k, k) for k in kinds], horizontal_spacing=0.14)
    for n, kind in enumerate(kinds):
        rows = [ie[kind][g]["by_layer"] for g in groups]
        width = len(next(r for r in rows if r is not None))
        z = np.array([r if r is not None else [np.nan] * width for r in rows], dtype=float)
        labels = _cell_labels("group", groups, "layer", range(width))
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(width)), y=list(range(len(groups))), customdata=labels, name=kind,
            colorscale=_TRACE_COLORS.get(kind, "Blues"),
            colorbar={"x": fig.layout[f"xaxis{n + 1 if n else ''}"].domain[1] + 0.005, "thickness": 10},
            hovertemplate=f"{kind}<br>%{{customdata[0]}}<br>layer %{{customdata[1]}}<br>"
                          f"average IE = %{{z:.4g}}<extra></extra>"), 1, n + 1)
        fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(len(groups))),
                         ticktext=groups if n == 0 else [""] * len(groups), row=1, col=n + 1)
        fig.update_xaxes(title="layer", tickmode="array", tickvals=list(range(0, width, max(1, width // 10))), row=1, col=n + 1)
    title = f"Average indirect effect over {summary['n_traced']} facts"
    fig.update_layout(title=title, height=380, width=min(PAGE_WIDTH, 360 * len(kinds) + 160))
    return plotly_view(fig, title)


def trace_folder_view(traces: list, summary: dict | None = None, max_facts: int = 50) -> View:
    """One page for a tracing sweep (`tracing.load_traces(out)`): the average effects (if `summary`) and
    Figure 1 of each traced fact (the first `max_facts`), plotly.js inlined once."""
    from .base import concat

    views = [trace_average_heatmaps(summary)] if summary and summary.get("n_traced") else []
    views += [trace_heatmaps(t) for t in traces[:max_facts]]
    if not views:
        raise ValueError("traces: no traced facts to show")
    return concat(views, f"causal tracing: {len(traces)} facts" + (f" (first {max_facts} shown)" if len(traces) > max_facts else ""))
