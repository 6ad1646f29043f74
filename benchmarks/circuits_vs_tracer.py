"""Attribution graphs side by side with circuit-tracer 0.5: the same model, transcoders and tokens; the edges
compared node by node, the time per graph and the peak memory measured in one run.

circuit-tracer pins transformers<=4.57.3, so it runs from its own environment (`benchmarks/circuit_tracer/setup.sh`
builds it, default /work/ct-venv) through `benchmarks/circuit_tracer/run_tracer.py`; both sides run as child
processes of this script (one after the other, or with --together at the same time, so that on a shared machine
both see the same load), with the same thread count, time their graphs the same way (`circuit_tracer/measure.py`:
wall and CPU seconds, peak RSS above what the process held before the graph) and write their graphs as
safetensors that this script compares. Model: the default SmolLM2-135M (a Llama; circuit-tracer runs it through
TransformerLens). Transcoders: a set trained with `workbench.circuits.train_transcoders` (`--transcoders`, or
trained here into `--run` if absent: d_sae 256, k 8, 20 steps).

Definitions matched on our side:
- tokens: circuit-tracer prepends a special token (the tokenizer's BOS, `<|im_start|>` here) and ignores position
  0: its features there are zeroed and its MLP output is held constant (no feature or error nodes at position 0).
  We give our `attribute` the same tokens; our graph keeps position-0 features and errors as nodes, so the
  comparison is over the nodes both graphs have (every node but position 0's features and errors); an edge
  between two shared nodes is the same quantity in both (gradient x source value in the same frozen model).
- max_feature_nodes (the long prompts): circuit-tracer's graph holds only the features whose rows it computed;
  ours is asked for the same (`uncomputed="drop"`). Both pick the features batch by batch by influence on the
  logits, ours with position 0's features among the candidates, so the two sets overlap without being equal;
  edges are compared on the rows both computed.
- logit targets: circuit-tracer's are the logit minus the mean logit over the vocabulary (demeaned unembedding).
  Where our `attribute` has `logit_target` it is passed "demeaned"; otherwise the logit rows are recomputed here
  in the same frozen replacement model with that target (and the time counted in ours).

    python benchmarks/circuits_vs_tracer.py [--ct-python /work/ct-venv/bin/python] [--long 32] [--repeats 3]
    python benchmarks/circuits_vs_tracer.py --repeats 0 --together     # what the committed JSON ran
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "circuit_tracer"))
from measure import timed  # noqa: E402

SHORT = "The Eiffel Tower is in the city of"
LONG = ("The river runs through the old town, past the market square where farmers sell apples, cheese and bread "
        "every Saturday morning. In the spring the water rises and the children watch the boats from the stone "
        "bridge, counting the ones that carry wood to the mill. The miller, an old man with a grey beard, has "
        "worked there for forty years; his father and his grandfather worked there before him. When the mill "
        "stops for the winter he repairs the wheel, paints the doors and writes letters to his daughter, who "
        "lives in the capital and teaches mathematics at the university. She visits in the summer, and together "
        "they walk along the river to the forest, where the path climbs to a small chapel with a view over the "
        "whole valley. From there one can see the town, the fields, the road to the north and, on a clear day, "
        "the mountains far away. The people of the town say that the chapel was built by a merchant who was "
        "saved from a storm, and every year, on the first Sunday of August, they carry candles up the hill. ")


# -- our side (a child process in workbench's environment) -----------------------------------------------

def _demeaned_logit_rows(model, tcs, g) -> torch.Tensor:
    """Our graph's logit rows with circuit-tracer's target, logit minus mean logit, in the same frozen model."""
    from workbench.circuits.graph import Replacement

    rep = Replacement(model, tcs, g.tokens[None])
    # columns: the graph's features among all active ones (uncomputed="drop" keeps some), then the other nodes
    full = {(l, int(p), int(f)): i for i, (l, (p, f)) in
            enumerate((l, pf) for l, idx in enumerate(rep.active) for pf in idx.tolist())}
    cols = [full[tuple(x)] for x in g.active_features.tolist()]
    cols = torch.tensor(cols + list(range(len(full), len(full) + g.logit_index(0) - g.n_features)))
    n = len(g.logit_tokens)
    leaves = rep.leaves(n)
    _, logits = rep.run(leaves)  # [n, d_vocab]
    (logits[torch.arange(n), g.logit_tokens] - logits.mean(-1)).sum().backward()
    with torch.no_grad():
        return torch.cat([torch.cat([a.grad * a for a in leaves["acts"]], -1),
                          torch.stack([(e.grad * e).sum(-1) for e in leaves["errors"]], 1).flatten(1),
                          (leaves["embedding"].grad * leaves["embedding"]).sum(-1)], -1)[:, cols]


def ours(job: dict, out: Path) -> None:
    import workbench as wb
    from workbench.circuits import attribute, load_transcoders

    torch.set_num_threads(job["threads"])
    model = wb.load_model()
    tcs = load_transcoders(job["transcoders"], model)
    prompt = model.tokenizer.decode(job["tokens"])
    ids, _ = model.encode(prompt)
    if ids[0].tolist() != job["tokens"]:
        raise ValueError(f"tokens: our tokenizer reads the decoded prompt as {ids[0].tolist()}, not {job['tokens']}")
    demeaned = "logit_target" in inspect.signature(attribute).parameters
    kw = {"logit_target": "demeaned"} if demeaned else {}
    if job.get("uncomputed", "keep") != "keep":
        kw["uncomputed"] = job["uncomputed"]

    def run():
        g = attribute(model, prompt, tcs, max_logits=job["max_logits"], logit_probability=job["logit_probability"],
                      batch_size=job["batch_size"], max_feature_nodes=job["max_feature_nodes"], **kw)
        if not demeaned:
            g.adjacency[g.logit_index(0):, :g.logit_index(0)] = _demeaned_logit_rows(model, tcs, g)
        return g

    g, timing = timed(run, job["repeats"])
    save_file({"adjacency": g.adjacency.contiguous(), "active_features": g.active_features.long().contiguous(),
               "rows": torch.tensor(g.meta["rows"]), "logit_tokens": g.logit_tokens.long(),
               "logit_probabilities": g.logit_probabilities.float(), "tokens": g.tokens.long()},
              str(out / "ours.safetensors"))
    meta = {**timing, "threads": torch.get_num_threads(),
            "logit_target": "demeaned (attribute's logit_target)" if demeaned else
            "demeaned (logit rows recomputed by the benchmark; attribute has no logit_target here)"}
    (out / "ours.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


# -- the comparison ---------------------------------------------------------------------------------------

def node_keys(active: torch.Tensor, n_layers: int, n_pos: int, logit_tokens: torch.Tensor) -> list[tuple]:
    """Keys in circuit-tracer's node order: features (layer, pos, feature), errors, embeddings, logits."""
    keys = [("feature", *map(int, f)) for f in active.tolist()]
    keys += [("error", l, p) for l in range(n_layers) for p in range(n_pos)]
    keys += [("embedding", p) for p in range(n_pos)]
    keys += [("logit", int(t)) for t in logit_tokens.tolist()]
    return keys


