"""Training an SAE on our activations, offline, with SAELens's own trainer.

Corpus (`default_corpus`, no download): text the model itself samples (`toolkit.corpora.corpus_tokens`:
top-k 50, temperature 1, seeded, 128-token sequences, cached), the docstrings of Python's standard library
(English prose shipped with every Python), and the prompts of our own data files (facts, CounterFact,
steering). The mixture decides what the latents learn and where the SAE is good: numbers measured on
held-out text of the same mixture say nothing about, e.g., code or chat.

Activations come from the one reader (`read_activations(..., read_at="all")`), chunk by chunk, kept on disk
under <out>/activations (safetensors, keyed by model fingerprint and texts), so a restarted run does not
run the model again. Training is SAELens's `SAETrainer` (a top-k `TopKTrainingSAE`, with its AuxK loss
for dead latents) fed an iterator of activation batches, its data-provider interface. We drive its
public `step()` seam ourselves instead of `fit()` because `fit()`'s checkpoints pickle the optimizer state
(`torch.save`), which this project never loads: ours are safetensors + JSON, atomic, in a `SweepFolder`,
and a killed run resumes from the last one.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from ..core.io import read_json, read_safetensors, save_safetensors
from ..core.sites import parse_site
from ..toolkit.sweep import SweepFolder
from .format import bind_metadata, save_sae, site_width
from ..core import checks
from ..core.io import write_json

STDLIB_MODULES = ["argparse", "collections", "json", "os", "pathlib", "re", "string", "textwrap", "itertools",
                  "functools", "datetime", "random", "statistics", "math", "decimal", "fractions", "csv", "logging",
                  "unittest", "threading", "subprocess", "shutil", "tempfile", "email.message", "http.client",
                  "urllib.parse", "html.parser", "xml.etree.ElementTree", "sqlite3", "zipfile", "tarfile",
                  "calendar", "heapq", "bisect", "contextlib", "dataclasses", "enum", "typing", "inspect", "ast",
                  "difflib", "pprint", "locale", "gettext", "socket", "selectors", "asyncio.tasks", "queue",
                  "configparser", "hashlib", "base64", "struct", "codecs", "io", "glob", "fnmatch", "pickle",
                  "copy", "weakref", "abc", "numbers", "operator", "timeit", "trace", "pdb", "doctest"]


def _paragraphs(text: str, max_chars: int) -> list[str]:
    """Blank-line separated paragraphs, joined up to `max_chars` (prose pieces of similar length)."""
    out, cur = [], ""
    for para in (" ".join(p.split()) for p in text.split("\n\n")):
        if len(para) < 40:
            continue
        if cur and len(cur) + len(para) > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur} {para}".strip()[: 2 * max_chars]
    return out + ([cur] if cur else [])


def stdlib_docs(modules: Sequence[str] = STDLIB_MODULES, max_chars: int = 500) -> list[str]:
    """Docstring prose of standard-library modules and their public members, in a fixed order."""
    import importlib

    texts = []
    for name in modules:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
        texts += _paragraphs("\n\n".join(docs), max_chars)
    return texts


def data_file_texts() -> list[str]:
    """Prompts and sentences from our shipped data files (facts and their paraphrases, CounterFact, steering)."""
    from ..data import data_path
    from ..toolkit.records import read_records

    texts = []
    for _, r in read_records(data_path("facts.jsonl"), "facts", {"prompt": str, "object": str}):
        texts.append(f"{r['prompt']} {r['object']}.")
        texts += r.get("paraphrases", [])
    for _, r in read_records(data_path("counterfact.jsonl"), "requests", {"prompt": str}):
        texts.append(r["prompt"])
    for name in ("steering/prompts.txt", "steering/neutral.txt"):
        texts += [l for l in data_path(name).read_text().splitlines() if l.strip() and not l.startswith("#")]
    # short prompts are joined in fours, so a text has some context
    return [" ".join(texts[i:i + 4]) for i in range(0, len(texts), 4)]


def sampled_texts(model, n_seqs: int, *, seed: int = 0, seq_len: int = 128, progress: bool = True) -> list[str]:
    """`n_seqs` sequences the model samples itself (cached token ids; see toolkit.corpora.corpus_tokens)."""
    from ..toolkit.corpora import corpus_tokens

    ids = corpus_tokens(model, "samples", n_seqs * seq_len, seed=seed, seq_len=seq_len, progress=progress)
    return [model.tokenizer.decode(row, skip_special_tokens=True) for row in ids.tolist()]


def default_corpus(model, n_samples: int = 96, *, seed: int = 0, progress: bool = True) -> dict[str, list[str]]:
    """{"samples", "stdlib", "data"}: the three parts of the training corpus (see the module docstring)."""
    return {"samples": sampled_texts(model, n_samples, seed=seed, progress=progress),
            "stdlib": stdlib_docs(), "data": data_file_texts()}


def split_corpus(corpus: dict[str, list[str]], held_out: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) texts: a seeded `held_out` share of every part, interleaved in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for name in sorted(corpus):
        texts = [t for t in corpus[name] if t.strip()]
        perm = torch.randperm(len(texts), generator=g).tolist()
        n_test = max(1, int(round(held_out * len(texts))))
        test += [texts[i] for i in perm[:n_test]]
        train += [texts[i] for i in perm[n_test:]]
    order = torch.randperm(len(train), generator=g).tolist()
    return [train[i] for i in order], test


# -- activations ---------------------------------------------------------------------------------------

def site_activations(model, texts: Sequence[str], site, *, skip_first: int = 1, chunk: int = 64, batch_size: int = 16,
                     cache: str | Path | bool = False, progress: bool = True) -> torch.Tensor:
    """Activations [n_tokens, d_in] at `site` for every real token of `texts` but each text's first `skip_first`
    (the first position's residual norm is tens of times the others' in many models: an attention sink that
    would dominate the squared error). Read chunk by chunk through `read_activations`, cached on disk if asked."""
    from tqdm.auto import tqdm

    from ..directions import read_activations

    site = parse_site(site, model.dims.n_layers)
    parts = []
    for start in tqdm(range(0, len(texts), chunk), disable=not progress, desc=f"activations at {site.name}", unit="chunk"):
        piece = list(texts[start:start + chunk])
        acts = read_activations(model, piece, [site.layer], component=site.component, read_at="all",
                                batch_size=batch_size, cache=cache)[site.layer]
        acts = acts.flatten(1) if acts.ndim == 3 else acts
        lengths = [len(ids) for ids in model.tokenizer(piece).input_ids]
        keep = torch.cat([torch.arange(n) >= skip_first for n in lengths])
        parts.append(acts[keep])
    return torch.cat(parts)


class _NoLogits(torch.nn.Module):
    """Stands in for the unembedding of a reader model: keeps its weight (the model's dims) but computes no logits."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x[..., :1]


def reader_model(model, site):
    """A copy of `model` that runs only blocks 0..site.layer and computes no logits: the same activations at `site`
    (every block before it is unchanged; nothing after it can affect it), at a fraction of the cost of a full
    forward. Used only to read training activations; runs through the same hooks and reader."""
    import copy

    from ..core.arch import get_module
    from ..core.model import Model

    site = parse_site(site, model.dims.n_layers)
    hf = copy.deepcopy(model.hf)
    del get_module(hf, model.arch.blocks)[site.layer + 1:]
    parent, _, leaf = model.arch.unembed.rpartition(".")
    setattr(get_module(hf, parent) if parent else hf, leaf, _NoLogits(get_module(hf, model.arch.unembed).weight))
    return Model(hf, model.tokenizer, name=f"{model.name} (blocks 0..{site.layer})")


def _batches(acts: torch.Tensor, batch_size: int, seed: int, start_step: int):
    """An endless iterator of batches [batch_size, d_in]: one seeded permutation per epoch, resumable at a step."""
    per_epoch = len(acts) // batch_size
    step = start_step
    while True:
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        while i < per_epoch:
            yield acts[perm[i * batch_size:(i + 1) * batch_size]]
            i += 1
            step += 1


# -- checkpoints -----------------------------------------------------------------------------------------

def _save_checkpoint(folder: SweepFolder, trainer, step: int) -> None:
    """Training SAE weights, Adam's moments, the trainer's firing counts (safetensors) and counters (JSON)."""
    tensors = {f"sae.{k}": v for k, v in trainer.sae.state_dict().items()}
    opt = trainer.optimizer.state_dict()
    for i, st in opt["state"].items():
        tensors[f"adam.{i}.exp_avg"] = st["exp_avg"]
        tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"]
        tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    tensors["act_freq_scores"] = trainer.act_freq_scores
    tensors["n_forward_passes_since_fired"] = trainer.n_forward_passes_since_fired
    ck = folder.path / folder.items_dir
    save_safetensors(ck / "state.safetensors", tensors, {"step": str(step)})
    state = {"step": step, "n_training_samples": trainer.n_training_samples,
             "n_frac_active_samples": trainer.n_frac_active_samples,
             "lr_scheduler": trainer.lr_scheduler.state_dict().get("last_epoch"),
             "coefficient_schedulers": {k: s.state_dict() for k, s in trainer.coefficient_schedulers.items()},
             "scaling_factor": trainer.activation_scaler.scaling_factor}
    write_json(ck / "state.json", state)


def _load_checkpoint(folder: SweepFolder, trainer) -> int:
    """Restore the last checkpoint into `trainer`; the step to continue from (0 without one)."""
    ck = folder.path / folder.items_dir
    if not (ck / "state.json").is_file() or not (ck / "state.safetensors").is_file():
        return 0
    state = read_json(ck / "state.json", "out")
    tensors, meta = read_safetensors(ck / "state.safetensors", "out")
    if not isinstance(state, dict) or meta.get("step") != str(state.get("step")):
        raise ValueError(f"out: checkpoint files in {ck} are from different steps; delete the folder or use force")
    trainer.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    opt = trainer.optimizer.state_dict()
    for i in list(opt["state"]) or range(len(opt["param_groups"][0]["params"])):
        if f"adam.{i}.exp_avg" in tensors:
            opt["state"][i] = {"step": tensors[f"adam.{i}.step"].reshape(()).float(), "exp_avg": tensors[f"adam.{i}.exp_avg"],
                               "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"]}
    trainer.optimizer.load_state_dict(opt)
    trainer.act_freq_scores = tensors["act_freq_scores"]
    trainer.n_forward_passes_since_fired = tensors["n_forward_passes_since_fired"]
    trainer.n_training_samples = state["n_training_samples"]
    trainer.n_training_steps = state["step"]
    trainer.n_frac_active_samples = state["n_frac_active_samples"]
    import warnings

    with warnings.catch_warnings():  # replaying the schedule before any optimizer step is what we mean here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state["lr_scheduler"] or 0):
            trainer.lr_scheduler.step()
    for k, s in trainer.coefficient_schedulers.items():
        s.load_state_dict(state["coefficient_schedulers"][k])
    trainer.activation_scaler.scaling_factor = state["scaling_factor"]
    return state["step"]


