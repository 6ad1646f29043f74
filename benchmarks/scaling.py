"""A causal-tracing sweep in-process and on 1 and 2 Ray workers of a local cluster on this machine: the
speed-up, Ray's overhead per item, and a projection of the full sweep on N GPUs.

    python benchmarks/scaling.py [--quick] [--model smollm2-135m] [--facts 8] [--samples 2]

Every configuration traces the same facts into its own folder and must give identical results (checked).
Ray's overhead per item is measured with items that do nothing (a round trip driver -> worker -> driver,
plus the driver's atomic write of the item file). Writes benchmarks/results/scaling-<device>.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a cluster of this machine: sockets on 127.0.0.1
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

import json
import tempfile
import time
from pathlib import Path

import torch

import workbench as wb
from common import device_meta, parser, write_result
from workbench.toolkit.sweep import SweepFolder
from workbench.toolkit import InProcess, RayExecutor, model_spec, run_items, start_local_cluster
from workbench.patching.tracing import load_traces, trace_facts


def noop(model, payload) -> dict:
    """An item that does nothing: what Ray and the sweep folder cost per item."""
    return {"i": payload}


def sweep(model, facts, out, executor, kw) -> float:
    t0 = time.perf_counter()
    trace_facts(model, facts, out, executor=executor, **kw)
    return time.perf_counter() - t0


def overhead(model, executor, n: int, folder: Path) -> float:
    s = SweepFolder(folder, {"noop": n}).start()
    t0 = time.perf_counter()
    run_items(s, [(i, i) for i in range(n)], noop, model, executor, progress=False)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny settings: 6 facts, 2 noise samples, resid only")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--facts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--kinds", default="resid,mlp,attn")
    ap.add_argument("--noop-items", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.facts, args.samples, args.kinds, args.noop_items = 6, 2, "resid", 40
    torch.set_num_threads(1)  # one thread per process, as each worker: equal results, fair comparison
    import ray

    model = wb.load_model(args.model)
    facts = wb.data.data_path("facts.jsonl")
    kw = dict(limit=args.facts, samples=args.samples, window=args.window, kinds=args.kinds, trace_unknown=True,
              figures=False, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="scaling-"))
    result = {"benchmark": "causal-tracing sweep, in-process vs Ray workers on one machine", **device_meta(args.device),
              "model": args.model, "facts": args.facts, "samples": args.samples, "window": args.window,
              "kinds": args.kinds, "cpu_count": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
              "note": "a shared machine (2 cores, several other jobs running): 2 workers compete with those jobs "
                      "for the cores, so the speed-up here is a lower bound"}
    seconds = {"in_process": sweep(model, facts, tmp / "in_process", InProcess(), kw)}
    print(f"in-process: {seconds['in_process']:.1f} s")
    t0 = time.perf_counter()
    start_local_cluster(ray, 2)
    result["ray_init_seconds"] = round(time.perf_counter() - t0, 2)
    spec = model_spec(model)
    for n in (1, 2):
        ex = RayExecutor(spec, workers=n)
        t0 = time.perf_counter()
        ex.start()
        result[f"ray_{n}_worker_start_seconds"] = round(time.perf_counter() - t0, 2)  # each loads the model once
        seconds[f"ray_{n}"] = sweep(model, facts, tmp / f"ray_{n}", ex, kw)
        print(f"ray, {n} worker(s): {seconds[f'ray_{n}']:.1f} s")
        if n == 1:
            result["ray_overhead_seconds_per_item"] = round(overhead(model, ex, args.noop_items, tmp / "noop"), 4)
        ex.close()
    ray.shutdown()
    ref = load_traces(tmp / "in_process")
    result["identical_results"] = all(
        all(torch.equal(torch.from_numpy(a.scores[k]), torch.from_numpy(b.scores[k])) for k in a.scores)
        for name in ("ray_1", "ray_2") for a, b in zip(ref, load_traces(tmp / name)))
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    result["seconds_per_fact"] = {k: round(v / args.facts, 3) for k, v in seconds.items()}
    result["speedup_2_vs_1_worker"] = round(seconds["ray_1"] / seconds["ray_2"], 2)
    result["speedup_2_workers_vs_in_process"] = round(seconds["in_process"] / seconds["ray_2"], 2)
    runs = [json.loads(x) for x in (tmp / "ray_2" / "runs.jsonl").read_text().splitlines()]
    result["ray_2_items_per_worker"] = {str(w): sum(r["worker"] == w for r in runs) for w in (0, 1)}
    # the work per item in CPU seconds (what each item costs its process) next to wall-clock seconds (what the
    # process waited, sharing the cores with other jobs): their ratio is the share of a core each worker got
    for name in seconds:
        log = [json.loads(x) for x in (tmp / name / "runs.jsonl").read_text().splitlines()]
        cpu, wall = sum(r["cpu_seconds"] for r in log), sum(r["seconds"] for r in log)
        result.setdefault("item_cpu_seconds_per_fact", {})[name] = round(cpu / len(log), 3)
        result.setdefault("core_share_per_worker", {})[name] = round(cpu / wall, 2)
    # cores the sweep got in all: the speed-up N workers can give is capped by it on a shared machine
    result["cores_used"] = {name: round(result["core_share_per_worker"][name] * (2 if name == "ray_2" else 1), 2)
                            for name in seconds}
    # The full sweep of ROME's known facts (1,209, 10 samples, all kinds) on N GPUs: items are independent, so
    # time ~ facts x (per-fact time / N + Ray's per-item overhead / N) + one model load per worker.
    full_cpu_fact = 54.0  # benchmarks/results/tracing-cpu.json: one fact, 10 samples, window 10, 3 kinds, 2 threads
    result["projection"] = {
        "facts": 1209, "per_fact_seconds_assumed": full_cpu_fact,
        "per_fact_source": "CPU, benchmarks/results/tracing-cpu.json (no GPU run in this session; replace with the "
                           "per-fact GPU time of benchmarks/gpu_bench.py when one exists)",
        "hours_by_workers": {str(n): round(1209 * (full_cpu_fact + result["ray_overhead_seconds_per_item"]) / n / 3600, 2)
                             for n in (1, 2, 4, 8, 16, 64)}}
    result["load_average_at_end"] = list(os.getloadavg())
    print(json.dumps({k: result[k] for k in ("seconds", "speedup_2_vs_1_worker", "ray_overhead_seconds_per_item",
                                             "identical_results")}, indent=1))
    write_result(result, "scaling", args.device, args.out)


if __name__ == "__main__":
    main()
