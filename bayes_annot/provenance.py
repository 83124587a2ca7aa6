r"""Where a fit's rows came from: input records, duplicate rows of an update, the provenance list.

* :func:`input_info` describes an input for ``summary.json``'s ``input``: the
  file name and its SHA-256 (the absolute path only with ``record_paths``,
  so a shared summary or report names no folder of the machine it ran on);
  a folder or glob of parquet files gets one SHA-256 over its part files.
* :func:`row_keys` and :func:`find_duplicates` find the new rows of an update
  that are already in the previous fit's log: by id columns when there are
  some (Chatbot Arena's ``question_id`` + ``tstamp``, or ``row_id``), else by
  the whole row. Values are compared in a canonical text form that is the
  same whether a value arrives as text (CSV) or typed (parquet, JSON, a data
  frame): missing -> ``""``; numbers -> the shortest text of the number, whole
  numbers without a decimal point (``"0.70"``, ``"0.7"`` and ``0.7`` agree;
  ``"1.0"``, ``" 1"`` and ``1`` agree; so do ``"007"`` and ``7``); other text
  stripped of surrounding whitespace. The user and model columns are compared as
  the fit reads ids (:func:`id_text`): ``"007"`` and ``7`` are two users there.
* :func:`provenance_entry` is one item of ``summary.json``'s ``provenance``
  list: a first fit starts it, each update appends one.
"""

from __future__ import annotations

import datetime as _dt
import glob as _glob
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import FitWarning, InputError

__all__ = [
    "ARENA_ID_COLUMNS",
    "ON_DUPLICATE",
    "canonical_text",
    "carried_provenance",
    "drop_duplicates_of",
    "find_duplicates",
    "id_columns",
    "input_info",
    "parquet_collection_info",
    "provenance_entry",
    "row_keys",
    "set_provenance",
]

#: Id columns used by default when both are present (Chatbot Arena battles).
ARENA_ID_COLUMNS = ("question_id", "tstamp")
#: What an update does with new rows already in the previous log.
ON_DUPLICATE = ("skip", "error", "keep")
_EXACT = 2.0**53  # floats are whole-number exact below this


# --------------------------------------------------------------------------- canonical values


def _number_text(x: np.ndarray) -> np.ndarray:
    """Canonical text of finite or infinite floats: whole numbers as integers, else the shortest repr."""
    out = np.empty(x.shape[0], dtype=object)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (np.floor(x) == x) & (np.abs(x) < _EXACT)
    out[whole] = x[whole].astype(np.int64).astype(str)
    if (~whole).any():
        out[~whole] = pd.Series(x[~whole], dtype=float).astype(str).to_numpy(dtype=object)
    return out


def canonical_text(series: pd.Series) -> np.ndarray:
    """One column as canonical text (an object array of ``str``); see the module notes."""
    series = pd.Series(series).reset_index(drop=True)
    n = len(series)
    missing = series.isna().to_numpy(dtype=bool)
    dtype = series.dtype
    out = np.full(n, "", dtype=object)
    present = ~missing
    if isinstance(dtype, pd.CategoricalDtype):  # the categories once, then by code
        categories = canonical_text(pd.Series(series.cat.categories))
        out[present] = categories[series.cat.codes.to_numpy()[present]]
        return out
    if pd.api.types.is_bool_dtype(dtype):
        out[present] = series[present].astype(bool).astype(str).to_numpy(dtype=object)
        return out
    if pd.api.types.is_integer_dtype(dtype):
        out[present] = series[present].astype(np.int64 if pd.api.types.is_signed_integer_dtype(dtype) else np.uint64).astype(str).to_numpy(dtype=object)
        return out
    if pd.api.types.is_float_dtype(dtype):
        out[present] = _number_text(series[present].to_numpy(dtype=float))
        return out
    # text, or mixed Python objects (JSON input): str(), stripped; numbers in any spelling made canonical
    values = series[present].to_numpy(dtype=object)
    text, looks_numeric, number = _stripped(pd.Series(values, dtype=object).astype(str))
    candidates = np.flatnonzero(looks_numeric)
    if candidates.shape[0]:
        if number is None:
            number = pd.to_numeric(pd.Series(text[candidates], dtype=object), errors="coerce")
            try:
                number = np.asarray(number, dtype=float)
            except (TypeError, ValueError):  # pragma: no cover - values beyond float
                number = np.full(candidates.shape[0], np.nan)
        with np.errstate(invalid="ignore"):
            numeric = ~np.isnan(number) & (np.abs(number) < _EXACT)  # larger integers keep their exact digits
        text[candidates[numeric]] = _number_text(number[numeric])
    out[present] = text  # text of only whitespace becomes "", as a missing value
    return out


