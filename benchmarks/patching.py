"""Benchmark: the full resid_pre patching grid on the default model, this engine against
TransformerLens 4.x, nnsight (one invoke per patch, batched in one trace) and a plain loop
(one full forward per patch), all in this process. Checks agreement, prints ratios, writes
benchmarks/results/patching-<device>.json.

    python benchmarks/patching.py [--device cpu|cuda] [--pairs 8] [--model gemma-3-270m] [--out FILE]

Every contender unembeds the last position only (nnsight and the loop pass `logits_to_keep=1`): on Gemma 3 270M
the 262k-row unembedding is 168M of its 270M parameters. A model the TransformerLens bridge has no adapter for
runs without it and the JSON says why (TransformerLens 3.9 has one for Gemma 3, so it runs there). The JSON also
records the load averages at start and end: on a shared machine the contenders, timed one after another, may
run at different loads.
"""
from __future__ import annotations

import copy
import os
import threading
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
from workbench.data.ioi import ioi_pairs


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or resident-set size sampled every 10 ms on CPU."""

    def __init__(self, device: str):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.top, self.running = self._rss(), self._rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.top = max(self.top, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak_mb = (self.top - self.base) / 2**20


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return out, seconds, mem.peak_mb


def logit_diff_fn(model, pairs):
    ans = torch.tensor([model.to_single_token(p["answer"]) for p in pairs], device=model.device)
    foil = torch.tensor([model.to_single_token(p["foil"]) for p in pairs], device=model.device)
    return ans, foil


def run_transformer_lens(model, clean, corrupt, ans, foil, name="local-smollm2", dtype=None):
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(model.hf).eval(),
                                                 tokenizer=copy.deepcopy(model.tokenizer), device=str(model.device),
                                                 **({"dtype": dtype} if dtype is not None else {}))

    def metric(logits):  # mean over pairs, as TransformerLens users write it
        last = logits[:, -1]
        return (last.gather(1, ans[:, None]) - last.gather(1, foil[:, None])).mean()

    def go():
        with torch.no_grad():
            _, clean_cache = bridge.run_with_cache(clean)
            return patching.get_act_patch_resid_pre(bridge, corrupt, clean_cache, metric)

    return go


def run_nnsight(model, clean, corrupt, ans, foil, invokes_per_trace: int):
    from nnsight import TransformersModel

    nn = TransformersModel(copy.deepcopy(model.hf).eval(), tokenizer=copy.deepcopy(model.tokenizer))
    blocks = nn.get(model.arch.blocks) if hasattr(nn, "get") else eval("nn." + model.arch.blocks)
    L, (n, T) = model.dims.n_layers, clean.shape

    def go():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean, [f"blocks.{l}.hook_resid_pre" for l in range(L)])
            jobs = [(l, p, i) for l in range(L) for p in range(T) for i in range(n)]
            outs = []
            for start in range(0, len(jobs), invokes_per_trace):
                saved = []
                with nn.trace(logits_to_keep=1) as tracer:
                    for l, p, i in jobs[start:start + invokes_per_trace]:
                        with tracer.invoke(corrupt[i:i + 1]):
                            blocks[l].input[:, p] = cache[f"blocks.{l}.hook_resid_pre"][i, p]
                            saved.append(nn.output.logits[:, -1].save())
                outs.extend(saved)
            last = torch.cat(outs)  # [jobs, vocab]
            idx = torch.tensor([i for _, _, i in jobs], device=last.device)
            ld = last.gather(1, ans[idx, None])[:, 0] - last.gather(1, foil[idx, None])[:, 0]
            return ld.reshape(L, T, n).mean(-1)

    return go


def run_reference(model, clean, corrupt, ans, foil):
    L, (n, T) = model.dims.n_layers, clean.shape

    def go():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean, [f"blocks.{l}.hook_resid_pre" for l in range(L)])
            out = torch.empty(L, T, n)
            for l in range(L):
                block = model.module("block", l)
                src = cache[f"blocks.{l}.hook_resid_pre"]
                for p in range(T):
                    for i in range(n):
                        def hook(mod, args, kwargs, i=i, p=p):
                            x = args[0].clone()
                            x[:, p] = src[i, p]
                            return (x, *args[1:]), kwargs
                        h = block.register_forward_pre_hook(hook, with_kwargs=True)
                        try:
                            last = model.hf(input_ids=corrupt[i:i + 1], use_cache=False, logits_to_keep=1).logits[:, -1]
                        finally:
                            h.remove()
                        out[l, p, i] = (last[0, ans[i]] - last[0, foil[i]]).item()
            return out.mean(-1)

    return go


def plain_throughput(model, n_tokens: int, T: int, repeats: int = 3) -> float:
    """Token-layers per second of a plain batched forward with about `n_tokens` tokens."""
    rows = max(1, round(n_tokens / T))
    ids = torch.randint(0, model.dims.d_vocab, (rows, T), device=model.device)
    with torch.no_grad():
        model.hf(input_ids=ids, use_cache=False)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.hf(input_ids=ids, use_cache=False)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return rows * T * model.dims.n_layers / best


def bench_case(model, pairs, device, invokes_per_trace, skip_slow=False, only=None) -> dict:
    sweep = dict(clean=[p["clean"] for p in pairs], corrupted=[p["corrupted"] for p in pairs],
                 answer=[p["answer"] for p in pairs], foil=[p["foil"] for p in pairs])
    clean = torch.cat([model.to_tokens(p["clean"]) for p in pairs])
    corrupt = torch.cat([model.to_tokens(p["corrupted"]) for p in pairs])
    ans, foil = logit_diff_fn(model, pairs)
    L, T = model.dims.n_layers, clean.shape[1]
    res = {"n_pairs": len(pairs), "n_tokens": T, "n_patches": L * T * len(pairs), "prompts": pairs[:2]}

    def engine(skip):
        def go():
            out = wb.patching.activation_patching(model, **sweep, skip_identical=skip)["resid_pre"]
            return torch.as_tensor(out.values), out.meta["engine"]
        return go

    runs = {}
    contenders = [("workbench", engine(True)), ("workbench_all_patches", engine(False))]
    if only is None or "transformer_lens" in only:
        try:
            contenders.append(("transformer_lens", run_transformer_lens(model, clean, corrupt, ans, foil)))
        except Exception as e:  # noqa: BLE001  the bridge has no adapter for this family
            res["transformer_lens_skipped"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"  transformer_lens skipped: {res['transformer_lens_skipped']}", flush=True)
    contenders += [("nnsight", run_nnsight(model, clean, corrupt, ans, foil, invokes_per_trace)),
                   ("reference_loop", run_reference(model, clean, corrupt, ans, foil))]
    contenders = [(n, f) for n, f in contenders if only is None or n.startswith("workbench") or n in only]
    for name, fn in contenders:
        out, seconds, peak = timed(fn, device)
        values, meta = out if isinstance(out, tuple) else (out, None)
        runs[name] = {"seconds": round(seconds, 3), "peak_mb": round(peak, 1), "values": values.float().cpu()}
        if meta:
            runs[name]["engine"] = meta
        print(f"  {name:<24} {seconds:8.2f} s   peak +{peak:7.1f} MB", flush=True)

    res["reference"] = "reference_loop" if "reference_loop" in runs else "nnsight"  # --only without the loop
    ref = runs[res["reference"]]["values"]
    for name, r in runs.items():
        r["max_abs_diff_vs_reference"] = float((r.pop("values") - ref).abs().max())
    res["agree_within_1e-4"] = all(r["max_abs_diff_vs_reference"] < 1e-4 for r in runs.values())
    ours = runs["workbench"]["seconds"]
    res["speedup"] = {f"workbench_vs_{k}": round(runs[k]["seconds"] / ours, 2) for k in runs if k != "workbench"}
    same = runs["workbench_all_patches"]["seconds"]
    res["speedup_all_patches"] = {f"vs_{k}": round(runs[k]["seconds"] / same, 2)
                                  for k in ("transformer_lens", "nnsight", "reference_loop") if k in runs}

    # Efficiency of the all-patches run: work actually done per second, over a plain batched forward's rate
    # at the engine's average batch (FLOPs per token-layer are the same in both, so token-layers stand in).
    eng = runs["workbench_all_patches"]["engine"]
    per_call = eng["token_layers"] / max(1, eng["calls"])
    engine_rate = eng["token_layers"] / same
    plain_rate = plain_throughput(model, int(per_call), T)
    res["efficiency"] = {"token_layers": eng["token_layers"], "full_grid_token_layers": L * T * L * T * len(pairs),
                         "avg_tokens_per_call": round(per_call, 1), "engine_token_layers_per_s": round(engine_rate),
                         "plain_forward_token_layers_per_s": round(plain_rate),
                         "efficiency": round(engine_rate / plain_rate, 3)}
    res["runs"] = runs
    return res


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--invokes-per-trace", type=int, default=64)
    ap.add_argument("--only", default=None, help="comma-separated competitors to run (transformer_lens, nnsight, "
                    "reference_loop; default all): a quick rerun of one ratio")
    add_model(ap)
    args = ap.parse_args(argv)
    only = None if args.only is None else args.only.split(",")
    if only is not None and not set(only) <= {"transformer_lens", "nnsight", "reference_loop"}:
        ap.error(f"--only: expected some of transformer_lens, nnsight, reference_loop; got {args.only!r}")
    model = wb.load_model(args.model, device=args.device)
    pairs = ioi_pairs(model, args.pairs)
    result = {"benchmark": f"resid_pre patching grid, {model.name}", "model": model.name, **device_meta(args.device),
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "cases": {}}
    for label, subset in [("one_pair", pairs[:1])] + ([(f"{args.pairs}_pairs", pairs)] if args.pairs > 1 else []):
        print(f"{label}: {len(subset)} pair(s) x {model.dims.n_layers} layers x "
              f"{len(model.to_tokens(subset[0]['clean'])[0])} positions", flush=True)
        case = bench_case(model, subset, args.device, args.invokes_per_trace, only=only)
        result["cases"][label] = case
        print(f"  agree within 1e-4: {case['agree_within_1e-4']}")
        for k, v in {**case["speedup"], **{f"all_patches_{k}": v for k, v in case["speedup_all_patches"].items()}}.items():
            print(f"  {k:<40} {v:7.2f}x")
        print(f"  efficiency {case['efficiency']['efficiency']:.2f}", flush=True)
    # the 1/5/15-minute load averages: on a shared machine, how many other jobs the in-run ratios ran beside
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_result(result, result_name("patching", model.name), args.device, args.out)
    return result


if __name__ == "__main__":
    main()
