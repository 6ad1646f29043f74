"""`Model`: a Hugging Face causal LM with its tokenizer, architecture adapter (`core.arch`), token helpers,
and runs with caches and interventions (`core.hooks`)."""
from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
from torch import Tensor

from .arch import arch_for, dims_of, get_module, module_device
from .hooks import check_logits, hooks as _hooks, run_until
from .interventions import Intervention
from .sites import COMPONENTS, Site, parse_site
from . import checks

class Model:
    """A causal LM with its tokenizer, architecture adapter, caches and interventions.

    Attributes: `hf` (the `PreTrainedModel`), `tokenizer`, `arch`, `dims` (n_layers, d_model,
    n_heads, n_kv_heads, d_head, d_mlp, d_vocab), `name`.
    """

    def __init__(self, hf_model, tokenizer, name: str | None = None):
        from transformers import PreTrainedModel

        if not isinstance(hf_model, PreTrainedModel):
            raise checks.fail('model', 'a transformers PreTrainedModel', type(hf_model).__name__)
        if tokenizer is None:
            raise ValueError("tokenizer: a tokenizer is required with an already-built model")
        self.arch = arch_for(hf_model)
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # keeps position ids of real tokens as in the single-prompt run
        self.dims = dims_of(hf_model, self.arch)
        self.name = name or getattr(hf_model.config, "_name_or_path", None) or self.arch.family
        self._blocks = get_module(hf_model, self.arch.blocks)

    def __repr__(self) -> str:
        d = self.dims
        return (f"Model({self.name!r}, {self.arch.family}, layers={d.n_layers}, d_model={d.d_model}, "
                f"heads={d.n_heads}/{d.n_kv_heads} kv, d_mlp={d.d_mlp}, device={self.device})")

    @property
    def device(self) -> torch.device:
        return module_device(self.hf)

    def to(self, device) -> "Model":
        self.hf.to(device)
        return self

    def module(self, where: str, layer: int | None = None) -> torch.nn.Module:
        """A module by its adapter role: 'block', 'attn', 'mlp', 'attn_out', 'mlp_out', 'attn_out_proj',
        'mlp_down', 'ln1', 'ln2' (with a layer), or 'embed', 'final_norm', 'unembed', 'rotary'."""
        if layer is None:
            return get_module(self.hf, self.arch.path(where))
        block = self._blocks[layer]
        return block if where == "block" else get_module(block, self.arch.path(where))

    @property
    def fingerprint(self) -> str:
        """16 hex digits naming the architecture and every weight, to key caches and refuse mismatched files.

        fingerprint = H(config without paths, names, versions and dtype ; for each tensor: name, shape,
        H(its float32 bytes))), H = xxh3-128. The same weights in another folder, on another device or
        upcast from bf16 give the same fingerprint; any weight changed by any amount gives another.
        Per-tensor hashes are cached on the tensor's version counter: a weight edited in place (ROME apply,
        then restore) is hashed again, the others are not. Cost on SmolLM2-135M (CPU): 0.05 s, then 3 ms.
        """
        import xxhash

        h = xxhash.xxh3_128(self.architecture_json().encode())
        cache = self.__dict__.setdefault("_tensor_hashes", {})
        for name, t in sorted(self.hf.state_dict(keep_vars=True).items()):
            key = (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape), tuple(t.stride()))
            if cache.get(name, (None,))[0] != key:
                flat = t.detach().float().cpu().contiguous()
                cache[name] = (key, xxhash.xxh3_128(flat.numpy()).digest())
            h.update(f"{name}{tuple(t.shape)}".encode() + cache[name][1])
        return h.hexdigest()[:16]

    def architecture_json(self) -> str:
        """The config as sorted JSON without what names where or how the model was loaded (`_name_or_path`
        and other `_` keys, `name_or_path`, `transformers_version`, `dtype`, `use_cache`)."""
        skip = {"name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}
        cfg = {k: v for k, v in self.hf.config.to_dict().items() if not k.startswith("_") and k not in skip}
        return json.dumps(cfg, sort_keys=True, default=str)

    @property
    def legacy_fingerprint(self) -> str:
        """The fingerprint of earlier releases (whole config incl. its load path, one weight in 4096), only to
        recognise files written before: compare with `matches_fingerprint`, never write it."""
        h = hashlib.sha256(json.dumps(self.hf.config.to_dict(), sort_keys=True, default=str).encode())
        for name, p in sorted(self.hf.state_dict().items()):
            flat = p.detach().reshape(-1)
            h.update(name.encode() + str(tuple(p.shape)).encode())
            h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def matches_fingerprint(self, fingerprint: str | None) -> bool:
        """True if a file's recorded fingerprint is this model's (or its legacy one, from an older release)."""
        return bool(fingerprint) and (fingerprint == self.fingerprint or fingerprint == self.legacy_fingerprint)

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int | None:
        """The context length the model was trained for (max_position_embeddings / n_positions), or None."""
        cfg = getattr(self.hf.config, "get_text_config", lambda: self.hf.config)()
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(n) if n else None

    def check_length(self, n_tokens: int, arg: str = "prompt") -> None:
        """Past the context length: an error with learned positions (there is no embedding for position
        n_ctx), a warning with rotary ones (they run, on positions the model never saw in training)."""
        n = self.n_ctx
        if n is None or n_tokens <= n:
            return
        if self.arch.rotary is None:
            raise ValueError(f"{arg}: {n_tokens} tokens, expected at most the model's context length {n} "
                             "(learned positions: there is no embedding past it)")
        warnings.warn(f"{arg}: {n_tokens} tokens, past the model's context length {n}: rotary positions the model "
                      "was not trained on; the numbers may mean little", stacklevel=3)

    def encode(self, inputs, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """str | list[str] | token ids [pos] or [batch, pos] -> (ids [batch, pos], mask or None).

        Lists of prompts are right-padded; the mask marks real tokens.
        """
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, Tensor):
            if inputs.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"tokens: expected integer token ids, got dtype {inputs.dtype}")
            ids = inputs[None] if inputs.ndim == 1 else inputs
            if ids.ndim != 2 or ids.shape[1] == 0:
                raise checks.fail('tokens', 'shape [batch, pos] with pos >= 1', tuple(inputs.shape))
            if (ids < 0).any() or (ids >= self.dims.d_vocab).any():
                raise ValueError(f"tokens: ids must lie in 0..{self.dims.d_vocab - 1}")
            self.check_length(ids.shape[1], "tokens")
            return ids.to(self.device), None if attention_mask is None else attention_mask.to(self.device)
        if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise checks.fail("prompt", "a non-empty string, a non-empty list of strings, or token ids", inputs)
        for i, text in enumerate(inputs):
            if not text:
                raise checks.fail(f"prompt[{i}]", "a non-empty string", text)
        enc = self.tokenizer(list(inputs), return_tensors="pt", padding=True)
        if enc.input_ids.shape[1] == 0:
            raise ValueError("prompt: tokenizes to no tokens")
        self.check_length(enc.input_ids.shape[1])
        mask = enc.attention_mask
        if mask.all():
            mask = None
        return enc.input_ids.to(self.device), None if mask is None else mask.to(self.device)

    def to_tokens(self, inputs) -> Tensor:
        """Token ids [batch, pos] (right-padded for several prompts of different lengths)."""
        return self.encode(inputs)[0]

    def to_str_tokens(self, inputs) -> list[str] | list[list[str]]:
        """The tokens as strings: one list for a single prompt, a list of lists for a batch (pads dropped)."""
        single = isinstance(inputs, str) or (isinstance(inputs, Tensor) and inputs.ndim == 1)
        ids, mask = self.encode(inputs)
        rows = [
            [self.tokenizer.decode([t]) for t, m in zip(row.tolist(), (mr.tolist() if mask is not None else [1] * len(row))) if m]
            for row, mr in zip(ids, mask if mask is not None else ids)
        ]
        return rows[0] if single else rows

    def to_single_token(self, text: str, arg: str = "answer") -> int:
        """The id of `text`, which must be exactly one token."""
        if not isinstance(text, str) or not text:
            raise checks.fail(arg, "a non-empty string", text)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ValueError(f"{arg}: {text!r} is {len(ids)} tokens {pieces}, expected exactly one token")
        return ids[0]

    def find_span(self, prompt: str, substring: str, occurrence: int = 0) -> range:
        """Token positions covering `substring` in `prompt` (e.g. the subject of a fact)."""
        if not prompt:
            raise checks.fail("prompt", "a non-empty string", prompt)
        if not substring:
            raise checks.fail("substring", "a non-empty string", substring)
        start = -1
        for _ in range(occurrence + 1):
            start = prompt.find(substring, start + 1)
            if start < 0:
                raise ValueError(f"substring: {substring!r} not found in prompt {prompt!r} (occurrence {occurrence})")
        end = start + len(substring)
        offsets = self.tokenizer(prompt, return_offsets_mapping=True).offset_mapping
        hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        return range(hit[0], hit[-1] + 1)

    @staticmethod
    def last_positions(ids: Tensor, mask: Tensor | None) -> Tensor:
        """Index of each row's last real token, [batch]."""
        if mask is None:
            return torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        return mask.long().sum(1) - 1

    def prefix_cache(self, cache, layer: int, rows: Tensor):
        """The KV cache one block, run alone on a suffix, reads for its prefix (the patching engine's fast path):
        `layer`'s keys and values of `cache` (a full forward's) for batch `rows`. A model whose blocks keep more
        state than their own keys and values overrides it (`diffing.ScaledFineTune`: the base blocks' cache)."""
        from .arch import layer_kv, one_layer_cache

        keys, values = layer_kv(cache, layer)
        rows = rows.to(keys.device)
        return one_layer_cache(keys[rows], values[rows], layer)

    # -- running --------------------------------------------------------------------------------

    def _forward_kwargs(self, inputs, attention_mask, inputs_embeds) -> tuple[dict, tuple[int, int]]:
        """Keyword arguments for the HF forward, and the [batch, pos] shape, from tokens/prompts or embeddings."""
        if inputs_embeds is not None:
            if inputs is not None:
                raise ValueError("inputs_embeds: give either inputs or inputs_embeds, not both")
            d = self.dims.d_model
            if not isinstance(inputs_embeds, Tensor) or inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != d:
                got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds).__name__
                raise checks.fail('inputs_embeds', f'shape [batch, pos, {d}]', got)
            self.check_length(inputs_embeds.shape[1], "inputs_embeds")
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}, tuple(inputs_embeds.shape[:2])
        ids, mask = self.encode(inputs, attention_mask)
        return {"input_ids": ids, "attention_mask": mask}, tuple(ids.shape)

    def forward(self, inputs, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [batch, pos, d_vocab]."""
        ids, mask = self.encode(inputs, attention_mask)
        return self.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits

    __call__ = forward

    def embed(self, inputs) -> Tensor:
        """Token embeddings [batch, pos, d_model] (what `inputs_embeds` replaces)."""
        return self.module("embed")(self.encode(inputs)[0])

    def all_sites(self, components: Sequence[str] | None = None) -> list[Site]:
        """Every site of `components` (default: every component this architecture has) at every layer."""
        if components is None:
            components = [c for c, (_, role, _, _) in COMPONENTS.items() if self.arch.has(role)]
        return [Site(l, c) for l in range(self.dims.n_layers) for c in components]

    def run_with_cache(
        self, inputs, sites: Iterable[str | Site] | None = None, *, interventions: Iterable[Intervention] = (),
        attention_mask: Tensor | None = None, grad: bool = False, inputs_embeds: Tensor | None = None,
        logits: bool = True,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """(logits, {hook name: activation}) for `sites` (default: every site of every layer).

        With `grad=True` the forward keeps its graph and the cached activations stay attached to it.
        `inputs_embeds` [batch, pos, d_model] replaces the token embeddings (then pass inputs=None).
        `logits=False` stops the forward after the last block that holds a site and returns (None, cache): the
        later blocks, the final norm and the unembedding never run (on a 262k vocabulary the unembedding is most
        of a small model's cost).
        """
        kwargs, shape = self._forward_kwargs(inputs, attention_mask, inputs_embeds)
        sites = self.all_sites() if sites is None else list(sites)
        interventions = list(interventions)
        with torch.set_grad_enabled(grad), _hooks(self, interventions, sites, input_shape=shape, detach=not grad) as cache:
            if logits:
                out = self.hf(**kwargs, use_cache=False).logits
            else:
                last = max((parse_site(s, self.dims.n_layers).layer for s in sites), default=None)
                if last is not None:  # no site: nothing to run
                    run_until(self.module("block", last), lambda: self.hf(**kwargs, use_cache=False))
                return None, cache
        check_logits(out, interventions)
        return out, cache

    def run_with_interventions(self, inputs, interventions: Iterable[Intervention], attention_mask: Tensor | None = None,
                               *, inputs_embeds: Tensor | None = None) -> Tensor:
        """Logits [batch, pos, d_vocab] of a forward with `interventions` applied."""
        kwargs, shape = self._forward_kwargs(inputs, attention_mask, inputs_embeds)
        interventions = list(interventions) if not isinstance(interventions, Intervention) else interventions
        with _hooks(self, interventions, input_shape=shape):
            logits = self.hf(**kwargs, use_cache=False).logits
        check_logits(logits, interventions)
        return logits

    @contextmanager
    def hooks(self, interventions: Iterable[Intervention] = (), cache_sites: Iterable[str | Site] = (), **kw):
        """Interventions active for the whole body (generation, training); yields the cache dict."""
        with _hooks(self, interventions, cache_sites, **kw) as cache:
            yield cache
