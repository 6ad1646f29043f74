"""Validation at load (issue 30): the architecture table must describe the model, on every family; a wrong entry
is refused with the check, layer and module named."""
import dataclasses

import pytest

import workbench as wb
from workbench.core.arch import ARCHS
from workbench.core.model import Model
from workbench.core.tiny import TINY_FAMILIES
from workbench.core.validate import ValidationError, validate_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_passes_validation(tiny, family):
    errors = validate_model(tiny(family))
    assert set(errors) >= {"cache", "logits", "residual", "outputs", "patterns"}
    assert max(errors.values()) < 1e-5, errors


def _with_entry(model, **change):
    bad = Model(model.hf, model.tokenizer)
    bad.arch = dataclasses.replace(bad.arch, **change)
    return bad


@pytest.mark.parametrize("family, change, message", [
    # the MLP's post-norm left out of Gemma 2's entry: the block adds post_feedforward_layernorm's output, not the MLP's
    ("gemma2", {"mlp_out": None}, r"residual check failed at layer 0, module 'model\.layers\.0\.post_attention_layernorm \+ model\.layers\.0\.mlp'"),
    # attention's contribution read from the pre-attention norm; then from the query projection (not a norm)
    ("llama", {"attn_out": "input_layernorm"}, r"residual check failed at layer 0, module .*input_layernorm \+"),
    ("llama", {"attn_out": "self_attn.q_proj"}, r"modules check failed at layer 0, module .*q_proj': model: unknown norm"),
    # a down projection of the wrong shape
    ("qwen2", {"mlp_down": "mlp.up_proj"}, r"modules check failed at layer 0, module 'model\.layers\.0\.mlp\.up_proj': expected a linear map 128 -> 64"),
    # the final soft-capping missing (tiny Gemma 3 caps at 3.0)
    ("gemma3", {"final_softcap": None}, r"cache check failed at layer 1, module 'lm_head'.*soft-capping"),
    # a module that does not exist
    ("olmo2", {"attn_out": "post_attn_norm"}, r"modules check failed at layer 0, module 'model\.layers\.0\.post_attn_norm'"),
])
def test_a_wrong_table_entry_is_refused(tiny, family, change, message):
    with pytest.raises(ValidationError, match=message):
        validate_model(_with_entry(tiny(family), **change))


def test_load_model_validates_unless_told_not_to(tiny, monkeypatch):
    m = tiny("gemma2")
    monkeypatch.setitem(ARCHS, "gemma2", dataclasses.replace(ARCHS["gemma2"], mlp_out=None))
    with pytest.raises(ValidationError, match="validate=False"):
        wb.load_model(m.hf, m.tokenizer)
    assert wb.load_model(m.hf, m.tokenizer, validate=False).arch.mlp_out is None
    monkeypatch.delitem(ARCHS, "gemma2")
    with pytest.raises(ValueError, match="architecture 'gemma2' is not supported"):
        wb.load_model(m.hf, m.tokenizer, validate=False)


def test_validation_runs_once_per_model(tiny, monkeypatch, tmp_path):
    """A second load of the same weights reads the verdict (no forward), in-process and from the cache dir; a
    changed weight (another fingerprint) is validated again."""
    import copy

    import torch

    from workbench.core import validate

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(validate, "_PASSED", {})
    m = tiny("llama")
    hf = copy.deepcopy(m.hf)  # its own weights: one is changed below
    forwards = []
    handle = hf.get_input_embeddings().register_forward_hook(lambda *a: forwards.append(1))
    try:
        def load():
            before = len(forwards)
            wb.load_model(hf, m.tokenizer)
            return len(forwards) - before

        assert load() == 1  # validated: one forward
        [record] = (tmp_path / "validated").iterdir()
        assert load() == 0  # the verdict of this process
        validate._PASSED.clear()
        assert load() == 0  # the verdict on disk
        record.write_text("{not json")
        validate._PASSED.clear()
        assert load() == 1  # a damaged record is no verdict
        with torch.no_grad():
            hf.get_output_embeddings().weight[0, 0] += 1e-3  # another fingerprint
        assert load() == 1
        assert load() == 0
        assert len(list((tmp_path / "validated").iterdir())) == 2
    finally:
        handle.remove()
