r"""Incremental updates: refit after new votes arrive, starting from the previous fit.

:func:`update` returns the fit of *old + new* rows, the same answer as a full
refit (:func:`bayes_annot.fit` on the concatenated log) to the EM tolerance,
but does much less work:

* **encoding is reused**: only the new rows are validated and encoded; the
  previous codes are remapped to the merged sorted vocabularies with
  ``np.searchsorted`` (the merged :class:`~bayes_annot.data.PreparedData` is
  identical to what :func:`~bayes_annot.data.prepare` builds from the
  concatenated log);
* **warm start**: EM starts from the previous estimates, mapped to the new
  vocabularies by label (``pi``, ``q``, strengths, ``theta_u``; new users and
  models start at the defaults: the population level and strength 0);
* **a faster E-step**: labels are sorted by user once, so per-user and per-cell
  sums are ``np.add.reduceat`` over contiguous runs instead of weighted
  ``np.bincount`` (the block code of :mod:`bayes_annot.dask_em`, one block);
* **SQUAREM** (``accelerate=True``): after each EM step an extrapolated point
  is tried and kept only when its objective is at least that of the EM step,
  so the penalised log-likelihood still never decreases; the stopping rule is
  the one of :func:`~bayes_annot.em.fit_em` (a plain EM step changing the
  objective by at most ``tol * (1 + |loglik|)``).

EM converges linearly, so stopping at ``tol`` leaves a small distance to the
optimum that depends on where EM started: a warm-started fit and a cold refit
agree to about ``sqrt(tol)``-scale in the parameters; use ``tol=1e-14`` when
the two must agree to 1e-6.

:func:`load_start` reads a saved output folder into a label-keyed start (for
``bayes-annot fit NEW --warm-start DIR``) and :func:`align_start` maps such a
start onto a prepared log's vocabularies.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import logit

from .dask_em import LocalRunner, make_block, run_em
from .data import ColumnMap, PreparedData, prepare
from .decide import parse_filter
from .errors import InputError
from .likelihood import Priors

__all__ = ["update", "merge_prepared", "warm_start", "load_start", "align_start", "fit_prepared"]

_EM_SETTINGS = ("model", "filter", "tol", "max_iter", "q", "priors", "use_p_a", "mu", "strong_model")


# --------------------------------------------------------------------------- encoding reuse


def _as_text(labels) -> np.ndarray:
    return np.asarray(labels, dtype=object).astype(str)


def _sorted_union(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Union of two sorted unique text arrays; O(len(old)) when few labels are new."""
    if old.shape[0] == 0:
        return new
    position = np.searchsorted(old, new)
    found = old[np.minimum(position, old.shape[0] - 1)] == new
    if found.all():
        return old
    return np.insert(old.astype(np.result_type(old, new)), position[~found], new[~found])


def merge_prepared(old: PreparedData, new: PreparedData) -> PreparedData:
    """The prepared log of ``old`` rows followed by ``new`` rows, without re-encoding ``old``.

    Equal, array for array, to ``prepare(concat([old.frame, new.frame]))``.
    """
    for role in ("user", "model_a", "model_b", "winner", "p_a"):
        if old.columns.get(role) != new.columns.get(role):
            raise InputError(
                f"new rows use column '{new.columns.get(role)}' for {role}, the previous fit used '{old.columns.get(role)}'"
            )
    old_u, new_u = _as_text(old.user_labels), _as_text(new.user_labels)
    old_m, new_m = _as_text(old.model_labels), _as_text(new.model_labels)
    users = _sorted_union(old_u, new_u)
    models = _sorted_union(old_m, new_m)
    umap_old = np.searchsorted(users, old_u).astype(np.int32)
    umap_new = np.searchsorted(users, new_u).astype(np.int32)
    mmap_old = np.searchsorted(models, old_m).astype(np.int32)
    mmap_new = np.searchsorted(models, new_m).astype(np.int32)
    p_a = None
    if old.p_a is not None and new.p_a is not None:
        p_a = np.concatenate([old.p_a, new.p_a])
    frame = pd.concat([old.frame, new.frame], ignore_index=True)
    return PreparedData(
        frame=frame,
        columns=dict(old.columns),
        user_labels=users.astype(object),
        model_labels=models.astype(object),
        user=np.concatenate([umap_old[old.user], umap_new[new.user]]),
        model_a=np.concatenate([mmap_old[old.model_a], mmap_new[new.model_a]]),
        model_b=np.concatenate([mmap_old[old.model_b], mmap_new[new.model_b]]),
        choice_a=np.concatenate([old.choice_a, new.choice_a]),
        p_a=p_a,
        reason_code=np.concatenate([old.reason_code, new.reason_code]),
        notes=[],
    )


# --------------------------------------------------------------------------- warm starts


