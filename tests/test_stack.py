"""The stack and the public API, checked without a model (README: Architecture).

- import-linter's layers contract (pyproject.toml) holds: each package imports only from the layers below it,
  siblings (`a | b`) not from each other, and every subpackage and module has its place (exhaustive);
- no `_private` name crosses a package boundary (imported, or read as `module._name`);
- no package attribute shadows a submodule of the same name (`workbench.analysis.das` was a function);
- every package has an `__all__` whose names all exist; the top level is the model kernel plus one subpackage
  per capability; there is one version number.
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"


def _modules() -> list[str]:
    names = ["workbench"]
    for m in pkgutil.walk_packages(wb.__path__, "workbench."):
        if not m.name.endswith("__main__"):
            names.append(m.name)
    return names


def _packages() -> list[types.ModuleType]:
    return [importlib.import_module(n) for n in _modules() if hasattr(importlib.import_module(n), "__path__")]


def test_import_linter_contract_holds():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-c", "import sys; from importlinter.cli import "
                                                                   "lint_imports_command as c; sys.exit(c())"]
    r = subprocess.run(cmd + ["--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout + r.stderr
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]  # one contract, with no exceptions
    assert contract["type"] == "layers" and contract["exhaustive"] is True
    assert not {"ignore_imports", "exhaustive_ignores", "unmatched_ignore_imports_alerting"} & set(contract)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _package_of(module: str) -> str:
    """workbench.<first part>: the unit private names may not leave."""
    return ".".join(module.split(".")[:2])


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def test_no_private_name_crosses_a_package_boundary():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        module_aliases: dict[str, str] = {}  # local name -> workbench module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(me, path.name == "__init__.py", node.module, node.level)
                if not target.startswith("workbench"):
                    continue
                for a in node.names:
                    full = f"{target}.{a.name}"
                    if _is_module(full):
                        module_aliases[a.asname or a.name] = full
                    hit = [p for p in target.split(".") + [a.name] if _private(p)]
                    if hit and _package_of(full if _is_module(full) else target) != _package_of(me):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("workbench"):
                        module_aliases[a.asname or a.name] = a.name
                        if any(_private(p) for p in a.name.split(".")) and _package_of(a.name) != _package_of(me):
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and _package_of(module_aliases[node.value.id]) != _package_of(me)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used across packages:\n" + "\n".join(found)


def test_the_private_name_check_sees_a_violation(tmp_path):
    """The check above can fail: the same resolution on a planted cross-package private import."""
    me = "workbench.sae.edit"
    node = ast.parse("from ..core.interventions import _as_index").body[0]
    target = _resolve(me, False, node.module, node.level)
    assert target == "workbench.core.interventions"
    assert _private(node.names[0].name) and _package_of(target) != _package_of(me)
    node = ast.parse("from .gumbel import _texts").body[0]  # inside one package: allowed
    assert _package_of(_resolve("workbench.counterfactual.decode", False, node.module, node.level)) == "workbench.counterfactual"


def test_no_attribute_shadows_a_submodule():
    found = []
    for pkg in _packages():
        for m in pkgutil.iter_modules(pkg.__path__):
            if m.name == "__main__":
                continue
            sub = importlib.import_module(f"{pkg.__name__}.{m.name}")
            if getattr(pkg, m.name, sub) is not sub:
                found.append(f"{pkg.__name__}.{m.name} is {type(getattr(pkg, m.name)).__name__}, not the module")
    assert not found, "\n".join(found)


def test_every_package_has_a_complete_all():
    for pkg in _packages():
        assert isinstance(getattr(pkg, "__all__", None), list) and pkg.__all__, f"{pkg.__name__} has no __all__"
        missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
        assert not missing, f"{pkg.__name__}.__all__ names missing attributes {missing}"
        assert len(set(pkg.__all__)) == len(pkg.__all__), f"{pkg.__name__}.__all__ repeats names"


def test_top_level_is_the_kernel_plus_one_subpackage_per_capability():
    from workbench import core

    kernel = [n for n in wb.__all__ if not isinstance(getattr(wb, n), types.ModuleType)]
    assert set(kernel) <= set(core.__all__), f"top-level names not from the kernel: {set(kernel) - set(core.__all__)}"
    assert all(getattr(wb, n) is getattr(core, n) for n in kernel)
    packages = [n for n in wb.__all__ if isinstance(getattr(wb, n), types.ModuleType)]
    on_disk = {m.name for m in pkgutil.iter_modules(wb.__path__) if m.ispkg} - {"cli"}
    assert set(packages) == on_disk, (set(packages) ^ on_disk)
    assert all(hasattr(getattr(wb, n), "__path__") for n in packages)  # subpackages, not modules or functions
    assert not hasattr(wb, "__getattr__"), "no import shims at the top level"


def test_one_version_number():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "workbench.__version__"}
    assert wb.__version__ == "0.3.0"


# The error-message rule (workbench/core/checks.py's docstring, docs/contributing.md): every `raise ValueError` /
# `TypeError` in workbench is `checks.fail(...)` or a literal message "NAME: problem"; an argument check written by
# hand ("ARG: expected WHAT, got VALUE" at the end of an f-string) must be `checks.fail`.
MESSAGE_HEAD = r"^[\w.\[\]=' /-]+: "
HAND_WRITTEN_FAIL = r"^[^:]+: expected .*, got \{\}$"


def _message_lead(node: ast.expr, helpers: dict) -> str | None:
    """The literal text of a message, with `{}` for each formatted value; None when it is not a literal. A call
    of a function of the same module (`helpers`: name -> its `return` expression) is read through."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
        return _message_lead(helpers[node.func.id], {})
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _message_lead(node.left, helpers)
    return None


