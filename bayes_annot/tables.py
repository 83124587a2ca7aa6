"""Typed tables on disk: every value written reads back equal.

A result folder's tables (``users``, ``models``, ``rows``) are written with
pyarrow as ``.csv`` or ``.parquet``. CSV has no types of its own, so the writer
returns a small description of each column (its pandas dtype, its Arrow type,
how it was encoded) that the folder's ``manifest.json`` keeps; the reader uses
it to give every column back its type and every cell its value:

* text columns keep the difference between an empty string (written ``""``)
  and a missing value (an empty, unquoted cell);
* numbers are written in their shortest exact form (``0.1`` reads back as the
  same double), whole-number floats stay floats (``1.0`` is not turned into the
  integer ``1``), booleans stay booleans;
* cells that hold lists, dicts or mixed Python values (Chatbot Arena's
  ``conversation_a``) are written as JSON text and parsed back; numpy arrays
  come back as lists;
* a column of bytes, dates, times or decimals reads back as those values, and
  so does one that mixes them, datetimes (``datetime``, ``pd.Timestamp`` with
  its zone and unit), ``np.datetime64``, ``np.bytes_`` and other numpy scalars or
  timedeltas with text or other values (``[b"\\xff", "text"]``): each cell is
  then written with a tag of its type, and checked to read back so;
* a value no table gives back (a tuple, a list holding a date) is refused with
  one line naming the column, the value and its row (:func:`check_storable`);
* categories keep their category list.

``safe_csv=True`` prefixes text cells that a spreadsheet would run as a formula
(a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) with ``'``; a
leading ``'`` is escaped the same way, so the reader removes exactly one
``'`` and the round trip stays exact.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import decimal
import json
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["FORMATS", "OUTPUT_COLUMNS", "input_renames", "write_table", "read_table_file", "table_file_name"]

#: Columns a fit adds to every input row.
OUTPUT_COLUMNS = ("kept", "reason", "weight")

#: Output formats of the tables.
FORMATS = ("csv", "parquet")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def input_renames(columns) -> dict[str, str]:
    """New names for input columns that clash with :data:`OUTPUT_COLUMNS` (``kept`` -> ``input_kept``).

    The new name is made unique (``input_input_kept`` when ``input_kept`` is
    taken too), so no two columns of ``rows`` share a header.
    """
    taken = {str(c) for c in columns}
    renames = {}
    for name in OUTPUT_COLUMNS:
        if name in taken:
            new = f"input_{name}"
            while new in taken:
                new = f"input_{new}"
            taken.add(new)
            renames[name] = new
    return renames


def table_file_name(name: str, fmt: str) -> str:
    """``users`` + ``csv`` -> ``users.csv``."""
    if fmt not in FORMATS:
        raise InputError(f"unknown output format '{fmt}', expected {' or '.join(FORMATS)}")
    return f"{name}.{fmt}"


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (decimal.Decimal, bytes)):
        return str(value) if isinstance(value, decimal.Decimal) else value.decode("utf-8", errors="replace")
    return str(value)


#: Object columns of one scalar type that JSON would not give back (bytes were decoded lossily, dates and
#: decimals came back as text): pandas' inferred kind -> (the type, its text, the value of that text).
_SCALAR_CODECS = {
    "bytes": (bytes, lambda v: base64.b64encode(v).decode("ascii"), base64.b64decode),
    "date": (_dt.date, lambda v: v.isoformat(), _dt.date.fromisoformat),
    "time": (_dt.time, lambda v: v.isoformat(), _dt.time.fromisoformat),
    "decimal": (decimal.Decimal, str, decimal.Decimal),
}


#: A column that mixes text (or JSON values) with bytes, dates, times or decimals: each cell's text starts with a
#: tag saying how to read it back (``"s"`` text, ``"j"`` JSON, else the type's tag of :data:`_SCALAR_CODECS`,
#: or of :data:`_EXACT_CODECS`: datetimes, pandas timestamps and timedeltas, numpy scalars).
_TAG_OF = {bytes: "b", _dt.date: "d", _dt.time: "t", decimal.Decimal: "m"}
_KIND_OF_TAG = {"b": "bytes", "d": "date", "t": "time", "m": "decimal"}


def _datetime_text(value: _dt.datetime) -> str:
    """A datetime as text that gives it back: ISO (with its offset) or, for a named zone (``zoneinfo``), the wall
    time, ``fold`` and the zone's key."""
    zone = value.tzinfo
    if zone is None or isinstance(zone, _dt.timezone):
        return value.isoformat()
    return json.dumps([value.replace(tzinfo=None).isoformat(), value.fold, zone.key])  # no key: refused (checked)


