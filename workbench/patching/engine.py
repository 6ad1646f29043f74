"""The batched patching engine: many single-site patches per forward pass.

A patch of site (layer L, positions >= p) leaves every layer below L, and every position before p,
exactly as in the unpatched target run (the model is causal). So the fast ("suffix") path

- runs the target once, caching its residual stream (`resid_pre` of every layer) and keys/values;
- starts each patched row at layer L from the cached `resid_pre[L]` instead of the embeddings, and
  computes only its positions >= p, whose queries read the target's cached keys/values for the
  positions before p;
- packs the suffixes of many rows end to end in each batch row, with an attention mask that keeps
  every row to its own tokens and its own prefix (so suffixes of different lengths waste nothing);
  rows join the batch at the layer their patch is at, and only each row's last token is unembedded;
- applies each row's patch through the ordinary hook layer (`workbench.hooks`), so every component
  (residual, attention out, MLP out, per-head z, MLP hidden) takes the same path;
- never syncs with the host per patch.

The work is then sum over patches of (n_layers - L) x (n_tokens - p): about a quarter of the
full grid's. Where the fast path cannot run, batched full forwards (every row from the
embeddings) do the same job, and say so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.arch import (attention_window, cache_kwarg, float32_logits, full_kv_cache, module_device, output_cache,
                         rotary_tables, suffix_unsupported)
from ..core.interventions import Replace
from ..core.sites import Site
from ..core import checks

# (last-token logits [n, d_vocab], pair index [n]) -> [n], or [n, m] for several numbers per patched run
MetricFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Overwrite:
    """Replace `site` at `positions` and `heads` (None: all) by `value`, which broadcasts to the selected
    block of one row: [n_positions, d] or [n_positions, n_heads, d_head]."""

    site: Site
    positions: list[int]
    heads: list[int] | None
    value: Tensor


@dataclass
class Patch:
    """One patched run of target row `pair`: one or more overwrites (several for a window of layers)."""

    pair: int
    overwrites: list[Overwrite]

    @classmethod
    def at(cls, pair: int, site: Site, positions: list[int], heads: list[int] | None, value: Tensor) -> "Patch":
        return cls(pair, [Overwrite(site, positions, heads, value)])

    @property
    def first_position(self) -> int:
        return min(min(e.positions) for e in self.overwrites)

    @property
    def first_layer(self) -> int:
        return min(e.site.layer for e in self.overwrites)


@dataclass
class EngineStats:
    path: str = "suffix"
    calls: int = 0  # block (fast path) or model (fallback) calls
    token_layers: int = 0  # sum over calls of batch rows x positions x layers computed
    padding: int = 0  # of which padding (slots of packs not yet full)
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
        checks.integer(max_batch_tokens, "max_batch_tokens")
        budget = max_batch_tokens
    else:
        checks.number(memory_mb, "memory_mb", positive=True)
        per_row_logits = 4 * model.dims.d_vocab
        budget = int(memory_mb * 2**20 // (bytes_per_token(model, seq_len) + per_row_logits / seq_len))
    if budget < seq_len:
        raise ValueError(
            f"memory_mb: the budget holds {budget} tokens, too small for one patch of a {seq_len}-token prompt "
            f"(needs about {seq_len * bytes_per_token(model, seq_len) / 2**20:.2f} MB)"
        )
    return budget


def run_patches(model, target_ids: Tensor, patches: list[Patch], metric: MetricFn, *, memory_mb: float | None = 1024,
                max_batch_tokens: int | None = None, path: str = "auto", progress: bool = False,
                pack_tokens: int = 64, target_embeds: Tensor | None = None) -> tuple[Tensor, EngineStats]:
    """Metric after each patch, [len(patches)] (or [len(patches), m] for a metric of width m), and how the
    work was done.

    `target_ids` [n_pairs, pos] are the prompts patched into (no padding); `target_embeds`
    [n_pairs, pos, d_model], if given, replaces their token embeddings (causal tracing's noised
    subject). `path` is "suffix" (the fast path), "full" (batched full forwards) or "auto"
    (suffix where the architecture allows).
    """
    if path not in ("auto", "suffix", "full"):
        raise checks.fail('path', "'auto', 'suffix' or 'full'", path)
    T = target_ids.shape[1]
    budget = token_budget(model, T, memory_mb, max_batch_tokens)
    if not patches:
        return torch.empty(0, device=model.device), EngineStats(path="none")
    reason = suffix_unsupported(model.hf, model.arch, {e.site.component for p in patches for e in p.overwrites})
    if path == "suffix" and reason:
        raise ValueError(f"path: the suffix path cannot run on this model: {reason}")
    if path == "full" or reason:
        stats = EngineStats(path="full")
        if reason:
            warnings.warn(f"patching falls back to batched full forwards: {reason}", stacklevel=2)
            stats.notes.append(reason)
        return _run_full(model, target_ids, patches, metric, budget, stats, progress, target_embeds), stats
    return _run_suffix(model, target_ids, patches, metric, budget, pack_tokens, progress, target_embeds)


def _run_full(model, target_ids, patches, metric, budget, stats, progress, target_embeds=None) -> Tensor:
    T = target_ids.shape[1]
    rows_per_call = max(1, budget // T)
    out = None
    with torch.no_grad():
        for start in tqdm(range(0, len(patches), rows_per_call), disable=not progress, desc="patching (full)"):
            chunk = patches[start:start + rows_per_call]
            pair_idx = torch.tensor([p.pair for p in chunk], device=model.device)
            ivs = _overwrite_interventions([(row, e, 0) for row, p in enumerate(chunk) for e in p.overwrites])
            embeds = None if target_embeds is None else target_embeds[pair_idx]
            logits, _ = last_logits(model, None if embeds is not None else target_ids[pair_idx], ivs, embeds)
            out = _stored(out, slice(start, start + len(chunk)), checked_metric(metric(logits, pair_idx), len(chunk), wide=True),
                          len(patches))
            stats.calls += 1
            stats.token_layers += len(chunk) * T * model.dims.n_layers
            stats.unembedded += len(chunk) * T
    return out


def last_logits(model, ids, interventions=(), inputs_embeds=None, sites=()):
    """Last-position logits [batch, d_vocab] in float32 (`float32_logits` of the last resid_post), and the
    cache of `sites`: the one way patching baselines and full-forward cells get their logits, so they match
    the suffix engine's in any dtype."""
    last = Site(model.dims.n_layers - 1, "resid_post")
    # logits=False: the model's own unembedding of every position never runs, only the last position's below
    _, cache = model.run_with_cache(ids, [*sites, last], interventions=interventions, inputs_embeds=inputs_embeds,
                                    logits=False)
    resid = cache[last.name] if last in sites or last.name in sites else cache.pop(last.name)
    logits = float32_logits(model.hf, model.arch, resid[:, -1])
    if interventions and not bool(torch.isfinite(logits).all()):
        raise ValueError("interventions: with these interventions the last-position logits are not finite (an "
                         "overflow downstream of the patched sites); expected interventions that keep the forward finite")
    return logits, cache


