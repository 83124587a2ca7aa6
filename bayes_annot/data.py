"""Reading, validating and encoding comparison-mode logs.

One row of input is one annotation: a ``user`` saw the responses of
``model_a`` (shown first) and ``model_b`` and picked a ``winner``. This module
turns such a table into integer-coded arrays for the engines while keeping the
original labels, and accounts for every input row: a row is either *usable*
(it enters the likelihood) or carries the reason it does not (``tie``,
``same_model``). Anything that cannot be interpreted raises
:class:`~bayes_annot.errors.InputError` with a one-line message naming the
column, value and row.

Documented normalisations
-------------------------
* ids (user, model) are compared as text with surrounding whitespace removed,
  so ``1`` and ``"1"`` and ``" 1 "`` are the same user; whole-number floats
  (``1.0``, which is how a column of integers with gaps often arrives) are read
  as integers;
* ``winner`` values are matched case-insensitively with surrounding and
  repeated inner whitespace removed;
* ``p_a`` of exactly 0 or 1 is clipped to ``[1e-6, 1 - 1e-6]`` with a warning.
"""

from __future__ import annotations

import codecs
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .readahead import _arrow_csv, _check_csv_header, _prefetched
from .readahead import file_sha256, is_glob, prefetch  # noqa: F401  (re-exported: the names data.* had)

__all__ = [
    "WINNER_VALUES",
    "USER_ALIASES",
    "REASONS",
    "ColumnMap",
    "PreparedData",
    "read_table",
    "named_index_as_columns",
    "prepare",
    "file_sha256",
    "CONVERSATIONS",
    "CASUAL_COVARIATES",
    "first_message",
    "last_message",
    "response_lengths",
    "casual_covariates",
    "casual_input_columns",
    "covariate_values",
    "parse_casual_covariates",
]

#: Accepted ``winner`` values (after normalisation) and what they mean.
WINNER_VALUES: dict[str, str] = {
    "model_a": "a",
    "a": "a",
    "left": "a",
    "model_b": "b",
    "b": "b",
    "right": "b",
    "tie": "tie",
    "tie (bothbad)": "tie",
    "tie(bothbad)": "tie",
}

#: Every reason a row of ``rows.csv`` can carry, in code order (``FitResult.rows["reason"]`` categories).
REASONS: dict[str, str] = {
    "ok": "kept: enters the likelihood and its user passed the filter",
    "tie": "the user declared a tie: never a DPO pair (in the likelihood unless ties are ignored)",
    "same_model": "both responses came from the same model; carries no information",
    "user_low_quality": "its user did not pass the filter",
    "no_verdict": "in the likelihood, but its labels cannot decide whether its user passes the filter "
    "(kept or dropped by the no_verdict policy; see bayes_annot.decide)",
    "invalid_winner": "dropped (on_bad_row='drop'): the winner value is missing or not a known value",
    "invalid_p_a": "dropped (on_bad_row='drop'): p_a is missing, not a number or outside [0, 1]",
}

#: Reasons of rows dropped as invalid (``on_bad_row="drop"``), by ``PreparedData.reason_code``.
DROP_REASONS: dict[int, str] = {5: "invalid_winner", 6: "invalid_p_a"}  # codes index list(REASONS)

#: What ``on_bad_row`` accepts: stop at the first invalid row, or drop invalid rows with a reason.
ON_BAD_ROW = ("error", "drop")

#: The command-line flag that names the column of each role.
ROLE_FLAGS: dict[str, str] = {
    "user": "--user", "model_a": "--model-a", "model_b": "--model-b", "winner": "--winner", "p_a": "--p-a",
}

#: Parts of column names that suggest a role (for "closest" hints of a missing column).
ROLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "user": ("annotator", "rater", "worker", "judge", "user", "labeler", "labeller"),
    "model_a": ("left", "first", "model_1", "model1", "modela"),
    "model_b": ("right", "second", "model_2", "model2", "modelb"),
    "winner": ("choice", "preference", "label", "vote", "winner", "chosen", "pick"),
    "p_a": ("p_a", "prob", "mu"),
}

P_A_CLIP = 1e-6
#: Column names taken as the user column, in order, when no ``user`` role is given: the first present.
USER_ALIASES: tuple[str, ...] = ("user", "judge", "worker", "annotator")


@dataclass(frozen=True)
class ColumnMap:
    """Names of the input columns that play each role.

    ``user=None`` means: the first of ``user``, ``judge``, ``worker``,
    ``annotator`` present (Arena's battles name the user ``judge``). ``p_a=None`` means: use a column called ``p_a`` if present;
    ``p_a=False``: no known-probability column at all. ``winner_values`` maps
    further ``winner`` values onto ``model_a``, ``model_b`` or ``tie`` (e.g.
    ``{"left": "model_a", "right": "model_b", "same": "tie"}``); they are
    matched like the built-in values (case and surrounding whitespace ignored).
    """

    user: str | None = None
    model_a: str = "model_a"
    model_b: str = "model_b"
    winner: str = "winner"
    p_a: str | bool | None = None
    winner_values: dict | None = None

    def id_roles(self) -> tuple[str, ...]:
        """The columns whose values are ids (the user, both models): an update compares them as ids."""
        users = USER_ALIASES if self.user is None else (self.user,)
        return (*users, self.model_a, self.model_b)