def _datetime_value(text: str) -> _dt.datetime:
    if not text.startswith("["):
        return _dt.datetime.fromisoformat(text)
    import zoneinfo

    wall, fold, key = json.loads(text)
    return _dt.datetime.fromisoformat(wall).replace(tzinfo=zoneinfo.ZoneInfo(key), fold=fold)


def _timestamp_text(value: pd.Timestamp) -> str:
    return json.dumps([int(value.as_unit("ns").value) if value.unit == "ns" else value.isoformat(), value.unit,
                       None if value.tz is None else str(value.tz)])


def _timestamp_value(text: str) -> pd.Timestamp:
    stamp, unit, zone = json.loads(text)
    value = pd.Timestamp(stamp, unit="ns") if isinstance(stamp, int) else pd.Timestamp(stamp)
    if zone is not None:
        value = (value.tz_localize("UTC") if value.tz is None else value).tz_convert(zone)
    return value.as_unit(unit)


def _numpy_text(value) -> str:
    return value.dtype.str + ":" + base64.b64encode(value.tobytes()).decode("ascii")


def _numpy_value(text: str):
    dtype, _, body = text.partition(":")
    return np.frombuffer(base64.b64decode(body), dtype=np.dtype(dtype))[0]


#: Tags of further scalar types, mixed with others in a column: tag -> (the type, its text, the value of that text).
_EXACT_CODECS = {
    "D": (_dt.datetime, _datetime_text, _datetime_value),
    "P": (pd.Timestamp, _timestamp_text, _timestamp_value),
    "e": (_dt.timedelta, lambda v: f"{v.days},{v.seconds},{v.microseconds}",
          lambda t: _dt.timedelta(*map(int, t.split(",")))),
    "Q": (pd.Timedelta, lambda v: json.dumps([int(v.as_unit("ns").value), v.unit]),
          lambda t: pd.Timedelta(json.loads(t)[0], unit="ns").as_unit(json.loads(t)[1])),
    "B": (np.bytes_, lambda v: base64.b64encode(bytes(v)).decode("ascii"), lambda t: np.bytes_(base64.b64decode(t))),
    "U": (np.str_, str, np.str_),  # (an array drops their trailing NULs: not by "n")
    "n": (np.generic, _numpy_text, _numpy_value),  # other numpy scalars (datetime64, int64, ...): their bytes
}
_EXACT_TAG_OF = {kind: tag for tag, (kind, _, _) in _EXACT_CODECS.items() if kind is not np.generic}
#: Cells the JSON encoding gives back as they were (a numpy array comes back as a list, as documented).
_JSON_SCALARS = (str, int, float, bool, type(None))
#: Cells of a column written as JSON; a column holding any other type is tagged cell by cell.
_JSON_CELLS = frozenset({*_JSON_SCALARS, list, dict, np.ndarray})


def _exact_json(value) -> bool:
    """Whether ``json.loads(json.dumps(value))`` gives ``value`` back (arrays: as lists)."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return True
    if kind is list:  # plain loops, scalars tested inline (Arena conversations: a list of dicts of text per row)
        for item in value:
            if type(item) not in _JSON_SCALARS and not _exact_json(item):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _JSON_SCALARS and not _exact_json(item)):
                return False
        return True
    if kind is np.ndarray:
        return value.dtype.kind in "biufU" or (value.dtype == object and all(_exact_json(v) for v in value.flat))
    return False


def _tagged(value) -> str:
    kind = type(value)
    if kind is str:
        return "s" + value
    tag = _TAG_OF.get(kind)
    if tag is not None:
        return tag + _SCALAR_CODECS[_KIND_OF_TAG[tag]][1](value)
    tag = _EXACT_TAG_OF.get(kind, "n" if isinstance(value, np.generic) else None)
    if tag is not None:
        return tag + _EXACT_CODECS[tag][1](value)
    return "j" + json.dumps(value, ensure_ascii=False, default=_json_default)


def _untagged(text: str):
    tag, body = text[:1], text[1:]
    if tag == "s":
        return body
    if tag == "j":
        return json.loads(body)
    if tag in _EXACT_CODECS:
        return _EXACT_CODECS[tag][2](body)
    return _SCALAR_CODECS[_KIND_OF_TAG[tag]][2](body)


def _shown(value) -> str:
    """``value``'s repr on one line, at most 80 characters (for an error message)."""
    shown = repr(value).replace("\n", " ")
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _unsavable(series: pd.Series, position: int, value) -> InputError:
    return InputError(
        f"column '{series.name}' holds {_shown(value)} ({type(value).__name__}, row {position}), which a saved table "
        "cannot give back equal: convert the column (e.g. to text) before saving"
    )


