"""Steering sweeps: layers x multipliers -> behaviour score, success rate and a fluency cost (perplexity of
the steered continuations under the unsteered model, or KL on neutral text), as labelled arrays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.generation import check_generation, check_prompts, generate_ids
from ..core.interventions import Add
from ..toolkit.results import LabelledArray
from ..core.io import read_json
from ..core.sites import check_layers, parse_site
from .vectors import SteeringVector, check_multiplier, position_selector
from ..core.io import write_json
from ..core import checks

# -- costs --------------------------------------------------------------------------------------

@torch.no_grad()
def continuation_nll(model, prompts: Sequence[str], continuations: Sequence[list[int]],
                     batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood of each continuation's tokens given its prompt under `model` as it
    is (run it unsteered), and the token counts: ([n], [n])."""
    tok = model.tokenizer
    nll, count = [], []
    for start in range(0, len(prompts), batch_size):
        rows, n_prompt = [], []
        for p, c in zip(prompts[start:start + batch_size], continuations[start:start + batch_size]):
            p_ids = tok(p).input_ids
            rows.append(p_ids + list(c))
            n_prompt.append(len(p_ids))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)  # tokens to score (predicted from the one before)
        for i, (r, n) in enumerate(zip(rows, n_prompt)):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
            target[i, n:len(r)] = True
        logp = model(ids.to(model.device), mask.to(model.device)).float().log_softmax(-1)[:, :-1]
        tok_lp = logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].cpu()
        t = target[:, 1:]
        nll.append(-(tok_lp * t).sum(1))
        count.append(t.sum(1))
    return torch.cat(nll), torch.cat(count)


# -- sweeps -------------------------------------------------------------------------------------

