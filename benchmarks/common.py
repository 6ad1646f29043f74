"""What every benchmark shares: its command line, the device it ran on, and writing its JSON."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from workbench.core.io import atomic_write_text


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<name>-<device>.json)")
    return ap


def device_meta(device: str) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {"device": device, "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "versions": _versions("transformers", "transformer-lens", "nnsight", "sae-lens")}


def _versions(*dists) -> dict:
    """Installed versions of the packages a benchmark compares against (None where not installed)."""
    import importlib.metadata as md

    def get(d):
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            return None

    return {d: get(d) for d in dists}


def write_result(result: dict, name: str, device: str, out: str | None) -> Path:
    path = Path(out) if out else Path(__file__).parent / "results" / f"{name}-{device}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
