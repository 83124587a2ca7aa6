"""The result of a Dask-backed EM fit: same tables and files as :class:`~bayes_annot.fit.FitResult`.

``users``, ``models`` and ``summary`` are small and live on the driver;
``rows`` is a lazy Dask DataFrame (every input row + ``kept, reason, weight``,
in input order) that :meth:`DaskFitResult.save` streams to ``rows.csv``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .decide import FilterRule, check_no_verdict_policy, decide, parse_filter
from .progress import iterate, resolve as resolve_progress

__all__ = ["DaskFitResult"]


class DaskFitResult:
    """Tables of a Dask EM fit (see :func:`bayes_annot.dask_em.fit_dask`).

    Attributes
    ----------
    users, models : pandas.DataFrame
        As in :class:`~bayes_annot.fit.FitResult`.
    rows : dask.dataframe.DataFrame
        Lazy: every input row + ``kept, reason, weight``.
    summary : dict
    """

    def __init__(self, ddf, dask_fit, rule: FilterRule, summary_base: dict, no_verdict: str = "keep"):
        self._ddf = ddf
        self.dask_fit = dask_fit
        self.estimates = dask_fit.to_estimates()
        self._summary_base = summary_base
        self._apply(rule, no_verdict)

    def _apply(self, rule: FilterRule, no_verdict: str = "keep") -> None:
        est, dfit = self.estimates, self.dask_fit
        eligible = est.n_labels_user > 0
        keep, no_verdict_mask, info = decide(
            rule, est.quality, est.p_good, None, eligible=eligible, uninformative=~est.informative, no_verdict=no_verdict
        )
        self.rule, self._keep, self.no_verdict = rule, keep, no_verdict
        users = pd.DataFrame(
            {
                "user": dfit.user_labels,
                "n_labels": est.n_labels_user.astype(np.int64),
                "quality": est.quality,
                "quality_low": np.nan,
                "quality_high": np.nan,
                "kept": keep,
                "uninformative": ~est.informative,
                "n_rows": np.asarray(dfit.n_rows_user, dtype=np.int64),
            }
        )
        if est.variant == "continuous":
            users["p_eta_above_half"] = est.p_good
        for name, values in est.extra_user_columns.items():
            users[name] = values
        self.users = users
        models = pd.DataFrame({"model": dfit.model_labels, "strength": est.strengths if est.strengths is not None else np.nan})
        for name, values in est.extra_model_columns.items():
            models[name] = values
        models["n_labels"] = np.asarray(dfit.n_labels_model, dtype=np.int64)
        self.models = models
        from .dask_em import to_rows

        self.rows = to_rows(self._ddf, dfit, keep, est.quality, no_verdict_mask)
        kept_rows = int(est.n_labels_user[keep].sum())
        summary = json.loads(json.dumps(self._summary_base))
        summary["counts"].update(kept_rows=kept_rows, kept_users=int(keep.sum()))
        summary["filter"] = dict(info, kept_rows=kept_rows)
        summary["counts"]["no_verdict_users"] = int(no_verdict_mask.sum())
        summary["counts"]["no_verdict_rows"] = int(est.n_labels_user[no_verdict_mask].sum())
        if no_verdict_mask.any():
            from .fit import _warn, no_verdict_message

            _warn(summary, no_verdict_message(summary["counts"], ~est.informative & no_verdict_mask, no_verdict))
        self.summary = summary

    def filter(self, rule, no_verdict: str | None = None) -> "DaskFitResult":
        """A copy with another filter rule applied (no refit); ``no_verdict`` as in ``FitResult.filter``."""
        clone = object.__new__(DaskFitResult)
        clone._ddf, clone.dask_fit, clone.estimates = self._ddf, self.dask_fit, self.estimates
        clone._summary_base = self._summary_base
        clone._apply(parse_filter(rule), check_no_verdict_policy(self.no_verdict if no_verdict is None else no_verdict))
        return clone

    def comparison_parts(self) -> np.ndarray:
        """Connected part of the comparison graph of each model (``models`` order), as ``FitResult``'s."""
        return self.dask_fit.components()

    @property
    def loglik_trace(self) -> list[float]:
        """Penalised log-likelihood per EM iteration."""
        return list(self.estimates.loglik_trace)

    @property
    def idata(self):
        """1 chain x 1 draw ``InferenceData`` of the point estimates."""
        from .inference_data import point_estimate_idata

        labels = SimpleNamespace(user_labels=self.dask_fit.user_labels, model_labels=self.dask_fit.model_labels)
        return point_estimate_idata(labels, self.estimates)

    def _dpo_parts(self, **columns) -> list:
        """One delayed DPO frame per input partition (``dpo_from_rows`` with the partition's first row number)."""
        from dask import delayed

        from .export import dpo_from_rows

        settings = self.dask_fit.columns
        dpo_from_rows(self.rows._meta, settings, **columns)  # missing text columns fail here, before any work
        offsets = np.concatenate([[0], np.cumsum(self.dask_fit.partition_rows)[:-1]]).astype(int)
        parts = self.rows.to_delayed()
        return [delayed(dpo_from_rows)(part, settings, offset=int(o), **columns) for part, o in zip(parts, offsets)]

    def to_dpo(self, path=None, **columns):
        """Kept labels as DPO records (``prompt, chosen, rejected, weight, ...``), a lazy Dask DataFrame.

        Same records as :meth:`bayes_annot.fit.FitResult.to_dpo` on the
        in-memory fit, one partition per input partition, indexed by input
        row. With ``path`` (``.jsonl`` or ``.parquet``) the records are also
        written to that one file, streamed partition by partition (the driver
        holds one partition's records at a time), atomically.
        """
        import dask.dataframe as dd

        from .export import DPO_COLUMNS

        parts = self._dpo_parts(**columns)
        if path is not None:
            tmp, _ = self.stage_dpo(path, **columns)
            os.replace(tmp, path)
        meta = pd.DataFrame({c: pd.Series([], dtype=float if c == "weight" else object) for c in DPO_COLUMNS})
        meta.index = pd.Index([], dtype=np.int64, name="row")
        return dd.from_delayed(parts, meta=meta)

    def stage_dpo(self, path, staging_dir=None, **columns) -> tuple[Path, int]:
        """DPO records streamed to a temporary file (beside ``path`` or in ``staging_dir``): ``(file, records)``."""
        from .export import stage_dpo

        parts = self._dpo_parts(**columns)
        parts = iterate(resolve_progress(None), parts, desc="writing DPO records", unit="partition", total=len(parts))
        return stage_dpo((part.compute() for part in parts), Path(path), staging_dir)

    def report(self, path, **options) -> Path:
        """Write the HTML diagnostics report (see :func:`bayes_annot.report.build_report`).

        Built from what the driver holds (tables, EM trace, pair counts):
        sections that need the rows themselves (the posterior predictive check
        of agreement) say so instead.
        """
        from .report import build_report

        return build_report(self, path, **options)

    def save(self, directory, *, report: bool = False, dpo=None, format: str = "csv", safe_csv: bool = False,
             inputs=(), on_wait=None, dpo_columns: dict | None = None) -> Path:
        """Write the result folder as :meth:`bayes_annot.fit.FitResult.save` does, all or nothing.

        The rows are streamed from the workers one partition at a time into
        one ``rows`` table; a DPO export (``dpo``) is streamed the same way.
        """
        from .outdir import ResultWriter
        from .tables import input_renames

        with ResultWriter(directory, inputs=inputs, fmt=format, safe_csv=safe_csv, on_wait=on_wait) as out:
            out.table("users", self.users)
            out.table("models", self.models)
            renames = input_renames(self._ddf.columns)
            parts = self.rows.to_delayed()  # a bar inside a bayes_annot.progress.showing() block (the CLI's)
            parts = iterate(resolve_progress(None), parts, desc="writing rows", unit="partition", total=len(parts))
            out.stream_table("rows", (part.compute() for part in parts),
                             renamed_input_columns={new: old for old, new in renames.items()})
            out.json("summary.json", self.summary)
            if report:
                self.report(out.path("report.html"))
            if dpo is not None:
                out.extra_file(dpo, lambda path: self.to_dpo(path, **(dpo_columns or {})))
        return out.target

    def __repr__(self) -> str:
        c = self.summary["counts"]
        return (
            f"<DaskFitResult {self.summary['model']} via em (dask): {c['users']} users, {c['models']} models, "
            f"{c['rows']} rows; kept {c['kept_users']} users ({self.summary['filter']['rule']})>"
        )
