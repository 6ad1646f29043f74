"""The one place that knows where things live inside each supported architecture.

Every other module reaches blocks, attention, MLPs, norms and the unembedding through
`Arch`; no architecture-specific module names appear anywhere else.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import checks


@dataclass(frozen=True)
class Arch:
    """Dotted module paths for one model family.

    `blocks`, `embed`, `final_norm` and `unembed` are relative to the causal-LM module;
    the rest are relative to one block.
    """

    family: str
    blocks: str
    embed: str
    final_norm: str
    unembed: str
    attn: str
    attn_out_proj: str  # its input is hook_z, flattened over heads
    mlp: str
    mlp_down: str  # its input is mlp.hook_post (ROME's keys)
    ln1: str | None  # None: the block has no pre-attention norm (OLMo 2 normalises after)
    ln2: str | None  # None: no pre-MLP norm (OLMo 2; GPT-J's MLP reads ln1's output)
    rotary: str | None = None  # model-level rotary embedding module; None for learned absolute positions
    parallel_residual: bool = False  # attn and MLP both read resid_pre (GPT-NeoX, GPT-J)
    suffix: bool = True  # the packed suffix-only engine path knows this family's blocks
    # The module whose output the block adds to the residual stream as attention's / the MLP's contribution
    # (hook_attn_out / hook_mlp_out), where that is a post-norm after `attn` / `mlp` (Gemma 2/3 sandwich
    # norms, OLMo 2). None: `attn` / `mlp` itself.
    attn_out: str | None = None
    mlp_out: str | None = None
    rotary_by_layer_type: bool = False  # rotary(x, positions, layer_type): one table per attention type (Gemma 3)
    final_softcap: str | None = None  # config field c: logits = c * tanh(logits / c) after the unembedding (Gemma 2/3)
    moe: bool = False  # the MLP is a mixture of experts: mlp_out is the experts' weighted sum; no single down projection

    def has(self, role: str) -> bool:
        """Whether this family has a module for an adapter role ('block' always)."""
        return role == "block" or getattr(self, role, None) is not None or role in ("attn_out", "mlp_out")

    def path(self, role: str) -> str:
        """The dotted module path of an adapter role, or a ValueError saying why this family lacks it."""
        path = getattr(self, role, None)
        if path is None and role in ("attn_out", "mlp_out"):
            path = getattr(self, role.removesuffix("_out"))
        if path is None:
            why = _MISSING.get(role, "not in this architecture")
            why = _MISSING["moe"] if self.moe and role == "mlp_down" else why
            raise ValueError(f"model: the {self.family} architecture has no {role!r} module ({why})")
        return path


_MISSING = {
    "moe": "a mixture-of-experts MLP has no single down projection, so mlp_post sites and MLP weight edits "
           "(ROME, MEMIT, FTL) are unsupported",
    "ln1": "no norm before attention",
    "ln2": "no norm before the MLP",
    "rotary": "no rotary embedding",
}


_LLAMA_LIKE = dict(
    blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
    attn="self_attn", attn_out_proj="self_attn.o_proj", mlp="mlp", mlp_down="mlp.down_proj",
    ln1="input_layernorm", ln2="post_attention_layernorm", rotary="model.rotary_emb",
)

ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", **_LLAMA_LIKE),
    "mistral": Arch("mistral", **_LLAMA_LIKE),
    "qwen2": Arch("qwen2", **_LLAMA_LIKE),
    "qwen3": Arch("qwen3", **_LLAMA_LIKE),
    "gpt2": Arch(
        "gpt2", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        unembed="lm_head", attn="attn", attn_out_proj="attn.c_proj", mlp="mlp", mlp_down="mlp.c_proj",
        ln1="ln_1", ln2="ln_2",
    ),
    "gpt_neox": Arch(
        "gpt_neox", blocks="gpt_neox.layers", embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm", unembed="lm_head", attn="attention",
        attn_out_proj="attention.dense", mlp="mlp", mlp_down="mlp.dense_4h_to_h",
        ln1="input_layernorm", ln2="post_attention_layernorm", rotary="gpt_neox.rotary_emb",
        parallel_residual=True,
    ),
    # Gemma: llama-like names; the embedding module multiplies by sqrt(d_model) itself, so `embed`'s output
    # is what `inputs_embeds` takes (tracing's noise is added after the scaling).
    "gemma": Arch("gemma", **_LLAMA_LIKE),
    # Gemma 2 / 3: sandwich norms (attention and MLP outputs pass a post-norm before the residual add),
    # soft-capped attention scores (inside the attention module) and final logits, sliding-window layers
    # (config.layer_types, config.sliding_window; see `attention_window`).
    "gemma2": Arch("gemma2", **{**_LLAMA_LIKE, "ln2": "pre_feedforward_layernorm"},
                   attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                   final_softcap="final_logit_softcapping"),
    "gemma3_text": Arch("gemma3_text", **{**_LLAMA_LIKE, "ln2": "pre_feedforward_layernorm"},
                        attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                        final_softcap="final_logit_softcapping", rotary_by_layer_type=True),
    # Phi-3: fused qkv_proj and gate_up_proj; o_proj and down_proj are single linears as in Llama.
    "phi3": Arch("phi3", **_LLAMA_LIKE),
    # OLMo 2: no pre-norms; attention and MLP outputs are normalised before the residual add.
    "olmo2": Arch("olmo2", **{**_LLAMA_LIKE, "ln1": None, "ln2": None},
                  attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm"),
    # GPT-J: attention and MLP both read ln_1(resid_pre) and are added together (no ln_2).
    "gptj": Arch(
        "gptj", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
        attn="attn", attn_out_proj="attn.out_proj", mlp="mlp", mlp_down="mlp.fc_out", ln1="ln_1", ln2=None,
        rotary="transformer.rotary_emb", parallel_residual=True,
    ),
    # Mixtral: the MLP is a sparse mixture of experts (fused expert weights, no single down projection).
    "mixtral": Arch("mixtral", **{**_LLAMA_LIKE, "mlp_down": None}, moe=True),
}


def arch_for(hf_model: nn.Module) -> Arch:
    """The adapter of a Hugging Face causal LM, by its `config.model_type`."""
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in ARCHS:
        raise ValueError(
            f"model: architecture {model_type!r} is not supported; expected one of {sorted(ARCHS)} "
            "(add an entry to workbench.arch.ARCHS)"
        )
    arch = ARCHS[model_type]
    if model_type == "gpt_neox" and not getattr(hf_model.config, "use_parallel_residual", True):
        arch = Arch(**{**arch.__dict__, "parallel_residual": False})
    return arch


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def module_device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device a module's weights live on (its layer's device in a model split over devices); `default`
    for a module without parameters."""
    param = next(module.parameters(), None)
    if param is None:
        if default is None:
            raise ValueError(f"module: {type(module).__name__} has no parameters to place it on a device")
        return default
    return param.device