def compare(a: dict, b: dict, n_layers: int, top_k: int = 1000) -> dict:
    """Edges of our graph `a` and circuit-tracer's `b` over the nodes both have, in the rows both computed.
    Position-0 features and errors are left out (circuit-tracer has no such nodes; see the module docstring)."""
    P = len(b["tokens"])
    if a["tokens"].tolist() != b["tokens"].tolist():
        raise ValueError("tokens: the two graphs are of different token sequences")
    if a["logit_tokens"].tolist() != b["logit_tokens"].tolist():
        raise ValueError(f"logit tokens differ: ours {a['logit_tokens'].tolist()}, circuit-tracer "
                         f"{b['logit_tokens'].tolist()}")
    ka = node_keys(a["active_features"], n_layers, P, a["logit_tokens"])
    sel = b["selected_features"]
    kb = node_keys(b["active_features"][sel], n_layers, P, b["logit_tokens"])
    ia = {k: i for i, k in enumerate(ka)}
    at_0 = lambda k: k[0] in ("feature", "error") and k[2] == 0  # noqa: E731
    shared = [k for k in kb if k in ia and not at_0(k)]
    nf_b = len(sel)
    rows_b = set(range(nf_b)) | set(range(len(kb) - len(b["logit_tokens"]), len(kb)))
    rows_a = set(a["rows"].tolist())
    ib = {k: i for i, k in enumerate(kb)}
    rows = [k for k in shared if ib[k] in rows_b and ia[k] in rows_a]
    ra, rb = torch.tensor([ia[k] for k in rows]), torch.tensor([ib[k] for k in rows])
    ca, cb = torch.tensor([ia[k] for k in shared]), torch.tensor([ib[k] for k in shared])
    A, B = a["adjacency"][ra][:, ca].double(), b["adjacency"][rb][:, cb].double()
    d = (A - B).abs()
    tb = set(B.abs().flatten().topk(min(top_k, B.numel())).indices.tolist())
    ta = set(A.abs().flatten().topk(min(top_k, A.numel())).indices.tolist())
    logit_rows = [i for i, k in enumerate(rows) if k[0] == "logit"]
    only_a = [k for k in ka if k not in ib and k[0] == "feature"]
    return {"nodes_ours": len(ka), "nodes_tracer": len(kb), "shared_nodes": len(shared),
            "feature_nodes_only_ours": len(only_a),
            "feature_nodes_only_ours_at_position_0": sum(at_0(k) for k in only_a),
            "feature_nodes_only_tracer": sum(k not in ia and k[0] == "feature" for k in kb),
            "rows_compared": len(rows), "edges_compared": A.numel(), "nonzero_edges_tracer": int((B != 0).sum()),
            "max_abs_weight": float(B.abs().max()), "max_abs_diff": float(d.max()),
            "max_abs_diff_over_max_weight": float(d.max() / B.abs().max()),
            "relative_frobenius_error": float((A - B).norm() / B.norm()),
            "logit_rows_max_abs_diff": float(d[logit_rows].max()) if logit_rows else None,
            f"top_{top_k}_edges_shared": len(ta & tb) / max(len(tb), 1)}


