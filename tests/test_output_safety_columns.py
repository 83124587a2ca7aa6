"""Every input column reads back: from ``fit()``'s rows, and from a saved folder (``load``).

Each test failed on the code before the fix, through the public API.
"""

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.errors import InputError


@pytest.fixture(scope="module")
def log():
    frame = ba.simulate(n_users=80, n_models=4, labels_per_user=(3, 10), seed=13)[["user", "model_a", "model_b", "winner"]]
    return frame.assign(vote=[f"v{i}" for i in range(len(frame))], day=np.arange(len(frame)) % 7)


# --------------------------------------------------------------------------- 4. a named index


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("index", [["vote"], ["day", "vote"]])
def test_a_named_index_is_kept_as_a_column(tmp_path, log, fmt, index):
    """``fit(df.set_index("vote"))``: the vote ids were dropped from ``rows`` and from the saved folder."""
    given = log.set_index(index)
    result = ba.fit(given)
    assert result.rows.columns[: len(index)].tolist() == index
    pd.testing.assert_frame_equal(result.rows[log.columns.tolist()], log, check_dtype=False)
    saved = ba.load(result.save(tmp_path / "res", format=fmt))
    for column in index:
        assert saved.rows[column].tolist() == log[column].tolist()


def test_an_unnamed_index_is_still_dropped(log):
    """Row positions or labels without a name are not data (as ``to_csv(index=False)``)."""
    given = log.set_axis([f"r{i}" for i in range(len(log))])
    assert ba.fit(given).rows.columns.tolist()[:5] == log.columns.tolist()[:5]
    two = log.set_index(["day", "vote"]).rename_axis([None, "vote"])  # one level named: that one is kept
    assert ba.fit(two).rows.columns[0] == "vote" and "day" not in ba.fit(two).rows


def test_an_update_keeps_the_named_index_of_new_rows(log):
    old, new = log.iloc[:-30], log.iloc[-30:]
    updated = ba.fit(old.set_index("vote")).update(new.set_index("vote"))
    assert updated.rows["vote"].tolist() == log["vote"].tolist()


def test_an_index_named_as_a_column_is_refused(log):
    given = log.set_index("vote").rename_axis("user")
    with pytest.raises(InputError, match="index is named 'user'") as caught:
        ba.fit(given)
    assert "\n" not in str(caught.value)


def test_an_index_that_repeats_its_column_fits_as_before(log):
    """``set_index("user", drop=False)`` worked before named indexes were kept: the level adds nothing."""
    plain = ba.fit(log)
    repeated = ba.fit(log.set_index("user", drop=False))
    assert repeated.rows.columns.tolist() == plain.rows.columns.tolist()
    pd.testing.assert_frame_equal(repeated.users, plain.users)


# --------------------------------------------------------------------------- 5. bytes mixed with text


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_mixing_bytes_and_text_reads_back_exactly(tmp_path, log, fmt):
    """An object column of bytes and text went through the JSON encoding: the bytes were decoded with
    errors='replace' (b'\\x00\\xff' came back as the text '\\x00\\ufffd', lost for good). Each cell now reads
    back as the value it was, with its type; so do dates, times and decimals mixed with text or numbers."""
    import datetime as dt
    import decimal

    n = len(log)
    extra = {
        "blob": [bytes([i % 256, 255, 0]) if i % 3 == 0 else (None if i % 3 == 1 else f"t{i}") for i in range(n)],
        "looks_tagged": [b"s" if i % 2 else "b" + "AA==" for i in range(n)],  # text that looks like a tag
        "when": [dt.date(2024, 1, 1 + i % 28) if i % 2 else "unknown" for i in range(n)],
        "price": [decimal.Decimal("1.10") * i if i % 2 else i for i in range(n)],
        "formula": [b"=1+1" if i % 2 else "=2+2" for i in range(n)],
    }
    given = log.assign(**{name: pd.Series(values, dtype=object) for name, values in extra.items()})
    result = ba.fit(given)
    for safe_csv in (False, True):
        back = ba.load(result.save(tmp_path / f"res{safe_csv}", format=fmt, safe_csv=safe_csv)).rows
        for name, values in extra.items():
            got = back[name].tolist()
            assert got == values and [type(v) for v in got] == [type(v) for v in values], name