# -- per-layer attention facts read from the config ------------------------------------------------------

def attention_window(hf_model: nn.Module, layer: int) -> int | None:
    """The sliding window of `layer`'s attention (a key at position k is visible from query q only if
    q - k < window), or None for full causal attention.

    Families with `config.layer_types` (Gemma 2/3, Qwen2/3) window only their "sliding_attention"
    layers; the others (Mistral, Phi-3, Mixtral) window every layer when `sliding_window` is set.
    """
    cfg = hf_model.config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if window is None or (types is not None and types[layer] != "sliding_attention"):
        return None
    return int(window)


def rotary_tables(hf_model: nn.Module, arch: Arch, x, positions) -> list | None:
    """The rotary (cos, sin) a block takes as `position_embeddings`, one per layer, or None without rotary."""
    if arch.rotary is None:
        return None
    rotary = get_module(hf_model, arch.rotary)
    cfg = hf_model.config.get_text_config()
    n_layers = cfg.num_hidden_layers
    if not arch.rotary_by_layer_type:
        table = rotary(x, positions)
        return [table] * n_layers
    tables = {t: rotary(x, positions, t) for t in set(cfg.layer_types)}
    return [tables[cfg.layer_types[l]] for l in range(n_layers)]


def final_softcap(hf_model: nn.Module, arch: Arch) -> float | None:
    """The c of the final logit soft-capping c * tanh(logits / c) this model's config sets, or None."""
    return getattr(hf_model.config.get_text_config(), arch.final_softcap, None) if arch.final_softcap else None


def final_logits(hf_model: nn.Module, arch: Arch, logits):
    """Logits after the family's final soft-capping, c * tanh(logits / c) (Gemma 2/3), as the model's forward."""
    cap = final_softcap(hf_model, arch)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def float32_logits(hf_model: nn.Module, arch: Arch, resid: torch.Tensor) -> torch.Tensor:
    """Logits [..., d_vocab] in float32 from final residuals [..., d_model] of any dtype: the final norm,
    unembedding and final soft-capping run in float32 (float32 copies of their weights, made per call).

    Why: in bfloat16 a logit near 16 is rounded to a multiple of 1/16, coarser than most cells of a patching
    grid differ; the residual itself keeps the model's dtype (that loss is the model's, not the metric's).
    In a float32 model this is exactly unembed(final_norm(resid)).
    """
    def run32(module, x):
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in [*module.named_parameters(), *module.named_buffers()]}
        x = x.to(module_device(module, x.device))  # a model split over devices: x follows the module
        return torch.func.functional_call(module, state, (x,))

    norm, unembed = get_module(hf_model, arch.final_norm), get_module(hf_model, arch.unembed)
    return final_logits(hf_model, arch, run32(unembed, run32(norm, resid.float())))


