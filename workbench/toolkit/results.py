"""The one result protocol (`Result`) and `LabelledArray`: sweep results with named axes that convert to a
DataFrame, save to JSON and plot."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import checks
from ..core.io import read_json, write_json

# Results sit below the views in the stack, so they never import them: `workbench.views` registers its renderers
# here when it is imported (the `workbench` package imports it first thing), and `plot` / `view` / `show` look
# them up by name: "heatmap_figure" (matplotlib), "labelled_heatmap" (plotly), "show" (display a view), "save_html" (one HTML file).
RENDERERS: dict = {}


def register_renderer(name: str, fn) -> None:
    """Make `fn` the renderer called `name` (what `workbench.views` does on import)."""
    if not isinstance(name, str) or not name or not callable(fn):
        raise checks.fail("register_renderer", "a name and a callable", (name, fn))
    RENDERERS[name] = fn


def renderer(name: str):
    """The renderer registered as `name`."""
    if name not in RENDERERS:
        raise LookupError(f"no renderer {name!r} registered (have {sorted(RENDERERS)}); import workbench.views")
    return RENDERERS[name]


class Result:
    """The one protocol of result objects (grids, traces, counterfactuals, SAE reports, lens outputs):

        to_json() -> dict         JSON values only (what `save` writes)
        from_json(d) / load(path) the object back, where it can be rebuilt from its JSON
        save(path) -> Path        one JSON file, written atomically
        view() / plot(path)       an interactive view (workbench.views) / a static figure, where they make sense
        save_html(path) -> Path   `views.save_html(self, path)`: the view as one self-contained HTML file

    A subclass defines `to_json` (and `from_json`, `view`, `plot` where they make sense); the rest comes from here.
    """

    def to_json(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__}.to_json")

    @classmethod
    def from_json(cls, d: dict):
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from its JSON")

    def save(self, path: str | Path) -> Path:
        """Save as one JSON file (`to_json()`), written atomically; returns the path."""
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path):
        """The object a `save` wrote (JSON only, never a pickle)."""
        return cls.from_json(read_json(path, "path"))

    def view(self):
        raise NotImplementedError(f"{type(self).__name__} has no interactive view")

    def plot(self, path: str | Path | None = None):
        raise NotImplementedError(f"{type(self).__name__} has no static figure")

    def save_html(self, path: str | Path) -> Path:
        """The view as one self-contained HTML file (`workbench.views.save_html`), written atomically."""
        return renderer("save_html")(self, path)


def token_labels(tokens, positions=None, marked=()) -> list[str]:
    """The one label of a token position, in every view and result: "0: When", "1: Mary" (the token without its
    surrounding spaces; a token of spaces or newlines by its repr, "7: '\\n'"); positions in `marked` (e.g. a
    subject span) get a star: "2: Eiffel*". positions: the index shown for each token (default 0, 1, ...)."""
    positions = range(len(tokens)) if positions is None else positions
    marked = set(marked)
    return [f"{p}: {str(t).strip() or repr(str(t))}" + ("*" if p in marked else "") for p, t in zip(positions, tokens)]


@dataclass
class LabelledArray(Result):
    """`values` with named axes (`dims`) and a label list per axis (`coords`), plus free-form `meta`."""

    values: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, list]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = np.asarray(self.values)
        if self.values.ndim != len(self.dims):
            raise ValueError(f"values: {self.values.ndim} axes but dims {self.dims}")
        for d, n in zip(self.dims, self.values.shape):
            if len(self.coords.get(d, ())) != n:
                raise ValueError(f"coords: axis {d!r} has {n} entries but {len(self.coords.get(d, ()))} labels")

    @property
    def shape(self):
        return self.values.shape

    def to_dataframe(self):
        """Long format: one row per cell, a column per axis plus `value`."""
        import pandas as pd

        index = pd.MultiIndex.from_product([self.coords[d] for d in self.dims], names=list(self.dims))
        return pd.DataFrame({"value": self.values.reshape(-1)}, index=index).reset_index()

    def to_json(self) -> dict:
        return {"name": self.name, "dims": list(self.dims), "coords": self.coords,
                "values": self.values.tolist(), "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "LabelledArray":
        return cls(np.asarray(d["values"], dtype=float), tuple(d["dims"]), d["coords"], d.get("name", ""), d.get("meta", {}))

    def colour_centre(self, centre="baseline") -> tuple[float, str]:
        """(the value a heatmap draws white, what it is). centre="baseline": the unpatched run's metric, where a
        cell with no effect lands (a patching grid: the corrupted run when denoising, the clean run when noising;
        a cross-model grid: the target model; meta["baseline"] if set), or 0 when the array names none; a number:
        that number."""
        if centre != "baseline":
            if isinstance(centre, bool) or not isinstance(centre, (int, float)) or not np.isfinite(centre):
                raise checks.fail("centre", "'baseline' or a finite number", centre)
            return float(centre), f"{centre:g}"
        m = self.meta
        if "baseline" in m:
            return float(m["baseline"]), f"baseline {m['baseline']:.4g}"
        if m.get("direction") in ("denoise", "noise") and "corrupted_metric" in m:
            run = "corrupted" if m["direction"] == "denoise" else "clean"
            return float(m[f"{run}_metric"]), f"{run} baseline {m[f'{run}_metric']:.4g}"
        if "target_metric" in m:
            return float(m["target_metric"]), f"unpatched target {m['target_metric']:.4g}"
        return 0.0, "0"

    def plot_values(self, centre: float = 0.0) -> tuple[np.ndarray, float, str]:
        """What a heatmap draws: (values with +-inf at the end of the colour range, the range's half-width
        around `centre` from the finite values, a note naming the non-finite cells or ""). NaN stays NaN (a blank
        cell, named in the note); a plot of +-inf would otherwise be all blank (the range itself became infinite)."""
        v = np.asarray(self.values, dtype=float)
        finite = np.isfinite(v)
        lim = float(np.abs(v[finite] - centre).max()) if finite.any() else 1.0
        lim = lim or 1.0
        out = np.where(np.isposinf(v), centre + lim, np.where(np.isneginf(v), centre - lim, v))
        n_inf, n_nan = int(np.isinf(v).sum()), int(np.isnan(v).sum())
        note = ", ".join(x for x in (f"{n_inf} infinite cell(s) drawn at the range's end" if n_inf else "",
                                     f"{n_nan} NaN cell(s) blank" if n_nan else "") if x)
        return out, lim, note

    def plot(self, path: str | Path | None = None, ax=None, title: str | None = None, cmap: str = "RdBu_r",
             centre="baseline"):
        """Heatmap of a 2-D array (first axis down, second across), white at `centre` (see `colour_centre`: the
        unpatched baseline of a patching grid, so cells with no effect are white; or a number, e.g. 0); saved to
        `path` if given."""
        return renderer("heatmap_figure")(self, path=path, ax=ax, title=title, cmap=cmap, centre=centre)

    # Interactive views (workbench.views): a hoverable plotly heatmap, in a notebook or saved as one HTML file.
    def view(self, title: str | None = None, centre="baseline"):
        return renderer("labelled_heatmap")(self, title, centre=centre)

    def show(self, title: str | None = None) -> None:
        renderer("show")(self.view(title))

    def _repr_html_(self):
        return self.view()._repr_html_() if self.values.ndim in (2, 3) else None
