"""Issue 16: output folders never lose anybody's data; every write is all or nothing; one writer at a time.

Each test reproduces a failure of the earlier code (folders deleted, half-replaced results, rows lost by two
concurrent updates, internal errors) through the CLI or the public API.
"""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main


def run(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bayes_annot", *map(str, args)], capture_output=True, text=True,
                          env=full_env)


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayes-annot: error: "), err
    return err[0]


# --------------------------------------------------------------------------- 1. --out never deletes what is not ours


def test_a_folder_with_foreign_files_is_refused_before_fitting(tmp_path, log_csv, capsys):
    userdir = tmp_path / "userdir"
    userdir.mkdir()
    (userdir / "thesis.txt").write_text("precious")
    assert main(["fit", str(log_csv), "--out", str(userdir)]) == 2
    assert "thesis.txt" in one_error_line(capsys)
    assert snapshot(userdir) == {"thesis.txt": b"precious"}


def test_a_folder_holding_the_input_is_refused(tmp_path, log_csv, capsys):
    indir = tmp_path / "indir"
    indir.mkdir()
    log = indir / "log.csv"
    log.write_bytes(log_csv.read_bytes())
    assert main(["fit", str(log), "--out", str(indir)]) == 2
    assert "holds the input" in one_error_line(capsys)
    assert log.read_bytes() == log_csv.read_bytes()
    deep = tmp_path / "sandbox" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "log.csv").write_bytes(log_csv.read_bytes())
    assert main(["fit", str(deep / "log.csv"), "--out", str(tmp_path / "sandbox")]) == 2
    assert (deep / "log.csv").exists()


def test_dask_output_equal_to_its_parquet_folder_is_refused(tmp_path, capsys):
    log = ba.simulate(n_users=80, n_models=3, labels_per_user=(3, 8), seed=2)[["user", "model_a", "model_b", "winner"]]
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(log)), 2)):
        log.iloc[chunk].to_parquet(parts / f"part-{i}.parquet", index=False)
    before = snapshot(parts)
    assert main(["fit", str(parts), "--out", str(parts)]) == 2
    one_error_line(capsys)
    assert snapshot(parts) == before


@pytest.mark.parametrize("case", ["file", "symlink", "dot", "empty", "unwritable", "read-only-folder"])
def test_other_output_path_problems_fail_before_fitting(tmp_path, log_csv, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    if case == "file":
        out = tmp_path / "taken"
        out.write_text("mine")
    elif case == "symlink":
        real = tmp_path / "real"
        real.mkdir()
        out = tmp_path / "link"
        out.symlink_to(real)
    elif case == "dot":
        out = "."
    elif case == "empty":
        out = ""
    else:  # os.access is consulted (root passes any permission check, so the test stands in for chmod)
        locked_dir = tmp_path / "locked"
        locked_dir.mkdir()
        out = locked_dir / "res" if case == "unwritable" else locked_dir
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked_dir else real_access(p, mode, **kw))
    # an input that would fail to validate: the --out problem must be found first (before reading or fitting)
    bad = tmp_path.parent / f"{tmp_path.name}-bad.csv"
    bad.write_text("user,model_a,model_b,winner\nu,x,y,maybe\n")
    before = snapshot(tmp_path)
    assert main(["fit", str(bad), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "maybe" not in line and ("output" in line or "--out" in line), line
    assert snapshot(tmp_path) == before
    if case == "symlink":
        assert (tmp_path / "link").is_symlink()


def test_results_are_replaced_only_when_they_hold_nothing_else(result_dir, log_csv, capsys):
    assert (result_dir / "manifest.json").exists()
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--seed", "1", "--quiet"]) == 0  # ours: replaced
    (result_dir / "notes.md").write_text("my notes")
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--quiet"]) == 2
    assert "notes.md" in one_error_line(capsys)
    assert (result_dir / "notes.md").read_text() == "my notes"


def test_a_folder_written_before_manifests_is_still_ours(tmp_path, log_csv):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("users.csv", "models.csv", "rows.csv", "report.html"):
        (legacy / name).write_text("x\n1\n")
    (legacy / "summary.json").write_text(json.dumps({"bayes_annot_version": "0.1.0"}))
    assert main(["fit", str(log_csv), "--out", str(legacy), "--quiet"]) == 0
    assert (legacy / "manifest.json").exists()


# --------------------------------------------------------------------------- 5. all or nothing


def test_dpo_path_that_is_a_folder_leaves_the_results_untouched(result_dir, log_csv, tmp_path, capsys):
    before = snapshot(result_dir)
    (tmp_path / "pairs.jsonl").mkdir()
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--dpo", str(tmp_path / "pairs.jsonl")]) == 2
    assert "folder" in one_error_line(capsys)
    assert snapshot(result_dir) == before


def test_a_dpo_file_that_is_not_ours_is_not_overwritten(tmp_path, log_csv, capsys):
    theirs = tmp_path / "pairs.jsonl"
    theirs.write_text('{"question": 1}\n')
    assert main(["fit", str(log_csv), "--out", str(tmp_path / "res"), "--dpo", str(theirs)]) == 2
    one_error_line(capsys)
    assert theirs.read_text() == '{"question": 1}\n' and not (tmp_path / "res").exists()


@pytest.mark.parametrize("name", ["users.parquet", "rows.parquet"])
def test_a_dpo_file_named_as_one_of_the_folders_tables_is_refused(result_dir, log_csv, capsys, name):
    """``--dpo DIR/rows.parquet`` with ``--out DIR --format parquet`` used to replace the rows table with the DPO
    pairs: the folder's manifest still described the rows, and ``load(DIR).rows`` gave the DPO records. Refused
    in one line; the previous results stay as they were."""
    before = snapshot(result_dir)
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--format", "parquet", "--dpo",
                 str(result_dir / name), "--quiet"]) == 2
    assert name in one_error_line(capsys)
    assert snapshot(result_dir) == before and not leftovers(result_dir.parent)


