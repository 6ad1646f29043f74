"""One report on what a fine-tune changed: `model_diff(base, tuned, prompts)` and `workbench diff BASE FINETUNED`.

Sections: TuCo by layer and per prompt (`tuco`), intruder dimensions and update size per layer (`weights`), the
cross-model patching grid (`analysis.cross_model`), the most moved crosscoder latents and the activation-difference
lens (`crosscoder`), the most moved latents of an SAE trained on the base model (`sae.diff_latents`; by default the
shipped SAE, layer 15 of the default model, when the pair is of the default model's family), and counterfactual strings base -> fine-tuned (`counterfactual`) with the exact Gumbel-max
first-token agreement beside the measured one. Exact agreement (shared Gumbel noise, temperature 1): for next-token
distributions p (base) and q (fine-tuned), an observed first token x sampled from p is kept by the counterfactual
with probability

    P(keep | x) = 1 / sum_j max(p_j, q_j p_x / q_x)

and before sampling the two agree with probability sum_x 1 / sum_j max(p_j / p_x, q_j / q_x) (DESIGN.md, round 3).
"""
from __future__ import annotations

import html as _html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.default_model import DEFAULT_MODEL
from ..core.io import atomic_write_text
from ..toolkit.results import LabelledArray
from ..core.model import Model
from .crosscoder import ActivationDifference, CrosscoderDiff, activation_difference, diff_crosscoder, \
    paired_activations, train_crosscoder
from .tuco import TuCo, check_pair, tuning_contribution
from .weights import WeightDiff, weight_diff
from ..core import checks


@dataclass
class ModelDiff:
    """Everything `model_diff` measured; `view()` renders one page, `save(folder)` writes report.json + report.html."""

    base: str
    tuned: str
    prompts: list[str]
    tuco: TuCo
    weights: WeightDiff
    patching: LabelledArray | None
    crosscoder: CrosscoderDiff | None
    latent_tokens: dict[int, list[str]]
    lens: ActivationDifference | None
    counterfactuals: object | None
    agreement: dict
    meta: dict = field(default_factory=dict)
    tokenizer: object = field(default=None, repr=False)
    sae_latents: object | None = None  # a sae.LatentDiff: the SAE's latents moved most at the prompts' last token

    def to_json(self) -> dict:
        return {"base": self.base, "tuned": self.tuned, "prompts": self.prompts, "meta": self.meta,
                "tuco": self.tuco.to_json(), "weights": {"meta": self.weights.meta, "by_layer": self.weights.by_layer(),
                                                         "total_intruders": self.weights.total_intruders},
                "patching": None if self.patching is None else self.patching.to_json(),
                "crosscoder": None if self.crosscoder is None else {**self.crosscoder.to_json(),
                                                                    "latent_tokens": self.latent_tokens},
                "lens": None if self.lens is None else self.lens.to_json(),
                "sae_latents": None if self.sae_latents is None else self.sae_latents.to_json(top=20),
                "counterfactuals": None if self.counterfactuals is None else
                self.counterfactuals.to_dataframe().to_dict(orient="records"),
                "agreement": self.agreement}

    def view(self):
        import plotly.graph_objects as go

        from .. import views
        from ..views.base import plotly_view

        parts = []
        layers = list(range(len(self.weights.by_layer()["layer"])))
        share = self.tuco.by_layer().values[0]
        fig = go.Figure(go.Bar(x=layers, y=[float(v) for v in share], name="FTC share"))
        fig.update_layout(xaxis_title="layer", xaxis_dtick=1, yaxis_title="||FTC_l|| / (||PTC_l|| + ||FTC_l||)", height=320)
        parts.append(plotly_view(fig, "TuCo by layer (mean over prompts and tokens)"))
        fig = go.Figure(go.Bar(x=[p[:40] for p in self.prompts], y=self.tuco.tuco.tolist()))
        fig.update_layout(yaxis_title="TuCo (last token)", height=320)
        parts.append(plotly_view(fig, "TuCo per prompt"))
        w = self.weights.by_layer()
        fig = go.Figure([go.Bar(x=w["layer"], y=w["intruders"], name="intruder dimensions"),
                         go.Scatter(x=w["layer"], y=w["effective_rank"], name="effective rank of the update", yaxis="y2")])
        fig.update_layout(xaxis_title="layer", xaxis_dtick=1, yaxis_title=f"intruders (top {self.weights.meta['k']}, "
                          f"epsilon {self.weights.meta['epsilon']})", height=340,
                          yaxis2=dict(overlaying="y", side="right", title="effective rank"))
        parts.append(plotly_view(fig, f"Weight space: {self.weights.total_intruders} intruder dimensions"))
        if self.patching is not None:
            parts.append(views.labelled_heatmap(self.patching, self.patching.name))
        else:
            parts.append(views.View("Cross-model patching", "<p>no grid: on the prompts of the most common length the "
                                    "two models' top next tokens agree (or patching was switched off)</p>"))
        if self.crosscoder is not None:
            rows = "".join(
                f"<tr><td>{j}</td><td>{self.crosscoder.kind[j]}</td><td>{float(self.crosscoder.rel_norm[j]):.3f}</td>"
                f"<td>{float(self.crosscoder.frequency[j]):.3f}</td><td>{float(self.crosscoder.nu_error[j]):.3f}</td>"
                f"<td>{_html.escape(' '.join(repr(t) for t in self.latent_tokens.get(j, [])))}</td></tr>"
                for j in self.crosscoder.most_moved(10, "tuned") + self.crosscoder.most_moved(5, "base"))
            counts = ", ".join(f"{k}: {v}" for k, v in self.crosscoder.counts().items())
            parts.append(views.View("Crosscoder: most moved latents", (
                f"<p>{counts}; FVU {self.crosscoder.fvu:.3f}</p><table class='latents' border=1><tr><th>latent</th>"
                "<th>class</th><th>relative norm</th><th>frequency</th><th>nu (error)</th><th>top tokens</th></tr>"
                f"{rows}</table>")))
        if self.sae_latents is not None:
            d = self.sae_latents
            rows = "".join(f"<tr><td>{j}</td><td>{float(d.delta[j]):+.3f}</td><td>{float(d.base_mean[j]):.3f}</td>"
                           f"<td>{float(d.ft_mean[j]):.3f}</td><td>{float(d.score[j]):.2f}</td></tr>" for j in d.order[:10])
            parts.append(views.View("SAE: most moved latents", (
                f"<p>SAE at {_html.escape(d.meta['site'])} (trained on the base model), read at each prompt's last "
                f"token; ranked by |mean change|</p><table class='sae-latents' border=1><tr><th>latent</th>"
                f"<th>change (tuned - base)</th><th>base mean</th><th>tuned mean</th><th>change / base std</th></tr>"
                f"{rows}</table>")))
        if self.lens is not None:
            top = ", ".join(f"{_html.escape(repr(t))} ({v:.2f})" for t, v in self.lens.top_tokens)
            parts.append(views.View("Activation-difference lens", (
                f"<p>layer {self.lens.layer}, |mean difference| {float(self.lens.vector.norm()):.3f}; "
                f"promoted tokens: {top}</p>")))
        if self.counterfactuals is not None:
            a = self.agreement
            parts.append(views.View("First-token agreement, base -> fine-tuned", (
                f"<p class='agreement'>measured {a['measured']:.3f} (n={a['n']}), exact {a['exact']:.3f} "
                f"(mean of P(keep | observed)); before sampling: {a['exact_unconditional']:.3f}</p>")))
            parts.append(views.counterfactual_view(self.counterfactuals, self.tokenizer,
                                                   title="Counterfactual strings base -> fine-tuned"))
        return views.concat(parts, f"What fine-tuning changed: {self.base} -> {self.tuned}")

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "report.json", json.dumps(self.to_json(), indent=1, default=float))
        self.view().save(folder / "report.html")
        return folder


