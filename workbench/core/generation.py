"""Token rows and generation: the one place that pads prompts and calls Hugging Face `generate`.

Forward passes pad on the right (real tokens keep the positions they have alone); generation pads
on the left (every row continues from its last real token). Every sampler in the project (steered
continuations, CounterFact's fluency texts, ROME's context prefixes, the statistics corpus) goes
through `generate_ids`, with interventions active through the one hook layer.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor
from . import checks

InterventionsFor = Callable[[int, int], list]  # (first row, one past the last row) -> interventions for those rows


def check_prompts(prompts, arg: str = "prompts") -> list[str]:
    """A string or a non-empty list of non-empty strings -> list of strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise checks.fail(arg, 'a non-empty list of strings', type(prompts).__name__)
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise checks.fail(f"{arg}[{i}]", "a non-empty string", p)
    return list(prompts)


def _pad(model, rows: Sequence[Sequence[int]], left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, span] = 1
    return ids.to(model.device), mask.to(model.device)


def pad_right(model, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token-id lists -> ids [batch, pos] and attention mask [batch, pos], padded on the right (forwards)."""
    return _pad(model, rows, left=False)


def pad_left(model, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token-id lists -> ids [batch, pos] and attention mask [batch, pos], padded on the left (generation)."""
    return _pad(model, rows, left=True)


def stop_ids(model) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's end-of-sequence ids."""
    eos = model.hf.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | ({model.tokenizer.eos_token_id} - {None})


def check_generation(max_new_tokens, batch_size, temperature, top_p) -> None:
    checks.integer(max_new_tokens, "max_new_tokens")
    checks.integer(batch_size, "batch_size")
    checks.number(temperature, "temperature", minimum=checks.MIN_TEMPERATURE)
    checks.number(top_p, "top_p", positive=True, maximum=1)


@torch.no_grad()
def generate_ids(model, prompts: Sequence[str] | Sequence[Sequence[int]], interventions: list | InterventionsFor = (),
                 *, max_new_tokens: int = 20, do_sample: bool = False, seed: int | None = 0, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_new_tokens: int | None = None, batch_size: int = 16,
                 cut_at_stop: bool = True) -> list[list[int]]:
    """New token ids per prompt, [n][<= max_new_tokens] (cut at the first end-of-sequence token).

    `prompts` are strings or token-id lists. `interventions` is a list applied to every row, or a
    function (start, stop) -> interventions for rows start..stop-1 (per-row steering in a sweep).
    Sampling is seeded per batch (`seed + first row`), inside a forked RNG, so results do not depend
    on what ran before; `seed=None` leaves the RNG to the caller (one seed over many calls).
    """
    check_generation(max_new_tokens, batch_size, temperature, top_p)
    rows = [model.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompts]
    if rows:
        model.check_length(max(map(len, rows)) + max_new_tokens, "max_new_tokens (with the longest prompt)")
    stop = stop_ids(model)
    out: list[list[int]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask = pad_left(model, chunk)
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=model.tokenizer.pad_token_id)
        if min_new_tokens is not None:
            kw["min_new_tokens"] = min_new_tokens
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        ivs = interventions(start, start + len(chunk)) if callable(interventions) else interventions
        # seed=None: no fork, so the caller's one seeded stream runs on across batches and calls
        rng = nullcontext() if seed is None else torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device])
        with rng:
            if seed is not None:
                torch.manual_seed(seed + start)
            with model.hooks(ivs):
                gen = model.hf.generate(input_ids=ids, attention_mask=mask, **kw)
        for row in gen[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row)) if cut_at_stop else len(row)
            out.append(row[:cut])
    return out


def generate(model, prompts, interventions: list | InterventionsFor = (), *, skip_special_tokens: bool = False,
             **kw) -> list[str]:
    """Continuations of `prompts` as text (without the prompt), greedy unless `do_sample=True`; see `generate_ids`."""
    prompts = check_prompts(prompts)
    rows = generate_ids(model, prompts, interventions, **kw)
    return [model.tokenizer.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]
