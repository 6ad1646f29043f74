import numpy as np
import pytest
import torch

import workbench as wb
from workbench.patching.reference import research_trace_loop
from workbench.patching.tracing import KINDS, embedding_noise_std, trace_fact

PROMPT, SUBJECT, ANSWER = "The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris"


@pytest.fixture(scope="module")
def tiny4(tokenizer):
    return {f: wb.tiny_model(f, n_layers=4, tokenizer=tokenizer) for f in ("llama", "gpt2")}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trace_equals_the_research_loop(tiny4, family):
    m = tiny4[family]
    samples, nu, seed = 3, 0.5, 11
    for window in (2, 3):  # an even and an odd window: the reference spells out its own window
        tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=nu, samples=samples, window=window, seed=seed)
        eps = nu * torch.randn(samples, len(range(*tr.subject_span)), m.dims.d_model, generator=torch.Generator().manual_seed(seed))
        for kind in KINDS:
            ref = research_trace_loop(m, PROMPT, SUBJECT, ANSWER, eps, window, kind)
            assert np.abs(tr.scores[kind] - ref).max() < 1e-5, (kind, window)
            # a tiny random model's p(answer) is ~1/vocab (~2e-5), so 1e-5 alone would pass nearly anything
            assert np.abs(tr.scores[kind] - ref).max() < 1e-4 * np.abs(ref).max(), (kind, window)
    assert tr.subject_span == (1, 4)


def test_trace_identities(tiny4):
    m = tiny4["llama"]
    tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, samples=4, window=3)
    T, L = len(tr.tokens), m.dims.n_layers
    # restoring the last block's output at the last token restores the clean prediction exactly
    assert abs(tr.scores["resid"][T - 1, L - 1] - tr.p_clean) < 1e-5
    # before the subject nothing is corrupted, so restoring there changes nothing
    assert np.all(tr.scores["resid"][0] == tr.p_corrupted)
    # same seed, same noise, same numbers; another seed, other numbers
    again = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, samples=4, window=3)
    assert all(np.array_equal(again.scores[k], tr.scores[k]) for k in KINDS)
    other = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, samples=4, window=3, seed=1)
    assert other.p_corrupted != tr.p_corrupted
    back = wb.patching.tracing.Trace.from_json(tr.to_json())
    assert np.array_equal(back.scores["mlp"], tr.scores["mlp"]) and back.subject_span == tr.subject_span


def test_trace_figure_and_bad_input(tiny4, tmp_path):
    m = tiny4["gpt2"]
    tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, samples=2, window=2, kinds=("resid", "mlp"))
    tr.plot(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert embedding_noise_std(m, ["Eiffel Tower", "Paris"]) > 0
    with pytest.raises(ValueError, match="substring"):
        trace_fact(m, PROMPT, "Louvre", ANSWER, noise_std=0.5)
    with pytest.raises(ValueError, match="kinds"):
        trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, kinds=("mlp", "embed"))
    with pytest.raises(ValueError, match="samples"):
        trace_fact(m, PROMPT, SUBJECT, ANSWER, noise_std=0.5, samples=0)


# -- sweeps ---------------------------------------------------------------------------------------

import json
import os
import signal
import subprocess
import sys
import time

from workbench.data.facts import known_facts, load_facts
from workbench.patching.tracing import token_groups, trace_facts

FACTS = [
    {"id": 0, "relation": "capital_of", "subject": "France", "prompt": "The capital city of France is", "object": "Paris"},
    {"id": 1, "relation": "landmark_city", "subject": "Eiffel Tower", "prompt": "The Eiffel Tower is located in the city of", "object": "Paris"},
    {"id": 2, "relation": "capital_of", "subject": "Japan", "prompt": "The capital city of Nippon is", "object": "Tokyo"},
    {"id": 3, "relation": "capital_of", "subject": "Italy", "prompt": "The capital city of Italy is", "object": "Rome"},
    {"id": 4, "relation": "official_language", "subject": "Germany", "prompt": "The official language of Germany is", "object": "German"},
]


def _write_facts(path, facts=FACTS):
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    return path


def test_token_groups():
    g = token_groups((1, 4), 10)
    assert g["first subject token"] == [1] and g["middle subject tokens"] == [2] and g["last subject token"] == [3]
    assert g["first subsequent token"] == [4] and g["further tokens"] == [5, 6, 7, 8] and g["last token"] == [9]
    g = token_groups((4, 5), 6)
    assert g["middle subject tokens"] == [] and g["first subsequent token"] == [5] and g["further tokens"] == []


