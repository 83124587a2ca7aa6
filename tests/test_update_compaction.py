"""Chained ``--update`` of a parquet folder: past a number of parts, an update merges the trailing rows parts
(and codes files) into one, so the files a folder holds, and those an update keeps open, stay bounded.

Every chain is compared with the same chain without merging (``BAYES_ANNOT_MAX_PARTS=0``): the tables read
back must be equal, exactly. The open-file limit and crash cases run in subprocesses.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from tests.test_folder_update_fast import _comparable

ROOT = Path(__file__).resolve().parents[1]


def _log(n_users=60, seed=5):
    """A small log with input columns of several kinds (text with gaps, floats with NaN, nullable integers,
    timestamps, booleans, a categorical, nested JSON-like cells)."""
    log = ba.simulate(n_users=n_users, n_models=4, labels_per_user=(3, 8), tie_rate=0.05, seed=seed)
    log = log[["user", "model_a", "model_b", "winner"]].astype(str)
    rng = np.random.default_rng(seed)
    n = len(log)
    log.insert(0, "vote_id", np.arange(n, dtype=np.int64))
    log["note"] = np.where(rng.random(n) < 0.3, None, np.array([f"n{i}" for i in range(n)], dtype=object))
    log["score"] = np.where(rng.random(n) < 0.2, np.nan, rng.random(n))
    log["count"] = pd.array(np.where(rng.random(n) < 0.2, -1, rng.integers(0, 9, n)), dtype="Int64")
    log.loc[log["count"] == -1, "count"] = pd.NA
    log["when"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s")
    log["flag"] = rng.random(n) < 0.5
    log["lang"] = pd.Categorical(rng.choice(["en", "de", "fr"], n), categories=["de", "en", "fr"])
    log["turns"] = [[{"role": "user", "content": f"q{i}"}] if i % 3 else None for i in range(n)]
    return log


def _batches(log, n_first, n_updates, size=3):
    """The first fit's rows, then ``n_updates`` batches of ``size`` rows (some of them new users)."""
    assert n_first + n_updates * size <= len(log)
    first = log.iloc[:n_first]
    rest = log.iloc[n_first:n_first + n_updates * size].copy()
    rest.loc[rest.index[::7], "user"] = [f"late{i}" for i in range(len(rest.index[::7]))]
    return first, [rest.iloc[i * size:(i + 1) * size] for i in range(n_updates)]


def _fit(path, out, fmt="parquet"):
    assert main(["fit", str(path), "--out", str(out), "--format", fmt, "--quiet"]) == 0


def _update(path, out, *extra):
    assert main(["fit", str(path), "--update", str(out), "--out", str(out), "--row-id", "vote_id", "--quiet",
                 *extra]) == 0


def _write(frame, path):
    frame.to_parquet(path, index=False)
    return path


def _updated_folder(tmp_path, n_batches: int, n_done: int):
    """The folder ``tmp_path / "out"``: a parquet fit of the log's first 150 rows, then ``n_done`` of its
    ``n_batches`` update batches (each through ``--update``); returns it and every batch."""
    first, batches = _batches(_log(), 150, n_batches)
    out = tmp_path / "out"
    _fit(_write(first, tmp_path / "first.parquet"), out)
    for i in range(n_done):
        _update(_write(batches[i], tmp_path / f"new{i}.parquet"), out)
    return out, batches


def assert_same_tables(a, b, exact=True):
    x, y = ba.load(a), ba.load(b)
    for name in ("users", "models", "rows"):
        if exact:
            pd.testing.assert_frame_equal(getattr(x, name), getattr(y, name), check_exact=True)
        else:
            pd.testing.assert_frame_equal(getattr(x, name), getattr(y, name), check_exact=False, rtol=1e-10,
                                          atol=1e-12)
    if not exact:
        assert {x.summary["settings"].pop("format"), y.summary["settings"].pop("format")} <= {"csv", "parquet"}
    assert _comparable(x.summary) == _comparable(y.summary)