def _latent_tokens(cc, acts: Tensor, tokens: list[str], latents: list[int], n: int = 5) -> dict[int, list[str]]:
    """The tokens where each latent fires hardest."""
    with torch.no_grad():
        f = cc.encode(cc.normalize(acts.float()))
    out = {}
    for j in latents:
        top = f[:, j].topk(min(n, len(f)))
        out[j] = [tokens[i] for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0]
    return out


def _sae_latents(base: Model, tuned: Model, prompts: list[str], sae):
    """The SAE latents moved most from base to tuned at each prompt's last token (`sae.diff_latents`), or None."""
    from ..sae import default_sae, diff_latents, load_sae

    if sae is None:
        return None
    if isinstance(sae, str) and sae == "default":
        if base.name.split("+")[0] != DEFAULT_MODEL:  # the shipped SAE reads the default model only
            return None
        sae = default_sae(base)
    else:
        sae = load_sae(sae, base)
    return diff_latents(base, tuned, sae, prompts, read_at=-1)


def _patching_grid(base: Model, tuned: Model, prompts: list[str]) -> LabelledArray | None:
    """Cross-model patching (fine-tuned into base) of resid_pre on the prompts of the most common length; the
    answer is the fine-tuned model's top next token, the foil the base model's (prompts where they agree drop out)."""
    from ..patching.cross_model import cross_model_patching

    lengths = [len(tuned.to_tokens(p)[0]) for p in prompts]
    common = max(set(lengths), key=lengths.count)
    chosen = [p for p, n in zip(prompts, lengths) if n == common]
    with torch.no_grad():
        t_top = tuned(chosen)[:, -1].argmax(-1).tolist()
        b_top = base(chosen)[:, -1].argmax(-1).tolist()
    keep = [i for i in range(len(chosen)) if t_top[i] != b_top[i]]
    if not keep:
        return None
    dec = tuned.tokenizer.decode
    res = cross_model_patching(base, tuned, [chosen[i] for i in keep], [dec([t_top[i]]) for i in keep],
                               [dec([b_top[i]]) for i in keep], direction="tuned_into_base")
    return res["resid_pre"]


