"""Issue 16, items 3 and 7b: updates are idempotent (duplicate rows are detected), the inputs of a
fit and its updates are listed in summary.json, and no absolute path leaves the machine by default."""

import hashlib
import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log(n_users=150, seed=40, arena=False):
    log = ba.simulate(n_users=n_users, n_models=4, labels_per_user=(3, 12), tie_rate=0.05, seed=seed)
    log = log[["user", "model_a", "model_b", "winner"]].astype(str)
    log["score"] = np.round(np.random.default_rng(seed).uniform(0, 1, len(log)), 2)  # typed floats, e.g. 0.7
    log["turn"] = np.arange(len(log)) % 3 + 1
    if arena:
        log["question_id"] = [f"q{seed}_{i:05d}" for i in range(len(log))]
        log["tstamp"] = 1.7e9 + np.arange(len(log)) * 1.25
    return log.reset_index(drop=True)


def _split(log, n_new=120):
    return log.iloc[:-n_new].reset_index(drop=True), log.iloc[-n_new:].reset_index(drop=True)


def _rows(d):
    return pd.read_csv(d / "rows.csv", dtype=str, keep_default_na=False)


def _summary(d):
    return json.loads((d / "summary.json").read_text())


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# --------------------------------------------------------------------------- item 3: idempotent updates


