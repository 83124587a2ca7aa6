"""Reading a results folder: its tables, its checked ``summary.json``, and the warm start it holds.

:func:`read_tables` reads what :meth:`bayes_annot.fit.FitResult.save` wrote
(CSV or parquet tables with their manifest, ``summary.json``, ``posterior.nc``)
through one handle on the folder, so a concurrent writer never gives a mix of
two fits; :func:`bayes_annot.fit.load` makes a result of them.
:func:`validate_saved_summary` and :func:`read_saved` check a folder before it
seeds a warm start (:func:`load_start`, ``bayes-annot fit LOG --warm-start DIR``)
or an update; every defect is an :class:`~bayes_annot.errors.InputError` naming
the folder and the field or value.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .data import REASONS
from .decide import parse_filter
from .errors import FitWarning, InputError
from .incremental import n_tastes_of
from .likelihood import Priors
from .spec import VARIANTS as _VARIANTS
from .tables import OUTPUT_COLUMNS, DamagedTable, check_columns, check_row_count, read_row_parts, read_table_file
from .casual import effects_start
from .style import delta_from_summary
from .validation import check_number, check_priors

__all__ = ["SavedTables", "read_tables", "UpdateFolder", "read_update_folder", "read_saved", "checked_saved", "validate_saved_summary", "load_start",
           "start_of", "bool_column"]


def bool_column(values) -> np.ndarray:
    """A yes/no column of a result as booleans: ``bool`` cells as they are, text cells (a CSV's, or
    a legacy folder's) true when they read ``true`` or ``1`` (any case, spaces trimmed)."""
    series = pd.Series(values)
    if series.dtype == bool:
        return series.to_numpy()
    return series.astype(str).str.strip().str.lower().isin(["true", "1"]).to_numpy()


def _renamed_key(entries: dict, old: str, new: str) -> dict:
    """``entries`` with the key ``old`` renamed ``new`` in place of it (unchanged when ``new`` is there or ``old`` is not)."""
    if old not in entries or new in entries:
        return entries
    return {new if key == old else key: value for key, value in entries.items()}


def upgraded_summary(summary):
    """A parsed ``summary.json`` in today's names: the behaviour variant was ``model`` before it was
    ``variant`` (at the top level and in ``settings``); folders written then still load, update and warm-start."""
    if not isinstance(summary, dict):
        return summary
    summary = _renamed_key(summary, "model", "variant")
    if isinstance(summary.get("settings"), dict):
        summary["settings"] = _renamed_key(summary["settings"], "model", "variant")
    return summary


@dataclass
class SavedTables:
    """What a results folder holds: the three tables, the summary, the posterior (or ``None``) and the manifest."""

    users: pd.DataFrame
    models: pd.DataFrame
    rows: pd.DataFrame
    summary: dict
    idata: object | None = None
    manifest: dict | None = None


def _read_checked(directory: str | Path, reader):
    """``reader`` applied to a results folder read consistently (:func:`bayes_annot.outdir.read_consistently`);
    a folder without results, or one no parser can read, is an :class:`~bayes_annot.errors.InputError`."""
    from .outdir import read_consistently

    directory = Path(directory)
    if not (directory / "summary.json").exists():
        raise InputError(f"'{directory}' holds no bayes_annot results (summary.json missing)")
    try:
        return read_consistently(directory, reader)
    except DamagedTable as exc:
        raise InputError(f"results folder '{directory}' is damaged: {exc}") from None
    except InputError:
        raise
    except Exception as exc:  # any parser failure is a corrupt folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"results folder '{directory}' cannot be read: {first}") from exc


def read_tables(directory: str | Path, *, posterior: bool = True) -> SavedTables:
    """The tables of a results folder, each with the types it was written with (see :mod:`bayes_annot.tables`).

    ``posterior=False`` leaves ``posterior.nc`` unread (``idata`` is ``None``): an update and a warm start
    take only the tables and the summary, so a damaged posterior does not stop them.

    Raises :class:`~bayes_annot.errors.InputError` when the folder holds no
    results, an interrupted write, or a file no parser can read (naming ``posterior.nc`` when it is that one).
    """
    return _read_checked(directory, lambda folder: _read_folder(folder, posterior=posterior))


def _legacy_table(folder, name: str) -> pd.DataFrame:
    """A table of a folder written before manifests (CSV; ids and rows as text)."""
    dtype = str if name == "rows" else {"user": str, "model": str}
    with folder.open(f"{name}.csv") as handle:
        frame = pd.read_csv(handle, dtype=dtype, keep_default_na=False, na_values=[""])
    for column, kind in (("kept", bool), ("uninformative", bool), ("weight", float)):
        if column in frame and frame[column].dtype != kind:
            frame[column] = bool_column(frame[column]) if kind is bool else frame[column].astype(float)
    return frame


def _read_folder(folder, *, posterior: bool = True) -> SavedTables:
    manifest = folder.manifest
    if not folder.exists("summary.json"):
        # the path held a result when read_tables looked: the folder pinned here was replaced (and is
        # being removed) by a concurrent writer, so read_consistently reads the new one
        raise FileNotFoundError(2, "no such file", "summary.json")
    if manifest is not None and not manifest.get("complete", False):
        raise InputError(f"'{folder.path}' holds an incomplete result (a write was interrupted)")
    tables = {}
    for name in ("users", "models", "rows"):
        if manifest is not None and name in manifest.get("tables", {}):
            meta = manifest["tables"][name]
            if meta.get("layout") == "parts":
                tables[name] = _read_parts(folder, meta)
                continue
            with folder.open(meta["file"]) as handle:
                tables[name] = read_table_file(handle, meta)
        else:
            tables[name] = _legacy_table(folder, name)
    try:
        summary = upgraded_summary(json.loads(folder.read_text("summary.json")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else exc.reason
        raise InputError(f"results folder '{folder.path}': summary.json is not valid JSON ({detail})") from None
    if not isinstance(summary, dict):
        kind = "a list" if isinstance(summary, list) else type(summary).__name__
        raise InputError(f"results folder '{folder.path}': summary.json must be a JSON object, got {kind}")
    idata = None
    if posterior and folder.exists("posterior.nc"):
        import arviz as az

        try:
            idata = az.from_netcdf(folder.os_path("posterior.nc"))
            idata.load() if hasattr(idata, "load") else None
        except FileNotFoundError:
            raise  # replaced while being read: read_consistently reads the new folder
        except Exception as exc:  # noqa: BLE001 - any netCDF / HDF5 failure is a damaged file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"results folder '{folder.path}': posterior.nc cannot be read ({first}); an update "
                             "(--update) does not need it, load() and the report do") from None
    return SavedTables(tables["users"], tables["models"], tables["rows"], summary, idata, manifest)


def _read_parts(folder, meta: dict) -> pd.DataFrame:
    """A ``rows`` table kept as parts (an update's layout): the input rows of every part, in order, then the
    output columns (``kept, reason, weight``), which an update rewrites for every row, from their own file."""
    frames = []
    for part in meta["parts"]:  # one open file at a time: a folder of many parts stays within the open-file limit
        with folder.open(part["file"]) as handle:
            frames.append(read_row_parts([(part, handle)]))
    rows = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if meta["outputs"].get("by") == "user":
        outputs = _outputs_by_user(folder, meta["outputs"])
    else:  # an update written before the codes files: the outputs of every row
        with folder.open(meta["outputs"]["file"]) as handle:
            outputs = read_table_file(handle, meta["outputs"])
    if len(outputs) != len(rows):
        raise InputError(f"'{folder.path}': the rows table's parts hold {len(rows)} rows, its outputs {len(outputs)}")
    for column in outputs.columns:
        rows[column] = outputs[column].to_numpy() if not isinstance(outputs[column].dtype, pd.CategoricalDtype) \
            else outputs[column].array
    return rows


def _outputs_by_user(folder, meta: dict) -> pd.DataFrame:
    """``kept, reason, weight`` of every row from the outputs per user and each row's user and reason in the
    codes files (see :func:`bayes_annot.update_state.user_codes`); a damaged file raises (``load()`` makes it
    one line naming the folder)."""
    import pyarrow.parquet as pq

    from .update_state import read_codes, user_codes

    with folder.open(meta["file"]) as handle:
        per_user = pq.read_table(handle, columns=["code", "weight"])
    by_user = per_user.column("code").to_numpy().astype(np.int8, copy=False)
    weight = per_user.column("weight").to_numpy().astype(np.float64, copy=False)
    users, reasons = [], []
    for entry in meta.get("codes") or []:
        if not isinstance(entry.get("file"), str) or entry["file"] != os.path.basename(entry["file"]):
            raise ValueError("the list of codes files is damaged")
        with folder.open(entry["file"]) as handle:
            rows = read_codes(handle)
        user, reason_code = rows["user"], rows["reason_code"]
        if user.shape != reason_code.shape or user.shape[0] != int(entry["rows"]) or (user.shape[0] and (
                int(user.min()) < 0 or int(user.max()) >= by_user.shape[0]
                or int(reason_code.min()) < 0 or int(reason_code.max()) >= len(REASONS))):
            raise ValueError(f"{entry['file']} does not hold the codes of the rows")
        users.append(user)
        reasons.append(reason_code)
    user = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    reason_code = np.concatenate(reasons) if reasons else np.zeros(0, dtype=np.int8)
    kept, code, weight = user_codes(user, reason_code, by_user, weight)
    return pd.DataFrame({"kept": kept, "reason": pd.Categorical.from_codes(code, categories=list(REASONS)),
                         "weight": weight})


@dataclass
class UpdateFolder:
    """What a fast update reads from a parquet folder with a side file: the small tables, the summary,
    the manifest, the side file (open), and the rows table's parts (open, not parsed)."""

    users: pd.DataFrame  # its ids only (the "user" column)
    models: pd.DataFrame
    summary: dict
    manifest: dict
    state_file: object
    parts: list  # (part description, open binary file)
    rows_meta: dict
    dir_fd: int | None = None  # the folder, open (the parts are linked by name from it)
    path: Path | None = None  # the folder's path (named in errors)

    def __post_init__(self):
        import weakref

        self._handles = [h for _, h in self.parts] + [self.state_file]
        self._finalizer = weakref.finalize(self, _close_all, self._handles, self.dir_fd)

    def open(self, name: str):
        """Open the folder's file ``name`` (a plain file name) for reading; closed with the folder."""
        if not isinstance(name, str) or name != os.path.basename(name) or name in ("", ".", ".."):
            raise OSError(2, "not a file of the folder", name)
        if self.dir_fd is None:
            raise OSError(2, "the folder is not open", name)
        from .outdir import open_inside

        handle = os.fdopen(open_inside(self.dir_fd, name, self.path), "rb")
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Close the open files."""
        self._finalizer()


def _close_all(handles, dir_fd=None) -> None:
    for handle in handles:
        handle.close()
    if dir_fd is not None:
        os.close(dir_fd)


def read_update_folder(directory: str | Path) -> UpdateFolder | None:
    """The parts of a parquet result folder a fast update needs, or ``None`` when the folder has no
    side file (written before it, as CSV, or by a fit that keeps no EM block): then update from its rows.

    The rows are not read: the parts stay open (so a concurrent writer replacing the folder changes
    nothing) for the duplicate check and to be linked into the updated folder.
    """
    return _read_checked(directory, _read_update_folder)


def _read_update_folder(folder) -> UpdateFolder | None:
    manifest = folder.manifest
    if manifest is None or not isinstance(manifest.get("update_state"), dict) or manifest.get("format") != "parquet":
        return None
    if not manifest.get("complete", False):
        raise InputError(f"'{folder.path}' holds an incomplete result (a write was interrupted)")
    tables = manifest.get("tables", {})
    if not all(name in tables for name in ("users", "models", "rows")):
        return None
    small = {}
    for name in ("users", "models"):
        # of the users (10^5-10^6 rows) an update needs only the ids: the fit's estimates come from the EM
        names = [m.get("name") for m in tables[name].get("columns", [])]
        columns = ["user"] if name == "users" and "user" in names and tables[name].get("format") == "parquet" else None
        with folder.open(tables[name]["file"]) as handle:
            small[name] = read_table_file(handle, tables[name], columns=columns)
    try:
        summary = upgraded_summary(json.loads(folder.read_text("summary.json")))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the update from the rows reads it again and names the fault
    if not isinstance(summary, dict):
        return None
    rows_meta = tables["rows"]
    if rows_meta.get("layout") == "parts":
        descriptions = rows_meta["parts"]
    else:  # a single rows table: one part, its output columns set aside
        descriptions = [dict(rows_meta, input_columns=[m["name"] for m in rows_meta["columns"]
                                                      if m["name"] not in OUTPUT_COLUMNS])]
    state_name = manifest["update_state"].get("file")
    if not isinstance(state_name, str) or not folder.exists(state_name):  # a cache only: update from the rows
        warnings.warn(f"results folder '{folder.path}': {state_name} cannot be used (it is missing); updating from the "
                      "saved rows instead",
                      FitWarning, stacklevel=2)
        return None
    from .outdir import open_file_limit, parts_fit_open

    codes = rows_meta.get("outputs", {}).get("codes") if rows_meta.get("layout") == "parts" else None
    n_parts = max(len(descriptions), len(codes) if isinstance(codes, list) else 0)
    if not parts_fit_open(n_parts):  # an update would run out of open files: one from the rows reads them in turn
        warnings.warn(f"results folder '{folder.path}': its {n_parts} rows parts are more than this process may keep "
                      f"open (open-file limit {open_file_limit()}); updating from the saved rows instead (the update "
                      "writes them as one table)", FitWarning, stacklevel=2)
        return None
    state_file = folder.open(state_name)
    parts = []
    try:
        for part in descriptions:
            parts.append((part, folder.open(part["file"])))
            if part.get("format") == "parquet":  # the footer only: a cut or edited part fails here, not mid-update
                import pyarrow.parquet as pq

                footer = pq.ParquetFile(parts[-1][1])
                check_row_count(footer.metadata.num_rows, part)
                check_columns(footer.schema_arrow.names, part)
    except BaseException as exc:
        state_file.close()
        for _, handle in parts:
            handle.close()
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):  # as above, found on the way
            warnings.warn(f"results folder '{folder.path}': its rows parts cannot all be kept open ({exc.strerror}); "
                          "updating from the saved rows instead (the update writes them as one table)",
                          FitWarning, stacklevel=2)
            return None
        raise
    return UpdateFolder(small["users"], small["models"], summary, manifest, state_file, parts, rows_meta,
                        os.dup(folder.fd), folder.path)


_REQUIRED_SUMMARY = ("variant", "strengths", "parameters", "settings")


# parameters.NAME -> bounds of check_number (absent or null is allowed)
_PARAMETER_BOUNDS = {
    "pi": {"low": 0.0, "high": 1.0, "open_low": True, "open_high": True},
    "q": {"low": 0.0, "high": 1.0, "open_low": True, "open_high": True},
    "mean_quality": {"low": 0.0, "high": 1.0},
    "m": {},
    "tau": {"low": 0.0, "open_low": True},
}


_SETTING_BOUNDS = {
    "tol": {"low": 0.0},
    "max_iter": {"low": 1, "integer": True},
    "seed": {"low": 0, "integer": True},
    "q": {"low": 0.0, "high": 1.0, "open_low": True, "open_high": True, "optional": True},
    "mu": {"low": 0.0, "high": 1.0, "open_low": True, "open_high": True, "optional": True},
}


def validate_saved_summary(summary, directory: str | Path) -> None:
    """Check a results folder's parsed ``summary.json`` before it seeds a warm start or an update.

    Raises :class:`~bayes_annot.errors.InputError` naming the folder and the
    field at fault: not a JSON object, a missing key (``variant``, or ``model`` in folders written before the rename;
    ``strengths``, ``parameters``, ``settings``), an unknown variant, a
    parameter outside its range (``pi``, ``q`` in (0, 1), ``tau`` > 0, ...),
    a setting :func:`bayes_annot.fit` would reject (``tol``, ``max_iter``,
    ``q``, ``mu``, ``filter``, column names) or unknown / invalid priors.
    """
    where = f"results folder '{directory}': summary.json"

    def bad(message: str):
        raise InputError(f"{where} {message}")

    def number(value, name, bounds):
        try:
            check_number(value, name, **bounds)
        except InputError as exc:
            bad(str(exc))

    if not isinstance(summary, dict):
        bad(f"must be a JSON object, got {'a list' if isinstance(summary, list) else type(summary).__name__}")
    missing = [key for key in _REQUIRED_SUMMARY if key not in summary]
    if missing:
        bad(f"has no {', '.join(repr(k) for k in missing)}: not a complete bayes_annot summary")
    if summary["variant"] not in _VARIANTS:
        bad(f"variant must be one of {', '.join(_VARIANTS)}, got {summary['variant']!r}")
    if not isinstance(summary["strengths"], str):
        bad(f"strengths must be text ('learned' or 'known (...)'), got {summary['strengths']!r}")
    for key in ("parameters", "settings"):
        if not isinstance(summary[key], dict):
            bad(f"{key} must be a JSON object, got {type(summary[key]).__name__}")
    for name, bounds in _PARAMETER_BOUNDS.items():
        number(summary["parameters"].get(name), f"parameters.{name}", {**bounds, "optional": True})
    settings = summary["settings"]
    for name, bounds in _SETTING_BOUNDS.items():
        if name in settings:
            number(settings[name], f"settings.{name}", bounds)
    if "variant" in settings and settings["variant"] not in _VARIANTS:
        bad(f"settings.variant must be one of {', '.join(_VARIANTS)}, got {settings['variant']!r}")
    if "filter" in settings:
        if not isinstance(settings["filter"], str):
            bad(f"settings.filter must be text, got {settings['filter']!r}")
        try:
            parse_filter(settings["filter"])
        except InputError as exc:
            bad(f"settings.filter: {exc}")
    for name, kinds in (("use_p_a", (bool,)), ("strong_model", (str, type(None)))):
        if name in settings and not isinstance(settings[name], kinds):
            bad(f"settings.{name} has the wrong type: {settings[name]!r}")
    columns = settings.get("columns", {})
    if not isinstance(columns, dict):
        bad(f"settings.columns must be a JSON object of column names, got {columns!r}")
    for role, name in columns.items():
        if not (isinstance(name, str) or (name is None and role in ("user", "p_a")) or (name is False and role == "p_a")):
            bad(f"settings.columns.{role} must be a column name, got {name!r}")
    priors = settings.get("priors", {})
    if not isinstance(priors, dict):
        bad(f"settings.priors must be a JSON object, got {priors!r}")
    known = {f.name for f in fields(Priors)}
    unknown = [key for key in priors if key not in known]
    if unknown:
        bad(f"settings.priors has unknown key(s) {', '.join(repr(k) for k in unknown)}; known: {', '.join(sorted(known))}")
    try:
        check_priors(Priors(**priors), "settings.priors")
    except InputError as exc:
        bad(str(exc))


def _checked_ids(table: pd.DataFrame, directory: Path, name: str, id_column: str) -> pd.DataFrame:
    """A loaded ``users`` / ``models`` table whose ids are present and unique (else InputError)."""
    where = f"results folder '{directory}': {name}"
    if id_column not in table.columns:
        raise InputError(f"{where} has no '{id_column}' column")
    ids = table[id_column]
    if ids.isna().any():
        raise InputError(f"{where} has a missing {id_column} id at row {int(np.flatnonzero(ids.isna())[0]) + 1}")
    table = table.copy()
    table[id_column] = ids.astype(str).str.strip()
    if table[id_column].duplicated().any():
        dup = table[id_column][table[id_column].duplicated()].iloc[0]
        raise InputError(f"{where}: {id_column} '{dup}' appears more than once")
    return table


def _saved_numbers(table: pd.DataFrame, column: str, directory: Path, name: str, id_column: str,
                   low: float | None = None, high: float | None = None) -> np.ndarray:
    """A numeric column of a saved table: every non-empty cell a finite number in [low, high] (else InputError)."""
    where = f"results folder '{directory}': {name}"
    if column not in table.columns:
        raise InputError(f"{where} has no '{column}' column")
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    text = np.isnan(values) & table[column].notna().to_numpy()
    outside = np.isinf(values)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    for mask in (text, outside):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            value = table[column].iloc[row]
            label = f"{column} of {id_column} '{table[id_column].iloc[row]}'"
            if mask is text:
                raise InputError(f"{where} {label} is {value!r}, not a number")
            check_number(float(values[row]), f"{where} {label}", low=low, high=high)  # raises, naming the value
    return values


def read_saved(directory: str | Path):
    """Read and check what a warm start or an update takes from a results folder.

    Returns ``(saved, strengths)``: the folder's tables (:func:`read_tables` (csv or parquet tables), its ``summary.json`` checked by
    :func:`validate_saved_summary`, and the learned strengths by model
    (``None`` when the strengths were not learned or a cell is empty). Every
    defect is an :class:`~bayes_annot.errors.InputError` naming the folder and
    the field or value: invalid JSON, a strength that is text or not finite, a
    model listed twice, a missing file or column.
    """
    directory = Path(directory)
    return checked_saved(read_tables(directory, posterior=False), directory)  # tables and summary only


def checked_saved(saved: SavedTables, directory: str | Path):
    """:func:`read_saved` of tables already read from ``directory`` (by :func:`read_tables`).

    Parameters
    ----------
    saved : SavedTables
    directory : str or Path
        The folder they were read from (named in errors).

    Returns
    -------
    (SavedTables, pandas.Series or None)
        As :func:`read_saved`.
    """
    directory = Path(directory)
    validate_saved_summary(saved.summary, directory)
    strengths = None
    if saved.summary["strengths"] == "learned":
        models = _checked_ids(saved.models, directory, "models", "model")
        values = _saved_numbers(models, "strength", directory, "models", "model")
        if not np.isnan(values).any():
            strengths = pd.Series(values, index=models["model"].to_numpy())
    return saved, strengths


def load_start(directory: str | Path) -> dict:
    """Label-keyed warm start read from a saved output folder.

    Reads ``summary.json`` (``pi``, ``q``, ``m``, ``tau``) and ``models.csv``
    (strengths by model, when they were learned; per-class strengths with taste classes). A saved
    folder holds no encoded arrays, so this is a parameter-only warm start:
    fit the *full* log (old + new rows) with it, after :func:`align_start`.

    Returns
    -------
    dict
        ``pi``, ``q``, ``m``, ``tau`` (floats or ``None``), ``strengths``
        (:class:`pandas.Series` by model, or absent), ``variant`` (the variant saved).
    """
    saved, strengths = read_saved(directory)  # csv or parquet tables, read from one consistent folder
    return start_of(saved, strengths, directory)


def start_of(saved: SavedTables, strengths, directory: str | Path) -> dict:
    """:func:`load_start` of a folder already read and checked.

    Parameters
    ----------
    saved, strengths
        What :func:`checked_saved` (or :func:`read_saved`) returns.
    directory : str or Path
        The folder they were read from (named in errors).

    Returns
    -------
    dict
        As :func:`load_start`.
    """
    directory = Path(directory)
    summary = saved.summary
    params = summary["parameters"]
    start = {key: params.get(key) for key in ("pi", "q", "m", "tau", "tie_nu", "casual_tie_rate")}
    start["variant"] = summary["variant"]
    if strengths is not None:
        start["strengths"] = strengths
    n_tastes = n_tastes_of(summary)
    if n_tastes > 1 and strengths is not None:  # per-class strengths and shares: the update's warm start
        models = _checked_ids(saved.models, directory, "models", "model")
        table = np.column_stack([_saved_numbers(models, f"strength_taste_{k}", directory, "models", "model")
                                 for k in range(1, n_tastes + 1)])
        shares = [params.get(f"share_taste_{k}") for k in range(1, n_tastes + 1)]
        for k, share in enumerate(shares, start=1):
            check_number(share, f"results folder '{directory}': summary.json parameters.share_taste_{k}", low=0.0,
                         high=1.0, open_low=True, open_high=True)
        if not np.isnan(table).any():
            start["tastes"] = {"strengths": pd.DataFrame(table, index=models["model"].to_numpy()),
                               "shares": np.asarray(shares, dtype=float), "q": params.get("q"),
                               "tie_nu": params.get("tie_nu"), "casual_tie_rate": params.get("casual_tie_rate")}
    try:
        start["casual_g"] = effects_start(summary)
        start["style_delta"] = delta_from_summary(summary)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"results folder '{directory}': summary.json casual_effects or style_effects is malformed "
                         f"({exc})") from None
    if start.get("tastes") is not None:
        start["tastes"]["casual_g"] = start["casual_g"]
    return start

