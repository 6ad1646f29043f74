"""Interactive views without a browser: what the HTML holds, that it fetches nothing, the CLI's --html files,
the ipywidgets steering view driven from Python, and bad input. tests/test_browser.py renders them."""
from __future__ import annotations

import html
import json
import re
import warnings

import numpy as np
import pytest

import workbench as wb
from workbench.cli import main
from workbench.steering import SteeringSweep, build_steering_vector, sweep

DATA = wb.data.data_path("steering")
CLEAN, CORRUPT = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"


def assert_offline(html: str) -> None:
    """No script or stylesheet is loaded from anywhere: everything is inline."""
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html), "a view loads a file"
    assert "unpkg.com/circuitsvis" not in html  # circuitsvis' CDN import (plotly.js itself names a map CDN, unused)


@pytest.fixture(scope="module")
def small_sweep(tiny):
    m = tiny("llama")
    vec = build_steering_vector(m, ["I love this", "Wonderful day"], ["I hate this", "Terrible day"], layers=[1])
    return sweep(m, vec, ["The film was", "My neighbour is"], multipliers=[0.0, 8.0, 32.0],
                 behaviour=lambda p, c: [len(t.split()) for t in c], behaviour_name="words", max_new_tokens=6)


def test_heatmap_view_holds_the_grid(tiny, tmp_path):
    res = wb.patching.activation_patching(tiny("llama"), CLEAN, CORRUPT, " Paris", " Rome", components=["resid_pre", "z"],
                                 by="position")
    grid = res["resid_pre"]
    view = grid.view()
    (trace,) = view.figure.data
    np.testing.assert_array_equal(np.asarray(trace.z), grid.values)
    assert list(trace.customdata[1, 3]) == ["1", grid.coords["position"][3]]  # hover labels: layer, "pos:token"
    path = wb.views.save_html(grid, tmp_path / "grid.html")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert_offline(html)
    assert 'class="plotly-graph-div"' in grid._repr_html_()  # what JupyterLab shows for a bare `grid`
    # a (layer, position, head) grid: one heatmap per head under a slider, the head named in the hover
    heads = wb.patching.activation_patching(tiny("llama"), CLEAN, CORRUPT, " Paris", " Rome", components="z",
                                   by="position_head")["z"]
    fig = heads.view().figure
    assert len(fig.data) == heads.shape[2] and [t.visible for t in fig.data] == [True] + [False] * (heads.shape[2] - 1)
    np.testing.assert_array_equal(np.asarray(fig.data[2].z), heads.values[:, :, 2])
    assert "head: 2" in fig.data[2].hovertemplate and len(fig.layout.sliders[0].steps) == heads.shape[2]


def test_page_of_views_inlines_plotly_once(tiny, tmp_path):
    m = tiny("llama")
    traces = [wb.patching.trace_fact(m, CLEAN, "Eiffel Tower", " Paris", noise_std=0.5, samples=2, window=2, seed=s)
              for s in (0, 1)]
    page = wb.views.concat([t.view() for t in traces], "two traces")
    one = traces[0].view().body
    assert len(page.body) < 1.2 * len(one)  # the 4.7 MB of plotly.js once, not twice
    assert page.body.count('class="plotly-graph-div"') == 2
    assert_offline(wb.views.save_html(page, tmp_path / "page.html").read_text())


def test_steering_views(small_sweep, tmp_path):
    sw = small_sweep
    page = wb.views.save_html(sw, tmp_path / "sweep.html").read_text()
    assert_offline(page)
    for s in sw.samples:  # every continuation is in the page's data, escaped for a script element
        assert json.dumps(s["continuation"]).replace("</", "<\\/") in page
    # the notebook widget, driven from Python: moving the slider changes the text shown
    box = wb.views.steering_widget(SteeringSweep.load(sw.save(tmp_path / "sweep.json")))
    (layer, mult), out = box.children[0].children, box.children[1]
    assert layer.value == 1
    for m in sw.multipliers:
        mult.value = m
        shown = {s["continuation"] for s in sw.samples if s["layer"] == 1 and s["multiplier"] == m}
        others = {s["continuation"] for s in sw.samples if s["layer"] == 1 and s["multiplier"] != m} - shown
        assert shown and others  # the fixture's multipliers change the text
        assert all(html.escape(c) in out.value for c in shown)
        assert not any(html.escape(c) in out.value for c in others)


def test_text_views_are_offline(tiny):
    m = tiny("llama")
    toks, pattern = wb.views.attention_pattern(m, CLEAN, 1)
    assert pattern.shape == (m.dims.n_heads, len(toks), len(toks))
    np.testing.assert_allclose(pattern.sum(-1).numpy(), 1.0, atol=1e-5)  # each query's weights sum to 1
    for view in (wb.views.attention_view(toks, pattern), wb.views.token_view(toks, np.arange(len(toks)))):
        assert_offline(view.body)
        assert "CircuitsVis.render(" in view.body


