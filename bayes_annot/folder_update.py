"""Updating a saved results folder with new rows: ``bayes-annot fit NEW --update DIR --out DIR``.

A parquet folder written from an in-memory EM fit keeps its integer-coded log and EM block in a side
file (:mod:`bayes_annot.update_state`): :func:`update_saved` then encodes only the new rows, merges
them into the saved block as :meth:`bayes_annot.fit.FitResult.update` does for a live result, and the
result writes its ``rows`` as the saved parquet parts (linked unchanged) plus one part of new rows (runs of
parts of one size merged into one: :func:`bayes_annot.outdir.compaction_start`).
Any other folder (CSV, older, or a side file that cannot serve it) holds every input row but no EM
block, so :func:`update_saved` refits the saved rows plus the new ones, warm-started from the folder's
parameters (:func:`bayes_annot.saved.load_start`), with the saved settings. Both give the same tables.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .data import ColumnMap, PreparedData, is_glob, named_index_as_columns, prepare, read_table
from .casual import DEFAULT_BINS, design_from_summary
from .style import style_from_summary
from .errors import FitWarning, InputError, take_renamed
from .fit import FitResult, fit, fit_prepared
from .incremental import MergedPreparedData, align_start, n_tastes_of
from .likelihood import Priors
from .provenance import carried_provenance, drop_duplicates_of, input_info, provenance_entry, set_provenance
from .saved import checked_saved, read_tables, read_update_folder, start_of
from .tables import read_row_parts
from .ties import resolve_ties

__all__ = ["update_saved"]


_SAVED_SETTINGS = ("variant", "filter", "use_p_a", "mu", "strong_model", "q", "tol", "max_iter", "no_verdict",
                   "winner_values", "on_bad_row", "ties")


def update_saved(
    directory: str | Path,
    new_rows,
    columns: dict | None = None,
    *,
    on_duplicate: str = "skip",
    row_id=None,
    record_paths: bool = False,
    **overrides,
):
    """Refit a saved fit's rows plus new rows, warm-started from the saved folder (``fit NEW --update DIR``).

    The saved ``rows.csv`` holds every input row of the previous fit, so the
    merged log is those rows (their input columns, read as text) followed by
    ``new_rows``; it is fitted by EM with the saved settings (variant, columns,
    filter, ``q``, ``mu``, priors, ``tol``), starting from the saved
    parameters, strengths and (continuous) per-user quality. The result is the
    fit of old + new rows, as :meth:`~bayes_annot.fit.FitResult.update` gives for a live result. A
    parquet folder with a side file (``update-state.npz``) is updated from its coded log and EM block
    without reading its rows (a damaged or foreign side file: a :class:`~bayes_annot.errors.FitWarning`,
    then the update from the rows); other folders have their rows encoded again.

    Parameters
    ----------
    directory : str or Path
        A folder written by ``bayes-annot fit`` / :meth:`FitResult.save`.
    new_rows : pandas.DataFrame or path
        The new annotations (a single file), with the previous fit's id columns.
    columns : dict, optional
        Role (``user``, ``model_a``, ``model_b``, ``winner``, ``p_a``) -> column
        name in ``new_rows`` when it differs from the saved fit's.
    on_duplicate : {"skip", "error", "keep"}
        New rows already in the saved rows: skipped with a warning (default),
        refused (:class:`~bayes_annot.errors.InputError`, nothing fitted) or
        appended again; as in :meth:`~bayes_annot.fit.FitResult.update`.
    row_id : str or list, optional
        Id column(s) that identify a row, as in :meth:`~bayes_annot.fit.FitResult.update`.
    record_paths : bool
        Record the absolute path of a ``new_rows`` file (by default its name and SHA-256 only).
    **overrides
        Any of ``variant, filter, use_p_a, mu, strong_model, q, tol, max_iter`` (``model``: the deprecated
        alias of ``variant``, a :class:`FutureWarning`); and ``accelerate`` (SQUAREM steps in the EM;
        default on: a warm start converges in fewer passes with them).

    Returns
    -------
    FitResult
        ``summary["provenance"]`` is the saved list plus this update.
    """
    overrides = take_renamed(overrides, "model", "variant", "update_saved()")
    unknown = set(overrides) - set(_SAVED_SETTINGS) - {"accelerate"}
    if unknown:
        raise TypeError(f"update_saved() got unexpected setting(s): {', '.join(sorted(unknown))}")
    directory = Path(directory)
    if not (directory / "summary.json").exists():
        raise InputError(f"'{directory}' holds no bayes_annot results to update (summary.json missing)")
    info = input_info(None, record_paths)
    if isinstance(new_rows, (str, Path)):
        if Path(new_rows).is_dir() or is_glob(new_rows):
            raise InputError(f"--update reads one file of new rows (.csv, .parquet, .json, .jsonl), got '{new_rows}'")
        frame = read_table(new_rows)
        info = input_info(new_rows, record_paths)
        new_rows = frame
    elif isinstance(new_rows, pd.DataFrame):
        new_rows = named_index_as_columns(new_rows)  # a named index is a column of the rows, as in fit()
    fast = _fast_update(directory, new_rows, columns, on_duplicate, row_id, record_paths, info, overrides)
    if fast is not None:
        fast._update_base = (os.path.abspath(directory), fast._rows_source["folder"].manifest.get("fit_id"))
        return fast
    # read once; a corrupt or crafted folder is an InputError before anything is fitted (but not posterior.nc, which
    # an update neither uses nor keeps: a damaged one does not stop it)
    tables = read_tables(directory, posterior=False)
    saved = FitResult.from_tables(tables.users, tables.models, tables.rows, tables.summary, tables.idata, tables.manifest)
    start = dict(start_of(*checked_saved(tables, directory), directory), by_label=True)  # what start=directory reads
    summary = saved.summary
    saved_settings = summary.get("settings", {})
    settings, role_map, p_a, new_rows, _ = _settings_and_roles(summary, new_rows, columns, overrides)
    old_rows = saved.input_rows()
    new_rows, counts = drop_duplicates_of(old_rows, new_rows, row_id=row_id, on_duplicate=on_duplicate,
                                          user=role_map.user, id_roles=role_map.id_roles())
    entries = carried_provenance(summary, record_paths) + [provenance_entry(info, **counts)]
    priors = Priors(**saved_settings["priors"]) if isinstance(saved_settings.get("priors"), dict) else None
    merged = pd.concat([old_rows, new_rows], ignore_index=True) if len(new_rows) else old_rows
    # the saved fit's casual covariates with its bins (none: the model without covariates)
    settings["casual_covariates"] = design_from_summary(summary) or "none"
    settings["style_covariates"] = style_from_summary(summary) or "none"  # and its style term's cells' values
    result = fit(
        merged, method="em", user=role_map.user, model_a=role_map.model_a, model_b=role_map.model_b,
        winner=role_map.winner, p_a=p_a, priors=priors, start=start, tastes=n_tastes_of(summary), **settings,
    )
    set_provenance(result, info, entries)
    # saving it back into ``directory`` checks that no other run replaced the folder meanwhile (its rows would be lost)
    result._update_base = (os.path.abspath(directory), (tables.manifest or {}).get("fit_id"))
    return result


def _settings_and_roles(summary: dict, new_rows: pd.DataFrame, columns, overrides: dict):
    """The update's settings (the saved ones, then ``overrides``), its column roles, the new rows under the
    saved column names, and the new rows prepared (validated alone: errors name their own row numbers)."""
    saved_settings = summary.get("settings", {})
    saved_columns = dict(saved_settings.get("columns") or {})
    settings = {key: saved_settings[key] for key in _SAVED_SETTINGS if key in saved_settings}
    # a warm start is near the optimum, where plain EM's steps shrink slowest relative to what is left: SQUAREM
    # (its steps kept only when the objective does not fall) stops in fewer passes (8 -> 5 at 10^7 rows)
    settings["accelerate"] = True
    settings.update(overrides)
    use_p_a = bool(settings.get("use_p_a", True))
    p_a = saved_columns.get("p_a") if use_p_a and saved_columns.get("p_a") else False
    # the new rows' columns under the saved names
    renames = {}
    for role, name in (columns or {}).items():
        target = saved_columns.get(role) or {"p_a": "p_a"}.get(role, role)
        if name != target:
            if name not in new_rows.columns:
                raise InputError(f"new rows have no column '{name}' (given for {role})")
            renames[name] = target
    new_rows = new_rows.rename(columns=renames)
    role_map = ColumnMap(
        user=saved_columns.get("user"), model_a=saved_columns.get("model_a", "model_a"),
        model_b=saved_columns.get("model_b", "model_b"), winner=saved_columns.get("winner", "winner"), p_a=p_a,
        winner_values=settings.get("winner_values"),
    )
    try:
        prepared = prepare(new_rows, role_map, on_bad_row=settings.get("on_bad_row") or "error")
    except InputError as exc:
        raise InputError(f"new rows: {exc}") from None
    return settings, role_map, p_a, new_rows, prepared


# --------------------------------------------------------------------------- the fast path (a side file)


class _StoredPreparedData(PreparedData):
    """Rows of a saved folder's coded log (from its side file and codes files) whose input rows are read from
    the folder's rows parts on first use."""

    def _get_frame(self):
        if self.__dict__.get("_frame") is None:
            start, stop = self._row_range
            whole = start == 0 and stop == sum(int(part["rows"]) for part, _ in self._row_parts)
            rows = read_row_parts(self._row_parts, rows=None if whole else np.arange(start, stop))
            self.__dict__["_frame"] = rows.rename(columns=self._renamed) if self._renamed else rows
        return self.__dict__["_frame"]

    def _set_frame(self, value):
        self.__dict__["_frame"] = value

    frame = property(_get_frame, _set_frame, doc="The input rows (read from the folder's rows parts when first used).")


