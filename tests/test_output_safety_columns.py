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
