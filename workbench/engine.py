"""The batched patching engine: many single-site patches per forward pass.

A patch of site (layer L, positions >= p) leaves every layer below L, and every position before p,
exactly as in the unpatched target run (the model is causal). So the fast path

- runs the target once, caching its residual stream (`resid_pre` of every layer) and its keys/values;
- starts each patched row at layer L from the cached `resid_pre[L]` instead of the embeddings;
- computes only positions >= p0 (the smallest first position in its batch), reading the keys and
  values of positions < p0 from the target's cache;
- stacks many patches in the batch dimension, rows joining the batch at the layer they start at,
  and unembeds only the last position;
- applies each row's patch through the ordinary hook layer (`workbench.hooks`), so every component
  (residual, attention out, MLP out, per-head z, MLP hidden) takes the same path;
- never syncs with the host per patch.

Where the fast path cannot run, a batched full forward (every row from the embeddings) does the
same job and says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .interventions import Replace
from .sites import Site

MetricFn = Callable[[Tensor, Tensor], Tensor]  # (last-token logits [n, d_vocab], pair index [n]) -> [n]


@dataclass
class Patch:
    """Replace `site` at `positions` and `heads` (None: all) of target row `pair` by `value`.

    `value` broadcasts to the selected block of one row: [n_positions, d] or [n_positions, n_heads, d_head].
    """

    pair: int
    site: Site
    positions: list[int]
    heads: list[int] | None
    value: Tensor

    @property
    def first_position(self) -> int:
        return min(self.positions)

    def intervention(self, row: int, shift: int = 0) -> Replace:
        """The patch for batch row `row` of a forward in which position p sits at index p + shift."""
        return Replace(self.site, rows=row, positions=[p + shift for p in self.positions], heads=self.heads,
                       value=self.value[None])


@dataclass
class EngineStats:
    path: str = "suffix"
    calls: int = 0  # block (fast path) or model (fallback) calls
    token_layers: int = 0  # sum over calls of batch rows x positions x layers computed
    unembedded: int = 0  # positions passed through the unembedding
    notes: list[str] = field(default_factory=list)


def bytes_per_token(model, seq_len: int) -> int:
    """Rough peak bytes a token in flight costs inside one block (activations, scores, prefix keys/values)."""
    d = model.dims
    floats = 8 * d.d_model + 4 * d.d_mlp + 2 * d.n_heads * seq_len + 2 * d.n_kv_heads * d.d_head * seq_len
    return 4 * floats


def token_budget(model, seq_len: int, memory_mb: float | None, max_batch_tokens: int | None) -> int:
    """How many (row, position) pairs one call may hold, from a memory budget or a direct cap."""
    if max_batch_tokens is not None:
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens: expected an int >= 1, got {max_batch_tokens!r}")
        budget = max_batch_tokens
    else:
        if memory_mb is None or not memory_mb > 0:
            raise ValueError(f"memory_mb: expected a number > 0, got {memory_mb!r}")
        per_row_logits = 4 * model.dims.d_vocab
        budget = int(memory_mb * 2**20 // (bytes_per_token(model, seq_len) + per_row_logits / seq_len))
    if budget < seq_len:
        raise ValueError(
            f"memory_mb: the budget holds {budget} tokens, too small for one patch of a {seq_len}-token prompt "
            f"(needs about {seq_len * bytes_per_token(model, seq_len) / 2**20:.2f} MB)"
        )
    return budget


def run_patches(model, target_ids: Tensor, patches: list[Patch], metric: MetricFn, *, memory_mb: float | None = 1024,
                max_batch_tokens: int | None = None, method: str = "auto", progress: bool = False,
                pack_tokens: int = 256) -> tuple[Tensor, EngineStats]:
    """Metric after each patch, [len(patches)], and how the work was done.

    `target_ids` [n_pairs, pos] are the prompts patched into (no padding). `method` is "suffix"
    (the fast path), "full" (batched full forwards) or "auto" (suffix where the architecture allows).
    """
    if method not in ("auto", "suffix", "full"):
        raise ValueError(f"method: expected 'auto', 'suffix' or 'full', got {method!r}")
    T = target_ids.shape[1]
    budget = token_budget(model, T, memory_mb, max_batch_tokens)
    if not patches:
        return torch.empty(0, device=model.device), EngineStats(path="none")
    reason = _suffix_unsupported(model)
    if method == "suffix" and reason:
        raise ValueError(f"method: the suffix path cannot run on this model: {reason}")
    if method == "full" or reason:
        stats = EngineStats(path="full")
        if reason:
            warnings.warn(f"patching falls back to batched full forwards: {reason}", stacklevel=2)
            stats.notes.append(reason)
        return _run_full(model, target_ids, patches, metric, budget, stats, progress), stats
    return _run_suffix(model, target_ids, patches, metric, budget, pack_tokens, progress)


def _suffix_unsupported(model) -> str | None:
    if model.hf.config.get_text_config().model_type not in ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"):
        return f"no suffix recipe for {model.arch.family}"
    if getattr(model.hf.config, "sliding_window", None) and getattr(model.hf.config, "use_sliding_window", False):
        return "sliding-window attention"
    return None


def _run_full(model, target_ids, patches, metric, budget, stats, progress) -> Tensor:
    T = target_ids.shape[1]
    rows_per_call = max(1, budget // T)
    out = torch.empty(len(patches), device=model.device)
    with torch.no_grad():
        for start in tqdm(range(0, len(patches), rows_per_call), disable=not progress, desc="patching (full)"):
            chunk = patches[start:start + rows_per_call]
            pair_idx = torch.tensor([p.pair for p in chunk], device=model.device)
            ivs = [p.intervention(row) for row, p in enumerate(chunk)]
            logits = model.run_with_interventions(target_ids[pair_idx], ivs)[:, -1]
            out[start:start + len(chunk)] = _checked(metric(logits, pair_idx), len(chunk))
            stats.calls += 1
            stats.token_layers += len(chunk) * T * model.dims.n_layers
            stats.unembedded += len(chunk) * T
    return out


def _checked(values: Tensor, n: int) -> Tensor:
    if not isinstance(values, Tensor) or values.shape != (n,):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"metric: must return a tensor of shape [{n}] (one value per row), got {got}")
    return values


def _layer_kv(cache, layer: int) -> tuple[Tensor, Tensor]:
    entry = cache.layers[layer]
    return entry.keys, entry.values


@dataclass
class _Pack:
    """One batch row of the packed layout: the suffixes of several patched rows of one prompt pair, end to end."""

    pair: int
    rows: list[tuple[int, int, int]] = field(default_factory=list)  # (patch index, start in pack, first position)
    length: int = 0
    hidden: Tensor | None = None  # [length, d_model]


def _chunks(patches: list[Patch], T: int, budget: int) -> list[list[int]]:
    """Patch indices in groups whose suffix tokens, all alive at the last layer, fit the budget."""
    order = sorted(range(len(patches)), key=lambda i: (patches[i].pair, patches[i].first_position, patches[i].site.layer))
    chunks, current, tokens = [], [], 0
    for i in order:
        s = T - patches[i].first_position
        if current and tokens + s > budget:
            chunks.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += s
    return chunks + ([current] if current else [])


def _packed_mask(packs: list[_Pack], T: int, width: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Additive attention mask [packs, 1, width, T + width] and position ids [packs, width].

    A token of a row at absolute position q attends to the target's cached keys at positions
    < its row's first position, and to its own row's recomputed tokens at positions <= q.
    Padding attends to key 0 only, so its softmax stays finite; nothing reads it.
    """
    B = len(packs)
    row = torch.full((B, width), -1, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    first = torch.ones((B, width), dtype=torch.long)
    for b, pack in enumerate(packs):
        for k, (_, start, p) in enumerate(pack.rows):
            n = T - p
            row[b, start:start + n] = k
            pos[b, start:start + n] = torch.arange(p, T)
            first[b, start:start + n] = p
    prefix_ok = torch.arange(T)[None, None, :] < first[:, :, None]  # [B, width, T]
    own_ok = (row[:, :, None] == row[:, None, :]) & (pos[:, None, :] <= pos[:, :, None]) & (row[:, :, None] >= 0)
    allowed = torch.cat([prefix_ok, own_ok], dim=2)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None].to(device), pos.to(device)


