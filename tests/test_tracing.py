import numpy as np
import pytest
import torch

import workbench as wb
from workbench.tracing import KINDS, embedding_noise_std, trace_fact, window_layers

PROMPT, SUBJECT, ANSWER = "The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris"
ROLE = {"resid": ("block", "output"), "mlp": ("mlp", "output"), "attn": ("attn", "output")}


@pytest.fixture(scope="module")
def tiny4(tokenizer):
    return {f: wb.tiny_model(f, n_layers=4, tokenizer=tokenizer) for f in ("llama", "gpt2")}


def research_loop(m, kind, noise_eps, window):
    """The research code's structure: per cell, one forward of batch samples+1 (row 0 clean), the subject's
    embeddings noised in rows 1.., the clean row's states copied into the others at the restored sites."""
    ids = m.to_tokens(PROMPT)
    span = m.find_span(PROMPT, SUBJECT)
    target = m.tokenizer(ANSWER, add_special_tokens=False).input_ids[0]
    samples = noise_eps.shape[0]
    T, L = ids.shape[1], m.dims.n_layers
    embed = m.module("embed")

    def noised(mod, args, out):
        out = out.clone()
        out[1:, span.start:span.stop] += noise_eps
        return out

    out = np.zeros((T, L))
    for t in range(T):
        for l in range(L):
            layers = [l] if kind == "resid" else list(window_layers(l, window, L))
            handles = [embed.register_forward_hook(noised)]
            for x in layers:
                def restore(mod, args, o, t=t):
                    h = o[0] if isinstance(o, tuple) else o
                    h = h.clone()
                    h[1:, t] = h[0, t]
                    return (h, *o[1:]) if isinstance(o, tuple) else h
                handles.append(m.module(ROLE[kind][0], x).register_forward_hook(restore))
            try:
                with torch.no_grad():
                    probs = m.hf(input_ids=ids.repeat(samples + 1, 1)).logits[1:, -1].softmax(-1)
            finally:
                for h in handles:
                    h.remove()
            out[t, l] = probs[:, target].mean().item()
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trace_equals_the_research_loop(tiny4, family):
    m = tiny4[family]
    samples, window, nu, seed = 3, 2, 0.5, 11
    tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=nu, samples=samples, window=window, seed=seed)
    eps = nu * torch.randn(samples, len(range(*tr.subject_span)), m.dims.d_model, generator=torch.Generator().manual_seed(seed))
    for kind in KINDS:
        ref = research_loop(m, kind, eps, window)
        assert np.abs(tr.scores[kind] - ref).max() < 1e-5, kind
    assert tr.subject_span == (1, 4)


def test_trace_identities(tiny4):
    m = tiny4["llama"]
    tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, samples=4, window=3)
    T, L = len(tr.tokens), m.dims.n_layers
    # restoring the last block's output at the last token restores the clean prediction exactly
    assert abs(tr.scores["resid"][T - 1, L - 1] - tr.p_clean) < 1e-5
    # before the subject nothing is corrupted, so restoring there changes nothing
    assert np.all(tr.scores["resid"][0] == tr.p_corrupted)
    # same seed, same noise, same numbers; another seed, other numbers
    again = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, samples=4, window=3)
    assert all(np.array_equal(again.scores[k], tr.scores[k]) for k in KINDS)
    other = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, samples=4, window=3, seed=1)
    assert other.p_corrupted != tr.p_corrupted
    back = wb.tracing.Trace.from_json(tr.to_json())
    assert np.array_equal(back.scores["mlp"], tr.scores["mlp"]) and back.subject_span == tr.subject_span


def test_trace_figure_and_bad_input(tiny4, tmp_path):
    m = tiny4["gpt2"]
    tr = trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, samples=2, window=2, kinds=("resid", "mlp"))
    tr.plot(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert embedding_noise_std(m, ["Eiffel Tower", "Paris"]) > 0
    with pytest.raises(ValueError, match="substring"):
        trace_fact(m, PROMPT, "Louvre", ANSWER, noise=0.5)
    with pytest.raises(ValueError, match="kinds"):
        trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, kinds=("mlp", "embed"))
    with pytest.raises(ValueError, match="samples"):
        trace_fact(m, PROMPT, SUBJECT, ANSWER, noise=0.5, samples=0)
