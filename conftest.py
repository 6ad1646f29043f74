"""The two test tiers and CI's rules, for tests/ and notebooks/ alike (this file sits above both)."""
import importlib.util
import inspect
import os

import pytest

# ---- the two tiers -------------------------------------------------------------------------------------------
# `scripts/test.sh` runs `-m "not slow"` (the fast tier); `scripts/test.sh --all` runs everything. A test lands
# in its tier by rule, so nobody has to remember a marker:
#   notebook  every notebook nbmake collects
#   ray       a test that uses a Ray cluster (the `cluster` fixture, or a module that imports ray)
#   browser   tests/test_browser.py (its own pytestmark)
#   cli       a test that starts a subprocess (the CLI as a user runs it, a script, JupyterLab)
#   slow      a test that uses the `default_model` fixture, and everything marked above
TIER_MARKERS = ("notebook", "ray", "browser", "cli")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _starts_a_subprocess(item) -> bool:
    try:
        return "subprocess" in inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.notebook)
        if "cluster" in names or "ray" in getattr(getattr(item, "module", None), "__dict__", {}):
            item.add_marker(pytest.mark.ray)
        if _starts_a_subprocess(item):
            item.add_marker(pytest.mark.cli)
        if "default_model" in names or any(item.get_closest_marker(m) for m in TIER_MARKERS):
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """With CI set, a missing Ray, Playwright or Chromium fails the run (without CI their tests skip)."""
    if not IN_CI:
        return
    missing = [name for name in ("ray", "playwright") if importlib.util.find_spec(name) is None]
    missing += [] if os.path.exists("/usr/bin/chromium") else ["/usr/bin/chromium"]
    if missing:
        raise pytest.UsageError(f"CI is set and {', '.join(missing)} is missing: scripts/setup.sh installs "
                                "Ray and Playwright into the venv and Debian's chromium as root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI set, a test skipped for a module that does not import (pytest.importorskip) fails instead."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and isinstance(report.longrepr, tuple) and "could not import" in str(report.longrepr[2]):
        report.outcome = "failed"
        report.longrepr = f"CI is set: {report.longrepr[2]}"
