"""Concept ablation fine-tuning (CAFT; Casademunt et al. 2025, "Steering Out-of-Distribution
Generalization with Concept Ablation Fine-Tuning").

Fine-tune while the concept subspace is projected out of the residual stream at chosen layers,

    h_l  <-  h_l - (h_l B_l^T) B_l           (zero ablation; B_l: [k, d_model], orthonormal rows)
    h_l  <-  h_l - ((h_l - mu_l) B_l^T) B_l  (mean ablation; mu_l: the mean activation)

so the model cannot learn to use those directions; the projection is out of place, so gradients flow
through the ablated stream to every layer below. At evaluation the hooks are gone (unless asked for:
test-time-only ablation is a baseline).

Concept directions come from (a) CAFT's PCA of the activation differences between the fine-tuned and
the base model on the same tokens, chosen by inspecting each component's top-activating tokens;
(b) linear-probe directions; (c) differences of class means (`probes`). `subspaces` turns several
directions per layer into one orthonormal basis per layer.

Task files (JSONL, one example a line): {"split": "train" | "id_test" | "ood_test", "prompt": str,
"answer": str, "choices": [str, str, ...]}; answers and choices are single tokens. An optional split
"concept" holds examples for finding directions. Extra keys (the example's features) are kept.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.interventions import ProjectOut, orthonormalize
from ..core.model import Model
from ..data import resolve
from ..toolkit.records import read_records
from . import store
from .activations import read_activations
from ..core.sites import Site, check_residual_component
from ..core import checks

SPLITS = ("train", "id_test", "ood_test")
OPTIONAL_SPLITS = ("concept",)  # examples with all feature combinations, for finding directions
CONDITIONS = ("plain", "caft", "random", "test_time")


# -- task files ------------------------------------------------------------------------------------

def load_task(path: str | Path) -> dict[str, list[dict]]:
    """Read a task JSONL file -> {split: [example, ...]}; a malformed line is an error naming its line number."""
    task: dict[str, list[dict]] = {s: [] for s in SPLITS + OPTIONAL_SPLITS}
    for n, ex in read_records(resolve(path), "task", {"split": str, "prompt": str, "answer": str, "choices": list}):
        if ex["split"] not in task:
            raise ValueError(f"task: {path}:{n}: split {ex['split']!r}; expected one of {list(task)}")
        if not ex["prompt"]:
            raise ValueError(f"task: {path}:{n}: empty prompt")
        if len(ex["choices"]) < 2 or not all(isinstance(c, str) and c for c in ex["choices"]):
            raise ValueError(f"task: {path}:{n}: choices must be at least two non-empty strings")
        if len(set(ex["choices"])) != len(ex["choices"]):
            raise ValueError(f"task: {path}:{n}: choices {ex['choices']} repeat a choice; expected distinct choices "
                             "(a repeated one makes the accuracy meaningless)")
        if ex["answer"] not in ex["choices"]:
            raise ValueError(f"task: {path}:{n}: answer {ex['answer']!r} is not among choices {ex['choices']}")
        task[ex["split"]].append(ex)
    for s in SPLITS:
        if not task[s]:
            raise ValueError(f"task: {path} has no examples in split {s!r}")
    return task


def _answer_ids(model: Model, examples: list[dict]) -> tuple[Tensor, Tensor]:
    """(answer token ids [n], choice token ids [n, n_choices]); every answer and choice must be one token."""
    answers = [model.to_single_token(ex["answer"], "answer") for ex in examples]
    choices = [[model.to_single_token(c, "choices") for c in ex["choices"]] for ex in examples]
    if len({len(c) for c in choices}) != 1:
        raise ValueError("choices: every example needs the same number of choices")
    return torch.tensor(answers), torch.tensor(choices)


# -- concept subspaces -----------------------------------------------------------------------------

def subspaces(directions: dict[int, Tensor | list[Tensor]], d_model: int, *, tol: float = 1e-4) -> dict[int, Tensor]:
    """{layer: directions [k, d] (or a list of [d] / [k_i, d])} -> {layer: orthonormal basis [k', d]}.

    Several directions (PCA components, probe directions, differences of means) become one subspace
    per layer. A set that is not already orthonormal is orthonormalised (Gram-Schmidt via QR, dropping
    dependent directions), with a warning that says so.
    """
    if not isinstance(directions, dict) or not directions:
        raise checks.fail("directions", "a non-empty dict {layer: tensor [k, d_model]}", directions)
    out = {}
    for layer, dirs in directions.items():
        if isinstance(dirs, (list, tuple)):
            dirs = torch.cat([torch.as_tensor(x).reshape(-1, torch.as_tensor(x).shape[-1]) for x in dirs])
        if not isinstance(dirs, Tensor) or not dirs.is_floating_point():
            raise ValueError(f"directions: layer {layer}: expected a float tensor [k, {d_model}]")
        dirs = dirs.reshape(-1, dirs.shape[-1]).float().cpu()
        if dirs.shape[-1] != d_model:
            raise ValueError(f"directions: layer {layer}: width {dirs.shape[-1]}, expected d_model = {d_model}")
        if not torch.isfinite(dirs).all() or (dirs.norm(dim=-1) == 0).any():
            raise ValueError(f"directions: layer {layer}: directions must be finite and non-zero")
        gram = dirs.double() @ dirs.double().T
        if not torch.allclose(gram, torch.eye(len(dirs), dtype=torch.float64), atol=tol):
            basis = orthonormalize(dirs)
            warnings.warn(f"directions: layer {layer}: the {len(dirs)} directions were not orthonormal; "
                          f"orthonormalised them into a basis of {len(basis)}", stacklevel=2)
            dirs = basis
        out[int(layer)] = dirs
    return out


def random_subspaces(like: dict[int, Tensor], seed: int = 0) -> dict[int, Tensor]:
    """As many random orthonormal directions per layer as `like` has (the CAFT paper's control)."""
    gen = torch.Generator().manual_seed(seed)
    return {l: orthonormalize(torch.randn(b.shape, generator=gen)) for l, b in like.items()}


def save_subspaces(path: str | Path, subs: dict[int, Tensor], meta: dict | None = None) -> Path:
    """Write {layer: basis [k, d]} in the one direction file format (`workbench.directions.store`)."""
    return store.save_directions(path, {l: b.float() for l, b in subs.items()}, {"kind": "subspace", **(meta or {})})


def ablations(subs: dict[int, Tensor], *, component: str = "resid_pre", fill: str = "zero",
              means: dict[int, Tensor] | None = None, skip_first: int = 0) -> list[ProjectOut]:
    """ProjectOut interventions at `blocks.{l}.hook_{component}` for every layer of `subs`, at every position
    from `skip_first` on (right-padded batches, as `finetune` and `accuracy` use: position 0 is each prompt's
    first token). skip_first=1 leaves the first token alone: on Gemma 3 that is <bos>, an attention sink whose
    residual is about 7x the median norm (projecting one random direction out at layer 4 moves the base model's
    answer logit difference by up to 2.8 with it, 0.76 without)."""
    if fill not in ("zero", "mean"):
        raise checks.fail('fill', "'zero' or 'mean'", fill)
    checks.integer(skip_first, "skip_first", minimum=0)
    if fill == "mean" and (means is None or any(l not in means for l in subs)):
        raise ValueError("means: fill='mean' needs a mean activation [d_model] for every ablated layer")
    check_residual_component(component)
    return [ProjectOut(Site(l, component).name, basis=b, fill=fill, mean=None if fill == "zero" else means[l],
                       positions=slice(skip_first, None) if skip_first else None) for l, b in sorted(subs.items())]


def mean_activations(model: Model, prompts: list[str], layers: list[int], component: str = "resid_pre",
                     batch_size: int = 32) -> dict[int, Tensor]:
    """Mean activation [d_model] over every real token of `prompts` at each layer (mean-ablation fill)."""
    acts = read_activations(model, prompts, layers, component=component, read_at="all", batch_size=batch_size)
    return {l: a.double().mean(0).float() for l, a in acts.items()}


# -- fine-tuning with and without ablation ---------------------------------------------------------

@dataclass
class FinetuneConfig:
    """How to fine-tune. `method`: "lora" (peft, on every linear layer of the blocks) or "full"."""

    method: str = "lora"
    steps: int = 40
    lr: float = 1e-3
    batch_size: int = 16
    lora_rank: int = 8
    lora_alpha: float = 16.0
    weight_decay: float = 0.0

    def check(self) -> None:
        if self.method not in ("lora", "full"):
            raise checks.fail('method', "'lora' or 'full'", self.method)
        for name in ("steps", "batch_size", "lora_rank"):
            checks.integer(getattr(self, name), name)
        checks.learning_rate(self.lr)


def _last_logits(model: Model, prompts: list[str]) -> Tensor:
    """Logits at each prompt's last real token, [batch, d_vocab] (only those positions are unembedded)."""
    ids, mask = model.encode(prompts)
    last = model.last_positions(ids, mask)
    keep, col = torch.unique(last, return_inverse=True)
    logits = model.hf(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    return logits[torch.arange(len(prompts), device=logits.device), col.to(logits.device)]


def finetune(model: Model, examples: list[dict], *, ablate: list[ProjectOut] | None = None,
             config: FinetuneConfig | None = None, seed: int = 0) -> Model:
    """A fine-tuned copy of `model` (the original is untouched): cross-entropy of the answer token at
    the last position, AdamW, batches drawn without replacement from `examples` each epoch.

    With `ablate` (ProjectOut interventions, see `ablations`) the hooks are active in every training
    forward, so the loss and its gradients see only the ablated stream (CAFT); the returned model
    carries no hooks. LoRA adapters are merged into the copy's weights at the end, so the returned
    model has the original module structure and every site works on it as before.
    """
    cfg = config or FinetuneConfig()
    cfg.check()
    if not isinstance(examples, (list, tuple)) or not examples or not all(isinstance(e, dict) for e in examples):
        raise checks.fail("examples", "a non-empty list of example dicts (prompt, answer, choices)", examples)
    answers, _ = _answer_ids(model, examples)
    prompts = [ex["prompt"] for ex in examples]
    torch.manual_seed(seed)  # LoRA initialisation draws from the global generator
    hf = copy.deepcopy(model.hf)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        # "all-linear": every linear layer of the blocks (not the unembedding). peft swaps them for
        # wrappers in place, so `model.module(...)` still finds the hooked modules (see tests).
        with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(hf, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                       target_modules="all-linear"))
        params = [p for p in peft_model.parameters() if p.requires_grad]
    else:
        peft_model = None
        params = [p for p in hf.parameters()]
        for p in params:
            p.requires_grad_(True)
    ft = Model(hf, model.tokenizer, name=f"{model.name}+ft")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    ablate = list(ablate or [])
    losses = []
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch, order = order[:cfg.batch_size], order[cfg.batch_size:]
        with ft.hooks(ablate):  # the one hook layer; removed before the next step, and at the end
            logits = _last_logits(ft, [prompts[i] for i in batch])
        loss = torch.nn.functional.cross_entropy(logits, answers[batch].to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if peft_model is not None:
        hf = peft_model.merge_and_unload()
    for p in hf.parameters():
        p.requires_grad_(False)
    out = Model(hf.eval(), model.tokenizer, name=f"{model.name}+ft")
    out.train_losses = losses  # one per step, for inspection
    return out


@torch.no_grad()
def predict(model: Model, examples: list[dict], *, ablate: list[ProjectOut] | None = None,
            batch_size: int = 64) -> Tensor:
    """Index of the highest-logit choice per example, [n] (with `ablate` hooks active if given)."""
    _, choices = _answer_ids(model, examples)
    out = []
    for i in range(0, len(examples), batch_size):
        with model.hooks(ablate or []):
            logits = _last_logits(model, [ex["prompt"] for ex in examples[i:i + batch_size]])
        c = choices[i:i + batch_size].to(logits.device)
        out.append(logits.gather(1, c).argmax(1).cpu())
    return torch.cat(out)


def accuracy(model: Model, examples: list[dict], *, ablate: list[ProjectOut] | None = None,
             batch_size: int = 64) -> float:
    """Fraction of examples whose answer is the highest-logit choice."""
    pred = predict(model, examples, ablate=ablate, batch_size=batch_size)
    gold = torch.tensor([ex["choices"].index(ex["answer"]) for ex in examples])
    return float((pred == gold).float().mean())


# -- CAFT's concept directions: PCA of fine-tuned minus base activations ---------------------------

@dataclass
class ConceptPCA:
    """Principal components of (fine-tuned - base) activation differences per layer.

    `components[layer]`: [k, d] (unit rows); `explained[layer]`: [k] fraction of variance;
    `top[layer][i]`: the tokens whose base-model activations project most positively ("+") and
    most negatively ("-") on component i, as (projection, prompt index, position, token, context).
    """

    layers: list[int]
    components: dict[int, Tensor]
    explained: dict[int, np.ndarray]
    top: dict[int, list[dict]]
    component: str = "resid_pre"

    def directions(self, choice: dict[int, list[int]]) -> dict[int, Tensor]:
        """The components the user chose, {layer: [component indices]} -> {layer: [k, d]}."""
        out = {}
        for l, idx in choice.items():
            if l not in self.components:
                raise ValueError(f"choice: no components at layer {l}; have {self.layers}")
            bad = [i for i in idx if not 0 <= i < len(self.components[l])]
            if bad or not idx:
                raise ValueError(f"choice: layer {l}: component indices {idx}; expected some of 0..{len(self.components[l]) - 1}")
            out[l] = self.components[l][list(idx)]
        return out

    def describe(self, layer: int, n: int = 6) -> str:
        """A readable table of each component's top-activating tokens at `layer`, to choose from."""
        lines = [f"layer {layer} ({self.component}):"]
        def distinct(entries):  # the same token often fills the whole list; show n different ones
            return ", ".join(repr(t) for t in list(dict.fromkeys(e["token"] for e in entries))[:n])

        for i, t in enumerate(self.top[layer]):
            pos, neg = distinct(t["+"]), distinct(t["-"])
            lines.append(f"  PC{i} ({100 * self.explained[layer][i]:.1f}% var)  + {pos}\n{'':>20}- {neg}")
        return "\n".join(lines)


@torch.no_grad()
def pca_directions(base: Model, finetuned: Model, prompts: list[str], layers: list[int], *, n_components: int = 5,
                   component: str = "resid_pre", top_k: int = 50, batch_size: int = 32,
                   skip_first: bool = True, massive: float = 10.0) -> ConceptPCA:
    """CAFT's directions: PCA over every real token of `prompts` of  delta = h_ft - h_base  per layer
    (the same tokens through both models); components ordered by explained variance.

    `skip_first` leaves out position 0, and tokens whose activation norm (in either model) exceeds
    `massive` times the layer's median are left out too: attention sinks carry "massive activations" (on SmolLM2 the
    first token, and a name after "Mr", at norms ~25000 vs ~150 from layer 14 on), whose differences
    would take nearly all the variance. Each component's sign is fixed so that the mean difference projects positively on it (the
    direction fine-tuning moved the activations in). Top-activating tokens are read from the base
    model's activations (centred), so the component can be interpreted as a concept of the model
    before fine-tuning.
    """
    if base.dims != finetuned.dims:
        raise ValueError("finetuned: must have the same architecture and sizes as base")
    kw = dict(component=component, read_at="all", batch_size=batch_size)
    acts_base, acts_ft = read_activations(base, prompts, layers, **kw), read_activations(finetuned, prompts, layers, **kw)
    ids_all = [base.to_str_tokens(p) for p in prompts]
    where = [(i, p) for i, toks in enumerate(ids_all) for p in range(len(toks))]  # (prompt, position) of each row
    rows = torch.tensor([p > 0 or not skip_first for _, p in where])
    where = [w for w, keep in zip(where, rows.tolist()) if keep]
    deltas = {l: (acts_ft[l] - acts_base[l])[rows].double() for l in layers}
    bases = {l: acts_base[l][rows].double() for l in layers}
    comps, explained, top = {}, {}, {}
    for l in layers:
        hb, delta = bases[l], deltas[l]
        keep = torch.ones(len(hb), dtype=torch.bool)
        for h in (hb, hb + delta):  # massive in the base or in the fine-tuned model
            norms = h.norm(dim=-1)
            keep &= norms <= massive * norms.median()
        hb, delta, kept = hb[keep], delta[keep], keep.nonzero()[:, 0].tolist()
        centred = delta - delta.mean(0)
        _, sv, vt = torch.linalg.svd(centred, full_matrices=False)  # PCA: rows of V^T are the components
        k = min(n_components, len(sv))
        v = vt[:k]
        v = v * torch.sign(delta.mean(0) @ v.T + 1e-30)[:, None]  # point along the fine-tuning shift
        comps[l] = v.float()
        explained[l] = (sv[:k] ** 2 / (sv ** 2).sum()).numpy()
        proj = (hb - hb.mean(0)) @ v.T  # [tokens, k]
        top[l] = []
        for c in range(k):
            entry = {}
            for sign, order in (("+", proj[:, c].argsort(descending=True)), ("-", proj[:, c].argsort())):
                entry[sign] = []
                for t in order[:top_k].tolist():
                    pi, pos = where[kept[t]]
                    toks = ids_all[pi]
                    entry[sign].append({"projection": float(proj[t, c]), "prompt": pi, "position": pos,
                                        "token": toks[pos], "context": "".join(toks[max(0, pos - 4):pos + 1])})
            top[l].append(entry)
    return ConceptPCA(list(layers), comps, explained, top, component)


# -- the comparison: plain fine-tuning, CAFT, random directions, test-time ablation ----------------

def compare(model: Model, task: dict[str, list[dict]], subs: dict[int, Tensor], *, seeds=(0, 1, 2),
            fill: str = "zero", component: str = "resid_pre", config: FinetuneConfig | None = None,
            skip_first: int = 0, progress: bool = False, out=None, run=None, force: bool = False, workers: int | None = None,
            ray_address: str | None = None, executor=None) -> dict:
    """The CAFT paper's comparison on in-distribution and out-of-distribution test sets, per seed:

    plain      fine-tune without ablation
    caft       fine-tune with `subs` projected out (hooks gone at evaluation)
    random     fine-tune with as many random orthonormal directions per layer projected out
    test_time  the plain model, evaluated with `subs` projected out

    Each seed is an item of the one sweep driver: `out` (a folder) makes the comparison resumable (one file per
    finished seed under `out/seeds/`, a folder of another configuration refused unless `force`, locked while it
    runs); `run=Run(workers=...)` (`workbench.distributed.Run`; also as keywords) runs the seeds on Ray workers
    with the same numbers as in-process (each seed's fine-tuning is seeded by the seed alone). `skip_first`:
    every ablation leaves the first positions alone (see `ablations`).

    Returns {condition: {"id_acc": [...], "ood_acc": [...]}, "seeds": [...], "base": {...}, "config": {...}}.
    """
    from ..toolkit.sweep import SweepFolder, content_digest
    from ..toolkit.executors import as_run

    run = as_run(run, force=force, progress=progress, workers=workers, ray_address=ray_address, executor=executor)
    cfg = config or FinetuneConfig()
    cfg.check()
    if not isinstance(seeds, (list, tuple, range)) or not seeds or not all(checks.is_int(x) for x in seeds):
        raise checks.fail("seeds", "a non-empty list of ints", seeds)
    if len(set(seeds)) != len(seeds):
        raise checks.fail('seeds', 'distinct seeds', list(seeds))
    if fill not in ("zero", "mean"):
        raise checks.fail('fill', "'zero' or 'mean'", fill)
    if not isinstance(task, dict):
        raise checks.fail('task', '{split: [example, ...]} (see load_task)', type(task).__name__)
    for s in SPLITS:
        if not task.get(s):
            raise ValueError(f"task: no examples in split {s!r}")
    means = mean_activations(model, [ex["prompt"] for ex in task["train"]], sorted(subs), component) \
        if fill == "mean" else None
    concept = ablations(subs, component=component, fill=fill, means=means, skip_first=skip_first)
    config = {**cfg.__dict__, "fill": fill, "component": component, "layers": sorted(subs),
              "k": {str(l): len(b) for l, b in sorted(subs.items())}, **({"skip_first": skip_first} if skip_first else {})}
    items = [(seed, {"task": task, "config": cfg, "seed": seed, "concept": concept,
                     "random": ablations(random_subspaces(subs, seed=1000 + seed), component=component, fill=fill,
                                         means=means, skip_first=skip_first)}) for seed in seeds]
    sweep = None if out is None else SweepFolder(
        out, {"what": "caft comparison", "model": model.name, "fingerprint": model.fingerprint, **config,
              "task_sha256": content_digest(task), "subspaces_sha256": content_digest(subs)},
        items="seeds", force=run.force)
    per_seed = run.records(model, items, _caft_seed, sweep, desc="fine-tuning", unit="seed")
    res: dict = {c: {"id_acc": [], "ood_acc": []} for c in CONDITIONS}
    for seed in seeds:
        for c in CONDITIONS:
            for k in ("id_acc", "ood_acc"):
                res[c][k].append(per_seed[seed][c][k])
    res["base"] = {"id_acc": accuracy(model, task["id_test"]), "ood_acc": accuracy(model, task["ood_test"])}
    res["seeds"] = list(seeds)
    res["config"] = config
    return res


def _caft_seed(model: Model, p: dict) -> dict:
    """One seed of `compare` (an executor's item): plain, CAFT and random-direction fine-tuning, and test-time
    ablation of the plain model; {condition: {"id_acc", "ood_acc"}}."""
    task, cfg, seed = p["task"], p["config"], p["seed"]

    def acc(m, ablate=None):
        return {"id_acc": accuracy(m, task["id_test"], ablate=ablate), "ood_acc": accuracy(m, task["ood_test"], ablate=ablate)}

    plain = finetune(model, task["train"], config=cfg, seed=seed)
    rec = {"plain": acc(plain), "test_time": acc(plain, p["concept"])}
    del plain
    rec["caft"] = acc(finetune(model, task["train"], ablate=p["concept"], config=cfg, seed=seed))
    rec["random"] = acc(finetune(model, task["train"], ablate=p["random"], config=cfg, seed=seed))
    return rec


def summarize(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """{condition: {"id_acc": (mean, std), "ood_acc": (mean, std)}} over seeds."""
    return {c: {k: (float(np.mean(results[c][k])), float(np.std(results[c][k]))) for k in ("id_acc", "ood_acc")}
            for c in CONDITIONS if c in results}


def plot_comparison(results: dict, path: str | Path | None = None, title: str | None = None):
    """Bar plot: in-distribution and out-of-distribution accuracy per condition (and any extra variant in
    `results` with `id_acc` / `ood_acc`), mean +- std over seeds, seeds as dots. Returns the Axes."""
    import matplotlib.pyplot as plt

    from ..views.figures import save_figure

    conds = [c for c in CONDITIONS if c in results]
    conds += [c for c, v in results.items()  # variants (per-seed lists), not the base model's single numbers
              if c not in conds and isinstance(v, dict) and isinstance(v.get("ood_acc"), list)]
    names = {"plain": "plain FT", "caft": "CAFT", "random": "random dirs", "test_time": "test-time abl."}
    fig, ax = plt.subplots(figsize=(1.3 * len(conds) + 1.2, 3.4))
    x = np.arange(len(conds))
    for j, (key, color) in enumerate((("id_acc", "tab:blue"), ("ood_acc", "tab:orange"))):
        vals = [np.asarray(results[c][key]) for c in conds]
        ax.bar(x + (j - 0.5) * 0.38, [v.mean() for v in vals], 0.36, yerr=[v.std() for v in vals], capsize=3,
               color=color, label="in-distribution" if key == "id_acc" else "out-of-distribution")
        for i, v in enumerate(vals):
            ax.scatter(np.full(len(v), x[i] + (j - 0.5) * 0.38), v, s=8, color="k", zorder=3)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks(x, [names.get(c, c.replace("_", " ")) for c in conds])
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"CAFT vs plain fine-tuning ({len(results.get('seeds', []))} seeds)")
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    save_figure(fig, path, dpi=120)
    return ax