# --------------------------------------------------------------------------- 6. datetimes and numpy scalars mixed


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_datetimes_and_numpy_scalars_mixed_with_text_read_back_exactly(tmp_path, log, fmt):
    """An object column of datetimes (``datetime``, ``pd.Timestamp``, ``np.datetime64``), numpy scalars
    (``np.bytes_``, ``np.int64``) or timedeltas among other values went through the JSON encoding: datetimes came
    back as ISO text, ``np.datetime64`` as an integer, ``np.bytes_`` as text, ``np.int64`` as ``int``."""
    import datetime as dt
    import zoneinfo

    n = len(log)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    extra = {
        "when": [dt.datetime(2024, 1, 1, 12, 30, i % 60) if i % 2 else "unknown" for i in range(n)],
        "zoned": [dt.datetime(2024, 10, 27, 2, 30, fold=i % 2, tzinfo=paris) if i % 3 else dt.datetime(2024, 1, 1)
                  for i in range(n)],
        "stamp": [pd.Timestamp("2024-01-01 12:00:00.000000001", tz="UTC") if i % 2 else
                  pd.Timestamp("2024-03-01", tz="Europe/Paris") if i % 3 else "x" for i in range(n)],
        "np_time": [np.datetime64("2024-01-01T00:00:00.123456789") if i % 2 else i for i in range(n)],
        "np_bytes": [np.bytes_(b"ab\x00") if i % 2 else "ab" for i in range(n)],
        "np_int": [np.int64(i) if i % 2 else np.float32(0.1) for i in range(n)],
        "span": [dt.timedelta(seconds=i) if i % 2 else pd.Timedelta(i, unit="ms") for i in range(n)],
    }
    given = log.assign(**{name: pd.Series(values, dtype=object) for name, values in extra.items()})
    back = ba.load(ba.fit(given).save(tmp_path / "res", format=fmt)).rows
    for name, values in extra.items():
        got = back[name].tolist()
        assert [type(v) for v in got] == [type(v) for v in values], name
        assert [repr(v) for v in got] == [repr(v) for v in values], name
        assert all(bool(a == b) for a, b in zip(got, values)), name  # np.bytes_ keeps its trailing NUL


@pytest.mark.parametrize("value", [(1, 2), {"at": pd.Timestamp("2024-01-01")}, [b"\xff"], {1: "int key"}])
def test_a_value_no_table_gives_back_is_refused_before_anything_is_written(tmp_path, log, value):
    """A tuple, or a list / dict holding a date, bytes or a non-text key, was written as JSON and read back as
    something else (a list, text, a text key). Saving now refuses in one line naming the column and the value,
    and writes nothing: not the folder, not even its missing parent."""
    given = log.assign(odd=pd.Series([value if i == 3 else "plain" for i in range(len(log))], dtype=object))
    result = ba.fit(given)
    with pytest.raises(InputError, match="column 'odd' holds .*row 3") as caught:
        result.save(tmp_path / "new" / "res")
    assert "\n" not in str(caught.value) and repr(value)[:10] in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 7. Dask rows: a column changing type


def _two_partitions(log, column):
    """A Dask frame of ``log`` + ``column`` (object, kept as it is) in two partitions; the row where the second starts."""
    import dask
    import dask.dataframe as dd

    first = (len(log) + 1) // 2
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(log.assign(extra=pd.Series(column, dtype=object)), npartitions=2, sort=False)
    assert [len(p) for p in ddf.partitions] == [first, len(log) - first]
    return ddf, first


def _switching(log, before, after):
    first = (len(log) + 1) // 2
    return [before(i) if i < first else after(i) for i in range(len(log))]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("case", ["int_then_text", "missing_then_int", "mixed_then_text", "int_then_lists"])
def test_dask_rows_whose_column_changes_type_read_back_exactly(tmp_path, log, fmt, case):
    """Dask rows are written partition by partition with the encodings of the first: integers (JSON) then text
    wrote the text raw into a JSON column (the folder could not be read back), a column empty in the first
    partition was written as text (later integers came back as str). Each now reads back as it was."""
    before, after = {
        "int_then_text": (lambda i: i, lambda i: f"t{i}"),
        "missing_then_int": (lambda i: None, lambda i: i),
        "mixed_then_text": (lambda i: b"\xff" if i % 2 else "a", lambda i: f"t{i}"),
        "int_then_lists": (lambda i: i, lambda i: [i, {"k": "v"}]),
    }[case]
    values = _switching(log, before, after)
    ddf, _ = _two_partitions(log, values)
    back = ba.load(ba.fit(ddf).save(tmp_path / "res", format=fmt)).rows["extra"].tolist()
    assert back == values and [type(v) for v in back] == [type(v) for v in values]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_dask_category_columns_keep_every_partitions_categories(tmp_path, log, fmt):
    """``ddf[c].astype("category")`` leaves the categories unknown: each partition has its own. The first
    partition's were written as the column's, so every value of a later partition read back as missing."""
    ddf, first = _two_partitions(log, _switching(log, lambda i: f"a{i % 3}", lambda i: f"b{i % 3}"))
    ddf["extra"] = ddf["extra"].astype("category")
    back = ba.load(ba.fit(ddf).save(tmp_path / "res", format=fmt)).rows["extra"]
    assert back.astype(object).tolist() == _switching(log, lambda i: f"a{i % 3}", lambda i: f"b{i % 3}")


@pytest.mark.parametrize("case", ["int_then_bytes", "text_then_int", "bytes_then_text"])
def test_dask_rows_whose_column_cannot_keep_one_encoding_are_refused(tmp_path, log, case):
    """A later partition the first one's encoding cannot hold (bytes after integers written as JSON, integers
    after text): refused in one line naming the column, the value and its row; nothing is left behind."""
    before, after = {
        "int_then_bytes": (lambda i: i, lambda i: b"\xff"),
        "text_then_int": (lambda i: f"t{i}", lambda i: i),
        "bytes_then_text": (lambda i: b"\xff", lambda i: "t"),
    }[case]
    ddf, first = _two_partitions(log, _switching(log, before, after))
    result = ba.fit(ddf)
    with pytest.raises(InputError, match=f"column 'extra' .*{first}") as caught:
        result.save(tmp_path / "res")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
