"""Path patching (Wang et al. 2022, "Interpretability in the Wild", section 3.1 and appendix B).

A sender's effect is patched only along the paths that end in chosen receivers; every other path is
frozen. With x_orig the clean prompt and x_new the corrupted one:

  1. run x_orig and x_new, caching every head's z and every MLP's output;
  2. run x_orig with the sender(s) patched to their x_new values and every other head (and MLP, by
     default) frozen at its x_orig value, recording the receivers' inputs: the sender's effect then
     reaches each receiver only directly through the residual stream;
  3. run x_orig patching only the receivers' inputs with the values recorded in 2; everything else
     recomputes. The metric of this run is the path's effect.

With receivers="logits" the path is sender -> final residual, and run 2's logits are the answer.
A receiver head's input is the attention input (`attn.hook_in`, the ln1 output), which its query,
key and value all read: the patched input reaches the receiver head's q, k and v (restrict it to the
query's position with `receiver_positions`, e.g. the last token for IOI's S-inhibition -> name-mover
query path). `receiver_input="q"`, `"k"` or `"v"` patches only the receiver heads' queries, keys or
values (the `attn.hook_rot_q` / `hook_rot_k` / `hook_v` sites, as the attention kernel gets them), the
other two computed from the unpatched input: Wang et al.'s query / key / value paths. The layer's other
heads are kept at their values without the patch (with grouped-query attention a patched key or value
head is shared by its group; only the receivers' outputs pass).

Every sender of the list is one batch row block; all senders run in the same three forwards (plus one
per extra receiver layer).
"""
from __future__ import annotations

import re

import torch

from ..core.interventions import Replace
from ..toolkit.results import LabelledArray
from ..core.sites import Site
from .grid import check_degenerate, make_pairs, metric_fn
from ..core import checks

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^mlp(\d+)$")


def parse_node(node, dims, arg: str) -> tuple[int, int | None]:
    """'L3H1' (head 1 of layer 3) or 'mlp3' -> (layer, head or None for the MLP), range-checked."""
    m_head = _HEAD.match(node) if isinstance(node, str) else None
    m_mlp = _MLP.match(node) if isinstance(node, str) else None
    if m_head:
        layer, head = int(m_head.group(1)), int(m_head.group(2))
    elif m_mlp:
        layer, head = int(m_mlp.group(1)), None
    else:
        raise checks.fail(arg, "'L<layer>H<head>' or 'mlp<layer>'", node)
    if layer >= dims.n_layers:
        raise ValueError(f"{arg}: {node!r}: layer {layer} out of range; the model has layers 0..{dims.n_layers - 1}")
    if head is not None and head >= dims.n_heads:
        raise ValueError(f"{arg}: {node!r}: head {head} out of range; the model has heads 0..{dims.n_heads - 1}")
    return layer, head


