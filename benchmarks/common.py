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


def add_model(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--model: any name `wb.load_model` takes (default: the embedded default, smollm2-135m)."""
    ap.add_argument("--model", default="smollm2-135m", help="a name or path load_model takes (e.g. gemma-3-270m)")
    return ap


def result_name(name: str, model_name: str) -> str:
    """The result file's stem: `name` on the default model, `name-<model>` on any other, so that one
    benchmark's runs on two models sit side by side in benchmarks/results/."""
    return name if model_name == "smollm2-135m" else f"{name}-{model_name}"


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
