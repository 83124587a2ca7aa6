"""Updating a saved results folder with new rows: ``bayes-annot fit NEW --update DIR --out DIR``.

A saved folder holds every input row of its fit but no EM block, so
:func:`update_saved` refits the saved rows plus the new ones, warm-started
from the folder's parameters (:func:`bayes_annot.saved.load_start`), with the
saved settings; a live result updates faster with
:meth:`bayes_annot.fit.FitResult.update`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import ColumnMap, prepare, read_table
from .casual import design_from_summary
from .errors import InputError
from .fit import FitResult, fit
from .incremental import n_tastes_of
from .likelihood import Priors
from .provenance import carried_provenance, drop_duplicates_of, input_info, provenance_entry, set_provenance
from .saved import checked_saved, read_tables, start_of

__all__ = ["update_saved"]


_SAVED_SETTINGS = ("model", "filter", "use_p_a", "mu", "strong_model", "q", "tol", "max_iter", "no_verdict",
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
    ``new_rows``; it is fitted by EM with the saved settings (model, columns,
    filter, ``q``, ``mu``, priors, ``tol``), starting from the saved
    parameters, strengths and (continuous) per-user quality. The result is the
    fit of old + new rows, as :meth:`~bayes_annot.fit.FitResult.update` gives for a live result; a saved
    folder holds no EM block, so the old rows are encoded again.

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
        Any of ``model, filter, use_p_a, mu, strong_model, q, tol, max_iter``.

    Returns
    -------
    FitResult
        ``summary["provenance"]`` is the saved list plus this update.
    """
    unknown = set(overrides) - set(_SAVED_SETTINGS)
    if unknown:
        raise TypeError(f"update_saved() got unexpected setting(s): {', '.join(sorted(unknown))}")
    directory = Path(directory)
    if not (directory / "summary.json").exists():
        raise InputError(f"'{directory}' holds no bayes_annot results to update (summary.json missing)")
    tables = read_tables(directory)  # read once; a corrupt or crafted folder is an InputError before anything is fitted
    saved = FitResult.from_tables(tables.users, tables.models, tables.rows, tables.summary, tables.idata, tables.manifest)
    start = dict(start_of(*checked_saved(tables, directory), directory), by_label=True)  # what start=directory reads
    summary = saved.summary
    saved_settings = summary.get("settings", {})
    saved_columns = dict(saved_settings.get("columns") or {})
    info = input_info(None, record_paths)
    if isinstance(new_rows, (str, Path)):
        if Path(new_rows).is_dir() or any(ch in str(new_rows) for ch in "*?["):
            raise InputError(f"--update reads one file of new rows (.csv, .parquet, .json, .jsonl), got '{new_rows}'")
        frame = read_table(new_rows)
        info = input_info(new_rows, record_paths)
        new_rows = frame
    settings = {key: saved_settings[key] for key in _SAVED_SETTINGS if key in saved_settings}
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
    try:  # the new rows alone: errors name their own row numbers
        prepare(new_rows, role_map, on_bad_row=settings.get("on_bad_row") or "error")
    except InputError as exc:
        raise InputError(f"new rows: {exc}") from None
    old_rows = saved.input_rows()
    new_rows, counts = drop_duplicates_of(old_rows, new_rows, row_id=row_id, on_duplicate=on_duplicate,
                                          user=role_map.user)
    entries = carried_provenance(summary, record_paths) + [provenance_entry(info, **counts)]
    priors = Priors(**saved_settings["priors"]) if isinstance(saved_settings.get("priors"), dict) else None
    merged = pd.concat([old_rows, new_rows], ignore_index=True) if len(new_rows) else old_rows
    # the saved fit's casual covariates with its bins (none: the model without covariates)
    settings["casual_covariates"] = design_from_summary(summary) or "none"
    result = fit(
        merged, method="em", user=role_map.user, model_a=role_map.model_a, model_b=role_map.model_b,
        winner=role_map.winner, p_a=p_a, priors=priors, start=start, tastes=n_tastes_of(summary), **settings,
    )
    set_provenance(result, info, entries)
    return result