@dataclass
class PreparedData:
    """A validated, integer-coded comparison log.

    Attributes
    ----------
    frame : pandas.DataFrame
        The input rows, unchanged, in input order.
    columns : dict
        Resolved role -> column name.
    user_labels, model_labels : numpy.ndarray of str
        Original ids, sorted; codes index into these.
    user, model_a, model_b : numpy.ndarray of int32
        Codes per input row.
    choice_a : numpy.ndarray of int8
        1 when ``model_a`` was chosen, 0 when ``model_b`` was, -1 for a tie.
    p_a : numpy.ndarray of float or None
        Known attentive probability of picking ``model_a`` per row.
    reason_code : numpy.ndarray of int8
        0 for usable rows, 1 for a tie, 2 for a same-model pair, 4 for an
        invalid winner and 5 for an invalid ``p_a`` (rows dropped with
        ``on_bad_row="drop"``; 3 is ``user_low_quality``, decided by the fit);
        :attr:`reason` gives the text.
    casual_names : tuple of str
        The casual covariates (set by :func:`casual_covariates`; empty: none).
    casual_x : numpy.ndarray or None
        ``(n_rows, m)`` their values, a-vs-b contrasts.
    """

    frame: pd.DataFrame
    columns: dict[str, str | None]
    user_labels: np.ndarray
    model_labels: np.ndarray
    user: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    choice_a: np.ndarray
    p_a: np.ndarray | None
    reason_code: np.ndarray
    notes: list[str] = field(default_factory=list)
    casual_names: tuple = ()
    casual_x: np.ndarray | None = None

    #: Text of each ``reason_code``.
    REASON_TEXT = ("", "tie", "same_model", "user_low_quality", "no_verdict", "invalid_winner", "invalid_p_a")

    def __post_init__(self):
        self._usable = self.reason_code == 0
        self._label_text = {}

    def set_label_text(self, users: np.ndarray, models: np.ndarray) -> None:
        """Record the vocabularies' numpy text form (see :meth:`label_text`) when the caller has it."""
        self._label_text.update(user=users, model=models)

    def label_array(self, kind: str):
        """``user_labels`` (``kind="user"``) or ``model_labels`` as the pandas array a table column holds (cached).

        Building a column from an object array of text converts it (to
        pandas' string dtype); caching the converted array makes every table
        of a result, and of later incremental updates, reuse one conversion.
        """
        key = f"{kind}_array"
        if key not in self._label_text:
            labels = self.user_labels if kind == "user" else self.model_labels
            self._label_text[key] = pd.Series(labels).array
        return self._label_text[key]

    def label_text(self, kind: str) -> np.ndarray:
        """``user_labels`` (``kind="user"``) or ``model_labels`` as a numpy text array (cached)."""
        if kind not in self._label_text:
            labels = self.user_labels if kind == "user" else self.model_labels
            self._label_text[kind] = np.asarray(labels, dtype=object).astype(str)
        return self._label_text[kind]

    @property
    def reason(self) -> np.ndarray:
        """``""`` for usable rows, else ``"tie"`` / ``"same_model"`` / ``"invalid_..."`` (object array)."""
        return np.array(self.REASON_TEXT, dtype=object)[self.reason_code]

    @property
    def n_rows(self) -> int:
        return int(self.user.shape[0])

    @property
    def has_p_a(self) -> bool:
        """Whether the log has a known attentive probability column."""
        return self.p_a is not None

    @property
    def n_users(self) -> int:
        return int(self.user_labels.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.model_labels.shape[0])

    @property
    def usable(self) -> np.ndarray:
        """Boolean mask of rows that enter the likelihood."""
        return self._usable

    def counts(self) -> dict[str, int]:
        """Row, tie, same-model, user and model counts (the ``counts`` of ``summary.json``).

        With rows dropped as invalid (``on_bad_row="drop"``) also
        ``dropped_rows`` and one count per reason (``invalid_winner``, ...).
        """
        if "_reason_counts" not in self.__dict__:
            # the arrays never change; one count per code (bincount would first widen 10^7 codes to intp)
            self._reason_counts = np.array([np.count_nonzero(self.reason_code == code) for code in range(len(REASONS))])
        by_reason = self._reason_counts
        out = {
            "rows": self.n_rows,
            "rows_in_likelihood": int(by_reason[0]),
            "ties": int(by_reason[1]),
            "same_model": int(by_reason[2]),
            "users": self.n_users,
            "models": self.n_models,
        }
        dropped = {name: int(by_reason[code]) for code, name in DROP_REASONS.items() if by_reason[code]}
        if dropped:
            out["dropped_rows"] = sum(dropped.values())
            out.update(dropped)
        return out


