"""Sweeps on a real local Ray cluster (2 workers, tiny model): same numbers as in-process, bit for bit; a
SIGKILLed worker; a killed driver resumed; and models split over devices by an explicit device_map."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import workbench as wb
from workbench.toolkit import ModelSpec, RayExecutor, model_spec, start_local_cluster
from workbench.patching.tracing import load_traces, trace_facts

# a test cluster of this machine: every socket on 127.0.0.1 (read when ray is imported), and patience with
# a raylet that starts slowly on a busy machine
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
try:
    import ray
except ImportError:  # the Ray tests skip; the device-map tests below still run
    ray = None

FACTS = [
    {"relation": "capital_of", "subject": "France", "prompt": "The capital city of France is", "object": "Paris"},
    {"relation": "landmark_city", "subject": "Eiffel Tower", "prompt": "The Eiffel Tower is located in the city of", "object": "Paris"},
    {"relation": "capital_of", "subject": "Italy", "prompt": "The capital city of Italy is", "object": "Rome"},
    {"relation": "official_language", "subject": "Germany", "prompt": "The official language of Germany is", "object": "German"},
]
KW = dict(samples=3, window=2, trace_unknown=True, figures=False, progress=False)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (its start costs seconds); every socket on 127.0.0.1. The driver
    runs on one thread as each worker does: torch's CPU reductions (a softmax over the vocabulary) round
    differently with another number of threads, and bit-for-bit equality is across equal thread counts."""
    pytest.importorskip("ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start_local_cluster(ray)
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return wb.tiny_model("llama")


@pytest.fixture(scope="module")
def executor(cluster, model):
    ex = RayExecutor(model_spec(model), workers=2)
    ex.start()
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    path = tmp_path_factory.mktemp("facts") / "facts.jsonl"
    rows = [{**f, "id": i} for i, f in enumerate(FACTS * 3)]  # 12 facts
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(cluster, model, facts, tmp_path_factory):
    """The in-process sweep every distributed run must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = trace_facts(model, facts, out, **KW)
    return out, summary


def assert_same_traces(a, b):
    ta, tb = load_traces(a), load_traces(b)
    assert [t.prompt for t in ta] == [t.prompt for t in tb] and len(ta) == 12
    for x, y in zip(ta, tb):
        assert x.p_clean == y.p_clean and x.p_corrupted == y.p_corrupted
        for k in x.scores:
            assert torch.equal(torch.from_numpy(x.scores[k]), torch.from_numpy(y.scores[k]))


def runs(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_two_workers_equal_in_process_bit_for_bit(executor, model, facts, reference, tmp_path):
    ref_out, ref_summary = reference
    summary = trace_facts(model, facts, tmp_path / "ray", executor=executor, **KW)
    assert_same_traces(ref_out, tmp_path / "ray")
    assert summary["indirect_effect"] == ref_summary["indirect_effect"]
    log = runs(tmp_path / "ray")
    assert sorted(r["id"] for r in log) == list(range(12))  # each item written once
    pids = {w["pid"] for w in executor.start()}
    assert {r["pid"] for r in log} <= pids and len({r["pid"] for r in log}) == 2  # both workers ran items, not the driver
    item = json.loads((tmp_path / "ray" / "facts" / "0.json").read_text())
    assert item["run"]["host"] and item["run"]["seconds"] > 0


def test_sigkilled_worker_every_item_once_same_numbers(executor, model, facts, reference, tmp_path):
    victim = executor.start()[0]["pid"]
    out = tmp_path / "killed"
    killed = threading.Event()

    def kill_when_started():  # SIGKILL worker 0 once the sweep is under way (an item of it in flight)
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "facts").glob("*.json"))) < 2:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        killed.set()

    t = threading.Thread(target=kill_when_started)
    t.start()
    try:
        trace_facts(model, facts, out, executor=executor, **KW)
    finally:
        t.join()
    assert killed.is_set()
    assert_same_traces(reference[0], out)
    log = runs(out)
    assert sorted(r["id"] for r in log) == list(range(12))  # every item once: none lost, none twice
    assert victim not in {w["pid"] for w in ray.get([a.ready.remote() for a in executor.actors])}  # restarted


def test_killed_driver_resumes_with_identical_results(executor, model, facts, reference, tmp_path):
    out = tmp_path / "resumed"
    code = (f"import torch, workbench as wb; from workbench.patching.tracing import trace_facts; torch.set_num_threads(1); "
            f"trace_facts(wb.tiny_model('llama'), {str(facts)!r}, {str(out)!r}, **{KW!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list((out / "facts").glob("*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {int(p.stem) for p in (out / "facts").glob("*.json")}
    assert 3 <= len(first) < 12, "the driver was killed mid-sweep"
    trace_facts(model, facts, out, executor=executor, **KW)  # the re-run resumes, on the Ray workers
    assert_same_traces(reference[0], out)
    rerun = [r for r in runs(out) if r["pid"] != proc.pid]
    assert sorted(r["id"] for r in rerun) == sorted(set(range(12)) - first)  # only the missing items, once each
    assert {r["pid"] for r in rerun} <= {w["pid"] for w in ray.get([a.ready.remote() for a in executor.actors])}


def test_missing_ray_and_bad_flags_fail_before_writing(cluster, model, facts, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="workers"):
        trace_facts(model, facts, tmp_path / "w", workers=0, **KW)
    with pytest.raises(ValueError, match="ray_address"):
        trace_facts(model, facts, tmp_path / "w", ray_address="", **KW)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where the extra is not installed
    with pytest.raises(ValueError, match=r"pip install workbench\[ray\]"):
        trace_facts(model, facts, tmp_path / "w", workers=2, **KW)
    from workbench.cli import main

    assert main(["trace", "--model", "tiny-llama", "--facts", str(facts), "--out", str(tmp_path / "c"), "--workers", "2"]) == 2
    assert not (tmp_path / "w").exists() and not (tmp_path / "c").exists()


def test_counterfact_on_two_workers_equals_in_process(executor, model, tmp_path):
    from workbench.data.facts import load_facts
    from workbench.editing.counterfact import build_requests, run_counterfact

    reqs = build_requests(load_facts(wb.data.data_path("facts.jsonl"))[:40], None, n=4, n_neighbours=2)
    kw = dict(hparams={"steps": 3}, gen_tokens=4, progress=False)
    a = run_counterfact(model, reqs, tmp_path / "a", "ft-l", **kw)
    b = run_counterfact(model, reqs, tmp_path / "b", "ft-l", executor=executor, **kw)
    for r in reqs:
        ra, rb = (json.loads((tmp_path / x / "results" / f"{r['id']}.json").read_text()) for x in "ab")
        for key in ("rewrite", "paraphrase", "neighborhood", "generations", "relative_norm", "value_opt"):
            assert ra[key] == rb[key], key
    assert {k: v for k, v in a.items() if k != "seconds_per_edit"} == {k: v for k, v in b.items() if k != "seconds_per_edit"}
    assert sorted(x["id"] for x in runs(tmp_path / "b")) == sorted(r["id"] for r in reqs)
    with pytest.raises(ValueError, match="MEMIT"):
        run_counterfact(model, reqs, tmp_path / "c", "memit", executor=executor, **kw)


def test_worker_refuses_other_weights(cluster, model):
    ex = RayExecutor(ModelSpec("tiny-llama", {"seed": 1}, model.fingerprint), workers=1, cpus_per_worker=0)
    try:
        with pytest.raises(ValueError, match="fingerprint"):
            ex.start()
    finally:
        ex.close()


# -- every sweep on the one driver: counterfactual strings; bounded runs (issues 25, 29) ----------------

CF_PROMPTS = ["The capital city of France is", "Once upon a time there", "My favourite colour is", "The cat sat on"]


def _observed(tmp_path):
    """40 observed strings sampled from the tiny model, as plain text (a subprocess reads the same file)."""
    from workbench.counterfactual import sample

    path = tmp_path / "observed.json"
    if not path.exists():
        m = wb.tiny_model("llama")
        s = sample(m, CF_PROMPTS * 10, max_new_tokens=6, seed=0)
        path.write_text(json.dumps({"prompts": CF_PROMPTS * 10, "continuations": s.texts}))
    return json.loads(path.read_text())


def _cf_intervention(model):
    g = torch.Generator().manual_seed(0)
    return [wb.Add("blocks.1.hook_resid_pre", vector=torch.randn(model.dims.d_model, generator=g), multiplier=4.0)]


def test_counterfactual_sweep_killed_resumes_and_equals_two_workers(executor, model, tmp_path):
    """counterfactual_sweep runs on the one sweep driver: a SIGKILLed run (killed mid-sweep) resumes on the Ray
    workers, and an uninterrupted in-process run, a 2-worker run and the resumed run give the same rows."""
    from workbench.counterfactual import counterfactual_sweep

    obs = _observed(tmp_path)
    kw = dict(chunk=1, seed=3)
    ref = counterfactual_sweep(tmp_path / "ref", model, obs["prompts"], obs["continuations"], _cf_intervention(model), **kw)
    on_ray = counterfactual_sweep(tmp_path / "ray", model, obs["prompts"], obs["continuations"], _cf_intervention(model),
                                  executor=executor, **kw)
    assert on_ray.ids == ref.ids and on_ray.texts == ref.texts and on_ray.diverged_at == ref.diverged_at
    assert sum(d is not None for d in ref.diverged_at) >= 5  # the intervention changes strings: a comparison of substance
    ray_pids = {r["pid"] for r in runs(tmp_path / "ray")}
    assert ray_pids and os.getpid() not in ray_pids  # the chunks ran on the workers, not in this process

    from test_sweep_folder import kill_mid_sweep

    out = tmp_path / "killed"
    pid, first = kill_mid_sweep(
        f"import json, workbench as wb, test_distributed as t; from workbench.counterfactual import counterfactual_sweep; "
        f"m = wb.tiny_model('llama'); o = json.load(open({str(tmp_path / 'observed.json')!r})); "
        f"counterfactual_sweep({str(out)!r}, m, o['prompts'], o['continuations'], t._cf_intervention(m), **{kw!r})",
        out / "chunks", 40, at_least=3)
    assert json.loads((out / ".lock").read_text())["pid"] == pid  # its lock is left behind, stale
    resumed = counterfactual_sweep(out, model, obs["prompts"], obs["continuations"], _cf_intervention(model),
                                   executor=executor, **kw)  # takes the stale lock over, runs the missing chunks
    assert resumed.ids == ref.ids and resumed.texts == ref.texts
    rerun = [r for r in runs(out) if r["pid"] != pid]
    assert sorted(r["id"] for r in rerun) == sorted(set(range(40)) - first)
    assert not (out / ".lock").exists()


def test_caft_seeds_on_two_workers_equal_in_process(executor):
    from test_sweep_folder import CAFT_KW, caft_inputs

    m, task, subs = caft_inputs()
    ref = wb.directions.caft.compare(m, task, subs, seeds=[0, 1], **CAFT_KW)
    assert wb.directions.caft.compare(m, task, subs, seeds=[0, 1], executor=executor, **CAFT_KW) == ref


def test_workers_beyond_the_cluster_and_unreachable_address_fail_fast(cluster, model):
    with pytest.raises(ValueError, match=r"workers: 3 workers need 3 CPUs.*has 2 CPUs"):
        RayExecutor(model_spec(model), workers=3)  # the module's 2-CPU cluster
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:1"):
        RayExecutor(model_spec(model), address="127.0.0.1:1")
    assert time.perf_counter() - t0 < 15
    # with no cluster joined, a local one is bounded by this machine's cores: test_bad_input's trace-workers-past-cpus


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_ray_process(cluster, facts, tmp_path, sig):
    """A CLI sweep on its own local Ray cluster, stopped by SIGTERM or Ctrl-C mid-sweep: every process it started
    (raylet, GCS, workers) is gone afterwards."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "trace", "--model", "tiny-llama", "--facts", str(facts),
                             "--out", str(out), "--workers", "1", "--samples", "200", "--trace-unknown", "--no-figures"],
                            env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 600  # a loaded machine starts Ray slowly
    while time.time() < deadline and proc.poll() is None and not (out / "config.json").exists():
        time.sleep(0.05)  # config.json is written once the workers hold their models
    time.sleep(1)
    started = psutil.Process(proc.pid).children(recursive=True)
    assert proc.poll() is None and any("raylet" in " ".join(c.cmdline()) for c in started), "Ray was running"
    proc.send_signal(sig)
    assert proc.wait(60) != 0
    assert len(list((out / "facts").glob("*.json"))) < 12, "stopped mid-sweep"
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    assert not (out / ".lock").exists()  # the lock is released on the way out