def test_sweep_resumes_skips_and_summarizes(tiny4, tmp_path):
    m = tiny4["llama"]
    facts = _write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "out"
    kw = dict(samples=2, window=2, trace_unknown=True, figures=False, progress=False)
    first = trace_facts(m, facts, out, limit=2, **kw)
    assert first["n_traced"] == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "facts").iterdir()}
    full = trace_facts(m, facts, out, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "facts").iterdir() if p.name in stamps} == stamps
    assert full["n_traced"] == 4 and full["skipped"] == {"subject not found": 1}
    assert first["this_run"] == {"now": 2, "before": 0} and full["this_run"] == {"now": 2, "before": 2}
    # restoring the last block's output at the last token gives back the clean prediction, so the
    # average IE there equals the average total effect
    last = full["indirect_effect"]["resid"]["last token"]["by_layer"][-1]
    assert abs(last - full["average_total_effect"]) < 1e-5
    with pytest.raises(ValueError, match="different configuration.*samples"):
        trace_facts(m, facts, out, limit=2, **{**kw, "samples": 3})


def test_sweep_skips_unknown_facts_and_bad_files(tiny4, tmp_path):
    m = tiny4["gpt2"]
    facts = _write_facts(tmp_path / "facts.jsonl")
    assert not any(known_facts(m, load_facts(facts)))  # a random tiny model knows nothing
    summary = trace_facts(m, facts, tmp_path / "out", samples=2, window=2, figures=False, progress=False)
    assert summary["n_traced"] == 0 and summary["skipped"] == {"not known": 4, "subject not found": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FACTS[0]) + "\n" + json.dumps(FACTS[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        trace_facts(m, bad, tmp_path / "out2", figures=False)
    assert not (tmp_path / "out2").exists()


def test_sweep_order_relations_covers_every_relation(tiny4, tmp_path):
    m = tiny4["llama"]
    facts = _write_facts(tmp_path / "facts.jsonl")
    kw = dict(samples=1, window=2, trace_unknown=True, figures=False, progress=False, limit=3)
    trace_facts(m, facts, tmp_path / "file", **kw)
    trace_facts(m, facts, tmp_path / "rel", order="relations", **kw)
    ids = lambda d: sorted(int(p.stem) for p in (tmp_path / d / "facts").iterdir())  # noqa: E731
    assert ids("file") == [0, 1, 2, 3]  # 2 is recorded as skipped (subject not found); the limit counts traced facts
    assert ids("rel") == [0, 1, 4]  # one per relation first: capital_of, landmark_city, official_language
    with pytest.raises(ValueError, match="order"):
        trace_facts(m, facts, tmp_path / "x", order="random", **kw)


def test_reproduction_reads_the_peaks_off_a_summary():
    L = 6
    def group(peak_layer, height):
        return {"by_layer": [height if l == peak_layer else 0.01 * l for l in range(L)]}
    ie = {k: {"last subject token": group(p, h), "last token": group(q, g)}
          for k, p, h, q, g in [("resid", 2, 0.5, 5, 0.9), ("mlp", 1, 0.3, 0, 0.02), ("attn", 4, 0.2, 4, 0.4)]}
    r = wb.patching.tracing.reproduction({"n_traced": 7, "average_total_effect": 0.6, "indirect_effect": ie})
    assert (r["resid_peak_layer"], r["resid_peak"], r["mlp_peak_layer"], r["mlp_at_last_subject"]) == (2, 0.5, 1, 0.3)
    assert r["attn_at_last_subject"] == 0.01 and r["attn_peak_layer_at_last_token"] == 4
    assert abs(r["late_attn_at_last_token"] - (0.03 + 0.4 + 0.05) / 3) < 1e-12
    with pytest.raises(ValueError, match="attn"):
        wb.patching.tracing.reproduction({"n_traced": 1, "average_total_effect": 0.1,
                                 "indirect_effect": {k: ie[k] for k in ("resid", "mlp")}})


@pytest.mark.slow
def test_default_model_knows_the_classic_facts(default_model):
    assert known_facts(default_model, FACTS[:2] + FACTS[3:]) == [True, True, True, True]


def test_sweep_survives_sigkill(tmp_path):
    facts = _write_facts(tmp_path / "facts.jsonl", [{**f, "id": i} for i, f in enumerate(FACTS * 8) if f["id"] != 2])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "workbench.cli", "trace", "--model", "tiny-llama", "--facts", str(facts),
           "--out", str(out), "--samples", "4", "--window", "2", "--trace-unknown", "--no-figures"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # patience with a busy machine; the asserts below check where the kill landed
    while time.time() < deadline and proc.poll() is None and len(list((out / "facts").glob("*.json"))) < 3 \
            if (out / "facts").exists() else time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # the kill landed on a running sweep, not on one that had ended
    done = list((out / "facts").glob("*.json"))
    assert 3 <= len(done) < 32, len(done)  # ... and mid-sweep: some facts written, not all
    assert not (out / "summary.json").exists()
    for f in done:
        json.loads(f.read_text())  # every file there is whole
    written = {f.name: f.stat().st_ino for f in done}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert {f: (out / "facts" / f).stat().st_ino for f in written} == written  # resumed: kept, not recomputed
    assert len(list((out / "facts").glob("*.json"))) == 32
    assert not [p for p in (out / "facts").iterdir() if not p.name.endswith(".json")]  # no temp files left
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_traced"] == 32
