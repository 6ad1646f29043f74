"""A real browser on the interactive views: JupyterLab started on a free 127.0.0.1 port, a notebook run in
headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser is downloaded), and the
standalone HTML files opened through file://. Checks: the plotly heatmap rendered and a real mouse hover
shows the value Python computed for that cell; the steering slider (ipywidgets in Lab, inline JavaScript in
the file) shows the continuation of the chosen multiplier; the circuitsvis views drew their elements.
No request may leave the machine: every page request that is not to 127.0.0.1 or file:// fails the test.
Screenshots go to docs/screenshots/."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

import workbench as wb

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CLEAN, CORRUPT = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI", "").lower() in ("1", "true"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: scripts/setup.sh installs Debian's chromium as root")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; scripts/setup.sh does it as root)",
                allow_module_level=True)
if os.environ.get("CI", "").lower() in ("1", "true"):
    from playwright import sync_api  # in CI a missing playwright is an error, not a skip
else:
    sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hover_text(page, plot_index: int, row: int, col: int, xaxis: str = "xaxis", yaxis: str = "yaxis") -> list[str]:
    """Move the real mouse over cell (row, col) of the plotly figure `plot_index` on the page; return the
    lines of the hover label plotly draws."""
    page.mouse.move(0, 0)
    x, y = page.evaluate(
        """([i, r, c, xn, yn]) => { const gd = document.querySelectorAll('.js-plotly-plot')[i];
        gd.scrollIntoView(); const b = gd.getBoundingClientRect(), xa = gd._fullLayout[xn], ya = gd._fullLayout[yn];
        return [b.left + xa._offset + xa.l2p(c), b.top + ya._offset + ya.l2p(r)]; }""",
        [plot_index, row, col, xaxis, yaxis])
    page.mouse.move(x, y)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    return page.evaluate("() => [...document.querySelectorAll('.hoverlayer .hovertext text.nums tspan.line')]"
                         ".map(t => t.textContent)")


def number(line: str) -> float:
    return float(line.split(":")[-1].split("=")[-1].replace("\u2212", "-").strip())


def guard(page, offsite: list[str]) -> None:
    """Fail any request that would leave the machine, and remember it."""
    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")) or re.match(r"^(http|ws)s?://127\.0\.0\.1[:/]", url):
            r.continue_()
        else:
            offsite.append(url)
            r.abort()
    page.route("**/*", route)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny):
    """A patching grid, a causal trace and a steering sweep on the tiny model, and their saved HTML files."""
    from workbench.steering import SteeringSweep, build_steering_vector, sweep

    d = tmp_path_factory.mktemp("views")
    m = tiny("llama")
    grid = wb.patching.activation_patching(m, CLEAN, CORRUPT, " Paris", " Rome", top_k=3)["resid_pre"]
    trace = wb.patching.trace_fact(m, CLEAN, "Eiffel Tower", " Paris", noise_std=0.5, samples=2, window=2)
    vec = build_steering_vector(m, ["I love this", "Wonderful day"], ["I hate this", "Terrible day"], layers=[1])
    sw = sweep(m, vec, ["The film was", "My neighbour is"], multipliers=[0.0, 8.0, 32.0],
               behaviour=lambda p, c: [len(t.split()) for t in c], behaviour_name="words", max_new_tokens=6)
    texts = {m: [s["continuation"] for s in sw.samples if s["multiplier"] == m] for m in sw.multipliers}
    assert texts[0.0] != texts[8.0] != texts[32.0], "the multipliers should change the text the views show"
    sw.save(d / "sweep.json")
    toks, pattern = wb.views.attention_pattern(m, CLEAN, 1)
    files = {"grid": wb.views.save_html(grid, d / "grid.html"), "trace": wb.views.save_html(trace, d / "trace.html"),
             "steering": wb.views.save_html(SteeringSweep.load(d / "sweep.json"), d / "steering.html"),
             "attention": wb.views.save_html(wb.views.attention_view(toks, pattern), d / "attention.html"),
             "tokens": wb.views.save_html(wb.views.token_view(toks, grid.values[0], "resid_pre effect at layer 0"),
                                    d / "tokens.html")}
    return {"dir": d, "grid": grid, "trace": trace, "sweep": sw, "files": files}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_standalone_html_files(results, browser):
    """Each saved file opens offline (no request leaves the machine) and its interactive elements work."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page, offsite = browser.new_page(viewport={"width": 1200, "height": 700}), []
    guard(page, offsite)
    files, grid = results["files"], results["grid"]

    page.goto(files["grid"].as_uri())
    page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=30_000)
    r, c = 1, len(grid.coords["position"]) - 2
    lines = hover_text(page, 0, r, c)
    assert lines[0] == f"layer: {grid.coords['layer'][r]}" and lines[1] == f"position: {grid.coords['position'][c]}"
    assert number(lines[2]) == pytest.approx(float(grid.values[r, c]), rel=1e-3, abs=1e-9)
    page.mouse.down()  # a click on the hovered cell shows its patched run's top predictions
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('.workbench-click').textContent.includes('after patching')")
    shown = page.inner_text(".workbench-click")
    top = grid.meta["top_predictions"]
    cell = r * len(grid.coords["position"]) + c
    assert [repr(t) for t in top["tokens"][cell]] == [ln.split("p =")[0].strip() for ln in shown.splitlines()[1:]]
    page.screenshot(path=SHOTS / "patching_grid.png")

    trace = results["trace"]
    page.goto(files["trace"].as_uri())
    page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=30_000)
    t, layer = trace.subject_span[1] - 1, 1  # the last subject token: restoring it matters
    lines = hover_text(page, 0, t, layer)
    assert lines[0] == "resid" and lines[1].startswith(f"token {t}: ") and lines[2] == f"layer {layer}"
    assert number(lines[3]) == pytest.approx(float(trace.scores["resid"][t, layer]), rel=1e-3, abs=1e-9)
    assert number(lines[4]) == pytest.approx(float(trace.scores["resid"][t, layer] - trace.p_corrupted), rel=1e-3, abs=1e-9)
    lines = hover_text(page, 0, t, layer, "xaxis2", "yaxis2")  # the MLP panel
    assert lines[0] == "mlp" and number(lines[3]) == pytest.approx(float(trace.scores["mlp"][t, layer]), rel=1e-3, abs=1e-9)
    page.screenshot(path=SHOTS / "causal_trace.png")

    sw = results["sweep"]
    page.goto(files["steering"].as_uri())
    page.wait_for_selector(".workbench-steering .cell table")
    for layer in sw.layers:
        page.select_option(".workbench-steering select.layer", str(layer))
        for j, mult in enumerate(sw.multipliers):
            page.fill(".workbench-steering input.mult", str(j))  # a range input takes fill() and fires `input`
            want = [s for s in sw.samples if s["layer"] == layer and s["multiplier"] == mult]
            shown = page.eval_on_selector_all(".workbench-steering td.cont", "tds => tds.map(t => t.textContent)")
            assert shown == [s["continuation"] for s in want], (layer, mult)
            assert page.inner_text(".workbench-steering .mult-value") == f"{mult:g}"
    page.screenshot(path=SHOTS / "steering_sweep.png")

    page.goto(files["attention"].as_uri())
    page.wait_for_selector("[data-kind=circuitsvis] canvas, [data-kind=circuitsvis] svg, [data-kind=circuitsvis] td",
                           timeout=30_000)
    page.screenshot(path=SHOTS / "attention_patterns.png")
    page.goto(files["tokens"].as_uri())
    page.wait_for_selector("[data-kind=circuitsvis] span", timeout=30_000)
    text = page.inner_text("[data-kind=circuitsvis]")
    assert "Eiffel" in text and "Tower" in text
    page.set_viewport_size({"width": 700, "height": 160})
    page.screenshot(path=SHOTS / "token_values.png")
    page.close()
    assert offsite == [], f"pages tried to reach the network: {offsite}"


