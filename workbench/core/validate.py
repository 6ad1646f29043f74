"""Validation at load: a few-token check that the architecture table (`core.arch`) describes the model it was
given, so that a wrong or missing table entry is refused before any analysis reads a wrong module.

Checks, in order (each failure names the check, the layer and the module path):

1. modules:   every role of the table resolves to a module of the expected kind and width;
2. cache:     the cached resid_pre of each layer equals Hugging Face's hidden state, resid_post of the last
              layer through the final norm equals its last hidden state, and through the unembedding (and the
              final soft-capping) equals the model's logits;
3. residual:  what each block adds equals its attention and MLP contributions, post-norms included,
              resid_post - resid_pre = attn_out + mlp_out, and resid_pre of layer l + 1 = resid_post of layer l;
4. outputs:   attn_out = post_norm(W_O z) and mlp_out = post_norm(W_down mlp_post) (no post-norm: the
              projection alone), so z and mlp_post are the inputs of what the block adds;
5. patterns:  attention probabilities are non-negative and sum to one over keys;
6. intervene: zeroing z and mlp_post at the middle layer changes the logits (the hooks sit in the forward).

Tolerances are relative to the largest residual value: 1e-4 in float32, 3e-2 in half precision (a wrong module
is off by order one). The cost is one forward of three copies of a 6-token prompt with every site cached, the
last position unembedded, and the block projections applied once more (measured in docs/models.md).

`validate_once` (what `load_model` calls) runs this once per model: a pass is remembered by a key of the model's
fingerprint (every weight), its architecture table entry, dtype, device type and attention implementation, and
the workbench, torch and transformers versions, in this process and in `validated/KEY.json` under the cache
dir, so a second load (and every Ray worker on the machine) reads the verdict instead of running the forward.
A failure is never remembered.
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .arch import final_logits, get_module, norm_kind
from .interventions import Scale
from .sites import Site

VALIDATION_PROMPT = "The quick brown fox jumps over"


class ValidationError(ValueError):
    """A model whose architecture table entry does not describe it (raised at load; `validate=False` skips)."""


def _fail(check: str, layer: int | None, path: str, what: str):
    where = "" if layer is None else f"layer {layer}, "
    raise ValidationError(f"validate: the {check} check failed at {where}module {path!r}: {what} (the architecture "
                          "table entry in workbench.core.arch.ARCHS does not describe this model; load with "
                          "validate=False to skip the checks)")


def _linear_widths(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of an nn.Linear or a GPT-2 Conv1D, None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and w is not None and w.ndim == 2:
        return w.shape[0], w.shape[1]
    return None


def _check_modules(model) -> None:
    arch, d = model.arch, model.dims
    for role in ("embed", "final_norm", "unembed") + (("rotary",) if arch.rotary else ()):
        try:
            mod = get_module(model.hf, arch.path(role))
        except AttributeError as e:
            _fail("modules", None, arch.path(role), f"no such module ({e})")
        if role == "final_norm":
            try:
                norm_kind(mod)
            except ValueError as e:
                _fail("modules", None, arch.path(role), str(e))
    blocks = model._blocks
    want = {"attn_out_proj": (d.n_heads * d.d_head, d.d_model), "mlp_down": (d.d_mlp, d.d_model)}
    roles = ["attn", "mlp", "attn_out_proj", "mlp_down", "ln1", "ln2", "attn_out", "mlp_out"]
    for l in range(d.n_layers):
        for role in roles:
            path = getattr(arch, role)
            if path is None:
                continue
            try:
                mod = get_module(blocks[l], path)
            except AttributeError as e:
                _fail("modules", l, f"{arch.blocks}.{l}.{path}", f"no such module ({e})")
            if role in want and _linear_widths(mod) != want[role]:
                _fail("modules", l, f"{arch.blocks}.{l}.{path}", f"expected a linear map {want[role][0]} -> "
                      f"{want[role][1]} ({role}), got {type(mod).__name__} {_linear_widths(mod)}")
            if role in ("ln1", "ln2") or (role in ("attn_out", "mlp_out") and path != getattr(arch, role[:-4])):
                try:
                    norm_kind(mod)
                except ValueError as e:
                    _fail("modules", l, f"{arch.blocks}.{l}.{path}", str(e))


def validate_model(model, prompt: str = VALIDATION_PROMPT) -> dict:
    """Run the checks above on `model` (a `workbench.Model`); raise `ValidationError` naming the first failure.

    Returns {check: largest error relative to the residual scale} for the numeric checks."""
    arch, L = model.arch, model.dims.n_layers
    _check_modules(model)
    ids, _ = model.encode(prompt)
    components = ["resid_pre", "resid_post", "attn_out", "mlp_out", "z", "pattern"]
    components += [] if arch.moe else ["mlp_post"]
    sites = [Site(l, c) for l in range(L) for c in components]
    # One forward of 1 + 2 copies of the prompt: row 0 is cached and checked; rows 1 and 2 have z and mlp_post of
    # the middle layer zeroed (check 6). Logits of the last position only: a 262k-row unembedding would dominate.
    mid = L // 2
    probes = [("z", "attn_out_proj")] + ([] if arch.moe else [("mlp_post", "mlp_down")])
    rows = ids.expand(1 + len(probes), -1)
    zeroed = [Scale(Site(mid, comp), factor=0.0, rows=[i + 1]) for i, (comp, _) in enumerate(probes)]
    with torch.no_grad(), model.hooks(zeroed, sites, input_shape=tuple(rows.shape)) as cache:
        out = model.hf(input_ids=rows, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    logits, hs = out.logits[:1], [h[:1] for h in out.hidden_states]
    at = lambda l, c: cache[Site(l, c).name][:1]  # noqa: E731
    half = logits.dtype in (torch.float16, torch.bfloat16)
    scale = max(at(l, "resid_post").abs().max().item() for l in range(L)) or 1.0
    tol = 3e-2 if half else 1e-4
    errors: dict[str, float] = {}

    def check(name, layer, path, got, want, what):
        err = (got.float() - want.float()).abs().max().item() / scale
        errors[name] = max(errors.get(name, 0.0), err)
        if not err <= tol:  # also catches NaN
            _fail(name, layer, path, f"{what} differ by {err:.3g} of the residual scale (tolerance {tol:g})")

    block = lambda l: f"{arch.blocks}.{l}"  # noqa: E731
    with torch.no_grad():
        # 2. the cache against Hugging Face's own hidden states and logits
        if len(hs) != L + 1:
            _fail("cache", None, arch.blocks, f"the model returns {len(hs)} hidden states for {L} blocks")
        for l in range(L):
            check("cache", l, block(l), at(l, "resid_pre"), hs[l], "resid_pre and Hugging Face's hidden state")
        final = get_module(model.hf, arch.path("final_norm"))(at(L - 1, "resid_post"))
        check("cache", L - 1, arch.final_norm, final, hs[L], "the final norm of resid_post and the last hidden state")
        # the first 4096 logits (a slice of the unembedding, as its forward computes them)
        unembed, k = get_module(model.hf, arch.unembed), 4096
        bias = None if getattr(unembed, "bias", None) is None else unembed.bias[:k]
        unembedded = final_logits(model.hf, arch, torch.nn.functional.linear(final[:, -1:], unembed.weight[:k], bias))
        lscale = logits.abs().max().item() or 1.0
        err = (unembedded - logits[..., :k]).abs().max().item() / lscale
        errors["logits"] = err
        if not err <= tol:
            _fail("cache", L - 1, arch.unembed, f"unembed(final_norm(resid_post)) and the model's logits differ by "
                  f"{err:.3g} of the logit scale (tolerance {tol:g}; a final soft-capping missing from the table?)")
        for l in range(L):
            # 3. the residual-stream identity
            added = at(l, "resid_post") - at(l, "resid_pre")
            parts = f"{block(l)}.{arch.path('attn_out')} + {block(l)}.{arch.path('mlp_out')}"
            check("residual", l, parts, added, at(l, "attn_out") + at(l, "mlp_out"),
                  "what the block adds and attn_out + mlp_out")
            if l + 1 < L:
                check("residual", l + 1, block(l + 1), at(l + 1, "resid_pre"), at(l, "resid_post"),
                      "resid_pre and the previous block's resid_post")
            # 4. z and mlp_post feed what the block adds
            for comp, src, proj in (("attn_out", "z", "attn_out_proj"), ("mlp_out", "mlp_post", "mlp_down")):
                if comp == "mlp_out" and arch.moe:
                    continue
                x = at(l, src)
                y = model.module(proj, l)(x.flatten(-2) if src == "z" else x)
                if getattr(arch, comp) is not None:  # a post-norm between the projection and the residual add
                    y = model.module(comp, l)(y)
                check("outputs", l, f"{block(l)}.{arch.path(proj)}", y, at(l, comp),
                      f"{comp} and the {proj} output of {src}")
            # 5. attention probabilities
            p = at(l, "pattern")
            err = max((p.sum(-1) - 1).abs().max().item(), (-p).clamp(min=0).max().item())
            errors["patterns"] = max(errors.get("patterns", 0.0), err)
            if not err <= (1e-2 if half else 1e-5):
                _fail("patterns", l, f"{block(l)}.{arch.attn}", f"attention probabilities do not sum to one over "
                      f"keys (largest error {err:.3g})")
        # 6. an intervention at a site changes the output
        for i, (comp, role) in enumerate(probes):
            if torch.equal(out.logits[i + 1], logits[0]):
                _fail("intervene", mid, f"{block(mid)}.{arch.path(role)}", f"zeroing {Site(mid, comp).name} left "
                      "the logits unchanged (the hooked module is not in the forward path)")
    return errors


# passes of this process: key -> {check: error}
_PASSED: dict[str, dict] = {}


def validation_key(model) -> str:
    """What a verdict depends on (see the module docstring), hashed to 16 hex digits."""
    import sys

    import transformers

    version = sys.modules["workbench"].__version__  # the package above core (imported first; not imported here)
    p = next(model.hf.parameters())
    what = {"fingerprint": model.fingerprint, "arch": repr(model.arch), "dtype": str(p.dtype),
            "device": p.device.type, "attn": str(getattr(model.hf.config, "_attn_implementation", None)),
            "workbench": version, "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def validate_once(model) -> dict:
    """`validate_model(model)` unless this model already passed (in this process or in the cache dir)."""
    from .io import FileProblem, cache_dir, read_json, write_json

    key = validation_key(model)
    if key in _PASSED:
        return _PASSED[key]
    path = cache_dir() / "validated" / f"{key}.json"
    if path.is_file():
        try:
            record = read_json(path, "validated")
        except FileProblem:  # a damaged record is no verdict: validate again and write it anew
            record = None
        if isinstance(record, dict) and record.get("key") == key and isinstance(record.get("errors"), dict):
            _PASSED[key] = record["errors"]
            return record["errors"]
    errors = validate_model(model)
    _PASSED[key] = errors
    try:
        write_json(path, {"key": key, "model": model.name, "errors": errors})
    except OSError:  # a read-only cache dir: the verdict lives in this process only
        pass
    return errors