def test_report_out_never_overwrites_a_file_that_is_not_a_report(result_dir, log_csv, tmp_path, capsys):
    """``report DIR --out FILE`` replaced any file with HTML (the user's log, a table of the folder itself),
    and a folder gave an internal error (exit 1). Now: one line, exit 2, every file byte-identical."""
    theirs = tmp_path / "log_copy.csv"
    theirs.write_bytes(log_csv.read_bytes())
    (tmp_path / "a_folder").mkdir()
    before = snapshot(result_dir)
    for target in (theirs, result_dir / "users.csv", result_dir / "manifest.json", tmp_path / "a_folder"):
        assert main(["report", str(result_dir), "--out", str(target)]) == 2
        assert str(target.name) in one_error_line(capsys)
    assert theirs.read_bytes() == log_csv.read_bytes() and snapshot(result_dir) == before
    assert list((tmp_path / "a_folder").iterdir()) == []
    with pytest.raises(ba.InputError, match="not a report"):
        ba.load(result_dir).report(theirs)  # the Python API keeps the same rule
    assert theirs.read_bytes() == log_csv.read_bytes()
    # a report replaces a report; one written into a result folder is listed in its manifest, so a later fit
    # still replaces the folder (before, that fit refused: 'holds report.html, which bayes_annot did not write')
    elsewhere = tmp_path / "rep.html"
    assert main(["report", str(result_dir), "--out", str(elsewhere), "--quiet"]) == 0
    assert main(["report", str(result_dir), "--out", str(elsewhere), "--quiet"]) == 0
    assert main(["report", str(result_dir), "--out", str(result_dir / "report.html"), "--quiet"]) == 0
    assert "report.html" in json.loads((result_dir / "manifest.json").read_text())["files"]
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--quiet"]) == 0


