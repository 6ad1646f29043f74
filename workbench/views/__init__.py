"""Interactive views of results: hoverable plotly heatmaps (patching grids, causal tracing), a steering
slider, token-coloured text and attention patterns (circuitsvis), counterfactual strings side by side. Every view is self-contained HTML: it
shows in JupyterLab (`_repr_html_`) and saves as one file that opens offline (`save_html`)."""
from .base import View, as_view, concat, save_html, show
from .counterfactual import counterfactual_view
from .heatmaps import labelled_heatmap, trace_average_heatmaps, trace_folder_view, trace_heatmaps
from .steering import steering_view, steering_widget
from .text import attention_pattern, attention_view, token_view
from ..toolkit.results import register_renderer


def _heatmap_figure(*args, **kw):
    from .figures import heatmap  # matplotlib, imported when a figure is drawn

    return heatmap(*args, **kw)


# the renderers results look up by name (results sit below the views and never import them)
register_renderer("heatmap_figure", _heatmap_figure)
register_renderer("labelled_heatmap", labelled_heatmap)
register_renderer("show", show)
register_renderer("save_html", save_html)

__all__ = ["View", "as_view", "concat", "save_html", "show", "labelled_heatmap", "trace_heatmaps",
           "trace_average_heatmaps", "trace_folder_view", "steering_view", "steering_widget", "token_view", "attention_view", "attention_pattern",
           "counterfactual_view"]