def model_diff(base: Model, tuned, prompts: Sequence[str], *, layer: int | None = None,
               corpus: Sequence[str] | None = None, n_latents: int | None = None, k: int = 8, steps: int = 600,
               n_samples: int = 8, max_new_tokens: int = 12, seed: int = 0, patching: bool = True,
               crosscoder: bool = True, sae="default", matrices: str | None = None,
               progress: bool = False) -> ModelDiff:
    """What fine-tuning changed from `base` to `tuned` (a Model, peft model or adapter folder; see `weight_diff`).

    prompts: strings for TuCo, patching and counterfactual strings. layer: where the crosscoder and the lens read
    (default the middle layer). corpus: texts for the crosscoder (default the prompts). n_latents: crosscoder width
    (default 4 x d_model); k, steps: its BatchTopK k and training steps. n_samples: observed strings sampled from
    the base model per prompt (seeded) for the counterfactuals. sae: an SAE of the base model (a SAELens SAE or its
    folder) whose latents are diffed at the prompts' last token; "default": the shipped SAE when `base` is the default
    model (by name), else none; None: no SAE section. matrices: a regular expression on the block-relative module
    names the weight section reads (`weight_diff`; default every matrix). progress: a tqdm bar over the
    crosscoder's steps (the part that takes long).
    """
    from ..counterfactual import counterfactuals, gumbel_agreement, gumbel_keep, sample
    from .weights import as_merged

    tuned = as_merged(base, tuned)
    check_pair(base, tuned)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise checks.fail("prompts", "a non-empty list of non-empty strings", prompts)
    L = base.dims.n_layers
    layer = L // 2 if layer is None else layer
    if not isinstance(layer, int) or not 0 <= layer < L:
        raise checks.fail('layer', f'an int in 0..{L - 1}', layer)
    for name, v in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens), ("steps", steps), ("k", k)):
        if not isinstance(v, int) or v < 1:
            raise checks.fail(name, 'a positive int', v)

    tuco = tuning_contribution(base, tuned, prompts)
    weights = weight_diff(base, tuned, matrices=matrices)
    grid = _patching_grid(base, tuned, prompts) if patching else None

    cdiff, latent_tokens = None, {}
    texts = list(corpus) if corpus is not None else prompts
    if crosscoder:
        acts = paired_activations(base, tuned, texts, layer)
        cc = train_crosscoder(acts, n_latents=n_latents or 4 * base.dims.d_model, k=k, steps=steps,
                              batch_size=min(512, len(acts)), seed=seed, progress=progress)
        cdiff = diff_crosscoder(cc, acts)
        tokens = [t for x in texts for t in base.to_str_tokens(x)]
        latent_tokens = _latent_tokens(cc, acts, tokens, cdiff.most_moved(10, "tuned") + cdiff.most_moved(5, "base"))
    lens = activation_difference(base, tuned, texts, layer)
    sae_latents = _sae_latents(base, tuned, prompts, sae)

    # counterfactual strings: observed strings sampled from the base model, replayed under the fine-tuned one
    rows = [p for p in prompts for _ in range(n_samples)]
    samples = sample(base, rows, max_new_tokens=max_new_tokens, seed=seed)
    cf = counterfactuals(base, None, samples, intervention=tuned)
    measured = [int(a[:1] == b[:1]) for a, b in zip(samples.ids, cf.ids)]
    with torch.no_grad():
        p_next = torch.stack([base(p)[0, -1].float().softmax(-1) for p in prompts])
        q_next = torch.stack([tuned(p)[0, -1].float().softmax(-1) for p in prompts])
    keep = gumbel_keep(p_next, q_next)  # [n_prompts, V]: P(q keeps x | p chose x), every x at once
    exact = [float(keep[i // n_samples, ids[0]]) for i, ids in enumerate(samples.ids)]
    uncond = gumbel_agreement(p_next, q_next).tolist()
    agreement = {"measured": float(np.mean(measured)), "exact": float(np.mean(exact)), "n": len(measured),
                 "exact_unconditional": float(np.mean(uncond)), "per_row_exact": exact, "per_row_measured": measured}
    out = ModelDiff(base.name, tuned.name, prompts, tuco, weights, grid, cdiff, latent_tokens, lens, cf, agreement,
                    {"layer": layer, "n_corpus": len(texts), "n_samples": n_samples, "seed": seed}, base.tokenizer,
                    sae_latents)
    return out
