"""Model.fingerprint names the architecture and every weight, not the folder the model came from (issue 26);
files keyed by the fingerprint of earlier releases still load."""
import json
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.directions import load_directions, save_directions

ROOT = Path(__file__).resolve().parents[1]


def _saved(model, folder: Path) -> Path:
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def test_same_weights_in_two_folders_give_one_fingerprint(tiny, tmp_path):
    a = _saved(tiny("llama"), tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "elsewhere" / "b")
    ma, mb = wb.load_model(str(a)), wb.load_model(str(b))
    assert ma.hf.config._name_or_path != mb.hf.config._name_or_path  # the config differs by its path only
    assert ma.fingerprint == mb.fingerprint == tiny("llama").fingerprint
    assert ma.legacy_fingerprint != mb.legacy_fingerprint  # the bug this fixes: the old hash read the path


def test_one_weight_changed_by_1e_3_gives_another_fingerprint(tiny):
    m = wb.tiny_model("llama", seed=0)
    fp0 = m.fingerprint
    w = m.module("mlp_down", 1).weight
    i = (w.shape[0] // 2, 1)  # not one of the elements the old hash sampled (one in 4096 of a tensor, from 0)
    old = w[i].item()
    legacy0 = m.legacy_fingerprint
    with torch.no_grad():
        w[i] += 1e-3
    assert m.fingerprint != fp0
    assert m.legacy_fingerprint == legacy0  # the blind spot of the sampled hash
    with torch.no_grad():
        w[i] = old
    assert m.fingerprint == fp0
    # another seed (every weight differs) and another architecture with the same weights' shapes differ too
    assert wb.tiny_model("llama", seed=1).fingerprint != fp0
    m2 = wb.tiny_model("llama", seed=0)
    m2.hf.config.rms_norm_eps = 1e-3
    assert m2.fingerprint != fp0


def test_edit_applied_changes_the_fingerprint_and_restore_gives_it_back(tiny):
    m = wb.tiny_model("llama", seed=0)
    fp0 = m.fingerprint
    delta = torch.zeros(m.dims.d_model, m.dims.d_mlp)
    delta[3, 5] = 1e-3
    edit = wb.editing.WeightEdit({1: delta}, {"fingerprint": fp0})
    handle = edit.apply(m, check=False)
    edited = m.fingerprint
    assert edited != fp0  # an edited model does not claim its base model's fingerprint
    with pytest.raises(wb.editing.EditRejected, match="fingerprint"):
        edit.apply(m, check=False)  # the edit was made for the base model, not the edited one
    handle.restore()
    assert m.fingerprint == fp0


def test_files_keyed_by_the_legacy_fingerprint_are_recognised(tiny, tmp_path):
    from workbench.sae import load_sae, save_sae

    from test_sae import random_sae

    m = tiny("llama")
    path = save_directions(tmp_path / "v.safetensors", {1: torch.randn(m.dims.d_model)},
                           {"model_fingerprint": m.legacy_fingerprint, "n_layers": m.dims.n_layers})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_directions(path, m)
    save_directions(path, {1: torch.randn(m.dims.d_model)}, {"model_fingerprint": "0" * 16})
    with pytest.warns(UserWarning, match="other weights"):
        load_directions(path, m)

    sae = random_sae(m)
    for fp, ok in ((m.legacy_fingerprint, True), (m.fingerprint, True), ("0" * 16, False)):
        sae.cfg.metadata.workbench_fingerprint = fp
        folder = save_sae(sae, tmp_path / f"sae-{fp}")
        if ok:
            load_sae(folder, m)
        else:
            with pytest.raises(ValueError, match="fingerprint"):
                load_sae(folder, m)


def test_rome_statistics_under_the_legacy_key_are_re_keyed_not_recomputed(tiny, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from workbench.editing.stats import second_moments

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    m = tiny("llama")
    C = second_moments(m, [1], n_tokens=64, seq_len=16, progress=False)[1]
    new = tmp_path / "cache" / "stats" / m.fingerprint
    old = new.with_name(m.legacy_fingerprint)
    # write the layout of earlier releases: the same files under the legacy key, with it in their metadata;
    # the statistics doubled, so that a recomputation would show
    for src in new.rglob("*.safetensors"):
        with safe_open(str(src), "pt") as f:
            meta = json.loads(f.metadata()["workbench"])
        tensors = {k: v * 2 if k == "C" else v for k, v in load_file(str(src)).items()}
        dst = old / src.relative_to(new)
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(dst), {"workbench": json.dumps({**meta, "fingerprint": old.name}, sort_keys=True)})
    shutil.rmtree(new)
    with pytest.warns(UserWarning, match="re-keyed"):
        again = second_moments(m, [1], n_tokens=64, seq_len=16, progress=False)[1]
    assert torch.equal(again, 2 * C) and not old.exists() and new.is_dir()
    assert torch.equal(second_moments(m, [1], n_tokens=64, seq_len=16, progress=False)[1], 2 * C)


FRESH_USER_SCRIPT = textwrap.dedent("""
    import json
    import warnings
    import torch
    import workbench as wb
    from workbench.directions import load_directions, save_directions
    from workbench.editing.stats import second_moments

    warnings.filterwarnings("error", message=".*(fingerprint|other weights|re-keyed)")  # such a warning fails the run
    m = wb.load_model()
    print("fingerprint", m.fingerprint, m.hf.config._name_or_path)
    sae = wb.sae.default_sae(m)  # the shipped SAE: refused before issue 26 outside root's default cache
    save_directions("v.safetensors", {3: torch.ones(m.dims.d_model)}, {"method": "test"}, model=m)
    load_directions("v.safetensors", m)
    held_out = wb.data.data_path(wb.sae.DEFAULT_SAE) / "heldout.jsonl"  # shipped text as the corpus (sampling is slow)
    open("corpus.txt", "w").write(" ".join(json.loads(l)["text"] for l in held_out.read_text().splitlines()))
    C = second_moments(m, [5], corpus="corpus.txt", n_tokens=256, seq_len=32, progress=False)[5]
    assert torch.equal(second_moments(m, [5], corpus="corpus.txt", n_tokens=256, seq_len=32, progress=False)[5], C)
    print("ok")
""")


@pytest.mark.slow
def test_shipped_sae_vectors_and_statistics_load_from_a_fresh_cache_as_another_user(outside_checkout):
    """A fresh $WORKBENCH_CACHE and HOME (the default model copied in, i.e. moved: its config names the new
    folder), as user nobody when the tests run as root."""
    from workbench.core.default_model import DEFAULT_MODEL, embedded, prepare_model

    fresh = outside_checkout
    shutil.copytree(prepare_model(DEFAULT_MODEL), fresh.cache / "models" / embedded(DEFAULT_MODEL).converted)
    (fresh.path / "run.py").write_text(FRESH_USER_SCRIPT)
    r = fresh.run([sys.executable, "run.py"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok" in r.stdout and str(fresh.cache) in r.stdout