def checked_metric(values: Tensor, n: int, wide: bool = False) -> Tensor:
    """`values` if it is [n] (one number per row), or [n, m] where `wide` (the engine takes several per row)."""
    if not isinstance(values, Tensor) or values.ndim not in ((1, 2) if wide else (1,)) or values.shape[0] != n:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        also = f" or [{n}, m]" if wide else ""
        raise ValueError(f"metric: must return a tensor of shape [{n}] (one value per row){also}, got {got}")
    return values


def _stored(out: Tensor | None, rows, values: Tensor, n_patches: int) -> Tensor:
    """Write one chunk's metric values into the result, allocated at the first chunk with the metric's width."""
    if out is None:
        out = torch.empty(n_patches, *values.shape[1:], device=values.device)
    out[rows.to(out.device) if isinstance(rows, Tensor) else rows] = values.to(out.device, out.dtype)
    return out


def _chunks(patches: list[Patch], T: int, budget: int) -> list[list[int]]:
    """Patch indices in groups whose suffix tokens, all alive at the last layer, fit the budget."""
    order = sorted(range(len(patches)), key=lambda i: (patches[i].pair, patches[i].first_position, patches[i].first_layer))
    chunks, current, tokens = [], [], 0
    for i in order:
        s = T - patches[i].first_position
        if current and tokens + s > budget:
            chunks.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += s
    return chunks + ([current] if current else [])


@dataclass
class _Layout:
    """Where each patched row of a chunk sits: rows are packed end to end into batch rows ("packs") of one
    prompt pair each, in the order they join (by layer), so a pack's active part is always a prefix of it."""

    rows: list[int]  # patch indices, in join order
    pack: Tensor  # [rows] pack of each row
    start: Tensor  # [rows] slot of its first token
    pack_pair: Tensor  # [packs]
    active: list[tuple[int, int, int]]  # per layer: (packs in use, width in use, real tokens in use)
    slot_row: Tensor  # [packs, width] local row index of each slot, -1 for padding
    slot_pos: Tensor  # [packs, width] absolute position of each slot's token
    slot_first: Tensor  # [packs, width] first recomputed position of the slot's row


