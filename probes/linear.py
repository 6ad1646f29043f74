"""Linear probes per layer: logistic regression (scikit-learn) and difference of class means.

    logistic regression:  p(y=1 | x) = sigmoid(w . x + b), fitted with an L2 penalty on standardised x;
                          the direction is w mapped back to the raw activation space (w / sigma)
    difference of means:  w = mu_1 - mu_0,  predict 1 iff (x - (mu_0 + mu_1) / 2) . w > 0

Accuracy is measured on a held-out, stratified split. Directions are unit vectors pointing from class
0 to class 1 (classes sorted, so labels [False, True] point towards True).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

METHODS = ("logreg", "diffmean")


def diff_of_means(acts: Tensor, labels) -> Tensor:
    """mu_1 - mu_0 for activations [n, d] and two-valued labels [n] (not normalised), [d]."""
    y, _ = _binary(labels, len(acts))
    y = torch.as_tensor(y, dtype=torch.bool)
    return acts[y].float().mean(0) - acts[~y].float().mean(0)


def _binary(labels, n: int) -> tuple[np.ndarray, list]:
    labels = list(labels.tolist() if isinstance(labels, (Tensor, np.ndarray)) else labels)
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels (one per prompt), got {len(labels)}")
    classes = sorted(set(labels), key=str)
    if len(classes) != 2:
        raise ValueError(f"labels: expected exactly two classes, got {len(classes)}: {classes[:5]}")
    return np.array([classes.index(v) for v in labels]), classes


@dataclass
class ProbeResult:
    """Per-layer probes. `train_acc`, `test_acc`: [n_layers]; `directions[layer]`: unit vector [d]."""

    method: str
    layers: list[int]
    train_acc: np.ndarray
    test_acc: np.ndarray
    directions: dict[int, Tensor]
    classes: list
    meta: dict = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.test_acc))]

    def accuracy(self, layer: int) -> float:
        return float(self.test_acc[self.layers.index(layer)])

    def direction(self, layer: int) -> Tensor:
        if layer not in self.directions:
            raise ValueError(f"layer: no probe at layer {layer}; probed layers are {self.layers}")
        return self.directions[layer]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "train_acc": self.train_acc, "test_acc": self.test_acc})

    def plot(self, path: str | Path | None = None, ax=None, title: str | None = None, label: str | None = None):
        """Held-out accuracy per layer, with chance level; saved to `path` if given. Returns the Axes."""
        import matplotlib.pyplot as plt

        own = ax is None
        if own:
            _, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(self.layers, self.test_acc, marker="o", ms=3, label=label or f"{self.method} (held out)")
        has_chance = any(line.get_label() == "chance" for line in ax.get_lines())
        ax.axhline(1 / len(self.classes), color="grey", ls="--", lw=1, label="_" if has_chance else "chance")
        ax.set_xlabel("layer")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0.4, 1.02)
        ax.set_title(title or f"linear probe for {self.classes[0]} vs {self.classes[1]}")
        ax.legend(fontsize=8)
        if path is not None:
            from workbench.views.figures import save_figure

            save_figure(ax.figure, path, close=own, dpi=120)
        return ax

    def save_direction(self, path: str | Path, layer: int | None = None, model=None) -> Path:
        """Export one layer's direction (default: the best layer) for steering or ablation; see `probes.save_direction`."""
        from workbench.directions.store import save_direction

        layer = self.best_layer if layer is None else layer
        meta = {**self.meta, "layer": layer, "method": self.method, "accuracy": self.accuracy(layer),
                "classes": [str(c) for c in self.classes]}
        return save_direction(path, self.direction(layer), meta, model=model)


def train_probes(acts: dict[int, Tensor], labels, *, method: str = "logreg", test_size: float = 0.25,
                 seed: int = 0, C: float = 1.0, meta: dict | None = None) -> ProbeResult:
    """Fit one probe per layer on {layer: activations [n, d]} (from `collect_activations`) and two-valued labels [n]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not isinstance(acts, dict) or not acts:
        raise ValueError("acts: expected a non-empty dict {layer: tensor [n, d]}")
    n = len(next(iter(acts.values())))
    y, classes = _binary(labels, n)
    if not 0 < test_size < 1:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size}")
    tr, te = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=y)
    layers, train_acc, test_acc, dirs = [], [], [], {}
    for layer, a in acts.items():
        if a.ndim != 2 or len(a) != n:
            raise ValueError(f"acts: layer {layer}: expected shape [{n}, d], got {tuple(a.shape)}")
        x = a.double().numpy()
        if method == "logreg":
            mu, sigma = x[tr].mean(0), x[tr].std(0) + 1e-6  # standardise: residual streams have outlier dimensions
            clf = LogisticRegression(C=C, max_iter=2000).fit((x[tr] - mu) / sigma, y[tr])
            predict = lambda idx: clf.predict((x[idx] - mu) / sigma)  # noqa: E731
            w = clf.coef_[0] / sigma  # the same decision function written on raw activations
        else:
            mu0, mu1 = x[tr][y[tr] == 0].mean(0), x[tr][y[tr] == 1].mean(0)
            w = mu1 - mu0
            mid = (mu0 + mu1) / 2
            predict = lambda idx: ((x[idx] - mid) @ w > 0).astype(int)  # noqa: E731
        layers.append(int(layer))
        train_acc.append(float((predict(tr) == y[tr]).mean()))
        test_acc.append(float((predict(te) == y[te]).mean()))
        norm = np.linalg.norm(w)
        dirs[int(layer)] = torch.from_numpy(w / norm if norm > 0 else w).float()
    return ProbeResult(method, layers, np.array(train_acc), np.array(test_acc), dirs, classes,
                       {**(meta or {}), "n_train": len(tr), "n_test": len(te), "seed": seed})
