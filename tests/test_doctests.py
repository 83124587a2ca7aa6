"""The docstring examples are tests: every module of the package whose source holds ``>>>`` runs its
examples (as ``pytest --doctest-modules bayes_annot`` would, ``ELLIPSIS`` on) and must show their output."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bayes_annot"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("bayes_annot",) + (parts[:-1] if parts[-1] == "__init__" else parts))


# found by reading the sources, not by importing them: collection imports nothing of the package
WITH_EXAMPLES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8"))


def test_the_package_has_examples():
    assert len(WITH_EXAMPLES) > 1, WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_show_their_output(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example writing a relative path writes here
    module = importlib.import_module(name)
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    assert tests, f"{name} holds '>>>' but no docstring example that doctest finds"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    assert runner.tries > 0
    assert runner.failures == 0, "".join(report)