def _check_tagged(series: pd.Series, position: int, value, text: str) -> None:
    """Refuse a cell whose tagged text does not give back the same value (type, value, time zone, unit)."""
    if text[:1] == "j":
        faithful = _exact_json(value)
    else:
        try:
            back = _untagged(text)
            faithful = type(back) is type(value) and repr(back) == repr(value) and bool(back == value or value != value)
        except Exception:
            faithful = False
    if not faithful:
        raise _unsavable(series, position, value)


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where an object array holds ``None``, ``NaN``, ``pd.NA`` or ``NaT`` (not where it holds a list)."""
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or v is pd.NA or v is pd.NaT:
            out[i] = True
        elif isinstance(v, float) and v != v:
            out[i] = True
    return out


def _encode_column(series: pd.Series, offset: int = 0, checked: bool = False) -> tuple[pd.Series, dict]:
    """A column as Arrow can write it, and how to give it back its values (``offset``: the row number of its
    first cell, named in a refusal; ``checked``: its JSON cells passed :func:`check_storable` already)."""
    dtype = series.dtype
    meta: dict = {"dtype": str(dtype), "codec": None}
    if isinstance(dtype, pd.CategoricalDtype):
        categories = list(dtype.categories)
        if all(isinstance(c, str) for c in categories):
            meta.update(codec="category", categories=categories, ordered=bool(dtype.ordered))
            return series, meta  # to_arrow decodes the codes into text
        series = series.astype(object)
        dtype = series.dtype
    if dtype == object:
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind in ("string", "empty"):
            meta["codec"] = "text"
            return series.where(series.notna(), None).astype("string"), meta
        values = series.to_numpy(dtype=object)
        missing = _missing_mask(values)
        meta["codec"] = _object_codec(kind, values, missing)
        return _encode_cells(series, meta["codec"], offset, values, missing, checked=checked), meta
    return series, meta


def _object_codec(kind: str, values: np.ndarray, missing: np.ndarray) -> str:
    """The codec of an object column that is not all text (``kind``: pandas' inferred kind of its values)."""
    scalar = _SCALAR_CODECS.get(kind)  # bytes, dates, times, decimals: as text that gives them back exactly
    if scalar is not None and all(type(v) is scalar[0] for v, m in zip(values, missing) if not m):
        return kind
    if any(type(v) not in _JSON_CELLS for v, m in zip(values, missing) if not m):  # mixed: each cell says its type
        return "tagged"
    return "json"


def _encode_cells(series: pd.Series, codec: str, offset: int = 0, values=None, missing=None,
                  refusal=None, checked: bool = False) -> pd.Series:
    """The cells of an object column as text by ``codec`` (``json``, ``tagged`` or a scalar codec), each checked
    to give back its value; a cell that does not raises ``refusal(position, value)`` (default: :func:`_unsavable`)."""
    if values is None:
        values = series.to_numpy(dtype=object)
        missing = _missing_mask(values)
    refusal = refusal or (lambda position, value: _unsavable(series, position, value))
    encoded = np.empty(len(values), dtype=object)
    scalar = _SCALAR_CODECS.get(codec)
    for i, v in enumerate(values):
        if missing[i]:
            continue
        if codec == "json":
            if not (checked or _exact_json(v)):
                raise refusal(offset + i, v)
            encoded[i] = json.dumps(v, ensure_ascii=False, default=_json_default)
            continue
        if scalar is not None:
            if type(v) is not scalar[0]:
                raise refusal(offset + i, v)
            encoded[i] = scalar[1](v)
            text = _TAG_OF[scalar[0]] + encoded[i]
        else:
            encoded[i] = text = _tagged(v)
        try:
            _check_tagged(series, offset + i, v, text)
        except InputError:
            raise refusal(offset + i, v) from None
    return pd.Series(encoded, index=series.index, dtype="string")


def check_storable(frame: pd.DataFrame) -> None:
    """Raise :class:`InputError` (one line, naming the column, the value and its row) when a cell of ``frame``
    cannot be written so that it reads back equal (e.g. a tuple, or a list holding a date): called before a
    folder is written, so a refused value leaves nothing behind. Only object columns that are not all text
    are looked at (their cells are encoded one by one anyway)."""
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        kind = pd.api.types.infer_dtype(column, skipna=True) if column.dtype == object else "string"
        if kind in ("string", "empty"):
            continue
        series = column.rename(str(frame.columns[position]))
        values = series.to_numpy(dtype=object)
        missing = _missing_mask(values)
        codec = _object_codec(kind, values, missing)
        if codec != "json":
            _encode_cells(series, codec, 0, values, missing)  # (bytes, dates, numpy scalars...: rare, checked as written)
            continue
        for i, v in enumerate(values):  # JSON cells: checked, not encoded (the write encodes them)
            if not missing[i] and not _exact_json(v):
                raise _unsavable(series, i, v)


def _escape_formulas(table, columns: Iterable[str]):
    """Prefix ``'`` to text cells that start like a spreadsheet formula (or with ``'``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in columns:
        index = table.schema.get_field_index(name)
        column = table.column(index)
        starts = None
        for prefix in _FORMULA_START:
            hit = pc.starts_with(column, prefix)
            starts = hit if starts is None else pc.or_(starts, hit)
        escaped = pc.if_else(pc.fill_null(starts, False), pc.binary_join_element_wise(pa.scalar("'", column.type), column, pa.scalar("", column.type)), column)
        table = table.set_column(index, pa.field(name, column.type), escaped)
    return table


def _unescape_formulas(table, columns: Iterable[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in columns:
        index = table.schema.get_field_index(name)
        column = table.column(index)
        quoted = pc.fill_null(pc.starts_with(column, "'"), False)
        stripped = pc.utf8_slice_codeunits(column, 1)
        table = table.set_column(index, pa.field(name, column.type), pc.if_else(quoted, stripped, column))
    return table


def to_arrow(frame: pd.DataFrame, offset: int = 0, *, checked: bool = False) -> tuple[object, list[dict]]:
    """The frame as an Arrow table (no index) and the per-column restoration records (``offset``: the row
    number of the frame's first row, named in a refusal; ``checked``: the frame passed :func:`check_storable`)."""
    import pyarrow as pa

    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"column '{dup}' appears more than once in a table to write")
    arrays, metas = [], []
    for position, name in enumerate(names):
        column = frame.iloc[:, position]
        encoded, meta = _encode_column(column.rename(name), offset, checked)
        meta["name"] = name
        if meta["codec"] == "category":  # the category text of each code, decoded by Arrow (no Python objects)
            array = pa.Array.from_pandas(column).cast(pa.large_string())
        else:
            array = pa.Array.from_pandas(encoded)
        arrays.append(array.cast(pa.string()) if pa.types.is_null(array.type) else array)
        metas.append(meta)
    return pa.Table.from_arrays(arrays, names=names), metas


def _text_columns(table, metas: list[dict]) -> list[str]:
    import pyarrow as pa

    return [m["name"] for m in metas if pa.types.is_string(table.schema.field(m["name"]).type)
            or pa.types.is_large_string(table.schema.field(m["name"]).type)]


def write_table(frame: pd.DataFrame, sink: str | BinaryIO, fmt: str = "csv", *, safe_csv: bool = False,
                checked: bool = False) -> dict:
    """Write a frame to ``sink`` (a path or a binary file) as CSV or parquet.

    Returns the description that :func:`read_table_file` needs to read it back
    equal: ``{"format", "rows", "columns": [...], "schema", "safe_csv"}``.

    Examples
    --------
    >>> import io, pandas as pd
    >>> frame = pd.DataFrame({"id": ["007", "", None], "x": [1.0, 0.1, float("nan")]})
    >>> buffer = io.BytesIO()
    >>> meta = write_table(frame, buffer)
    >>> _ = buffer.seek(0)
    >>> back = read_table_file(buffer, meta)
    >>> back.equals(frame), back["id"].tolist()[:2], back["id"].isna().tolist()
    (True, ['007', ''], [False, False, True])
    """
    table, metas = to_arrow(frame, checked=checked)
    return write_arrow(table, metas, sink, fmt, safe_csv=safe_csv)


def write_arrow(table, metas: list[dict], sink, fmt: str, *, safe_csv: bool = False, parquet_options=None) -> dict:
    """Write an Arrow table built by :func:`to_arrow` (see :func:`write_table`); ``parquet_options``:
    further keyword arguments of :func:`pyarrow.parquet.write_table`."""
    import pyarrow.csv as pa_csv

    table_file_name("table", fmt)
    _NO_HEADER = _no_header()
    schema = table.schema
    if fmt == "csv":
        if safe_csv:
            table = _escape_formulas(table, _text_columns(table, metas))
        if isinstance(sink, (str, bytes)) or hasattr(sink, "__fspath__"):
            with open(sink, "wb") as handle:
                _write_header(handle, table.column_names)
                pa_csv.write_csv(table, handle, _NO_HEADER)
        else:
            _write_header(sink, table.column_names)
            pa_csv.write_csv(table, sink, _NO_HEADER)
    else:
        import pyarrow.parquet as pq  # parquet only: its import (pyarrow.fs, ssl) is not a CSV write's

        pq.write_table(table, sink, **(parquet_options or {}))
    return {
        "format": fmt,
        "rows": int(table.num_rows),
        "columns": metas,
        "schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
        "safe_csv": bool(safe_csv and fmt == "csv"),
    }


def _write_header(handle, names) -> None:
    """The header line, every name quoted (pyarrow leaves a name with a line break unquoted)."""
    handle.write((",".join('"' + name.replace('"', '""') + '"' for name in names) + "\n").encode("utf-8"))


def _no_header():
    import pyarrow.csv as pa_csv

    return pa_csv.WriteOptions(quoting_style="needed", include_header=False)


class CsvStreamWriter:
    """Write a table partition by partition into one CSV or parquet file (Dask rows).

    The column encodings are fixed by the first partition; later partitions
    are encoded the same way: a column the first partitions left empty takes
    the encoding of the first partition that has a value, a column written
    as JSON or tagged cells takes a later partition's values in that encoding,
    and a category column keeps the categories of every partition.
    A later partition whose values the fixed encoding cannot give back (an
    integer column that turns to bytes) is refused with one line naming the
    column, the value and its row (the folder being written is then dropped).
    """

    def __init__(self, sink, fmt: str, *, safe_csv: bool = False):
        table_file_name("table", fmt)
        self.sink, self.fmt, self.safe_csv = sink, fmt, bool(safe_csv and fmt == "csv")
        self.writer = None
        self.metas: list[dict] | None = None
        self.schema = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        """Append one partition."""
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        table, metas = to_arrow(frame, self.rows)
        if self.metas is None:
            self.metas, self.schema = metas, table.schema
            self.empty = [table.column(i).null_count == table.num_rows for i in range(table.num_columns)]
            if self.fmt == "csv":
                _write_header(self.sink, self.schema.names)
                self.writer = pa_csv.CSVWriter(self.sink, self.schema, write_options=_no_header())
            else:
                self.writer = pq.ParquetWriter(self.sink, self.schema)
        else:
            table = self._as_first(frame, table, metas)
        if table.schema != self.schema:
            try:
                table = pa.Table.from_arrays([table.column(i).cast(f.type) for i, f in enumerate(self.schema)],
                                             schema=self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                name = next(f.name for i, f in enumerate(self.schema) if not table.column(i).type.equals(f.type))
                raise InputError(f"column '{name}' has another type in rows {self.rows}-{self.rows + table.num_rows - 1} "
                                 f"than in the rows before ({exc}): give the column one type before fitting") from None
        if self.safe_csv:
            table = _escape_formulas(table, _text_columns(table, self.metas))
        self.writer.write_table(table)
        self.rows += table.num_rows

    def _as_first(self, frame: pd.DataFrame, table, metas: list[dict]):
        """A later partition's table encoded as the first partition fixed each column (see the class)."""
        import pyarrow as pa

        for i, (fixed, meta) in enumerate(zip(self.metas, metas)):
            column_empty = table.column(i).null_count == table.num_rows
            if meta == fixed or column_empty:
                self.empty[i] = self.empty[i] and column_empty
                continue
            if self.empty[i] and fixed.get("codec") == "text" and table.schema.field(i).type.equals(self.schema.field(i).type):
                self.metas[i], self.empty[i] = meta, False  # nothing written yet but missing cells: any encoding reads them
                continue
            if fixed.get("codec") == meta.get("codec") == "category" and not (fixed["ordered"] or meta["ordered"]):
                known = set(fixed["categories"])  # categories a partition has of its own (unknown to Dask): all kept
                fixed["categories"] = fixed["categories"] + [c for c in meta["categories"] if c not in known]
                continue
            series = frame.iloc[:, i].rename(fixed["name"])
            if fixed.get("codec") in ("json", "tagged") and series.dtype == object:
                def refusal(position, value, codec=fixed["codec"], name=fixed["name"]):
                    return InputError(
                        f"column '{name}' holds {_shown(value)} ({type(value).__name__}) in row {position}, which the rows "
                        f"before did not prepare for (they are written as {codec}): give the column one type before "
                        "fitting (e.g. .astype(str))")

                encoded = _encode_cells(series, fixed["codec"], self.rows, refusal=refusal)
                array = pa.Array.from_pandas(encoded)
                table = table.set_column(i, pa.field(fixed["name"], array.type), array)
                continue
            raise InputError(
                f"column '{fixed['name']}' is {meta.get('codec') or meta['dtype']} in rows from {self.rows} on "
                f"(e.g. {_shown(_first_value(series))}) but {fixed.get('codec') or fixed['dtype']} in the rows before, which cannot both be "
                "written in one table: give the column one type before fitting (e.g. .astype(str))")
        return table

    def discard(self) -> None:
        """Stop writing after a failure (the file is incomplete: its writer drops it)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # the sink may be closed or full: the file is dropped anyway
                pass
            self.writer = None

    def close(self) -> dict:
        """Finish the file; returns the table's description (as :func:`write_table` does)."""
        if self.writer is not None:
            self.writer.close()
        return {
            "format": self.fmt,
            "rows": self.rows,
            "columns": self.metas or [],
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii") if self.schema else None,
            "safe_csv": self.safe_csv,
        }


def _first_value(series: pd.Series):
    """The first value of ``series`` that is not missing (``None`` if all are)."""
    present = series[series.notna()]
    return present.iloc[0] if len(present) else None


def _restore(series: pd.Series, meta: dict) -> pd.Series:
    codec = meta.get("codec")
    if codec == "text":
        values = series.to_numpy(dtype=object, na_value=None)
        return pd.Series(values, index=series.index, dtype=object, name=series.name)
    if codec == "json":
        values = series.to_numpy(dtype=object, na_value=None)
        decoded = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            decoded[i] = None if v is None else json.loads(v)
        return pd.Series(decoded, index=series.index, dtype=object, name=series.name)
    if codec == "tagged":
        values = series.to_numpy(dtype=object, na_value=None)
        decoded = np.array([None if v is None else _untagged(v) for v in values] + [None], dtype=object)[:-1]
        return pd.Series(decoded, index=series.index, dtype=object, name=series.name)
    if codec in _SCALAR_CODECS:
        parse = _SCALAR_CODECS[codec][2]
        values = series.to_numpy(dtype=object, na_value=None)
        decoded = np.array([None if v is None else parse(v) for v in values] + [None], dtype=object)[:-1]
        return pd.Series(decoded, index=series.index, dtype=object, name=series.name)
    if codec == "category":
        values = series.to_numpy(dtype=object, na_value=None)
        dtype = pd.CategoricalDtype(meta["categories"], ordered=meta.get("ordered", False))
        return pd.Series(pd.Categorical(values, dtype=dtype), index=series.index, name=series.name)
    target = meta.get("dtype")
    if target and str(series.dtype) != target:
        try:
            return series.astype(target)
        except (TypeError, ValueError):
            return series
    return series


def _category_from_arrow(column, meta: dict, name: str) -> pd.Series:
    """A ``category`` column from its text: each value's position among the categories, looked up by Arrow
    (as ``pd.Categorical(values, categories)``: a value that is not a category, or missing, has no category)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = pd.CategoricalDtype(meta["categories"], ordered=meta.get("ordered", False))
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.large_string())
    codes = pc.index_in(column, value_set=pa.array(meta["categories"], type=column.type))
    codes = pc.fill_null(codes, -1).to_numpy().astype(np.int64, copy=False) if len(column) else np.zeros(0, np.int64)
    return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), name=name)


class DamagedTable(InputError):
    """A table file holds another number of rows than its manifest records (truncated or edited)."""


def check_row_count(n_rows: int, meta: dict | None) -> None:
    """Raise :class:`DamagedTable` when a table read back has another number of rows than was written
    (a cut or hand-edited file would otherwise lose rows silently, e.g. in an ``--update``)."""
    if meta and meta.get("rows") is not None and int(meta["rows"]) != int(n_rows):
        raise DamagedTable(f"'{meta.get('file', 'a table')}' holds {n_rows} rows but {int(meta['rows'])} were "
                           "written (the file was cut short or edited)")


def check_columns(names, meta: dict | None) -> None:
    """Raise :class:`DamagedTable` when a parquet table's columns are not those written (a column dropped,
    renamed or added by hand would otherwise vanish from, or slip into, the rows an update writes back)."""
    if not meta or not meta.get("columns"):
        return
    written = [m["name"] for m in meta["columns"]]
    names = list(names)
    if names != written:
        missing = [n for n in written if n not in names]
        extra = [n for n in names if n not in written]
        detail = (f"lacks {', '.join(map(repr, missing))}" if missing else
                  f"has {', '.join(map(repr, extra))} too" if extra else "has them in another order")
        raise DamagedTable(f"'{meta.get('file', 'a table')}' {detail}: not the columns that were written (the file was edited)")


def read_table_file(source: str | BinaryIO, meta: dict | None = None, *, columns=None, rows=None) -> pd.DataFrame:
    """Read a table written by :func:`write_table`, typed by its description ``meta``.

    Without ``meta`` (a table written by an older version, or by hand) a CSV
    is read with every cell as text and a parquet file with its own types.
    ``columns`` (parquet only) reads only these columns; ``rows`` (positions)
    keeps only these rows, taken before any conversion to pandas.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    fmt = (meta or {}).get("format")
    if fmt is None:
        name = source if isinstance(source, str) else getattr(source, "name", "")
        fmt = "parquet" if str(name).endswith(".parquet") else "csv"
    schema = None
    if meta and meta.get("schema"):
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["schema"])))
    if fmt == "csv":
        # a file we wrote (it has ``meta``): a blank line is a row whose cells are all missing (a one-column table)
        parse = pa_csv.ParseOptions(ignore_empty_lines=meta is None)
        if schema is None:
            convert = pa_csv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False)
            head = pa_csv.read_csv(source, convert_options=convert, parse_options=parse,
                                   read_options=pa_csv.ReadOptions(block_size=1 << 26))
            table = head.cast(pa.schema([pa.field(f.name, pa.string()) for f in head.schema]))
        else:
            convert = pa_csv.ConvertOptions(
                column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False,
                include_columns=schema.names,
            )
            read = pa_csv.ReadOptions(block_size=1 << 26)
            table = pa_csv.read_csv(source, read_options=read, convert_options=convert, parse_options=parse)
        if meta and meta.get("safe_csv"):
            table = _unescape_formulas(table, [f.name for f in table.schema
                                               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)])
    else:
        if meta and meta.get("columns"):
            check_columns(pq.read_schema(source).names, meta)
            if hasattr(source, "seek"):
                source.seek(0)
        table = pq.read_table(source, columns=columns)
    check_row_count(table.num_rows, meta)
    if rows is not None:
        table = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
    if meta is None:
        return table.to_pandas()
    return arrow_to_frame(table, meta)


