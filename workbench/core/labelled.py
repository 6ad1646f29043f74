"""`LabelledArray`: sweep results with named axes that convert to a DataFrame, save to JSON and plot."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import write_json


@dataclass
class LabelledArray:
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

    def save(self, path: str | Path) -> Path:
        """Save as one JSON file (labels, metadata and values), written atomically."""
        write_json(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LabelledArray":
        from .io import read_json

        return cls.from_json(read_json(path, "path"))

    def plot_values(self) -> tuple[np.ndarray, float, str]:
        """What a heatmap draws: (values with +-inf at the end of the colour range, the symmetric range limit
        from the finite values, a note naming the non-finite cells or ""). NaN stays NaN (a blank cell, named
        in the note); a plot of +-inf would otherwise be all blank (the range itself became infinite)."""
        v = np.asarray(self.values, dtype=float)
        finite = np.isfinite(v)
        lim = float(np.abs(v[finite]).max()) if finite.any() else 1.0
        lim = lim or 1.0
        out = np.where(np.isposinf(v), lim, np.where(np.isneginf(v), -lim, v))
        n_inf, n_nan = int(np.isinf(v).sum()), int(np.isnan(v).sum())
        note = ", ".join(x for x in (f"{n_inf} infinite cell(s) drawn at the range's end" if n_inf else "",
                                     f"{n_nan} NaN cell(s) blank" if n_nan else "") if x)
        return out, lim, note

    def plot(self, path: str | Path | None = None, ax=None, title: str | None = None, cmap: str = "RdBu_r"):
        """Heatmap of a 2-D array (first axis down, second across), centred at zero; saved to `path` if given."""
        from ..plotting import heatmap

        return heatmap(self, path=path, ax=ax, title=title, cmap=cmap)

    # Interactive views (workbench.views): a hoverable plotly heatmap, in a notebook or saved as one HTML file.
    def view(self, title: str | None = None):
        from ..views import labelled_heatmap

        return labelled_heatmap(self, title)

    def show(self, title: str | None = None) -> None:
        from ..views import show

        show(self.view(title))

    def _repr_html_(self):
        return self.view()._repr_html_() if self.values.ndim in (2, 3) else None
