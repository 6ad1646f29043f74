"""The README's causal-tracing reproduction: a resumable sweep over known facts of data/facts.jsonl
(round-robin over relations) on the default model (or `--model`), its headline numbers next to the paper's
GPT-2 XL ones. Writes benchmarks/results/tracing-reproduction.json (the command, the device, the summary);
on another model tracing-reproduction-<model>.json, its sweep in out/tracing-reproduction-<model>.

    python benchmarks/tracing_reproduction.py [--model NAME] [--facts 100] [--samples 10] [--trace-dir DIR]
                                              [--device cpu|cuda]

Re-running with the same --trace-dir resumes the sweep where it stopped.
"""
from __future__ import annotations

import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench as wb
from common import add_model, device_meta, parser, result_name, write_result
from workbench.data.facts import DEFAULT_FACTS
from workbench.patching.tracing import PAPER_GPT2_XL, compare_with_paper, reproduction, trace_facts


def main(argv=None) -> dict:
    ap = add_model(parser(__doc__))
    ap.add_argument("--facts", type=int, default=100)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--trace-dir", default=None, help="the sweep folder (default: out/<result name>)")
    args = ap.parse_args(argv)
    name = result_name("tracing-reproduction", args.model)
    model = wb.load_model(args.model, device=args.device)
    t0 = time.perf_counter()
    summary = trace_facts(model, DEFAULT_FACTS, args.trace_dir or f"out/{name}", limit=args.facts, samples=args.samples,
                          order="relations")
    print(compare_with_paper(summary).to_string())
    result = {"command": "python benchmarks/tracing_reproduction.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              **device_meta(args.device), "seconds_this_run": round(time.perf_counter() - t0, 1),
              "reproduction": reproduction(summary), "paper_gpt2_xl": PAPER_GPT2_XL, "summary": summary}
    write_result(result, name, "", args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}.json"))
    return result


if __name__ == "__main__":
    main()