_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _stripped(text: pd.Series):
    """Text stripped of surrounding whitespace, which values look like a decimal number, and those numbers
    (``None`` when they are left to :func:`pandas.to_numeric`); vectorised in Arrow when it is installed."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:  # pragma: no cover - without pyarrow
        stripped = text.str.strip()
        return stripped.to_numpy(dtype=object), stripped.str.fullmatch(_NUMBER[1:-1]).to_numpy(dtype=bool), None
    arrow = pc.utf8_trim_whitespace(pa.array(text.to_numpy(dtype=object), type=pa.string()))
    looks = np.asarray(pc.match_substring_regex(arrow, _NUMBER).to_numpy(zero_copy_only=False), dtype=bool)
    number = None
    if looks.any():
        try:
            number = pc.cast(arrow.filter(pa.array(looks)), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. beyond float range
            number = None
    return arrow.to_numpy(zero_copy_only=False).astype(object), looks, number


def _hash_column(text: np.ndarray) -> np.ndarray:
    return pd.util.hash_pandas_object(pd.Series(text, dtype=object), index=False, categorize=True).to_numpy(np.uint64)


def id_text(series: pd.Series) -> np.ndarray:
    """An id column's values as the fit reads ids (text, stripped; a whole-number float as its integer;
    missing -> ``""``): ``"007"`` and ``7`` are two users there, so they are two here too."""
    from .data import _uniques_as_text

    series = pd.Series(series).reset_index(drop=True)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    text, missing = _uniques_as_text(uniques)
    text = np.where(missing, "", text).astype(object)
    out = np.full(len(series), "", dtype=object)
    present = codes >= 0
    out[present] = text[codes[present]]
    return out


def _text(series: pd.Series, column, id_roles) -> np.ndarray:
    return id_text(series) if column in id_roles else canonical_text(series)


def row_keys(frame: pd.DataFrame, columns, id_roles=()) -> np.ndarray:
    """A 64-bit key per row from the canonical text of ``columns`` (a column ``frame`` lacks counts as empty).

    Vectorised: one hash per column (:func:`pandas.util.hash_pandas_object`),
    combined in the order of ``columns``. Equal rows have equal keys; rows
    with equal keys are compared value by value before they are called equal
    (:func:`find_duplicates`). Columns in ``id_roles`` (user, models) are compared as the fit
    reads ids (:func:`id_text`).
    """
    n = len(frame)
    key = np.full(n, np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    empty = None
    for number, column in enumerate(columns):
        if column in frame.columns:
            h = _hash_column(_text(frame[column], column, id_roles))
        else:
            empty = _hash_column(np.full(1, "", dtype=object))[0] if empty is None else empty
            h = np.full(n, empty, dtype=np.uint64)
        with np.errstate(over="ignore"):
            key = (key ^ (h + np.uint64(number))) * prime
    return key


def _column_text(frame: pd.DataFrame, column, positions: np.ndarray, id_roles=()) -> np.ndarray:
    if column not in frame.columns:
        return np.full(positions.shape[0], "", dtype=object)
    return _text(frame[column].iloc[positions], column, id_roles)


def _narrowed(old: pd.DataFrame, new: pd.DataFrame, column, codes=None) -> pd.DataFrame:
    """The rows of ``old`` whose ``column`` has a canonical value that some row of ``new`` has.

    Only those can be duplicates, and finding them costs one factorisation of
    the old column plus the canonical text of its distinct values (e.g. the
    users), so an update hashes the old rows of the users it touches, not
    every old row. ``codes`` = ``(code per old row, distinct values)`` when the
    caller has them (an encoded log's user codes and labels).
    """
    wanted = pd.Index(pd.unique(canonical_text(new[column])))
    dtype = old[column].dtype
    if codes is None and isinstance(dtype, np.dtype) and dtype.kind in "iuf":
        # numbers: the canonical text of a number reads back as that number (whole numbers as integers,
        # others by their shortest repr), so only old values equal to a wanted text's number can match;
        # a superset of the matches found without writing any old value as text
        values = old[column].to_numpy()
        match = pd.Index(values).isin(_numbers_of(wanted, dtype))
        if "" in wanted and dtype.kind == "f":  # a missing number's canonical text is ""
            match |= np.isnan(values)
        return old[match]
    codes, uniques = codes if codes is not None else pd.factorize(old[column], use_na_sentinel=True)
    known = np.append(wanted.get_indexer(canonical_text(pd.Series(uniques, dtype=object))) >= 0, "" in wanted)
    return old[known[codes]]


def _numbers_of(texts, dtype: np.dtype) -> np.ndarray:
    """The values of ``dtype`` (integers or floats) that the canonical ``texts`` spell."""
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    out = []
    if info is not None:  # plain decimal integers at once (what int() reads them as); any other text below
        texts = pd.Series(list(texts), dtype=object)
        plain = texts.str.fullmatch(r"-?[0-9]{1,18}").fillna(False).to_numpy(dtype=bool)
        values = texts[plain].astype(np.int64).to_numpy() if plain.any() else np.zeros(0, dtype=np.int64)
        out.extend(values[(values >= info.min) & (values <= info.max)].tolist())
        texts = texts[~plain]
    for text in texts:
        try:
            value = int(text) if info is not None else float(text)
        except (TypeError, ValueError):
            continue
        if info is None or info.min <= value <= info.max:
            out.append(value)
    return np.array(out, dtype=dtype)


def find_duplicates(old: pd.DataFrame, new: pd.DataFrame, columns, narrow_by=None, narrow_codes=None,
                    id_roles=()) -> np.ndarray:
    """Per row of ``new``: whether some row of ``old`` has the same canonical values in ``columns``.

    Rows are matched by :func:`row_keys`, then the matched pairs are compared
    value by value, so a hash collision never makes a row a duplicate.
    ``narrow_by`` (one of ``columns``, e.g. the user column) first sets aside
    the old rows that cannot match (see :func:`_narrowed`).
    """
    columns = list(columns)
    if len(new) and len(old) and narrow_by in columns and narrow_by in old.columns and narrow_by in new.columns:
        old = _narrowed(old, new, narrow_by, narrow_codes)
    if len(new) == 0 or len(old) == 0:
        return np.zeros(len(new), dtype=bool)
    old_keys, new_keys = row_keys(old, columns, id_roles), row_keys(new, columns, id_roles)
    first = pd.Index(old_keys)
    if not first.is_unique:
        keep = ~first.duplicated()
        first, first_position = first[keep], np.flatnonzero(keep)
    else:
        first_position = np.arange(len(old_keys))
    found = first.get_indexer(new_keys)
    candidates = np.flatnonzero(found >= 0)
    duplicate = np.zeros(len(new), dtype=bool)
    if candidates.shape[0] == 0:
        return duplicate
    old_positions = first_position[found[candidates]]
    same = np.ones(candidates.shape[0], dtype=bool)
    for column in columns:
        same &= _column_text(old, column, old_positions, id_roles) == _column_text(new, column, candidates, id_roles)
    duplicate[candidates[same]] = True
    return duplicate


def id_columns(row_id, old_columns, new_columns) -> list | None:
    """The id columns an update matches rows by, or ``None`` (whole rows).

    ``row_id`` (a column name, comma-separated names or a list) must name
    columns of both logs; without it, ``question_id`` + ``tstamp`` are used
    when both logs have both.
    """
    if row_id is not None:
        names = [c.strip() for c in row_id.split(",")] if isinstance(row_id, str) else list(row_id)
        names = [c for c in names if c != ""]
        if not names:
            raise InputError("row_id names no column")
        for name in names:
            if name not in new_columns:
                raise InputError(f"row id column '{name}' is not in the new rows; columns present: {', '.join(map(str, new_columns))}")
            if name not in old_columns:
                raise InputError(f"row id column '{name}' is not in the previous fit's rows")
        return names
    if all(c in new_columns and c in old_columns for c in ARENA_ID_COLUMNS):
        return list(ARENA_ID_COLUMNS)
    return None


def _missing_any(frame: pd.DataFrame, columns) -> np.ndarray:
    out = np.zeros(len(frame), dtype=bool)
    for column in columns:
        out |= canonical_text(frame[column]) == ""
    return out


def drop_duplicates_of(old: pd.DataFrame, new: pd.DataFrame, *, row_id=None, on_duplicate: str = "skip",
                       user=None, user_codes=None, id_roles=()):
    """The rows of ``new`` to add to ``old``, and how they were matched.

    Parameters
    ----------
    old, new : pandas.DataFrame
        The previous fit's input rows and the new rows (input columns only,
        under the same names).
    row_id : str or list, optional
        Id column(s); see :func:`id_columns`. Ids win over content: a new row
        whose ids are already in ``old`` is a duplicate even when its other
        values differ (the first answer stays). A row with an empty id is
        matched by its whole row.
    on_duplicate : {"skip", "error", "keep"}
        Skip duplicates with a :class:`~bayes_annot.errors.FitWarning`, raise
        :class:`~bayes_annot.errors.InputError`, or keep them (no check).
    user : str, optional
        The user column: whole-row matching then hashes only the old rows of
        the users present in ``new`` (same answer, less work).
    user_codes : (numpy.ndarray, numpy.ndarray), optional
        The old rows' user codes and the labels they index, when already encoded.
    id_roles : tuple of str
        The user and model columns: whole rows compare their values as the fit reads ids (``"007"`` and
        ``7`` are two users, so a vote of one is not a duplicate of the other's), other columns canonically.

    Returns
    -------
    (pandas.DataFrame, dict)
        The new rows kept, and ``rows_read``, ``rows_added``,
        ``rows_skipped``, ``duplicate_key`` for the provenance entry.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InputError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got '{on_duplicate}'")
    n = len(new)
    if on_duplicate == "keep":
        return new, {"rows_read": n, "rows_added": n, "rows_skipped": 0, "duplicate_key": None}
    ids = id_columns(row_id, list(old.columns), list(new.columns))
    whole = sorted(set(old.columns) | set(new.columns), key=str)
    if ids is None:
        duplicate = find_duplicates(old, new, whole, narrow_by=user, narrow_codes=user_codes, id_roles=id_roles)
        described = "row hash"
    else:
        described = ", ".join(map(str, ids))
        duplicate = np.zeros(n, dtype=bool)
        new_blank = _missing_any(new, ids)
        with_id = np.flatnonzero(~new_blank)
        # only old rows whose first id some new row has can match (an old row with a blank id has none)
        candidates = _narrowed(old, new.iloc[with_id], ids[0]) if len(with_id) and len(old) else old.iloc[:0]
        old_blank = _missing_any(candidates, ids)
        duplicate[with_id] = find_duplicates(candidates[~old_blank], new.iloc[with_id], ids)
        if new_blank.any():
            without = np.flatnonzero(new_blank)
            duplicate[without] = find_duplicates(old, new.iloc[without], whole, narrow_by=user, narrow_codes=user_codes,
                                                 id_roles=id_roles)
    k = int(duplicate.sum())
    if k:
        how = "the same row" if ids is None else f"the same {described}"
        message = f"{k} of {n} new rows are already in the previous fit's log ({how})"
        if on_duplicate == "error":
            raise InputError(f"{message}; nothing written (use --on-duplicate skip to add only the others)")
        hint = ("; without an id column two identical votes look alike: name one with --row-id COL "
                "(row_id=), or add them anyway with --on-duplicate keep") if ids is None else ""
        warnings.warn(f"{message}: skipped them{hint}", FitWarning, stacklevel=3)
        new = new.iloc[np.flatnonzero(~duplicate)].reset_index(drop=True)
    return new, {"rows_read": n, "rows_added": n - k, "rows_skipped": k, "duplicate_key": described}


# --------------------------------------------------------------------------- inputs and the provenance list


def input_info(data, record_paths: bool = False) -> dict:
    """``summary.json``'s ``input`` for a file path: name, SHA-256 and (only when asked) the absolute path."""
    from .data import file_sha256

    if not isinstance(data, (str, Path)):
        return {"file": None, "path": None, "sha256": None}
    path = Path(data)
    return {"file": path.name, "path": str(path.resolve()) if record_paths else None, "sha256": file_sha256(path)}


def parquet_collection_info(data, record_paths: bool = False) -> dict:
    """``input`` for a folder or glob of parquet files.

    ``file`` is the folder's name (a glob: its folder's name and pattern),
    ``sha256`` the SHA-256 of the list ``"<sha256>  <name>\\n"`` of the part
    files sorted by name (what ``sha256sum`` prints), ``files`` their number.
    """
    from .data import file_sha256, is_glob

    text = str(data)
    path = Path(data)
    if is_glob(text):
        files = sorted((Path(p) for p in _glob.glob(text)), key=lambda p: p.name)
        name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        where = str(path.parent.resolve() / path.name)
    else:
        files = sorted(path.glob("*.parquet"), key=lambda p: p.name)
        name = path.resolve().name
        where = str(path.resolve())
    manifest = "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    return {
        "file": name, "path": where if record_paths else None,
        "sha256": hashlib.sha256(manifest.encode("utf-8")).hexdigest(), "files": len(files),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def provenance_entry(info: dict | None, *, rows_read: int, rows_added: int, rows_skipped: int = 0,
                     duplicate_key: str | None = None) -> dict:
    """One item of the ``provenance`` list: the input (file, path, sha256), its row counts and the time (UTC)."""
    info = info or {}
    return {
        "file": info.get("file"), "path": info.get("path"), "sha256": info.get("sha256"),
        "rows_read": int(rows_read), "rows_added": int(rows_added), "rows_skipped": int(rows_skipped),
        "duplicate_key": duplicate_key, "time": _now(),
    }


def carried_provenance(summary: dict, record_paths: bool = False) -> list:
    """The previous fit's ``provenance`` list (a folder written before the list existed gets one entry)."""
    previous = summary.get("provenance")
    if isinstance(previous, list):
        return [dict(e) for e in previous]
    old = summary.get("input") or {}
    name = old.get("file") or (Path(old["path"]).name if old.get("path") else None)
    rows = (summary.get("counts") or {}).get("rows")
    return [{
        "file": name, "path": old.get("path") if record_paths else None, "sha256": old.get("sha256"),
        "rows_read": rows, "rows_added": rows, "rows_skipped": 0, "duplicate_key": None, "time": None,
    }]


def set_provenance(result, info: dict, entries: list) -> None:
    """Record ``input`` and ``provenance`` in a result's summary (and in what its ``filter()`` clones copy)."""
    for summary in (getattr(result, "_summary_base", None), result.summary):
        if summary is not None:
            summary["input"] = dict(info)
            summary["provenance"] = [dict(e) for e in entries]