@pytest.mark.parametrize("name", ["rows.parquet", "users.parquet", "models.parquet"])
def test_a_dpo_file_named_like_a_table_never_replaces_it(tmp_path, log_csv, name, capsys):
    """``fit LOG --out res --format parquet --dpo res/rows.parquet`` wrote the DPO records over the staged rows
    table: the folder loaded 'fine' with DPO records as its rows (every input row lost from it), exit 0.
    Now refused before fitting (exit 2, one line, nothing written); in Python too."""
    out = tmp_path / "res"
    assert main(["fit", str(log_csv), "--out", str(out), "--format", "parquet", "--dpo", str(out / name)]) == 2
    assert "is a table of the output folder" in one_error_line(capsys)
    assert not out.exists()
    with pytest.raises(ba.InputError, match="is a table of the output folder"):
        ba.fit(log_csv).save(out, format="parquet", dpo=out / name)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_python_dpo_exports_never_overwrite_a_file_that_is_not_dpo_records(tmp_path, log_csv, suffix):
    """The CLI refused to replace a --dpo file that is not DPO records, but ``result.save(DIR, dpo=FILE)``
    and ``result.to_dpo(FILE)`` (of a fit or of a loaded folder) replaced it. Now the same rule holds in
    Python: InputError before anything is written; a DPO file (or a new one) is still written."""
    theirs = tmp_path / f"mine{suffix}"
    if suffix == ".jsonl":
        theirs.write_text('{"question": 1}\n')
    else:
        pd.DataFrame({"question": [1]}).to_parquet(theirs)
    before = theirs.read_bytes()
    result = ba.fit(log_csv)
    loaded = ba.load(result.save(tmp_path / "saved"))
    for write in (lambda: result.save(tmp_path / "res", dpo=theirs), lambda: result.to_dpo(theirs),
                  lambda: loaded.to_dpo(theirs)):
        with pytest.raises(ba.InputError, match="not a DPO file"):
            write()
        assert theirs.read_bytes() == before
    assert not (tmp_path / "res").exists()
    ours = tmp_path / f"pairs{suffix}"
    result.save(tmp_path / "res", dpo=ours)
    result.to_dpo(ours)  # DPO records: replaced
    loaded.to_dpo(ours)
    assert len(pd.read_parquet(ours) if suffix == ".parquet" else pd.read_json(ours, lines=True)) == \
        result.summary["counts"]["kept_rows"]


def test_a_failed_second_rename_puts_the_old_results_back_at_once(result_dir, log_csv, capsys, monkeypatch):
    """Where renameat2 is missing (two renames), a failure of the second rename (staging -> DIR) left DIR
    missing, its results set aside as '.DIR.old-*' until the next run's recovery: load() and report failed
    meanwhile. Now the old results are renamed back before the error is reported."""
    import bayes_annot.outdir as outdir

    monkeypatch.setenv("BAYES_ANNOT_NO_RENAME_EXCHANGE", "1")
    before = snapshot(result_dir)
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if ".tmp-" in Path(src).name and Path(dst) == result_dir:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(outdir.os, "replace", replace)
    assert main(["fit", str(log_csv), "--out", str(result_dir), "--seed", "3"]) == 2
    assert "cannot write" in one_error_line(capsys)
    assert snapshot(result_dir) == before and leftovers(result_dir.parent) == []


@pytest.mark.parametrize("where", ["report", "table", "dpo"])
def test_disk_full_anywhere_keeps_the_old_results(result_dir, log_csv, capsys, monkeypatch, where):
    """An OSError (disk full) while writing any part: exit 2, one line, the previous results byte-identical."""
    before = snapshot(result_dir)
    full = OSError(errno.ENOSPC, "No space left on device")

    def fail(*args, **kwargs):
        raise full

    if where == "report":
        monkeypatch.setattr(ba.FitResult, "report", fail)
    elif where == "table":
        import bayes_annot.tables as tables

        monkeypatch.setattr(tables, "write_table", fail)
    else:
        monkeypatch.setattr(ba.FitResult, "to_dpo", fail)
    args = ["fit", str(log_csv), "--out", str(result_dir), "--report", "--dpo", str(result_dir.parent / "p.jsonl")]
    assert main(args) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert snapshot(result_dir) == before
    assert leftovers(result_dir.parent) == [] and not (result_dir.parent / "p.jsonl").exists()
    assert not [p for p in result_dir.rglob(".*tmp*")]


# --------------------------------------------------------------------------- fault injection: kill -9


