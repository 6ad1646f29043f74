"""CLI parity (issue 26, items 4 and 5): every flag has help, `workbench help VERB`, valid names listed, every fix an
error message names exists as a flag, progress bars with an estimate, resume counts, path patching's change from
clean, the package's warnings as one line each."""
import argparse
import ast
import json
import re
import warnings
from pathlib import Path

import pytest

from workbench.cli import main, parser
from workbench.core.sites import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
CLEAN, CORRUPT = "When Mary and John went to the store, John gave a drink to", \
    "When Mary and John went to the store, Mary gave a drink to"


def walk(p, path=()):
    """(verb path, action) for every argument of every verb and sub-verb."""
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from walk(sp, path + (name,))
        elif not isinstance(a, argparse._HelpAction):
            yield path, a


def all_flags() -> set[str]:
    return {o for _, a in walk(parser()) for o in a.option_strings}


def test_every_flag_of_every_verb_has_help():
    actions = list(walk(parser()))
    assert len({p for p, _ in actions}) >= 25  # the walk reaches the sub-verbs (sae train, transcoders eval, ...)
    missing = [(" ".join(p), a.option_strings or a.dest) for p, a in actions if not (a.help or "").strip()]
    assert not missing, f"flags without help text: {missing}"


DATASET_FLAGS = {"--facts", "--requests", "--data", "--texts", "--prompts", "--pairs", "--task", "--observed"}


def test_every_verb_that_reads_a_dataset_takes_limit():
    verbs: dict[tuple, set] = {}
    files: dict[tuple, set] = {}  # the file-valued dataset flags (demo's --facts is a count)
    for path, a in walk(parser()):
        verbs.setdefault(path, set()).update(a.option_strings)
        if a.type is None and set(a.option_strings) & DATASET_FLAGS:
            files.setdefault(path, set()).update(a.option_strings)
    readers = {p: verbs[p] for p in files}
    assert len(readers) >= 15
    assert not [" ".join(p) for p, flags in readers.items() if "--limit" not in flags]