def _label_start(result) -> dict:
    """Label-keyed start from a FitResult (pi, q, m, strengths by model, theta by user)."""
    est = result.estimates
    params = est.parameters
    start = {"pi": params.get("pi"), "q": params.get("q"), "m": params.get("m")}
    if est.strengths is not None and result.summary.get("strengths") == "learned":
        start["strengths"] = pd.Series(np.asarray(est.strengths, dtype=float), index=_as_text(result._data.model_labels))
    if est.variant == "continuous":
        theta = getattr(est, "theta", None)
        if theta is None:
            quality = np.clip(np.asarray(est.quality, dtype=float), 1e-12, 1 - 1e-12)
            theta = np.where(est.informative, logit(quality), np.nan)
        start["theta"] = pd.Series(theta, index=_as_text(result._data.user_labels))
    return start


def align_start(start: dict, user_labels, model_labels) -> dict:
    """Map a label-keyed start (see :func:`load_start`) onto vocabularies.

    Models absent from the start get strength 0 (the prior mean), users absent
    get ``theta = NaN`` (EM starts them at the population level ``m``).
    """
    out = {k: start.get(k) for k in ("pi", "q", "m")}
    strengths = start.get("strengths")
    if strengths is not None:
        s = pd.Series(strengths, dtype=float)
        out["strengths"] = s.reindex(_as_text(model_labels)).fillna(0.0).to_numpy()
    theta = start.get("theta")
    if theta is not None:
        out["theta"] = pd.Series(theta, dtype=float).reindex(_as_text(user_labels)).to_numpy()
    return out


def warm_start(previous, prepared: PreparedData) -> dict:
    """Start dict for ``fit_em`` on ``prepared`` from a previous :class:`~bayes_annot.fit.FitResult`."""
    return align_start(_label_start(previous), prepared.user_labels, prepared.model_labels)


