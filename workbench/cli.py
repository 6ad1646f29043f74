"""`workbench` command line: models, info, prepare, demo, patch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_prepare(args) -> int:
    from .models import prepare_default_model

    print(f"default model ready at {prepare_default_model()}")
    return 0


def _cmd_models(args) -> int:
    from .models import DEFAULT_MODEL, TINY_FAMILIES, cache_dir, default_model_dir, locate_default_gguf

    try:
        gguf = str(locate_default_gguf())
    except FileNotFoundError as e:
        gguf = f"missing ({e})"
    print(f"{DEFAULT_MODEL:<16} embedded default, SmolLM2-135M-Instruct Q4_1")
    print(f"{'':<16} GGUF file: {gguf}")
    print(f"{'':<16} converted: {default_model_dir() if (default_model_dir() / 'model.safetensors').is_file() else 'not yet (runs on first use)'}")
    for fam in TINY_FAMILIES:
        print(f"{'tiny-' + fam:<16} tiny random {fam} (seeded, for tests)")
    print(f"{'<path or id>':<16} any local Hugging Face causal LM directory, or a hub id with network access")
    print(f"cache: {cache_dir()}  (set WORKBENCH_CACHE to move it)")
    return 0


def _cmd_info(args) -> int:
    from .models import load_model

    m = load_model(args.model)
    d = m.dims
    info = {"name": m.name, "family": m.arch.family, "n_layers": d.n_layers, "d_model": d.d_model,
            "n_heads": d.n_heads, "n_kv_heads": d.n_kv_heads, "d_head": d.d_head, "d_mlp": d.d_mlp,
            "d_vocab": d.d_vocab, "parameters": sum(p.numel() for p in m.hf.parameters()),
            "fingerprint": m.fingerprint, "device": str(m.device)}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), model=args.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workbench", description="mechanistic-interpretability workbench")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the embedded default model into the cache (once)").set_defaults(fn=_cmd_prepare)
    sub.add_parser("models", help="what can be loaded, what is cached").set_defaults(fn=_cmd_models)
    s = sub.add_parser("info", help="architecture facts of a model")
    s.add_argument("--model", default="smollm2-135m")
    s.set_defaults(fn=_cmd_info)
    s = sub.add_parser("demo", help="the main demo on the default model; writes figures")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--out", default="out/demo")
    s.set_defaults(fn=_cmd_demo)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