# -- the driver -------------------------------------------------------------------------------------------

def _run_sides(sides: dict[str, list[str]], job: dict, out: Path, together: bool,
               reuse: bool = False) -> dict[str, tuple[dict, dict]]:
    """Run each side's command on `job` (one after the other, or at the same time); {name: (meta, graph)}.
    reuse: where `out` already holds both sides' results of this very job, read them instead."""
    done = out / "job.json"
    if reuse and done.is_file() and json.loads(done.read_text()) == job and all(
            (out / f"{n}.json").is_file() and (out / f"{n}.safetensors").is_file() for n in sides):
        return {n: (json.loads((out / f"{n}.json").read_text()), load_file(str(out / f"{n}.safetensors")))
                for n in sides}
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(job["threads"]),
           "PYTHONWARNINGS": "ignore"}
    procs = {}
    for name, cmd in sides.items():
        procs[name] = subprocess.Popen(cmd + [str(out / "job.json"), str(out)], env=env, stdout=subprocess.DEVNULL,
                                       stderr=open(out / f"{name}.log", "w"))
        if not together:
            procs[name].wait()
    for name, p in procs.items():
        if p.wait() != 0:
            raise RuntimeError(f"{name} failed ({p.returncode}):\n{(out / f'{name}.log').read_text()[-4000:]}")
    return {name: (json.loads((out / f"{name}.json").read_text()), load_file(str(out / f"{name}.safetensors")))
            for name in sides}


