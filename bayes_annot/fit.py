"""The estimator and its result: users, models, rows, summary and InferenceData.

``bayes_annot.fit(data, ...)`` is the one entry point for every engine; it
returns a :class:`FitResult` whose tables follow the output contract
(docs/outputs.md) whatever the engine, and :class:`UserQualityModel` wraps it in
scikit-learn style (settings in the constructor, ``fit`` returns ``self``,
fitted attributes end in ``_``).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .provenance import input_info as describe_input, parquet_collection_info, provenance_entry, set_provenance
from .version import __version__
from .data import REASONS, ColumnMap, PreparedData, prepare, read_table
from .decide import FilterRule, check_no_verdict_policy, decide, parse_filter  # noqa: F401 (re-exported)
from .block_em import EMState, LocalRunner
from .local_em import (
    default_accelerate, em_estimates, em_state, fit_taste_classes, run_block_em, taste_diagnostic, taste_estimates,
)
from .pairs import PairTable
from .incremental import align_start, plan_update
from .saved import load_start, read_tables
from .problem import (
    Estimates, ProblemSize, block_quality_floor, build_problem, graph_components, known_strengths, pair_counts,
    quality_floor, strength_mode,
)
from .em import UsableLabels
from .errors import FitWarning, InputError, renamed_keyword, take_renamed, user_stacklevel
from .progress import Progress, em_callback, iterate, resolve as resolve_progress
from .casual import DEFAULT_BINS, CasualDesign, casual_design, prepare_casual
from .data import parse_casual_covariates
from .likelihood import Priors
from .spec import BehaviourSpec
from .style import StyleDesign, parse_style_covariates, style_design
from .ties import resolve_ties
from .tables import OUTPUT_COLUMNS, input_renames  # noqa: F401  (OUTPUT_COLUMNS: public name)
from .validation import check_fit_settings

__all__ = ["FitResult", "UserQualityModel", "fit", "load", "model_spec"]

METHODS = ("em", "map", "nuts")


# --------------------------------------------------------------------------- problem set-up


# --------------------------------------------------------------------------- result


class FitResult:
    """A fitted behaviour model: tables, summary and the posterior, whatever holds the rows.

    One type for every way a fit is held (``backend``):

    * ``"memory"``: :func:`fit` of a file or a pandas frame (the input rows in memory);
    * ``"dask"``: :func:`fit` of a Dask DataFrame or a folder / glob of parquet
      files: ``users``, ``models`` and ``summary`` live on the driver, ``rows`` is a
      lazy Dask DataFrame that :meth:`save` and :meth:`to_dpo` stream partition by partition;
    * ``"folder"``: :func:`load` of a saved result (or :meth:`from_tables`): the
      tables as saved, without the engine's estimates. What needs them
      (:meth:`filter` with another rule, :meth:`update`) raises an
      :class:`~bayes_annot.errors.InputError` saying what is missing.

    Attributes
    ----------
    users : pandas.DataFrame
        ``user, n_labels, quality, quality_low, quality_high, kept`` (+
        ``uninformative``, ``n_rows``, and ``p_eta_above_half`` for continuous).
    models : pandas.DataFrame
        ``model, strength`` (+ ``strength_low, strength_high`` when sampled, ``n_labels``).
    rows : pandas.DataFrame or dask.dataframe.DataFrame
        Every input row in input order + ``kept, reason, weight`` (lazy for ``"dask"``).
    summary : dict
        What ``summary.json`` holds, with the diagnostics stored by :func:`fit`
        or :func:`bayes_annot.evaluate.diagnose`.
    backend : {"memory", "dask", "folder"}
    manifest : dict or None
        The folder's ``manifest.json`` (``"folder"``; ``None`` otherwise or for a folder written before manifests).
    """

    def __init__(
        self, data: PreparedData, estimates: Estimates, rule: FilterRule, summary_base: dict, state: EMState | None = None,
        no_verdict: str | None = None,
    ):
        self.backend, self.manifest = "memory", None
        self._data, self.estimates, self._summary_base = data, estimates, summary_base
        self._state = state  # the EM block, kept for fast incremental updates (see bayes_annot.incremental)
        if no_verdict is None:
            no_verdict = (summary_base.get("settings") or {}).get("no_verdict") or "keep"
        self._apply(rule, no_verdict)

    @classmethod
    def _from_dask(cls, ddf, dask_fit, rule: FilterRule, summary_base: dict, no_verdict: str = "keep") -> "FitResult":
        """The result of a Dask EM fit (:func:`bayes_annot.dask_em.fit_dask`)."""
        self = object.__new__(cls)
        self.backend, self.manifest = "dask", None
        self._data, self._state, self._ddf, self.dask_fit = None, None, ddf, dask_fit
        self.estimates, self._summary_base = dask_fit.to_estimates(), summary_base
        self._apply(rule, no_verdict)
        return self

    @classmethod
    def from_tables(cls, users: pd.DataFrame, models: pd.DataFrame, rows: pd.DataFrame | None, summary: dict,
                    idata=None, manifest: dict | None = None) -> "FitResult":
        """A result from its saved tables (what :func:`load` returns): ``backend == "folder"``.

        ``rows`` may be ``None`` (the report and plots then skip what needs
        them); ``idata`` is the ``posterior.nc`` when one was saved.
        """
        self = object.__new__(cls)
        self.backend, self.manifest, self.estimates = "folder", manifest, None
        self._data, self._state, self._data_read = None, None, False
        self.users, self.models, self._rows, self.summary, self._idata = users, models, rows, summary, idata
        self._summary_base = summary
        self.no_verdict = (summary.get("settings") or {}).get("no_verdict") or "keep"
        try:
            self.rule = parse_filter((summary.get("filter") or {}).get("rule", "none"))
        except InputError:
            self.rule = None
        return self

    def _needs_fit(self, what: str) -> None:
        if self.backend == "folder":
            raise InputError(
                f"{what} needs the fit itself (its estimates), which a saved folder does not hold: the folder keeps "
                "the tables, summary.json and the verdicts of its rule; refit (bayes_annot.fit(rows, start=folder) "
                "converges in a few iterations) to do this"
            )

    # ----------------------------------------------------------------- tables
    def _apply(self, rule: FilterRule, no_verdict: str = "keep") -> None:
        est = self.estimates
        eligible = est.n_labels_user > 0
        keep, no_verdict_mask, info = decide(
            rule, est.quality, est.p_good, est.quality_low, eligible=eligible, uninformative=~est.informative,
            quality_floor=est.quality_floor, no_verdict=no_verdict,
        )
        self.rule, self.no_verdict, self._no_verdict_mask, self._keep = rule, no_verdict, no_verdict_mask, keep
        if self.backend == "dask":
            dfit = self.dask_fit
            user_labels, model_labels, n_rows_user = dfit.user_labels, dfit.model_labels, dfit.n_rows_user
            n_labels_model = dfit.n_labels_model
        else:
            data, state = self._data, self._state
            user_labels, model_labels = data.label_array("user"), data.label_array("model")
            n_rows_user = state.block.n_rows if state is not None else np.bincount(data.user, minlength=data.n_users)
            pairs = self.pair_counts
            n_labels_model = pairs.sum(axis=1) + pairs.sum(axis=0)
        users = pd.DataFrame(
            {
                "user": user_labels,
                "n_labels": est.n_labels_user.astype(np.int64),
                "quality": est.quality,
                "quality_low": est.quality_low if est.quality_low is not None else np.nan,
                "quality_high": est.quality_high if est.quality_high is not None else np.nan,
                "kept": keep,
                "uninformative": ~est.informative,
                "n_rows": np.asarray(n_rows_user).astype(np.int64),
            }
        )
        if est.variant == "continuous":
            users["p_eta_above_half"] = est.p_good
        for name, values in est.extra_user_columns.items():
            users[name] = values
        self.users = users

        models = pd.DataFrame({"model": model_labels, "strength": est.strengths if est.strengths is not None else np.nan})
        if est.strength_low is not None:
            models["strength_low"] = est.strength_low
            models["strength_high"] = est.strength_high
        for name, values in est.extra_model_columns.items():
            models[name] = values
        models["n_labels"] = np.asarray(n_labels_model).astype(np.int64)
        self.models = models
        self._row_kept_mask = None  # built on first access (a pass over every row)
        self._rows = None  # built on first access (a copy of every input row; lazy on Dask)

        kept_rows = int(est.n_labels_user[keep].sum())  # usable labels of kept users
        summary = json.loads(json.dumps(self._summary_base))
        summary["counts"].update(kept_rows=kept_rows, kept_users=int(keep.sum()))
        summary["filter"] = dict(info, kept_rows=kept_rows)
        summary["counts"]["no_verdict_users"] = int(no_verdict_mask.sum())
        summary["counts"]["no_verdict_rows"] = int(est.n_labels_user[no_verdict_mask].sum())
        if no_verdict_mask.any():
            _warn(summary, no_verdict_message(summary["counts"], ~est.informative & no_verdict_mask, no_verdict))
        if keep.sum() == 0 and eligible.any() and self.backend == "memory":
            _warn(summary, f"no user passed the filter {rule}: the filtered data set is empty; loosen the rule or check the fit")
        self.summary = summary

    @property
    def _row_kept(self) -> np.ndarray:
        """Per input row: usable and its user kept."""
        if self._row_kept_mask is None:
            self._row_kept_mask = self._data.usable & self._keep[self._data.user]
        return self._row_kept_mask

    @property
    def rows(self):
        """Every input row in input order + ``kept``, ``reason``, ``weight`` (built on first access; lazy on Dask)."""
        if self._rows is None and self.backend == "dask":
            from .dask_em import to_rows

            self._rows = to_rows(self._ddf, self.dask_fit, self._keep, self.estimates.quality, self._no_verdict_mask)
        elif self._rows is None and self.backend == "memory":
            rows = self._data.frame.copy()
            renames = input_renames(rows.columns)
            if renames:
                rows = rows.rename(columns=renames)
            for name, values in self._row_outputs().items():
                rows[name] = values
            self._rows = rows
        return self._rows

    def _user_output_codes(self) -> np.ndarray:
        """Per user 0 (kept), 3 (not kept) or 4 (no verdict), + 8 when kept (one byte per user; see
        :func:`bayes_annot.update_state.user_codes`)."""
        by_user = np.where(self._keep, np.int8(8), np.int8(3))
        by_user[self._no_verdict_mask] = np.where(self._keep[self._no_verdict_mask], np.int8(12), np.int8(4))
        return by_user

    def _row_outputs(self) -> dict:
        """The columns a fit adds to every input row: ``kept``, ``reason``, ``weight`` (in-memory fits)."""
        from .update_state import user_codes

        data = self._data
        # codes index list(REASONS): 0 ok, 1 tie, 2 same_model, 3 user_low_quality, 4 no_verdict (kept or
        # not: see `kept`), 5 invalid_winner, 6 invalid_p_a (dropped rows, data.DROP_REASONS)
        kept, code, weight = user_codes(data.user, data.reason_code, self._user_output_codes(), self.estimates.quality)
        if self._row_kept_mask is None:
            self._row_kept_mask = kept
        reason = pd.Categorical.from_codes(code, categories=REASON_CATEGORIES)
        return {"kept": self._row_kept_mask, "reason": reason, "weight": weight}

    @property
    def kept_rows(self):
        """The input rows that passed the filter."""
        return self.rows[self.rows["kept"]]

    def input_rows(self):
        """The input rows as they came in: without ``kept, reason, weight``, clashing input columns renamed back."""
        if self.backend == "dask":
            return self._ddf
        if self.backend == "memory":
            return self._data.frame
        rows = self.rows.drop(columns=[c for c in OUTPUT_COLUMNS if c in self.rows.columns])
        if self.manifest is not None:
            renamed = self.manifest.get("tables", {}).get("rows", {}).get("renamed_input_columns", {})
        else:  # a folder written before manifests: the one-level rename of that time
            renamed = {f"input_{c}": c for c in OUTPUT_COLUMNS if f"input_{c}" in rows.columns}
        return rows.rename(columns=renamed)

    @property
    def data(self) -> PreparedData | None:
        """The integer-coded input rows (:class:`~bayes_annot.data.PreparedData`).

        Re-encoded from the saved ``rows`` for a loaded folder; ``None`` for a
        Dask fit (the rows stay on the workers) or saved rows that cannot be re-encoded.
        """
        if self.backend == "folder" and not self._data_read:
            self._data_read, self._data = True, _rebuild_data(self._rows, self.summary)
        return self._data

    @property
    def pair_counts(self) -> PairTable | None:
        """Usable labels per compared (model_a, model_b) in ``models`` order (``None`` without rows)."""
        if self.backend == "dask":
            return self.dask_fit.pair_counts
        if self._state is not None:
            return self._state.pair_counts
        return None if self.data is None else pair_counts(self.data)

    def filter(self, rule: str | FilterRule, no_verdict: str | None = None) -> "FitResult":
        """A copy of this result with another filter rule applied (no refit).

        ``no_verdict`` (``"keep"`` or ``"drop"``; default: this result's) says what
        happens to users the rule has no verdict on (see :mod:`bayes_annot.decide`).
        """
        self._needs_fit("filter() with another rule")
        clone = object.__new__(FitResult)
        clone.__dict__.update(self.__dict__)
        clone._apply(parse_filter(rule), check_no_verdict_policy(self.no_verdict if no_verdict is None else no_verdict))
        return clone

    # ----------------------------------------------------------------- accessors
    def comparison_parts(self) -> np.ndarray:
        """Connected part of the comparison graph of each model (``models`` order): strengths compare
        only within a part (summary ``comparison_graph_components``)."""
        pairs = self.pair_counts
        if pairs is None:
            raise InputError("comparison_parts() needs the rows of the fit, which this result does not hold")
        return graph_components(pairs)

    @property
    def casual_effects_(self) -> dict | None:
        """The casual covariates' effects (``summary["casual_effects"]``): ``beta0`` (the position bias at
        equal covariates; ``q = sigmoid(beta0)``) and per covariate its ``name``, bin ``edges`` of ``|x|``
        and effects ``g`` (log-odds of choosing the response with the larger value, per bin); ``None``
        when casual clicks had no covariates (docs/model.md)."""
        return self.summary.get("casual_effects")

    @property
    def style_effects_(self) -> dict | None:
        """The attentive style effects (``summary["style_effects"]``): per style covariate its ``name`` and
        ``delta``, the attentive log-odds of choosing ``model_a`` per unit of the covariate (e.g. per unit of
        log length ratio: reading-based length preference), and its cells' representative values
        (``level_means``); ``None`` without a style term (``style_covariates="none"``, docs/model.md)."""
        return self.summary.get("style_effects")

    @property
    def ties_(self) -> dict | None:
        """How ties entered the fit: ``{"mode", "n_ties"}`` and, when modelled, Davidson's ``nu`` (attentive)
        and the casual tie rate ``t`` (``summary["ties"]``; ``None`` for a fit saved before ties were modelled)."""
        return self.summary.get("ties")

    @property
    def loglik_trace(self) -> list[float]:
        """Penalised log-likelihood per EM iteration (empty for other engines and for a saved folder)."""
        return [] if self.estimates is None else list(self.estimates.loglik_trace)

    @property
    def idata(self):
        """ArviZ ``InferenceData`` (EM / MAP: 1 chain x 1 draw; NUTS: the posterior).

        For a loaded folder: its ``posterior.nc``, ``None`` when none was saved.
        """
        if self.backend == "folder":
            return self._idata
        if self.estimates.idata is None:
            from types import SimpleNamespace

            from .inference_data import point_estimate_idata

            dfit = getattr(self, "dask_fit", None)
            labels = self._data or SimpleNamespace(user_labels=dfit.user_labels, model_labels=dfit.model_labels)
            self.estimates.idata = point_estimate_idata(labels, self.estimates)
        return self.estimates.idata

    @property
    def sampled(self) -> bool:
        """True when ``idata`` holds a real sample (more than one draw)."""
        if self.backend != "folder" and self.summary.get("engine") != "nuts":
            return False
        post = getattr(self.idata, "posterior", None)
        return post is not None and int(post.sizes.get("chain", 1)) * int(post.sizes.get("draw", 1)) > 1

    def __getitem__(self, key):
        if key not in ("users", "models", "rows", "summary", "idata"):
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        """Names of the parts present (``idata`` for a folder only when ``posterior.nc`` was saved)."""
        has_idata = self.backend != "folder" or self._idata is not None
        return [k for k in ("users", "models", "rows", "summary", "idata") if k != "idata" or has_idata]

    # ----------------------------------------------------------------- workflows
    def update(self, new_rows, *, accelerate: bool | None = None, on_duplicate: str = "skip", row_id=None,
               record_paths: bool = False, **settings) -> "FitResult":
        """Fit this fit's rows plus ``new_rows``, warm-started from it and reusing its encoding and EM block.

        The settings of this fit (variant, filter, columns, ``q``, priors, ``tol``,
        taste classes, ...) are reused unless overridden. In-memory fits only (a
        saved folder: :func:`bayes_annot.folder_update.update_saved`).

        Parameters
        ----------
        new_rows : pandas.DataFrame or path
            The new annotations, with the previous fit's columns.
        accelerate : bool, optional
            SQUAREM extrapolation (monotone; see the module notes). Default as in
            :func:`bayes_annot.fit`: on for ``continuous``; off for ``two-class``,
            whose warm-started EM converges in two or three plain steps, so an
            extrapolation would only add a pass.
        on_duplicate : {"skip", "error", "keep"}
            New rows already in this fit's log (see
            :func:`bayes_annot.provenance.drop_duplicates_of`): skipped with a
            :class:`~bayes_annot.errors.FitWarning` giving their number (default;
            so applying the same batch twice changes nothing), refused with
            :class:`~bayes_annot.errors.InputError`, or kept (appended again).
        row_id : str or list, optional
            Id column(s) that identify a row (comma-separated names or a list);
            default ``question_id`` + ``tstamp`` when both logs have both, else the
            whole row. Ids win over content: a row with known ids is a duplicate
            even if its other values changed.
        record_paths : bool
            Record the absolute path of a ``new_rows`` file in the summary (by
            default only its name and SHA-256).
        **settings
            Any of ``variant, filter, tol, max_iter, q, priors, use_p_a, mu, strong_model`` (``model``: the
            deprecated alias of ``variant``, a :class:`FutureWarning`).

        Returns
        -------
        FitResult
            Rows in the order old rows then new rows; users and models over the
            merged vocabularies. ``summary["settings"]["warm_start"]`` is true;
            ``summary["provenance"]`` is this fit's list plus this update.

        Notes
        -----
        When this fit is an in-memory EM fit (it keeps its EM block) and the
        update keeps its strength mode (learned, ``p_a`` or ``mu``), the old
        labels are neither re-encoded nor re-sorted: the new labels' block is
        merged into the previous one (:func:`bayes_annot.block_em.merge_blocks`),
        so the work outside the EM passes is proportional to the new rows. The
        result is identical to fitting the merged log from its rows with the same
        start (a tested property).

        Examples
        --------
        A simulated log repeats identical votes, so its rows get an id column:
        without one, a new row equal to an old one would be skipped as a duplicate.

        >>> import bayes_annot as ba
        >>> log = ba.simulate(n_users=300, n_models=4, seed=0)
        >>> log["vote_id"] = range(len(log))
        >>> old, new = log.iloc[:-100], log.iloc[-100:]
        >>> result = ba.fit(old).update(new, row_id="vote_id")
        >>> result.summary["counts"]["rows"] == len(log)
        True
        """
        self._needs_fit("update()")
        if self.backend == "dask":
            raise InputError("update() needs an in-memory fit; refit the Dask frame with the new partitions instead")
        plan = plan_update(self, new_rows, on_duplicate=on_duplicate, row_id=row_id, record_paths=record_paths,
                           **take_renamed(settings, "model", "variant", "update()"))
        result = fit_prepared(plan.prepared, start=plan.start, accelerate=accelerate, state=plan.state,
                              input_info=plan.info, _started=plan.started, **plan.settings)
        set_provenance(result, plan.info, plan.entries)
        # an update of a result saved to a folder: saving it back there checks nobody replaced the folder since
        result._update_base = getattr(self, "_saved_as", None)
        return result

    def report(self, path: str | Path, **options) -> Path:
        """Write the self-contained HTML diagnostics report (see :func:`bayes_annot.report.build_report`).

        The report never fits: it shows what the result holds.
        """
        from .report import build_report

        return build_report(self, path, **options)

    def to_dpo(self, path: str | Path | None = None, **columns):
        """Kept labels as a DPO data set (``prompt, chosen, rejected, weight, ...``).

        See :func:`bayes_annot.export.to_dpo`; ``path`` ending in ``.jsonl`` or
        ``.parquet`` also writes the file (atomically). A Dask fit gives a lazy
        Dask DataFrame (one partition per input partition, indexed by input row)
        and streams the file partition by partition; a loaded folder uses its
        saved ``kept`` column.
        """
        if self.backend == "memory":
            from .export import to_dpo

            return to_dpo(self, path, **columns)
        if self.backend == "folder":
            from .export import dpo_from_rows

            frame = dpo_from_rows(self.rows, self.summary["settings"]["columns"], **columns)
            if path is not None:
                _write_dpo(path, [frame])
            return frame
        import dask.dataframe as dd

        from .export import DPO_COLUMNS

        parts = self._dpo_parts(**columns)
        if path is not None:  # streamed: the driver holds one partition's records at a time
            bar = iterate(resolve_progress(None), parts, desc="writing DPO records", unit="partition", total=len(parts))
            _write_dpo(path, (part.compute() for part in bar))
        meta = pd.DataFrame({c: pd.Series([], dtype=float if c == "weight" else object) for c in DPO_COLUMNS})
        meta.index = pd.Index([], dtype=np.int64, name="row")
        return dd.from_delayed(parts, meta=meta)

    def _dpo_parts(self, **columns) -> list:
        """Dask: one delayed DPO frame per input partition (``dpo_from_rows`` with the partition's first row number)."""
        from dask import delayed

        from .export import dpo_from_rows

        settings = self.dask_fit.columns
        dpo_from_rows(self.rows._meta, settings, **columns)  # missing text columns fail here, before any work
        offsets = np.concatenate([[0], np.cumsum(self.dask_fit.partition_rows)[:-1]]).astype(int)
        parts = self.rows.to_delayed()
        return [delayed(dpo_from_rows)(part, settings, offset=int(o), **columns) for part, o in zip(parts, offsets)]

    def save(
        self,
        directory: str | Path,
        posterior: bool | None = None,
        *,
        report: bool = False,
        dpo: str | Path | None = None,
        format: str = "csv",
        safe_csv: bool = False,
        inputs=(),
        on_wait=None,
        dpo_columns: dict | None = None,
    ) -> Path:
        """Write the result folder: ``users``, ``models``, ``rows`` tables, ``summary.json`` and ``manifest.json``.

        All or nothing: every file (``report.html`` with ``report=True``,
        ``posterior.nc`` for sampled results unless ``posterior=False``, a DPO
        file inside the folder) is written to a staging folder beside
        ``directory`` and swapped in at once; a DPO file elsewhere is moved into
        place right after. An existing ``directory`` is replaced only when it is
        empty or holds bayes_annot results and nothing else, and never when it
        holds one of ``inputs`` (see :mod:`bayes_annot.outdir`). A Dask fit's
        rows (and DPO records) are streamed from the workers one partition at a time.

        Parameters
        ----------
        directory : str or Path
        posterior : bool, optional
            Also write ``posterior.nc`` (default: for NUTS results).
        report : bool
            Also write ``report.html``.
        dpo : str or Path, optional
            Also export the kept labels for DPO (``.jsonl`` / ``.parquet``); an existing file
            outside ``directory`` is replaced only when it holds DPO records.
        format : {"csv", "parquet"}
            File format of the three tables; both read back equal (:func:`load`).
        safe_csv : bool
            Escape text cells that a spreadsheet would run as a formula
            (``=``, ``+``, ``-``, ``@``) with a leading ``'``; :func:`load` undoes it.
        inputs : paths
            Input files the folder must not hold.
        on_wait : callable, optional
            Called with a message when another writer holds the folder's lock.
        dpo_columns : dict, optional
            Text columns for ``dpo``: ``prompt``, ``response_a``, ``response_b``
            (see :meth:`to_dpo`; the CLI's ``--prompt``, ``--response-a``, ``--response-b``).
        """
        import os

        from .outdir import ResultWriter, check_dpo_target, check_target

        if dpo is not None:  # before anything is written: a file elsewhere that is not DPO records is never replaced
            from .export import DPO_COLUMNS

            check_dpo_target(dpo, check_target(directory, inputs), DPO_COLUMNS, inputs)
        if posterior is None:
            posterior = self.summary.get("engine") == "nuts"
        checked = self.backend == "memory"  # a value no table gives back equal is refused before anything is written
        if checked:
            from .tables import check_storable

            source = getattr(self, "_rows_source", None)
            checked = source is None  # (a fast update's saved rows were checked when written; its new rows here)
            if source is None or source.get("new_frame") is not None:
                check_storable(self.input_rows() if source is None else source["new_frame"])
        base = getattr(self, "_update_base", None)  # an update of a saved folder: (that folder, the fit it held)
        expect = base[1] if base is not None and os.path.abspath(directory) == base[0] else None
        with ResultWriter(directory, inputs=inputs, fmt=format, safe_csv=safe_csv, on_wait=on_wait,
                          expect_fit_id=expect) as out:
            out.table("users", self.users)
            out.table("models", self.models)
            source = getattr(self, "_rows_source", None)  # a fast folder update: the saved rows stay unread
            columns = source["columns"] if source is not None else self.input_rows().columns
            renamed = {new: old for old, new in input_renames(columns).items()}
            if self.backend == "dask":
                parts = self.rows.to_delayed()  # a bar inside a bayes_annot.progress.showing() block (the CLI's)
                parts = iterate(resolve_progress(None), parts, desc="writing rows", unit="partition", total=len(parts))
                out.stream_table("rows", (part.compute() for part in parts), renamed_input_columns=renamed)
            else:
                # parquet: each row's codes (in files an update links unchanged) for the side file and the row parts
                codes = limit = None
                if format == "parquet" and self.backend == "memory":
                    from .outdir import max_parts

                    limit = max_parts()  # how many parts an update keeps
                    codes = _write_row_codes(out, self, limit)
                if not (codes is not None and _write_row_parts(out, self, renamed, codes, limit)):
                    out.table("rows", self.rows, checked=checked, renamed_input_columns=renamed)
                if codes is not None:
                    _write_update_state(out, self, codes)
            out.json("summary.json", self.summary)
            if posterior and self.idata is not None:
                self.idata.to_netcdf(str(out.path("posterior.nc")))
            if report:
                self.report(out.path("report.html"))
            if dpo is not None:
                out.extra_file(dpo, lambda path: self.to_dpo(path, **(dpo_columns or {})))
        if expect is not None:
            self._update_base = (str(out.target), out.fit_id)  # saving it there again is fine
        self._saved_as = (str(out.target), out.fit_id)  # what an update of this result extends
        return out.target

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        s = self.summary
        c = s["counts"]
        via = s["engine"] + ("" if self.backend == "memory" else f", {self.backend}")
        return (
            f"<FitResult {s['variant']} via {via}: {c['users']} users, {c['models']} models, "
            f"{c['rows']} rows; kept {c['kept_users']} users / {c['kept_rows']} rows ({s['filter']['rule']})>"
        )

    def _convergence_text(self) -> str:
        """One line on convergence: EM / MAP iterations and whether it converged; NUTS R-hat, ESS and divergences."""
        s = self.summary
        parts = []
        if s.get("converged") is not None or s.get("iterations") is not None:
            verdict = {True: "converged", False: "did not converge"}.get(s.get("converged"), "convergence unknown")
            iterations = f" in {s['iterations']} iterations" if s.get("iterations") is not None else ""
            parts.append(f"{s['engine']}: {verdict}{iterations}")
        if "rhat_max" in s or "ess_bulk_min" in s:
            rhat, ess = s.get("rhat_max"), s.get("ess_bulk_min")
            parts.append(
                f"R-hat max {'n/a' if rhat is None else f'{rhat:.3f}'}, "
                f"ESS bulk min {'n/a' if ess is None else f'{ess:.0f}'}, divergences {s.get('divergences', 0)}"
            )
        return "; ".join(parts) or f"{s['engine']}: no convergence diagnostics"

    def _repr_html_(self) -> str:
        from html import escape

        s = self.summary
        c = s["counts"]
        params = ", ".join(f"{k} = {v:.3g}" for k, v in s["parameters"].items() if isinstance(v, (int, float)))
        top = self.models.sort_values("strength", ascending=False).head(10)
        warn = "".join(f"<li>{escape(str(w))}</li>" for w in s.get("warnings", []))
        return (
            f"<div><b>bayes_annot FitResult</b> — {s['variant']} variant, {s['engine']} engine<br>"
            f"{c['rows']} rows, {c['users']} users, {c['models']} models; "
            f"kept {c['kept_users']} users and {c['kept_rows']} rows under <code>{s['filter']['rule']}</code> "
            f"(expected casual share {s['filter']['expected_casual_share']:.3f})<br>{params}<br>"
            f"{escape(self._convergence_text())}"
            f"{'<ul>' + warn + '</ul>' if warn else ''}"
            f"{top.to_html(index=False, float_format=lambda v: f'{v:.3f}')}</div>"
        )

    def summary_table(self) -> pd.DataFrame:
        """The global parameters and model strengths as a table, for any engine.

        For NUTS this is ``arviz.summary`` of ``pi``, ``q`` (``m``, ``tau``
        for the continuous variant) and ``strength``. For EM and MAP, which give
        one point estimate (``idata`` holds 1 chain x 1 draw, so
        ``arviz.summary`` of it has only NaN spreads and R-hat and warns), a
        table with one row per parameter and per model: ``estimate``, plus
        ``n_labels`` for the strengths (known strengths, from ``p_a`` or
        ``mu``, are marked in ``kind``).

        Returns
        -------
        pandas.DataFrame
            Indexed by ``pi``, ``q``, ..., ``strength[MODEL]``.
        """
        if self.summary.get("engine") == "nuts":
            import arviz as az

            if self.idata is None:
                raise InputError("summary_table() of a NUTS fit needs its posterior: this folder was saved without "
                                 "posterior.nc (save(posterior=True))")
            names = [n for n in ("pi", "q", "m", "tau", "strength") if n in self.idata.posterior]
            return az.summary(self.idata, var_names=names)
        params = {k: v for k, v in self.summary["parameters"].items() if isinstance(v, (int, float))}
        rows = [{"name": k, "kind": "parameter", "estimate": float(v), "n_labels": np.nan} for k, v in params.items()]
        known = self.summary.get("strengths", "learned") != "learned"
        for model, strength, n in zip(self.models["model"], self.models["strength"], self.models["n_labels"]):
            rows.append({"name": f"strength[{model}]", "kind": "strength (known)" if known else "strength",
                         "estimate": float(strength), "n_labels": n})
        table = pd.DataFrame(rows).set_index("name")
        table.index.name = None
        table["n_labels"] = table["n_labels"].astype("Int64")
        return table


# --------------------------------------------------------------------------- fitting


#: Categories of the rows table's ``reason`` column, in code order (see :data:`bayes_annot.data.REASONS`).
REASON_CATEGORIES = list(REASONS)  # every reason a row can carry, in code order

def _warn(summary: dict, message: str) -> None:
    """Record a warning in the summary and raise it as a :class:`FitWarning` pointing at the user's call."""
    summary["warnings"].append(message)
    warnings.warn(message, FitWarning, stacklevel=user_stacklevel())


def no_verdict_message(counts: dict, uninformative: np.ndarray, policy: str) -> str:
    """The warning about users without a verdict (``counts``: the summary's, with the ``no_verdict_*`` entries)."""
    n_users, n_rows = counts["no_verdict_users"], counts["no_verdict_rows"]
    in_lik = counts.get("users_in_likelihood") or n_users
    rows_lik = counts.get("rows_in_likelihood") or n_rows
    n_uninf = int(np.sum(uninformative))
    why = []
    if n_uninf:
        why.append(f"{n_uninf} saw only pairs that carry no information about their quality")
    if n_users - n_uninf:
        why.append(f"{n_users - n_uninf} would pass the filter whatever they clicked")
    fate = "kept" if policy == "keep" else "dropped"
    hint = "" if policy == "drop" else "; --no-verdict drop (no_verdict='drop') drops them"
    return (
        f"{n_users} of {in_lik} users ({n_rows} rows, {n_rows / max(rows_lik, 1):.1%} of the rows in the likelihood) "
        f"have no verdict: {' and '.join(why)}; they are {fate} (no_verdict='{policy}'; their rows have "
        f"reason 'no_verdict'{hint})"
    )


@renamed_keyword("model", "variant")
def fit(
    data,
    *,
    variant: str = "two-class",
    method: str = "em",
    filter: str | FilterRule = "prob:0.5",
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
    p_a: str | bool | None = None,
    use_p_a: bool = True,
    mu: float | None = None,
    strong_model: str | None = None,
    q: float | None = None,
    tastes: int | str = 1,
    max_tastes: int = 4,
    taste_check: bool = False,
    no_verdict: str = "keep",
    priors: Priors | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    sampler: str = "pymc",
    progress: bool | Progress | None = None,
    seed: int = 0,
    start: dict | str | Path | None = None,
    accelerate: bool | None = None,
    record_paths: bool = False,
    winner_values: dict | None = None,
    on_bad_row: str = "error",
    casual_covariates="auto",
    casual_bins: int = DEFAULT_BINS,
    ties: str | None = None,
    style_covariates=None,
) -> FitResult:
    """Fit the user behaviour model to a comparison-mode log.

    Parameters
    ----------
    data : str, Path or pandas.DataFrame
        A ``.csv`` / ``.parquet`` / ``.json`` / ``.jsonl`` file or a frame with
        one row per annotation.
    variant : {"two-class", "continuous"}
        The behaviour variant: how a user mixes attentive and casual labels
        (docs/model.md). ``model=`` is its deprecated alias (a
        :class:`FutureWarning`; giving both is a :class:`TypeError`).
    method : {"em", "map", "nuts"}
        Engine: EM (default, fast), PyMC MAP, or full posterior by NUTS.
    filter : str
        ``prob:T``, ``fdr:ALPHA``, ``credible:T`` or ``none``.
    user, model_a, model_b, winner, p_a : str
        Column names (``user`` defaults to the first of ``user``, ``judge``,
        ``worker``, ``annotator`` present; ``p_a`` to a column named ``p_a``
        when present, ``False`` for none).
    winner_values : dict, optional
        Further ``winner`` values and what they mean, e.g.
        ``{"A": "model_a", "B": "model_b", "Same": "tie"}`` (the CLI's
        ``--winner-values 'A=model_a,B=model_b,Same=tie'``).
    on_bad_row : {"error", "drop"}
        ``"error"`` (default): an unknown or missing winner or an invalid
        ``p_a`` stops the fit. ``"drop"``: such rows stay in ``rows`` with
        reason ``invalid_winner`` / ``invalid_p_a``, outside the likelihood,
        counted in ``summary["counts"]`` (``dropped_rows``) and reported in a
        warning. In-memory data only.
    use_p_a : bool
        Use a ``p_a`` column as known attentive probabilities when present
        (``False`` with ``p_a=None``: a column named ``p_a`` is not read).
    mu, strong_model : float, str
        The paper's setting: an attentive user prefers ``strong_model`` with
        probability ``mu`` (other pairs are uninformative).
    q : float, optional
        Fix the casual position bias (0.5 = fair coin); estimated if ``None``. With casual
        covariates it is the bias at equal covariates, ``sigmoid(beta_0)``; their effects are still learned.
    casual_covariates : "auto", "none" or list of str
        What casual clicks may follow besides position (docs/model.md, "Casual covariates"):
        ``"auto"`` (default) the log length ratio ``log(len(response_a) / len(response_b))`` when the
        response texts are present (``response_a`` / ``response_b``, or Arena's ``conversation_a`` /
        ``conversation_b``), else nothing; ``"none"``: a position coin ``q`` (the paper's model); or
        column names of numeric a-vs-b contrasts (``"log_length_ratio"`` names the length ratio).
        Their effects are in ``result.casual_effects_`` and ``summary["casual_effects"]``.
    casual_bins : int
        Bins of ``|x|`` per casual covariate (default 6; edges at quantiles, fixed at fit time).
    style_covariates : None, "none", "auto" or list of str
        An attentive-side style term, as Chatbot Arena's style control (docs/model.md, "Style
        covariates"): attentive log-odds ``s_a - s_b + delta' x``, so a preference for long answers
        *after reading* (``delta``) is reported apart from casual clicks that follow length. ``None`` /
        ``"none"`` (default): no style term; ``"auto"``: every casual covariate; or names among the
        casual covariates (the term uses their cells, each at its mean ``x``). EM, MAP and NUTS, learned
        strengths (in memory or Dask); ties stay in the likelihood with every engine (Davidson's ``d`` gets the
        term too); ``tastes=N`` classes share one ``delta`` (docs/tastes.md; not ``tastes="auto"`` nor
        ``taste_check``).
        The effects are in ``result.style_effects_`` and ``summary["style_effects"]``.
    ties : {"model", "ignore"}, optional
        Whether ties (``tie``, ``tie (bothbad)``) enter the likelihood (docs/model.md, "Ties"): ``"model"``,
        attentive ties follow Davidson's model (a learned ``nu``: more ties on close pairs) and casual ones
        a rate ``t`` of their own; ``"ignore"``: they are counted and left out (the paper's model). Default:
        ``"model"`` when the log has ties and the fit supports it (every engine: EM, MAP and NUTS of either
        variant, learned or known strengths, taste classes and ``tastes="auto"`` too, with a style term too),
        else ``"ignore"``. ``nu`` and ``t`` are in ``result.ties_`` and ``summary["ties"]``; tie rows
        keep ``reason = "tie"`` and are never kept for export.
    tastes : int or "auto"
        Number of taste classes (two-class variant, learned strengths only):
        attentive users may follow one of ``tastes`` rankings, so a coherent
        minority taste is not mistaken for casual clicking. ``"auto"`` chooses
        1..4 by cross-validated held-out log-likelihood
        (:func:`bayes_annot.tastes.select_tastes`). With ``method="map"`` or
        ``"nuts"`` the EM fit chooses ``C`` and is the start; NUTS relabels
        every draw's classes by share (docs/tastes.md).
    max_tastes : int
        Largest number of taste classes ``tastes="auto"`` tries (default 4).
        When it wins, a warning says so: more classes may fit better still.
    taste_check : bool
        Run the casual-group test (:func:`bayes_annot.tastes.casual_group_test`:
        are the users a one-ranking fit calls casual coin-flippers or a taste
        group?) and store its verdict in ``summary["taste_diagnostic"]``
        (two-class variant, learned strengths). Always run with
        ``tastes="auto"``. It refits the one-ranking model on 100 simulated
        logs, hence off by default; the report shows the stored verdict and
        never runs the test itself.
    no_verdict : {"keep", "drop"}
        What the filter does with users it has no verdict on (uninformative
        users, and two-class users it keeps whatever they clicked; see
        :mod:`bayes_annot.decide`). Default ``keep``, with a warning giving
        their number and share of rows; their rows have ``reason =
        "no_verdict"``.
    priors : Priors, optional
    tol, max_iter : float, int
        EM convergence settings: EM stops when the penalised log-likelihood
        changes by less than ``tol * (1 + |loglik|)`` AND no parameter (user
        quality, strength, ``pi``, ``q``) by more than ``100 * tol``
        (:func:`bayes_annot.em.has_converged`).
    draws, tune, chains, sampler
        NUTS settings.
    progress : bool or bayes_annot.progress.Progress, optional
        Progress bars on stderr for work longer than about 2 s: EM iterations
        with the objective, Dask partitions, NUTS/MAP (PyMC's bar). ``None``
        (default): none, except inside a :func:`bayes_annot.progress.showing`
        block, and for NUTS PyMC's bar when stderr is a terminal (as before).
        ``False``: none at all.
    seed : int
    accelerate : bool, optional
        EM with SQUAREM extrapolation (steps kept only when the objective does
        not decrease); default: on for ``continuous`` (plain EM needs ~100
        iterations there) and for more than 200 models (many weakly
        identified strengths slow plain EM down, e.g. ~450 iterations at 10^4
        models seen ~20 times each), off for ``two-class`` otherwise (~10 iterations).
    start : dict or path, optional
        Warm start for EM: a folder written by a previous fit (its parameters,
        strengths and per-user quality, matched by label) or a dict with any
        of ``pi``, ``q``, ``strengths`` (n_models,), ``m`` and ``tau``, in this data's vocabularies.
    record_paths : bool
        Record the input file's absolute path in the summary (and so in
        ``summary.json`` and the report). By default only its name and
        SHA-256 are recorded (``summary["input"]``, and the first entry of
        ``summary["provenance"]``, the list updates extend).

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import bayes_annot as ba
    >>> log = ba.simulate(n_users=300, n_models=4, seed=3)
    >>> result = ba.fit(log)
    >>> list(result.users.columns[:6])
    ['user', 'n_labels', 'quality', 'quality_low', 'quality_high', 'kept']
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"unknown method '{method}', expected one of {', '.join(METHODS)}")
    check_fit_settings(tol=tol, max_iter=max_iter, draws=draws, tune=tune, chains=chains, seed=seed, mu=mu, tastes=tastes)
    spec = model_spec(variant=variant, tastes=tastes, q=q, priors=priors, mu=mu)  # the model's refusals, before reading
    resolve_ties(None if ties == "model" else ties, 0)  # an unknown ties mode, before reading
    which_casual = casual_covariates if isinstance(casual_covariates, CasualDesign) else \
        parse_casual_covariates(casual_covariates)
    casual_design(("x",), np.ones((1, 1)), casual_bins)  # casual_bins is checked before reading
    which_style = parse_style_covariates(style_covariates)
    rule = parse_filter(filter)
    check_no_verdict_policy(no_verdict)
    if not isinstance(max_tastes, (int, np.integer)) or isinstance(max_tastes, bool) or max_tastes < 1:
        raise InputError(f"max_tastes must be a positive integer, got {max_tastes!r}")
    if not use_p_a and p_a is None:
        p_a = False  # ignored: a column named p_a is then not read (nor validated) as probabilities
    input_info = describe_input(None)
    if isinstance(data, (str, Path)) and _is_parquet_collection(data):
        collection = data
        data = _read_parquet_collection(data)
        input_info = parquet_collection_info(collection, record_paths)
    if _is_dask_frame(data):
        if on_bad_row != "error" or winner_values:
            raise InputError(
                "on_bad_row='drop' (--on-bad-row drop) and winner_values (--winner-values) are not supported for "
                "Dask input (a folder or glob of parquet files): fix or map the winner values in the files, "
                "or fit a single file in memory"
            )
        if method != "em" or taste_check:
            raise InputError("a Dask DataFrame (or a folder of parquet files) is fitted by EM only, without taste_check")
        return _fit_dask_frame(
            data, spec=spec, rule=rule, user=user, model_a=model_a, model_b=model_b, winner=winner, p_a=p_a,
            use_p_a=use_p_a, mu=mu, strong_model=strong_model, tol=tol, max_iter=max_iter,
            seed=seed, start=start, input_info=input_info, no_verdict=no_verdict, progress=progress,
            casual_covariates=which_casual, casual_bins=casual_bins, ties=ties,
            max_tastes=max_tastes if tastes == "auto" else None,
            style_covariates=style_covariates if isinstance(style_covariates, StyleDesign) else which_style,
        )
    if isinstance(data, (str, Path)):
        frame = read_table(data)
        input_info = describe_input(data, record_paths)
    elif isinstance(data, pd.DataFrame):
        frame = data
    else:
        raise InputError(f"data must be a file path or a pandas DataFrame, got {type(data).__name__}")
    columns = ColumnMap(user=user, model_a=model_a, model_b=model_b, winner=winner, p_a=p_a, winner_values=winner_values)
    prepared = prepare(frame, columns, on_bad_row=on_bad_row)
    ties_mode = resolve_ties(ties, prepared.counts()["ties"])
    priors = spec.priors
    if isinstance(which_casual, CasualDesign):  # a previous fit's covariates and bins (an update)
        design = prepare_casual(prepared, design=which_casual)
    else:
        design = prepare_casual(prepared, which_casual, casual_bins)
    spec = spec.with_casual(design)
    if isinstance(style_covariates, StyleDesign):  # a previous fit's style term (cells' values), an update
        style = style_covariates
    else:
        style = style_design(which_style, design, None if design is None else prepared.casual_x[prepared.usable],
                             columns=[str(c) for c in prepared.frame.columns])
    if style is not None:
        if mu is not None or (use_p_a and prepared.has_p_a):
            raise InputError("style covariates need learned strengths (no p_a column, no mu): use "
                             "style_covariates='none' (--style-covariates none)")
        spec = spec.with_style(style)
    problem, strength_mode = build_problem(prepared, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=design,
                                           ties=ties_mode == "model", style=style is not None)
    spec = _data_spec(spec, problem.learned, tastes)  # a p_a column: known strengths (no taste classes)
    if taste_check and (spec.variant != "two-class" or not spec.learned):
        raise InputError("taste_check needs variant='two-class' and learned strengths (no p_a column, no mu)")
    pairs, pair_index = pair_counts(prepared, ties=ties_mode == "model", return_index=True)
    state = estimates = nuts_start = None
    if problem.n_labels == 0:
        # Nothing enters the likelihood: no verdict on anybody.
        estimates = _empty_estimates(prepared, variant, method, priors, q)
    elif tastes != 1 and method == "em":
        state = em_state(prepared, problem, pairs, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=design,
                         pair_index=pair_index)
        pair_index = None  # the block's cells hold it now (8 MB at 10^6 labels)
        res, extra = fit_taste_classes(problem, spec, tol=tol, max_iter=max_iter, seed=seed,
                                       max_tastes=max_tastes if tastes == "auto" else None,
                                       runner=LocalRunner([state.block], prepared.n_users),
                                       start=_resolve_start(start, prepared))
        spec = spec.with_tastes(res.n_tastes)
        state.block.release_pass_caches()  # the block is kept for updates; its pass caches are not needed
        estimates = taste_estimates(res, extra)
    elif tastes != 1:
        estimates = _fit_tastes_pymc(
            problem, prepared, spec, method, tol, max_iter, seed, max_tastes if tastes == "auto" else None,
            draws=draws, tune=tune, chains=chains, sampler=sampler,
            progress=progress if progress is not None else resolve_progress(None),
        )
    elif method in ("em", "nuts"):
        # continuous EM converges slowly (~100 plain iterations): SQUAREM steps, each kept only
        # when the penalised log-likelihood does not decrease, reach the optimum in ~4x fewer.
        squarem = default_accelerate(accelerate, variant, prepared.n_models)
        em_run = em_state(prepared, problem, pairs, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=design,
                         pair_index=pair_index)
        pair_index = None  # the block's cells hold it now (8 MB at 10^6 labels)
        with em_callback(resolve_progress(progress)) as callback:
            em = run_block_em(
                em_run.block, problem, spec, tol=tol, max_iter=max_iter,
                start=_resolve_start(start, prepared), accelerate=squarem, callback=callback,
            )
        if method == "em":
            state = em_run
            estimates = em_estimates(em, variant, known_strengths(problem, prepared, mu, strong_model),
                                     casual=design, style=style)
        else:  # every NUTS chain starts at this EM fit of the same model (fit_pymc's ``start``)
            from .pymc_model import start_point

            nuts_start = start_point(em)
    if estimates is None:  # MAP, or NUTS of one taste class
        from .pymc_model import fit_pymc

        estimates = fit_pymc(
            problem,
            spec,
            start=nuts_start,
            method=method,
            draws=draws,
            tune=tune,
            chains=chains,
            sampler=sampler,
            progress=progress if progress is not None else resolve_progress(None),
            seed=seed,
            user_labels=prepared.user_labels,
            model_labels=prepared.model_labels,
        )
        if estimates.strengths is None:
            estimates.strengths = known_strengths(problem, prepared, mu, strong_model)
    if tastes == 1:
        estimates.quality_floor = quality_floor(problem, estimates)
    if taste_check and "taste_diagnostic" not in estimates.extra_summary and problem.n_labels:
        estimates.extra_summary["taste_diagnostic"] = taste_diagnostic(problem, None, priors=priors, q_fixed=q, seed=seed,
                                                                       casual=design, style=style)

    components = graph_components(pairs)
    settings = {
        "variant": variant,
        "method": method,
        "filter": str(rule),
        "columns": prepared.columns,
        "use_p_a": use_p_a,
        "mu": mu,
        "strong_model": strong_model,
        "q": q,
        "tastes": tastes,
        "max_tastes": max_tastes if tastes == "auto" else None,
        "taste_check": bool(taste_check or tastes == "auto"),
        "no_verdict": no_verdict,
        "priors": asdict(priors),
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "accelerate": default_accelerate(accelerate, variant, prepared.n_models) if method == "em" else None,
        "warm_start": start is not None,
        "casual_covariates": _casual_setting(which_casual),
        "casual_bins": int(casual_bins),
        "ties": "auto" if ties is None else ties,  # as asked (an update resolves it again); the mode: summary["ties"]
    }
    if which_style != "none":  # absent by default: a fit without a style term records what it always did
        settings["style_covariates"] = which_style if isinstance(which_style, str) else list(which_style)
    estimates.extra_summary["ties"] = ties_summary(ties_mode, prepared.counts()["ties"], estimates)
    if winner_values:
        settings["winner_values"] = {str(k): str(v) for k, v in winner_values.items()}
    if on_bad_row != "error":
        settings["on_bad_row"] = on_bad_row
    if method == "nuts":
        settings.update(draws=draws, tune=tune, chains=chains, sampler=sampler)
    summary = assemble_summary(prepared, problem, estimates, variant, strength_mode, components, input_info, settings, pairs)
    summary["warnings"][:0] = prepared.notes  # rows dropped as invalid (already warned by prepare)
    summary["provenance"] = [provenance_entry(input_info, rows_read=prepared.n_rows, rows_added=prepared.n_rows)]
    summary["runtime_seconds"] = round(time.perf_counter() - t_start, 4)
    return FitResult(prepared, estimates, rule, summary, state=state, no_verdict=no_verdict)


def fit_prepared(
    prepared: PreparedData,
    *,
    variant: str = "two-class",
    filter="prob:0.5",
    use_p_a: bool = True,
    mu: float | None = None,
    strong_model: str | None = None,
    q: float | None = None,
    priors: Priors | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    start: dict | None = None,
    accelerate: bool | None = None,
    input_info: dict | None = None,
    state: EMState | None = None,
    no_verdict: str = "keep",
    winner_values: dict | None = None,
    on_bad_row: str = "error",
    tastes: int = 1,
    casual: CasualDesign | None = None,
    ties: str | None = None,
    style: StyleDesign | None = None,
    _started: float | None = None,
):
    """EM fit of an already prepared log with the block engine (optionally warm-started and accelerated).

    Builds the same :class:`FitResult` (tables and summary)
    as :func:`bayes_annot.fit` with ``method="em"``. ``state`` is the log's
    :class:`~bayes_annot.block_em.EMState` when the caller already has it (an
    update extends the previous fit's); otherwise it is built from the rows.
    With ``tastes`` > 1 the taste classes are fitted over that block
    (:func:`bayes_annot.local_em.fit_taste_classes`), from ``start["tastes"]`` alone when given.
    ``casual``: the casual covariates' design (a previous fit's bins; ``None``: none); ``state``'s
    block then carries the labels' casual cells. ``ties``: as :func:`fit` (an update keeps the previous
    fit's mode; ``state``'s block then holds the ties). ``style``: the attentive style term's design (a
    previous fit's; needs ``casual``; ties are then left out of the likelihood), its start ``start["style_delta"]``.
    """
    started = time.perf_counter() if _started is None else _started
    check_fit_settings(tol=tol, max_iter=max_iter, mu=mu, tastes=tastes)
    spec = model_spec(variant=variant, tastes=tastes, q=q, priors=priors, mu=mu)
    accelerate = default_accelerate(accelerate, variant, prepared.n_models)
    rule = parse_filter(filter)
    check_no_verdict_policy(no_verdict)
    priors = spec.priors
    spec = spec.with_casual(casual)

    def covariates_read():
        if casual is not None and tuple(prepared.casual_names) != casual.names:
            prepare_casual(prepared, design=casual)

    ties_mode = resolve_ties(ties, prepared.counts()["ties"])
    if style is not None:
        spec = spec.with_style(style)
    if state is None:
        covariates_read()
        problem, mode = build_problem(prepared, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=casual,
                                      ties=ties_mode == "model", style=style is not None)
        state = em_state(prepared, problem, pair_counts(prepared, ties=ties_mode == "model"), mu=mu,
                         strong_model=strong_model, use_p_a=use_p_a, casual=casual)
    else:  # the labels are already in the state's block: no per-row problem to build
        problem = ProblemSize(state.block.n_entries, prepared.n_models, state.block.learned)
        mode = strength_mode(prepared, mu, strong_model, use_p_a)
    if problem.n_labels == 0:
        raise InputError("no row enters the likelihood (all ties or same-model pairs): nothing to update")
    spec = _data_spec(spec, state.block.learned, tastes)
    from .progress import em_callback, resolve

    if spec.n_tastes != 1:
        from .block_em import LocalRunner
        from .local_em import fit_taste_classes, taste_estimates

        res, extra = fit_taste_classes(problem, spec, tol=tol, max_iter=max_iter, seed=0,
                                       runner=LocalRunner([state.block], prepared.n_users), start=start)
        state.block.release_pass_caches()
        estimates = taste_estimates(res, extra)
    else:
        with em_callback(resolve(None)) as callback:  # a bar inside a progress.showing() block (the CLI's)
            em = run_block_em(
                state.block, problem, spec, tol=tol, max_iter=max_iter, start=start,
                accelerate=accelerate, callback=callback, release=False,  # the floor reuses the cell counts
            )
        estimates = em_estimates(em, variant, known_strengths(problem, prepared, mu, strong_model), casual=casual,
                                 style=style)
        floor = NotImplemented
        if not hasattr(problem, "user") and style is None:  # an update: from the block's cell counts when it can
            floor = block_quality_floor(estimates, state.block, prepared.n_users)
        state.block.release_pass_caches()  # the block is kept for updates; its pass caches are not needed
        if floor is NotImplemented:
            if not hasattr(problem, "user"):
                covariates_read()
            rows_problem = problem if hasattr(problem, "user") else build_problem(
                prepared, mu=mu, strong_model=strong_model, use_p_a=use_p_a, casual=casual, ties=ties_mode == "model",
                style=style is not None)[0]
            floor = quality_floor(rows_problem, estimates)
        estimates.quality_floor = floor
    settings = {
        "variant": variant, "method": "em", "filter": str(rule), "columns": prepared.columns, "use_p_a": use_p_a,
        "mu": mu, "strong_model": strong_model, "q": q, "priors": asdict(priors), "tol": tol, "max_iter": max_iter,
        "seed": 0, "warm_start": start is not None, "accelerate": accelerate, "no_verdict": no_verdict, "tastes": tastes,
        "casual_covariates": "none" if casual is None else list(casual.names),
        "casual_bins": None if casual is None else max(casual.n_bins),
        "ties": "auto" if ties is None else ties,  # as asked (an update resolves it again); the mode: summary["ties"]
    }
    if style is not None:
        settings["style_covariates"] = list(style.names)
    estimates.extra_summary["ties"] = ties_summary(ties_mode, prepared.counts()["ties"], estimates)
    if winner_values:  # recorded so that later updates read the new rows the same way
        settings["winner_values"] = dict(winner_values)
    if on_bad_row != "error":
        settings["on_bad_row"] = on_bad_row
    components = graph_components(state.pair_counts)
    summary = assemble_summary(prepared, problem, estimates, variant, mode, components, input_info, settings, state.pair_counts)
    summary["runtime_seconds"] = round(time.perf_counter() - started, 4)
    return FitResult(prepared, estimates, rule, summary, state=state, no_verdict=no_verdict)


def assemble_summary(
    prepared: PreparedData,
    problem: UsableLabels,
    estimates: Estimates,
    variant: str,
    strength_mode: str,
    components: np.ndarray,
    input_info: dict | None,
    settings: dict,
    pairs: np.ndarray | None = None,
    *,
    counts: dict | None = None,
) -> dict:
    """The ``summary.json`` of a fit (without ``runtime_seconds``), with its plain-language warnings.

    ``pairs`` is the ``K x K`` table of usable labels per model pair (computed when not given).
    A fit whose log is not in memory (Dask) passes ``prepared = problem = None`` with its ``counts``
    (as :meth:`~bayes_annot.data.PreparedData.counts`) and ``pairs``.
    """
    counts = dict(prepared.counts() if counts is None else counts)
    n_labels = counts["rows_in_likelihood"] if problem is None else problem.n_labels
    learned = strength_mode == "learned" if problem is None else problem.learned
    if (estimates.extra_summary.get("ties") or {}).get("mode") == "model":  # ties in the likelihood (and pair counts)
        counts["ties_in_likelihood"] = int(counts["ties"])
    counts["users_in_likelihood"] = int((estimates.n_labels_user > 0).sum())
    counts["uninformative_users"] = int((~estimates.informative).sum())
    summary = {
        "bayes_annot_version": __version__,
        "engine": estimates.engine,
        "variant": variant,
        "strengths": strength_mode,
        "counts": counts,
        "parameters": {k: (None if v is None else float(v)) for k, v in estimates.parameters.items()},
        "loglik": None if estimates.loglik is None else float(estimates.loglik),
        "iterations": estimates.n_iter,
        "converged": estimates.converged,
        "runtime_seconds": None,
        "comparison_graph_components": int(components.max() + 1) if len(components) else 0,
        "warnings": [],
        "input": input_info or describe_input(None),
        "settings": settings,
    }
    summary.update(estimates.diagnostics)
    summary.update(estimates.extra_summary)
    summary["warnings"] = list(summary["warnings"])  # not the engine's list: warnings below are added to it
    if n_labels == 0:
        _warn(summary, "no row enters the likelihood (all ties or same-model pairs): every user is uninformative")
    elif counts["uninformative_users"] == counts["users"]:
        _warn(
            summary,
            "every user is uninformative: all pairs have attentive probability near 0.5 (equally strong models, "
            "or users who all click at random), so nobody can be judged",
        )
    # users who saw only uninformative pairs: the filter's no-verdict warning (FitResult) counts them
    if estimates.converged is False and estimates.engine == "em":
        _warn(summary, f"EM did not converge in {estimates.n_iter} iterations; raise max_iter or loosen tol")
    elif estimates.converged is False and estimates.engine == "map":
        _warn(summary, "the MAP optimiser did not report convergence; compare with --method em")
    if pairs is None:
        pairs = pair_counts(prepared)
    used = np.flatnonzero(pairs.sum(axis=0) + pairs.sum(axis=1))
    if len(used) and len(np.unique(components[used])) > 1 and learned:
        _warn(
            summary,
            f"the comparison graph has {len(np.unique(components[used]))} disconnected parts: strengths are "
            "comparable only within a part (each part is centred at 0)",
        )
    if n_labels:
        priors = Priors(**settings["priors"]) if isinstance(settings.get("priors"), dict) else Priors()
        for message in degenerate_fit_warnings(estimates, settings, priors, learned):
            _warn(summary, message)
        for message in taste_warnings(summary):
            _warn(summary, message)
    return summary


#: A share parameter (``q``, ``pi``) within this of 0 or 1 is reported as sitting at its boundary.
BOUNDARY_MARGIN = 0.03

#: Learned strengths beyond this many prior standard deviations (``Priors.strength_sigma``) are
#: reported as running away: the data no longer hold them, only the prior does.
STRENGTH_RUNAWAY_SIGMAS = 1.5


def degenerate_fit_warnings(estimates: Estimates, settings: dict, priors: Priors, learned: bool) -> list[str]:
    """Warnings for a fit that sits on a boundary (see :data:`BOUNDARY_MARGIN`, :data:`STRENGTH_RUNAWAY_SIGMAS`).

    * ``q`` (estimated) or ``pi`` within :data:`BOUNDARY_MARGIN` of 0 or 1;
    * ``tau`` (continuous, sampled) within :data:`BOUNDARY_MARGIN` of 0, its lower bound;
    * a learned strength beyond ``STRENGTH_RUNAWAY_SIGMAS * strength_sigma`` in absolute value.
    """
    params = estimates.parameters
    out = []
    margin = BOUNDARY_MARGIN
    q = params.get("q")
    if settings.get("q") is None and q is not None and not (margin <= q <= 1.0 - margin):
        out.append(
            f"degenerate fit: q = {q:.3f} sits at the boundary of [0, 1] (casual users would click one side "
            f"{'almost never' if q < margin else 'almost always'}); the casual type is probably absorbing "
            "something else (a position effect of attentive users, a taste group): do not trust the verdicts "
            "without checking (fix --q 0.5, or compare with the other variant, --variant)"
        )
    pi = params.get("pi")
    if pi is not None and not (margin <= pi <= 1.0 - margin):
        side = "casual" if pi < margin else "attentive"
        out.append(
            f"degenerate fit: pi = {pi:.3f} sits at the boundary of [0, 1] (almost every user is called {side}); "
            "the data may not separate the two types"
        )
    tau = params.get("tau")
    if tau is not None and estimates.engine == "nuts" and tau < margin:
        out.append(
            f"degenerate fit: tau = {tau:.3f} sits at its lower bound 0 (every user gets the same quality)"
        )
    if learned and estimates.strengths is not None and len(estimates.strengths):
        s = np.asarray(estimates.strengths, dtype=float)
        limit = STRENGTH_RUNAWAY_SIGMAS * priors.strength_sigma
        if np.isfinite(s).all() and np.abs(s).max() > limit:
            out.append(
                f"degenerate fit: strengths run away (largest |strength| {np.abs(s).max():.2f} > "
                f"{STRENGTH_RUNAWAY_SIGMAS:g} x the prior sigma {priors.strength_sigma:g}); they are held by the "
                "prior, not the data: compare with the other variant (--variant) or a plain Bradley–Terry fit"
            )
    return out


def taste_warnings(summary: dict) -> list[str]:
    """Warnings of the taste-class search and the casual-group test stored in ``summary``."""
    out = []
    selection = summary.get("taste_selection")
    if selection and selection.get("at_limit"):
        agreed = (summary.get("tastes") or {})
        starts = f" ({agreed['starts_agreed']} of {agreed['n_starts']} starts agreed)" if "starts_agreed" in agreed else ""
        out.append(
            f"tastes='auto' chose C = {selection['chosen']}, the largest number of taste classes it tried{starts}: "
            "more classes may fit better still; raise max_tastes (--max-tastes)"
        )
    check = summary.get("taste_diagnostic")
    n_tastes = (summary.get("tastes") or {}).get("n_tastes", 1)
    if check and check.get("verdict") == "taste group" and n_tastes == 1:
        out.append(check["message"])
    return out


def _fit_tastes_pymc(problem, prepared, spec: BehaviourSpec, method, tol, max_iter, seed, max_tastes,
                     **nuts_settings) -> Estimates:
    """Taste classes by MAP / NUTS: the EM fit chooses ``C`` (``max_tastes`` given: ``tastes="auto"``) and is
    the start (label switching: docs/tastes.md); the same taste columns and summary entries as EM."""
    from .pymc_model import fit_pymc

    res, extra_summary = fit_taste_classes(problem, spec, tol=tol, max_iter=max_iter, seed=seed, max_tastes=max_tastes)
    estimates = fit_pymc(
        problem, spec.with_tastes(res.n_tastes), method=method, seed=seed,
        user_labels=prepared.user_labels, model_labels=prepared.model_labels,
        start=res.as_start(), **nuts_settings,
    )
    if res.n_tastes == 1:  # tastes="auto" chose one ranking: the one-class model, with EM's columns
        estimates.extra_user_columns = {"taste": np.ones(problem.n_users, dtype=np.int64),
                                        "p_taste_1": estimates.quality}
        estimates.extra_model_columns = {"strength_taste_1": estimates.strengths}
        estimates.extra_summary["tastes"] = {"n_tastes": 1, "class_spread": [float(np.std(estimates.strengths))],
                                             "ordering": "classes numbered by share, largest first"}
    estimates.extra_summary["tastes"].update(
        start="the EM fit", starts_agreed=int(res.starts_agreed), n_starts=int(res.n_starts)
    )
    estimates.extra_summary = {**extra_summary, **estimates.extra_summary}
    return estimates


def ties_summary(mode: str, n_ties: int, estimates) -> dict:
    """``summary["ties"]``: the mode, the log's ties and, when modelled, the fitted ``nu`` and ``t``."""
    out = {"mode": mode, "n_ties": int(n_ties)}
    if mode == "model" and "tie_nu" in estimates.parameters:
        out.update(nu=float(estimates.parameters["tie_nu"]), t=float(estimates.parameters["casual_tie_rate"]))
    return out