# --------------------------------------------------------------------------- reading


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a comparison log from ``.csv``, ``.parquet``, ``.json`` or ``.jsonl``.

    CSV cells are read as text (ids keep leading zeros, nothing is guessed);
    ``.json`` is a list of records (Chatbot Arena's battle dump) or a
    column-oriented object; ``.jsonl`` is one record per line.

    Raises
    ------
    InputError
        The file is missing, is a directory, has an unknown suffix or cannot be
        parsed; the message names the file (and the line for JSONL).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file '{path}' does not exist")
    if path.is_dir():
        raise InputError(
            f"input '{path}' is a directory with no .parquet files; expected a .csv, .parquet, .json or .jsonl file, "
            "or a folder / glob of parquet files"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = _read_csv(path)
        elif suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise InputError(
                    "reading parquet needs pyarrow: pip install 'bayes_annot[parquet]'"
                ) from exc
            frame = pd.read_parquet(path)
        elif suffix == ".json":
            with open(path, encoding="utf-8-sig") as handle:
                payload = json.load(handle)
            if isinstance(payload, list):
                bad = next((i for i, record in enumerate(payload) if not isinstance(record, dict)), None)
                if bad is not None:  # a list of numbers or of lists: pandas would make columns 0, 1, ...
                    kind = {list: "a list", str: "text", bool: "a boolean", type(None): "null"}.get(
                        type(payload[bad]), "a number")
                    raise InputError(f"'{path}': expected a JSON list of records (objects), item {bad + 1} is {kind}")
            elif not isinstance(payload, dict) or not all(isinstance(v, (list, dict)) for v in payload.values()):
                raise InputError(f"'{path}': expected a JSON list of records or an object of columns")
            frame = pd.DataFrame(payload)
        elif suffix == ".jsonl" and (frame := _read_jsonl_arrow(path)) is not None:
            pass
        elif suffix == ".jsonl":
            records = []
            with open(path, encoding="utf-8-sig") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"'{path}' line {number}: not valid JSON ({exc.msg})") from exc
                    if not isinstance(record, dict):
                        raise InputError(f"'{path}' line {number}: expected a JSON object per line")
                    records.append(record)
            frame = pd.DataFrame.from_records(records)
        else:
            raise InputError(
                f"input '{path}': unknown file type '{suffix}', expected .csv, .parquet, .json or .jsonl"
            )
    except InputError:
        raise
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"'{path}' is not UTF-8 text ({_utf8_error(path) or exc.reason})") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"input '{path}' is empty") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read '{path}': {message}") from exc
    except Exception as exc:  # pyarrow errors and other parser failures
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read '{path}': {message}") from exc
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV log with every cell as text (pyarrow: several times faster than pandas' parser).

    Empty cells, quoted or not, are missing values; nothing else is (``NA``,
    ``null`` and ``nan`` stay text); quoted line breaks are kept.
    """
    import pyarrow as pa

    _CODES_AHEAD.clear()  # at most one read's codes are kept, until prepare takes them
    ahead = _prefetched(path, "csv", pop=True)
    if ahead is not None:
        table, codes = ahead
        frame = table.to_pandas()
        for name, (indices, dictionary) in codes.items():
            column = frame[name].array.__arrow_array__()
            _CODES_AHEAD[id(column)] = (column, indices, dictionary)
        return frame
    header = _check_csv_header(path)
    if not header:
        raise InputError(f"input '{path}' is empty")
    names = [name if name != "" else f"Unnamed: {i}" for i, name in enumerate(header)]
    try:
        table = _arrow_csv(path, names)
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc) or "UTF-8" in str(exc):
            raise InputError(f"'{path}' is not UTF-8 text ({_utf8_error(path) or 'invalid UTF-8'})") from exc
        raise
    table = table.slice(1)  # the header row (read as data, so a header with a line break parses as the csv module read it)
    return table.to_pandas()


def _read_jsonl_arrow(path: Path) -> pd.DataFrame | None:
    """A JSONL log read by pyarrow; ``None`` when pyarrow cannot (mixed types in a field, a bad line):
    the line-by-line reader then reads it, or names the line at fault."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    try:
        table = pa_json.read_json(path, read_options=pa_json.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if any(pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type) for f in table.schema):
        return None  # lists or objects in cells (Arena conversations): the line-by-line reader keeps them as Python lists/dicts
    for column in table.columns:
        if pa.types.is_floating(column.type):  # integers too large for int64 became floats, which merge nearby ids
            values = column.to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                if bool(np.any(np.abs(values) >= 2.0**53)):
                    return None  # the line-by-line reader keeps them as exact Python integers
    return table.to_pandas()


def _utf8_error(path: Path) -> str | None:
    """Where a file stops being UTF-8: ``"<reason> 0x.. at byte N of the file, line L; ..."``.

    Parsers report the position within their read buffer; this scans the file
    with an incremental decoder to give the offset in the file.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file before ``block``
    newlines = 0  # newlines before ``block``
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the previous block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                line = newlines + exc.object[: exc.start].count(b"\n") + 1
                return f"{exc.reason} 0x{exc.object[exc.start]:02x} at byte {at} of the file, line {line}; bytes count from 0"
            if not block:
                return None
            offset += len(block)
            newlines += block.count(b"\n")


# --------------------------------------------------------------------------- encoding


def _closest_column(role: str, wanted: str, candidates: list) -> str | None:
    """The present column most like the one a role needs: a known synonym, else the closest spelling."""
    import difflib

    text = {c: str(c).lower() for c in candidates}
    by_synonym = [c for c in candidates if any(word in text[c] for word in ROLE_SYNONYMS.get(role, ()))]
    if by_synonym:  # several: the one spelled most like the wanted name
        return max(by_synonym, key=lambda c: difflib.SequenceMatcher(None, text[c], str(wanted).lower()).ratio())
    close = difflib.get_close_matches(str(wanted).lower(), list(text.values()), n=1, cutoff=0.6)
    return next((c for c in candidates if text[c] == close[0]), None) if close else None


def _resolve_columns(frame: pd.DataFrame, columns: ColumnMap) -> dict[str, str | None]:
    """Role -> column name; every missing role is reported at once, with its flag and the closest present column."""
    present = list(frame.columns)
    resolved: dict[str, str | None] = {}
    if columns.user is not None:
        resolved["user"] = columns.user
    else:
        resolved["user"] = next((c for c in USER_ALIASES if c in present), "user")
    resolved["model_a"] = columns.model_a
    resolved["model_b"] = columns.model_b
    resolved["winner"] = columns.winner
    missing = [role for role in ("user", "model_a", "model_b", "winner") if resolved[role] not in present]
    if columns.p_a not in (None, False) and columns.p_a not in present:
        missing.append("p_a")
        resolved["p_a"] = columns.p_a
    if missing:
        taken = {resolved[r] for r in resolved if r not in missing}
        free = [c for c in present if c not in taken]
        parts = []
        for role in missing:
            name = resolved[role]
            if role == "user" and columns.user is None:
                looked = "no column " + "/".join(f"'{c}'" for c in USER_ALIASES)
            else:
                looked = f"no column '{name}'"
            closest = _closest_column(role, name, free)
            hint = f"; closest: '{closest}'" if closest is not None else ""
            parts.append(f"{role} ({looked}; map with {ROLE_FLAGS[role]} COL{hint})")
        raise InputError(
            f"missing columns: {', '.join(parts)}; columns present: {', '.join(map(str, present)) or 'none'}"
        )
    if columns.p_a is False:  # explicitly no p_a column (a column named p_a is then ordinary data)
        resolved["p_a"] = None
    elif columns.p_a is not None:
        resolved["p_a"] = columns.p_a
    else:
        resolved["p_a"] = "p_a" if "p_a" in present else None
    first_role: dict = {}
    for role in ("user", "model_a", "model_b", "winner", "p_a"):  # one column, one role (--model-b model_a: no fit)
        name = resolved[role]
        if name is not None and name in first_role:
            other = first_role[name]
            raise InputError(f"column '{name}' is given as both {other} ({ROLE_FLAGS[other]}) and {role} "
                             f"({ROLE_FLAGS[role]}): each role needs its own column")
        first_role.setdefault(name, role)
    return resolved


def _as_text(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value).strip()


_strip = getattr(np, "strings", np.char).strip  # numpy >= 2: vectorised in C


def _uniques_as_text(uniques) -> tuple[np.ndarray, np.ndarray]:
    """Text form of factorized unique values (vectorised) and which of them are missing."""
    values = np.asarray(uniques)
    if values.dtype.kind in "iub":
        return values.astype(str), np.zeros(len(values), dtype=bool)
    if values.dtype.kind == "f":
        missing = np.isnan(values)
        with np.errstate(invalid="ignore"):
            integral = ~missing & (np.mod(values, 1) == 0)
        small = integral & (np.abs(values) < 2.0**63)  # whole numbers int64 holds; larger ones as Python ints
        text = np.where(small, np.where(small, values, 0).astype(np.int64).astype(str), values.astype(str)).astype(object)
        text[integral & ~small] = [str(int(v)) for v in values[integral & ~small]]  # 1e20 and 2e20 stay apart
        return text.astype(str), missing
    if values.dtype == object:
        missing = pd.isna(values)
        if pd.api.types.infer_dtype(values, skipna=True) == "string":  # all text: vectorised strip
            text = _strip(np.where(missing, "", values).astype(str))
            return text, missing | (text == "")
    series = pd.Series(values, dtype=object)
    missing = series.isna().to_numpy()
    if not series[~missing].map(type).isin([str]).all():
        text = np.array(["" if m else _as_text(v) for v, m in zip(values, missing)], dtype=str)
    else:
        text = series.where(~missing, "").astype(str).str.strip().to_numpy(dtype=str)
    missing = missing | (text == "")
    return text, missing


_NESTED_KIND = {list: "list", tuple: "list", np.ndarray: "list", dict: "dict", set: "set", frozenset: "set"}


#: id of a column's Arrow data -> (that data, its codes, its dictionary): encoded by :func:`readahead.prefetch`
#: while the command line started, taken (once) by :func:`_factorize`.
_CODES_AHEAD: dict = {}


def _codes_ahead(series: pd.Series) -> tuple[np.ndarray, pd.Index] | None:
    """``pd.factorize(series)`` from the codes :func:`readahead.prefetch` computed for the very Arrow data of
    ``series`` (the same codes and uniques: pandas factorizes an Arrow column by the same dictionary encoding),
    or ``None``."""
    if not isinstance(series.array, pd.arrays.ArrowExtensionArray):  # its Arrow data, not a copy
        return None
    column = series.array.__arrow_array__()
    ahead = _CODES_AHEAD.get(id(column))
    if ahead is None or ahead[0] is not column:
        return None
    del _CODES_AHEAD[id(ahead[0])]
    _, indices, dictionary = ahead
    codes = indices.to_numpy(zero_copy_only=False, writable=True).astype(np.intp, copy=False)
    return codes, pd.Index(pd.array(dictionary, dtype=series.dtype))


def _factorize(series: pd.Series, name: str, sort: bool = False) -> tuple[np.ndarray, object]:
    """``pd.factorize`` of a column; a list, dict or set in a cell (JSON, parquet) is an InputError naming its row."""
    if _CODES_AHEAD and not sort and (ahead := _codes_ahead(series)) is not None:
        return ahead
    try:
        return pd.factorize(series, use_na_sentinel=True, sort=sort)
    except TypeError:  # unhashable cells
        values = series.to_numpy(dtype=object)
        for row, value in enumerate(values):
            kind = next((k for t, k in _NESTED_KIND.items() if isinstance(value, t)), None)
            if kind is not None:
                shown = repr(value.tolist() if isinstance(value, np.ndarray) else value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise InputError(
                    f"column '{name}' has a {kind} value at input row {row + 1} ({shown}); expected a single text or number"
                ) from None
        raise


def _encode_ids(series_list: list[pd.Series], names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Encode one or more id columns against a shared sorted vocabulary of text ids."""
    raw_codes = []
    texts = []
    for series, name in zip(series_list, names):
        # categorical ids: factorize in category order (an integer sort), often already the text order
        categorical = isinstance(series.dtype, pd.CategoricalDtype)
        codes, uniques = _factorize(series, name, sort=categorical)
        text, missing_unique = _uniques_as_text(uniques)
        bad = codes < 0
        if missing_unique.any():
            bad |= missing_unique[np.where(codes < 0, 0, codes)] & (codes >= 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"column '{name}' has {int(bad.sum())} missing value(s), first at input row {row + 1}"
            )
        raw_codes.append(codes)
        texts.append(text)
    merged = np.concatenate(texts)
    if len(texts) == 1 and merged.shape[0] > 0 and bool(np.all(merged[1:] > merged[:-1])):
        vocabulary, inverse = merged, np.arange(merged.shape[0])  # already sorted and unique
    else:
        vocabulary, inverse = np.unique(merged, return_inverse=True)
    encoded = []
    offset = 0
    for codes, text in zip(raw_codes, texts):
        remap = inverse[offset : offset + len(text)].astype(np.int32)
        offset += len(text)
        encoded.append(remap[codes])
    return encoded, vocabulary


def _normalise_winner(value) -> str:
    return " ".join(_as_text(value).lower().split())


def winner_table(winner_values: dict | None = None) -> dict[str, str]:
    """Normalised winner value -> ``a`` / ``b`` / ``tie``: the built-in values plus ``winner_values``.

    ``winner_values`` maps input values onto ``model_a``, ``model_b`` or
    ``tie`` (any built-in value is accepted as a target).

    Raises
    ------
    InputError
        A target that is not a known winner value.
    """
    table = dict(WINNER_VALUES)
    for value, target in (winner_values or {}).items():
        meaning = WINNER_VALUES.get(_normalise_winner(target))
        if meaning is None:
            raise InputError(
                f"winner value '{value}' is mapped to '{target}'; expected model_a, model_b or tie"
            )
        table[_normalise_winner(value)] = meaning
    return table


def parse_winner_values(text: str) -> dict[str, str]:
    """``"A=model_a,B=model_b,Tie=tie"`` -> ``{"A": "model_a", "B": "model_b", "Tie": "tie"}`` (the CLI's ``--winner-values``)."""
    out = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        value, sep, target = item.partition("=")
        if not sep or not value.strip():
            raise InputError(f"--winner-values expects VALUE=model_a|model_b|tie pairs separated by commas, got '{item.strip()}'")
        out[value.strip()] = target.strip()
    winner_table(out)  # the targets are checked here, before any input is read
    return out


def _encode_winner(series: pd.Series, name: str, winner_values: dict | None = None, on_bad_row: str = "error") -> np.ndarray:
    """1 (model_a), 0 (model_b) or -1 (tie) per row; with ``on_bad_row="drop"``, -2 for a missing or unknown value."""
    table = winner_table(winner_values)
    codes, uniques = _factorize(series, name)
    drop = on_bad_row == "drop"
    if (codes < 0).any() and not drop:
        row = int(np.flatnonzero(codes < 0)[0])
        raise InputError(
            f"column '{name}' has a missing value at input row {row + 1} (drop such rows with --on-bad-row drop)"
        )
    normalised = [_normalise_winner(u) for u in uniques]
    unknown = [(str(u), i) for i, (u, n) in enumerate(zip(uniques, normalised)) if n not in table]
    if unknown and not drop:
        first_rows = [int(np.flatnonzero(codes == i)[0]) + 1 for _, i in unknown]
        listed = ", ".join(f"'{v}'" for v, _ in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        extra = sorted({v for v in (winner_values or {})})
        accepted = "model_a, model_b, tie, tie (bothbad), a, b, left or right" + (
            f" (and {', '.join(repr(v) for v in extra)})" if extra else ""
        )
        raise InputError(
            f"column '{name}' has unknown value(s) {listed}{more} (first at input row {min(first_rows)}); "
            f"expected {accepted}; map them with --winner-values 'VALUE=model_a,...' or drop such rows with --on-bad-row drop"
        )
    value_of = {"a": 1, "b": 0, "tie": -1}
    mapped = np.array([value_of[table[n]] if n in table else -2 for n in normalised] + [-2], dtype=np.int8)
    return mapped[codes]  # code -1 (missing) picks the trailing -2


def _encode_p_a(series: pd.Series, name: str, needed: np.ndarray, on_bad_row: str = "error"):
    """Known attentive probabilities (clipped); with ``on_bad_row="drop"`` also the mask of invalid needed rows."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    non_numeric = np.isnan(values) & ~series.isna().to_numpy() & needed
    missing = np.isnan(values) & needed
    outside = ((values < 0) | (values > 1)) & needed
    if on_bad_row == "drop":
        invalid = missing | outside
        needed = needed & ~invalid
    else:
        invalid = None
        if non_numeric.any():
            row = int(np.flatnonzero(non_numeric)[0])
            raise InputError(f"column '{name}' has a non-numeric value '{series.iloc[row]}' at input row {row + 1}")
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(f"column '{name}' has a missing value at input row {row + 1}")
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise InputError(f"column '{name}' value {values[row]:g} at input row {row + 1} is outside [0, 1]")
    edge = ((values <= 0) | (values >= 1)) & needed
    if edge.any():
        warnings.warn(
            f"column '{name}': {int(edge.sum())} value(s) of exactly 0 or 1 clipped to "
            f"[{P_A_CLIP:g}, {1 - P_A_CLIP:g}] (first at input row {int(np.flatnonzero(edge)[0]) + 1})",
            UserWarning,
            stacklevel=3,
        )
    clipped = np.clip(np.where(np.isnan(values) | (invalid if invalid is not None else False), 0.5, values),
                      P_A_CLIP, 1 - P_A_CLIP)
    return clipped if invalid is None else (clipped, invalid)


def dropped_rows_message(reason_code: np.ndarray) -> str | None:
    """The warning for rows dropped as invalid: how many, per reason, and the first input row of each."""
    parts = []
    for code, name in DROP_REASONS.items():
        hits = np.flatnonzero(reason_code == code)
        if hits.size:
            parts.append(f"{hits.size} {name} (first at input row {int(hits[0]) + 1})")
    if not parts:
        return None
    total = int(np.isin(reason_code, list(DROP_REASONS)).sum())
    return f"dropped {total} invalid row(s): {', '.join(parts)}; they stay in rows.csv with that reason"


def named_index_as_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its named index levels (``df.set_index("vote_id")``) turned into its first columns.

    A named index is data (a vote id, a timestamp): it is kept as a column of the rows and reads back with
    them. An unnamed index (the row positions, or labels pandas gives) is dropped, as ``to_csv(index=False)``
    does. An index level that repeats the column of its name (``set_index("user", drop=False)``) is
    dropped; one named as a column but holding other values is refused (one line naming it).

    Examples
    --------
    >>> import pandas as pd
    >>> named_index_as_columns(pd.DataFrame({"user": ["u"]}, index=pd.Index(["v1"], name="vote"))).columns.tolist()
    ['vote', 'user']
    """
    names = [name for name in frame.index.names if name is not None]
    if not names:
        return frame
    # a level that repeats its column (``df.set_index("user", drop=False)``) holds nothing new: dropped
    same = [name for name in names if name in frame.columns and names.count(name) == 1
            and np.array_equal(frame.index.get_level_values(name).to_numpy(dtype=object),
                               frame[name].to_numpy(dtype=object))]
    if same:
        frame = frame.reset_index(level=same, drop=True)
        names = [name for name in names if name not in same]
        if not names:
            return frame
    for name in names:
        if name in frame.columns or names.count(name) > 1:
            where = "one of its columns" if name in frame.columns else "another level of the index"
            raise InputError(f"the DataFrame's index is named '{name}', as {where}: rename the index "
                             "(df.index.names) or drop it (df.reset_index(drop=True))")
    return frame.reset_index(level=names)


def prepare(frame: pd.DataFrame, columns: ColumnMap | None = None, on_bad_row: str = "error") -> PreparedData:
    """Validate and encode a comparison log.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per annotation; extra columns are carried through untouched, and so is a named index, as
        the first columns (:func:`named_index_as_columns`).
    columns : ColumnMap, optional
        Which columns hold user, models, winner and (optionally) ``p_a``, and
        extra ``winner_values``.
    on_bad_row : {"error", "drop"}
        ``"error"`` (default): a missing or unknown winner, or a missing,
        non-numeric or out-of-range ``p_a``, raises :class:`InputError`.
        ``"drop"``: such rows stay in the data with reason ``invalid_winner``
        or ``invalid_p_a`` (not in the likelihood, counted in ``counts()``)
        and a warning gives their number. Missing user or model ids always
        raise.

    Returns
    -------
    PreparedData

    Raises
    ------
    InputError
        Empty input, missing required columns (all listed, each with its flag
        and the closest present column), missing ids, unknown winner values
        (all listed), or a ``p_a`` that is not a probability.

    Examples
    --------
    >>> import pandas as pd
    >>> from bayes_annot.data import prepare
    >>> log = pd.DataFrame({"user": ["u1", "u1"], "model_a": ["x", "y"],
    ...                     "model_b": ["y", "y"], "winner": ["model_a", "tie"]})
    >>> prepare(log).reason.tolist()
    ['', 'same_model']
    """
    columns = columns or ColumnMap()
    if on_bad_row not in ON_BAD_ROW:
        raise InputError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame or a file path, got {type(frame).__name__}")
    if frame.shape[0] == 0:
        raise InputError("input is empty: no rows")
    frame = named_index_as_columns(frame)
    if frame.columns.duplicated().any():
        dup = frame.columns[frame.columns.duplicated()][0]
        raise InputError(f"column '{dup}' appears more than once")
    resolved = _resolve_columns(frame, columns)
    frame = frame.reset_index(drop=True)

    (user,), user_labels = _encode_ids([frame[resolved["user"]]], [resolved["user"]])
    (model_a, model_b), model_labels = _encode_ids(
        [frame[resolved["model_a"]], frame[resolved["model_b"]]], [resolved["model_a"], resolved["model_b"]]
    )
    choice_a = _encode_winner(frame[resolved["winner"]], resolved["winner"], columns.winner_values, on_bad_row)

    reason_code = np.where(
        choice_a == -2, 5, np.where(model_a == model_b, 2, np.where(choice_a < 0, 1, 0))
    ).astype(np.int8)
    choice_a[choice_a == -2] = -1  # an invalid winner is no choice (like a tie); its reason says why
    p_a = None
    if resolved["p_a"] is not None:
        p_a = _encode_p_a(frame[resolved["p_a"]], resolved["p_a"], reason_code == 0, on_bad_row)
        if on_bad_row == "drop":
            p_a, invalid_p_a = p_a
            reason_code[invalid_p_a] = 6
    notes = []
    message = dropped_rows_message(reason_code) if on_bad_row == "drop" else None
    if message is not None:
        notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    if len(model_labels) < 2:
        raise InputError(
            f"only one model ('{model_labels[0]}') in columns '{resolved['model_a']}'/'{resolved['model_b']}': nothing to compare"
        )
    prepared = PreparedData(
        frame=frame,
        columns=resolved,
        user_labels=np.asarray(user_labels, dtype=object),
        model_labels=np.asarray(model_labels, dtype=object),
        user=user.astype(np.int32),
        model_a=model_a.astype(np.int32),
        model_b=model_b.astype(np.int32),
        choice_a=choice_a,
        p_a=p_a,
        reason_code=reason_code,
        notes=notes,
    )
    prepared.set_label_text(user_labels, model_labels)
    return prepared


# --------------------------------------------------------------------------- casual covariates

#: Chatbot Arena's conversation columns (lists of ``{role, content}`` messages, or their JSON).
CONVERSATIONS = ("conversation_a", "conversation_b")

#: What ``casual_covariates`` accepts besides a list of column names.
CASUAL_COVARIATES = ("auto", "none")

#: Name of the default casual covariate: ``log(len(response_a) / len(response_b))``.
LENGTH_COVARIATE = "log_length_ratio"


def _messages(value, column: str, row: int) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"column '{column}' in row {row} is not a list of messages (invalid JSON)") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(
            f"column '{column}' in row {row} is not a list of {{role, content}} messages "
            f"(got {type(value).__name__})"
        )
    return list(value)


def _content(message) -> str:
    content = message.get("content")
    if isinstance(content, np.ndarray):
        content = content.tolist()
    if isinstance(content, (list, tuple)):  # multi-part content: keep the text parts
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def first_message(value, role: str, column: str, row: int) -> str:
    """Content of the first ``role`` message of an Arena conversation (a list of ``{role, content}`` or its JSON)."""
    for message in _messages(value, column, row):
        if isinstance(message, dict) and message.get("role") == role:
            return _content(message)
    raise InputError(f"column '{column}' in row {row} has no '{role}' message")


def last_message(value, role: str, column: str, row: int) -> str:
    """Content of the last ``role`` message of an Arena conversation (e.g. the model's response)."""
    for message in reversed(_messages(value, column, row)):
        if isinstance(message, dict) and message.get("role") == role:
            return _content(message)
    raise InputError(f"column '{column}' in row {row} has no '{role}' message")



def response_lengths(frame: pd.DataFrame, response_a: str = "response_a", response_b: str = "response_b"):
    """Character lengths of the two responses of every row, or ``None`` when the log has no response text.

    The text is taken from ``response_a`` / ``response_b``, else from the last assistant message of
    Arena's ``conversation_a`` / ``conversation_b``. A missing text has length ``-1`` (unknown).
    """
    if response_a in frame.columns and response_b in frame.columns:
        def lengths(col):
            series = frame[col]
            if series.dtype != object:  # e.g. numbers read from a file, or pandas' string dtype
                series = series.astype("string")
            out = series.str.len().to_numpy(dtype=float, na_value=-1.0)
            return np.where(np.isnan(out), -1.0, out)  # a non-text cell (object column): unknown
        return lengths(response_a), lengths(response_b)
    if all(c in frame.columns for c in CONVERSATIONS):
        out = []
        for col in CONVERSATIONS:
            values = frame[col].to_numpy(dtype=object)
            lengths = np.empty(values.shape[0])
            for i, v in enumerate(values):
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    lengths[i] = -1.0
                    continue
                lengths[i] = len(last_message(v, "assistant", col, i + 1))
            out.append(lengths)
        return out[0], out[1]
    return None


def parse_casual_covariates(value) -> tuple[str, ...] | str:
    """``"auto"``, ``"none"`` or a tuple of column names, from a setting (a string ``"COL,COL"`` or a list)."""
    if value is None:
        return "none"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in CASUAL_COVARIATES:
            return text.lower()
        names = tuple(part.strip() for part in text.split(","))
    else:
        names = tuple(str(part).strip() for part in value)
    if not names or any(not n for n in names):
        raise InputError(f"casual_covariates must be 'auto', 'none' or column names, got {value!r}")
    return names


def casual_input_columns(columns, which="auto") -> tuple[tuple[str, ...], list[str]]:
    """The covariates ``which`` gives for a log with these ``columns``, and the input columns they read.

    ``"auto"``: :data:`LENGTH_COVARIATE` when the response texts are present (``response_a`` /
    ``response_b``, else Arena's ``conversation_a`` / ``conversation_b``), else none; ``"none"``:
    none; names: those (``log_length_ratio`` reads the texts unless a column has that name).
    """
    which = parse_casual_covariates(which)
    columns = list(columns)
    texts = (["response_a", "response_b"] if {"response_a", "response_b"} <= set(columns)
             else list(CONVERSATIONS) if set(CONVERSATIONS) <= set(columns) else None)
    if which == "none":
        return (), []
    if which == "auto":
        return ((LENGTH_COVARIATE,), texts) if texts else ((), [])
    needed = []
    for name in which:
        if name == LENGTH_COVARIATE and name not in columns:
            if texts is None:
                raise InputError(
                    "casual covariate 'log_length_ratio' needs the response texts: columns 'response_a' and "
                    "'response_b' (or Arena's 'conversation_a' and 'conversation_b')"
                )
            needed += texts
        elif name not in columns:
            close = _closest_column("casual covariate", name, columns)
            hint = f" (closest: '{close}')" if close else ""
            raise InputError(f"casual covariate column '{name}' is not in the input{hint}")
        else:
            needed.append(name)
    return tuple(which), list(dict.fromkeys(needed))


def covariate_values(frame: pd.DataFrame, names, needed: np.ndarray) -> np.ndarray | None:
    """``(n_rows, m)`` values of the covariates ``names`` (from :func:`casual_input_columns`) on ``frame``.

    A named column must hold a number on every ``needed`` row (the rows that enter the likelihood);
    elsewhere a bad value reads as 0. The length ratio is ``log(len(a) / len(b))`` of the response texts
    (characters), 0 where a text is missing or empty.

    Raises
    ------
    InputError
        A missing / non-numeric value on a needed row (the column and the first such input row).
    """
    if not len(names):
        return None
    columns = []
    for name in names:
        if name == LENGTH_COVARIATE and name not in frame.columns:
            len_a, len_b = response_lengths(frame)
            known = (len_a > 0) & (len_b > 0)
            ratio = np.zeros(len_a.shape[0])
            ratio[known] = np.log(len_a[known] / len_b[known])
            columns.append(ratio)
            continue
        series = frame[name]
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(values) & needed
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raw = series.iloc[row]
            what = "a missing value" if pd.isna(raw) else f"a non-numeric value '{raw}'"
            raise InputError(f"casual covariate column '{name}' has {what} at input row {row + 1}")
        columns.append(np.where(np.isfinite(values), values, 0.0))
    return np.column_stack(columns)


def casual_covariates(prepared: PreparedData, which="auto") -> tuple[tuple[str, ...], np.ndarray | None]:
    """The casual covariates of every row: names and an ``(n_rows, m)`` float array of a-vs-b contrasts.

    ``which`` is ``"auto"`` (the log length ratio :data:`LENGTH_COVARIATE`
    ``log(len(response_a) / len(response_b))`` when the response texts are present, else none),
    ``"none"``, or column names (``"log_length_ratio"`` among them names the length ratio). A named
    column must hold numbers on every row that enters the likelihood, and must be a contrast: swapping
    the two responses negates it (e.g. a difference ``a - b``, or a log ratio). Rows where a response
    text is missing get a length ratio of 0 (no contrast).

    Raises
    ------
    InputError
        An unknown column, or a missing / non-numeric value (the column and the first such input row).
    """
    names, _ = casual_input_columns(prepared.frame.columns, which)
    if not names:
        return (), None
    return names, covariate_values(prepared.frame, names, prepared.usable)
