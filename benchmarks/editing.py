"""Editing benchmark: seconds per ROME edit with cached key statistics, and the one-off cost of the statistics.

    workbench bench editing [--n-tokens 32768] [--edits 3] [--fresh-tokens 8192]

The one-off cost is measured in a fresh temporary cache (sampling the corpus from the model, then one
pass of the keys through C = E[k k^T]); `--fresh-tokens` sets its size (the cost is linear in it).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time


import workbench as wb
from workbench.editing import EditRequest, context_prefixes, default_layer, rome, second_moment

sys.path.insert(0, os.path.dirname(__file__))
from common import device_meta, parser, write_result  # noqa: E402

REQUESTS = [EditRequest("The capital of France is the city of", "France", " Rome"),
            EditRequest("The Eiffel Tower is located in the city of", "The Eiffel Tower", " London"),
            EditRequest("The official language of Brazil is", "Brazil", " French"),
            EditRequest("Lionel Messi plays the sport of", "Lionel Messi", " tennis")]


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-tokens", type=int, default=32768, help="corpus tokens of the cached statistics")
    ap.add_argument("--fresh-tokens", type=int, default=8192, help="corpus tokens for the one-off cost measurement")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--value-prefixes", type=int, default=2)
    args = ap.parse_args(argv)
    model = wb.load_model(args.model, device=args.device)
    layer = default_layer(model)
    C = second_moment(model, layer, n_tokens=args.n_tokens, progress=False)  # cached after the first run
    prefixes = context_prefixes(model)
    times, results = [], []
    for req in REQUESTS[:args.edits]:
        t0 = time.perf_counter()
        edit = rome(model, req, layer, prefixes=prefixes, C=C, value_prefixes=args.value_prefixes)
        times.append(time.perf_counter() - t0)
        with edit.applied(model):
            top = model.tokenizer.decode(model(req.prompt)[0, -1].argmax())
        results.append({"prompt": req.prompt, "target": req.target, "top_after": top, "seconds": times[-1]})
        print(f"{req.prompt!r} -> {top!r} ({times[-1]:.1f} s)")
    old = os.environ.get("WORKBENCH_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(wb.core.cache_dir() / "models", os.path.join(tmp, "models"))
        os.environ["WORKBENCH_CACHE"] = tmp
        try:
            from workbench.toolkit.corpora import corpus_tokens

            t0 = time.perf_counter()
            corpus_tokens(model, "samples", args.fresh_tokens, fingerprint=model.fingerprint, progress=False)
            t_sample = time.perf_counter() - t0
            t0 = time.perf_counter()
            second_moment(model, layer, n_tokens=args.fresh_tokens, progress=False)
            t_stats = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("WORKBENCH_CACHE")
            else:
                os.environ["WORKBENCH_CACHE"] = old
    result = {"benchmark": "editing", "model": model.name, "layer": layer, **device_meta(args.device),
              "seconds_per_rome_edit": sum(times) / len(times), "edits": results,
              "value_prefixes": args.value_prefixes, "cached_stats_tokens": args.n_tokens,
              "one_off": {"tokens": args.fresh_tokens, "seconds_sampling_corpus": t_sample,
                          "seconds_statistics_one_layer": t_stats}}
    print(f"ROME: {result['seconds_per_rome_edit']:.1f} s per edit with cached statistics; one-off statistics for "
          f"{args.fresh_tokens} tokens: {t_sample:.0f} s sampling + {t_stats:.0f} s keys")
    write_result(result, "editing", args.device, args.out)


if __name__ == "__main__":
    main()