def main(argv=None) -> dict:
    sys.path.insert(0, str(HERE))
    from common import device_meta, write_result

    import workbench as wb
    from workbench.core.default_model import model_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-python", default=os.environ.get("CT_VENV", "/work/ct-venv") + "/bin/python")
    ap.add_argument("--transcoders", default="runs/tc-vs-tracer/transcoders")
    ap.add_argument("--run", default="runs/tc-vs-tracer", help="training folder if --transcoders is absent")
    ap.add_argument("--work", default="runs/circuits-vs-tracer", help="where the two sides write their graphs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="warm graphs timed after the first (cold) one")
    ap.add_argument("--together", action="store_true",
                    help="run the two sides at the same time (on a busy shared machine: both see the same load; "
                         "compare CPU seconds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--long", type=int, nargs="*", default=[32], help="token counts of the long-prompt cases")
    ap.add_argument("--long-feature-nodes", type=int, default=256)
    ap.add_argument("--reuse", action="store_true", help="read a case's results where --work holds them for the same job")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not Path(args.transcoders).is_dir():
        from workbench.circuits import train_transcoders
        from workbench.sae.train import data_file_texts, split_corpus, stdlib_docs

        train, _ = split_corpus({"stdlib": stdlib_docs(), "data": data_file_texts()}, seed=0)
        train_transcoders(wb.load_model(), train, d_sae=256, k=8, steps=20, texts_per_step=4, lr=3e-3, out=args.run,
                          checkpoint_every=10, progress=False)
        args.transcoders = str(Path(args.run) / "transcoders")
    model = wb.load_model()
    tok, L = model.tokenizer, model.dims.n_layers
    special = next(t for t in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) if t)  # as circuit-tracer
    cases = {"short": ([special] + tok(SHORT, add_special_tokens=False).input_ids, None)}
    long_ids = tok(LONG * 8, add_special_tokens=False).input_ids
    for n in args.long:
        cases[f"long-{n}"] = ([special] + long_ids[:n - 1], args.long_feature_nodes)
    del model
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    ct = [args.ct_python, str(HERE / "circuit_tracer" / "run_tracer.py")]
    results, versions = {}, {}
    for name, (tokens, feature_nodes) in cases.items():
        job = {"model_dir": str(model_dir()), "transcoders": str(Path(args.transcoders).resolve()), "tokens": tokens,
               "batch_size": args.batch_size, "max_feature_nodes": feature_nodes, "max_logits": 5,
               "logit_probability": 0.95, "repeats": args.repeats, "threads": args.threads,
               "uncomputed": "keep" if feature_nodes is None else "drop"}
        work = Path(args.work) / name
        got = _run_sides({"ours": me, "tracer": ct}, job, work, args.together, args.reuse)
        (m_ours, g_ours), (m_ct, g_ct) = got["ours"], got["tracer"]
        versions = m_ct["versions"]
        row = {"tokens": len(tokens), "max_feature_nodes": feature_nodes, "batch_size": args.batch_size,
               "active_features_ours": len(g_ours["active_features"]),
               "active_features_tracer": len(g_ct["active_features"]),
               "seconds_ours": m_ours["seconds"] or [m_ours["first_seconds"]],
               "seconds_tracer": m_ct["seconds"] or [m_ct["first_seconds"]],
               "median_seconds_ours": m_ours["median_seconds"], "median_seconds_tracer": m_ct["median_seconds"],
               "time_ratio_tracer_over_ours": m_ct["median_seconds"] / m_ours["median_seconds"],
               "median_cpu_seconds_ours": m_ours["median_cpu_seconds"],
               "median_cpu_seconds_tracer": m_ct["median_cpu_seconds"],
               "cpu_time_ratio_tracer_over_ours": m_ct["median_cpu_seconds"] / m_ours["median_cpu_seconds"],
               "peak_added_rss_mb_ours": round(m_ours["added_rss_mb"], 1),
               "peak_added_rss_mb_tracer": round(m_ct["added_rss_mb"], 1),
               "memory_ratio_tracer_over_ours": m_ct["added_rss_mb"] / max(m_ours["added_rss_mb"], 1e-9),
               "tracer_tl_vs_hf_logit_gap": m_ct["tl_vs_hf_logit_gap"], "logit_target_ours": m_ours["logit_target"],
               "timing_ours": m_ours, "timing_tracer": m_ct,
               "edges": compare(g_ours, g_ct, L)}
        results[name] = row
        print(name, json.dumps(row, indent=1))
    result = {**device_meta("cpu"), "threads": args.threads, "tracer_versions": versions, "model": "smollm2-135m",
              "transcoders": json.loads((Path(args.transcoders) / "transcoders.json").read_text()),
              "machine": "2 CPU cores shared with other jobs (load average 15 to 30 while it ran)",
              "sides_run": "at the same time" if args.together else "one after the other",
              "repeats": args.repeats,
              "cases": results}
    write_result(result, "circuits-vs-tracer", "cpu", args.out)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        ours(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
    else:
        main()
