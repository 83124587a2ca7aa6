"""Issue 15 item 2: a parquet folder keeps what an update needs (``update-state.npz``), so that
``fit NEW --update DIR`` encodes only the new rows and links the saved rows' parquet parts.

Every fast update is compared with the update of the same folder without its side file (today's path:
the saved rows re-read and re-encoded), which must give the same tables (1e-10; integers and text exact)
and summary, and with a full refit.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.errors import FitWarning
from bayes_annot.folder_update import update_saved
from bayes_annot.update_state import STATE_FILE


def _log(seed=3, n_users=400, **kwargs):
    log = ba.simulate(n_users=n_users, n_models=6, labels_per_user=(3, 20), tie_rate=0.05, seed=seed, **kwargs)
    log = log[["user", "model_a", "model_b", "winner"] + (["p_a"] if "p_a" in log else [])]
    log[["user", "model_a", "model_b", "winner"]] = log[["user", "model_a", "model_b", "winner"]].astype(str)
    log.insert(0, "vote_id", np.arange(len(log), dtype=np.int64))
    return log


def _write(frame, path):
    frame.to_parquet(path, index=False)
    return str(path)


def _without_state(folder: Path, copy: Path) -> Path:
    """``folder`` as a folder written before side files: same tables, no update-state.npz."""
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("update_state")
    manifest["files"].remove(STATE_FILE)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / STATE_FILE).unlink()
    return copy


def _comparable(summary: dict) -> dict:
    summary = json.loads(json.dumps(summary))
    summary.pop("runtime_seconds", None)
    for entry in summary.get("provenance", []):
        entry.pop("time", None)
    return summary


def assert_same_result(a: Path, b: Path):
    x, y = ba.load(a), ba.load(b)
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(x, name), getattr(y, name), check_exact=False, rtol=1e-10, atol=1e-12)
    assert _comparable(x.summary) == _comparable(y.summary)


def _layout(folder: Path) -> str | None:
    return json.loads((folder / "manifest.json").read_text())["tables"]["rows"].get("layout")


@pytest.fixture
def day1(tmp_path):
    log = _log()
    old, new = log.iloc[:-300], log.iloc[-300:].copy()
    new.loc[new.index[:40], "user"] = [f"newcomer{i % 8}" for i in range(40)]  # users the saved fit never saw
    paths = {name: _write(frame, tmp_path / f"{name}.parquet") for name, frame in
             (("old", old), ("new", new), ("all", pd.concat([old, new], ignore_index=True)))}
    out = tmp_path / "day1"
    assert main(["fit", paths["old"], "--out", str(out), "--format", "parquet", "--filter", "fdr:0.1", "--quiet"]) == 0
    return out, paths


def test_a_parquet_folder_keeps_its_update_state_in_the_manifest(day1):
    out, _ = day1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["update_state"]["file"] == STATE_FILE and STATE_FILE in manifest["files"]
    assert (out / STATE_FILE).exists()


def test_cli_update_from_the_side_file_equals_the_update_from_the_rows(day1, tmp_path):
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    for folder in (out, slow):
        assert main(["fit", paths["new"], "--update", str(folder), "--out", str(folder), "--row-id", "vote_id",
                     "--quiet"]) == 0
    assert _layout(out) == "parts" and _layout(slow) is None  # the old rows were linked, not rewritten
    assert_same_result(out, slow)
    saved = ba.load(out)
    assert saved.rows["vote_id"].tolist() == list(range(len(saved.rows)))
    assert saved.rows["vote_id"].dtype == np.int64 and saved.rows["kept"].dtype == bool
    # a second update (of the parts layout) and a third that adds nothing (every row already there)
    log2 = _log(seed=4, n_users=100)
    log2["vote_id"] += 10**6
    second = _write(log2, tmp_path / "second.parquet")
    for _ in range(2):
        for folder in (out, slow):
            assert main(["fit", second, "--update", str(folder), "--out", str(folder), "--row-id", "vote_id",
                         "--quiet"]) == 0
        assert_same_result(out, slow)
    assert len(ba.load(out).rows) == len(pd.read_parquet(paths["all"])) + len(log2)
    # the slow folder became a fast one (its update wrote a side file): both stay equal from here on
    assert (slow / STATE_FILE).exists()
    assert main(["report", str(out), "--quiet"]) == 0 and (out / "report.html").exists()


def test_fast_update_agrees_with_a_full_refit(day1, tmp_path):
    out, paths = day1
    common = ["--tol", "1e-15", "--max-iter", "20000"]
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(tmp_path / "day2"), "--quiet", *common]) == 0
    assert main(["fit", paths["all"], "--out", str(tmp_path / "full"), "--filter", "fdr:0.1", "--format", "parquet",
                 "--quiet", *common]) == 0
    day2, full = ba.load(tmp_path / "day2"), ba.load(tmp_path / "full")
    assert _layout(tmp_path / "day2") == "parts"
    assert (tmp_path / "day2" / "rows.parquet").samefile(out / "rows.parquet")  # linked, not copied
    pd.testing.assert_series_equal(day2.users.user, full.users.user)
    np.testing.assert_allclose(day2.users.quality, full.users.quality, atol=1e-6)
    np.testing.assert_allclose(day2.models.strength, full.models.strength, atol=1e-6)
    pd.testing.assert_frame_equal(day2.input_rows(), full.input_rows())
    pd.testing.assert_series_equal(day2.rows.kept, full.rows.kept)


def test_duplicates_are_found_among_the_saved_rows_without_reading_them_all(day1, tmp_path):
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    again = pd.concat([pd.read_parquet(paths["old"]).iloc[::50], pd.read_parquet(paths["new"])], ignore_index=True)
    again_path = _write(again, tmp_path / "again.parquet")
    for row_id in (["--row-id", "vote_id"], []):  # by id, and by whole row (narrowed by user)
        for folder in (out, slow):
            target = folder.parent / f"{folder.name}-{len(row_id)}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert main(["fit", again_path, "--update", str(folder), "--out", str(target), *row_id, "--quiet"]) == 0
        assert_same_result(out.parent / f"{out.name}-{len(row_id)}", slow.parent / f"{slow.name}-{len(row_id)}")
        provenance = ba.load(out.parent / f"{out.name}-{len(row_id)}").summary["provenance"][-1]
        assert provenance["rows_skipped"] == len(pd.read_parquet(paths["old"]).iloc[::50])


@pytest.mark.parametrize("damage", ["bytes", "other-fit", "truncated", "version", "fields", "deleted"])
def test_a_damaged_or_foreign_side_file_falls_back_to_the_rows(day1, tmp_path, damage):
    """... and a deleted one (it is a cache; the update was refused: 'not a complete result folder')."""
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    state = out / STATE_FILE
    if damage == "deleted":
        state.unlink()
    elif damage == "bytes":
        payload = bytearray(state.read_bytes())
        middle = len(payload) // 2
        payload[middle:middle + 64] = bytes(64)
        state.write_bytes(bytes(payload))
    elif damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "other-fit":
        other = tmp_path / "other"
        log = _log(seed=9)
        assert main(["fit", _write(log, tmp_path / "o.parquet"), "--out", str(other), "--format", "parquet",
                     "--quiet"]) == 0
        shutil.copyfile(other / STATE_FILE, state)
    else:  # a side file of another format version, or of a block with other fields
        import io

        with np.load(state) as npz:
            arrays = {k: npz[k] for k in npz.files}
        header = json.loads(arrays["__header__"].tobytes())
        if damage == "version":
            header["version"] = 0
        else:  # written when the EM block had one field less (a field added since must not be left at a default)
            del header["entries"]["state.block.ties"]
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        state.write_bytes(buffer.getvalue())
    with pytest.warns(FitWarning, match="cannot be used"):
        result = update_saved(out, pd.read_parquet(paths["new"]), row_id="vote_id")
    reference = update_saved(slow, pd.read_parquet(paths["new"]), row_id="vote_id")
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(result, name), getattr(reference, name), check_exact=False, rtol=1e-10)
    # through the command line: a warning, exit 0, the same tables
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(out), "--row-id", "vote_id", "--quiet"]) == 0
    assert main(["fit", paths["new"], "--update", str(slow), "--out", str(slow), "--row-id", "vote_id", "--quiet"]) == 0
    assert_same_result(out, slow)


def test_a_damaged_rows_part_is_one_line_error(day1, tmp_path, capsys):
    out, paths = day1
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(out), "--quiet"]) == 0
    (out / "rows-outputs.parquet").write_bytes(b"not parquet")
    assert main(["report", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayes-annot: error: ") and "cannot be read" in err[0]


def test_python_update_of_a_folder_and_its_rows(day1, tmp_path):
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    new = pd.read_parquet(paths["new"])
    fast, reference = update_saved(out, new), update_saved(slow, new)
    for name in ("users", "models", "rows"):  # rows: the saved rows are read from the parts when asked for
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(reference, name), check_exact=False, rtol=1e-10)
    assert _comparable(fast.summary) == _comparable(reference.summary)
    # saved as CSV: one rows table of every row
    fast.save(tmp_path / "csv")
    pd.testing.assert_frame_equal(ba.load(tmp_path / "csv").rows, reference.rows, check_exact=False, rtol=1e-10)


def test_new_rows_typed_otherwise_are_written_as_one_table(day1, tmp_path):
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    new = pd.read_parquet(paths["new"])
    new["vote_id"] = new["vote_id"].astype(float)  # the saved part holds integers
    new_path = _write(new, tmp_path / "float.parquet")
    for folder in (out, slow):
        assert main(["fit", new_path, "--update", str(folder), "--out", str(folder), "--quiet"]) == 0
    assert _layout(out) is None
    assert_same_result(out, slow)


@pytest.mark.parametrize("kind", ["tastes", "p_a", "continuous"])
def test_other_models_update_fast_too(tmp_path, kind):
    log = _log(seed=5, n_users=300)
    if kind == "p_a":  # known attentive probabilities: the block holds choices and log-odds, not cells
        log["p_a"] = np.random.default_rng(5).uniform(0.1, 0.9, len(log))
    old, new = _write(log.iloc[:-200], tmp_path / "old.parquet"), _write(log.iloc[-200:], tmp_path / "new.parquet")
    options = {"tastes": ["--tastes", "2"], "p_a": [], "continuous": ["--variant", "continuous"]}[kind]
    out = tmp_path / "d1"
    assert main(["fit", old, "--out", str(out), "--format", "parquet", "--quiet", *options]) == 0
    slow = _without_state(out, tmp_path / "slow")
    for folder in (out, slow):
        assert main(["fit", new, "--update", str(folder), "--out", str(folder), "--quiet"]) == 0
    assert _layout(out) == "parts"
    assert_same_result(out, slow)


@pytest.mark.parametrize("point", ["before-publish", "after-exchange", "between-renames"])
def test_killed_fast_update_leaves_one_whole_result(day1, tmp_path, point):
    """Killed while the updated folder is swapped in (the codes files and rows parts of the saved folder are
    linked into it): DIR holds either the saved result, byte for byte, or the whole update; never a mix. (The
    saved result set aside also holds the record that proves it the package's, see outdir._mark.)"""
    from bayes_annot.outdir import STAGING_MARK

    out, paths = day1
    reference = tmp_path / "reference"
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(reference), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = [sys.executable, "-m", "bayes_annot", "fit", paths["new"], "--update", str(out), "--out", str(out), "--quiet"]
    env = dict(os.environ, BAYES_ANNOT_FAULT=point)
    if point == "between-renames":
        env["BAYES_ANNOT_NO_RENAME_EXCHANGE"] = "1"
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 91, proc.stderr
    if point == "before-publish":
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the linked files were not touched
    elif point == "after-exchange":  # the update is in place, whole; the saved result waits in the staging folder
        assert_same_result(out, reference)
        leftover = [p for p in out.parent.iterdir() if ".tmp-" in p.name]
        assert len(leftover) == 1 and {p.name: p.read_bytes() for p in leftover[0].iterdir()
                                       if p.name != STAGING_MARK} == before
        shutil.rmtree(leftover[0])
    else:  # between the two renames DIR is missing; the saved result is whole beside it
        assert not out.exists()
        leftover = [p for p in out.parent.iterdir() if ".old-" in p.name]
        assert len(leftover) == 1 and {p.name: p.read_bytes() for p in leftover[0].iterdir()
                                       if p.name != STAGING_MARK} == before
        leftover[0].rename(out)
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert len(ba.load(out).rows) == len(pd.read_parquet(paths["all"]))  # (after the exchange: every new row skipped)
    if point != "after-exchange":
        assert_same_result(out, reference)


def test_the_folder_keeps_nothing_it_did_not_write(day1, tmp_path, capsys):
    out, paths = day1
    (out / "notes.txt").write_text("mine")
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(out), "--quiet"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(manifest["files"] + ["manifest.json"])


def test_rows_are_copied_where_they_cannot_be_linked(day1, tmp_path, monkeypatch):
    """Another file system (or none with hard links): the saved rows are copied into the new folder."""
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    for folder in (out, slow):
        assert main(["fit", paths["new"], "--update", str(folder), "--out", str(tmp_path / f"{folder.name}-2"),
                     "--quiet"]) == 0
    assert _layout(tmp_path / "day1-2") == "parts"
    assert_same_result(tmp_path / "day1-2", tmp_path / "slow-2")
    assert (out / "rows.parquet").stat().st_nlink == 1


def test_an_update_links_the_saved_codes_and_writes_the_outputs_per_user(day1, tmp_path):
    """Each row's codes are kept in files an update never rewrites (``rows-codes-N.npz``: linked into the new
    folder, one more for the new rows), and ``rows-outputs.parquet`` holds one row per user: chained updates
    still read back as the update from the rows."""
    import pyarrow.parquet as pq

    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    log2 = _log(seed=6, n_users=50)
    log2["vote_id"] += 10**6
    log2.loc[log2.index[:10], "user"] = [f"another{i % 3}" for i in range(10)]  # new users again
    previous = out
    for number, new in enumerate((paths["new"], _write(log2, tmp_path / "second.parquet"))):
        target = tmp_path / f"day{number + 2}"
        for folder, into in ((previous, target), (slow, slow)):
            assert main(["fit", new, "--update", str(folder), "--out", str(into), "--row-id", "vote_id",
                         "--quiet"]) == 0
        assert_same_result(target, slow)
        rows = json.loads((target / "manifest.json").read_text())["tables"]["rows"]
        codes = [entry["file"] for entry in rows["outputs"]["codes"]]
        assert len(codes) == number + 2
        for name in codes[:-1]:  # the saved rows' codes: the previous folder's file, linked
            assert (target / name).samefile(previous / name)
        assert pq.ParquetFile(target / "rows-outputs.parquet").metadata.num_rows == len(ba.load(target).users)
        previous = target
    assert main(["report", str(previous), "--quiet"]) == 0


@pytest.mark.parametrize("damage", ["bytes", "truncated", "missing"])
def test_a_damaged_codes_file_falls_back_to_the_rows_or_is_one_line_error(day1, tmp_path, damage, capsys):
    """The codes file of a fit's rows: damaged or missing, the update reads the rows instead (a warning); once
    the rows' outputs depend on it (after an update), ``load`` and ``report`` name the folder in one line."""
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    codes = out / "rows-codes-0.npz"

    def spoil(path):
        if damage == "missing":
            path.unlink()
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        else:  # (the update reads every member; load() only each row's user and reason)
            payload = bytearray(path.read_bytes())
            payload[len(payload) // 2:len(payload) // 2 + 64] = bytes(64)
            path.write_bytes(bytes(payload))

    updated = tmp_path / "updated"
    shutil.copytree(out, updated)
    spoil(codes)
    with pytest.warns(FitWarning, match="cannot be used"):
        result = update_saved(out, pd.read_parquet(paths["new"]), row_id="vote_id")
    reference = update_saved(slow, pd.read_parquet(paths["new"]), row_id="vote_id")
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(result, name), getattr(reference, name), check_exact=False, rtol=1e-10)
    assert main(["fit", paths["new"], "--update", str(updated), "--out", str(updated), "--quiet"]) == 0
    assert _layout(updated) == "parts"
    capsys.readouterr()
    if damage == "bytes":
        return
    spoil(updated / "rows-codes-1.npz")
    assert main(["report", str(updated), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayes-annot: error: ") and "updated" in err[0]
    assert ("cannot be read" if damage == "truncated" else "'rows-codes-1.npz' missing") in err[0]


def test_the_side_file_is_read_in_place_and_left_unchanged(day1, tmp_path):
    """The update reads the saved side file through a read-only memory map: the saved folder's file is
    byte for byte what it was, whether rows are added or none is (every new row a duplicate)."""
    out, paths = day1
    before = (out / STATE_FILE).read_bytes()
    slow = _without_state(out, tmp_path / "slow")
    new = pd.read_parquet(paths["new"])
    fast, reference = update_saved(out, new, row_id="vote_id"), update_saved(slow, new, row_id="vote_id")
    assert (out / STATE_FILE).read_bytes() == before
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(reference, name), check_exact=False, rtol=1e-10)
    # nothing new: the saved log and EM state are refitted from arrays of their own (not the map)
    old = pd.read_parquet(paths["old"]).iloc[::7]
    with pytest.warns(UserWarning):
        fast, reference = update_saved(out, old, row_id="vote_id"), update_saved(slow, old, row_id="vote_id")
    assert (out / STATE_FILE).read_bytes() == before
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(reference, name), check_exact=False, rtol=1e-10)
    assert _comparable(fast.summary) == _comparable(reference.summary)


def test_folder_updates_take_squarem_steps_from_their_warm_start(day1, tmp_path):
    """A folder update runs SQUAREM by default (both paths: the side file's and the rows'); at a tight
    tolerance it reaches the plain EM update's optimum, in fewer EM passes."""
    out, paths = day1
    slow = _without_state(out, tmp_path / "slow")
    new = pd.read_parquet(paths["new"])
    common = dict(row_id="vote_id", tol=1e-13, max_iter=20000)
    fast, from_rows = update_saved(out, new, **common), update_saved(slow, new, **common)
    plain = update_saved(out, new, accelerate=False, **common)
    assert fast.summary["settings"]["accelerate"] is True and from_rows.summary["settings"]["accelerate"] is True
    assert plain.summary["settings"]["accelerate"] is False
    assert fast.summary["iterations"] < plain.summary["iterations"]
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(from_rows, name), check_exact=False, rtol=1e-10)
    np.testing.assert_allclose(fast.users.quality, plain.users.quality, atol=1e-6)
    np.testing.assert_allclose(fast.models.strength, plain.models.strength, atol=1e-6)


def test_an_update_into_another_folder_leaves_the_saved_files_modes_alone(day1, tmp_path):
    """The saved folder's rows and codes files are hard-linked into the update's folder: making the new folder's
    files follow the umask must not change the saved folder's files (one inode), e.g. an archive made read-only."""
    import stat

    out, paths = day1
    for path in out.iterdir():
        path.chmod(0o444)
    before = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert main(["fit", paths["new"], "--update", str(out), "--out", str(tmp_path / "day2"), "--quiet"]) == 0
    assert (tmp_path / "day2" / "rows-codes-0.npz").samefile(out / "rows-codes-0.npz")  # linked
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == before
