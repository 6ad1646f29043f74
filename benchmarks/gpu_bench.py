"""GPU benchmark: random-init models built from real configs (benchmarks/configs/*.json: SmolLM2-135M,
Llama-3.2-1B, Gemma-2-2B and Llama-3-8B shapes; speed does not depend on weight values, and weights cannot
be copied to the GPU machine). For each model, in one process and on the same random weights:

- the full resid_pre patching grid of one IOI-length pair and of 8 pairs: workbench, TransformerLens's
  `get_act_patch_resid_pre` (through a TransformerBridge over a copy of the built HF model, where the
  bridge can be built offline), nnsight with batched invokes, and the plain one-forward-per-patch loop,
  checked to agree (float32: within 1e-4; half precision: Spearman >= 0.99 and the same argmax cell);
- causal tracing of one fact against the research-structured loop;
- tokens/s of a plain batched forward (the roofline the engine's rate is compared with).

Writes benchmarks/results/gpu-<device>.json (after every model, so a cut-off run keeps what it measured).

    python benchmarks/gpu_bench.py [--device cuda] [--models smollm2-135m,llama-3.2-1b,...] [--smoke]

`--smoke` shrinks the SmolLM2 and Gemma-2 configs to 2 layers of width 64 and the tokenizer's vocabulary
(same family, window, soft-capping and rope settings), runs 2 pairs (8-pair baselines: nnsight only) and a
2-sample trace: a CPU check that the script works end to end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import workbench as wb
from common import device_meta, parser, write_result
from patching import plain_throughput, run_nnsight, run_reference, run_transformer_lens, timed
from workbench.core.default_model import default_tokenizer
from workbench.data.ioi import ioi_pairs
from workbench.patching.reference import research_trace_loop
from workbench.patching.tracing import KINDS, embedding_noise_std, trace_fact

CONFIGS = Path(__file__).parent / "configs"
PROMPT, SUBJECT, ANSWER = "The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris"
# model -> (dtype, baselines run on the 8-pair grid). The 8B shape runs in bfloat16 (three float32 copies, for
# workbench, the bridge and nnsight, would not fit one 80 GB GPU) and skips the slowest baselines on 8 pairs
# to keep the whole script under 8 minutes.
MODELS = {
    "smollm2-135m": ("float32", ("transformer_lens", "nnsight", "reference_loop")),
    "llama-3.2-1b": ("float32", ("transformer_lens", "nnsight")),
    "gemma-2-2b": ("float32", ("transformer_lens", "nnsight")),
    "llama-3-8b": ("bfloat16", ("nnsight",)),
}
SMOKE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, vocab_size=49152)
SMOKE_MODELS = "smollm2-135m,gemma-2-2b"  # one Llama shape, and the sliding-window / soft-capped Gemma 2 shape


def build(name: str, device: str, dtype: torch.dtype, smoke: bool, tokenizer) -> wb.Model:
    """A seeded random-init model from the committed config, built directly on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    cfg.pop("_source", None)
    if smoke:
        cfg.update({k: v for k, v in SMOKE.items() if k in cfg or k == "head_dim"})
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    return wb.Model(hf.eval(), tokenizer, name=f"random-{name}{'-smoke' if smoke else ''}")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation with ties averaged (grids have many exactly tied cells)."""
    def ranks(x):
        x = x.flatten().double()
        return (x[None] < x[:, None]).sum(1).double() + ((x[None] == x[:, None]).sum(1).double() + 1) / 2
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def patching_case(model, pairs, device, baselines, invokes_per_trace=64) -> dict:
    sweep = dict(clean=[p["clean"] for p in pairs], corrupted=[p["corrupted"] for p in pairs],
                 answer=[p["answer"] for p in pairs], foil=[p["foil"] for p in pairs])
    clean = torch.cat([model.to_tokens(p["clean"]) for p in pairs])
    corrupt = torch.cat([model.to_tokens(p["corrupted"]) for p in pairs])
    ans = torch.tensor([model.to_single_token(p["answer"]) for p in pairs], device=model.device)
    foil = torch.tensor([model.to_single_token(p["foil"]) for p in pairs], device=model.device)
    L, T = model.dims.n_layers, clean.shape[1]
    res = {"n_pairs": len(pairs), "n_tokens": T, "n_patches": L * T * len(pairs), "runs": {}}

    def engine():
        out = wb.patching.activation_patching(model, **sweep, skip_identical=False)["resid_pre"]
        return torch.as_tensor(out.values), out.meta["engine"]

    makers = {
        "transformer_lens": lambda: run_transformer_lens(model, clean, corrupt, ans, foil,
                                                         name=f"local-{model.arch.family}", dtype=model.hf.dtype),
        "nnsight": lambda: run_nnsight(model, clean, corrupt, ans, foil, invokes_per_trace),
        "reference_loop": lambda: run_reference(model, clean, corrupt, ans, foil),
    }
    values = {}
    for name in ("workbench", *baselines):
        try:
            fn = engine if name == "workbench" else makers[name]()
            out, seconds, peak = timed(fn, device)
        except Exception as e:  # a baseline that cannot be built for this family is reported, not fatal
            res["runs"][name] = {"unavailable": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  {name:<18} unavailable: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        vals, meta = out if isinstance(out, tuple) else (out, None)
        values[name] = vals.float().cpu()
        res["runs"][name] = {"seconds": round(seconds, 3), "peak_mb": round(peak, 1), **({"engine": meta} if meta else {})}
        print(f"  {name:<18} {seconds:8.2f} s   peak +{peak:8.1f} MB", flush=True)

    ours = values["workbench"]
    exact = model.hf.dtype == torch.float32
    agree = True
    for name, v in values.items():
        r = res["runs"][name]
        r["max_abs_diff_vs_workbench"] = float((v - ours).abs().max())
        r["spearman_vs_workbench"] = spearman(v, ours)
        r["same_argmax"] = bool(v.argmax() == ours.argmax())
        ok = r["max_abs_diff_vs_workbench"] < 1e-4 if exact else (r["spearman_vs_workbench"] >= 0.99 and r["same_argmax"])
        agree &= ok
    res["agree"] = agree
    res["agreement_rule"] = "max abs diff < 1e-4" if exact else "Spearman >= 0.99 and same argmax cell"
    w = res["runs"]["workbench"]["seconds"]
    res["speedup"] = {f"workbench_vs_{k}": round(res["runs"][k]["seconds"] / w, 2) for k in values if k != "workbench"}
    eng = res["runs"]["workbench"]["engine"]
    per_call = eng["token_layers"] / max(1, eng["calls"])
    plain = plain_throughput(model, int(per_call), T)
    res["efficiency"] = {"engine_token_layers_per_s": round(eng["token_layers"] / w),
                         "plain_forward_token_layers_per_s_same_batch": round(plain),
                         "ratio": round(eng["token_layers"] / w / plain, 3)}
    return res


def tracing_case(model, device, samples, window) -> dict:
    nu = 3 * embedding_noise_std(model, [SUBJECT])
    tr, ours, _ = timed(lambda: trace_fact(model, PROMPT, SUBJECT, ANSWER, noise_std=nu, samples=samples, window=window), device)
    span = model.find_span(PROMPT, SUBJECT)
    eps = nu * torch.randn(samples, len(span), model.dims.d_model, generator=torch.Generator().manual_seed(0))
    ref, loop, _ = timed(lambda: {k: research_trace_loop(model, PROMPT, SUBJECT, ANSWER, eps.to(model.device), window, k)
                                  for k in KINDS}, device)
    diff = max(float(np.abs(tr.scores[k] - ref[k]).max()) for k in KINDS)
    tol = 1e-4 if model.hf.dtype == torch.float32 else 2e-2
    print(f"  tracing: workbench {ours:.2f} s, research loop {loop:.2f} s ({loop / ours:.1f}x), max diff {diff:.1e}", flush=True)
    return {"samples": samples, "window": window, "n_tokens": len(tr.tokens), "workbench_seconds": round(ours, 3),
            "research_loop_seconds": round(loop, 3), "speedup": round(loop / ours, 2), "max_abs_diff": diff,
            "tolerance": tol, "agree": diff < tol}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--models", default=None, help=f"comma-separated, of {list(MODELS)} (default: all; "
                    f"with --smoke: {SMOKE_MODELS})")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 pairs, a 2-sample trace (CPU, ~1 min)")
    args = ap.parse_args(argv)
    models = args.models or (SMOKE_MODELS if args.smoke else ",".join(MODELS))
    names = [m.strip() for m in models.split(",") if m.strip()]
    for n in names:
        if n not in MODELS:
            raise ValueError(f"models: unknown model {n!r}; expected some of {list(MODELS)}")
    n_pairs, samples, window = (2, 2, 2) if args.smoke else (args.pairs, 10, 10)
    tok = default_tokenizer()
    result = {"benchmark": "GPU: patching grids, tracing and plain forward, random-init models from real configs",
              **device_meta(args.device), "smoke": args.smoke, "models": {}}
    tag = f"gpu{'-smoke' if args.smoke else ''}"
    for name in names:
        dtype_name, baselines8 = MODELS[name]
        baselines8 = ("nnsight",) if args.smoke else baselines8
        model = build(name, args.device, getattr(torch, dtype_name), args.smoke, tok)
        print(f"{name}: {model!r}, {dtype_name}", flush=True)
        pairs = ioi_pairs(model, n_pairs)
        entry = {"config": f"benchmarks/configs/{name}.json", "dtype": dtype_name,
                 "n_params": sum(p.numel() for p in model.hf.parameters())}
        T = model.to_tokens(pairs[0]["clean"]).shape[1]
        tokens = plain_throughput(model, 4096 if args.device == "cuda" else 256, T) / model.dims.n_layers
        entry["plain_forward_tokens_per_s"] = round(tokens)
        print(f"  plain batched forward: {tokens:,.0f} tokens/s", flush=True)
        entry["one_pair"] = patching_case(model, pairs[:1], args.device, ("transformer_lens", "nnsight", "reference_loop"))
        entry[f"{n_pairs}_pairs"] = patching_case(model, pairs, args.device, baselines8)
        entry["tracing"] = tracing_case(model, args.device, samples, window)
        result["models"][name] = entry
        write_result(result, tag, args.device, args.out)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result["all_agree"] = all(e[k]["agree"] for e in result["models"].values()
                              for k in e if isinstance(e[k], dict) and "agree" in e[k])
    print(f"all agree: {result['all_agree']}")
    write_result(result, tag, args.device, args.out)
    return result


if __name__ == "__main__":
    main()