def test_views_bad_input(tiny, tmp_path):
    grid = wb.toolkit.LabelledArray(np.zeros(3), ("position",), {"position": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="arr: a heatmap view needs a 2-D or 3-D array"):
        grid.view()
    assert grid._repr_html_() is None  # a 1-D array falls back to its text repr
    with pytest.raises(ValueError, match="path: expected a file name ending in .html"):
        wb.views.save_html(wb.views.token_view(["a"], [1.0]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="values: expected one value per token"):
        wb.views.token_view(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="pattern: expected"):
        wb.views.attention_view(["a", "b"], np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="view: expected a workbench View"):
        wb.views.save_html("not a view", tmp_path / "x.html")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.html").exists()


def test_cli_html_flags(tmp_path):
    args = ["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Paris",
            "--foil", " Rome", "--sites", "resid_pre,mlp_out", "--out", str(tmp_path / "patch"), "--html"]
    assert main(args) == 0
    for site in ("resid_pre", "mlp_out"):
        html = (tmp_path / "patch" / f"{site}.html").read_text()
        assert html.count('class="plotly-graph-div"') == 1 and (tmp_path / "patch" / f"{site}.png").is_file()
        assert_offline(html)
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"id": i, "prompt": p, "subject": s, "object": t}) + "\n" for i, (p, s, t) in
                             enumerate([("The Eiffel Tower is in", "Eiffel Tower", "Paris"),
                                        ("The Colosseum is in", "Colosseum", "Rome")])))
    assert main(["trace", "--model", "tiny-llama", "--facts", str(facts), "--out", str(tmp_path / "trace"),
                 "--samples", "2", "--window", "2", "--trace-unknown", "--no-figures", "--html"]) == 0
    html = (tmp_path / "trace" / "trace.html").read_text()
    assert html.count('class="plotly-graph-div"') == 3  # the averages and both facts' Figure 1
    assert "The Colosseum is in" in html and "Average indirect effect over 2 facts" in html
    out = tmp_path / "steer"
    assert main(["steer", "--model", "tiny-llama", "--pairs", str(DATA / "sentiment_pairs.jsonl"), "--layers", "1",
                 "--multipliers", "0,8", "--prompts", str(DATA / "prompts.txt"), "--limit", "2",
                 "--behaviour", f"words:{DATA / 'french_words.txt'}", "--max-new-tokens", "3", "--out", str(out),
                 "--html"]) == 0
    html = (out / "sweep.html").read_text()
    for s in json.loads((out / "sweep.json").read_text())["samples"]:
        assert json.dumps(s["continuation"]).replace("</", "<\\/") in html


def test_progress_bars_use_notebook_widgets():
    """tqdm.auto's notebook bar needs ipywidgets; without it tqdm warns "IProgress not found" and prints text."""
    from tqdm.notebook import tqdm as notebook_tqdm

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = notebook_tqdm(total=3, display=False, disable=False)
        bar.update(3)
        bar.refresh()
        assert bar.container.children[1].value == 3  # the IntProgress widget moved
        bar.close()


def test_patching_heatmap_is_white_at_the_unpatched_baseline(tiny, tmp_path):
    """A cell with no effect holds the unpatched run's metric: the colour scale's middle (white) sits there, named in
    the title and colour bar; centre=0 switches back to zero."""
    m = tiny("llama")
    for direction, run in (("denoise", "corrupted"), ("noise", "clean")):
        grid = wb.patching.activation_patching(m, CLEAN, CORRUPT, " Paris", " Rome", direction=direction)["resid_pre"]
        base = grid.meta[f"{run}_metric"]
        # layer 0, position 0 (the BOS / first token, the same in both prompts): patching it changes nothing
        assert grid.values[0, 0] == pytest.approx(base, abs=1e-5)
        (trace,) = grid.view().figure.data
        assert trace.zmid == pytest.approx(base) and (trace.zmin + trace.zmax) / 2 == pytest.approx(base)
        assert max(abs(trace.zmin - base), abs(trace.zmax - base)) >= np.abs(grid.values - base).max() - 1e-9
        assert f"white: {base:.4g}" in trace.colorbar.title.text
        assert f"(white: {run} baseline {base:.4g})" in grid.view().figure.layout.title.text
        ax = grid.plot(tmp_path / f"{direction}.png")
        lo, hi = ax.images[0].get_clim()
        assert (lo + hi) / 2 == pytest.approx(base)
    (zero,) = grid.view(centre=0).figure.data
    assert zero.zmid == 0 and zero.zmin == -zero.zmax and "white: 0" in zero.colorbar.title.text
    assert "(white: 0)" in grid.view(centre=0).figure.layout.title.text
    with pytest.raises(ValueError, match="centre: expected 'baseline' or a finite number"):
        grid.view(centre="middle")


def test_token_labels_are_one_format_everywhere(tiny):
    from workbench.toolkit import token_labels

    assert token_labels(["When", " Mary", "\n"], marked=[1]) == ["0: When", "1: Mary*", "2: '\\n'"]
    m = tiny("llama")
    grid = wb.patching.activation_patching(m, CLEAN, CORRUPT, " Paris", " Rome")["resid_pre"]
    toks = m.to_str_tokens(CORRUPT)
    assert grid.coords["position"] == token_labels(toks)
    trace = wb.patching.trace_fact(m, CLEAN, "Eiffel Tower", " Paris", noise_std=0.5, samples=2, window=2, kinds="resid")
    fig = trace.view().figure
    start, stop = trace.subject_span
    assert list(fig.layout.yaxis.ticktext) == token_labels(trace.tokens, marked=range(start, stop))
