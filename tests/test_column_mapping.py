"""Issue 17 item 6: mapping columns and winner values in one run; invalid rows dropped with a reason."""

import json

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.data import REASONS, ColumnMap, prepare
from bayes_annot.errors import InputError


def _renamed_log(seed=1):
    log = ba.simulate(n_users=120, n_models=4, seed=seed, tie_rate=0.05, with_text=True)
    out = log.rename(columns={"user": "annotator", "model_a": "left_model", "model_b": "right_model", "winner": "choice",
                              "prompt": "question", "response_a": "answer_left", "response_b": "answer_right"})
    out["choice"] = out["choice"].astype(str).map({"model_a": "L", "model_b": "R", "tie": "Same"}).astype(object)
    return out


def test_every_missing_column_is_named_with_its_flag_and_closest_column():
    frame = pd.DataFrame({"rater": ["u"], "left_model": ["x"], "right_model": ["y"], "choice": ["A"]})
    with pytest.raises(InputError) as info:
        prepare(frame)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("missing columns: ")
    for role, flag, closest in (("user", "--user", "rater"), ("model_a", "--model-a", "left_model"),
                                ("model_b", "--model-b", "right_model"), ("winner", "--winner", "choice")):
        assert f"{role} (" in message and f"map with {flag} COL; closest: '{closest}')" in message
    assert "columns present: rater, left_model, right_model, choice" in message


def test_closest_column_by_spelling_and_no_guess_for_taken_columns():
    frame = pd.DataFrame({"user": ["u"], "model_a": ["x"], "modl_b": ["y"], "winner": ["a"]})
    message = str(pytest.raises(InputError, prepare, frame).value)
    assert "model_b (no column 'model_b'; map with --model-b COL; closest: 'modl_b')" in message
    assert "user (" not in message and "winner (" not in message


def test_winner_values_map_any_labels(tmp_path):
    log = _renamed_log()
    columns = dict(user="annotator", model_a="left_model", model_b="right_model", winner="choice")
    with pytest.raises(InputError, match=r"unknown value\(s\).*--winner-values"):
        ba.fit(log, **columns)
    mapped = ba.fit(log, winner_values={"L": "model_a", "R": "model_b", "Same": "tie"}, **columns)
    reference = ba.fit(ba.simulate(n_users=120, n_models=4, seed=1, tie_rate=0.05))
    np.testing.assert_allclose(mapped.users.quality, reference.users.quality)
    assert mapped.summary["counts"]["ties"] == reference.summary["counts"]["ties"] > 0
    assert mapped.summary["settings"]["winner_values"] == {"L": "model_a", "R": "model_b", "Same": "tie"}
    with pytest.raises(InputError, match="expected model_a, model_b or tie"):
        ba.fit(log, winner_values={"L": "left-ish"}, **columns)


def test_on_bad_row_drop_accounts_for_every_row():
    log = _renamed_log()
    log.loc[[3, 10], "choice"] = ["garbage", None]
    columns = dict(user="annotator", model_a="left_model", model_b="right_model", winner="choice",
                   winner_values={"L": "model_a", "R": "model_b", "Same": "tie"})
    with pytest.raises(InputError, match="missing value at input row 11"):
        ba.fit(log, **columns)
    with pytest.warns(UserWarning, match=r"dropped 2 invalid row\(s\): 2 invalid_winner \(first at input row 4\)"):
        result = ba.fit(log, on_bad_row="drop", **columns)
    rows = result.rows
    assert len(rows) == len(log)
    assert rows.loc[[3, 10], "reason"].tolist() == ["invalid_winner"] * 2
    assert not rows.loc[[3, 10], "kept"].any()
    assert list(rows["reason"].cat.categories) == list(REASONS)
    counts = result.summary["counts"]
    assert counts["dropped_rows"] == counts["invalid_winner"] == 2
    assert counts["rows"] == counts["rows_in_likelihood"] + counts["ties"] + counts["same_model"] + counts["dropped_rows"]
    assert any("invalid_winner" in w for w in result.summary["warnings"])


