"""The model-diff report in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
nothing downloaded) opens report.html through file://, with every request that would leave the machine failed.
Checks: every plotly figure drew, the TuCo bars carry the values Python computed, the agreement line and the
counterfactual table are there."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import workbench as wb
from workbench.diffing import model_diff, perturbed_copy

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI", "").lower() in ("1", "true"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: scripts/setup.sh installs Debian's chromium as root")
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def test_model_diff_report_opens_offline(tmp_path):
    base = wb.tiny_model("gpt2")
    tuned = perturbed_copy(base, 0.1, seed=1)
    r = model_diff(base, tuned, ["The cat sat on the mat", "A dog ran in the park"], steps=50, n_samples=2,
                   max_new_tokens=4)
    folder = r.save(tmp_path / "report")
    offsite = []
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1200, "height": 800})

            def route(req):
                url = req.request.url
                if url.startswith(("file:", "data:", "blob:", "about:")) or re.match(r"^(http|ws)s?://127\.0\.0\.1[:/]", url):
                    req.continue_()
                else:
                    offsite.append(url)
                    req.abort()
            page.route("**/*", route)
            page.goto((folder / "report.html").as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
            n_plots = page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")
            drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                  ".filter(g => g.querySelector('.main-svg')).length")
            bars = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot')[0]._fullData[0].y)")
            agreement = page.inner_text(".agreement")
            rows = page.evaluate("() => document.querySelectorAll('table').length")
        finally:
            b.close()
    assert n_plots == 3 + (r.patching is not None) and drawn == n_plots  # TuCo by layer, per prompt, weights, grid
    assert bars == pytest.approx(r.tuco.by_layer().values[0].tolist(), rel=1e-6)
    assert f"measured {r.agreement['measured']:.3f}" in agreement and f"exact {r.agreement['exact']:.3f}" in agreement
    assert rows >= 2  # the crosscoder's latents and the counterfactual strings
    assert not offsite