def _layout(patches: list[Patch], chunk: list[int], T: int, capacity: int, n_layers: int) -> _Layout:
    rows = sorted(chunk, key=lambda i: (patches[i].first_layer, patches[i].pair, patches[i].first_position))
    pack_pair, pack_len, pack_of, start_of = [], [], [], []
    open_pack: dict[int, int] = {}  # pair -> the pack still being filled
    for i in rows:
        n = T - patches[i].first_position
        b = open_pack.get(patches[i].pair)
        if b is None or pack_len[b] + n > capacity:
            b = len(pack_pair)
            pack_pair.append(patches[i].pair)
            pack_len.append(0)
            open_pack[patches[i].pair] = b
        pack_of.append(b)
        start_of.append(pack_len[b])
        pack_len[b] += n
    width = max(pack_len)
    B = len(pack_pair)
    slot_row = torch.full((B, width), -1, dtype=torch.long)
    slot_pos = torch.zeros((B, width), dtype=torch.long)
    slot_first = torch.ones((B, width), dtype=torch.long)
    active, lengths = [], [0] * B
    k = 0
    for layer in range(n_layers):
        while k < len(rows) and patches[rows[k]].first_layer == layer:
            p, b, st = patches[rows[k]].first_position, pack_of[k], start_of[k]
            slot_row[b, st:st + T - p] = k
            slot_pos[b, st:st + T - p] = torch.arange(p, T)
            slot_first[b, st:st + T - p] = p
            lengths[b] = st + T - p
            k += 1
        used = [x for x in lengths if x]
        active.append((len(used), max(used, default=0), sum(used)))
    return _Layout(rows, torch.tensor(pack_of), torch.tensor(start_of), torch.tensor(pack_pair), active,
                   slot_row, slot_pos, slot_first)


def _packed_mask(lay: _Layout, T: int, dtype, window: int | None = None) -> Tensor:
    """Additive attention mask [packs, 1, width, T + width] over (target's cached keys | packed keys).

    A token at absolute position q of a row that recomputes from position p attends to the target's
    cached keys at positions < p and to its own row's recomputed tokens at positions <= q; in a
    sliding-window layer only to keys at k with q - k < window (as the model's own mask). Padding
    (position 0) attends to cached key 0 only, so its softmax stays finite; nothing reads it.
    """
    row, pos, first = lay.slot_row, lay.slot_pos, lay.slot_first
    keys = torch.arange(T)[None, None, :]
    prefix_ok = keys < first[:, :, None]
    own_ok = (row[:, :, None] == row[:, None, :]) & (pos[:, None, :] <= pos[:, :, None]) & (row[:, :, None] >= 0)
    if window is not None:
        prefix_ok &= pos[:, :, None] - keys < window
        own_ok &= pos[:, :, None] - pos[:, None, :] < window
    allowed = torch.cat([prefix_ok, own_ok], dim=2)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _overwrite_interventions(overwrites: list[tuple[int, Overwrite, int]]) -> list[Replace]:
    """(batch row, overwrite, shift) triples -> one pointwise Replace per (site, head selection): a single scatter each.

    Position q of an overwrite lands at index q + shift of its batch row.
    """
    groups: dict[tuple, list[tuple[int, Overwrite, int]]] = {}
    for item in overwrites:
        groups.setdefault((item[1].site, item[1].heads is None), []).append(item)
    ivs = []
    for (site, all_heads), items in groups.items():
        rows, positions, heads, values = [], [], [], []
        for b, e, shift in items:
            n = len(e.positions)
            if all_heads:
                rows += [b] * n
                positions += [q + shift for q in e.positions]
                values.append(e.value.expand(n, *e.value.shape[1:]))
            else:
                v = e.value.expand(n, len(e.heads), e.value.shape[-1])
                for qi, q in enumerate(e.positions):
                    rows += [b] * len(e.heads)
                    positions += [q + shift] * len(e.heads)
                    heads += e.heads
                    values.append(v[qi])
        ivs.append(Replace(site, rows=rows, positions=positions, heads=None if all_heads else heads,
                           pointwise=True, value=torch.cat(values)))
    return ivs