def test_same_file_three_times_leaves_the_rows_unchanged(tmp_path, capsys):
    old, new = _split(_log())
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_parquet(tmp_path / "new.parquet", index=False)  # typed; old rows come back from rows.csv as text
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.parquet"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
    once = _rows(d)
    assert len(once) == len(old) + len(new)
    capsys.readouterr()
    for _ in range(2):
        assert main(["fit", str(tmp_path / "new.parquet"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "bayes-annot: warning:" in err and f"{len(new)} of {len(new)} new rows" in err
        again = _rows(d)
        assert len(again) == len(once)
        pd.testing.assert_frame_equal(again[list(new.columns)], once[list(new.columns)])
    assert _summary(d)["counts"]["rows"] == len(old) + len(new)
    prov = _summary(d)["provenance"]
    assert [e["rows_added"] for e in prov] == [len(old), len(new), 0, 0]
    assert [e["rows_skipped"] for e in prov] == [0, 0, len(new), len(new)]
    assert [e["file"] for e in prov] == ["old.csv", "new.parquet", "new.parquet", "new.parquet"]
    assert [e["sha256"] for e in prov] == [_sha(tmp_path / "old.csv")] + [_sha(tmp_path / "new.parquet")] * 3
    assert all(e["time"].endswith("Z") for e in prov)


def test_canonical_row_text_matches_text_and_typed_values(tmp_path):
    """The same rows as CSV text ("0.70", "1.0", " 2 ") and as typed parquet (0.7, 1, 2) are duplicates."""
    old, _ = _split(_log())
    text = old.astype(object).copy()
    text["score"] = [f"{v:.2f}" for v in old["score"]]  # 0.7 -> "0.70"
    text["turn"] = [f" {v}.0" for v in old["turn"]]  # 2 -> " 2.0"
    text.to_csv(tmp_path / "old.csv", index=False)
    old.to_parquet(tmp_path / "same.parquet", index=False)
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "same.parquet"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
    assert len(_rows(d)) == len(old)
    assert _summary(d)["provenance"][-1]["rows_skipped"] == len(old)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_vote_of_user_1_is_not_a_duplicate_of_user_001s(tmp_path, fmt):
    """The fit reads ids as text ("001" and "1" are two users), but whole-row duplicate detection compared
    every column numerically: user "1"'s new votes on the same pairs as user "001"'s old ones were skipped
    as duplicates (3 of 3 lost, with a warning blaming identical votes). The user and model columns are
    now compared as ids; the same file applied again still adds nothing."""
    log = _log()
    codes = {u: f"{i:03d}" for i, u in enumerate(sorted(log["user"].unique()))}
    log["user"] = log["user"].map(codes)
    log.to_csv(tmp_path / "old.csv", index=False)
    new = log[log["user"] == "001"].head(3).assign(user="1")
    new.to_csv(tmp_path / "new.csv", index=False)
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--format", fmt, "--quiet"]) == 0
    for _ in range(2):
        assert main(["fit", str(tmp_path / "new.csv"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
        saved = ba.load(d)
        assert len(saved.rows) == len(log) + 3 and {"001", "1"} <= set(saved.users["user"])
    assert ba.fit(log).update(new).summary["counts"]["rows"] == len(log) + 3  # the Python update too


def test_on_duplicate_error_writes_nothing_then_new_rows_are_added(tmp_path, capsys):
    log = _log()
    old, new = _split(log)
    old2, fresh = _split(old, 100)  # fresh: rows the first fit has not seen
    old2.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.csv"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
    before = _snapshot(d)
    capsys.readouterr()
    code = main(["fit", str(tmp_path / "new.csv"), "--update", str(d), "--out", str(d), "--on-duplicate", "error"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bayes-annot: error:" in err and f"{len(new)} of {len(new)}" in err
    assert _snapshot(d) == before
    # a genuinely new file adds all its rows (also under --on-duplicate error)
    code = main(["fit", str(tmp_path / "fresh.csv"), "--update", str(d), "--out", str(d), "--on-duplicate", "error", "--quiet"])
    assert code == 0
    assert len(_rows(d)) == len(old2) + len(new) + len(fresh)
    assert _summary(d)["provenance"][-1] | {"time": None} == {
        "file": "fresh.csv", "path": None, "sha256": _sha(tmp_path / "fresh.csv"), "rows_read": len(fresh),
        "rows_added": len(fresh), "rows_skipped": 0, "duplicate_key": "row hash", "time": None,
    }
    # --on-duplicate keep appends them anyway (the old behaviour, on request)
    assert main(["fit", str(tmp_path / "new.csv"), "--update", str(d), "--out", str(d), "--on-duplicate", "keep", "--quiet"]) == 0
    assert len(_rows(d)) == len(old2) + 2 * len(new) + len(fresh)


def test_arena_ids_win_over_content(tmp_path, capsys):
    """question_id + tstamp identify a row: a re-sent vote with a changed winner is still a duplicate."""
    log = _log(arena=True)
    old, new = _split(log)
    old.to_csv(tmp_path / "old.csv", index=False)
    resent = old.iloc[:30].copy()
    flip = {"model_a": "model_b", "model_b": "model_a"}
    resent["winner"] = [flip.get(w, "model_a") for w in resent["winner"]]  # same ids, other content
    batch = pd.concat([resent, new], ignore_index=True)
    batch.to_json(tmp_path / "batch.jsonl", orient="records", lines=True)  # typed: tstamp is a float
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "batch.jsonl"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
    assert "30 of 150 new rows" in capsys.readouterr().err
    rows = _rows(d)
    assert len(rows) == len(old) + len(new)
    assert rows["winner"].iloc[:30].tolist() == old["winner"].iloc[:30].tolist()  # the first answer stays
    entry = _summary(d)["provenance"][-1]
    assert entry["duplicate_key"] == "question_id, tstamp"
    assert (entry["rows_read"], entry["rows_added"], entry["rows_skipped"]) == (150, 120, 30)


def test_row_id_option(tmp_path, capsys):
    log = _log()
    log["vote"] = [f"v{i}" for i in range(len(log))]
    log["shard"] = np.arange(len(log)) % 2
    old, new = _split(log)
    old.to_csv(tmp_path / "old.csv", index=False)
    edited = old.iloc[:10].copy()
    edited["score"] = 9.5  # same vote id, other content
    pd.concat([edited, new], ignore_index=True).to_csv(tmp_path / "batch.csv", index=False)
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    # by whole rows the edited rows are new
    assert main(["fit", str(tmp_path / "batch.csv"), "--update", str(d), "--out", str(tmp_path / "byrow"), "--quiet"]) == 0
    assert len(_rows(tmp_path / "byrow")) == len(old) + len(new) + 10
    # by --row-id they are duplicates (several columns, comma-separated)
    for spec in ("vote", "vote,shard"):
        out = tmp_path / f"by_{spec.replace(',', '_')}"
        assert main(["fit", str(tmp_path / "batch.csv"), "--update", str(d), "--out", str(out), "--row-id", spec, "--quiet"]) == 0
        assert len(_rows(out)) == len(old) + len(new)
        assert _summary(out)["provenance"][-1]["duplicate_key"] == spec.replace(",", ", ")
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "batch.csv"), "--update", str(d), "--out", str(tmp_path / "x"), "--row-id", "nope"]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(tmp_path / "x"), "--row-id", "vote"]) == 2


def test_python_update_skips_duplicates_and_keeps_provenance(tmp_path):
    old, new = _split(_log())
    first = ba.fit(old)
    assert [e["rows_added"] for e in first.summary["provenance"]] == [len(old)]
    second = first.update(new)
    with pytest.warns(ba.FitWarning, match=f"{len(new)} of {len(new)} new rows"):
        third = second.update(new)
    assert len(third.rows) == len(second.rows) == len(old) + len(new)
    np.testing.assert_allclose(third.users.quality, second.users.quality, atol=1e-3)  # a refit of the same rows
    assert [e["rows_added"] for e in third.summary["provenance"]] == [len(old), len(new), 0]
    assert [e["rows_skipped"] for e in third.summary["provenance"]] == [0, 0, len(new)]
    with pytest.raises(ba.InputError, match="already"):
        second.update(new, on_duplicate="error")
    # ids given in Python: a partly re-sent batch
    log = _log(seed=41)
    log["vote"] = [f"v{i}" for i in range(len(log))]
    old, new = _split(log)
    edited = pd.concat([old.iloc[:5].assign(score=9.5), new], ignore_index=True)
    with pytest.warns(ba.FitWarning, match="5 of 125"):
        updated = ba.fit(old).update(edited, row_id="vote")
    assert len(updated.rows) == len(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ba.FitWarning)
        assert len(ba.fit(old).update(edited, on_duplicate="keep").rows) == len(log) + 5


# --------------------------------------------------------------------------- item 7b: what leaves the machine


def test_no_absolute_path_unless_asked(tmp_path):
    old, new = _split(_log())
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    d = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(d), "--quiet"]) == 0
    s = _summary(d)
    assert s["input"] == {"file": "old.csv", "path": None, "sha256": _sha(tmp_path / "old.csv")}
    assert str(tmp_path) not in (d / "summary.json").read_text()
    assert main(["fit", str(tmp_path / "new.csv"), "--update", str(d), "--out", str(d), "--quiet"]) == 0
    s = _summary(d)
    assert s["input"] == {"file": "new.csv", "path": None, "sha256": _sha(tmp_path / "new.csv")}
    assert [e["file"] for e in s["provenance"]] == ["old.csv", "new.csv"]
    assert str(tmp_path) not in (d / "summary.json").read_text()
    # the report (rebuilt from the folder; `fit --report` writes the same) names files, not folders
    html = ba.load(d).report(d / "report.html", n_rep=5).read_text()
    assert str(tmp_path) not in html
    assert f"new.csv (sha256 {_sha(tmp_path / 'new.csv')[:12]})" in html  # header
    assert "old.csv" in html and _sha(tmp_path / "old.csv")[:12] in html  # provenance table
    # --record-paths: the absolute path is recorded (fit and update)
    e = tmp_path / "rec"
    assert main(["fit", str(tmp_path / "old.csv"), "--out", str(e), "--quiet", "--record-paths"]) == 0
    assert _summary(e)["input"]["path"] == str((tmp_path / "old.csv").resolve())
    assert main(["fit", str(tmp_path / "new.csv"), "--update", str(e), "--out", str(e), "--quiet", "--record-paths"]) == 0
    s = _summary(e)
    assert s["input"]["path"] == str((tmp_path / "new.csv").resolve())
    assert [x["path"] for x in s["provenance"]] == [str((tmp_path / n).resolve()) for n in ("old.csv", "new.csv")]
    # Python: record_paths=True
    assert ba.fit(tmp_path / "old.csv").summary["input"]["path"] is None
    assert ba.fit(tmp_path / "old.csv", record_paths=True).summary["input"]["path"] == str((tmp_path / "old.csv").resolve())


def test_dask_fit_records_its_input(tmp_path):
    pytest.importorskip("dask.dataframe")
    log = _log(n_users=100)
    parts = tmp_path / "parts"
    parts.mkdir()
    cuts = np.linspace(0, len(log), 4).astype(int)
    for i in range(3):
        log.iloc[cuts[i]:cuts[i + 1]].to_parquet(parts / f"part-{i}.parquet", index=False)
    manifest = "".join(f"{_sha(p)}  {p.name}\n" for p in sorted(parts.glob("*.parquet")))
    expected = hashlib.sha256(manifest.encode()).hexdigest()
    s = ba.fit(parts).summary
    assert s["input"] == {"file": "parts", "path": None, "sha256": expected, "files": 3}
    assert s["provenance"][0]["rows_added"] == len(log)
    s = ba.fit(str(parts / "*.parquet")).summary
    assert s["input"]["file"] == "parts/*.parquet" and s["input"]["sha256"] == expected
