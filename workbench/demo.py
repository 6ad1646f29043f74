"""The README's main job on the default model: a short causal-tracing sweep, then IOI activation patching."""
from __future__ import annotations

import time
from pathlib import Path

from .data.facts import DEFAULT_FACTS
from .core.loading import load_model
from .patching import activation_patching
from .core.io import write_json
from .patching.tracing import trace_facts

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def run_demo(out: Path, model="smollm2-135m", facts: int = 20, samples: int = 5) -> dict:
    """Trace `facts` known facts (round-robin over relations; resumable) into `out/trace`, then patch IOI.

    Writes the paper's Figure 1 per fact (`out/trace/figures/fact_<id>.png`), the averages of its
    Figures 2 and 3 (`out/trace/*.png`), and the IOI heatmaps (`out/ioi_<component>.png`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_model(model)
    t0 = time.perf_counter()
    trace = trace_facts(m, DEFAULT_FACTS, out / "trace", limit=facts, samples=samples, order="relations")
    t_trace = time.perf_counter() - t0
    mlp = trace["indirect_effect"].get("mlp", {}).get("last subject token", {}).get("by_layer")
    if mlp:
        peak = max(range(len(mlp)), key=mlp.__getitem__)
        print(f"traced {trace['n_traced']} facts in {t_trace:.0f} s: average total effect "
              f"{trace['average_total_effect']:.3f}; MLP indirect effect at the last subject token peaks at "
              f"layer {peak} ({mlp[peak]:.3f})")

    t0 = time.perf_counter()
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John",
                              components=["resid_pre", "attn_out", "mlp_out"], progress=True)
    t_patch = time.perf_counter() - t0
    summary = {"model": m.name, "trace": {"dir": "trace", "n_traced": trace["n_traced"], "seconds": round(t_trace, 1)},
               "ioi": {"clean": IOI_CLEAN, "corrupted": IOI_CORRUPT, "answer": " Mary", "foil": " John",
                       "seconds": round(t_patch, 2)}}
    for comp, arr in res.items():
        arr.plot(out / f"ioi_{comp}.png",
                 title=f"IOI: patching {comp} clean -> corrupted\nlogit diff ' Mary' - ' John' "
                       f"(clean {arr.meta['clean_metric']:.2f}, corrupted {arr.meta['corrupted_metric']:.2f})")
        arr.save(out / f"ioi_{comp}.json")
        summary["ioi"][comp] = {"clean_metric": arr.meta["clean_metric"], "corrupted_metric": arr.meta["corrupted_metric"]}
    write_json(out / "summary.json", summary, indent=2)
    print(f"wrote {out / 'trace'} (figures/, summary.json, average-effect plots) and "
          f"{', '.join(str(out / f'ioi_{c}.png') for c in res)}")
    return summary
