"""Rewrite Python files and notebooks written against workbench 0.2 to the 0.3 layout, in place: module paths
(`workbench.tracing` -> `workbench.patching.tracing`, ...; README: "Moved in 0.3"), names from `workbench.analysis`,
`from workbench import caft`, top-level names (`wb.activation_patching` -> `wb.patching.activation_patching`, ...) and
`from workbench.steering import generate` (now `generate_steered`). Prints each file it changed.

    python scripts/migrate_0_3.py notebooks/*.ipynb my_analysis.py
"""
import re
import sys

MODS = [  # absolute module paths, longest first
    ("workbench.analysis.cross_model", "workbench.patching.cross_model"),
    ("workbench.analysis.path_patching", "workbench.patching.paths"),
    ("workbench.analysis.tuned_lens", "workbench.lenses.tuned"),
    ("workbench.analysis.lens", "workbench.lenses.logit"),
    ("workbench.analysis.dla", "workbench.lenses.dla"),
    ("workbench.analysis.das", "workbench.directions.subspace"),
    ("workbench.distributed.devices", "workbench.core.devices"),
    ("workbench.distributed.executor", "workbench.toolkit.executors"),
    ("workbench.distributed", "workbench.toolkit"),
    ("workbench.core.sweep", "workbench.toolkit.sweep"),
    ("workbench.core.labelled", "workbench.toolkit.results"),
    ("workbench.plotting", "workbench.views.figures"),
    ("workbench.editing.rome", "workbench.editing.rank_one"),
    ("workbench.editing.memit", "workbench.editing.mass"),
    ("workbench.steering.sweep", "workbench.steering.sweeps"),
    ("workbench.tracing", "workbench.patching.tracing"),
    ("workbench.caft", "workbench.directions.caft"),
]
WB = {
    "patching": "activation_patching attribution_patching attribute_then_verify trace_fact trace_facts path_patching cross_model_patching tracing",
    "lenses": "logit_lens direct_logit_attribution",
    "directions": "das read_activations caft",
    "steering": "SteeringVector build_steering_vector steer",
    "editing": "EditRequest WeightEdit rome memit ft_l run_counterfact",
    "sae": "load_sae save_sae SAEEdit train_sae evaluate_sae",
    "views": "save_html",
    "toolkit": "LabelledArray",
    "data": "data_path",
}
NAME = {n: f"{pkg}.{n}" for pkg, names in WB.items() for n in names.split()}
NAME["steering_sweep"] = "steering.sweep"
NAME["distributed"] = "toolkit"
ANALYSIS = {**{n: "lenses" for n in "logit_lens lens_logits decompose_resid logit_attrs direct_logit_attribution TunedLens train_tuned_lens load_tuned_lens lens_kl".split()},
            **{n: "patching" for n in "path_patching cross_model_patching".split()},
            **{n: "directions" for n in "das DASResult SubspaceReplace interchange_accuracy rowspace_split".split()}}


def fix_analysis(m):
    indent, names = m.group(1), [n.strip() for n in m.group(2).split(",")]
    by = {}
    for n in names:
        by.setdefault(ANALYSIS[n], []).append(n)
    return "\n".join(f"{indent}from workbench.{p} import {', '.join(ns)}" for p, ns in by.items())


def rewrite(text):
    for old, new in MODS:
        text = re.sub(re.escape(old) + r"(?![\w])", new, text)
    text = re.sub(r"from workbench import caft\b", "from workbench.directions import caft", text)
    text = re.sub(r"([ \t]*)from workbench\.analysis import ([\w, ]+)", fix_analysis, text)
    text = re.sub(r"\bwb\.(\w+)", lambda m: "wb." + NAME.get(m.group(1), m.group(1)), text)
    text = re.sub(r"(from workbench\.steering import [^\n]*?)\bgenerate\b(?!_)", r"\1generate_steered as generate", text)
    return text


if __name__ == "__main__":
    for path in sys.argv[1:]:
        t = open(path).read()
        n = rewrite(t)
        if n != t:
            open(path, "w").write(n)
            print("rewrote", path)