def _manifest(folder) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def _parts(folder) -> tuple[list, list]:
    """The folder's rows parts and codes files, as its manifest lists them (in row order)."""
    rows = _manifest(folder)["tables"]["rows"]
    if rows.get("layout") != "parts":
        return [rows["file"]], []
    return [p["file"] for p in rows["parts"]], [c["file"] for c in rows["outputs"]["codes"]]


def _holds_what_it_lists(folder):
    names = sorted(p.name for p in Path(folder).iterdir())
    assert names == sorted(_manifest(folder)["files"] + ["manifest.json"])


def _two_chains(tmp_path, monkeypatch, first, batches, limit: str):
    """The same chain of updates into a folder that merges past ``limit`` parts and one that never merges; yields
    after each update (both folders equal so far, the merging one holding only what its manifest lists)."""
    merged, plain = tmp_path / "merged", tmp_path / "plain"
    for folder in (merged, plain):
        _fit(_write(first, tmp_path / "first.parquet"), folder)
    for i, batch in enumerate(batches):
        path = _write(batch, tmp_path / f"new{i}.parquet")
        for folder, value in ((merged, limit), (plain, "0")):
            monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", value)
            _update(path, folder)
        assert_same_tables(merged, plain)
        _holds_what_it_lists(merged)
        yield merged, plain
    monkeypatch.delenv("BAYES_ANNOT_MAX_PARTS")


def test_a_chain_past_the_limit_reads_back_as_without_merging(tmp_path, monkeypatch):
    log = _log()
    first, batches = _batches(log, 150, 8)  # the new rows stay under a quarter of the first fit's
    counts = []
    for merged, plain in _two_chains(tmp_path, monkeypatch, first, batches, "4"):
        rows_parts, codes = _parts(merged)
        counts.append(len(rows_parts))
        assert len(rows_parts) <= 4 and len(codes) <= 4
    assert max(counts) == 4 and min(counts[4:]) < 4  # it merged, more than once
    assert len(_parts(plain)[0]) == 1 + len(batches) and len(_parts(plain)[1]) == 1 + len(batches)
    # the first fit's table (four times the rows of every update) is still the one the first fit wrote: the
    # merges rewrote only the updates' rows
    assert _parts(merged)[0][0] == "rows.parquet"
    assert ba.load(merged).rows["vote_id"].tolist() == pd.concat([first, *batches])["vote_id"].tolist()
    assert main(["report", str(merged), "--quiet"]) == 0 and (merged / "report.html").exists()


def test_every_part_merged_when_the_tail_is_large(tmp_path, monkeypatch):
    """A first fit smaller than the updates: the merge rewrites every part (one table of parts left)."""
    first, batches = _batches(_log(), 12, 6, size=20)
    for merged, _ in _two_chains(tmp_path, monkeypatch, first, batches, "3"):
        assert len(_parts(merged)[0]) <= 3
    assert "rows.parquet" not in _parts(merged)[0] and not (merged / "rows.parquet").exists()