def _message_rule_violations(source: str, where: str) -> list[str]:
    import re

    bad, tree = [], ast.parse(source)
    helpers = {f.name: f.body[-1].value for f in tree.body
               if isinstance(f, ast.FunctionDef) and isinstance(f.body[-1], ast.Return) and f.body[-1].value}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
            continue
        func = node.exc.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in ("ValueError", "TypeError"):
            continue
        lead = _message_lead(node.exc.args[0], helpers) if node.exc.args else None
        head = lead.replace("{}", "x") if lead else lead
        if lead is None or not re.match(MESSAGE_HEAD, head):
            bad.append(f"{where}:{node.lineno}: message is not 'NAME: problem'")
        elif re.match(HAND_WRITTEN_FAIL, lead):
            bad.append(f"{where}:{node.lineno}: 'ARG: expected WHAT, got VALUE' written by hand; use checks.fail")
    return bad


def test_every_value_and_type_error_follows_the_message_rule():
    bad = [v for path in sorted(PACKAGE.rglob("*.py"))
           for v in _message_rule_violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)


def test_the_message_rule_sees_a_violation():
    assert _message_rule_violations("raise ValueError('k: expected an int >= 1, got 0')", "x") == []
    assert _message_rule_violations("raise ValueError(f'k: expected an int >= 1, got {k!r}')", "x")
    assert _message_rule_violations("raise ValueError(f'bad k {k}')", "x")
    assert _message_rule_violations("raise TypeError(message)", "x")
    assert _message_rule_violations("def m(a):\n    return f'{a} is bad'\nraise ValueError(m(1))", "x")
    assert _message_rule_violations("def m(a):\n    return f'a: {a} is bad'\nraise ValueError(m(1))", "x") == []
    assert _message_rule_violations("raise checks.fail('k', 'an int >= 1', k)", "x") == []
    assert _message_rule_violations("raise ValueError(f'{arg}: expected a tensor, got dtype {d}')", "x") == []


def test_pyflakes_finds_nothing():
    """No unused import or name, no undefined name, in the package, the tests, the benchmarks and the scripts."""
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter
    import io

    out = io.StringIO()
    n = checkRecursive([str(ROOT / d) for d in ("workbench", "tests", "benchmarks", "scripts")], Reporter(out, out))
    assert n == 0, out.getvalue()
