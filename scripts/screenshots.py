"""Screenshots of the interactive views on the default model, as headless Chromium renders their saved HTML
(docs/screenshots/default_*.png; tests/test_browser.py takes the tiny-model ones). Debian's /usr/bin/chromium
through Playwright; every page request that is not a local file is refused.

    WORKBENCH_QUICK=1 python scripts/screenshots.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import workbench as wb
from workbench.data.ioi import ioi_pairs

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def hover(page, row: int, col: int, xaxis: str = "xaxis", yaxis: str = "yaxis") -> None:
    """Move the mouse over cell (row, col) of the page's first plotly figure."""
    x, y = page.evaluate(
        """([r, c, xn, yn]) => { const gd = document.querySelector('.js-plotly-plot');
        const b = gd.getBoundingClientRect(), xa = gd._fullLayout[xn], ya = gd._fullLayout[yn];
        return [b.left + xa._offset + xa.l2p(c), b.top + ya._offset + ya.l2p(r)]; }""", [row, col, xaxis, yaxis])
    page.mouse.move(x, y)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)


def main() -> None:
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(1)
    model = wb.load_model()
    pair = ioi_pairs(model, 1)[0]
    grid = wb.patching.activation_patching(model, pair["clean"], pair["corrupted"], pair["answer"], pair["foil"],
                                  metric="normalized")["resid_pre"]
    trace = wb.patching.trace_fact(model, "The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris",
                          noise_std=3 * wb.patching.tracing.embedding_noise_std(model, ["Eiffel Tower"]), samples=3)
    toks, pattern = wb.views.attention_pattern(model, pair["clean"], 20)
    tmp = Path(tempfile.mkdtemp(prefix="views-"))
    files = {"grid": wb.views.save_html(grid, tmp / "grid.html"), "trace": wb.views.save_html(trace, tmp / "trace.html"),
             "attention": wb.views.save_html(wb.views.attention_view(toks, pattern, "attention patterns, layer 20"),
                                       tmp / "attention.html")}
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1250, "height": 820})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
        page.goto(files["grid"].as_uri())
        page.wait_for_selector(".js-plotly-plot .heatmaplayer")
        row, col = np.unravel_index(np.abs(grid.values).argmax(), grid.shape)
        hover(page, int(row), int(col))
        page.screenshot(path=OUT / "default_patching_grid.png")
        page.goto(files["trace"].as_uri())
        page.wait_for_selector(".js-plotly-plot .heatmaplayer")
        hover(page, trace.subject_span[1] - 1, int(trace.scores["mlp"][trace.subject_span[1] - 1].argmax()),
              "xaxis2", "yaxis2")
        page.screenshot(path=OUT / "default_causal_trace.png")
        page.goto(files["attention"].as_uri())
        page.wait_for_selector("[data-kind=circuitsvis] canvas, [data-kind=circuitsvis] svg, [data-kind=circuitsvis] td")
        page.screenshot(path=OUT / "default_attention_patterns.png")
        browser.close()
    print(f"wrote {OUT}/default_*.png")


if __name__ == "__main__":
    main()