def test_merged_folder_updates_and_refits_as_before(tmp_path, monkeypatch):
    """After the merge, a further update, and the same rows fitted in one go, give what they gave before."""
    log = _log()
    first, batches = _batches(log, 150, 7)
    for merged, plain in _two_chains(tmp_path, monkeypatch, first, batches, "3"):
        pass
    # Python: update_saved of either folder gives the same result, and so does a refit of every row (to the
    # tolerance a warm start reaches the same optimum with)
    from bayes_annot.folder_update import update_saved

    extra, tight = log.iloc[-5:], {"tol": 1e-15, "max_iter": 20000}
    a, b = update_saved(merged, extra, row_id="vote_id"), update_saved(plain, extra, row_id="vote_id")
    for name in ("users", "models", "rows"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    a = update_saved(merged, extra, row_id="vote_id", **tight)
    full = ba.fit(pd.concat([first, *batches, extra], ignore_index=True), method="em", **tight)
    np.testing.assert_allclose(a.users.quality, full.users.quality, atol=1e-6)
    np.testing.assert_allclose(a.models.strength, full.models.strength, atol=1e-6)
    pd.testing.assert_series_equal(a.rows.kept, full.rows.kept)


def test_csv_folders_keep_one_rows_table(tmp_path, monkeypatch):
    """A CSV folder is refitted from its rows at each update: one ``rows.csv``, equal to the parquet chain's."""
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", "2")
    log = _log()
    first, batches = _batches(log, 150, 4)
    csv, parquet = tmp_path / "csv", tmp_path / "parquet"
    _fit(_write(first, tmp_path / "first.parquet"), csv, fmt="csv")
    _fit(tmp_path / "first.parquet", parquet)
    files = sorted(p.name for p in csv.iterdir())
    for i, batch in enumerate(batches):
        path = _write(batch, tmp_path / f"new{i}.parquet")
        _update(path, csv)
        _update(path, parquet)
        assert sorted(p.name for p in csv.iterdir()) == files
    assert_same_tables(csv, parquet, exact=False)  # (their summaries differ in settings.format only)
    # a parquet folder of merged parts written as CSV: one table, the same values
    again = tmp_path / "again"
    assert main(["fit", str(tmp_path / "new0.parquet"), "--update", str(parquet), "--out", str(again), "--format",
                 "csv", "--quiet"]) == 0
    assert _parts(again) == (["rows.csv"], []) and len(ba.load(again).rows) == len(ba.load(parquet).rows)


@pytest.mark.parametrize("value, fmt", [("-1", "parquet"), ("many", "parquet"), ("many", "csv")])
def test_a_bad_limit_is_one_line(tmp_path, monkeypatch, capsys, value, fmt):
    """A bad BAYES_ANNOT_MAX_PARTS is refused before the fit, whatever the output format (a CSV fit never merges,
    but the setting is wrong all the same)."""
    import importlib

    fit_module = importlib.import_module("bayes_annot.fit")
    first, _ = _batches(_log(), 100, 0)
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", value)
    fits = []
    monkeypatch.setattr(fit_module, "fit", lambda *args, **kwargs: fits.append(1))  # never reached
    assert main(["fit", str(_write(first, tmp_path / "first.parquet")), "--out", str(tmp_path / "out"), "--format",
                 fmt, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "BAYES_ANNOT_MAX_PARTS" in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    assert not fits


def test_a_damaged_part_in_a_merge_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    """A saved rows part that cannot be read, among the parts an update merges, is refused in one line naming the
    part (the folder is damaged), exit 2, and the folder is left as it was."""
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", "0")
    out, batches = _updated_folder(tmp_path, n_batches=5, n_done=4)
    rows_parts = _parts(out)[0]
    assert len(rows_parts) == 5
    name = rows_parts[2]  # a part the next update reads only to merge it (the four small parts, then the new one)
    damaged = out / name
    data = bytearray(damaged.read_bytes())
    data[8:48] = bytes(b ^ 0x5A for b in data[8:48])  # its first data page: the footer (schema, rows) intact
    damaged.write_bytes(bytes(data))
    before = _snapshot(out)
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", "8")
    capsys.readouterr()
    assert main(["fit", str(_write(batches[4], tmp_path / "new4.parquet")), "--update", str(out), "--out", str(out),
                 "--row-id", "vote_id", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err, err
    assert _snapshot(out) == before


# --------------------------------------------------------------------------- in subprocesses

_CHAIN = """
import contextlib, io, json, os, resource, sys
from pathlib import Path
import numpy as np, pandas as pd
sys.path.insert(0, {tests!r})
from test_update_compaction import _log, _batches
from bayes_annot.cli import main
import bayes_annot as ba

out, n_updates, limit = Path({out!r}), {n_updates}, {limit}
first, batches = _batches(_log(), 150, n_updates)
first.to_parquet(out.parent / "first.parquet", index=False)
assert main(["fit", str(out.parent / "first.parquet"), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
fallbacks, most = 0, 0
{before}
for i, batch in enumerate(batches):
    if i == {lower_at}:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        assert len(ba.load(out).rows) == len(first) + 3 * i  # every part read, within the limit
    path = out.parent / "new.parquet"
    batch.to_parquet(path, index=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["fit", str(path), "--update", str(out), "--out", str(out), "--row-id", "vote_id", "--quiet"])
    assert code == 0, (i, code, err.getvalue())
    layout = json.load(open(out / "manifest.json"))["tables"]["rows"].get("layout")
    fell_back = "updating from the saved rows instead" in err.getvalue()
    assert fell_back == (layout != "parts"), err.getvalue()  # (a fast update writes parts, a refit one table)
    fallbacks += fell_back
    most = max(most, sum(1 for p in out.iterdir() if p.name.startswith("rows")))
from bayes_annot.outdir import max_parts
print(json.dumps({{"fallbacks": fallbacks, "most_files": most, "rows": len(ba.load(out).rows), "max_parts": max_parts()}}))
"""


def _run(script: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full, timeout=300)


@pytest.mark.parametrize("max_parts", [None, "0"])
def test_a_long_chain_under_a_low_open_file_limit_stays_fast(tmp_path, max_parts):
    """Each part costs an update open files: without merging (``0``, the control) a long chain passes the
    limit and the update falls back to refitting the saved rows; with the default, parts are merged before."""
    n_updates, limit = 20, 48
    script = _CHAIN.format(tests=str(ROOT / "tests"), out=str(tmp_path / "out"), n_updates=n_updates, limit=limit,
                           lower_at=0, before="")
    env = {} if max_parts is None else {"BAYES_ANNOT_MAX_PARTS": max_parts}
    proc = _run(script, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["rows"] == 150 + 3 * n_updates
    if max_parts is None:
        assert found["fallbacks"] == 0
        assert found["most_files"] <= 2 * found["max_parts"] + 1  # parts, codes files, rows-outputs
        assert found["max_parts"] < n_updates
    else:
        assert found["fallbacks"] >= 1


def test_a_folder_of_many_parts_loads_and_updates_under_a_low_limit(tmp_path):
    """A folder written with more parts than a later process may hold open (no merging, a higher limit): load()
    reads its parts one at a time, and an update (from the saved rows, as the fast one cannot open them all)
    writes it back as one table."""
    script = _CHAIN.format(tests=str(ROOT / "tests"), out=str(tmp_path / "out"), n_updates=16, limit=14,
                           lower_at=15, before="os.environ['BAYES_ANNOT_MAX_PARTS'] = '0'")
    script = script.replace("print(json.dumps(", "parts = json.load(open(out / 'manifest.json'))['tables']['rows']"
                                                 ".get('parts', [0]); print(json.dumps(")
    script = script.replace('"rows": len(ba.load(out).rows)', '"rows": len(ba.load(out).rows), "parts": len(parts)')
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["rows"] == 150 + 3 * 16 and found["fallbacks"] == 1 and found["parts"] == 1


def _compacting_folder(tmp_path, monkeypatch):
    """A folder whose next update merges parts (limit 3, three parts held), the next update's file, and the
    reference: that update into another folder."""
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", "3")
    out, batches = _updated_folder(tmp_path, n_batches=3, n_done=2)
    assert len(_parts(out)[0]) == 3
    last = _write(batches[2], tmp_path / "new2.parquet")
    reference = tmp_path / "reference"
    assert main(["fit", str(last), "--update", str(out), "--out", str(reference), "--row-id", "vote_id",
                 "--quiet"]) == 0
    assert len(_parts(reference)[0]) < 3  # that update merges
    return out, last, reference


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def test_killed_while_merging_leaves_the_folder_whole(tmp_path, monkeypatch):
    out, last, reference = _compacting_folder(tmp_path, monkeypatch)
    before = _snapshot(out)
    script = textwrap.dedent(f"""
        import os, pyarrow.parquet as pq
        write = pq.ParquetWriter.write_table
        def dying(self, *args, **kwargs):
            if "rows-part-" in str(getattr(self.where, "name", self.where)):
                write(self, *args, **kwargs)  # half the merged part written, then the process dies
                os._exit(91)
            return write(self, *args, **kwargs)
        pq.ParquetWriter.write_table = dying
        from bayes_annot.cli import main
        main(["fit", {str(last)!r}, "--update", {str(out)!r}, "--out", {str(out)!r}, "--row-id", "vote_id", "--quiet"])
    """)
    proc = _run(script, BAYES_ANNOT_MAX_PARTS="3")
    assert proc.returncode == 91, proc.stderr[-3000:]
    assert _snapshot(out) == before  # nothing of the folder touched; the staging folder is left beside it
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(ba.load(out).rows) == 150 + 6
    _update(last, out)  # the next write removes the leftover and merges
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert_same_tables(out, reference)
    _holds_what_it_lists(out)


@pytest.mark.parametrize("failure", ["disk-full", "rename"])
def test_a_failed_merge_or_swap_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, failure):
    import pyarrow.parquet as pq

    out, last, reference = _compacting_folder(tmp_path, monkeypatch)
    before = _snapshot(out)
    if failure == "disk-full":
        write = pq.ParquetWriter.write_table

        def full(self, *args, **kwargs):
            if "rows-part-" in str(getattr(self.where, "name", self.where)):
                raise OSError(28, "No space left on device")
            return write(self, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    else:
        monkeypatch.setenv("BAYES_ANNOT_NO_RENAME_EXCHANGE", "1")
        replace = os.replace

        def failing(src, dst, **kwargs):
            if Path(src).name.startswith(".out.tmp-"):  # the staging folder put in place
                raise OSError(5, "Input/output error")
            return replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "replace", failing)
    capsys.readouterr()
    assert main(["fit", str(last), "--update", str(out), "--out", str(out), "--row-id", "vote_id", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err
    assert _snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    monkeypatch.undo()
    monkeypatch.setenv("BAYES_ANNOT_MAX_PARTS", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing left to recover
        _update(last, out)
    assert_same_tables(out, reference)


@pytest.mark.parametrize("first, update, n_updates", [(10**6, 10**4, 2000), (10**3, 10**4, 1000),
                                                      (10**7, 10**2, 5000), (10**5, 1, 3000)])
def test_merging_rewrites_each_row_a_few_times_and_bounds_the_parts(first, update, n_updates):
    """The merge plan, applied to a long chain of updates of about one size: the parts never exceed the limit,
    and each new row is rewritten about once per size class it climbs (not once per merge)."""
    import math

    from bayes_annot.outdir import MAX_PARTS, MERGE_FANOUT, compaction_start

    rng = np.random.default_rng(0)
    parts, rewritten, added, merges = [first], 0, 0, 0
    for size in rng.integers(max(1, update // 2), update * 3 // 2 + 1, n_updates):
        parts.append(int(size))
        added += int(size)
        start = compaction_start(parts, MAX_PARTS)
        if start is not None:
            assert 0 <= start <= len(parts) - 2
            rewritten += sum(parts[start:])
            parts = parts[:start] + [sum(parts[start:])]
            merges += 1
        assert len(parts) <= MAX_PARTS
    classes = math.log(sum(parts) / max(1, update // 2), MERGE_FANOUT)
    assert merges and rewritten / added <= classes + 2
    assert compaction_start(parts, None) is None and compaction_start(parts[:1], MAX_PARTS) is None


@pytest.mark.parametrize("limit", [2, 3, 4, 8])
def test_a_low_limit_rewrites_the_first_fit_rarely(limit):
    """With a limit of a few parts (BAYES_ANNOT_MAX_PARTS, or a low open-file limit), the parts stay within it and
    the first fit's table is rewritten only when the rows after it reach a share of its size: it then grows by at
    least ``1 + 1 / COMPACT_RATIO``, so at most ``log(final / first) / log(1 + 1 / COMPACT_RATIO)`` times (plus
    one), not every few updates."""
    import math

    from bayes_annot.outdir import COMPACT_RATIO, compaction_start

    rng = np.random.default_rng(1)
    first = 10**6
    parts, first_rewrites = [first], 0
    for size in rng.integers(5_000, 15_001, 2000):
        parts.append(int(size))
        start = compaction_start(parts, limit)
        if start is not None:
            first_rewrites += start == 0
            parts = parts[:start] + [sum(parts[start:])]
        assert len(parts) <= limit
    bound = math.log(sum(parts) / first) / math.log(1 + 1 / COMPACT_RATIO) + 1
    assert first_rewrites <= bound, (first_rewrites, bound)
