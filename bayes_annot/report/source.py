"""One view of a fit for plots and the report, from a live result or saved outputs.

:func:`as_source` accepts a :class:`~bayes_annot.fit.FitResult`, the dict that
:func:`bayes_annot.load` returns, a directory written by ``FitResult.save`` /
``bayes-annot fit --out``, or a :class:`ResultSource`, and returns a
:class:`ResultSource` with the same attributes whichever it was given. What a
saved directory cannot provide (the EM log-likelihood trace, the posterior of
an EM run) is ``None``; the integer-coded data are rebuilt from ``rows.csv``
and the column map stored in ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["ResultSource", "as_source", "GLOBAL_EXCLUDE"]

#: Posterior variables never treated as global parameters in diagnostics.
GLOBAL_EXCLUDE = ("z", "theta", "eta", "quality", "p_attentive", "p_good", "logit_eta", "y_user")


@dataclass
class ResultSource:
    """What the plots and the report read.

    Attributes
    ----------
    users, models, rows : pandas.DataFrame
        The output tables (``rows`` may be ``None``).
    summary : dict
    loglik_trace : list of float or None
        EM penalised log-likelihood per iteration (live EM results only).
    idata : arviz.InferenceData or None
    data : PreparedData or None
        Integer-coded rows (live result, or rebuilt from ``rows.csv``).
    origin : str
        ``"result"`` or ``"directory"``.
    pair_counts : bayes_annot.pairs.PairTable, array (K, K) or None
        Usable labels per (model_a, model_b) in ``models`` order, when the rows
        are not at hand (Dask fits: the table was summed on the workers).
    """

    users: pd.DataFrame
    models: pd.DataFrame
    rows: pd.DataFrame | None
    summary: dict
    loglik_trace: list | None = None
    idata: object | None = None
    data: object | None = None
    origin: str = "result"
    pair_counts: object = None

    # ------------------------------------------------------------ derived
    @property
    def engine(self) -> str:
        return str(self.summary.get("engine", "?"))

    @property
    def variant(self) -> str:
        return str(self.summary.get("model", "?"))

    @property
    def sampled(self) -> bool:
        """True when the posterior has more than one draw (a real sample)."""
        if self.idata is None or not hasattr(self.idata, "posterior"):
            return False
        post = self.idata.posterior
        return int(post.sizes.get("chain", 1)) * int(post.sizes.get("draw", 1)) > 1

    def attentive_logit(self) -> np.ndarray | None:
        """Attentive log-odds of choosing ``model_a`` for each usable row (point estimate).

        From a known ``p_a`` column when the fit used one, else from the
        strengths in ``models``. ``None`` when neither is available.
        """
        data = self.data
        if data is None:
            return None
        usable = data.usable
        use_p_a = bool(self.summary.get("settings", {}).get("use_p_a", True))
        if data.p_a is not None and use_p_a and str(self.summary.get("strengths", "")).startswith("known (column"):
            p = np.clip(np.asarray(data.p_a, dtype=float)[usable], 1e-9, 1 - 1e-9)
            return np.log(p) - np.log1p(-p)
        s = self.strength_vector()
        if s is None:
            return None
        return s[data.model_a[usable]] - s[data.model_b[usable]]

    def strength_vector(self) -> np.ndarray | None:
        """Strengths ordered like ``data.model_labels`` (``None`` if unknown)."""
        if self.data is None or "strength" not in self.models:
            return None
        table = self.models.assign(model=self.models["model"].astype(str)).set_index("model")["strength"]
        labels = [str(m) for m in self.data.model_labels]
        if not set(labels) <= set(table.index):
            return None
        s = table.loc[labels].to_numpy(dtype=float)
        return None if np.isnan(s).any() else s

    def user_index(self) -> np.ndarray | None:
        """Row position in ``users`` of each of ``data.user_labels``."""
        if self.data is None:
            return None
        pos = pd.Series(np.arange(len(self.users)), index=self.users["user"].astype(str))
        labels = [str(u) for u in self.data.user_labels]
        if not set(labels) <= set(pos.index):
            return None
        return pos.loc[labels].to_numpy()

    def global_var_names(self) -> list[str]:
        """Posterior variables without a ``user`` dimension (``pi``, ``q``, ``strength``, ...)."""
        if self.idata is None or not hasattr(self.idata, "posterior"):
            return []
        out = []
        for name, var in self.idata.posterior.data_vars.items():
            dims = [d for d in var.dims if d not in ("chain", "draw")]
            if name in GLOBAL_EXCLUDE or "user" in dims or any(str(d).startswith("user") for d in dims):
                continue
            if any(str(d).startswith("cell") for d in dims):
                continue
            if var.size // max(int(var.sizes.get("chain", 1)) * int(var.sizes.get("draw", 1)), 1) > 200:
                continue
            if not np.issubdtype(var.dtype, np.number):
                continue
            out.append(str(name))
        order = {"pi": 0, "m": 1, "tau": 2, "q": 3, "strength": 4}
        return sorted(out, key=lambda n: (order.get(n, 10), n))


def _rebuild_data(rows: pd.DataFrame | None, summary: dict):
    """Re-encode saved rows with the column map of the fit; ``None`` on any trouble."""
    if rows is None:
        return None
    try:
        from ..data import ColumnMap, prepare

        columns = dict(summary.get("settings", {}).get("columns") or {})
        resolved = {}
        for role in ("user", "model_a", "model_b", "winner", "p_a"):
            name = columns.get(role)
            if name is None:
                resolved[role] = None
                continue
            if name not in rows.columns and f"input_{name}" in rows.columns:
                name = f"input_{name}"
            resolved[role] = name
        if resolved.get("user") is None:
            resolved.pop("user")
        frame = rows.drop(columns=[c for c in ("kept", "reason", "weight") if c in rows.columns])
        if resolved.get("p_a"):
            frame = frame.assign(**{resolved["p_a"]: pd.to_numeric(frame[resolved["p_a"]], errors="coerce")})
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved["p_a"] = resolved.get("p_a") or False  # the fit used no p_a column: do not pick one up
            return prepare(frame, ColumnMap(**resolved))
    except Exception:  # noqa: BLE001 - the report degrades, it does not fail
        return None


def _get(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    value = getattr(obj, key, None)
    if value is None:
        try:
            value = obj[key]
        except (KeyError, TypeError, IndexError):
            value = None
    return value


def _has(obj, key) -> bool:
    return _get(obj, key) is not None


def as_source(obj) -> ResultSource:
    """Normalise a fit result, a ``load()`` dict or a saved directory to a :class:`ResultSource`."""
    if isinstance(obj, ResultSource):
        return obj
    if isinstance(obj, (str, Path)):
        from ..fit import load

        loaded = load(obj)
        source = as_source(loaded)
        source.origin = "directory"
        return source
    if hasattr(obj, "dask_fit"):
        # a Dask fit: the rows stay on the workers; the tables, trace and pair counts are on the driver
        return ResultSource(
            users=obj.users, models=obj.models, rows=None, summary=obj.summary,
            loglik_trace=list(obj.loglik_trace), idata=obj.idata, data=None, origin="result",
            pair_counts=obj.dask_fit.pair_counts,
        )
    if not hasattr(obj, "_data") and _has(obj, "users") and _has(obj, "summary"):
        # saved outputs: the dict / SavedResult that bayes_annot.load returns
        models = _get(obj, "models")
        if models is None:
            models = pd.DataFrame({"model": [], "strength": []})
        users = _get(obj, "users").copy()
        for col in ("kept", "uninformative"):
            if col in users and users[col].dtype != bool:
                users[col] = users[col].astype(str).str.lower().isin(["true", "1"])
        rows = _get(obj, "rows")
        if rows is not None and "kept" in rows and rows["kept"].dtype != bool:
            rows = rows.copy()
            rows["kept"] = rows["kept"].astype(str).str.lower().isin(["true", "1"])
        summary = _get(obj, "summary")
        data = _get(obj, "data")
        return ResultSource(
            users=users,
            models=models,
            rows=rows,
            summary=summary,
            loglik_trace=_get(obj, "loglik_trace"),
            idata=_get(obj, "idata"),
            data=data if data is not None else _rebuild_data(rows, summary),
            origin="directory",
        )
    if hasattr(obj, "users") and hasattr(obj, "summary"):
        try:
            idata = obj.idata
        except Exception:  # noqa: BLE001
            idata = None
        trace = getattr(obj, "loglik_trace", None)
        return ResultSource(
            users=obj.users,
            models=getattr(obj, "models", pd.DataFrame({"model": [], "strength": []})),
            rows=getattr(obj, "rows", None),
            summary=obj.summary,
            loglik_trace=list(trace) if trace is not None else None,
            idata=idata,
            data=getattr(obj, "_data", None),
            origin="result",
        )
    raise TypeError(
        f"cannot read a fit from {type(obj).__name__}: pass a FitResult, the dict bayes_annot.load returns, "
        "or a directory of saved outputs"
    )
