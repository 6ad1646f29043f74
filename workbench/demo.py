"""The README's main job: residual-stream patching on an IOI prompt pair with the default model."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .models import load_model
from .patching import activation_patching
from .results import atomic_write_text

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def run_demo(out: Path, model="smollm2-135m") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_model(model)
    t0 = time.perf_counter()
    res = activation_patching(m, IOI_CLEAN, IOI_CORRUPT, " Mary", " John",
                              components=["resid_pre", "attn_out", "mlp_out"], progress=True)
    seconds = time.perf_counter() - t0
    summary = {"model": m.name, "clean": IOI_CLEAN, "corrupted": IOI_CORRUPT, "answer": " Mary", "foil": " John",
               "seconds": round(seconds, 2)}
    for comp, arr in res.items():
        arr.plot(out / f"ioi_{comp}.png",
                 title=f"IOI: patching {comp} clean -> corrupted\nlogit diff ' Mary' - ' John' "
                       f"(clean {arr.meta['clean_metric']:.2f}, corrupted {arr.meta['corrupted_metric']:.2f})")
        arr.save(out / f"ioi_{comp}.json")
        summary[comp] = {"clean_metric": arr.meta["clean_metric"], "corrupted_metric": arr.meta["corrupted_metric"]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"wrote {', '.join(str(out / f'ioi_{c}.png') for c in res)} ({seconds:.1f} s of patching)")
    return summary