# -- the KV cache: its keyword and layout differ between transformers releases and families -----------

_CACHE_KWARGS = ("cache", "layer_past", "past_key_values")  # newest first: transformers 5.2x renamed it `cache`


def cache_kwarg(block: nn.Module) -> str:
    """The keyword under which a decoder block takes its KV cache (read from its signature, so a renamed
    keyword is followed without a deprecation warning)."""
    params = inspect.signature(block.forward).parameters
    for name in _CACHE_KWARGS:
        if name in params:
            return name
    raise ValueError(f"model: cannot find the KV-cache keyword of {type(block).__name__}.forward; "
                     f"expected one of {_CACHE_KWARGS}")


def forward_cache(kwargs: dict):
    """The KV cache passed to a model's forward, under whichever keyword the caller used (None if none)."""
    for name in _CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def output_cache(output):
    """The KV cache a model's forward returned."""
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def layer_kv(cache, layer: int) -> tuple:
    """(keys, values) of one layer of a `DynamicCache`, each [batch, n_kv_heads, pos, d_head]."""
    entry = cache.layers[layer]
    return entry.keys, entry.values


def full_kv_cache():
    """An empty `DynamicCache` that keeps every layer's keys and values in full (one built from a config
    trims sliding-window layers to their window)."""
    from transformers import DynamicCache

    return DynamicCache()


def one_layer_cache(keys, values, layer: int):
    """A `DynamicCache` holding only `layer`'s keys and values (a block run alone reads its own layer)."""
    from transformers import DynamicCache

    past = DynamicCache()
    past.update(keys, values, layer)
    return past


def suffix_unsupported(hf_model: nn.Module, arch: "Arch", components=()) -> str | None:
    """Why the packed suffix-only engine path cannot run this model (or patches of these `components`), or None."""
    if not arch.suffix:
        return f"no suffix recipe for {arch.family}"
    from .sites import COMPONENTS

    inside = sorted(c for c in components if COMPONENTS[c][2] == "kernel")
    if inside:
        return (f"patches inside the attention kernel ({', '.join(COMPONENTS[c][0] for c in inside)}) run as full "
                "forwards: a packed suffix's queries see their keys laid out as [prefix, packed suffixes], so "
                "patterns, keys and values from a full run do not fit them")
    # Sliding-window layers run on the suffix path: its packed mask applies each layer's `attention_window`.
    return None


# -- attention patterns: the family's own eager kernel, run with the probabilities exposed -------------------

