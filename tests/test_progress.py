"""Progress bars (issue 15): tqdm on stderr when asked for (the CLI on a terminal), never in library calls by
default, never with --quiet."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot import progress
from bayes_annot.cli import main
from bayes_annot.progress import Progress, showing


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def log():
    return ba.simulate(n_users=400, n_models=5, labels_per_user=(3, 20), seed=4)


@pytest.fixture
def no_delay(monkeypatch):
    """Bars appear at once and redraw at every step (the default waits 2 s of work, longer than these tests' fits)."""
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "MININTERVAL", 0.0)


def test_fit_with_progress_writes_em_bar_with_objective(log, no_delay):
    buf = io.StringIO()
    result = ba.fit(log, progress=Progress(file=buf, delay=0))
    text = buf.getvalue()
    assert "EM" in text and "objective=" in text and "it" in text
    reference = ba.fit(log)  # the bar changes nothing in the result
    np.testing.assert_array_equal(result.users.quality, reference.users.quality)


def test_quick_fit_with_progress_stays_silent(log, capfd):
    ba.fit(log, progress=True)  # bars only after ~2 s of work
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_library_default_prints_nothing_even_on_a_terminal(log, monkeypatch, no_delay, tmp_path):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = ba.fit(log)
    result.save(tmp_path / "out")
    assert terminal.getvalue() == ""


def test_showing_block_turns_on_report_sections(log, no_delay, tmp_path):
    buf = io.StringIO()
    result = ba.fit(log)
    with showing(Progress(file=buf)):
        result.report(tmp_path / "report.html")
    assert "report" in buf.getvalue() and "section" in buf.getvalue()
    assert progress.resolve(None) is None  # the block's setting ends with it
    with showing(Progress(file=buf)):
        assert progress.resolve(False) is None and progress.resolve(None) is not None


def _cli(argv, monkeypatch, terminal: bool):
    err = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    code = main(argv)
    assert code == 0, err.getvalue()
    return err.getvalue()


def test_cli_on_a_terminal_shows_progress(log, monkeypatch, no_delay, tmp_path):
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    err = _cli(["fit", str(path), "--out", str(tmp_path / "a")], monkeypatch, terminal=True)
    assert "EM" in err and "objective=" in err


def test_cli_quiet_or_no_terminal_writes_nothing(log, monkeypatch, no_delay, tmp_path, capsys):
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    assert _cli(["fit", str(path), "--out", str(tmp_path / "q"), "--quiet"], monkeypatch, terminal=True) == ""
    assert capsys.readouterr().out == ""
    assert _cli(["fit", str(path), "--out", str(tmp_path / "n"), "--quiet", "--progress"], monkeypatch, terminal=True) == ""
    assert _cli(["fit", str(path), "--out", str(tmp_path / "p"), "--no-progress"], monkeypatch, terminal=True) == ""
    assert _cli(["fit", str(path), "--out", str(tmp_path / "t")], monkeypatch, terminal=False) == ""
    forced = _cli(["fit", str(path), "--out", str(tmp_path / "f"), "--progress"], monkeypatch, terminal=False)
    assert "objective=" in forced


def test_dask_fit_shows_partitions_and_iterations(log, no_delay, tmp_path):
    pytest.importorskip("dask.dataframe")
    folder = tmp_path / "parts"
    folder.mkdir()
    narrow = log[["user", "model_a", "model_b", "winner"]].astype(str)
    for i, part in enumerate(np.array_split(np.arange(len(narrow)), 3)):
        narrow.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    buf = io.StringIO()
    result = ba.fit(folder, progress=Progress(file=buf))
    text = buf.getvalue()
    assert "Dask: reading 3 partitions" in text and "objective=" in text
    rows = io.StringIO()
    with showing(Progress(file=rows)):
        result.save(tmp_path / "out")
    assert "writing rows" in rows.getvalue()