def _parse_senders(senders, dims) -> list[list[tuple[int, int | None]]]:
    """A list whose items are one node or a list of nodes patched together -> list of node groups."""
    if isinstance(senders, str) or not isinstance(senders, (list, tuple)) or not senders:
        raise checks.fail('senders', "a non-empty list of nodes ('L3H1', 'mlp2') or of node lists", senders)
    groups = []
    for item in senders:
        nodes = [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
        if not nodes:
            raise checks.fail('senders', 'a node or a non-empty list of nodes', item)
        groups.append([parse_node(n, dims, "senders") for n in nodes])
    return groups


def _parse_receivers(receivers, dims, groups) -> dict[int, list[int]] | None:
    """'logits' -> None; a list of heads -> {layer: [heads]}, each layer after every sender's."""
    if receivers == "logits":
        return None
    if isinstance(receivers, str) or not isinstance(receivers, (list, tuple)) or not receivers:
        raise checks.fail('receivers', "'logits' or a non-empty list of heads like ['L3H1']", receivers)
    top = max((n for g in groups for n in g), key=lambda n: n[0])
    by_layer: dict[int, list[int]] = {}
    for r in receivers:
        layer, head = parse_node(r, dims, "receivers")
        if head is None:
            raise ValueError(f"receivers: {r!r} is an MLP; receivers are heads ('L3H1') or 'logits'")
        if layer <= top[0]:
            sender = f"L{top[0]}H{top[1]}" if top[1] is not None else f"mlp{top[0]}"
            raise ValueError(f"receivers: {r!r} (layer {layer}) comes before or with sender {sender!r} (layer {top[0]}); "
                             "a receiver must be in a later layer than every sender")
        by_layer.setdefault(layer, []).append(head)
    return {l: sorted(set(h)) for l, h in sorted(by_layer.items())}


RECEIVER_INPUTS = {"qkv": "attn_in", "q": "rot_q", "k": "rot_k", "v": "v"}  # receiver_input -> the site patched


def path_patching(model, clean, corrupted, answer, foil=None, *, senders, receivers="logits",
                  receiver_positions=None, receiver_input: str = "qkv", freeze_mlps: bool = True,
                  metric="logit_diff") -> LabelledArray:
    """The effect of each sender (group) on the metric through the receivers only.

    clean, corrupted: a prompt or a list of pairs (same length); senders: ['L3H1', 'mlp2', ['L4H0', 'L4H3'], ...],
    each item patched separately (a list is one group patched together); receivers: 'logits' or heads
    ['L5H2', ...], all in later layers than every sender; receiver_positions: positions at which the
    receivers' input is patched (default all); receiver_input: 'qkv' (the attention input, read by all three),
    'q', 'k' or 'v' (only that input of the receiver heads); freeze_mlps: freeze MLPs too in step 2 (Wang et al. freeze
    heads only; freezing MLPs makes the path strictly direct).
    Returns LabelledArray(sender) of the metric averaged over pairs, with the clean and corrupted metrics in meta.
    """
    dims = model.dims
    L, H = dims.n_layers, dims.n_heads
    groups = _parse_senders(senders, dims)
    recv = _parse_receivers(receivers, dims, groups)
    pairs = make_pairs(model, clean, corrupted, answer, foil)
    check_degenerate(pairs, metric)
    n, S, T = pairs.n, len(groups), pairs.clean.shape[1]
    if receiver_positions is not None:
        checks.positions(receiver_positions, "receiver_positions", T)
    if receiver_input not in RECEIVER_INPUTS:
        raise checks.fail('receiver_input', f'one of {sorted(RECEIVER_INPUTS)}', receiver_input)
    if receiver_input != "qkv" and recv is None:
        raise ValueError(f"receiver_input: {receiver_input!r} needs receiver heads, not receivers='logits'")
    comp = RECEIVER_INPUTS[receiver_input]
    per_kv = dims.n_heads // dims.n_kv_heads  # query heads per key/value head

    def input_heads(heads):  # the heads of the patched site that feed the receiver heads
        return None if comp == "attn_in" else heads if comp == "rot_q" else sorted({h // per_kv for h in heads})

    frozen_sites = [Site(l, c) for l in range(L) for c in ("z", "mlp_out")]
    recv_sites = [Site(l, comp) for l in (recv or {})]

    with torch.no_grad():
        # step 1: the two caches
        clean_logits, clean_cache = model.run_with_cache(pairs.clean, frozen_sites)
        corr_logits, corr_cache = model.run_with_cache(pairs.corrupted, frozen_sites)
        fn = metric_fn(metric, pairs, clean_logits[:, -1], corr_logits[:, -1])
        pair_of_row = torch.arange(n, device=model.device).repeat(S)  # row = sender * n + pair
        ids = pairs.clean[pair_of_row]

        # step 2: senders from the corrupted run, every other head (and MLP) frozen at its clean value
        frozen = []
        for l in range(L):
            z = clean_cache[Site(l, "z").name][pair_of_row].clone()  # [rows, pos, heads, d_head]
            mlp = clean_cache[Site(l, "mlp_out").name][pair_of_row].clone()
            mlp_rows = []
            for s, group in enumerate(groups):
                rows = slice(s * n, (s + 1) * n)
                for layer, head in group:
                    if layer != l:
                        continue
                    if head is None:
                        mlp[rows] = corr_cache[Site(l, "mlp_out").name]
                        mlp_rows += list(range(s * n, (s + 1) * n))
                    else:
                        z[rows, :, head] = corr_cache[Site(l, "z").name][:, :, head]
            frozen.append(Replace(Site(l, "z"), value=z))
            if freeze_mlps:
                frozen.append(Replace(Site(l, "mlp_out"), value=mlp))
            elif mlp_rows:
                frozen.append(Replace(Site(l, "mlp_out"), rows=mlp_rows, value=mlp[mlp_rows]))
        logits, recorded = model.run_with_cache(ids, recv_sites, interventions=frozen)
        if recv is not None:
            # step 3: patch only the receivers' inputs; a layer's other heads keep their unpatched values,
            # read from a run with the lower receiver layers' patches only
            patches: list[Replace] = []
            for l, heads in recv.items():
                name = Site(l, comp).name
                pos = receiver_positions
                value = recorded[name] if pos is None else recorded[name][:, pos if not isinstance(pos, int) else [pos]]
                sel = input_heads(heads)
                if sel is not None:
                    value = value[:, :, sel]
                others = [h for h in range(H) if h not in heads]
                layer_patches = [Replace(Site(l, comp), positions=pos, heads=sel, value=value)]
                if others:
                    if patches:
                        _, own = model.run_with_cache(ids, [Site(l, "z")], interventions=patches)
                        z_own = own[Site(l, "z").name]
                    else:
                        z_own = clean_cache[Site(l, "z").name][pair_of_row]
                    layer_patches.append(Replace(Site(l, "z"), heads=others, value=z_own[:, :, others]))
                patches += layer_patches
            logits = model.run_with_interventions(ids, patches)
        values = fn(logits[:, -1], pair_of_row).reshape(S, n)
    idx = torch.arange(n, device=model.device)
    labels = ["+".join(f"L{l}H{h}" if h is not None else f"mlp{l}" for l, h in g) for g in groups]
    meta = {"receivers": receivers if isinstance(receivers, str) else list(receivers),
            "receiver_positions": receiver_positions, "receiver_input": receiver_input, "freeze_mlps": freeze_mlps,
            "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
            "clean_metric": fn(clean_logits[:, -1], idx).mean().item(),
            "corrupted_metric": fn(corr_logits[:, -1], idx).mean().item(), "per_pair": values.tolist()}
    return LabelledArray(values.mean(1).float().cpu().numpy(), ("sender",), {"sender": labels},
                         name=f"path patching -> {meta['receivers']}", meta=meta)
