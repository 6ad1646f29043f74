"""The one place that knows where things live inside each supported architecture.

Every other module reaches blocks, attention, MLPs, norms and the unembedding through
`Arch`; no architecture-specific module names appear anywhere else.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.nn as nn


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
    ln1: str
    ln2: str
    rotary: str | None = None  # model-level rotary embedding module; None for learned absolute positions
    parallel_residual: bool = False  # attn and MLP both read resid_pre (GPT-NeoX, GPT-J)
    suffix: bool = True  # the packed suffix-only engine path knows this family's blocks


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


def one_layer_cache(keys, values, layer: int):
    """A `DynamicCache` holding only `layer`'s keys and values (a block run alone reads its own layer)."""
    from transformers import DynamicCache

    past = DynamicCache()
    past.update(keys, values, layer)
    return past


def suffix_unsupported(hf_model: nn.Module, arch: "Arch") -> str | None:
    """Why the packed suffix-only engine path cannot run this model, or None where it can."""
    if not arch.suffix:
        return f"no suffix recipe for {arch.family}"
    cfg = hf_model.config.get_text_config()
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
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