def _run_suffix(model, target_ids, patches, metric, budget, pack_tokens, progress, target_embeds=None):
    """The fast path: rows start at their patch's layer and compute only their suffix, packed end to end."""
    stats = EngineStats(path="suffix")
    dims, arch = model.dims, model.arch
    n_pairs, T = target_ids.shape
    dev = model.device
    resid_sites = [Site(l, "resid_pre") for l in range(dims.n_layers)]
    with torch.no_grad():
        # A cache built without the config keeps every layer's keys in full (a config-built one trims
        # sliding-window layers to the window, and suffixes need the whole prefix's keys).
        full_cache = {cache_kwarg(model.hf): full_kv_cache()}
        with model.hooks(cache_sites=resid_sites) as cache:
            if target_embeds is None:
                target = model.hf(input_ids=target_ids, use_cache=True, **full_cache)
            else:
                target = model.hf(inputs_embeds=target_embeds, use_cache=True, **full_cache)
        resid = [cache[s.name] for s in resid_sites]  # per layer [n_pairs, T, d_model]
        target_cache = output_cache(target)  # per layer [n_pairs, kv_heads, T, d_head] keys and values
        stats.calls += 1
        stats.token_layers += n_pairs * T * dims.n_layers
        stats.unembedded += n_pairs * T
        del target

        blocks = [model.module("block", l) for l in range(dims.n_layers)]
        cache_key = cache_kwarg(blocks[0])
        dtype = resid[0].dtype
        windows = [attention_window(model.hf, l) for l in range(dims.n_layers)]
        out = None
        for chunk in tqdm(_chunks(patches, T, budget), disable=not progress, desc="patching (suffix)"):
            lay = _layout(patches, chunk, T, max(T, pack_tokens), dims.n_layers)
            masks = {w: _packed_mask(lay, T, dtype, w).to(dev) for w in set(windows)}
            positions = lay.slot_pos.to(dev)
            pack_pair = lay.pack_pair.to(dev)
            h = torch.zeros(*lay.slot_row.shape, dims.d_model, dtype=dtype, device=dev)
            rope = rotary_tables(model.hf, arch, h, positions)  # per layer, or None
            row_layer = [patches[i].first_layer for i in lay.rows]
            slot_row, slot_pos = lay.slot_row.to(dev), lay.slot_pos.to(dev)
            overwrites_at: dict[int, list] = {}
            for k, i in enumerate(lay.rows):
                shift = int(lay.start[k]) - patches[i].first_position
                for e in patches[i].overwrites:
                    overwrites_at.setdefault(e.site.layer, []).append((int(lay.pack[k]), e, shift))
            k = 0
            for l in range(row_layer[0], dims.n_layers):
                members = []
                while k < len(lay.rows) and row_layer[k] == l:
                    members.append(k)
                    k += 1
                nb, w, real = lay.active[l]
                d = module_device(blocks[l])  # a model split over devices: the stream follows each block
                h = h.to(d)
                if members:  # rows whose patch is at this layer join from the target's resid_pre[l]
                    joining = torch.isin(slot_row, torch.tensor(members, device=dev)).nonzero(as_tuple=True)
                    src = resid[l]
                    h[tuple(j.to(d) for j in joining)] = src[pack_pair[joining[0]].to(src.device),
                                                              slot_pos[joining].to(src.device)].to(d)
                past = model.prefix_cache(target_cache, l, pack_pair[:nb])
                kwargs = {"attention_mask": masks[windows[l]][:nb, :, :w, :T + w].to(d),
                          "position_ids": positions[:nb, :w].to(d), "use_cache": True, cache_key: past}
                if rope is not None:
                    kwargs["position_embeddings"] = tuple(x[:nb, :w].to(d) for x in rope[l])
                with model.hooks(_overwrite_interventions(overwrites_at.get(l, [])), input_shape=(nb, w)):
                    y = blocks[l](h[:nb, :w], **kwargs)
                h[:nb, :w] = y[0] if isinstance(y, tuple) else y
                stats.calls += 1
                stats.token_layers += nb * w
                stats.padding += nb * w - real
            # each row's last token is its prompt's last position
            last = lay.start + (T - 1) - torch.tensor([patches[i].first_position for i in lay.rows])
            logits = float32_logits(model.hf, arch, h[lay.pack.to(h.device), last.to(h.device)])
            stats.unembedded += len(lay.rows)
            rows = torch.tensor(lay.rows, device=dev)
            # metrics in float32 whatever the model's dtype (half-precision logits lose the small differences)
            value = metric(logits.float(), pack_pair[lay.pack.to(dev)].to(logits.device))
            out = _stored(out, rows, checked_metric(value, len(lay.rows), wide=True), len(patches))
    return out, stats
