"""Data layer: formats, column mapping, winner vocabulary, accounting of every row, bad input."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.data import REASONS, ColumnMap, prepare, read_table
from bayes_annot.errors import InputError


def _frame(**overrides):
    base = {
        "user": ["u1", "u1", "u2", "u2", "u3"],
        "model_a": ["x", "y", "x", "x", "z"],
        "model_b": ["y", "z", "z", "x", "y"],
        "winner": ["model_a", "model_b", "tie", "model_a", "tie (bothbad)"],
    }
    base.update(overrides)
    return pd.DataFrame(base)


# --------------------------------------------------------------------------- accounting


def test_reasons_for_ties_and_same_model_pairs():
    prepared = prepare(_frame())
    assert prepared.reason.tolist() == ["", "", "tie", "same_model", "tie"]
    assert prepared.choice_a.tolist() == [1, 0, -1, 1, -1]


def test_every_row_accounted_in_input_order(small_log):
    result = ba.fit(small_log)
    rows = result.rows
    assert len(rows) == len(small_log)
    # input order and content preserved, extra columns carried through
    pd.testing.assert_series_equal(rows["user"].astype(str), small_log["user"].astype(str), check_names=False)
    assert (rows["true_eta"].to_numpy() == small_log["true_eta"].to_numpy()).all()
    assert set(rows["reason"]) <= set(REASONS)
    assert rows.loc[small_log["winner"].astype(str).eq("tie").to_numpy(), "reason"].eq("tie").all()
    # kept: reason ok, or no_verdict under the default policy no_verdict="keep"
    assert (rows["kept"] == rows["reason"].isin(["ok", "no_verdict"])).all()
    counts = result.summary["counts"]
    assert counts["rows"] == len(small_log)
    assert counts["kept_rows"] == int(rows["kept"].sum())
    assert counts["ties"] == int(rows["reason"].eq("tie").sum())
    # weight is the user's quality on every row
    quality = result.users.set_index("user")["quality"]
    np.testing.assert_allclose(rows["weight"], quality.loc[rows["user"].astype(str)].to_numpy())
    # users' kept flag agrees with their rows
    kept_users = set(result.users.loc[result.users.kept, "user"])
    usable = rows["reason"].isin(["ok", "user_low_quality", "no_verdict"])
    assert (rows.loc[usable, "kept"] == rows.loc[usable, "user"].astype(str).isin(kept_users)).all()


def test_duplicate_rows_are_kept_and_counted():
    frame = pd.concat([_frame(), _frame().iloc[[0]]], ignore_index=True)
    result = ba.fit(frame)
    assert len(result.rows) == 6
    assert result.users.set_index("user").loc["u1", "n_labels"] == 3


def test_clashing_output_columns_are_renamed_not_lost():
    frame = _frame(weight=[1, 2, 3, 4, 5])
    rows = ba.fit(frame).rows
    assert rows["input_weight"].tolist() == [1, 2, 3, 4, 5]
    assert "weight" in rows


# --------------------------------------------------------------------------- vocabulary and columns


@pytest.mark.parametrize(
    "value, code",
    [("model_a", 1), ("A", 1), (" Left ", 1), ("model_b", 0), ("b", 0), ("RIGHT", 0), ("Tie", -1), ("tie  (bothbad)", -1)],
)
def test_winner_vocabulary(value, code):
    frame = pd.DataFrame({"user": ["u"], "model_a": ["x"], "model_b": ["y"], "winner": [value]})
    assert prepare(frame).choice_a.tolist() == [code]


def test_judge_column_recognised_and_mapping_flags():
    frame = _frame().rename(columns={"user": "judge"})
    assert prepare(frame).columns["user"] == "judge"
    renamed = _frame().rename(columns={"user": "who", "model_a": "left", "model_b": "right", "winner": "pick"})
    prepared = prepare(renamed, ColumnMap(user="who", model_a="left", model_b="right", winner="pick"))
    assert prepared.n_users == 3 and prepared.n_models == 3


def test_ids_compared_as_text_with_whitespace_trimmed():
    frame = pd.DataFrame(
        {"user": [1, "1", " 1 ", 2.0], "model_a": ["x", "x ", "x", "y"], "model_b": ["y", "y", "y", "x"], "winner": ["a"] * 4}
    )
    prepared = prepare(frame)
    assert prepared.user_labels.tolist() == ["1", "2"]
    assert prepared.model_labels.tolist() == ["x", "y"]


def test_unicode_ids_survive():
    frame = pd.DataFrame({"user": ["Zoë", "李"], "model_a": ["m☃", "m☃"], "model_b": ["n", "n"], "winner": ["a", "b"]})
    result = ba.fit(frame)
    assert set(result.users.user) == {"Zoë", "李"}
    assert "m☃" in set(result.models.model)


def test_p_a_edges_clipped_with_warning():
    frame = _frame(p_a=[1.0, 0.0, 0.5, 0.5, 0.5])
    with pytest.warns(UserWarning, match="clipped"):
        prepared = prepare(frame)
    assert 0 < prepared.p_a.min() and prepared.p_a.max() < 1


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json", ".jsonl"])
def test_every_format_reads_the_same(tmp_path, small_log, suffix):
    log = small_log[["user", "model_a", "model_b", "winner"]].astype(str)
    path = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        log.to_csv(path, index=False)
    elif suffix == ".parquet":
        log.to_parquet(path, index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(log.to_dict(orient="records")))
    else:
        log.to_json(path, orient="records", lines=True)
    result = ba.fit(path)
    reference = ba.fit(log)
    pd.testing.assert_frame_equal(result.users, reference.users)
    assert result.summary["input"]["sha256"] and len(result.summary["input"]["sha256"]) == 64


def test_arena_battle_json_with_judge_and_nested_fields(tmp_path):
    records = [
        {
            "question_id": f"q{i}",
            "model_a": "gpt" if i % 2 else "llama",
            "model_b": "llama" if i % 2 else "gpt",
            "winner": ["model_a", "model_b", "tie", "tie (bothbad)"][i % 4],
            "judge": f"arena_user_{i % 3}",
            "conversation_a": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "turn": 1,
        }
        for i in range(12)
    ]
    path = tmp_path / "battles.json"
    path.write_text(json.dumps(records))
    result = ba.fit(path)
    assert result.summary["counts"]["users"] == 3
    assert result.summary["counts"]["ties"] == 6
    assert len(result.rows) == 12


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "frame, pattern",
    [
        (_frame().drop(columns=["winner"]), r"missing columns: winner \(no column 'winner'"),
        (_frame().drop(columns=["user"]), r"missing columns: user \(no column 'user'/'judge'"),
        (_frame(winner=["model_a", "draw", "x", "a", "b"]), r"unknown value\(s\) 'draw', 'x' \(first at input row 2\)"),
        (_frame(user=["u1", None, "u2", "u2", "u3"]), r"column 'user' has 1 missing value\(s\), first at input row 2"),
        (_frame(model_b=["y", "z", "", "x", "y"]), r"column 'model_b' has 1 missing value\(s\), first at input row 3"),
        (_frame(p_a=[0.5, 1.5, 0.5, 0.5, 0.5]), r"column 'p_a' value 1.5 at input row 2 is outside \[0, 1\]"),
        (_frame(p_a=[0.5, "high", 0.5, 0.5, 0.5]), r"column 'p_a' has a non-numeric value 'high' at input row 2"),
        (_frame(p_a=[np.nan, 0.5, 0.5, 0.5, 0.5]), r"column 'p_a' has a missing value at input row 1"),
        (_frame().iloc[:0], r"input is empty"),
        (_frame(model_a=["x"] * 5, model_b=["x"] * 5), r"only one model \('x'\).*nothing to compare"),
    ],
)
def test_bad_input_one_line_error(frame, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        ba.fit(frame)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, suffix, pattern",
    [
        (b"", ".csv", r"is empty"),
        (b"user,model_a\n", ".csv", r"input is empty"),
        (b'[{"user": 1, "model_a": ', ".json", r"not valid JSON"),
        (b'{"user": "u"}\n{broken\n', ".jsonl", r"line 2: not valid JSON"),
        (b"PAR1\x00\x01garbage", ".parquet", r"cannot read"),
        (b"\xff\xfe\x00bad", ".json", r"not UTF-8|not valid JSON"),
        (b"a,b\n1,2\n", ".xlsx", r"unknown file type '.xlsx'"),
    ],
)
def test_unreadable_files(tmp_path, content, suffix, pattern):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(InputError, match=pattern) as info:
        read_table(path) if suffix != ".csv" else ba.fit(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a directory"):
        read_table(tmp_path)


def test_bad_settings():
    with pytest.raises(InputError, match="unknown variant"):
        ba.fit(_frame(), variant="three-class")
    with pytest.raises(InputError, match="filter 'top:3' not understood"):
        ba.fit(_frame(), filter="top:3")
    with pytest.raises(InputError, match="strong model 'w' is not among the models"):
        ba.fit(_frame(), mu=0.7, strong_model="w")
    with pytest.raises(InputError, match="needs --strong-model"):
        ba.fit(_frame(), mu=0.7)
    with pytest.raises(InputError, match="credible intervals"):
        ba.fit(_frame(), filter="credible:0.5")


def test_all_pairs_same_model_gives_no_verdict():
    frame = pd.DataFrame(
        {"user": ["a", "b", "c"], "model_a": ["x", "y", "x"], "model_b": ["x", "y", "x"], "winner": ["a", "b", "a"]}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ba.fit(frame)
    assert any("uninformative" in str(w.message) for w in caught)
    assert result.users.uninformative.all()
    assert not result.users.kept.any()
    assert result.rows.reason.eq("same_model").all()
    assert np.isfinite(result.users.quality).all()


def test_categorical_ids_encode_like_text():
    """Categorical id columns (sorted, unsorted, or with padded duplicates) give the codes of the text columns."""
    log = ba.simulate(n_users=300, n_models=5, seed=3)[["user", "model_a", "model_b", "winner"]]
    reference = prepare(log.astype(str))
    users = log.user.astype(str)
    shuffled = list(np.random.default_rng(0).permutation(sorted(set(users))))
    variants = {
        "sorted categories": log.astype("category"),
        "unsorted categories": log.assign(user=pd.Categorical(users, categories=shuffled)),
        "padded duplicates": log.assign(user=pd.Categorical(users.where(np.arange(len(log)) % 2 == 0, " " + users))),
    }
    for name, frame in variants.items():
        prepared = prepare(frame)
        for field in ("user", "model_a", "model_b", "choice_a", "reason_code"):
            np.testing.assert_array_equal(getattr(prepared, field), getattr(reference, field), err_msg=f"{name}: {field}")
        assert list(prepared.user_labels) == list(reference.user_labels), name


_AHEAD_CASES = {
    "simulated": None,
    "ids with spaces, numbers, a tie": "user,model_a,model_b,winner\n 1,a,b,model_a\n1,b, a,tie\n01,a,c,B\n2,c,a,left\n",
    "a missing user": "user,model_a,model_b,winner\nu1,a,b,model_a\nu2,a,b,model_b\n,b,a,model_a\n",
    "a missing winner": "user,model_a,model_b,winner\nu1,a,b,model_a\nu2,a,b,\n",
    "an unknown winner": "user,model_a,model_b,winner\nu1,a,b,model_a\nu2,a,b,first\n",
    "a missing model": "user,model_a,model_b,winner\nu1,a,b,model_a\nu2,,b,model_b\n",
}


@pytest.mark.parametrize("case", list(_AHEAD_CASES))
def test_codes_encoded_ahead_prepare_as_pandas_factorize(tmp_path, case):
    """The id columns ``prefetch`` encodes while the command line starts give ``prepare`` the codes and uniques
    ``pd.factorize`` gives: the same prepared data, array for array, or the same one-line error."""
    from bayes_annot import data
    from bayes_annot.data import prefetch

    path = tmp_path / "log.csv"
    if _AHEAD_CASES[case] is None:
        ba.simulate(n_users=80, n_models=5, seed=4)[["user", "model_a", "model_b", "winner"]].to_csv(path, index=False)
    else:
        path.write_text(_AHEAD_CASES[case])

    def prepared(ahead: bool):
        if ahead:
            prefetch(path, columns=("user", "model_a", "model_b", "winner", "not_a_column"))
        frame = read_table(path)
        assert len(data._CODES_AHEAD) == (4 if ahead else 0)
        try:
            return prepare(frame)
        except InputError as exc:
            return str(exc)

    reference, ahead = prepared(False), prepared(True)
    if isinstance(reference, str):
        assert ahead == reference
        return
    assert not data._CODES_AHEAD  # prepare took every code computed ahead
    for field in ("user", "model_a", "model_b", "choice_a", "reason_code"):
        np.testing.assert_array_equal(getattr(ahead, field), getattr(reference, field), err_msg=field)
        assert getattr(ahead, field).dtype == getattr(reference, field).dtype
    assert list(ahead.user_labels) == list(reference.user_labels)
    assert list(ahead.model_labels) == list(reference.model_labels)
    prefetch(path, columns=("user", "model_a"))
    frame = read_table(path)
    for name in ("user", "model_a"):
        codes, uniques = data._factorize(frame[name], name)
        expected_codes, expected_uniques = pd.factorize(frame[name], use_na_sentinel=True)
        assert codes.dtype == expected_codes.dtype
        np.testing.assert_array_equal(codes, expected_codes)
        pd.testing.assert_index_equal(uniques, expected_uniques, exact=True)


def test_prefetched_input_reads_and_hashes_as_without_it(tmp_path):
    """``data.prefetch`` (the CLI reads and hashes its input while it imports) gives what a plain read gives,
    never a stale copy of a file changed since, and the same one-line error for a bad file."""
    from bayes_annot.data import file_sha256, prefetch

    log = ba.simulate(n_users=60, n_models=4, seed=3)[["user", "model_a", "model_b", "winner"]]
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    plain, digest = read_table(path), file_sha256(path)
    prefetch(path)
    pd.testing.assert_frame_equal(read_table(path), plain)
    assert file_sha256(path) == digest
    prefetch(path)
    log.iloc[:10].to_csv(path, index=False)  # rewritten after the prefetch started
    assert len(read_table(path)) == 10
    assert file_sha256(path) != digest
    path.write_bytes(b"user,model_a,model_b,winner\nu\xff,a,b,model_a\n")
    prefetch(path)
    with pytest.raises(InputError, match="not UTF-8"):
        read_table(path)
    prefetch(tmp_path / "missing.csv")  # nothing to read: no error here, the usual one later
    with pytest.raises(InputError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