def _stored_log(stored, folder) -> PreparedData:
    """The saved coded log: one part per codes file (linked unchanged into the updated folder), their stable
    user and model numbers mapped onto the saved vocabularies."""
    renamed = folder.rows_meta.get("renamed_input_columns") or {}
    user_labels = np.asarray(stored.user_text, dtype=object)
    model_labels = np.asarray(stored.model_text, dtype=object)
    parts, start = [], 0
    for rows, entry, handle in stored.parts:
        part = _StoredPreparedData(frame=None, user_labels=user_labels, model_labels=model_labels, notes=[],
                                   **stored.data, **rows)
        part._row_parts, part._renamed = folder.parts, renamed
        part._row_range = (start, start + part.n_rows)
        start += part.n_rows
        if entry is not None:
            part._codes_source = {"entry": entry, "handle": handle, "dir_fd": folder.dir_fd}
        part.set_label_text(stored.user_text, stored.model_text)
        parts.append(part)
    if len(parts) == 1 and stored.user_map is None and stored.model_map is None:
        old = parts[0]
    else:
        user_map = None if stored.user_map is None else np.asarray(stored.user_map, dtype=np.int64)
        model_map = None if stored.model_map is None else np.asarray(stored.model_map, dtype=np.int64)
        old = MergedPreparedData([(p, user_map, model_map) for p in parts], dict(stored.data["columns"]),
                                 user_labels, model_labels)
        old.set_label_text(stored.user_text, stored.model_text)
    old._row_parts, old._renamed = folder.parts, renamed
    return old


