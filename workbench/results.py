"""Labelled arrays: sweep results with axis names and labels, saved atomically, plotted in one call."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors (made contiguous, moved to CPU) as one safetensors file, written atomically; never a pickle."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, blob)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, object]]:
    """(line number, parsed object) per non-blank line; a missing file or a line that does not parse is a
    ValueError naming `what` (the argument), the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{what}: {path}:{n}: not valid JSON ({e.msg})") from None
    return rows


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
        atomic_write_text(path, json.dumps(self.to_json()))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LabelledArray":
        return cls.from_json(json.loads(Path(path).read_text()))

    def plot(self, path: str | Path | None = None, ax=None, title: str | None = None, cmap: str = "RdBu_r"):
        """Heatmap of a 2-D array (first axis down, second across), centred at zero; saved to `path` if given."""
        from .plotting import heatmap

        return heatmap(self, path=path, ax=ax, title=title, cmap=cmap)
