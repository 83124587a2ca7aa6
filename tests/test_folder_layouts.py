"""Result folders of earlier versions still load, report and update (issue 15: the update's codes files).

``tests/golden/folders`` holds parquet folders written by bayes_annot before the codes files (commit e2f414c):
``fresh`` (a fit: one rows table, a side file holding every row's codes) and ``updated`` (``fresh`` after a
fast update: the rows as parts, ``rows-outputs.parquet`` with the outputs of every row). This version reads
them as they are and updates them; the result equals the update of the same folder from its rows (the path
that reads no side file), and further updates of the new layout keep agreeing.

Regenerate (with an older tree on PYTHONPATH): ``python tests/test_folder_layouts.py OUT_DIR``.
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba

try:
    from .test_folder_update_fast import _comparable, _without_state
except ImportError:  # run as a script to regenerate the fixtures (with an older tree): main() needs neither
    pass

HERE = Path(__file__).resolve().parent / "golden" / "folders"


def _log(seed=11, n_users=120):
    log = ba.simulate(n_users=n_users, n_models=5, labels_per_user=(3, 15), tie_rate=0.05, seed=seed)
    log = log[["user", "model_a", "model_b", "winner"]].astype(str)
    log.insert(0, "vote_id", np.arange(len(log), dtype=np.int64))
    return log


def _batches():
    """The first fit's rows, the first update's (with new users) and a later one."""
    log = _log()
    first, second = log.iloc[:-150], log.iloc[-150:].copy()
    second.loc[second.index[:30], "user"] = [f"late{i % 6}" for i in range(30)]
    third = _log(seed=12, n_users=40)
    third["vote_id"] += 10**6
    third.loc[third.index[:20], "user"] = [f"later{i % 4}" for i in range(20)]
    return first.reset_index(drop=True), second.reset_index(drop=True), third


def _same(a, b):
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=False, rtol=1e-10, atol=1e-12)
    assert _comparable(a.summary) == _comparable(b.summary)


def _update(folder, rows, tmp_path, name):
    path = tmp_path / f"{name}.parquet"
    rows.to_parquet(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ba.cli.main(["fit", str(path), "--update", str(folder), "--out", str(folder), "--row-id", "vote_id",
                            "--quiet"]) == 0
    assert not [w for w in caught if "cannot be used" in str(w.message)]  # the side file served the update


def _layout(folder):
    return json.loads((folder / "manifest.json").read_text())["tables"]["rows"]


@pytest.mark.parametrize("name", ["fresh", "updated"])
def test_an_older_folder_loads_reports_and_updates_as_the_update_from_its_rows(name, tmp_path):
    import bayes_annot.cli  # noqa: F401 (ba.cli)

    first, second, third = _batches()
    fast = tmp_path / "fast"
    shutil.copytree(HERE / name, fast)
    slow = _without_state(HERE / name, tmp_path / "slow")
    old = ba.load(fast)
    expected_rows = len(first) + (len(second) if name == "updated" else 0)
    assert len(old.rows) == expected_rows and old.rows["kept"].dtype == bool
    assert old.rows["vote_id"].tolist() == list(range(expected_rows))
    if name == "updated":  # the outputs of every row, as that version wrote them
        assert "by" not in _layout(fast)["outputs"]
    assert ba.cli.main(["report", str(fast), "--quiet"]) == 0
    batches = [third] if name == "updated" else [second, third]
    for number, rows in enumerate(batches):
        for folder in (fast, slow):
            _update(folder, rows, tmp_path, f"batch{number}")
        _same(ba.load(fast), ba.load(slow))
        layout = _layout(fast)
        assert layout["layout"] == "parts" and layout["outputs"]["by"] == "user"
        # the saved rows' codes went to a codes file once; later updates link it and add one for their rows
        codes = [entry["file"] for entry in layout["outputs"]["codes"]]
        assert len(codes) == number + 2 and all((fast / c).exists() for c in codes)
    assert ba.cli.main(["report", str(fast), "--quiet"]) == 0
    # the rows read back as the rows of every batch, in order
    every = pd.concat([first, second, third], ignore_index=True)
    pd.testing.assert_frame_equal(ba.load(fast).input_rows(), every)


def main(out: str) -> None:
    """Write the fixture folders with the bayes_annot on ``sys.path`` (an older version)."""
    from bayes_annot.cli import main as cli

    out = Path(out)
    first, second, _ = _batches()
    out.mkdir(parents=True, exist_ok=True)
    first.to_parquet(out / "first.parquet", index=False)
    second.to_parquet(out / "second.parquet", index=False)
    assert cli(["fit", str(out / "first.parquet"), "--out", str(out / "fresh"), "--format", "parquet", "--quiet"]) == 0
    shutil.copytree(out / "fresh", out / "updated")
    assert cli(["fit", str(out / "second.parquet"), "--update", str(out / "updated"), "--out", str(out / "updated"),
                "--row-id", "vote_id", "--quiet"]) == 0
    (out / "first.parquet").unlink()
    (out / "second.parquet").unlink()


def test_a_live_update_saved_as_parquet_updates_as_from_its_rows(tmp_path):
    """A result updated in Python (a merged log whose first part's codes are not the final ones) saves its codes
    with stable numbers; the folder then updates as the same folder without its side file."""
    first, second, third = _batches()
    result = ba.fit(first).update(second, row_id="vote_id")
    result.save(tmp_path / "live", format="parquet")
    slow = _without_state(tmp_path / "live", tmp_path / "slow")
    assert len(_layout(tmp_path / "live")["columns"]) == 8  # one rows table (the codes in their own file)
    pd.testing.assert_frame_equal(ba.load(tmp_path / "live").rows, result.rows, check_exact=False, rtol=1e-10)
    for folder in (tmp_path / "live", slow):
        _update(folder, third, tmp_path, "third")
    assert _layout(tmp_path / "live")["layout"] == "parts"  # the side file served the update
    _same(ba.load(tmp_path / "live"), ba.load(slow))


def test_nothing_new_after_an_update_with_new_users(tmp_path):
    """Every new row already saved, in a folder whose codes need the number map (new users came in an update):
    the refit of the saved log from its codes files equals the one from its rows, and so do later updates."""
    first, second, third = _batches()
    ba.fit(first).save(tmp_path / "d1", format="parquet")
    _update(tmp_path / "d1", second, tmp_path, "second")
    slow = _without_state(tmp_path / "d1", tmp_path / "slow")
    for batch, name in ((pd.concat([first.iloc[::9], second.iloc[::5]]), "again"), (third, "third")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the duplicates' warning
            for folder in (tmp_path / "d1", slow):
                _update(folder, batch, tmp_path, name)
        _same(ba.load(tmp_path / "d1"), ba.load(slow))
    assert _layout(tmp_path / "d1")["layout"] == "parts"


if __name__ == "__main__":
    main(sys.argv[1])