def test_on_bad_row_drop_invalid_p_a():
    frame = pd.DataFrame({"user": ["u1", "u1", "u2", "u2"], "model_a": ["x", "x", "y", "x"],
                          "model_b": ["y", "y", "x", "y"], "winner": ["a", "b", "a", "tie"],
                          "p_a": ["0.7", "oops", "1.5", "zzz"]})
    with pytest.raises(InputError, match="non-numeric value 'oops'"):
        prepare(frame)
    with pytest.warns(UserWarning, match="2 invalid_p_a"):
        data = prepare(frame, ColumnMap(), on_bad_row="drop")
    assert data.reason.tolist() == ["", "invalid_p_a", "invalid_p_a", "tie"]  # a tie needs no p_a
    assert data.counts()["invalid_p_a"] == 2


def test_clean_input_has_no_dropped_counts():
    result = ba.fit(ba.simulate(n_users=50, n_models=3, seed=2), on_bad_row="drop")
    assert "dropped_rows" not in result.summary["counts"]
    assert list(result.rows["reason"].cat.categories) == list(ba.data.REASONS)  # every documented reason, in code order
    assert not result.rows["reason"].isin(["invalid_winner", "invalid_p_a"]).any()


def test_cli_maps_everything_in_one_run(tmp_path, capsys):
    log = _renamed_log()
    log.loc[5, "choice"] = "???"
    path = tmp_path / "renamed.csv"
    log.to_csv(path, index=False)
    out = tmp_path / "out"
    args = ["fit", str(path), "--out", str(out), "--user", "annotator", "--model-a", "left_model",
            "--model-b", "right_model", "--winner", "choice", "--winner-values", "L=model_a,R=model_b,Same=tie"]
    assert main(args + ["--quiet"]) == 2
    assert "--on-bad-row drop" in capsys.readouterr().err
    dpo = tmp_path / "pairs.jsonl"
    code = main(args + ["--on-bad-row", "drop", "--dpo", str(dpo), "--prompt", "question",
                        "--response-a", "answer_left", "--response-b", "answer_right", "--quiet"])
    assert code == 0
    assert "dropped 1 invalid row(s): 1 invalid_winner (first at input row 6)" in capsys.readouterr().err
    rows = pd.read_csv(out / "rows.csv")
    assert rows.loc[5, "reason"] == "invalid_winner" and len(rows) == len(log)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["invalid_winner"] == 1
    records = pd.read_json(dpo, lines=True)
    assert len(records) == summary["counts"]["kept_rows"]
    assert set(records["prompt"]) <= set(log["question"])


def test_cli_bad_winner_values_spec(tmp_path, capsys):
    assert main(["fit", "x.csv", "--out", str(tmp_path / "o"), "--winner-values", "A"]) == 2
    assert "VALUE=model_a|model_b|tie" in capsys.readouterr().err


def test_dask_refuses_drop(tmp_path):
    pytest.importorskip("dask.dataframe")
    import dask.dataframe as dd

    ddf = dd.from_pandas(ba.simulate(n_users=30, n_models=3, seed=1), npartitions=2)
    with pytest.raises(InputError, match="not supported for Dask input"):
        ba.fit(ddf, on_bad_row="drop")


def test_update_keeps_winner_values_and_drop(tmp_path):
    log = _renamed_log()
    log.loc[2, "choice"] = "bad"
    columns = dict(user="annotator", model_a="left_model", model_b="right_model", winner="choice")
    half = len(log) // 2
    old, new = log.iloc[:half], log.iloc[half:].copy()
    new.iloc[0, new.columns.get_loc("choice")] = "also bad"
    first = ba.fit(old, winner_values={"L": "model_a", "R": "model_b", "Same": "tie"}, on_bad_row="drop", **columns)
    first.save(tmp_path / "r")
    updated = first.update(new)
    assert updated.summary["counts"]["invalid_winner"] == 2
    assert updated.rows["reason"].eq("invalid_winner").sum() == 2
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    assert main(["fit", str(path), "--update", str(tmp_path / "r"), "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert saved["counts"]["invalid_winner"] == 2
