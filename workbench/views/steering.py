"""Steering sweeps: move a slider over multipliers (and pick a layer) and read the steered continuations and
their scores. A notebook gets ipywidgets (`steering_widget`); a file gets the same view in a few lines of
inline JavaScript (`steering_view`), which needs no kernel."""
from __future__ import annotations

import html as _html
import json
import uuid

from .base import View


def _cells(sweep) -> dict:
    """{"layer|multiplier": {"behaviour", "success", "cost", "samples": [{prompt, continuation, score}]}}."""
    out = {}
    for i, layer in enumerate(sweep.layers):
        for j, m in enumerate(sweep.multipliers):
            out[f"{layer}|{m}"] = {
                "behaviour": float(sweep.behaviour.values[i, j]), "cost": float(sweep.cost.values[i, j]),
                "success": None if sweep.success is None else float(sweep.success.values[i, j]),
                "samples": [{k: s[k] for k in ("prompt", "continuation", "score")} for s in sweep.samples
                            if s["layer"] == layer and s["multiplier"] == m]}
    return out


def _cell_html(cell: dict, behaviour_name: str) -> str:
    """The text shown for one (layer, multiplier): summary line and one row per prompt (Python twin of the JS)."""
    succ = "" if cell["success"] is None else f", success {cell['success']:.2f}"
    rows = "".join(f"<tr><td>{_html.escape(s['prompt'])}</td><td class='cont'>{_html.escape(s['continuation'])}</td>"
                   f"<td>{s['score']:.3f}</td></tr>" for s in cell["samples"])
    return (f"<p class='summary'>{_html.escape(behaviour_name)}: {cell['behaviour']:.3f}{succ}, cost {cell['cost']:.3f}</p>"
            f"<table><tr><th>prompt</th><th>continuation</th><th>score</th></tr>{rows}</table>")


def steering_view(sweep) -> View:
    """Standalone view: a layer menu and a multiplier slider; the table below shows each prompt's steered
    continuation and its score for the chosen cell. All data is embedded; the script is inline."""
    vid = "steer-" + uuid.uuid4().hex[:10]
    name = sweep.meta.get("behaviour_name", "behaviour")
    data = {"layers": sweep.layers, "multipliers": sweep.multipliers, "cells": _cells(sweep), "name": name}
    options = "".join(f"<option value='{l}'>{l}</option>" for l in sweep.layers)
    n = len(sweep.multipliers)
    first = _cell_html(data["cells"][f"{sweep.layers[0]}|{sweep.multipliers[0]}"], name)
    # </ in the JSON would end the script element early; escape it
    blob = json.dumps(data).replace("</", "<\\/")
    body = f"""<div class="workbench-view workbench-steering" data-kind="steering" id="{vid}">
<style>#{vid} table {{border-collapse: collapse; font-size: 13px}} #{vid} td, #{vid} th {{border: 1px solid #ccc;
padding: 2px 6px; text-align: left; vertical-align: top}} #{vid} .cont {{max-width: 40em}}</style>
<label>layer <select class="layer">{options}</select></label>
<label style="margin-left: 1em">multiplier <input class="mult" type="range" min="0" max="{n - 1}" step="1" value="0">
<span class="mult-value">{sweep.multipliers[0]}</span></label>
<div class="cell">{first}</div>
<script>
(function() {{
  const root = document.getElementById("{vid}");
  const data = {blob};
  const esc = s => String(s).replace(/[&<>"']/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}})[c]);
  function show() {{
    const layer = root.querySelector(".layer").value;
    const m = data.multipliers[+root.querySelector(".mult").value];
    root.querySelector(".mult-value").textContent = m;
    const key = Object.keys(data.cells).find(k => k === layer + "|" + m) ||
                Object.keys(data.cells).find(k => {{ const [l, mm] = k.split("|"); return l === layer && +mm === m; }});
    const c = data.cells[key];
    const succ = c.success === null ? "" : ", success " + c.success.toFixed(2);
    const rows = c.samples.map(s => "<tr><td>" + esc(s.prompt) + "</td><td class='cont'>" + esc(s.continuation) +
                                    "</td><td>" + s.score.toFixed(3) + "</td></tr>").join("");
    root.querySelector(".cell").innerHTML = "<p class='summary'>" + esc(data.name) + ": " + c.behaviour.toFixed(3) + succ +
      ", cost " + c.cost.toFixed(3) + "</p><table><tr><th>prompt</th><th>continuation</th><th>score</th></tr>" + rows + "</table>";
  }}
  root.querySelector(".layer").addEventListener("change", show);
  root.querySelector(".mult").addEventListener("input", show);
}})();
</script></div>"""
    return View(sweep.meta.get("title", "steering sweep"), body, "steering")


def steering_widget(sweep):
    """In a notebook: an ipywidgets layer dropdown and multiplier slider over the continuations and scores."""
    import ipywidgets as widgets

    name = sweep.meta.get("behaviour_name", "behaviour")
    cells = _cells(sweep)
    layer = widgets.Dropdown(options=sweep.layers, value=sweep.layers[0], description="layer")
    mult = widgets.SelectionSlider(options=sweep.multipliers, value=sweep.multipliers[0], description="multiplier",
                                   continuous_update=True)
    out = widgets.HTML(_cell_html(cells[f"{layer.value}|{mult.value}"], name))

    def update(_=None):
        out.value = _cell_html(cells[f"{layer.value}|{mult.value}"], name)

    layer.observe(update, "value")
    mult.observe(update, "value")
    return widgets.VBox([widgets.HBox([layer, mult]), out])
