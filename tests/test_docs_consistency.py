"""Issue 17 item 9: the README, docs and notebooks say what the code does (no tools needed beyond the package)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bayes_annot.cli import build_parser
from bayes_annot.data import USER_ALIASES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _flat(text: str) -> str:
    """Text without markup quotes and with single spaces."""
    return " ".join(re.sub(r"[`'\"*]", "", text).split())


def _fit_help() -> str:
    """What ``bayes-annot fit --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["fit", "--help"])
    assert exited.value.code == 0
    return out.getvalue()


def test_readme_links_and_paths_stay_inside_the_repository():
    text = _text(README)
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" in target:
            continue
        resolved = (ROOT / target).resolve()
        assert resolved.is_relative_to(ROOT), f"README links outside the repository: {target}"
        assert resolved.exists(), f"README links to a missing file: {target}"
    commands = [line for line in text.splitlines() if line.startswith("bayes-annot ")]
    assert commands, "README has no command examples"
    assert not any("../" in line for line in commands), "a README command reads a file outside the repository"
    assert commands[0].startswith("bayes-annot fit --dataset ")


def test_fit_dataset_flag_fits_an_embedded_data_set(tmp_path, capsys):
    from bayes_annot.cli import main

    out = tmp_path / "cems"
    assert main(["fit", "--dataset", "cemschoice", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(_text(out / "summary.json"))
    assert summary["counts"]["rows"] == 4454 and summary["input"]["file"] == "cemschoice.csv"
    assert main(["fit", "x.csv", "--dataset", "cemschoice", "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["fit", "--out", str(tmp_path / "o")]) == 2
    assert "--dataset NAME" in capsys.readouterr().err


def test_no_reference_to_a_design_document():
    paths = [README, *DOCS.glob("*.md"), *(ROOT / "bayes_annot").rglob("*.py"), *NOTEBOOKS,
             ROOT / "notebooks" / "build_notebooks.py"]
    offenders = [str(p.relative_to(ROOT)) for p in paths if re.search(r"\bDESIGN\b", _text(p))]
    assert not offenders, f"references to a DESIGN document that is not in the repository: {offenders}"


def test_every_notebook_and_extra_is_listed():
    stems = [nb.stem for nb in NOTEBOOKS]
    assert len(stems) >= 5
    for page in (README, DOCS / "index.md"):
        text = _text(page)
        missing = [stem for stem in stems if stem not in text]
        assert not missing, f"{page.name} does not list notebooks {missing}"
    extras = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]["optional-dependencies"]
    for page in (README, DOCS / "index.md"):
        text = _text(page)
        missing = [name for name in extras if f"`{name}`" not in text]
        assert not missing, f"{page.name} does not list extras {missing}"


def test_user_column_detection_is_described_the_same_everywhere():
    from bayes_annot.data import ColumnMap
    from bayes_annot.fit import fit

    phrase = "the first of " + ", ".join(USER_ALIASES) + " present"
    places = {
        "README.md": _text(README),
        "docs/cli.md": _text(DOCS / "cli.md"),
        "fit --help": _fit_help(),
        "fit()": fit.__doc__,
        "ColumnMap": ColumnMap.__doc__,
    }
    for name, text in places.items():
        assert phrase in _flat(text), f"{name} does not say '{phrase}'"


def test_fit_help_shows_defaults():
    text = " ".join(_fit_help().split())
    for flag, default in (("--model-a", "model_a"), ("--winner", "winner"), ("--filter", "prob:0.5"),
                          ("--method", "em"), ("--draws", "1000"), ("--max-iter", "1000"), ("--tol", "1e-09"),
                          ("--seed", "0"), ("--on-bad-row", "error"), ("--prompt", "prompt")):
        match = re.search(re.escape(flag) + r" [A-Z_{},a-z-]+ .*?\(default: ([^)]*)\)", text)
        assert match and match.group(1).startswith(default), f"{flag}: default {default} not shown"
    assert "(default: None)" not in text and "(default: False)" not in text


def _outputs_text(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            for kind, value in output.get("data", {}).items():
                if kind.startswith("text/"):
                    parts.append("".join(value))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_outputs_name_no_build_machine_path(path):
    text = _outputs_text(json.loads(_text(path)))
    assert "could not link to a BLAS" not in text
    assert not re.search(r"(/work/|/home/|/Users/|site-packages|\.venv)", text), path.name


def test_notebook_04_filters_the_blas_warning_in_its_first_cell():
    nb = json.loads(_text(ROOT / "notebooks" / "04-full-posterior.ipynb"))
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert "filterwarnings('ignore', message='PyTensor could not link to a BLAS')" in first


def test_stored_notebooks_match_their_build_script():
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import build_notebooks
    finally:
        sys.path.pop(0)
    for name, cells in build_notebooks.NOTEBOOKS.items():
        stored = json.loads(_text(ROOT / "notebooks" / name))["cells"]
        assert [(c["cell_type"], "".join(c["source"])) for c in stored] == [(c.cell_type, c.source) for c in cells], name


def test_notebook_03_log_axis_tick_labels_do_not_overlap():
    """The figure code of notebook 03, run on a table of the same shape: no two x tick labels overlap."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    nb = json.loads(_text(ROOT / "notebooks" / "03-paper-setting.ipynb"))
    source = "".join(nb["cells"][1]["source"]).splitlines()
    start = next(i for i, line in enumerate(source) if line.startswith("ax = curve.plot("))
    plot_code = "\n".join(line for line in source[start:] if not line.startswith("curve.round"))
    curve = pd.DataFrame(np.linspace(0.6, 0.99, 20).reshape(5, 4), index=pd.Index([5, 10, 20, 40, 80], name="labels"),
                         columns=pd.Index([0.6, 0.7, 0.8, 0.9], name="mu"))
    try:
        exec(plot_code, {"curve": curve, "plt": plt})  # noqa: S102
        fig = plt.gcf()
        fig.canvas.draw()
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert [t.get_text() for t in sorted(labels, key=lambda t: t.get_window_extent(renderer).x0)] == [
            "5", "10", "20", "40", "80"]
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 <= right.x0, "x tick labels overlap"
    finally:
        plt.close("all")