@pytest.mark.parametrize("point, env", [
    ("before-publish", {}),
    ("after-exchange", {}),
    ("between-renames", {"BAYES_ANNOT_NO_RENAME_EXCHANGE": "1"}),
])
@pytest.mark.parametrize("mode", ["fit", "update"])
def test_killed_writes_keep_the_old_results_and_the_next_run_cleans_up(tmp_path, log_csv, point, env, mode):
    out = tmp_path / "res"
    new = tmp_path / "new.csv"
    log = pd.read_csv(log_csv, dtype=str, keep_default_na=False)
    log.iloc[:-60].to_csv(tmp_path / "old.csv", index=False)
    log.iloc[-60:].to_csv(new, index=False)
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(out), "--quiet"]) == 0
    before = snapshot(out)
    args = ["fit", new, "--update", out, "--out", out] if mode == "update" else ["fit", log_csv, "--out", out, "--seed", "2"]
    proc = run(*args, "--quiet", env={"BAYES_ANNOT_FAULT": point, **env})
    assert proc.returncode == 91, proc.stderr  # killed at that point (os._exit, as kill -9 would)
    if point == "before-publish":
        assert snapshot(out) == before
    elif point == "after-exchange":
        assert ba.load(out).summary["counts"]["rows"] == (len(log) if mode == "update" else len(log))
    else:  # between the two renames: the old results sit aside; the next write puts them back first
        assert not out.exists() and any(".old-" in name for name in leftovers(tmp_path))
    assert leftovers(tmp_path)  # something was left ...
    proc = run(*args, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(tmp_path) == []  # ... and the next run removed it
    saved = ba.load(out)
    assert len(saved.rows) == len(log) and saved.summary["counts"]["rows"] == len(log)


def test_kill_at_random_moments_never_leaves_a_mix(tmp_path):
    """SIGKILL at several moments of a larger fit: the folder always holds one complete result."""
    big = tmp_path / "big.csv"
    ba.simulate(n_users=4000, n_models=6, labels_per_user=(10, 40), seed=3).to_csv(big, index=False)
    out = tmp_path / "res"
    assert main(["fit", str(big), "--out", str(out), "--quiet"]) == 0
    reference = snapshot(out)
    for delay in (0.5, 1.5, 2.5, 3.5):
        proc = subprocess.Popen([sys.executable, "-m", "bayes_annot", "fit", str(big), "--out", str(out), "--quiet",
                                 "--format", "parquet"])
        time.sleep(delay)
        proc.kill()
        proc.wait()
        files = snapshot(out)
        manifest = json.loads(files["manifest.json"])
        assert manifest["complete"] and set(files) == set(manifest["files"]) | {"manifest.json"}
        if manifest["format"] == "csv":
            assert files == reference
        assert len(ba.load(out).rows) == len(pd.read_csv(big))
    assert main(["fit", str(big), "--out", str(out), "--quiet"]) == 0
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- 2. one writer at a time


def test_two_concurrent_updates_keep_every_row(tmp_path):
    log = ba.simulate(n_users=400, n_models=5, labels_per_user=(5, 20), seed=9)[["user", "model_a", "model_b", "winner"]]
    log.insert(0, "vote_id", [f"v{i}" for i in range(len(log))])  # identical votes stay distinct rows
    old, first, second = log.iloc[:-800], log.iloc[-800:-400], log.iloc[-400:]
    old.to_csv(tmp_path / "old.csv", index=False)
    first.to_csv(tmp_path / "n1.csv", index=False)
    second.to_csv(tmp_path / "n2.csv", index=False)
    out = tmp_path / "lu"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(out), "--quiet"]) == 0
    procs = []
    for name in ("n1.csv", "n2.csv"):
        procs.append(subprocess.Popen([sys.executable, "-m", "bayes_annot", "fit", str(tmp_path / name), "--update",
                                       str(out), "--out", str(out), "--row-id", "vote_id", "--quiet"],
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read()
    rows = ba.load(out).rows
    assert len(rows) == len(log)
    key = ["vote_id", "user", "model_a", "model_b", "winner"]
    merged = rows[key].astype(str).merge(log.astype(str), on=key, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_python_updates_that_overlap_never_drop_rows(tmp_path, fmt):
    """The CLI holds a lock from reading DIR to writing it, but in Python ``update_saved(DIR, new).save(DIR)``
    did not: two nightly jobs that both read DIR before either saved wrote one after the other, and the second
    save dropped the first one's rows (a probe: 11,435 rows saved of 11,535). Now the second save is an
    InputError and DIR keeps the first update whole; the update run again keeps both."""
    from bayes_annot.folder_update import update_saved

    log = ba.simulate(n_users=200, n_models=4, labels_per_user=(5, 15), seed=12)[["user", "model_a", "model_b", "winner"]]
    log.insert(0, "vote_id", [f"v{i}" for i in range(len(log))])
    old, first, second = log.iloc[:-300], log.iloc[-300:-100], log.iloc[-100:]
    out = tmp_path / "res"
    ba.fit(old).save(out, format=fmt)
    one = update_saved(out, first, row_id="vote_id")
    two = update_saved(out, second, row_id="vote_id")  # read before ``one`` is saved
    one.save(out, format=fmt)
    one.save(out, format=fmt)  # saving the same update again is fine
    before = snapshot(out)
    with pytest.raises(ba.InputError, match="replaced after this update read it"):
        two.save(out, format=fmt)
    assert snapshot(out) == before and leftovers(tmp_path) == []
    update_saved(out, second, row_id="vote_id").save(out, format=fmt)
    assert sorted(ba.load(out).rows["vote_id"]) == sorted(log["vote_id"])
    two.save(tmp_path / "elsewhere", format=fmt)  # another folder: nothing to lose


def test_a_live_update_saved_over_a_folder_updated_meanwhile_is_refused(tmp_path):
    """``r = fit(log); r.save(DIR)``; a nightly ``fit NEW --update DIR --out DIR`` runs; then
    ``r.update(more).save(DIR)`` replaced DIR with r's rows plus ``more``: the nightly rows were lost.
    That save is now an InputError (DIR untouched); a plain re-save of a fit still replaces the folder."""
    log = ba.simulate(n_users=150, n_models=4, labels_per_user=(5, 15), seed=14)[["user", "model_a", "model_b", "winner"]]
    log.insert(0, "vote_id", [f"v{i}" for i in range(len(log))])
    old, nightly, more = log.iloc[:-200], log.iloc[-200:-100], log.iloc[-100:]
    nightly.to_csv(tmp_path / "nightly.csv", index=False)
    out = tmp_path / "res"
    result = ba.fit(old)
    result.save(out)
    assert main(["fit", str(tmp_path / "nightly.csv"), "--update", str(out), "--out", str(out), "--quiet"]) == 0
    before = snapshot(out)
    with pytest.raises(ba.InputError, match="replaced after this update read it"):
        result.update(more).save(out)
    assert snapshot(out) == before
    result.save(out)  # a fit (not an update) replaces the folder as asked
    result.update(more).save(out)  # an update of what the folder now holds
    assert len(ba.load(out).rows) == len(old) + len(more)


def test_readers_never_see_two_fits_at_once(tmp_path):
    """load() while a writer alternates two different fits into one folder: every read is one fit."""
    small = ba.simulate(n_users=100, n_models=3, labels_per_user=(3, 8), seed=1)
    large = ba.simulate(n_users=300, n_models=5, labels_per_user=(3, 8), seed=2)
    small.to_csv(tmp_path / "small.csv", index=False)
    large.to_csv(tmp_path / "large.csv", index=False)
    out = tmp_path / "res"
    assert main(["fit", str(tmp_path / "small.csv"), "--out", str(out), "--quiet"]) == 0
    script = (
        "import sys\nfrom bayes_annot.cli import main\n"
        f"for i in range(16):\n    main(['fit', {str(tmp_path / 'large.csv')!r} if i % 2 == 0 else {str(tmp_path / 'small.csv')!r},"
        f" '--out', {str(out)!r}, '--quiet'])\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script])
    reads = 0
    try:
        while writer.poll() is None:
            saved = ba.load(out)
            n_rows = saved.summary["counts"]["rows"]
            assert n_rows == len(saved.rows) == int(saved.users["n_rows"].sum())
            assert set(saved.users["user"]) == set(saved.rows["user"])
            reads += 1
    finally:
        writer.wait()
    assert writer.returncode == 0 and reads > 5


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_output_permissions_follow_the_umask(tmp_path, log_csv, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        assert main(["fit", str(log_csv), "--out", str(tmp_path / "res"), "--report", "--quiet",
                     "--dpo", str(tmp_path / "pairs.jsonl")]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "res").stat().st_mode & 0o777 == dir_mode
    for path in [*(tmp_path / "res").iterdir(), tmp_path / "pairs.jsonl"]:
        assert path.stat().st_mode & 0o777 == file_mode, path


# --------------------------------------------------------------------------- 7. what leaves the machine


def test_safe_csv_escapes_formulas_and_load_undoes_it(tmp_path):
    log = ba.simulate(n_users=60, n_models=3, labels_per_user=(3, 8), seed=4)[["user", "model_a", "model_b", "winner"]]
    log["user"] = np.where(log["user"] == log["user"].iloc[0], "=HYPERLINK(\"http://x\")", log["user"])
    log["note"] = ["+1", "-2", "@a", "'q", "plain"] * (len(log) // 5) + ["x"] * (len(log) % 5)
    log.to_csv(tmp_path / "log.csv", index=False)
    assert main(["fit", str(tmp_path / "log.csv"), "--out", str(tmp_path / "res"), "--safe-csv", "--quiet"]) == 0
    text = (tmp_path / "res" / "rows.csv").read_text()
    assert "'=HYPERLINK" in text and "\"'+1\"" in text and "\"''q\"" in text
    assert "\"=HYPERLINK" not in text and "\"=" not in (tmp_path / "res" / "users.csv").read_text()
    saved = ba.load(tmp_path / "res")
    assert saved.rows["note"].tolist() == log["note"].tolist()
    assert saved.rows["user"].tolist() == log["user"].tolist()


# --------------------------------------------------------------------------- 8. a damaged folder is never updated


@pytest.mark.parametrize("layout", ["csv", "parquet", "parquet-parts"])
@pytest.mark.parametrize("damage", ["cut", "sliced", "column"])
def test_a_cut_rows_table_is_refused_not_updated(tmp_path, layout, damage, capsys):
    """A rows table cut at a line boundary (a partial copy, a sync that stopped) parsed fine, and
    ``--update`` refitted what was left: the saved rows past the cut were lost without a word (a sliced
    parquet file was an internal error, exit 1). A parquet rows file with a column dropped by hand loaded
    without that column (and the update was an internal error). Now every reader checks the row count and
    the columns the manifest records: exit 2, one line naming the file, the folder untouched."""
    log = ba.simulate(n_users=80, n_models=4, labels_per_user=(4, 10), seed=8)[["user", "model_a", "model_b", "winner"]]
    log["vid"] = np.arange(len(log))
    third = len(log) // 3
    for i, part in enumerate((log.iloc[:third], log.iloc[third:2 * third], log.iloc[2 * third:])):
        part.to_csv(tmp_path / f"p{i}.csv", index=False)
    out = tmp_path / "res"
    fmt = "csv" if layout == "csv" else "parquet"
    assert main(["fit", str(tmp_path / "p0.csv"), "--out", str(out), "--format", fmt, "--quiet"]) == 0
    if layout == "parquet-parts":  # a fast update: rows kept as parts
        assert main(["fit", str(tmp_path / "p1.csv"), "--update", str(out), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rows_meta = manifest["tables"]["rows"]
    victim = out / (rows_meta["parts"][0]["file"] if rows_meta.get("layout") == "parts" else rows_meta["file"])
    if victim.suffix == ".csv":
        lines = victim.read_bytes().splitlines(keepends=True)
        if damage == "column":
            pd.read_csv(victim, dtype=str, keep_default_na=False).drop(columns=["vid"]).to_csv(victim, index=False)
        else:
            victim.write_bytes(b"".join(lines[: len(lines) // 2]) if damage == "cut" else b"".join(lines[:-1]))
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(victim)
        if damage == "column":
            pq.write_table(table.drop(["vid"]), victim)
        elif damage == "cut":
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        else:
            pq.write_table(table.slice(0, table.num_rows - 1), victim)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "p2.csv"), "--update", str(out), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert victim.name in line or "cannot be read" in line, line
    assert main(["report", str(out)]) == 2
    one_error_line(capsys)
    with pytest.raises(ba.InputError):
        ba.load(out)
    assert snapshot(out) == before


def test_an_update_keeps_safe_csv(tmp_path):
    """A folder written with ``--safe-csv`` lost the escaping at its next ``--update`` (which keeps DIR's other
    settings and its format): every formula cell was written bare again. The update now keeps it."""
    log = ba.simulate(n_users=60, n_models=3, labels_per_user=(3, 8), seed=4)[["user", "model_a", "model_b", "winner"]]
    log["note"] = "=1+1"
    log.iloc[:-20].to_csv(tmp_path / "old.csv", index=False)
    log.iloc[-20:].assign(note="=2+2").to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(out), "--safe-csv", "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.csv"), "--update", str(out), "--out", str(out), "--quiet"]) == 0
    text = (out / "rows.csv").read_text()
    assert "\"=" not in text and "'=2+2" in text and "'=1+1" in text
    assert ba.load(out).rows["note"].tolist() == ["=1+1"] * (len(log) - 20) + ["=2+2"] * 20


@pytest.mark.parametrize("point", ["add-file-listed", "add-file-staged"])
def test_a_killed_report_rebuild_leaves_the_folder_ours(result_dir, log_csv, point):
    """``bayes-annot report DIR`` killed while writing left ``.report.html.tmp-*`` in DIR (or a report.html
    its manifest did not list): every later ``fit --out DIR`` then refused the folder ('holds
    '.report.html.tmp-...', which bayes_annot did not write'). Now the manifest is rewritten first, such
    leftovers count as the package's, and the next rebuild removes them. (One killed rebuild: a copy of
    the folder it left serves the second half, which killed it again before.)"""
    import shutil

    killed = run("report", result_dir, env={"BAYES_ANNOT_FAULT": point})
    assert killed.returncode == 91, killed.stderr
    again = shutil.copytree(result_dir, result_dir.parent / "again", symlinks=True)
    assert len(ba.load(result_dir).rows) == len(pd.read_csv(log_csv))
    assert run("fit", log_csv, "--out", result_dir, "--quiet").returncode == 0
    assert run("report", again, "--quiet").returncode == 0
    assert sorted(p.name for p in again.iterdir() if p.name.startswith(".")) == []
    assert "report.html" in json.loads((again / "manifest.json").read_text())["files"]
    assert run("fit", log_csv, "--out", again, "--quiet").returncode == 0


def test_a_report_written_from_python_into_a_result_folder_keeps_it_ours(result_dir, log_csv):
    """``result.save(DIR)`` then ``result.report(DIR / "report.html")`` left a report.html the manifest did not
    list, so the next ``fit --out DIR`` refused the folder ('holds 'report.html', which bayes_annot did not
    write'). The report is now added to the manifest."""
    loaded = ba.load(result_dir)
    loaded.report(result_dir / "report.html")
    loaded.report(result_dir / "second.html")
    files = json.loads((result_dir / "manifest.json").read_text())["files"]
    assert {"report.html", "second.html"} <= set(files)
    assert run("fit", log_csv, "--out", result_dir, "--quiet").returncode == 0


def test_a_users_hidden_backup_beside_the_folder_is_never_removed(result_dir, log_csv):
    """The recovery after a crash removed every folder named '.DIR.tmp-*' / '.DIR.old-*' that holds a
    manifest: a user's own copy '.res.old-backup1' (a result folder, so with a manifest) was deleted by the
    next fit. Only the names the package makes (8 random characters) are recovered now."""
    backup = result_dir.parent / f".{result_dir.name}.old-backup1"
    import shutil

    shutil.copytree(result_dir, backup)
    before = snapshot(backup)
    assert run("fit", log_csv, "--out", result_dir, "--seed", "4", "--quiet").returncode == 0
    assert snapshot(backup) == before