@pytest.mark.parametrize("verb", [["patch"], ["sae", "train"], ["bench"]])
def test_help_verb_is_verb_dash_help(verb, capsys):
    outs = []
    for argv in (["help", *verb], [*verb, "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith(f"usage: workbench {' '.join(verb)}")


def test_bench_help_lists_every_benchmark(capsys):
    # the benchmarks are the scripts of benchmarks/ with a main(), read here by a plain text search
    expected = {f.stem for f in (ROOT / "benchmarks").glob("*.py") if re.search(r"^def main\(", f.read_text(), re.M)}
    assert len(expected) >= 10
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    listing = out.split("The benchmarks:")[1].split("positional arguments:")[0]
    listed = set(re.findall(r"^  (\w+) ", listing, re.M))
    assert listed == expected
    assert main(["bench", "nosuch"]) == 2 and "patching" in capsys.readouterr().err


def test_names_are_listed_in_help_and_errors(capsys):
    with pytest.raises(SystemExit):
        main(["help", "patch"])
    out = " ".join(capsys.readouterr().out.split())
    grid = [c for c in COMPONENTS if c != "pattern"]
    assert all(c in out for c in grid)
    with pytest.raises(SystemExit):
        main(["help", "trace"])
    out = capsys.readouterr().out
    assert all(k in out for k in ("resid", "mlp", "attn"))
    assert main(["patch", "--model", "tiny-llama", "--clean", "a", "--corrupt", "b", "--answer", " c", "--foil", " d",
                 "--sites", "resid", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "sites" in err and all(c in err for c in grid)


# The fixes the library's messages suggest ("pass align=...", "allow_other_model=True", "validate=False", ...) and
# the CLI flag of each; names listed here instead are Python-only, with the reason.
PYTHON_ONLY = {
    "d_model": "describes a shape in a message, not a fix",
    "model_spec": "the Python executor API (a verb builds its own executor from --workers / --ray-address)",
    "run": "the Python sweep API (the CLI's --workers / --ray-address / --force are a Run)",
    "pointwise": "the Python intervention API (interventions are not built on the command line)",
    "method": "names the value a flag already takes (steer --method probe)",
    "metric": "names the value a flag already takes (--metric logit_diff)",
}
_SUGGESTION = re.compile(r"\b(?:pass|use|set|with|or|give|load with)\s+`?([a-z_]{2,})=(\S*)|\(([a-z_]{3,})=(True|False)\b")


def suggested_fixes() -> dict[str, set[str]]:
    """{argument name: the values suggested} from every message string of the library (docstrings left out)."""
    found: dict[str, set[str]] = {}
    for f in (ROOT / "workbench").rglob("*.py"):
        if "cli" in f.parts:
            continue
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and ast.get_docstring(n, clean=False) is not None}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in _SUGGESTION.finditer(node.value):
                    found.setdefault(m.group(1) or m.group(3), set()).add(m.group(2) or m.group(4))
    return found


def test_every_fix_an_error_names_is_a_flag():
    fixes = suggested_fixes()
    for name in ("align", "allow_other_model", "validate", "force", "allow_abnormal"):
        assert name in fixes  # the scan sees the messages the issue names
    flags = all_flags()
    missing = []
    for name, values in sorted(fixes.items()):
        if name in PYTHON_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        wanted = {f"--no-{flag[2:]}"} if values == {"False"} else {flag, f"--no-{flag[2:]}"}
        if not wanted & flags:
            missing.append(f"{name}={'/'.join(sorted(values))} (expected {' or '.join(sorted(wanted))})")
    assert not missing, f"fixes named by the library's messages with no CLI flag: {missing}"
    assert not set(PYTHON_ONLY) - set(fixes), "PYTHON_ONLY lists a name no message suggests any more"


def test_progress_bar_with_an_estimate_on_a_slow_verb(tmp_path, capsys):
    # `known` over 70 facts (two batches) on a tiny model: tqdm's line with the rate and the time left
    assert main(["known", "--model", "tiny-llama", "--limit", "70", "--out", str(tmp_path / "k.jsonl")]) == 0
    cap = capsys.readouterr()
    assert "70 known" in cap.out and len((tmp_path / "k.jsonl").read_text().splitlines()) == 70
    bar = re.search(r"checking facts: +100%\|.*\| 2/2 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(?:s/batch|batch/s)\]", cap.err)
    assert bar, cap.err


def test_resumed_trace_counts_now_and_before(tmp_path, capsys):
    argv = ["trace", "--model", "tiny-llama", "--out", str(tmp_path / "t"), "--limit", "2", "--samples", "2",
            "--window", "2", "--kinds", "resid", "--trace-unknown", "--no-figures"]
    assert main(argv) == 0
    assert "traced 2 facts," in capsys.readouterr().out
    assert main(argv) == 0
    assert "traced 0 facts now, 2 before (resumed)" in capsys.readouterr().out
    assert main(argv[:6] + ["3"] + argv[7:]) == 0  # one more fact: one now, two before
    assert "traced 1 facts now, 2 before (resumed)" in capsys.readouterr().out


def test_path_patch_prints_the_change_from_clean(tmp_path, capsys):
    assert main(["path-patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary",
                 "--foil", " John", "--senders", "L0H0,mlp0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "result.json").read_text())
    clean, corrupt = res["meta"]["clean_metric"], res["meta"]["corrupted_metric"]
    for sender, v in zip(res["coords"]["sender"], res["values"]):
        line = next(x for x in out.splitlines() if x.startswith(f"{sender} -> "))
        change = float(re.search(r"change from clean ([-+][\d.]+)", line).group(1))
        share = float(re.search(r"\(([-+][\d.]+)% of clean - corrupted\)", line).group(1))
        assert abs(change - (v - clean)) < 1e-4
        assert abs(share - 100 * (v - clean) / (clean - corrupt)) < 0.06


def test_warnings_print_as_one_line_in_the_cli_only(tmp_path, capsys):
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # an answer without its leading space: the patching grid warns (and patches)
        assert main(["patch", "--model", "tiny-llama", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", "Mary",
                     "--foil", " John", "--sites", "resid_pre", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "leading space" in x]
    assert lines and lines[0].startswith("workbench: warning: answer: 'Mary' is scored as given"), err
    assert "UserWarning" not in err and ".py:" not in err
    assert warnings.showwarning is before  # set by the command, not by importing the package
