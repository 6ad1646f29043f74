"""Figures in the style of the papers: heatmaps over layers x positions (or heads)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..toolkit.results import token_labels


def save_figure(fig, path=None, close: bool = True, dpi: int = 110):
    """Lay out `fig`; with a path, write it there (folders made) and close it unless the caller owns it
    (`close=False`, a figure drawn into the caller's axes), so sweeps do not pile up open figures."""
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        if close:
            plt.close(fig)
    return fig


def heatmap(arr, path=None, ax=None, title=None, cmap="RdBu_r", centre="baseline"):
    """Plot a 2-D LabelledArray; rows are its first axis; white at `centre` (`LabelledArray.colour_centre`: a
    patching grid's unpatched baseline, or a number). Returns the matplotlib Axes."""
    if arr.values.ndim != 2:
        raise ValueError(f"arr: heatmap needs a 2-D array, got dims {arr.dims}; select or average an axis first")
    mid, said = arr.colour_centre(centre)
    values, lim, note = arr.plot_values(mid)
    rows, cols = arr.dims
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * values.shape[1] + 2), max(3, 0.18 * values.shape[0] + 1.5)))
    im = ax.imshow(values, cmap=cmap, vmin=mid - lim, vmax=mid + lim, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in arr.coords[cols]], rotation=90)
    step = max(1, values.shape[0] // 15)
    ax.set_yticks(range(0, values.shape[0], step), [str(c) for c in arr.coords[rows]][::step])
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    ax.set_title((title or arr.name) + f"\n(white: {said}" + (f"; {note})" if note else ")"))
    ax.figure.colorbar(im, ax=ax, label=f"{arr.meta.get('metric', 'value')} (white: {said})")
    if path is not None:
        save_figure(ax.figure, path, close=own, dpi=120)
    return ax


_TRACE_STYLE = {"resid": ("Purples", "single restored layer"), "mlp": ("Greens", "MLP"), "attn": ("Reds", "Attn")}


def trace_figure(trace, path=None):
    """Meng et al. (2022) Figure 1: p(answer) after restoring each (token, layer), one panel per kind."""
    kinds = list(trace.scores)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 0.32 * len(trace.tokens) + 1.6), squeeze=False)
    start, stop = trace.subject_span
    labels = token_labels(trace.tokens, marked=range(start, stop))
    for ax, kind in zip(axes[0], kinds):
        cmap, name = _TRACE_STYLE.get(kind, ("Blues", kind))
        scores = trace.scores[kind]
        im = ax.pcolormesh(scores, cmap=cmap, vmin=trace.p_corrupted)
        ax.invert_yaxis()
        ax.set_yticks(np.arange(len(labels)) + 0.5, labels)
        ax.set_xlabel("layer" if kind == "resid" else f"center of interval of {trace.config.get('window', '')} restored {name} layers")
        ax.set_title(f"Impact of restoring {'state' if kind == 'resid' else name} after corrupted input", fontsize=9)
        fig.colorbar(im, ax=ax, label=f"p({trace.answer.strip()})")
    return save_figure(fig, path)


def average_effect_figures(summary: dict, out_dir) -> list[Path]:
    """The paper's average-effect figures: token group x layer heatmaps per kind (Fig. 2), and the
    average indirect effect at the last subject token and the last token by layer (Fig. 3 style)."""
    ie = summary["indirect_effect"]
    kinds = list(ie)
    groups = list(next(iter(ie.values())))
    out_dir = Path(out_dir)
    paths = []
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [ie[kind][g]["by_layer"] for g in groups]
        width = len(next(r for r in rows if r is not None))
        grid = np.array([r if r is not None else [np.nan] * width for r in rows])
        im = ax.pcolormesh(grid, cmap=_TRACE_STYLE.get(kind, ("Blues",))[0])
        ax.invert_yaxis()
        ax.set_yticks(np.arange(len(groups)) + 0.5, groups, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(f"Average indirect effect: {kind} (n={summary['n_traced']})", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(out_dir / "average_indirect_effect.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = {"resid": "purple", "mlp": "green", "attn": "red"}
    for ax, group in zip(axes, ["last subject token", "last token"]):
        for kind in kinds:
            y = ie[kind][group]["by_layer"]
            if y is not None:
                ax.plot(range(len(y)), y, color=colors.get(kind), label=kind)
        ax.set_title(f"Average indirect effect at the {group}", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("IE = p(restored) - p(corrupted)")
        ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "average_effect_lines.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