def arrow_to_frame(table, meta: dict) -> pd.DataFrame:
    """An Arrow table of a written table (or a subset of its columns / rows) as pandas, typed by ``meta``."""
    metas = {m["name"]: m for m in meta["columns"]}
    columns = {}
    for i, name in enumerate(table.column_names):
        column_meta = metas.get(name, {})
        target = column_meta.get("dtype")
        mapper = None
        if column_meta.get("codec") is None and target:
            try:
                pandas_dtype = pd.api.types.pandas_dtype(target)
            except TypeError:
                pandas_dtype = None
            if isinstance(pandas_dtype, pd.api.extensions.ExtensionDtype) and hasattr(pandas_dtype, "__from_arrow__"):
                mapper = {table.column(i).type: pandas_dtype}.get
        if column_meta.get("codec") == "category":
            columns[name] = _category_from_arrow(table.column(i), column_meta, name)
            continue
        series = table.column(i).to_pandas(types_mapper=mapper)
        series.name = name
        columns[name] = _restore(series, column_meta)
    frame = pd.DataFrame(columns, columns=table.column_names)
    return frame


#: Rows (or bytes) a merged rows part buffers before it writes them as one row group.
_MERGE_GROUP_ROWS = 1 << 20
_MERGE_GROUP_BYTES = 1 << 28