def _same_text(column: pd.Series, text: np.ndarray) -> bool:
    """Whether a table's id column holds exactly ``text`` (compared in Arrow: no Python string per id)."""
    import pyarrow as pa

    if len(column) != text.shape[0]:
        return False
    try:
        left, right = pa.array(column.array), pa.array(text)
        if not pa.types.is_string(left.type) and not pa.types.is_large_string(left.type):
            raise TypeError(left.type)
        return left.null_count == 0 and left.equals(right.cast(left.type))
    except (TypeError, ValueError, pa.ArrowException):  # not text in Arrow: compare as numpy text
        return np.array_equal(column.to_numpy(dtype=object).astype(str), text)


def _codes_at(old, positions: np.ndarray) -> np.ndarray:
    """The user codes of the saved rows at ``positions`` (without building every row's codes of a merged log)."""
    parts = getattr(old, "_parts", None)
    if parts is None:
        return old.user[positions]
    out, start = [], 0
    for part, user_map, _ in parts:
        lo, hi = np.searchsorted(positions, [start, start + part.n_rows])
        codes = part.user[positions[lo:hi] - start]
        out.append(codes if user_map is None else user_map[codes])
        start += part.n_rows
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def _fast_update(directory: Path, new_rows: pd.DataFrame, columns, on_duplicate, row_id, record_paths, info,
                 overrides) -> FitResult | None:
    """The update from the folder's side file (:mod:`bayes_annot.update_state`); ``None``: update from the rows."""
    folder = read_update_folder(directory)
    if folder is None:
        return None
    result = None
    try:
        result = _fast_update_of(folder, directory, new_rows, columns, on_duplicate, row_id, record_paths, info,
                                 overrides)
        return result
    finally:
        if result is None:
            folder.close()