def model_spec(*, variant: str = "two-class", tastes: int | str = 1, q: float | None = None,
               priors: Priors | None = None, mu: float | None = None) -> BehaviourSpec:
    """The :class:`~bayes_annot.spec.BehaviourSpec` of :func:`fit`'s settings, built before any data is read.

    Parameters
    ----------
    variant, tastes, q, priors, mu
        As in :func:`fit`. ``tastes="auto"`` gives one class (the number the
        search chooses replaces it, :meth:`~bayes_annot.spec.BehaviourSpec.with_tastes`)
        but must be a model where taste classes are defined; a global ``mu``
        gives known strengths, otherwise they are learned until the data show a
        ``p_a`` column (:meth:`~bayes_annot.spec.BehaviourSpec.with_strengths`).

    Raises
    ------
    InputError
        A setting or combination the model does not define (the spec's refusal, with the reason).
    """
    spec = BehaviourSpec(
        variant=variant, n_tastes=1 if tastes == "auto" else tastes, strengths="learned" if mu is None else "known",
        q_fixed=q, priors=Priors() if priors is None else priors,
    )
    return _data_spec(spec, spec.learned, tastes)


def _data_spec(spec: BehaviourSpec, learned: bool, tastes) -> BehaviourSpec:
    """``spec`` with the data's strength mode; ``tastes="auto"`` fits taste classes, so they must be defined."""
    spec = spec.with_strengths(learned)
    if tastes == "auto":
        spec.with_tastes(2)  # raises where taste classes are not defined (continuous, known strengths)
    return spec


