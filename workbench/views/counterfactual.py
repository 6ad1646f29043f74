"""Counterfactual strings side by side: each observed continuation next to its counterfactual, with the tokens
that differ marked (a token diff, so text the two share after diverging is not marked), as self-contained HTML."""
from __future__ import annotations

import difflib
import html as _html

from .base import View
from ..core import checks

STYLE = """<style>
.workbench-counterfactual table {border-collapse: collapse; font-size: 13px}
.workbench-counterfactual td, .workbench-counterfactual th {border: 1px solid #ccc; padding: 3px 6px;
  text-align: left; vertical-align: top; white-space: pre-wrap}
.workbench-counterfactual td.text {max-width: 34em}
.workbench-counterfactual mark.del {background: #f7c6c6}
.workbench-counterfactual mark.ins {background: #c8f0c8}
.workbench-counterfactual tr.same td.text {color: #555}
</style>"""


def diff_marks(a: list[int], b: list[int]) -> tuple[list[bool], list[bool]]:
    """Which tokens of a and of b are outside the longest matching blocks (difflib): True = differs."""
    da, db = [True] * len(a), [True] * len(b)
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            da[block.a + k] = db[block.b + k] = False
    return da, db


def _tokens_html(tokenizer, ids: list[int], marks: list[bool], cls: str) -> str:
    out = []
    for t, m in zip(ids, marks):
        s = _html.escape(tokenizer.decode([t]))
        out.append(f'<mark class="{cls}">{s}</mark>' if m else s)
    return "".join(out)


def counterfactual_view(result, model, *, max_rows: int = 200, title: str | None = None) -> View:
    """A `Counterfactuals` result as a table: prompt | observed (tokens not in the counterfactual marked red) |
    counterfactual (tokens not in the observed string marked green) | first differing position.
    `model`: the Model (or tokenizer) that decodes the token ids. Save with `save_html(view, "x.html")`."""
    tokenizer = getattr(model, "tokenizer", model)
    if not hasattr(tokenizer, "decode"):
        raise checks.fail('model', 'a workbench Model or a tokenizer', type(model).__name__)
    for name in ("prompts", "observed_ids", "ids", "diverged_at"):
        if not hasattr(result, name):
            raise checks.fail('result', 'a Counterfactuals result (from counterfactuals())', type(result).__name__)
    checks.integer(max_rows, "max_rows")
    n = len(result.ids)
    same = sum(d is None for d in result.diverged_at)
    rows = []
    for r in range(min(n, max_rows)):
        a, b = list(result.observed_ids[r]), list(result.ids[r])
        da, db = diff_marks(a, b)
        d = result.diverged_at[r]
        rows.append(f'<tr class="{"same" if d is None else "diff"}"><td>{r}</td><td class="text">'
                    f'{_html.escape(result.prompts[r])}</td><td class="text">{_tokens_html(tokenizer, a, da, "del")}'
                    f'</td><td class="text">{_tokens_html(tokenizer, b, db, "ins")}</td>'
                    f'<td>{"identical" if d is None else d}</td></tr>')
    what = result.meta.get("intervention", "?")
    if result.meta.get("replace") is not None:  # a token-level counterfactual (Chatzi et al.)
        what = f"{what}; a token replaced"
    head = (f"<p class='summary'>{n} pairs, {same} identical ({100 * same / max(n, 1):.1f}%); intervention: "
            f"{_html.escape(str(what))}; noise: {_html.escape(str(result.meta.get('noise', '?')))}"
            f"{'' if n <= max_rows else f'; first {max_rows} rows shown'}</p>")
    body = (f'<div class="workbench-view workbench-counterfactual" data-kind="counterfactual">{STYLE}{head}'
            "<table><tr><th>#</th><th>prompt</th><th>observed</th><th>counterfactual</th><th>diverged at</th></tr>"
            + "".join(rows) + "</table></div>")
    return View(title or f"counterfactual strings ({what})", body, "counterfactual")