@contextlib.contextmanager
def _reading_part(meta: dict):
    """Errors raised while reading a saved part (not while casting or writing) as :class:`DamagedTable` naming
    it, in one line."""
    import pyarrow as pa

    try:
        yield
    except (OSError, pa.ArrowException) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DamagedTable(f"'{meta.get('file', 'a rows part')}' cannot be read ({detail}): the file was damaged "
                           "or edited") from None


def write_parts_as_one(parts, sink, tail=None) -> dict:
    """Write the input rows of a ``rows`` table's parquet parts, then ``tail``, as one parquet file.

    The rows are copied row group by row group (bounded memory), without a pandas round trip.

    Parameters
    ----------
    parts : list of (dict, binary file)
        Each part's description and its open file, as :func:`read_row_parts` takes them; the first part's
        description gives the columns, their records and their Arrow types, which every part shares (an update
        writes a part only when its columns are typed so).
    sink : binary file
        Where to write.
    tail : pyarrow.Table, optional
        Rows written after the parts (an update's new rows, as :func:`to_arrow` gives them).

    Returns
    -------
    dict
        The file's description, as :func:`write_arrow` returns it.

    Raises
    ------
    DamagedTable
        A part holds another number of rows, or other columns, than its description records, or cannot be read.
    pyarrow.ArrowInvalid
        A part's columns cannot be cast to the first part's types.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    template = parts[0][0]
    names = list(template["input_columns"])
    records = {m["name"]: m for m in template["columns"]}
    written = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(template["schema"])))
    schema = pa.schema([written.field(name) for name in names])
    buffered, total = [], 0
    with pq.ParquetWriter(sink, schema) as writer:
        def add(table, force=False):
            if table is not None and table.num_rows:
                buffered.append(table.select(names).cast(schema))
            if buffered and (force or sum(t.num_rows for t in buffered) >= _MERGE_GROUP_ROWS
                             or sum(t.nbytes for t in buffered) >= _MERGE_GROUP_BYTES):
                writer.write_table(pa.concat_tables(buffered), row_group_size=_MERGE_GROUP_ROWS)
                buffered.clear()

        for meta, source in parts:
            source.seek(0)
            with _reading_part(meta):
                reader = pq.ParquetFile(source)
            check_columns(reader.schema_arrow.names, meta)
            n = 0
            for group in range(reader.num_row_groups):
                with _reading_part(meta):
                    table = reader.read_row_group(group, columns=names)
                n += table.num_rows
                add(table)
            check_row_count(n, meta)
            total += n
        if tail is not None:
            total += tail.num_rows
        add(tail, force=True)
    return {"format": "parquet", "rows": int(total), "columns": [records[name] for name in names],
            "schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"), "safe_csv": False}


def read_row_parts(parts, *, columns=None, rows=None) -> pd.DataFrame:
    """The input columns of a ``rows`` table kept as parquet parts, concatenated in order.

    Parameters
    ----------
    parts : list of (dict, source)
        Each part's description (as :func:`write_table` returns it, plus
        ``input_columns``: the part's columns that hold input rows) and its
        file (a path or a seekable binary file).
    columns : list of str, optional
        Read only these input columns.
    rows : int array, optional
        Positions (in the concatenated table, sorted) of the rows to keep.

    Returns
    -------
    pandas.DataFrame
        Typed as each part was written (the parts of one table share their column types).
    """
    frames, offset = [], 0
    rows = None if rows is None else np.asarray(rows, dtype=np.int64)
    for meta, source in parts:
        names = list(meta["input_columns"]) if columns is None else [c for c in columns if c in meta["input_columns"]]
        n = int(meta["rows"])
        take = None
        if rows is not None:
            lo, hi = np.searchsorted(rows, [offset, offset + n])
            take = rows[lo:hi] - offset
        if hasattr(source, "seek"):
            source.seek(0)
        if take is not None and take.shape[0] == 0 and meta.get("format") == "parquet":
            import pyarrow.parquet as pq  # no row wanted: the part's columns, typed, without reading its rows

            frames.append(arrow_to_frame(pq.read_schema(source).empty_table().select(names), meta))
        else:
            frames.append(read_table_file(source, meta, columns=names, rows=take))
        offset += n
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)