def _fast_update_of(folder, directory, new_rows, columns, on_duplicate, row_id, record_paths, info, overrides):
    from .incremental import _extend_state, _merge
    from .problem import build_problem, problem_key
    from .saved import SavedTables
    from .update_state import STATE_FILE, StateMismatch, read_state

    summary = folder.summary
    tables = SavedTables(folder.users, folder.models, None, summary, None, folder.manifest)
    saved, strengths = checked_saved(tables, directory)
    if design_from_summary(summary) is not None:
        return None  # casual covariates: their per-row values come from the rows
    if (overrides.get("on_bad_row") or summary["settings"].get("on_bad_row") or "error") != "error":
        return None  # dropped rows' notes are made from the whole log
    settings, role_map, p_a, new_rows, new = _settings_and_roles(summary, new_rows, columns, overrides)
    n_rows = sum(int(part["rows"]) for part, _ in folder.parts)
    try:
        stored = read_state(folder.state_file, fit_id=folder.manifest.get("fit_id"), n_rows=n_rows,
                            n_users=len(folder.users), n_models=len(folder.models), mapped=True,
                            open_codes=folder.open)
        for table, column, text in ((folder.users, "user", stored.user_text), (folder.models, "model", stored.model_text)):
            if column not in table or not _same_text(table[column], text):
                raise StateMismatch(f"its {column} ids differ from the {column}s table")
    except StateMismatch as exc:
        warnings.warn(f"results folder '{directory}': {STATE_FILE} cannot be used ({exc}); updating from the "
                      "saved rows instead", FitWarning, stacklevel=3)
        return None
    old = _stored_log(stored, folder)
    if any(old.columns.get(role) != new.columns.get(role) for role in ("user", "model_a", "model_b", "winner", "p_a")) \
            or old.has_p_a != new.has_p_a:
        return None  # other columns than the saved fit's (e.g. p_a no longer used): encode everything again
    mu, strong_model = settings.get("mu"), settings.get("strong_model")
    use_p_a = bool(settings.get("use_p_a", True))

    def ties_modelled(data) -> bool:  # the ties mode of a fit of ``data`` with the saved settings (as plan_update)
        return resolve_ties(settings.get("ties"), data.counts()["ties"]) == "model"

    key = problem_key(mu, strong_model, use_p_a, old.has_p_a) + (("ties",) if ties_modelled(old) else ())
    if tuple(stored.state.key) != key:
        return None  # another strength mode (or ties mode): the block is rebuilt from the rows
    candidates, codes = _old_candidates(old, folder, new_rows, row_id, on_duplicate, role_map.user)
    new_rows, counts = drop_duplicates_of(candidates, new_rows, row_id=row_id, on_duplicate=on_duplicate,
                                          user=role_map.user, user_codes=codes, id_roles=role_map.id_roles())
    entries = carried_provenance(summary, record_paths) + [provenance_entry(info, **counts)]
    if counts["rows_added"] == 0:
        stored.widen()  # the arrays in memory and types of their own (a merge copies and widens them)
        parts = [p for p, _, _ in old._parts] if isinstance(old, MergedPreparedData) else [old]
        for part, (rows, _, _) in zip(parts, stored.parts):
            for name, value in rows.items():  # (the same values: what __post_init__ derived from them holds)
                setattr(part, name, value)
        merged, state, new_frame = old, stored.state, None
    else:
        if counts["rows_skipped"]:
            new = prepare(new_rows, role_map, on_bad_row="error")
        merge = _merge(old, new)
        merged, new_frame = merge.merged, merge.new.frame
        ties = ties_modelled(merged)
        if ties != ("ties" in key):
            return None  # the first ties of the log: the fit's ties mode changes, the block is rebuilt from the rows
        problem_new, _ = build_problem(merge.new, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=None,
                                       ties=ties)
        state = _extend_state(stored.state, merge, problem_new, key, None, ties)
    start = align_start(dict(start_of(saved, strengths, directory), by_label=True), merged.user_labels,
                        merged.model_labels)
    priors = Priors(**summary["settings"]["priors"]) if isinstance(summary["settings"].get("priors"), dict) else None
    result = fit_prepared(merged, start=start, state=state, input_info=info, priors=priors,
                          tastes=n_tastes_of(summary), casual=None, **settings)
    # the settings a refit of the rows records (fit()), so that both updates write the same summary
    for target in (result._summary_base, result.summary):
        target["settings"].update(max_tastes=None, taste_check=False, casual_bins=DEFAULT_BINS)
    set_provenance(result, info, entries)
    names = [old._renamed.get(c, c) for c in folder.parts[0][0]["input_columns"]]
    if new_frame is not None and list(map(str, new_frame.columns)) != names:
        names = list(pd.concat([pd.DataFrame(columns=names), new_frame.iloc[:0]]).columns)  # the merged frame's
    result._rows_source = {"parts": folder.parts, "n_old": old.n_rows, "new_frame": new_frame, "folder": folder,
                           "columns": names}
    return result