Behaviour = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class SteeringSweep:
    """A layers x multipliers sweep: `behaviour` (mean score), `success` (share of continuations
    scoring above the threshold, or None), `cost` (fluency cost) as [layer, multiplier] arrays;
    `baseline` holds the unsteered scores; `samples` every continuation with its score."""

    behaviour: LabelledArray
    success: LabelledArray | None
    cost: LabelledArray
    baseline: dict
    samples: list[dict]
    meta: dict

    @property
    def layers(self) -> list[int]:
        return self.behaviour.coords["layer"]

    @property
    def multipliers(self) -> list[float]:
        return self.behaviour.coords["multiplier"]

    def to_dataframe(self):
        """One row per (layer, multiplier): behaviour, success, cost."""
        df = self.behaviour.to_dataframe().rename(columns={"value": "behaviour"})
        if self.success is not None:
            df["success"] = self.success.values.reshape(-1)
        df["cost"] = self.cost.values.reshape(-1)
        return df

    def best(self, max_cost_ratio: float = 2.0) -> dict:
        """The (layer, multiplier) with the highest success rate (else behaviour) whose cost is at most
        `max_cost_ratio` x the unsteered cost (for KL, which is 0 unsteered: at most `max_cost_ratio` nats)."""
        score = (self.success if self.success is not None else self.behaviour).values
        base = self.baseline["cost"]
        limit = max_cost_ratio * base if base > 0 else max_cost_ratio
        ok = self.cost.values <= limit
        if not ok.any():
            return {}
        key = np.where(ok, score, -np.inf) + 1e-9 * np.where(ok, self.behaviour.values, 0)
        i, j = np.unravel_index(int(np.argmax(key)), key.shape)
        return {"layer": self.layers[i], "multiplier": self.multipliers[j], "behaviour": float(self.behaviour.values[i, j]),
                "success": None if self.success is None else float(self.success.values[i, j]),
                "cost": float(self.cost.values[i, j]), "cost_limit": float(limit)}

    def to_json(self) -> dict:
        return {"meta": self.meta, "baseline": self.baseline, "behaviour": self.behaviour.to_json(),
                "success": None if self.success is None else self.success.to_json(),
                "cost": self.cost.to_json(), "best": self.best(), "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_json(), indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "SteeringSweep":
        d = read_json(path, "path")
        return cls(LabelledArray.from_json(d["behaviour"]),
                   None if d["success"] is None else LabelledArray.from_json(d["success"]),
                   LabelledArray.from_json(d["cost"]), d["baseline"], d["samples"], d["meta"])

    def plot(self, path: str | Path | None = None):
        """Success rate (or behaviour) and fluency cost against the multiplier, one line per layer."""
        import matplotlib.pyplot as plt

        from ..views.figures import save_figure

        top = self.success if self.success is not None else self.behaviour
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, layer in enumerate(self.layers):
            axes[0].plot(self.multipliers, top.values[i], marker="o", label=f"layer {layer}")
            axes[1].plot(self.multipliers, self.cost.values[i], marker="o", label=f"layer {layer}")
        base_top = self.baseline["success"] if self.success is not None else self.baseline["behaviour"]
        axes[0].axhline(base_top, color="grey", ls="--", lw=1, label="unsteered")
        axes[1].axhline(self.baseline["cost"], color="grey", ls="--", lw=1, label="unsteered")
        axes[0].set_ylabel("success rate" if self.success is not None else self.meta.get("behaviour_name", "behaviour"))
        axes[1].set_ylabel({"perplexity": "perplexity (unsteered model)", "kl": "KL on neutral text (nats/token)"}.get(
            self.meta.get("cost"), "cost"))
        if self.meta.get("cost") == "perplexity":
            axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("multiplier")
            ax.legend(fontsize=7)
        axes[0].set_title(self.meta.get("title", "steering: behaviour"), fontsize=10)
        axes[1].set_title("fluency cost", fontsize=10)
        return save_figure(fig, path)

    # Interactive views (workbench.views): a slider over multipliers showing the continuations and scores.
    def view(self):
        from ..views import steering_view

        return steering_view(self)

    def show(self) -> None:
        from ..views import show, steering_widget

        show(steering_widget(self))

    def _repr_html_(self):
        return self.view()._repr_html_()


def _row_adds(model, vector: SteeringVector, cells: list[tuple[int, float]], positions) -> list[Add]:
    """Per-row steering for a batch where row r gets multiplier m_r at layer l_r (cells[r] = (l_r, m_r)):
    one Add per layer with a [batch, 1, d_model] vector, zero on rows of other layers (adding 0.0 is exact)."""
    selector = position_selector(positions)
    adds = []
    for layer in sorted({l for l, _ in cells if l is not None}):
        scale = torch.tensor([m if l == layer else 0.0 for l, m in cells])
        adds.append(Add(parse_site(vector.component, model.dims.n_layers, layer), positions=selector,
                        vector=(scale[:, None, None] * vector.vectors[layer]).to(model.device)))
    return adds


@torch.no_grad()
def kl_on_text(model, vector: SteeringVector, texts: Sequence[str], cells: list[tuple[int, float]],
               batch_size: int = 16) -> np.ndarray:
    """Mean over the texts' real tokens of KL(p_unsteered || p_steered) of the next-token distribution,
    steering at all positions, for each (layer, multiplier) cell: [len(cells)]."""
    texts = check_prompts(list(texts), "neutral_texts")
    ids, mask = model.encode(texts)
    base = model(ids, mask).float().log_softmax(-1)  # [n, pos, vocab]
    real = torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
    out = []
    per = max(1, batch_size // len(texts))
    for start in range(0, len(cells), per):
        chunk = cells[start:start + per]
        rows = [c for c in chunk for _ in texts]
        big_ids = ids.repeat(len(chunk), 1)
        big_mask = None if mask is None else mask.repeat(len(chunk), 1)
        steered = model.run_with_interventions(big_ids, _row_adds(model, vector, rows, "all"), big_mask)
        lp = steered.float().log_softmax(-1).view(len(chunk), *base.shape)
        kl = (base.exp() * (base - lp)).sum(-1)  # [cells, n, pos]
        out += [float(k[real].mean()) for k in kl]
    return np.array(out)


def sweep(model, vector: SteeringVector, prompts: Sequence[str], *, multipliers: Sequence[float], layers=None,
          behaviour: Behaviour, threshold: float | None = None, behaviour_name: str = "behaviour",
          cost: str = "perplexity", neutral_texts: Sequence[str] | None = None, positions="all",
          max_new_tokens: int = 20, do_sample: bool = False, seed: int = 0, temperature: float = 1.0,
          top_p: float = 1.0, batch_size: int = 32, out=None, run=None, progress: bool = False) -> SteeringSweep:
    """Steer at one layer at a time with each multiplier, generate a continuation per prompt and score it.

    `behaviour(prompts, continuations) -> scores` must not depend on the steering (e.g. the unsteered
    model's own log-odds of " positive" vs " negative", or a word-list share); success is
    score > `threshold`. `cost`: "perplexity" of the continuations under the unsteered model
    (exp of the mean token NLL), or "kl" on `neutral_texts`.

    Each (layer, multiplier) cell, and the unsteered baseline (cell 0), is an item of the one sweep driver
    (`toolkit.sweep`): its prompts' continuations are generated in batches and its cost measured there; the
    behaviour is scored afterwards on this process's model, over all continuations at once. `out` (a folder)
    makes the sweep resumable (one file per finished cell under `out/cells/`, the summary in `out/sweep.json`,
    a folder of another configuration refused unless `run.force`, locked while it runs); `run=Run(workers=...)`
    (`workbench.toolkit.Run`) runs the cells on Ray workers with the same continuations and costs as in-process
    (bit for bit at equal thread counts). Row r of cell c is sampled with seed `seed + c * len(prompts) + r`,
    whatever runs it.
    """
    from ..toolkit.executors import as_run
    from ..toolkit.sweep import SweepFolder, content_digest

    run = as_run(run, progress=progress)
    vector.check_model(model)
    prompts = check_prompts(prompts)
    layers = vector.layers if layers is None else check_layers(layers, model.dims.n_layers)
    missing = [l for l in layers if l not in vector.vectors]
    if missing:
        raise ValueError(f"layers: the steering vector has no direction for layers {missing}; it has {vector.layers}")
    if isinstance(multipliers, (int, float)) or not isinstance(multipliers, (list, tuple, np.ndarray)) or not len(multipliers):
        raise checks.fail('multipliers', 'a non-empty list of numbers', multipliers)
    multipliers = [check_multiplier(m, "multipliers") for m in multipliers]
    if cost not in ("perplexity", "kl"):
        raise checks.fail('cost', "'perplexity' or 'kl'", cost)
    if cost == "kl" and not neutral_texts:
        raise ValueError("neutral_texts: cost='kl' needs neutral texts to measure the KL on")
    if cost == "kl":
        neutral_texts = check_prompts(list(neutral_texts), "neutral_texts")
    if threshold is not None:
        threshold = check_multiplier(threshold, "threshold")
    if not callable(behaviour):
        raise checks.fail("behaviour", "a callable (prompts, continuations) -> scores", behaviour)
    check_generation(max_new_tokens, batch_size, temperature, top_p)
    position_selector(positions)

    n_p = len(prompts)
    cells = [(None, 0.0)] + [(l, m) for l in layers for m in multipliers]  # cell 0: unsteered
    gen = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_p": top_p,
           "batch_size": batch_size}
    items = [(c, {"layer": l, "multiplier": m, "vector": vector, "prompts": prompts, "positions": positions,
                  "seed": seed + c * n_p, "gen": gen, "cost": cost, "neutral_texts": neutral_texts})
             for c, (l, m) in enumerate(cells)]
    folder = None if out is None else SweepFolder(
        out, {"what": "steering sweep", "model": model.name, "fingerprint": model.fingerprint,
              "vector_sha256": content_digest(vector), "component": vector.component, "layers": layers,
              "multipliers": multipliers, "prompts_sha256": content_digest(prompts), "positions": repr(positions),
              "cost": cost, "neutral_sha256": content_digest(neutral_texts), "seed": seed, **gen},
        items="cells", force=run.force)
    if folder is not None:
        # a multiplier that overflows the residual stream is refused at the forward (core.hooks.check_result):
        # every steered cell steps once on the first prompt, in one batch, before anything is written
        generate_ids(model, [prompts[0]] * (len(cells) - 1), lambda a, b: _row_adds(model, vector, cells[1 + a:1 + b],
                     positions), max_new_tokens=1, batch_size=batch_size)
    records = run.records(model, items, _cell_item, folder, desc="steering sweep", unit="cell")
    texts = [t for c in range(len(cells)) for t in records[c]["texts"]]
    cost_cells = np.array([records[c]["cost"] for c in range(len(cells))])
    rows = [(c, p) for c in cells for p in prompts]
    row_prompts = [p for _, p in rows]
    # Scores come from outside the steering code, on the model with no hooks active.
    scores = np.asarray(behaviour(row_prompts, texts), dtype=float)
    if scores.shape != (len(rows),):
        raise ValueError(f"behaviour: returned shape {scores.shape}, expected one score per continuation ({len(rows)})")
    by_cell = scores.reshape(len(cells), n_p)
    cost_name = "perplexity of steered continuations under the unsteered model" if cost == "perplexity" else \
        "KL(unsteered || steered) on neutral text, nats/token"
    shape = (len(layers), len(multipliers))
    coords = {"layer": layers, "multiplier": multipliers}
    dims = ("layer", "multiplier")
    beh = LabelledArray(by_cell[1:].mean(1).reshape(shape), dims, coords, name=behaviour_name, meta={"metric": behaviour_name})
    succ = None if threshold is None else LabelledArray(
        (by_cell[1:] > threshold).mean(1).reshape(shape), dims, coords, name="success rate",
        meta={"metric": f"share with {behaviour_name} > {threshold}"})
    cst = LabelledArray(cost_cells[1:].reshape(shape), dims, coords, name="cost", meta={"metric": cost_name})
    baseline = {"behaviour": float(by_cell[0].mean()), "cost": float(cost_cells[0]),
                "success": None if threshold is None else float((by_cell[0] > threshold).mean())}
    samples = [{"layer": c[0], "multiplier": c[1], "prompt": p, "continuation": t, "score": float(s)}
               for (c, p), t, s in zip(rows, texts, scores)]
    meta = {"model": model.name, "fingerprint": model.fingerprint, "component": vector.component,
            "vector": vector.meta, "positions": positions if isinstance(positions, (str, int, list)) else repr(positions),
            "cost": cost, "behaviour_name": behaviour_name, "threshold": threshold, "n_prompts": n_p,
            "max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
            "temperature": temperature if do_sample else None, "top_p": top_p if do_sample else None}
    if folder is not None:
        meta["folder"] = str(folder.path)
    res = SteeringSweep(beh, succ, cst, baseline, samples, meta)
    if folder is not None:
        res.save(folder.path / "sweep.json")
    return res


def _cell_item(model, p: dict) -> dict:
    """One (layer, multiplier) cell of a steering `sweep` (an executor's item): every prompt's continuation
    (token ids and text) under the steering, and the cell's fluency cost (`cost`)."""
    cells = [(p["layer"], p["multiplier"])] * len(p["prompts"])
    g = p["gen"]
    ids = generate_ids(model, p["prompts"], lambda a, b: _row_adds(model, p["vector"], cells[a:b], p["positions"]),
                       max_new_tokens=g["max_new_tokens"], do_sample=g["do_sample"], seed=p["seed"],
                       temperature=g["temperature"], top_p=g["top_p"], batch_size=g["batch_size"])
    if p["cost"] == "perplexity":  # exp of the mean token NLL of the cell's continuations, unsteered
        nll, cnt = continuation_nll(model, p["prompts"], ids, batch_size=g["batch_size"])
        cost = float(torch.exp(nll.sum() / cnt.sum().clamp_min(1)))
    elif p["layer"] is None:
        cost = 0.0  # KL of the unsteered model with itself
    else:
        cost = float(kl_on_text(model, p["vector"], p["neutral_texts"], cells[:1], batch_size=g["batch_size"])[0])
    return {"layer": p["layer"], "multiplier": p["multiplier"], "ids": ids,
            "texts": [model.tokenizer.decode(r) for r in ids], "cost": cost}