NOTEBOOK_CELLS = [
    "import torch\ntorch.set_num_threads(1)\nimport workbench as wb\nfrom workbench.steering import SteeringSweep\n"
    f"m = wb.tiny_model('llama')\n"
    f"grid = wb.patching.activation_patching(m, {CLEAN!r}, {CORRUPT!r}, ' Paris', ' Rome', progress=True)['resid_pre']",
    "grid.show()",
    "SteeringSweep.load('sweep.json').show()",
]


def test_jupyterlab_notebook(results, browser, tmp_path):
    """JupyterLab on a free local port runs a notebook: the heatmap hovers with the right value and moving the
    ipywidgets slider (keyboard on its handle) changes the continuations shown, through the kernel."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "views.ipynb")
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "get Jupyter news?" prompt over the page
    (tmp_path / "sweep.json").write_bytes((results["dir"] / "sweep.json").read_bytes())
    port, token = free_port(), os.urandom(16).hex()
    env = {**{k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"},  # the bars are under test too
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "PYTHONPATH": os.pathsep.join([str(Path(wb.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
         "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]  # nor may the server
        + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                json.load(urlopen(f"{base}/api/status?token={token}", timeout=2))
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        page, offsite = browser.new_page(viewport={"width": 1300, "height": 900}), []
        guard(page, offsite)
        page.goto(f"{base}/lab/tree/views.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # the kernel is connected once the status bar says so; then the menu bar's Run > Run All Cells
        page.wait_for_function("() => /\\| Idle/.test(document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')"
                               "?.textContent || '')", timeout=90_000)
        page.click(".jp-Notebook .jp-Cell >> nth=0")
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_selector(".jp-InputArea-prompt:has-text('[1]')", timeout=60_000)
        try:
            page.wait_for_selector(".jp-OutputArea .js-plotly-plot .heatmaplayer", timeout=120_000)
        except Exception:
            page.screenshot(path=tmp_path / "failed.png")
            raise AssertionError(f"no heatmap in Lab; see {tmp_path / 'failed.png'}; cells: "
                                 f"{page.inner_text('.jp-Notebook')[-2000:]}; server log: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        grid = results["grid"]
        lines = hover_text(page, 0, 0, 2)
        assert lines[0] == "layer: 0" and lines[1] == f"position: {grid.coords['position'][2]}"
        assert number(lines[2]) == pytest.approx(float(grid.values[0, 2]), rel=1e-3, abs=1e-9)
        page.screenshot(path=SHOTS / "jupyterlab_patching_grid.png")
        # tqdm.auto drew a widget progress bar (ipywidgets installed), not the "IProgress not found" fallback
        assert page.locator(".jp-OutputArea .widget-hprogress").count() >= 1
        assert "IProgress not found" not in page.inner_text(".jp-Notebook")

        sw = results["sweep"]
        page.wait_for_selector(".jp-OutputArea .widget-slider .noUi-handle, .jp-OutputArea .widget-slider input",
                               timeout=120_000)
        first = [s["continuation"] for s in sw.samples if s["layer"] == sw.layers[0] and s["multiplier"] == sw.multipliers[0]]
        second = [s["continuation"] for s in sw.samples if s["layer"] == sw.layers[0] and s["multiplier"] == sw.multipliers[1]]
        widget = page.locator(".jp-OutputArea .widget-vbox").last
        widget.scroll_into_view_if_needed()
        cont = ".jp-OutputArea .widget-vbox td.cont"
        page.wait_for_function(f"() => [...document.querySelectorAll({cont!r})].map(t => t.textContent).join('|') === "
                               f"{json.dumps('|'.join(first))}", timeout=30_000)
        widget.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => [...document.querySelectorAll({cont!r})].map(t => t.textContent).join('|') === "
                               f"{json.dumps('|'.join(second))}", timeout=30_000)
        page.screenshot(path=SHOTS / "jupyterlab_steering_widget.png")
        page.close()
        assert offsite == [], f"JupyterLab's page tried to reach the network: {offsite}"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_attribution_graph_view(browser, tmp_path):
    """The graph view of the planted two-step circuit (tests/test_circuits.py): offline, the hover on a feature
    shows its label and activation, and a click on the target logit keeps exactly the ancestors Python computes."""
    from test_circuits import planted_gpt2

    from workbench.circuits import ancestors, attribute, feature_labels, graph_view, prune_graph

    model, tcs, target, prompt = planted_gpt2()
    g = attribute(model, prompt, tcs)
    kept = prune_graph(g)
    labels = feature_labels(model, tcs, g, texts=[prompt], nodes=kept.subgraph_nodes())
    path = wb.views.save_html(graph_view(g, kept, labels), tmp_path / "graph.html")
    page, offsite = browser.new_page(viewport={"width": 1200, "height": 700}), []
    guard(page, offsite)
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=30_000)
    nodes = kept.subgraph_nodes()

    def node_xy(i):
        k = nodes.index(i)
        return page.evaluate("""(k) => { const gd = document.querySelector('.js-plotly-plot'); gd.scrollIntoView();
            const b = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, t = gd.data[2];
            return [b.left + xa._offset + xa.l2p(t.x[k]), b.top + ya._offset + ya.l2p(t.y[k])]; }""", k)

    b_node = g.feature_index(1, g.n_pos - 1, 0)
    page.mouse.move(*node_xy(b_node))
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    hover = page.evaluate("() => [...document.querySelectorAll('.hoverlayer .hovertext text tspan.line')]"
                          ".map(t => t.textContent).join('\\n')")
    assert g.node(b_node)["label"] in hover and f"activation: {float(g.activation_values[b_node]):.3f}" in hover
    assert "raises:" in hover
    page.mouse.move(0, 0)
    page.mouse.move(*node_xy(g.logit_index(0)))  # hover first: plotly clicks the point it hovers
    page.wait_for_function("() => [...document.querySelectorAll('.hoverlayer .hovertext text tspan.line')]"
                           ".some(t => t.textContent.startsWith('logit'))", timeout=10_000)
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot').dataset.kept")
    shown = json.loads(page.evaluate("() => document.querySelector('.js-plotly-plot').dataset.kept"))
    assert shown == ancestors(kept, g.logit_index(0))
    assert offsite == []
def test_model_diff_report_opens_offline(tmp_path, browser):
    """The model-diff report (workbench.diffing) through file://: every plotly figure drew, the TuCo bars carry the
    values Python computed, the agreement line and the latent / counterfactual tables are there."""
    from workbench.diffing import model_diff, perturbed_copy

    base = wb.tiny_model("gpt2")
    r = model_diff(base, perturbed_copy(base, 0.1, seed=1), ["The cat sat on the mat", "A dog ran in the park"],
                   steps=50, n_samples=2, max_new_tokens=4)
    folder = r.save(tmp_path / "report")
    page, offsite = browser.new_page(viewport={"width": 1200, "height": 800}), []
    guard(page, offsite)
    page.goto((folder / "report.html").as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    plots = "[...document.querySelectorAll('.js-plotly-plot')]"
    n_plots = page.evaluate(f"() => {plots}.length")
    drawn = page.evaluate(f"() => {plots}.filter(g => g.querySelector('.main-svg')).length")
    bars = page.evaluate(f"() => Array.from({plots}[0]._fullData[0].y)")
    agreement = page.inner_text(".agreement")
    tables = page.evaluate("() => document.querySelectorAll('table').length")
    page.screenshot(path=str(SHOTS / "model_diff.png"), full_page=False)
    page.close()
    assert n_plots == 3 + (r.patching is not None) and drawn == n_plots  # TuCo by layer, per prompt, weights, grid
    assert bars == pytest.approx(r.tuco.by_layer().values[0].tolist(), rel=1e-6)
    assert f"measured {r.agreement['measured']:.3f}" in agreement and f"exact {r.agreement['exact']:.3f}" in agreement
    assert tables >= 2  # the crosscoder's latents and the counterfactual strings
    assert not offsite


def test_tracing_page_fits_a_laptop_screen_with_each_title_once(tiny, browser, tmp_path):
    """The tracing sweep's page (averages and each fact's Figure 1) at 1280 x 800: nothing wider than the window, and
    each figure's title shown once (it overflowed 1300 px and showed every title twice, issue 26)."""
    from workbench.patching.tracing import load_traces, trace_facts

    out = tmp_path / "trace"
    summary = trace_facts(tiny("llama"), wb.data.data_path("facts.jsonl"), out, limit=2, samples=2, window=2,
                          trace_unknown=True, figures=False, progress=False)
    view = wb.views.trace_folder_view(load_traces(out), summary)
    path = wb.views.save_html(view, out / "trace.html")
    page, offsite = browser.new_page(viewport={"width": 1280, "height": 800}), []
    guard(page, offsite)
    page.goto(path.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .heatmaplayer').length >= 3", timeout=30_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    widths = page.eval_on_selector_all(".js-plotly-plot", "els => els.map(e => e.getBoundingClientRect().right)")
    assert len(widths) == 3 and max(widths) <= 1280
    titles = page.eval_on_selector_all(".gtitle, h3", "els => els.map(e => e.textContent)")
    assert len(titles) == 3 and len(set(titles)) == 3, titles
    assert sum(t.startswith("Average indirect effect over 2 facts") for t in titles) == 1
    page.close()
    assert offsite == []
