"""The one sweep folder and the one output-folder rule (issues 25 and 29): a lock per folder (a second run is
refused naming the holder; a dead run's lock is taken over), sweeps keyed by the content of their inputs,
and every CLI verb with --out refusing a path inside the installed package before its model loads."""
import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.cli import VERB_MODULES, main
from workbench.toolkit.sweep import PACKAGE_DIR, Sweep, check_out_dir, content_hash
from workbench.patching.tracing import trace_facts

BAD = "tiny-bert"  # cannot load: a verb passes only if it refuses --out before loading its model
FACT = {"id": 0, "relation": "capital_of", "subject": "France", "prompt": "The capital of France is the city of",
        "object": "Paris"}


def test_second_run_on_a_folder_is_refused_naming_the_holder(tmp_path):
    first = Sweep(tmp_path / "s", {"a": 1}).start()
    holder = json.loads((tmp_path / "s" / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ValueError) as e:
        Sweep(tmp_path / "s", {"a": 1}).start()
    assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value) and "in use" in str(e.value)
    with pytest.raises(ValueError, match="in use"):  # a forced run of another configuration too: nothing cleared
        Sweep(tmp_path / "s", {"a": 2}, force=True).start()
    assert json.loads((tmp_path / "s" / "config.json").read_text()) == {"a": 1}
    first.release()
    assert not (tmp_path / "s" / ".lock").exists()
    with Sweep(tmp_path / "s", {"a": 1}) as again:  # released: the next run takes it
        assert again.locked


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with Sweep(tmp_path / "s", {"a": 1}) as s:
        assert json.loads((tmp_path / "s" / ".lock").read_text())["pid"] == os.getpid() and s.locked
    err = capsys.readouterr().err
    assert "taking over" in err and f"pid {dead.pid}" in err
    # another host's lock cannot be checked from here: refused, naming that host
    (tmp_path / "s" / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(ValueError, match="elsewhere"):
        Sweep(tmp_path / "s", {"a": 1}).start()


def test_forced_run_of_another_configuration_clears_old_summaries(tmp_path):
    with Sweep(tmp_path / "s", {"samples": 30}) as s:
        s.save(0, {"x": 1})
        s.write_json("summary.json", {"samples": 30})
    with Sweep(tmp_path / "s", {"samples": 3}, force=True) as s:
        assert not s.done(0) and not (tmp_path / "s" / "summary.json").exists()


def test_facts_are_keyed_by_content_not_name(tiny, tmp_path):
    m = tiny("llama")
    for name, fact in (("A", FACT), ("B", {**FACT, "subject": "Spain", "prompt": "The capital of Spain is the city of",
                                            "object": "Madrid"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "facts.jsonl").write_text(json.dumps(fact) + "\n")
    kw = dict(samples=1, window=1, kinds=("resid",), trace_unknown=True, figures=False, progress=False)
    summary = trace_facts(m, tmp_path / "A" / "facts.jsonl", tmp_path / "out", **kw)
    assert summary["config"]["facts_sha256"] == content_hash(tmp_path / "A" / "facts.jsonl")
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="facts_sha256"):  # same file name, other facts: refused, nothing written
        trace_facts(m, tmp_path / "B" / "facts.jsonl", tmp_path / "out", **kw)
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    # the same content under another name is the same sweep: it resumes (nothing to do)
    (tmp_path / "C.jsonl").write_bytes((tmp_path / "A" / "facts.jsonl").read_bytes())
    assert trace_facts(m, tmp_path / "C.jsonl", tmp_path / "out", **kw)["n_traced"] == summary["n_traced"]


def test_output_rule_refuses_the_installed_package(tmp_path):
    for target in (PACKAGE_DIR, PACKAGE_DIR / "data" / "sae", PACKAGE_DIR / "data" / "new-folder"):
        with pytest.raises(ValueError, match="inside the installed workbench package"):
            check_out_dir(target, force=True)
    assert check_out_dir(tmp_path / "fine", force=False) == tmp_path / "fine"


# every verb with --out, with arguments that are otherwise fine (inputs exist), so that only --out can refuse it
def _inputs(d):
    (d / "facts.jsonl").write_text(json.dumps(FACT) + "\n")
    (d / "requests.jsonl").write_text(json.dumps({"id": 0, "prompt": FACT["prompt"], "subject": "France",
                                                  "target_true": " Paris", "target_new": " Rome"}) + "\n")
    (d / "pairs.jsonl").write_text(json.dumps({"positive": "I love it", "negative": "I hate it"}) + "\n")
    (d / "prompts.txt").write_text("Once upon a time\nThe cat sat\n")
    (d / "das.jsonl").write_text("".join(json.dumps({"base": "a b", "source": "c d", "label": " yes"}) + "\n" for _ in range(2)))
    (d / "task.jsonl").write_text("".join(json.dumps({"split": s, "prompt": "x", "answer": " A", "choices": [" A", " B"]}) + "\n"
                                          for s in ("train", "id_test", "ood_test")))
    wb.core.io.save_safetensors(d / "dirs.safetensors", {"direction": __import__("torch").randn(64)})


ARGV = {
    "demo": [],
    "patch": ["--clean", "a", "--corrupt", "b", "--answer", " Mary", "--foil", " John"],
    "trace": ["--facts", "{i}/facts.jsonl"],
    "known": ["--facts", "{i}/facts.jsonl"],
    "counterfact": ["--facts", "{i}/facts.jsonl"],
    "edit": ["--requests", "{i}/requests.jsonl"],
    "steer": ["--pairs", "{i}/pairs.jsonl", "--layers", "1", "--multipliers", "1"],
    "caft": ["--task", "{i}/task.jsonl", "--directions", "{i}/dirs.safetensors"],
    "lens": ["--prompt", "a b", "--answer", " c"],
    "tuned-lens": ["--texts", "{i}/prompts.txt"],
    "dla": ["--prompt", "a b", "--answer", " c"],
    "path-patch": ["--clean", "a", "--corrupt", "b", "--answer", " c", "--foil", " d", "--senders", "L0H0"],
    "das": ["--site", "blocks.0.hook_resid_pre", "--data", "{i}/das.jsonl", "--candidates", " yes, no"],
    "cross-patch": ["--tuned", BAD, "--prompt", "a b", "--answer", " c"],
    "counterfactual": ["--prompts", "{i}/prompts.txt"],
    "sae train": [],
    "sae eval": ["--sae", "{sae}"],
    "sae inspect": ["--sae", "{sae}", "--latents", "1"],
    "sae diff": ["--finetuned", BAD, "--sae", "{sae}"],
    "transcoders train": [],
    "transcoders eval": ["--transcoders", "{i}"],
    "graph": ["a b", "--transcoders", "{i}"],
    "diff": [BAD, BAD, "--prompts", "{i}/prompts.txt"],
}
SAE = PACKAGE_DIR / "data" / "sae" / "smollm2-135m-blocks.15.hook_resid_pre"  # the shipped SAE
FILE_OUT = {"known", "counterfact", "sae eval", "sae diff", "transcoders eval"}  # their --out is one file


def _verbs_with_out():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    for module in VERB_MODULES:
        module.register(sub)
    found = []

    def walk(sp, prefix=""):
        for name, parser in sp.choices.items():
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subs:
                walk(subs[0], f"{prefix}{name} ")
            elif any("--out" in a.option_strings for a in parser._actions):
                found.append(prefix + name)
    walk(sub)
    return found


def test_every_verb_with_out_uses_the_one_rule(tmp_path, capsys):
    """Enumerates the CLI: each verb with --out must refuse a path inside the installed package (the one rule,
    `core.sweep.check_out_dir` / `check_out_file`), before its model loads, writing nothing there."""
    verbs = _verbs_with_out()
    assert set(verbs) == set(ARGV), f"verbs with --out missing from this test: {set(verbs) - set(ARGV)}"
    _inputs(tmp_path)
    sae = SAE
    before = {p: p.stat().st_mtime_ns for p in PACKAGE_DIR.rglob("*") if "__pycache__" not in p.parts}
    for verb in verbs:
        target = PACKAGE_DIR / "data" / ("wb-out.json" if verb in FILE_OUT else "wb-out")
        for out in (target, sae / "eval.json" if verb in FILE_OUT else sae):  # new and existing (the shipped SAE)
            argv = [a.replace("{i}", str(tmp_path)).replace("{sae}", str(SAE))
                    for a in verb.split() + _model_flag(verb) + ARGV[verb] + ["--out", str(out)]]
            if "--force" in str(_help(verb)):
                argv.append("--force")
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2 and "inside the installed workbench package" in err, (verb, code, err)
    after = {p: p.stat().st_mtime_ns for p in PACKAGE_DIR.rglob("*") if "__pycache__" not in p.parts}
    assert after == before, "a verb wrote inside the package"


def _model_flag(verb):
    """`--model BAD` for verbs that take one (`diff` names its two models as positionals, in ARGV)."""
    return ["--model", BAD] if any("--model" in o for o in _help(verb)) else []


def _help(verb):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    for module in VERB_MODULES:
        module.register(sub)
    parser = sub.choices[verb.split()[0]]
    for word in verb.split()[1:]:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return [a.option_strings for a in parser._actions]


# -- sweeps on the one driver resume after SIGKILL with identical results ------------------------------

def kill_mid_sweep(code: str, items, n: int, at_least: int = 1) -> tuple[int, set]:
    """Run `code` in a subprocess (one torch thread), SIGKILL it once `at_least` items are in `items`; return its pid
    and the finished item ids, checking that the kill landed mid-sweep (some items done, not all)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import torch; torch.set_num_threads(1); " + code],
                            cwd=os.path.dirname(__file__),
                            env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(items.glob("*.json"))) < at_least:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {int(p.stem) for p in items.glob("*.json")}
    assert at_least <= len(done) < n, f"the kill did not land mid-sweep ({len(done)} of {n} done)"
    return proc.pid, done


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CAFT_KW = dict(config=wb.directions.caft.FinetuneConfig(steps=4, lr=1e-2, batch_size=8))


def caft_inputs():
    from test_caft import toy_task

    model = wb.tiny_model("llama")
    rows = toy_task()
    task = {s: [r for r in rows if r["split"] == s] for s in ("train", "id_test", "ood_test")}
    v = torch.randn(1, model.dims.d_model, generator=torch.Generator().manual_seed(0))
    subs = wb.directions.caft.subspaces({0: v / v.norm()}, model.dims.d_model)
    return model, task, subs


def test_caft_seeds_resume_after_sigkill_with_identical_results(tmp_path, one_thread):
    model, task, subs = caft_inputs()
    seeds = [0, 1, 2]
    ref = wb.directions.caft.compare(model, task, subs, seeds=seeds, **CAFT_KW)
    out = tmp_path / "caft"
    pid, first = kill_mid_sweep(
        f"import test_sweep_folder as t, workbench as wb; m, task, subs = t.caft_inputs(); "
        f"wb.directions.caft.compare(m, task, subs, seeds={seeds}, out={str(out)!r}, **t.CAFT_KW)", out / "seeds", 3)
    res = wb.directions.caft.compare(model, task, subs, seeds=seeds, out=out, **CAFT_KW)
    assert res == ref
    rerun = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rerun if r["pid"] != pid) == sorted(set(seeds) - first)  # only the missing seeds
    with pytest.raises(ValueError, match="task_sha256"):  # another task into the same folder: refused
        wb.directions.caft.compare(model, {**task, "train": task["train"][:-1]}, subs, seeds=seeds, out=out, **CAFT_KW)


# steering sweeps: each (layer, multiplier) cell is an item (9 cells: unsteered + 2 layers x 4 multipliers)
STEER_KW = dict(multipliers=[0.0, 2.0, 4.0, 8.0], max_new_tokens=8, batch_size=2)


def steering_inputs():
    """The tiny model, a seeded random steering vector for its 2 layers, two prompts and a word-share behaviour."""
    from workbench.steering import SteeringVector
    from workbench.steering.behaviour import word_share

    model = wb.tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({l: torch.randn(model.dims.d_model, generator=g) for l in range(model.dims.n_layers)},
                         meta={"n_layers": model.dims.n_layers})
    return model, vec, ["The cat sat on", "Once upon a time"], word_share(["the", "a", "myst"])


def assert_same_steering(a, b):
    assert a.samples == b.samples  # every continuation and its score, cell by cell
    assert a.baseline == b.baseline and np.array_equal(a.behaviour.values, b.behaviour.values)
    assert np.array_equal(a.cost.values, b.cost.values)  # bit for bit (one torch thread on both sides)


def test_steering_sweep_resumes_after_sigkill_with_identical_results(tmp_path, one_thread):
    model, vec, prompts, words = steering_inputs()
    ref = wb.steering.sweep(model, vec, prompts, behaviour=words, **STEER_KW)  # in memory, uninterrupted
    assert len({s["continuation"] for s in ref.samples}) > 4  # the multipliers change the text: a comparison of substance
    out = tmp_path / "steer"
    pid, first = kill_mid_sweep(
        f"import test_sweep_folder as t, workbench as wb; m, v, p, w = t.steering_inputs(); "
        f"wb.steering.sweep(m, v, p, behaviour=w, out={str(out)!r}, **t.STEER_KW)", out / "cells", 9, at_least=2)
    res = wb.steering.sweep(model, vec, prompts, behaviour=words, out=out, **STEER_KW)
    assert_same_steering(res, ref)
    rerun = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rerun if r["pid"] != pid) == sorted(set(range(9)) - first)  # only the missing cells
    assert type(ref).load(out / "sweep.json").samples == ref.samples
    with pytest.raises(ValueError, match="prompts_sha256"):  # other prompts into the same folder: refused
        wb.steering.sweep(model, vec, prompts[:1], behaviour=words, out=out, **STEER_KW)


# patching over many pairs: each chunk of pairs is an item (8 pairs, one per chunk)
NAMES = [("Mary", "John"), ("Alice", "Bob"), ("Tom", "Anna"), ("Paul", "Lisa"), ("Mark", "Jane"), ("Eric", "Emma"),
         ("Sam", "Kate"), ("Jack", "Rose")]
PAIRS = [{"clean": f"When {a} and {b} went to the store, {b} gave a drink to", "answer": f" {a}", "foil": f" {b}",
          "corrupted": f"When {a} and {b} went to the store, {a} gave a drink to"} for a, b in NAMES]
PATCH_KW = dict(components=["resid_pre", "attn_out"], chunk=1)


def assert_same_grids(a, b):
    assert a.keys() == b.keys()
    for comp in a:
        assert np.array_equal(a[comp].values, b[comp].values), comp  # bit for bit (one torch thread on both sides)
        assert a[comp].coords == b[comp].coords and a[comp].meta == b[comp].meta


def test_patching_over_pairs_resumes_after_sigkill_with_identical_results(tmp_path, one_thread):
    model = wb.tiny_model("llama")
    ref = wb.patching.patch_pairs(model, PAIRS, **PATCH_KW)  # in memory, uninterrupted
    # the grids are activation_patching's over the whole batch (an independent reference: one batch, one engine run)
    whole = wb.patching.activation_patching(model, *([p[k] for p in PAIRS] for k in ("clean", "corrupted", "answer", "foil")),
                                            components=PATCH_KW["components"])
    for comp in whole:
        assert np.allclose(ref[comp].values, whole[comp].values, atol=1e-5) and ref[comp].shape == whole[comp].shape
        assert ref[comp].meta["n_pairs"] == 8 and abs(ref[comp].values).max() > 0.1
    out = tmp_path / "pairs"
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))  # the file form, as the CLI reads it
    pid, first = kill_mid_sweep(
        f"import test_sweep_folder as t, workbench as wb; "
        f"wb.patching.patch_pairs(wb.tiny_model('llama'), {str(tmp_path / 'pairs.jsonl')!r}, {str(out)!r}, **t.PATCH_KW)",
        out / "chunks", 8, at_least=2)
    res = wb.patching.patch_pairs(model, tmp_path / "pairs.jsonl", out, **PATCH_KW)
    assert_same_grids(res, ref)
    rerun = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rerun if r["pid"] != pid) == sorted(set(range(8)) - first)  # only the missing chunks
    with pytest.raises(ValueError, match="pairs_sha256"):  # other pairs into the same folder: refused
        wb.patching.patch_pairs(model, PAIRS[:-1] + PAIRS[:1], out, **PATCH_KW)


def test_cli_patch_pairs_writes_the_sweeps_grids(tmp_path, one_thread):
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:4]))
    args = ["patch", "--model", "tiny-llama", "--pairs", str(tmp_path / "pairs.jsonl"), "--sites", "resid_pre",
            "--chunk", "2", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    grids = json.loads((tmp_path / "out" / "grids.json").read_text())
    want = wb.patching.patch_pairs(wb.tiny_model("llama"), PAIRS[:4], components="resid_pre", chunk=2)["resid_pre"]
    assert np.array_equal(np.asarray(grids["resid_pre"]["values"], dtype=np.float32), want.values)
    assert sorted(p.name for p in (tmp_path / "out" / "chunks").iterdir()) == ["0.json", "1.json"]
    assert (tmp_path / "out" / "resid_pre.png").is_file()
    assert main(args) == 0  # the same command again: resumes (nothing left to run)
    assert main(args[:-2] + ["--clean", "a", "--out", str(tmp_path / "both")]) == 2  # a file of pairs or one pair
    assert not (tmp_path / "both").exists()


# ROME with chunk > 1 in CounterFact: each chunk of requests is an item whose results are one file per request
ROME_KW = dict(chunk=2, hparams={"steps": 3}, stats={"n_tokens": 512, "progress": False}, gen_tokens=0, progress=False)


def rome_requests():
    from workbench.data.facts import load_facts
    from workbench.editing.counterfact import build_requests

    return build_requests(load_facts(wb.data.data_path("facts.jsonl"))[:40], None, n=6, n_neighbours=2)


def assert_same_counterfact(a, b, reqs):
    for r in reqs:
        ra, rb = (json.loads((x / "results" / f"{r['id']}.json").read_text()) for x in (a, b))
        for key in ("rewrite", "paraphrase", "neighborhood", "relative_norm", "value_opt"):
            assert ra[key] == rb[key], key


def same_metrics(a: dict, b: dict) -> bool:
    """CounterFact summaries equal, NaN included (GE with gen_tokens=0), timings and this run's counts excluded."""
    drop = lambda m: json.dumps({k: v for k, v in m.items() if k not in ("seconds_per_edit", "this_run")}, sort_keys=True)
    return drop(a) == drop(b)


def test_rome_chunks_resume_after_sigkill_with_identical_results(tmp_path, one_thread):
    from workbench.editing.counterfact import run_counterfact

    model, reqs = wb.tiny_model("llama"), rome_requests()
    ref = run_counterfact(model, reqs, tmp_path / "ref", "rome", **ROME_KW)
    ids = [r["id"] for r in reqs]
    assert sorted(json.loads(l)["id"] for l in (tmp_path / "ref" / "runs.jsonl").read_text().splitlines()) == sorted(ids)
    out = tmp_path / "rome"
    pid, first = kill_mid_sweep(
        f"import test_sweep_folder as t, workbench as wb; from workbench.editing.counterfact import run_counterfact; "
        f"run_counterfact(wb.tiny_model('llama'), t.rome_requests(), {str(out)!r}, 'rome', **t.ROME_KW)",
        out / "results", 6, at_least=2)
    res = run_counterfact(model, reqs, out, "rome", **ROME_KW)
    assert_same_counterfact(tmp_path / "ref", out, reqs)
    assert same_metrics(res, ref)
    rerun = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rerun if r["pid"] != pid) == sorted(set(ids) - first)  # only the missing chunks' requests
    assert len(first) % 2 == 0  # whole chunks: a chunk's value optimisation is one batch