def _old_candidates(old, folder, new_rows: pd.DataFrame, row_id, on_duplicate, user):
    """The saved rows that may be duplicates of new rows (those :func:`drop_duplicates_of` would look at),
    read from the rows parts, with their user codes: the same answer as matching against every saved row."""
    from .provenance import _missing_any, _narrowed, id_columns

    renamed = old._renamed
    stored_names = list(folder.parts[0][0]["input_columns"])
    names = [renamed.get(c, c) for c in stored_names]
    back = {v: k for k, v in renamed.items()}  # input name -> stored name
    n = old.n_rows
    if on_duplicate == "keep" or len(new_rows) == 0:
        positions = np.zeros(0, dtype=np.int64)
    else:
        ids = id_columns(row_id, names, list(new_rows.columns))
        blank = np.ones(len(new_rows), dtype=bool) if ids is None else _missing_any(new_rows, ids)
        found = []
        if ids is not None and (~blank).any():
            with_id = new_rows.iloc[np.flatnonzero(~blank)]
            stored = back.get(ids[0], ids[0])
            found.append(_integer_matches(folder.parts, stored, with_id[ids[0]]))
            if found[-1] is None:
                first = read_row_parts(folder.parts, columns=[stored])
                first.columns = [ids[0]]
                found[-1] = _narrowed(first, with_id, ids[0]).index.to_numpy()
        if blank.any():
            if user is not None and user in names and user in new_rows.columns:
                dummy = pd.DataFrame({user: np.zeros(n, dtype=np.int8)})
                found.append(_narrowed(dummy, new_rows.iloc[np.flatnonzero(blank)], user,
                                       (old.user, old.user_labels)).index.to_numpy())
            else:
                found.append(np.arange(n))
        positions = np.unique(np.concatenate(found)).astype(np.int64) if found else np.zeros(0, dtype=np.int64)
    rows = read_row_parts(folder.parts, rows=positions)
    if renamed:
        rows = rows.rename(columns=renamed)
    return rows, (_codes_at(old, positions), old.user_labels)


def _integer_matches(parts, column: str, wanted: pd.Series) -> np.ndarray | None:
    """Positions of the saved rows whose integer ``column`` equals a number some new id spells (what
    ``provenance._narrowed`` finds for an integer column), looked up in Arrow without converting the
    saved column; ``None`` when the column is not an integer column in every part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .provenance import _numbers_of, canonical_text

    kinds = set()
    for part, _ in parts:
        meta = {m["name"]: m for m in part["columns"]}.get(column) or {}
        kinds.add((meta.get("codec"), meta.get("dtype")))
    if len(kinds) != 1:
        return None
    codec, dtype = kinds.pop()
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return None
    if codec is not None or dtype.kind not in "iu":
        return None
    if pd.api.types.is_signed_integer_dtype(wanted.dtype) and not wanted.isna().any():  # the numbers themselves
        values = wanted.to_numpy(dtype=np.int64)
        info = np.iinfo(dtype)
        numbers = np.unique(values[(values >= info.min) & (values <= info.max)]).astype(dtype)
    else:
        numbers = np.unique(_numbers_of(pd.unique(canonical_text(wanted)), dtype))
    found, offset = [], 0
    for part, handle in parts:
        handle.seek(0)
        reader = pq.ParquetFile(handle)
        if not pa.types.is_integer(reader.schema_arrow.field(column).type):
            return None
        leaf = reader.metadata.schema.names.index(column)
        start = offset
        for group in range(reader.num_row_groups):
            meta = reader.metadata.row_group(group)
            stats = meta.column(leaf).statistics
            # ids often grow: a row group whose ids all lie outside the new ids' range is not read
            skip = numbers.shape[0] == 0 or (stats is not None and stats.has_min_max and
                                             (stats.max < numbers[0] or stats.min > numbers[-1]))
            if not skip:
                values = reader.read_row_group(group, columns=[column]).column(0)
                if values.null_count:
                    return None
                values = values.to_numpy()
                inside = np.flatnonzero((values >= numbers[0]) & (values <= numbers[-1]))
                hit = inside[pd.Index(numbers).get_indexer(values[inside]) >= 0] if inside.shape[0] else inside
                found.append(hit.astype(np.int64) + start)
            start += meta.num_rows
        if start - offset != int(part["rows"]):
            return None
        offset += int(part["rows"])
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