def _resolve_start(start, prepared: PreparedData) -> dict | None:
    if start is None:
        return None
    if isinstance(start, (str, Path)):
        if not (Path(start) / "summary.json").exists():
            raise InputError(f"warm start '{start}' holds no bayes_annot results (summary.json missing)")
        return align_start(load_start(start), prepared.user_labels, prepared.model_labels)
    if start.get("by_label"):  # a folder's start already read (saved.start_of): keyed by user / model labels
        return align_start(start, prepared.user_labels, prepared.model_labels)
    return dict(start)


def _is_dask_frame(data) -> bool:
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(data, "npartitions")


def _is_parquet_collection(path) -> bool:
    from .data import is_glob

    if is_glob(path):
        return True
    path = Path(path)
    return path.is_dir() and any(path.glob("*.parquet"))


def _check_parquet_files(target: str) -> None:
    """A glob or folder of parquet files matches at least one file, and all files have the same columns
    (read from each file's footer; the order may differ)."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        fs, _, files = fsspec.core.get_fs_token_paths(target)
    except Exception as exc:  # an unreadable location is bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot list parquet files '{target}': {first}") from exc
    if not files:
        raise InputError(f"no file matches '{target}'")
    reference = None
    for name in sorted(files):
        try:
            with fs.open(name, "rb") as handle:
                schema = pq.read_schema(handle)
        except Exception as exc:  # a corrupt file is bad input
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot read parquet file '{name}': {first}") from exc
        columns = [c for c in schema.names if not c.startswith("__index_level_")]
        if reference is None:
            reference = (name, columns)
            continue
        missing = [c for c in reference[1] if c not in columns]
        extra = [c for c in columns if c not in reference[1]]
        if missing or extra:
            differs = []
            if missing:
                differs.append(f"lacks {', '.join(repr(c) for c in missing)}")
            if extra:
                differs.append(f"has {', '.join(repr(c) for c in extra)}")
            raise InputError(
                f"parquet files have different columns: '{name}' {' and '.join(differs)} compared with "
                f"'{reference[0]}'; every file of a Dask fit needs the same columns"
            )


def _read_parquet_collection(path):
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputError(f"'{path}': reading a folder or glob of parquet files needs pip install 'bayes_annot[dask]'") from None
    target = str(Path(path) / "*.parquet") if Path(path).is_dir() else str(path)
    _check_parquet_files(target)
    try:
        return dd.read_parquet(target)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read parquet files '{target}': {first}") from exc


def _fit_dask_frame(ddf, *, spec: BehaviourSpec, rule, tol, max_iter, seed, start, mu, strong_model, input_info=None,
                    no_verdict="keep", progress=None, casual_covariates="auto", casual_bins=DEFAULT_BINS, ties=None,
                    max_tastes=None, style_covariates="none", **columns):
    from .dask_em import fit_dask

    started = time.perf_counter()
    variant, priors, q_fixed, tastes = spec.variant, spec.priors, spec.q_fixed, spec.n_tastes
    try:
        dfit = fit_dask(ddf, spec=spec, tol=tol, max_iter=max_iter, mu=mu,
                        strong_model=strong_model, start=start if isinstance(start, dict) else None,
                        progress=progress, seed=seed, casual_covariates=casual_covariates, casual_bins=casual_bins,
                        ties=ties, max_tastes=max_tastes, style_covariates=style_covariates, **columns)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(str(exc)) from exc
    settings = {"variant": variant, "method": "em", "filter": str(rule), "columns": dfit.columns, "mu": mu,
                "strong_model": strong_model, "q": q_fixed, "priors": asdict(priors), "tol": tol,
                "max_iter": max_iter, "seed": seed, "no_verdict": no_verdict,
                "tastes": "auto" if max_tastes is not None else tastes, "max_tastes": max_tastes,
                "taste_check": max_tastes is not None,
                "casual_covariates": _casual_setting(casual_covariates), "casual_bins": int(casual_bins),
                "ties": "auto" if ties is None else ties}
    if dfit.style is not None:
        settings["style_covariates"] = list(dfit.style.names) if isinstance(style_covariates, StyleDesign) else (
            style_covariates if isinstance(style_covariates, str) else list(style_covariates))
    estimates = dfit.to_estimates()
    estimates.extra_summary["ties"] = ties_summary(dfit.ties_mode, dfit.counts["ties"], estimates)
    summary = assemble_summary(None, None, estimates, variant, dfit.strength_mode, dfit.components(), input_info,
                               settings, dfit.pair_counts, counts=dfit.counts)
    summary["backend"] = f"dask ({dfit.n_partitions} partitions)"
    summary["provenance"] = [provenance_entry(input_info, rows_read=dfit.counts["rows"], rows_added=dfit.counts["rows"])]
    summary["runtime_seconds"] = round(time.perf_counter() - started, 4)
    return FitResult._from_dask(ddf, dfit, rule, summary, no_verdict)


def _casual_setting(which):
    """``settings["casual_covariates"]``: ``"auto"``, ``"none"`` or the list of names (a design: its names)."""
    if isinstance(which, CasualDesign):
        return list(which.names)
    return list(which) if isinstance(which, tuple) else which


def _empty_estimates(prepared: PreparedData, variant: str, method: str, priors: Priors, q_fixed) -> Estimates:
    n = prepared.n_users
    prior_mean = priors.pi_alpha / (priors.pi_alpha + priors.pi_beta)
    return Estimates(
        engine=method,
        variant=variant,
        quality=np.full(n, prior_mean),
        p_good=np.full(n, prior_mean),
        n_labels_user=np.zeros(n, dtype=np.int64),
        informative=np.zeros(n, dtype=bool),
        strengths=np.zeros(prepared.n_models),
        parameters={"q": 0.5 if q_fixed is None else q_fixed, "mean_quality": prior_mean},
        loglik=0.0,
        n_iter=0,
        converged=True,
    )


class UserQualityModel:
    """Scikit-learn style wrapper around :func:`fit`.

    Parameters are those of :func:`fit` (except ``data``); ``fit(data)``
    validates, fits and returns ``self``, with ``result_``, ``users_``,
    ``models_``, ``rows_`` and ``summary_`` set. ``get_params`` /
    ``set_params`` follow scikit-learn's conventions, so
    ``sklearn.base.clone(est)`` and ``type(est)(**est.get_params())`` give an
    unfitted estimator with the same settings.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> est = ba.UserQualityModel(variant="two-class").fit(ba.simulate(n_users=200, seed=0))
    >>> est.users_.shape[0]
    200
    >>> ba.UserQualityModel(**est.get_params()).get_params() == est.get_params()
    True
    """

    def __init__(self, **settings):
        settings = take_renamed(settings, "model", "variant", "UserQualityModel()")
        _check_settings(settings)
        self.settings = settings

    def get_params(self, deep: bool = True) -> dict:
        """Every setting of :func:`fit`: the constructor's (the very objects given) over
        :func:`fit`'s defaults. ``deep`` is accepted for scikit-learn; no setting is an estimator."""
        return {**_fit_defaults(), **self.settings}

    def set_params(self, **params) -> "UserQualityModel":
        """Change settings (names of :func:`fit`'s parameters); returns ``self``."""
        params = take_renamed(params, "model", "variant", "set_params()")
        _check_settings(params)
        self.settings = {**self.settings, **params}
        return self

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"UserQualityModel({given})"

    def fit(self, data) -> "UserQualityModel":
        """Fit :func:`fit` to ``data`` with the stored settings; returns ``self``."""
        self.result_ = fit(data, **self.settings)
        self.users_ = self.result_.users
        self.models_ = self.result_.models
        self.rows_ = self.result_.rows
        self.summary_ = self.result_.summary
        return self