def eager_attention(attn_module: nn.Module):
    """The family's own eager attention kernel, `eager_attention_forward(module, q, k, v, mask, scaling=..., ...)`
    of its modeling file: softmax(q k^T * scaling (soft-capped where the family caps) + mask) -> (P V, P).
    Every supported family's attention module calls it through transformers' AttentionInterface when
    `config._attn_implementation` is "eager"; the hook layer routes it through `hooks.PATTERN_KERNEL` instead."""
    import sys

    fn = getattr(sys.modules[type(attn_module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"site: attn.hook_pattern: {type(attn_module).__name__} has no eager attention kernel "
                         "(eager_attention_forward) that forms the attention probabilities")
    return fn


def pattern_unsupported(hf_model: nn.Module, arch: "Arch") -> str | None:
    """Why attention patterns (attn.hook_pattern) cannot be read or patched on this model, or None where they can.

    Models loaded with SDPA or flash attention are fine: for a run with pattern sites the hook layer switches
    the model to the family's eager kernel (the same function, with the probabilities formed) and back."""
    cfg = hf_model.config.get_text_config()
    if getattr(cfg, "reorder_and_upcast_attn", False):  # GPT-2 option: a second eager path the interface never sees
        return "GPT-2's reorder_and_upcast_attn kernel does not go through the attention interface"
    return None


@dataclass(frozen=True)
class Dims:
    """Sizes of a model, read once from its config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


def dims_of(hf_model: nn.Module, arch: Arch) -> Dims:
    cfg = hf_model.config.get_text_config()
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    blocks = get_module(hf_model, arch.blocks)
    if arch.mlp_down is None:  # mixture of experts: the width of one expert
        d_mlp = cfg.intermediate_size
    else:
        down = get_module(blocks[0], arch.mlp_down)
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
        d_mlp = down.in_features if isinstance(down, nn.Linear) else down.weight.shape[0]
    return Dims(
        n_layers=len(blocks),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=get_module(hf_model, arch.unembed).weight.shape[0],
    )


def weight_out_in(module: nn.Module):
    """The weight of a linear map as an [out, in] view, whatever the storage (weight edits go through this).

    `nn.Linear` stores [out, in]; GPT-2's `Conv1D` stores [in, out], so its view is the transpose.
    In-place updates of the view (under `torch.no_grad()`) write to the parameter itself.
    """
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def norm_kind(norm: nn.Module) -> tuple[str, float]:
    """('layernorm' or 'rmsnorm', eps) of a norm module: LayerNorm centres then divides by
    sqrt(var + eps); RMSNorm (Llama, Qwen, Mistral) divides by sqrt(mean(x^2) + eps); both then scale by
    `weight` (and LayerNorm adds `bias`). Direct logit attribution freezes that scale."""
    if isinstance(norm, nn.LayerNorm):
        return "layernorm", float(norm.eps)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None or not hasattr(norm, "weight"):
        raise ValueError(f"model: unknown norm module {type(norm).__name__}; expected nn.LayerNorm or an RMSNorm "
                         "with `weight` and `variance_epsilon`")
    return "rmsnorm", float(eps)


def norm_gain(norm: nn.Module) -> torch.Tensor:
    """The per-channel gain g [d] a norm multiplies by after dividing by its scale: LayerNorm's `weight`; for an
    RMSNorm read off the module itself, g = norm(1) * sqrt(1 + eps), so that every parametrisation is covered
    (Llama's g = weight, Gemma's g = 1 + weight)."""
    kind, eps = norm_kind(norm)
    w = norm.weight
    if kind == "layernorm":
        return w if w is not None else torch.ones(norm.normalized_shape)
    with torch.no_grad():  # .forward: no hooks of the module's own (a post-norm is a site's module)
        ones = torch.ones(1, w.shape[-1], device=w.device, dtype=w.dtype)
        return (norm.forward(ones).float()[0] * (1 + eps) ** 0.5).to(w.dtype)


def frozen_norm(norm: nn.Module, x: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """`parts` [..., batch, d] of a norm's input x = sum(parts) [batch, d] as the norm maps them with its scale
    frozen at its value on x (no bias):

        part -> g * centre(part) / s(x),   s(x) = sqrt(mean(centre(x)^2) + eps)

    (centre() subtracts the mean over d for LayerNorm; the identity for RMSNorm). The parts then add up to
    norm(x) - bias exactly: the linearisation direct logit attribution and the post-norm families' head
    attributions use."""
    kind, eps = norm_kind(norm)
    if kind == "layernorm":
        parts = parts - parts.mean(-1, keepdim=True)
        x = x - x.mean(-1, keepdim=True)
    scale = (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [batch, 1]
    return (parts.float() / scale * norm_gain(norm).float()).to(parts.dtype)


def frozen_norm_preimage(norm: nn.Module, x: torch.Tensor, r: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """The inverse of `frozen_norm` in its parts: dx [batch, d], the change of an RMSNorm's input x [batch, d] that
    `frozen_norm` maps to the wanted output change r [batch, d] (the norm's scale frozen at s(x)):

        a = g / s(x),   s(x) = sqrt(mean(x^2) + eps)                 (g = `norm_gain`, [d])
        dx = a * r / (a^2 + mu),   mu = damping * mean(a^2)          (elementwise)

    damping = 0: the exact inverse dx = r * s(x) / g, frozen_norm(norm, x, dx) == r (channels with g = 0 cannot
    move: dx = 0 there). damping > 0: the minimiser of |a * dx - r|^2 + mu |dx|^2 (Tikhonov), which leaves the part
    of r on channels whose gain is small next to the typical one (a^2 << mu) instead of asking for a huge dx there
    (a huge dx would raise s(x) itself and shrink every channel). A LayerNorm is refused: its frozen map centres,
    so an r with a non-zero mean over d has no preimage."""
    kind, eps = norm_kind(norm)
    if kind != "rmsnorm":
        raise checks.fail("norm", "an RMSNorm (a LayerNorm's frozen map centres its input, so a change with a non-zero "
                          "mean has no preimage)", type(norm).__name__)
    a = norm_gain(norm).double() / (x.double().pow(2).mean(-1, keepdim=True) + eps).sqrt()  # g / s(x)  [batch, d]
    den = a * a + damping * a.pow(2).mean(-1, keepdim=True)
    return torch.where(den > 0, a * r.double() / den.clamp(min=torch.finfo(torch.float64).tiny), 0.0).to(r.dtype)
