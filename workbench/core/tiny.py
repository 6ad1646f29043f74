"""Tiny seeded random-init models for tests: built from a config in seconds, no files but the tokenizer."""
from __future__ import annotations

import torch

from .default_model import default_tokenizer
from .model import Model
from . import checks

TINY_FAMILIES = ("llama", "gpt2", "qwen2", "gpt_neox", "mistral", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo2", "gptj", "mixtral")
TINY_WINDOW = 4  # the sliding window of tiny Gemma 2/3 layers: shorter than test prompts, so it matters


def tiny_model(family: str = "llama", *, seed: int = 0, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
               n_kv_heads: int = 2, d_mlp: int = 128, tokenizer=None) -> Model:
    """A small randomly initialised model built from a config with a fixed seed (no files but the tokenizer).

    Llama and Qwen2 use grouped-query attention with `n_kv_heads`; GPT-NeoX uses a parallel residual.
    """
    from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config)

    if family not in TINY_FAMILIES:
        raise checks.fail('family', f'one of {TINY_FAMILIES}', family)
    tok = tokenizer or default_tokenizer()
    vocab = len(tok)
    common = dict(vocab_size=vocab, initializer_range=0.1, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "gpt2":
        cfg = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp, n_positions=512,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif family == "llama":
        cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                          num_key_value_heads=n_kv_heads, intermediate_size=d_mlp, max_position_embeddings=512, **common)
    elif family == "qwen2":
        cfg = Qwen2Config(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                          num_key_value_heads=n_kv_heads, intermediate_size=d_mlp, max_position_embeddings=512,
                          tie_word_embeddings=False, **common)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                            intermediate_size=d_mlp, max_position_embeddings=512, rotary_pct=0.5, **common)
    else:
        cfg = _new_family_config(family, n_layers, d_model, n_heads, n_kv_heads, d_mlp, common)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    return Model(hf, tok, name=f"tiny-{family}")


def _new_family_config(family, n_layers, d_model, n_heads, n_kv_heads, d_mlp, common):
    """Configs of the families added for issue 13. Gemma 2/3 alternate sliding-window (`TINY_WINDOW`) and
    full layers and keep their soft-capping; Gemma and Gemma 3 use a head_dim unlike d_model / n_heads."""
    import transformers as tr

    llama_like = dict(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv_heads, intermediate_size=d_mlp, max_position_embeddings=512, **common)
    alternating = ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(n_layers)]
    if family == "mistral":  # sliding_window None: full attention, as Mistral 7B v0.2+
        return tr.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen3":  # q/k norms per head; head_dim unlike d_model / n_heads
        return tr.Qwen3Config(**llama_like, head_dim=2 * d_model // n_heads, tie_word_embeddings=False)
    if family == "gemma":
        return tr.GemmaConfig(**llama_like, head_dim=2 * d_model // n_heads)
    if family == "gemma2":
        return tr.Gemma2Config(**llama_like, head_dim=d_model // n_heads, query_pre_attn_scalar=d_model // n_heads,
                               sliding_window=TINY_WINDOW, layer_types=alternating,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    if family == "gemma3":
        return tr.Gemma3TextConfig(**llama_like, head_dim=2 * d_model // n_heads, query_pre_attn_scalar=d_model // n_heads,
                                   sliding_window=TINY_WINDOW, layer_types=alternating, final_logit_softcapping=3.0)
    if family == "phi3":
        return tr.Phi3Config(**llama_like, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    if family == "olmo2":
        return tr.Olmo2Config(**llama_like)
    if family == "gptj":
        return tr.GPTJConfig(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp, n_positions=512,
                             rotary_dim=d_model // n_heads // 2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             **common)
    if family == "mixtral":
        return tr.MixtralConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2)
    raise checks.fail('family', f'one of {TINY_FAMILIES}', family)