def _fit_defaults() -> dict:
    """:func:`fit`'s keyword parameters and their defaults."""
    import inspect

    return {
        name: p.default for name, p in inspect.signature(fit).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _check_settings(settings: dict) -> None:
    unknown = sorted(set(settings) - set(_fit_defaults()))
    if unknown:
        raise TypeError(f"UserQualityModel got unknown setting(s) {', '.join(unknown)}; expected parameters of fit()")


def _write_dpo(path, frames) -> None:
    """DPO record frames (an iterable, one pass) written to ``path`` atomically."""
    from .export import DPO_COLUMNS, write_dpo
    from .outdir import check_dpo_target

    check_dpo_target(path, None, DPO_COLUMNS)  # an existing file that is not DPO records is never replaced
    write_dpo(frames, Path(path))


def _side_file_fits(result: FitResult) -> bool:
    """An in-memory EM fit (it keeps its EM block) without casual covariates: its folder gets a side file."""
    state, data = result._state, result._data
    if state is None or data is None or tuple(data.casual_names) or result.summary.get("casual_effects"):
        return False
    return state.block.users.shape[0] == data.n_users


def _write_row_codes(out, result: FitResult, limit: int | None = None):
    """Write (or link, from the folder a fast update read) the codes files of every row
    (:func:`bayes_annot.update_state.write_codes`; past ``limit`` files, the trailing ones merged into one);
    ``None`` when the fit gets no side file."""
    from .update_state import write_codes

    if not _side_file_fits(result):
        return None

    def link(name, handle, dir_fd):
        out.link_file(name, handle, name=name, dir_fd=dir_fd)

    written = write_codes(result._data, path_of=out.path, link=link, limit=limit)
    if written is None:
        _drop_row_codes(out)
    return written


def _drop_row_codes(out) -> None:
    """Remove the codes files written into the staging folder (no side file will use them)."""
    for name in [f for f in out.files if f.startswith("rows-codes-")]:
        out.path(name).unlink(missing_ok=True)
        out.files.remove(name)


def _write_update_state(out, result: FitResult, codes) -> None:
    """Write the folder's side file (:mod:`bayes_annot.update_state`) so that an update of it encodes only
    its new rows: an in-memory EM fit (it keeps its EM block) without casual covariates."""
    from .update_state import STATE_FILE, STATE_VERSION, write_state

    path = out.path(STATE_FILE)
    if write_state(path, fit_id=out.fit_id, data=result._data, state=result._state, codes=codes):
        out.manifest_extra["update_state"] = {"file": STATE_FILE, "version": STATE_VERSION}
    else:
        path.unlink(missing_ok=True)
        out.files.remove(STATE_FILE)
        if out.tables.get("rows", {}).get("layout") != "parts":  # the rows' outputs do not read them either
            _drop_row_codes(out)


def _write_row_parts(out, result: FitResult, renamed: dict, codes, limit: int | None = None) -> bool:
    """Write ``rows`` as parts (the result of a fast folder update): the previous folder's parts linked
    unchanged, the new input rows as one more part, the output columns per user in their own file (each
    row's user and reason are in the codes files, ``codes``).

    Past ``limit`` parts, the trailing ones (the new rows among them) are merged into one part instead
    (:func:`bayes_annot.outdir.compaction_start`): the folder is swapped in whole as always, so the parts
    it replaces leave with the previous folder and a failure leaves that folder as it was.

    ``False`` (nothing written) when the result has no previous parts, or its new rows' columns are not
    typed as the previous parts' (the caller then writes one table of every row).
    """
    from .outdir import compaction_start
    from .tables import to_arrow, write_arrow

    source = getattr(result, "_rows_source", None)
    if source is None or result._data is None:
        return False
    parts, n_old, new_frame = source["parts"], source["n_old"], source["new_frame"]
    n_new = 0 if new_frame is None else len(new_frame)
    if result._data.n_rows != n_old + n_new or not parts:
        return False
    template = parts[0][0]
    new_part = None
    if n_new:
        renames = input_renames(new_frame.columns)
        frame = new_frame.rename(columns=renames) if renames else new_frame
        if [str(c) for c in frame.columns] != list(template["input_columns"]):
            return False
        table, metas = to_arrow(frame, checked=True)  # (save() checked the new rows)
        typed = {m["name"]: m for m in template["columns"]}
        if any({k: v for k, v in m.items()} != typed.get(m["name"]) for m in metas):
            return False
        if any(not table.schema.field(m["name"]).type.equals(_part_type(template, m["name"])) for m in metas):
            return False
        new_part = (table, metas)
    names = {part["file"] for part, _ in parts}

    def fresh_name() -> str:  # after every number the previous parts used (a merged part too)
        numbers = [int(m.group(1)) for n in names if (m := re.fullmatch(r"rows-part-([0-9]+)\.parquet", n))]
        name = f"rows-part-{max([len(parts) - 1, *numbers]) + 1}.parquet"
        names.add(name)
        return name

    start = compaction_start([int(part["rows"]) for part, _ in parts] + ([n_new] if new_part else []), limit)
    merged = None
    if start is not None:
        merged = _merge_row_parts(out, parts[start:], None if new_part is None else new_part[0], fresh_name())
        if merged is None:
            start = None
    kept = parts if start is None else parts[:start]
    descriptions = []
    folder = source.get("folder")
    for part, handle in kept:
        out.link_file(part["file"], handle, name=part["file"], dir_fd=getattr(folder, "dir_fd", None))
        descriptions.append(part)
    if merged is not None:
        descriptions.append(merged)
    elif new_part is not None:
        name = fresh_name()
        with open(out.path(name), "wb") as handle:
            meta = write_arrow(*new_part, handle, "parquet")
        descriptions.append(dict(meta, file=name, input_columns=list(template["input_columns"])))
    with open(out.path("rows-outputs.parquet"), "wb") as handle:
        outputs = _write_outputs(result, handle, codes)
    out.tables["rows"] = {
        "format": "parquet", "layout": "parts", "rows": int(n_old + n_new),
        "parts": [{k: v for k, v in d.items() if k != "layout"} for d in descriptions],
        "outputs": dict(outputs, file="rows-outputs.parquet"), "renamed_input_columns": renamed,
    }
    return True


def _merge_row_parts(out, parts: list, tail, name: str) -> dict | None:
    """Write the saved ``parts`` (then the new rows' Arrow table ``tail``) as the one part ``name`` of the staging
    folder; its description, or ``None`` (nothing left written) when they cannot be one part (columns typed
    otherwise: the parts are then kept as they are)."""
    import pyarrow as pa

    from .tables import write_parts_as_one

    path = out.path(name)
    try:
        with open(path, "wb") as handle:
            meta = write_parts_as_one(parts, handle, tail)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        path.unlink(missing_ok=True)
        out.files.remove(name)
        return None
    return dict(meta, file=name, input_columns=list(parts[0][0]["input_columns"]))


def _write_outputs(result: FitResult, handle, codes) -> dict:
    """Write the outputs of every row per user: one row per stable user number of the codes files
    (``codes``), its ``code`` (3 not kept, 4 no verdict, 0 kept, + 8 when kept; see
    :func:`bayes_annot.update_state.user_codes`) and ``weight``. A row's ``kept, reason, weight`` follow from
    these and the row's own user and reason in the codes files (``load()`` reads them so): no column of every
    row is written, and the description says so (``by: user``, the codes files in row order).
    """
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq

    order = codes.stable_order(result._data.n_users)
    table = pa.table({"code": pa.array(result._user_output_codes()[order]),
                      "weight": pa.array(np.asarray(result.estimates.quality, dtype=np.float64)[order])})
    pq.write_table(table, handle, compression="none", use_dictionary=False, write_statistics=False)
    return {"format": "parquet", "by": "user", "rows": int(table.num_rows), "codes": list(codes.entries),
            "schema": base64.b64encode(table.schema.serialize().to_pybytes()).decode("ascii")}


def _part_type(meta: dict, name: str):
    """The Arrow type of column ``name`` in a written table's schema."""
    import base64

    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["schema"])))
    return schema.field(name).type