def load_start(directory: str | Path) -> dict:
    """Label-keyed warm start read from a saved output folder.

    Reads ``summary.json`` (``pi``, ``q``, ``m``), ``models.csv`` (strengths
    by model, when they were learned) and, for the continuous model,
    ``users.csv`` (``theta = logit(quality)`` of informative users). A saved
    folder holds no encoded arrays, so this is a parameter-only warm start:
    fit the *full* log (old + new rows) with it, after :func:`align_start`.

    Returns
    -------
    dict
        ``pi``, ``q``, ``m`` (floats or ``None``), ``strengths``
        (:class:`pandas.Series` by model, or absent), ``theta`` (Series by
        user, continuous only), ``model`` (the variant saved).
    """
    directory = Path(directory)
    summary_path = directory / "summary.json"
    if not summary_path.exists():
        raise InputError(f"'{directory}' holds no bayes_annot results (summary.json missing)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    params = summary.get("parameters", {})
    start = {"pi": params.get("pi"), "q": params.get("q"), "m": params.get("m"), "model": summary.get("model")}
    models_path = directory / "models.csv"
    if summary.get("strengths") == "learned" and models_path.exists():
        models = pd.read_csv(models_path, dtype={"model": str}, keep_default_na=False, na_values=[""])
        if "strength" in models.columns and models["strength"].notna().all():
            start["strengths"] = pd.Series(models["strength"].to_numpy(float), index=models["model"].str.strip())
    users_path = directory / "users.csv"
    if summary.get("model") == "continuous" and users_path.exists():
        users = pd.read_csv(users_path, dtype={"user": str}, keep_default_na=False, na_values=[""])
        quality = np.clip(users["quality"].to_numpy(float), 1e-12, 1 - 1e-12)
        informative = ~users["uninformative"].to_numpy(bool) if "uninformative" in users.columns else np.ones(len(users), bool)
        start["theta"] = pd.Series(np.where(informative, logit(quality), np.nan), index=users["user"].str.strip())
    return start


# --------------------------------------------------------------------------- fitting prepared data


def _component_labels(pair_counts: np.ndarray) -> np.ndarray:
    _, labels = connected_components(csr_matrix(pair_counts > 0), directed=False)
    return labels


def fit_prepared(
    prepared: PreparedData,
    *,
    model: str = "two-class",
    filter="prob:0.5",
    use_p_a: bool = True,
    mu: float | None = None,
    strong_model: str | None = None,
    q: float | None = None,
    priors: Priors | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    start: dict | None = None,
    accelerate: bool = True,
    input_info: dict | None = None,
    _started: float | None = None,
):
    """EM fit of an already prepared log with the block engine (optionally warm-started and accelerated).

    Builds the same :class:`~bayes_annot.fit.FitResult` (tables and summary)
    as :func:`bayes_annot.fit` with ``method="em"``.
    """
    from .fit import Estimates, FitResult, assemble_summary, build_problem

    started = time.perf_counter() if _started is None else _started
    if model not in ("two-class", "continuous"):
        raise InputError(f"unknown model '{model}', expected one of two-class, continuous")
    if q is not None and not 0.0 < q < 1.0:
        raise InputError(f"q must lie in (0, 1), got {q}")
    rule = parse_filter(filter)
    priors = priors or Priors()
    problem, strength_mode = build_problem(prepared, mu=mu, strong_model=strong_model, use_p_a=use_p_a)
    if problem.n_labels == 0:
        raise InputError("no row enters the likelihood (all ties or same-model pairs): nothing to update")
    k = prepared.n_models
    if problem.learned:
        block = make_block(
            prepared.user, prepared.usable, k, cell=problem.cell().astype(np.int32), users=np.arange(prepared.n_users)
        )
    else:
        block = make_block(
            prepared.user, prepared.usable, k, choice=problem.choice_a, known_logit=problem.known_logit_mu,
            users=np.arange(prepared.n_users),
        )
    runner = LocalRunner([block], prepared.n_users)
    if start is not None and not problem.learned:
        start = {key: value for key, value in start.items() if key != "strengths"}
    em = run_em(
        runner, k, problem.learned, variant=model, priors=priors, q_fixed=q, tol=tol, max_iter=max_iter,
        start=start, accelerate=accelerate,
    )
    params = {"pi": em.pi, "q": em.q} if model == "two-class" else {"m": em.m, "tau": em.tau, "q": em.q}
    params["mean_quality"] = float(np.mean(em.quality[em.n_labels_user > 0]))
    strengths = em.strengths
    if strengths is None and mu is not None:
        strong = int(np.flatnonzero(prepared.model_labels == str(strong_model).strip())[0])
        strengths = np.full(k, -logit(mu) / k)
        strengths[strong] = logit(mu) * (k - 1) / k
    estimates = Estimates(
        engine="em", variant=model, quality=em.quality,
        p_good=em.p_eta_above_half if model == "continuous" else em.quality,
        n_labels_user=em.n_labels_user, informative=em.informative, strengths=strengths, parameters=params,
        loglik=em.loglik, loglik_trace=em.loglik_trace, n_iter=em.n_iter, converged=em.converged,
        runtime_seconds=em.runtime_seconds, user_loglik=em.user_loglik,
    )
    estimates.theta = em.theta  # exact theta for the next warm start (continuous)
    if problem.learned:
        pair_counts = block.cell_sums_by_user(np.ones(block.users.shape[0])).reshape(k, k, 2).sum(axis=2)
    else:
        pair_counts = np.bincount(problem.model_a.astype(np.int64) * k + problem.model_b, minlength=k * k).reshape(k, k)
    components = _component_labels(pair_counts)
    settings = {
        "model": model, "method": "em", "filter": str(rule), "columns": prepared.columns, "use_p_a": use_p_a,
        "mu": mu, "strong_model": strong_model, "q": q, "priors": asdict(priors), "tol": tol, "max_iter": max_iter,
        "seed": 0, "warm_start": start is not None, "accelerate": accelerate,
    }
    summary = assemble_summary(prepared, problem, estimates, model, strength_mode, components, input_info, settings)
    summary["runtime_seconds"] = round(time.perf_counter() - started, 4)
    return FitResult(prepared, estimates, rule, summary)


# --------------------------------------------------------------------------- update


def update(previous, new_rows, *, accelerate: bool = True, **fit_settings):
    """Fit old + new rows, warm-started from ``previous`` and reusing its encoding.

    Parameters
    ----------
    previous : bayes_annot.fit.FitResult
        An EM (or MAP) fit; its settings (model, filter, columns, ``q``,
        priors, ``tol``, ...) are reused unless overridden.
    new_rows : pandas.DataFrame or path
        The new annotations, with the previous fit's columns.
    accelerate : bool
        SQUAREM extrapolation (monotone; see the module notes).
    **fit_settings
        Any of ``model, filter, tol, max_iter, q, priors, use_p_a, mu, strong_model``.

    Returns
    -------
    FitResult
        Rows in the order old rows then new rows; users and models over the
        merged vocabularies. ``summary["settings"]["warm_start"]`` is true.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> from bayes_annot.incremental import update
    >>> log = ba.simulate(n_users=300, n_models=4, seed=0)
    >>> old, new = log.iloc[:-100], log.iloc[-100:]
    >>> result = update(ba.fit(old), new)
    >>> result.summary["counts"]["rows"] == len(log)
    True
    """
    from .data import read_table

    started = time.perf_counter()
    unknown = set(fit_settings) - set(_EM_SETTINGS)
    if unknown:
        raise TypeError(f"update() got unexpected setting(s): {', '.join(sorted(unknown))}")
    saved = previous.summary.get("settings", {})
    settings = {key: saved.get(key) for key in _EM_SETTINGS if key in saved}
    if isinstance(settings.get("priors"), dict):
        settings["priors"] = Priors(**settings["priors"])
    settings.setdefault("filter", str(previous.rule))
    settings.update(fit_settings)
    old = previous._data
    if not isinstance(new_rows, pd.DataFrame):
        new_rows = read_table(new_rows)
    cols = old.columns
    new = prepare(
        new_rows,
        ColumnMap(user=cols["user"], model_a=cols["model_a"], model_b=cols["model_b"], winner=cols["winner"], p_a=cols.get("p_a")),
    )
    merged = merge_prepared(old, new)
    start = warm_start(previous, merged)
    if settings.get("model", "two-class") != previous.estimates.variant:
        start = {"strengths": start.get("strengths"), "q": start.get("q")}
    return fit_prepared(merged, start=start, accelerate=accelerate, _started=started, **settings)
