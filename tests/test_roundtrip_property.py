"""Issue 16, item 4: everything written reads back to equal values (CSV and parquet), nested JSON included."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.tables import read_table_file, write_table

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # any unicode but lone surrogates
scalars = st.one_of(st.none(), text, st.integers(-(2**62), 2**62), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=True))
nested = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=6)


@st.composite
def frames(draw):
    n = draw(st.integers(0, 8))

    def column(strategy):
        return draw(st.lists(strategy, min_size=n, max_size=n))

    frame = pd.DataFrame({
        "text": pd.Series(column(st.one_of(st.none(), text)), dtype=object),
        "str_dtype": pd.Series(column(st.one_of(st.none(), text)), dtype="str"),
        "float": pd.Series(column(st.floats(allow_nan=True, allow_infinity=True)), dtype=float),
        "int": pd.Series(column(st.integers(-(2**63), 2**63 - 1)), dtype=np.int64),
        "nullable_int": pd.Series(column(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))), dtype="Int64"),
        "bool": pd.Series(column(st.booleans()), dtype=bool),
        "nested": pd.Series(column(nested), dtype=object),
        "category": pd.Categorical(column(st.sampled_from(["ok", "tie", None])), categories=["ok", "tie", "same_model"]),
    })
    names = draw(st.lists(text.filter(lambda t: t.strip() != ""), min_size=len(frame.columns),
                          max_size=len(frame.columns), unique=True))
    frame.columns = names
    return frame


def assert_same(back: pd.DataFrame, frame: pd.DataFrame) -> None:
    assert list(back.columns) == list(frame.columns)
    for name in frame.columns:
        expected, got = frame[name], back[name]
        assert str(got.dtype) == str(expected.dtype), name
        if expected.dtype == object:
            # nested values: JSON-equal (a float that is a whole number stays a float, -0.0 stays -0.0)
            as_json = [json.dumps(v, sort_keys=True) for v in expected]
            assert [json.dumps(v, sort_keys=True) for v in got] == as_json, name
        else:
            pd.testing.assert_series_equal(got, expected, check_names=False, check_exact=True)
            if expected.dtype.kind == "f":
                values, wanted = got.to_numpy(), expected.to_numpy()
                numbers = ~np.isnan(wanted)  # -0.0 stays -0.0 (a NaN's sign bit is not a value)
                np.testing.assert_array_equal(np.signbit(values[numbers]), np.signbit(wanted[numbers]))


@pytest.mark.parametrize("fmt, safe", [("csv", False), ("csv", True), ("parquet", False)])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
def test_every_value_written_reads_back_equal(fmt, safe, frame):
    buffer = io.BytesIO()
    meta = write_table(frame, buffer, fmt, safe_csv=safe)
    json.dumps(meta)  # the description goes into manifest.json
    buffer.seek(0)
    assert_same(read_table_file(buffer, meta), frame)


# --------------------------------------------------------------------------- through fit, save, load and --update


def _arena_like(n_users=120, seed=3):
    log = ba.simulate(n_users=n_users, n_models=4, labels_per_user=(3, 10), tie_rate=0.05, with_text=True, seed=seed)
    log = log.rename(columns={"user": "judge"})
    log["conversation_a"] = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                             for p, a in zip(log.prompt, log.response_a)]
    log["conversation_b"] = [[{"role": "user", "content": p}, {"role": "assistant", "content": b}]
                             for p, b in zip(log.prompt, log.response_b)]
    log["question_id"] = [f"q{i}" for i in range(len(log))]
    return log[["question_id", "judge", "model_a", "model_b", "winner", "conversation_a", "conversation_b"]]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_fit_save_load_gives_back_every_row_typed(tmp_path, small_log, fmt):
    log = small_log.copy()
    log["kept"] = "input value"  # clashes with an output column
    log["input_kept"] = 7.5  # ... and with the name the clash gets
    log["empty"] = ""
    result = ba.fit(log)
    saved = ba.load(result.save(tmp_path / "out", format=fmt))
    pd.testing.assert_frame_equal(saved.rows, result.rows)
    pd.testing.assert_frame_equal(saved.users, result.users)
    pd.testing.assert_frame_equal(saved.models, result.models)
    assert saved.rows.columns.is_unique
    assert saved.rows["kept"].dtype == bool and saved.rows["weight"].dtype == float
    pd.testing.assert_frame_equal(saved.input_rows(), log)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_arena_conversations_survive_an_update_and_reach_the_dpo_export(tmp_path, fmt):
    log = _arena_like()
    old, new = log.iloc[:-80], log.iloc[-80:]
    old.to_json(tmp_path / "old.json", orient="records")
    new.to_json(tmp_path / "new.json", orient="records")
    out = tmp_path / "ar"
    assert main(["fit", str(tmp_path / "old.json"), "--out", str(out), "--format", fmt, "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.json"), "--update", str(out), "--out", str(out), "--format", fmt,
                 "--dpo", str(tmp_path / "pairs.jsonl"), "--quiet"]) == 0
    saved = ba.load(out)
    assert saved.rows["conversation_a"].tolist() == log["conversation_a"].tolist()
    records = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(records) == int(saved.rows["kept"].sum()) > 0  # every kept row (ok, and no_verdict under the default keep)


def test_empty_strings_stay_empty_after_an_update(tmp_path):
    log = ba.simulate(n_users=100, n_models=3, labels_per_user=(3, 10), with_text=True, seed=6)
    log = log[["user", "model_a", "model_b", "winner", "prompt", "response_a", "response_b"]].astype(str)
    log.loc[log.index[::7], "prompt"] = ""  # an empty prompt is text, not a missing value
    old, new = log.iloc[:-50], log.iloc[-50:]
    old.to_json(tmp_path / "old.jsonl", orient="records", lines=True)  # JSON keeps "" apart from missing
    new.to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    out = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.jsonl"), "--out", str(out), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.jsonl"), "--update", str(out), "--out", str(out),
                 "--dpo", str(tmp_path / "pairs.jsonl"), "--quiet"]) == 0
    rows = ba.load(out).rows
    assert (rows["prompt"] == "").sum() == (log["prompt"] == "").sum()
    assert rows["prompt"].notna().all()


def test_whole_number_float_ids_stay_one_user_after_an_update(tmp_path):
    log = ba.simulate(n_users=200, n_models=4, labels_per_user=(3, 10), seed=7)[["user", "model_a", "model_b", "winner"]]
    log["user"] = log["user"].str.extract(r"(\d+)$", expand=False).astype(float)  # ids arrive as 1.0, 2.0, ...
    old, new = log.iloc[:-300], log.iloc[-300:]
    old.to_parquet(tmp_path / "old.parquet", index=False)
    new.to_parquet(tmp_path / "new.parquet", index=False)
    out = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.parquet"), "--out", str(out), "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.parquet"), "--update", str(out), "--out", str(out), "--quiet"]) == 0
    saved = ba.load(out)
    assert len(saved.users) == log["user"].nunique() == 200
    assert saved.rows["user"].dtype == float


def test_a_parquet_folder_updates_as_parquet(tmp_path):
    log = ba.simulate(n_users=120, n_models=4, labels_per_user=(3, 10), seed=8)[["user", "model_a", "model_b", "winner"]]
    log.insert(0, "vote_id", range(len(log)))
    log.iloc[:-100].to_parquet(tmp_path / "old.parquet", index=False)
    log.iloc[-100:].to_parquet(tmp_path / "new.parquet", index=False)
    out = tmp_path / "res"
    assert main(["fit", str(tmp_path / "old.parquet"), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.parquet"), "--update", str(out), "--out", str(out), "--quiet"]) == 0
    # the saved rows and their codes stay as they were written (a part); the new rows, their codes and the
    # outputs per user get their own files
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "models.parquet", "rows-codes-0.npz",
                                                     "rows-codes-1.npz", "rows-outputs.parquet",
                                                     "rows-part-1.parquet", "rows.parquet", "summary.json",
                                                     "update-state.npz", "users.parquet"]
    saved = ba.load(out)
    assert saved.rows["vote_id"].tolist() == log["vote_id"].tolist()  # integers stay integers, no text conversion
    assert main(["report", str(out), "--quiet"]) == 0 and (out / "report.html").exists()
    assert "report.html" in json.loads((out / "manifest.json").read_text())["files"]


def test_a_loaded_folder_reports_and_exports_like_the_fit(tmp_path):
    """Issue 17 item 4: load() gives typed rows (rows[rows.kept] works) and a loaded fit writes its report and DPO."""
    log = ba.simulate(n_users=150, n_models=4, labels_per_user=(3, 12), with_text=True, seed=12)
    result = ba.fit(log, filter="fdr:0.1")
    saved = ba.load(result.save(tmp_path / "res"))
    assert len(saved.rows[saved.rows.kept]) == int(result.rows["kept"].sum())
    pd.testing.assert_frame_equal(saved.to_dpo(tmp_path / "pairs.jsonl"), result.to_dpo(), check_index_type=False)
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == len(result.to_dpo())
    html = saved.report(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "Model strengths" in html


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bytes_dates_times_and_decimals_read_back_equal(tmp_path, fmt):
    """A parquet log's binary, date32, time and decimal columns (pandas: objects of one type) went through the
    JSON encoding: bytes were decoded with errors='replace' (b'\\x00\\xff' came back as '\\x00\\ufffd', lost for
    good) and dates, times and decimals came back as text. Each now reads back as the value it was."""
    import datetime as dt
    import decimal

    log = ba.simulate(n_users=20, n_models=3, labels_per_user=6, seed=2)[["user", "model_a", "model_b", "winner"]]
    n = len(log)
    extra = {
        "digest": [bytes([i % 256, 255, 0]) if i % 3 else None for i in range(n)],
        "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i) if i % 4 else None for i in range(n)],
        "clock": [dt.time(i % 24, 59, 58, 999) for i in range(n)],
        "price": [decimal.Decimal("1.10") * i for i in range(n)],
    }
    for name, values in extra.items():
        log[name] = pd.Series(values, dtype=object)
    path = tmp_path / "log.parquet"
    log.to_parquet(path)
    out = tmp_path / "res"
    assert main(["fit", str(path), "--out", str(out), "--format", fmt, "--quiet"]) == 0
    back = ba.load(out).input_rows()
    for name, values in extra.items():
        got = back[name].tolist()
        assert got == values and [type(v) for v in got] == [type(v) for v in values], name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("column", [
    pd.Series(["007", "", None], dtype=object),
    pd.Series(["007", None, "x"], dtype="str"),
    pd.Series([1.0, float("nan"), 2.0]),
    pd.Series([None, 1, 2], dtype="Int64"),
    pd.Categorical(["ok", None, "tie"]),
], ids=["object", "str", "float", "nullable_int", "category"])
def test_a_one_column_table_with_a_missing_value_reads_back(fmt, column):
    # one column: a missing cell is an empty CSV line, which a reader skipping blank lines drops
    frame = pd.DataFrame({"only": column})
    buffer = io.BytesIO()
    meta = write_table(frame, buffer, fmt)
    buffer.seek(0)
    assert_same(read_table_file(buffer, meta), frame)