# -- models split over devices (accelerate) ---------------------------------------------------------

P = "The capital city of France is"
PER_MODULE = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]


def _same_everywhere(ref, split, exact=True):
    close = torch.equal if exact else (lambda a, b: torch.allclose(a.cpu(), b.cpu(), atol=1e-4, rtol=1e-4))
    ids = ref.to_tokens(P)
    logits_r, cache_r = ref.run_with_cache(ids, ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"])
    logits_s, cache_s = split.run_with_cache(ids, ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"])
    assert close(logits_r, logits_s) and all(close(cache_r[k], cache_s[k]) for k in cache_r)
    add = lambda: [wb.Add("blocks.1.hook_resid_pre", vector=torch.ones(ref.dims.d_model), multiplier=0.5)]
    assert close(ref.run_with_interventions(ids, add()), split.run_with_interventions(ids, add()))
    # causal tracing: clean / corrupted caches and the suffix engine's restorations
    tr_r = wb.patching.trace_fact(ref, P, "France", " Paris", noise_std=0.3, samples=2, window=2)
    tr_s = wb.patching.trace_fact(split, P, "France", " Paris", noise_std=0.3, samples=2, window=2)
    for k in tr_r.scores:
        assert close(torch.from_numpy(tr_r.scores[k]), torch.from_numpy(tr_s.scores[k]))


def test_device_map_per_module_on_cpu_equals_the_unsplit_model():
    ref = wb.tiny_model("llama")
    split = wb.load_model("tiny-llama", device_map={m: "cpu" for m in PER_MODULE})
    hooked = [n for n, m in split.hf.named_modules() if hasattr(m, "_hf_hook")]
    assert "model.layers.0" in hooked and "lm_head" in hooked  # accelerate's AlignDevicesHooks are in place
    _same_everywhere(ref, split)
    with pytest.raises(ValueError, match="device_map"):
        wb.load_model("tiny-llama", device_map={"model.layers.0": "cpu"})  # modules without a device
    with pytest.raises(ValueError, match="device_map"):
        wb.load_model("tiny-llama", device_map={"model": "nowhere:0"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real split needs a GPU")
def test_device_map_split_over_cuda_and_cpu_matches_the_unsplit_model():
    ref = wb.tiny_model("llama")
    devices = ["cuda:0", "cuda:0", "cpu", "cpu", "cpu"]
    split = wb.load_model("tiny-llama", device_map=dict(zip(PER_MODULE, devices)))
    assert split.module("block", 0).self_attn.q_proj.weight.device.type == "cuda"
    assert split.module("block", 1).self_attn.q_proj.weight.device.type == "cpu"
    _same_everywhere(ref, split, exact=False)  # GPU and CPU kernels round differently


def test_steering_sweep_on_two_workers_equals_in_process(executor, tmp_path):
    from test_sweep_folder import STEER_KW, assert_same_steering, steering_inputs

    m, vec, prompts, words = steering_inputs()
    ref = wb.steering.sweep(m, vec, prompts, behaviour=words, **STEER_KW)
    on_ray = wb.steering.sweep(m, vec, prompts, behaviour=words, out=tmp_path / "ray", run=wb.toolkit.Run(executor=executor),
                               **STEER_KW)
    assert_same_steering(on_ray, ref)
    log = runs(tmp_path / "ray")
    assert sorted(r["id"] for r in log) == list(range(9)) and os.getpid() not in {r["pid"] for r in log}  # on the workers


def test_patching_over_pairs_on_two_workers_equals_in_process(executor, model, tmp_path):
    from test_sweep_folder import PAIRS, PATCH_KW, assert_same_grids

    ref = wb.patching.patch_pairs(model, PAIRS, **PATCH_KW)
    on_ray = wb.patching.patch_pairs(model, PAIRS, tmp_path / "ray", run=wb.toolkit.Run(executor=executor), **PATCH_KW)
    assert_same_grids(on_ray, ref)
    log = runs(tmp_path / "ray")
    assert sorted(r["id"] for r in log) == list(range(8)) and os.getpid() not in {r["pid"] for r in log}  # on the workers


def test_rome_chunks_on_two_workers_equal_in_process(executor, model, tmp_path):
    from workbench.editing.counterfact import run_counterfact
    from test_sweep_folder import ROME_KW, assert_same_counterfact, rome_requests, same_metrics

    reqs = rome_requests()
    a = run_counterfact(model, reqs, tmp_path / "a", "rome", **ROME_KW)
    b = run_counterfact(model, reqs, tmp_path / "b", "rome", run=wb.toolkit.Run(executor=executor, progress=False),
                        **{k: v for k, v in ROME_KW.items() if k != "progress"})
    assert_same_counterfact(tmp_path / "a", tmp_path / "b", reqs)
    assert same_metrics(a, b)
    log = runs(tmp_path / "b")
    assert sorted(r["id"] for r in log) == sorted(r["id"] for r in reqs) and os.getpid() not in {r["pid"] for r in log}