def _rebuild_data(rows: pd.DataFrame | None, summary: dict) -> PreparedData | None:
    """Re-encode saved rows with the fit's column map (``None`` on any trouble: what needs them degrades)."""
    if rows is None:
        return None
    try:
        columns = dict((summary.get("settings") or {}).get("columns") or {})
        resolved = {}
        for role in ("user", "model_a", "model_b", "winner", "p_a"):
            name = columns.get(role)
            if name is not None and name not in rows.columns and f"input_{name}" in rows.columns:
                name = f"input_{name}"
            resolved[role] = name
        if resolved["user"] is None:
            resolved.pop("user")
        frame = rows.drop(columns=[c for c in OUTPUT_COLUMNS if c in rows.columns])
        if resolved.get("p_a"):
            frame = frame.assign(**{resolved["p_a"]: pd.to_numeric(frame[resolved["p_a"]], errors="coerce")})
        resolved["p_a"] = resolved.get("p_a") or False  # the fit used no p_a column: do not pick one up
        settings = summary.get("settings") or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return prepare(frame, ColumnMap(**resolved, winner_values=settings.get("winner_values")),
                           on_bad_row=settings.get("on_bad_row") or "error")
    except Exception:  # noqa: BLE001 - the report degrades, it does not fail
        return None


def load(directory: str | Path) -> FitResult:
    """Read what :meth:`FitResult.save` wrote, as a :class:`FitResult` with ``backend == "folder"``.

    Every table comes back with the types it was written with (``kept`` is
    boolean, ``weight`` a float, an input column of text stays text and one
    of numbers stays numbers; see :mod:`bayes_annot.tables`), whether the
    folder holds CSV or parquet tables; ``summary`` is a dict and ``idata``
    the ``posterior.nc`` when present. The folder is opened once and every
    file read through that handle, so a concurrent writer replacing the folder
    never gives a mix of two fits.

    Examples
    --------
    >>> import tempfile, bayes_annot as ba
    >>> result = ba.fit(ba.simulate(n_users=50, seed=0))
    >>> saved = ba.load(result.save(tempfile.mkdtemp() + "/out"))
    >>> saved.users.shape == result.users.shape
    True
    """
    saved = read_tables(directory)
    return FitResult.from_tables(saved.users, saved.models, saved.rows, saved.summary, saved.idata, saved.manifest)
