"""ROME-style causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 2).

    corrupt:  x_subject <- x_subject + eps,  eps ~ N(0, nu^2), in `samples` copies (token embeddings)
    restore:  one clean state h_t^(l) (the residual stream after block l), or the MLP / attention
              outputs of a window of `window` layers around l, at one token t
    score:    p(answer) at the last position, averaged over the corrupted copies
    IE = p(restored) - p(corrupted)        TE = p(clean) - p(corrupted)

All restorations of a fact share the same noise and run through the batched patching engine
(`workbench.engine`): each (kind, token, layer, copy) is one patched row, starting at its first
restored layer and computing only the tokens from t on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .engine import Overwrite, Patch, run_patches
from ..core.model import Model
from ..core.sites import Site, check_choices
from ..toolkit.results import Result
from ..core import checks

KINDS = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def check_kinds(kinds) -> list[str]:
    """A kind, a comma-separated string of kinds or a list of them -> checked list (never a string's letters)."""
    return check_choices(kinds, KINDS, "kinds")


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored together for a window centred at `layer`, as in the paper: [l - w//2, l + w - w//2)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def embedding_noise_std(model: Model, subjects: list[str]) -> float:
    """Standard deviation of the token-embedding values of `subjects` (nu = 3 x this, in the paper)."""
    if not subjects:
        raise checks.fail("subjects", "at least one subject", subjects)
    with torch.no_grad():
        values = torch.cat([model.embed(s).reshape(-1) for s in subjects])
    return values.std().item()


@dataclass
class Trace(Result):
    """Causal-tracing result for one fact. `scores[kind]` is p(answer) after restoration, [tokens, layers].
    `save(path)` / `Trace.load(path)`: one JSON file (the `Result` protocol)."""

    prompt: str
    subject: str
    answer: str
    tokens: list[str]
    subject_span: tuple[int, int]  # [start, end) token positions
    p_clean: float
    p_corrupted: float
    scores: dict[str, np.ndarray]
    config: dict = field(default_factory=dict)

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupted

    def indirect_effect(self, kind: str) -> np.ndarray:
        """p(restored) - p(corrupted), [tokens, layers]."""
        return self.scores[kind] - self.p_corrupted

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "subject": self.subject, "answer": self.answer, "tokens": self.tokens,
                "subject_span": list(self.subject_span), "p_clean": self.p_clean, "p_corrupted": self.p_corrupted,
                "scores": {k: v.tolist() for k, v in self.scores.items()}, "config": self.config}

    @classmethod
    def from_json(cls, d: dict) -> "Trace":
        return cls(d["prompt"], d["subject"], d["answer"], d["tokens"], tuple(d["subject_span"]), d["p_clean"],
                   d["p_corrupted"], {k: np.asarray(v) for k, v in d["scores"].items()}, d.get("config", {}))

    def plot(self, path: str | Path | None = None):
        """The paper's Figure 1: one heatmap per kind, tokens down, layers across; subject tokens starred."""
        from ..views.figures import trace_figure

        return trace_figure(self, path)

    # Interactive views (workbench.views): Figure 1 as hoverable heatmaps.
    def view(self):
        from ..views import trace_heatmaps

        return trace_heatmaps(self)

    def show(self) -> None:
        from ..views import show

        show(self.view())

    def _repr_html_(self):
        return self.view()._repr_html_()


def trace_fact(model: Model, prompt: str, subject: str, answer: str, *, noise_std: float, samples: int = 10,
               window: int = 10, kinds=("resid", "mlp", "attn"), seed: int = 0, memory_mb: float = 1024,
               progress: bool = False) -> Trace:
    """Trace one fact. `answer` is the text that follows the prompt (its first token is scored), `noise_std`
    the absolute standard deviation nu of the noise on the subject's embeddings (the paper: 3 x
    `embedding_noise_std`; `trace_facts` takes that factor as `noise_scale`)."""
    kinds = check_kinds(kinds)
    checks.integer(samples, "samples")
    checks.integer(window, "window")
    checks.number(noise_std, "noise_std", minimum=0)
    span = model.find_span(prompt, subject)
    answer_ids = model.tokenizer(answer, add_special_tokens=False).input_ids
    if not answer_ids:
        raise ValueError(f"answer: {answer!r} has no tokens")
    target = answer_ids[0]
    ids = model.to_tokens(prompt)
    T, L = ids.shape[1], model.dims.n_layers
    comps = [KINDS[k] for k in kinds]
    sites = [Site(l, c) for c in comps for l in range(L)]

    def p_answer(logits: Tensor, idx: Tensor | None = None) -> Tensor:
        return logits.softmax(-1)[:, target]

    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(ids, sites)
        gen = torch.Generator().manual_seed(seed)
        eps = noise_std * torch.randn(samples, len(span), model.dims.d_model, generator=gen)
        embeds = model.embed(ids).repeat(samples, 1, 1)
        embeds[:, span.start:span.stop] += eps.to(embeds.device, embeds.dtype)
        corr_logits, corrupted = model.run_with_cache(None, sites, inputs_embeds=embeds)
    p_clean = p_answer(clean_logits[:, -1]).item()
    p_corr = p_answer(corr_logits[:, -1])  # [samples]

    scores = {}
    for kind, comp in zip(kinds, comps):
        # a restoration whose clean states equal the corrupted ones in every copy changes nothing (tokens before the subject)
        same = torch.stack([(clean[Site(l, comp).name][0] == corrupted[Site(l, comp).name]).all(-1).all(0)
                            for l in range(L)]).cpu()  # [layers, tokens]
        grid = p_corr.mean().repeat(T, L).clone()
        patches, cells = [], []
        for t in range(T):
            for l in range(L):
                layers = [l] if kind == "resid" else list(window_layers(l, window, L))
                if all(bool(same[x, t]) for x in layers):
                    continue
                edits = [Overwrite(Site(x, comp), [t], None, clean[Site(x, comp).name][0, t:t + 1]) for x in layers]
                patches += [Patch(s, edits) for s in range(samples)]
                cells.append((t, l))
        values, _ = run_patches(model, ids.repeat(samples, 1), patches, p_answer, target_embeds=embeds,
                                memory_mb=memory_mb, progress=progress)
        if cells:
            per_cell = values.reshape(len(cells), samples).mean(1).cpu()
            t_idx = torch.tensor([c[0] for c in cells])
            l_idx = torch.tensor([c[1] for c in cells])
            grid[t_idx, l_idx] = per_cell.to(grid.dtype)
        scores[kind] = grid.float().cpu().numpy()
    return Trace(prompt, subject, answer, model.to_str_tokens(prompt), (span.start, span.stop), p_clean,
                 p_corr.mean().item(), scores,
                 {"noise_std": noise_std, "samples": samples, "window": window, "seed": seed, "kinds": kinds})


# -- sweeps over a facts dataset -----------------------------------------------------------------

TOKEN_GROUPS = ("first subject token", "middle subject tokens", "last subject token",
                "first subsequent token", "further tokens", "last token")


def token_groups(span: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """The paper's token groups (Fig. 2) for a subject at positions [start, end); groups may overlap or be empty."""
    start, end = span
    last = n_tokens - 1
    return {
        "first subject token": [start],
        "middle subject tokens": list(range(start + 1, end - 1)),
        "last subject token": [end - 1],
        "first subsequent token": [end] if end <= last else [],
        "further tokens": list(range(end + 1, last)),
        "last token": [last],
    }


def summarize(records: list[dict], kinds, n_layers: int) -> dict:
    """Average indirect effect per layer for each kind and token group, average total effect, counts."""
    traced = [r for r in records if "skipped" not in r]
    skipped: dict[str, int] = {}
    for r in records:
        if "skipped" in r:
            skipped[r["skipped"]] = skipped.get(r["skipped"], 0) + 1
    out = {"n_traced": len(traced), "n_skipped": sum(skipped.values()), "skipped": skipped,
           "average_total_effect": float(np.mean([r["p_clean"] - r["p_corrupted"] for r in traced])) if traced else None,
           "average_p_clean": float(np.mean([r["p_clean"] for r in traced])) if traced else None,
           "average_p_corrupted": float(np.mean([r["p_corrupted"] for r in traced])) if traced else None,
           "indirect_effect": {}}
    for kind in kinds:
        per_group = {}
        for group in TOKEN_GROUPS:
            rows = []
            for r in traced:
                tokens = token_groups(tuple(r["subject_span"]), len(r["tokens"]))[group]
                if tokens:
                    ie = np.asarray(r["scores"][kind]) - r["p_corrupted"]
                    rows.append(ie[tokens].mean(0))
            per_group[group] = {"n_facts": len(rows), "by_layer": np.mean(rows, 0).tolist() if rows else None}
        out["indirect_effect"][kind] = per_group
    return out


# Meng et al. 2022 (GPT-2 XL, 48 layers), Sec. 2.2 and Fig. 2: what `reproduction` is compared with.
PAPER_GPT2_XL = {"n_layers": 48, "resid_peak_layer": 15, "resid_peak": 0.087,
                 "mlp_at_last_subject": 0.066, "attn_at_last_subject": 0.016}


def reproduction(summary: dict) -> dict:
    """The paper's headline numbers read off a sweep summary (all three kinds needed).

    Where the single-state (resid) and MLP effects at the last subject token peak, the MLP versus the
    attention effect at the MLP peak, and attention versus MLP at the last token in the later half of
    the layers (mean over those layers).
    """
    ie = summary["indirect_effect"]
    missing = [k for k in ("resid", "mlp", "attn") if k not in ie]
    if missing:
        raise ValueError(f"summary: needs the kinds resid, mlp and attn; {missing} missing")
    by = {(k, g): np.asarray(ie[k][g]["by_layer"]) for k in ie for g in ("last subject token", "last token")}
    resid, mlp, attn = by["resid", "last subject token"], by["mlp", "last subject token"], by["attn", "last subject token"]
    n_layers = len(mlp)
    late = slice(n_layers // 2, None)
    l_mlp = int(mlp.argmax())
    return {"n_facts": summary["n_traced"], "n_layers": n_layers,
            "average_total_effect": summary["average_total_effect"],
            "resid_peak_layer": int(resid.argmax()), "resid_peak": float(resid.max()),
            "mlp_peak_layer": l_mlp, "mlp_at_last_subject": float(mlp[l_mlp]), "attn_at_last_subject": float(attn[l_mlp]),
            "attn_peak_at_last_subject": float(attn.max()), "attn_peak_layer_at_last_subject": int(attn.argmax()),
            "late_attn_at_last_token": float(by["attn", "last token"][late].mean()),
            "late_mlp_at_last_token": float(by["mlp", "last token"][late].mean()),
            "attn_peak_layer_at_last_token": int(by["attn", "last token"].argmax()),
            "attn_peak_at_last_token": float(by["attn", "last token"].max())}


def compare_with_paper(summary: dict):
    """`reproduction(summary)` next to the paper's GPT-2 XL numbers, as a DataFrame (rows: quantities)."""
    import pandas as pd

    r, p = reproduction(summary), PAPER_GPT2_XL
    rows = {
        "facts traced": (r["n_facts"], "1000 statements"),
        "single-state IE peak at last subject token": (f"{r['resid_peak']:.3f}", f"{p['resid_peak']:.3f}"),
        "  its layer (relative depth)": (f"{r['resid_peak_layer']} of {r['n_layers']} ({r['resid_peak_layer'] / r['n_layers']:.2f})",
                                         f"{p['resid_peak_layer']} of {p['n_layers']} ({p['resid_peak_layer'] / p['n_layers']:.2f})"),
        "MLP IE peak at last subject token (layer)": (f"{r['mlp_at_last_subject']:.3f} (layer {r['mlp_peak_layer']})",
                                                      f"{p['mlp_at_last_subject']:.3f}"),
        "attention IE at that layer": (f"{r['attn_at_last_subject']:.3f}", f"{p['attn_at_last_subject']:.3f}"),
        "MLP / attention there": (f"{r['mlp_at_last_subject'] / max(r['attn_at_last_subject'], 1e-9):.1f}x",
                                  f"{p['mlp_at_last_subject'] / p['attn_at_last_subject']:.1f}x"),
        "last token, later half: attention vs MLP IE": (f"{r['late_attn_at_last_token']:.3f} vs {r['late_mlp_at_last_token']:.3f}",
                                                        "attention dominates"),
    }
    return pd.DataFrame(rows, index=["this model", "GPT-2 XL (paper)"]).T


def _round_robin(facts: list[dict]) -> list[dict]:
    by_relation: dict[str, list[dict]] = {}
    for f in facts:
        by_relation.setdefault(f.get("relation", ""), []).append(f)
    queues = list(by_relation.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def _trace_item(model: Model, p: dict) -> dict:
    """One fact of a `trace_facts` sweep (an executor's item; runs on whichever worker holds a model)."""
    tr = trace_fact(model, p["prompt"], p["subject"], p["answer"], noise_std=p["noise_std"], samples=p["samples"],
                    window=p["window"], kinds=p["kinds"], seed=p["seed"])
    return {"id": p["id"], "relation": p["relation"], "known": p["known"], **tr.to_json()}


def trace_facts(model: Model, facts_path, out, *, limit: int | None = None, samples: int = 10,
                noise_scale: float = 3.0, window: int = 10, kinds=("resid", "mlp", "attn"), seed: int = 0,
                trace_unknown: bool = False, order: str = "file", figures: bool = True, run=None,
                force: bool = False, progress: bool = True, workers: int | None = None, ray_address: str | None = None,
                executor=None) -> dict:
    """Trace the facts of a JSONL file into the sweep folder `out`, resumably; returns the summary (also
    `out/summary.json`).

    Each fact's result is written atomically to `out/facts/<id>.json` as soon as it is done, so a
    killed sweep loses at most the facts in flight, and re-running the same command skips finished
    facts. The noise's standard deviation is `noise_scale` times that of the dataset's subject
    embeddings (the paper's 3). `limit` caps the number of facts traced (skipped facts do not count);
    with `order="relations"` the facts are taken round-robin over relations, so a limited sweep covers
    every relation instead of the file's first ones. An `out` holding results of another configuration
    is refused unless `force` (the order is not part of the configuration: a fact's result does not
    depend on it).

    `run=Run(workers=..., ray_address=..., executor=..., progress=..., force=...)` (`workbench.toolkit.Run`;
    the same settings are also accepted as keywords) runs the facts on Ray workers (a local cluster of
    `workers`, or the cluster at `ray_address`), or on an executor made beforehand; the results are the same
    as in-process, bit for bit on the CPU (every fact uses `seed`). The folder is keyed by the facts file's
    content (a sha256), not its name, and locked while the sweep runs (a second run on it is refused).
    """
    from ..toolkit.sweep import SweepFolder, content_hash
    from ..data.facts import answer_text, known_facts, load_facts
    from ..toolkit.executors import as_run

    run = as_run(run, force=force, progress=progress, workers=workers, ray_address=ray_address, executor=executor)

    facts = load_facts(facts_path)
    if order == "relations":
        facts = _round_robin(facts)
    elif order != "file":
        raise checks.fail('order', "'file' or 'relations'", order)
    kinds = check_kinds(kinds)
    checks.integer(limit, "limit", none_ok=True)
    checks.number(noise_scale, "noise_scale", minimum=0)
    config = {"model": model.name, "fingerprint": model.fingerprint, "facts_sha256": content_hash(_facts_file(facts_path)),
              "samples": samples, "noise_scale": noise_scale, "window": window, "kinds": kinds, "seed": seed,
              "trace_unknown": trace_unknown}
    sweep = SweepFolder(out, config, items="facts", force=run.force)
    with run.executor_for(model) as ex, sweep.start():
        subjects = [f["subject"] for f in facts if f["subject"] in f["prompt"]]
        nu = noise_scale * embedding_noise_std(model, subjects)
        # plan on the driver: which facts are done, skipped (written at once) or to trace (the items)
        plan, todo, n_traced, known = [], [], 0, {}
        for i, fact in enumerate(facts):
            if limit is not None and n_traced >= limit:
                break
            plan.append(fact["id"])
            if sweep.done(fact["id"]):
                n_traced += "skipped" not in sweep.load(fact["id"])
                continue
            if i not in known:  # which facts the model knows, 64 at a time: a short sweep checks few
                known.update(enumerate(known_facts(model, facts[i:i + 64]), start=i))
            reason = ("subject not found" if fact["subject"] not in fact["prompt"] else
                      "not known" if not known[i] and not trace_unknown else None)
            if reason:
                sweep.save(fact["id"], {"id": fact["id"], "skipped": reason})
                continue
            todo.append((fact["id"], {"id": fact["id"], "relation": fact.get("relation"), "known": known[i],
                                      "prompt": fact["prompt"], "subject": fact["subject"], "answer": answer_text(fact),
                                      "noise_std": nu, "samples": samples, "window": window, "kinds": kinds,
                                      "seed": seed}))
            n_traced += 1

        def plot(item_id, record):
            if figures:
                Trace.from_json(record).plot(sweep.path / "figures" / f"fact_{item_id}.png")

        sweep.run(todo, _trace_item, model, ex, done=n_traced - len(todo), progress=run.progress,
                  desc="tracing facts", unit="fact", on_record=plot)
        records = [sweep.load(i) for i in plan]
        summary = {"config": config, "noise_std": nu, **summarize(records, kinds, model.dims.n_layers)}
        sweep.write_json("summary.json", summary)
        if figures and summary["n_traced"]:
            from ..views.figures import average_effect_figures

            average_effect_figures(summary, sweep.path)
    # traced by this call and by earlier runs of the folder (not written to summary.json: it describes the results)
    summary["this_run"] = {"now": sweep.counts["now"], "before": n_traced - len(todo)}
    return summary


def _facts_file(facts_path) -> Path:
    from ..data import resolve

    return resolve(facts_path)


def load_traces(out) -> list[Trace]:
    """The traced facts of a `trace_facts` folder (skipped ones left out), ordered by id."""
    import json

    records = [json.loads(p.read_text()) for p in sorted(Path(out, "facts").glob("*.json"))]
    traced = sorted((r for r in records if "scores" in r), key=lambda r: (str(type(r["id"])), r["id"]))
    return [Trace.from_json(r) for r in traced]
