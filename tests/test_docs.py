"""The documentation site builds in strict mode (a broken link, a docstring the
numpy parser rejects or a public object without a docstring fails), and its
hooks keep the nav robust to pages that do not exist yet."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter")


def _missing() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


pytestmark = pytest.mark.skipif(
    bool(_missing()) or not (ROOT / "mkdocs.yml").exists(),
    reason=f"documentation tools not installed ({', '.join(_missing())}): pip install -e '.[docs]'",
)


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ)
    env.setdefault("PYTENSOR_FLAGS", f"base_compiledir={ROOT / '.pytensor_cache'}")
    env.setdefault("MPLBACKEND", "Agg")
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or log.splitlines()[-40:])
    for page in ("index.html", "model/index.html", "cli/index.html", "outputs/index.html", "api/fit/index.html"):
        assert (site / page).is_file(), page
    fit_page = (site / "api/fit/index.html").read_text(encoding="utf-8")
    assert "FitResult" in fit_page and "Fit the user behaviour model" in fit_page
    # every notebook is rendered from its stored outputs (figures included)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), f"notebook {notebook.name} not rendered"
        if '"image/png"' in notebook.read_text(encoding="utf-8"):
            assert "data:image/png;base64" in page.read_text(encoding="utf-8"), notebook.name
    # nothing is fetched from the network when the site is viewed
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index


def test_nav_drops_missing_pages_and_fills_notebooks():
    hooks = _load_module("bayes_annot_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks._state["notebooks"] = [("Quickstart", "notebooks/01-quickstart.ipynb")]
    present = {"index.md", "api/fit.md"}
    nav = [
        {"Home": "index.md"},
        {"Benchmarks": [{"Speed": "not-yet.md"}]},
        {"API": ["api/fit.md", {"gone": "api/gone.md"}]},
        {"Notebooks": []},
        {"Elsewhere": "https://example.org/"},
    ]
    assert hooks._prune(nav, lambda src: src in present) == [
        {"Home": "index.md"},
        {"API": ["api/fit.md"]},
        {"Notebooks": [{"Quickstart": "notebooks/01-quickstart.ipynb"}]},
        {"Elsewhere": "https://example.org/"},
    ]


def test_hooks_page_availability(tmp_path):
    hooks = _load_module("bayes_annot_docs_hooks", ROOT / "docs" / "hooks.py")
    docs = tmp_path / "docs"
    (docs / "api").mkdir(parents=True)
    (docs / "api" / "real.md").write_text("# x\n\n::: bayes_annot.fit.fit\n")
    (docs / "api" / "ghost.md").write_text("# x\n\n::: bayes_annot.no_such_module\n")
    assert hooks._page_available(ROOT, docs, "api/real.md")
    assert not hooks._page_available(ROOT, docs, "api/ghost.md")
    assert not hooks._page_available(ROOT, docs, "missing.md")
    assert hooks._page_available(ROOT, docs, "notebooks/01-quickstart.ipynb") == (
        ROOT / "notebooks" / "01-quickstart.ipynb"
    ).exists()


def test_griffe_extension_splits_parameter_groups():
    ext = _load_module("bayes_annot_griffe_numpydoc", ROOT / "docs" / "griffe_numpydoc.py")
    text = "Fit.\n\nParameters\n----------\nuser, model_a : str\n    Column names.\nmu, strong_model : float, str\n    Setting.\n"
    assert ext.split_groups(text) == (
        "Fit.\n\nParameters\n----------\nuser : str\n    Column names.\nmodel_a : str\n    Column names.\n"
        "mu : float\n    Setting.\nstrong_model : str\n    Setting.\n"
    )


def test_links_to_absent_nav_pages_become_text():
    from types import SimpleNamespace

    hooks = _load_module("bayes_annot_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks._state["dropped"] = {"benchmarks_nuts.md"}
    page = SimpleNamespace(file=SimpleNamespace(src_uri="api/fit.md"))
    text = "See [the NUTS figures](../benchmarks_nuts.md#speed) and [the model](../model.md)."
    assert hooks.on_page_markdown(text, page, None, None) == "See the NUTS figures and [the model](../model.md)."
