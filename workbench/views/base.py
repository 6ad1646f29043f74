"""`View`: one interactive result view as self-contained HTML (every script inlined, nothing fetched), shown by
a notebook through `_repr_html_` and saved as one standalone HTML file by `save_html`."""
from __future__ import annotations

import html as _html
from dataclasses import dataclass, field
from pathlib import Path

from ..core.io import atomic_write_text
from ..core import checks

# Nothing here may reach the network: plotly.js is inlined (include_plotlyjs=True, never "cdn") and
# circuitsvis views use `.local_src` (its `_repr_html_` probes http://google.com and `str()` uses a CDN).
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
PAGE_WIDTH = 1200  # px: the widest figure, so that a page fits a laptop screen (1280 x 800) without scrolling sideways


@dataclass
class View:
    """An interactive view: `body` is an HTML fragment whose scripts are all inline (plotly.js, circuitsvis'
    bundle or a few lines of our own), so it renders in JupyterLab and in a file opened offline."""

    title: str
    body: str
    kind: str = "html"  # "plotly", "circuitsvis", "steering", "html": what the browser test looks for
    figure: object = field(default=None, repr=False)  # the plotly Figure, so that a page of several inlines plotly.js once
    script: str | None = field(default=None, repr=False)  # plotly post_script: JavaScript run with the figure ({plot_id})

    def _repr_html_(self) -> str:
        return self.body

    def to_html(self) -> str:
        """The whole standalone document."""
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_html.escape(self.title)}</title>"
                f"</head>\n<body style=\"font-family: sans-serif\">\n{self.body}\n</body></html>\n")

    def save(self, path: str | Path) -> Path:
        return save_html(self, path)

    def __repr__(self) -> str:
        return f"View({self.title!r}, {self.kind}, {len(self.body) / 1e6:.1f} MB of HTML)"


def as_view(obj) -> View:
    """A View, or anything with a `.view()` (LabelledArray, Trace, SteeringSweep) -> its View."""
    if isinstance(obj, View):
        return obj
    if hasattr(obj, "view"):
        return obj.view()
    raise checks.fail('view', 'a workbench View or a result with .view()', type(obj).__name__)


def save_html(view, path: str | Path) -> Path:
    """Write `view` (a View or a result object) as one self-contained HTML file, atomically."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise checks.fail('path', 'a file name ending in .html', str(path))
    return atomic_write_text(path, as_view(view).to_html())


def _plotly_body(fig, include_js: bool, script: str | None = None) -> str:
    body = fig.to_html(full_html=False, include_plotlyjs=include_js, config=PLOTLY_CONFIG, post_script=script)
    return f'<div class="workbench-view" data-kind="plotly">{body}</div>'


def plotly_view(fig, title: str, script: str | None = None) -> View:
    """A plotly figure as a View with plotly.js inlined (about 4.7 MB: the price of opening offline); `script`
    is JavaScript run once the figure is drawn, where `{plot_id}` names its element."""
    return View(title, _plotly_body(fig, True, script), "plotly", fig, script)


def concat(views: list[View], title: str) -> View:
    """Several views on one page; plotly.js is inlined once, before the first plotly figure. Each title shows
    once: a plotly figure draws its own, other views get a heading."""
    if not views:
        raise checks.fail("views", "at least one view", views)
    parts, js = [], True
    for v in views:
        body = v.body if v.figure is None else _plotly_body(v.figure, js, v.script)
        js = js and v.figure is None
        parts.append(body if v.figure is not None and v.figure.layout.title.text else
                     f"<h3>{_html.escape(v.title)}</h3>\n{body}")
    return View(title, "\n".join(parts), views[0].kind if len({v.kind for v in views}) == 1 else "html")


def show(obj) -> None:
    """Display a View, a result's view, or a widget in the running notebook (the result objects' `.show()`)."""
    from IPython.display import display

    display(obj if not (isinstance(obj, View) or hasattr(obj, "view")) else as_view(obj))