def _texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def train_sae(model, texts: Sequence[str], site="blocks.15.hook_resid_pre", *, d_sae: int = 2048, k: int = 48,
              steps: int = 500, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0, skip_first: int = 1,
              out: str | Path | None = None, checkpoint_every: int = 200, force: bool = False,
              acts: torch.Tensor | None = None, outlier_factor: float | None = 10.0, stop_at: int | None = None, progress: bool = True):
    """A top-k SAE (SAELens `TopKSAE`, inference class) trained on `model`'s activations at `site` over `texts`.

    `steps` Adam steps of `batch_size` token activations (SAELens's SAETrainer, AuxK loss on), drawn from
    the texts' activations in seeded epochs; activations are scaled to mean squared norm d_in for training
    and the scale folded back into the weights at the end (SAELens's "expected_average_only_in"). The
    decoder bias starts at the activations' mean. `out`: a resumable run folder (config.json, activations/,
    checkpoint/ every `checkpoint_every` steps, sae/ at the end). `acts` [n, d_in]: activations already read.
    `outlier_factor`: tokens with norm above this times the median (attention sinks) are left out, and the SAE
    records that norm as metadata.max_norm (SAEEdit leaves such tokens unchanged). `stop_at`: stop after this step, checkpointed, and return None (the run continues when called again).
    """
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm.auto import tqdm

    site = parse_site(site, model.dims.n_layers)
    for name, v, lo in (("d_sae", d_sae, 1), ("k", k, 1), ("steps", steps, 1), ("batch_size", batch_size, 1),
                        ("checkpoint_every", checkpoint_every, 1), ("skip_first", skip_first, 0)):
        checks.integer(v, name, lo)
    if k > d_sae:
        raise checks.fail('k', f'k <= d_sae ({d_sae})', k)
    checks.learning_rate(lr)
    if stop_at is not None and (out is None or not checks.is_int(stop_at) or not 0 < stop_at < steps):
        raise checks.fail('stop_at', f'a step in 1..{steps - 1} and an out folder to continue from', stop_at)
    d_in = site_width(site, model.dims)
    folder = None
    if out is not None:
        config = {"model": model.name, "fingerprint": model.fingerprint, "site": site.name, "d_sae": d_sae, "k": k,
                  "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "skip_first": skip_first,
                  "texts": _texts_hash(texts), "n_texts": len(texts), "outlier_factor": outlier_factor}
        folder = SweepFolder(out, config, items="checkpoint", force=force, ignore=("steps",)).start()
    try:  # the folder's lock is released however the run ends
        if acts is None:
            cache = folder.path / "activations" if folder is not None else False
            acts = site_activations(reader_model(model, site), texts, site, skip_first=skip_first, cache=cache,
                                    progress=progress)
        # massive activations (attention sinks: norms tens of times the median) would hold most of the variance and
        # decide the loss; the SAE is trained without them and leaves them alone (SAEEdit's max_norm)
        max_norm = float(outlier_factor * acts.norm(dim=-1).median()) if outlier_factor else None
        if max_norm is not None:
            n_before = len(acts)
            acts = acts[acts.norm(dim=-1) <= max_norm]
            n_outliers = n_before - len(acts)
        if acts.ndim != 2 or acts.shape[1] != d_in:
            raise checks.fail('acts', f'shape [n, {d_in}] for {site.name}', tuple(acts.shape))
        if len(acts) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is more than the {len(acts)} token activations of the texts")

        torch.manual_seed(seed)
        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True)
        sae = TopKTrainingSAE(cfg)
        scale = math.sqrt(d_in) / acts.norm(dim=-1).pow(2).mean().sqrt().item()  # E||c x||^2 = d_in
        with torch.no_grad():
            sae.b_dec.copy_(acts.mean(0) * scale)
        trainer_cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                                       lr=lr, lr_end=lr / 10, lr_scheduler_name="cosineannealing", lr_warm_up_steps=0,
                                       lr_decay_steps=0, dead_feature_window=max(100, steps // 10),
                                       feature_sampling_window=max(100, steps // 10), device="cpu")
        trainer = SAETrainer(trainer_cfg, sae, data_provider=iter(()))
        trainer.activation_scaler.scaling_factor = scale
        start = _load_checkpoint(folder, trainer) if folder is not None else 0
        provider = _batches(acts, batch_size, seed, start)
        trainer.data_provider = provider
        bar = tqdm(total=steps, initial=start, disable=not progress, desc=f"training SAE at {site.name}", unit="step")
        history = []
        while trainer.n_training_steps < steps:
            trainer.maybe_reset_sparsity()
            o = trainer.step(next(provider))
            trainer.n_training_steps += 1
            bar.update(1)
            if trainer.n_training_steps % 50 == 0 or trainer.n_training_steps in (1, steps):
                with torch.no_grad():
                    resid = (o.sae_out - o.sae_in).pow(2).sum(-1).mean()
                    fve = 1 - resid / (o.sae_in - o.sae_in.mean(0)).pow(2).sum(-1).mean()
                history.append({"step": trainer.n_training_steps, "mse": float(o.losses["mse_loss"].detach()), "fve": float(fve)})
                bar.set_postfix(mse=f"{history[-1]['mse']:.3f}", fve=f"{history[-1]['fve']:.3f}")
            if folder is not None and (trainer.n_training_steps % checkpoint_every == 0 or trainer.n_training_steps == steps):
                _save_checkpoint(folder, trainer, trainer.n_training_steps)
            if stop_at is not None and trainer.n_training_steps >= stop_at:
                _save_checkpoint(folder, trainer, trainer.n_training_steps)
                bar.close()
                return None
        bar.close()
        trainer.set_final_sae_metadata()
        sae.fold_activation_norm_scaling_factor(scale)
        # the inference class, as SAELens's save_inference_model / load_from_disk build it
        from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

        state = {k_: v.detach().clone() for k_, v in sae.state_dict().items()}
        sae.process_state_dict_for_saving_inference(state)
        inf_cfg = TopKSAEConfig.from_dict(sae.cfg.get_inference_sae_cfg_dict())
        inf = TopKSAE(inf_cfg)
        inf.load_state_dict(state)
        bind_metadata(inf, model, site)
        inf.cfg.metadata["train_history"] = history[-1:] if history else []
        inf.cfg.metadata["train_tokens"] = int(len(acts))
        inf.cfg.metadata["skip_first"] = skip_first
        if max_norm is not None:
            inf.cfg.metadata["max_norm"] = max_norm
            inf.cfg.metadata["train_outliers"] = n_outliers
        if folder is not None:
            save_sae(inf, folder.path / "sae")
            folder.write_json("history.json", history)
        return inf.eval().requires_grad_(False)
    finally:
        if folder is not None:
            folder.release()