def _run_suffix(model, target_ids, patches, metric, budget, pack_tokens, progress):
    """The fast path: rows start at their patch's layer and compute only their suffix, packed end to end."""
    from transformers import DynamicCache

    stats = EngineStats(path="suffix")
    dims, arch = model.dims, model.arch
    n_pairs, T = target_ids.shape
    dev = model.device
    resid_sites = [Site(l, "resid_pre") for l in range(dims.n_layers)]
    with torch.no_grad():
        with model.hooks(cache_sites=resid_sites) as cache:
            target = model.hf(input_ids=target_ids, use_cache=True)
        resid = [cache[s.name] for s in resid_sites]  # per layer [n_pairs, T, d_model]
        kv = [_layer_kv(target.past_key_values, l) for l in range(dims.n_layers)]  # [n_pairs, kv_heads, T, d_head]
        stats.calls += 1
        stats.token_layers += n_pairs * T * dims.n_layers
        stats.unembedded += n_pairs * T
        del target

        blocks = [model.module("block", l) for l in range(dims.n_layers)]
        rotary = model.module("rotary") if arch.rotary else None
        final_norm, unembed = model.module("final_norm"), model.module("unembed")
        capacity = max(T, pack_tokens)
        out = torch.empty(len(patches), device=dev)
        for chunk in tqdm(_chunks(patches, T, budget), disable=not progress, desc="patching (suffix)"):
            joining: dict[int, list[int]] = {}
            for i in chunk:
                joining.setdefault(patches[i].site.layer, []).append(i)
            packs: list[_Pack] = []
            for l in range(min(joining), dims.n_layers):
                ivs = []
                for i in joining.get(l, []):  # rows whose patch is at this layer join from the target's resid_pre[l]
                    patch, p = patches[i], patches[i].first_position
                    pack = next((pk for pk in packs if pk.pair == patch.pair and pk.length + T - p <= capacity), None)
                    if pack is None:
                        pack = _Pack(patch.pair)
                        packs.append(pack)
                    start = pack.length
                    init = resid[l][patch.pair, p:]
                    pack.hidden = init if pack.hidden is None else torch.cat([pack.hidden, init])
                    pack.rows.append((i, start, p))
                    pack.length += T - p
                    ivs.append(patch.intervention(packs.index(pack), start - p))
                width = max(pk.length for pk in packs)
                h = torch.stack([F.pad(pk.hidden, (0, 0, 0, width - pk.length)) for pk in packs])
                mask, positions = _packed_mask(packs, T, width, h.dtype, dev)
                pair_of_pack = torch.tensor([pk.pair for pk in packs], device=dev)
                past = DynamicCache()
                past.update(kv[l][0][pair_of_pack], kv[l][1][pair_of_pack], l)
                kwargs = {"attention_mask": mask, "position_ids": positions, "use_cache": True, arch.cache_kwarg: past}
                if rotary is not None:
                    kwargs["position_embeddings"] = rotary(h, positions)
                with model.hooks(ivs, input_shape=tuple(h.shape[:2])):
                    h = blocks[l](h, **kwargs)
                h = h[0] if isinstance(h, tuple) else h
                for b, pk in enumerate(packs):
                    pk.hidden = h[b, :pk.length]
                stats.calls += 1
                stats.token_layers += sum(pk.length for pk in packs)
            # each row's last token is its prompt's last position
            last = [(i, pk.hidden[start + T - p - 1]) for pk in packs for i, start, p in pk.rows]
            rows = torch.tensor([i for i, _ in last], device=dev)
            logits = unembed(final_norm(torch.stack([x for _, x in last])))
            stats.unembedded += len(last)
            pairs = torch.tensor([patches[i].pair for i, _ in last], device=dev)
            out[rows] = _checked(metric(logits, pairs), len(last))
    return out, stats
