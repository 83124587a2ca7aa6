"""Plots of a fit for Jupyter and the diagnostics report.

Every function takes keyword-only options, draws on ``ax`` (a new figure when
``ax`` is ``None``) and returns the matplotlib ``Axes``. The first argument may
is a :class:`~bayes_annot.fit.FitResult`: of :func:`bayes_annot.fit` (in
memory or on Dask) or of :func:`bayes_annot.load` (a saved folder). What a
result does not hold (the EM trace of a saved fit, the rows of a Dask fit)
gives a note on the axes, not an error.

matplotlib is an optional dependency: ``pip install 'bayes_annot[plot]'``.

>>> import bayes_annot as ba
>>> from bayes_annot import plotting
>>> result = ba.fit(ba.simulate(n_users=100, n_models=4, seed=0))
>>> ax = plotting.plot_strengths(result)
>>> len(ax.collections[0].get_offsets())
4
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .saved import bool_column


__all__ = [
    "plot_quality_distribution",
    "plot_quality_caterpillar",
    "decision_threshold",
    "plot_strengths",
    "plot_labels_per_user",
    "plot_comparison_matrix",
    "plot_loglik_trace",
    "plot_reliability",
    "plot_ppc_agreement",
    "ppc_agreement",
    "plot_ppc_length_bins",
    "ppc_length_bins",
    "plot_ppc_tie_rates",
    "ppc_tie_rates",
    "comparison_counts",
    "check_result",
]

KEPT_COLOR = "#2b6cb0"
DROPPED_COLOR = "#dd6b20"
NEUTRAL_COLOR = "#718096"
QUALITY_VARS = ("quality", "p_attentive", "eta")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bayes_annot plots need matplotlib, an optional dependency: pip install 'bayes_annot[plot]'"
        ) from exc
    return plt


def _axes(ax, figsize=(6.0, 4.0)):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _empty(ax, message: str):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=NEUTRAL_COLOR, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def check_result(result, reader: str = "plots"):
    """``result`` if it is a fit's result (of :func:`bayes_annot.fit` or :func:`bayes_annot.load`), else ``TypeError``.

    Checked by what a result holds (its tables, summary and backend), so that
    the presentation layer does not import the layer that fits.
    """
    if not all(hasattr(result, name) for name in ("users", "models", "summary", "backend")):
        raise TypeError(f"{reader}: expected a FitResult (of bayes_annot.fit or bayes_annot.load(folder)), "
                        f"got {type(result).__name__}")
    return result


def _positions(labels, want) -> np.ndarray | None:
    """Position in ``labels`` of each of ``want`` (compared as text); ``None`` if one is missing."""
    pos = pd.Series(np.arange(len(labels)), index=[str(x) for x in labels])
    want = [str(w) for w in want]
    return pos.loc[want].to_numpy() if set(want) <= set(pos.index) else None


def _strength_vector(src) -> np.ndarray | None:
    """Strengths ordered like ``src.data.model_labels`` (``None`` if unknown)."""
    if src.data is None or "strength" not in src.models:
        return None
    idx = _positions(src.models["model"], src.data.model_labels)
    s = None if idx is None else src.models["strength"].to_numpy(dtype=float)[idx]
    return None if s is None or np.isnan(s).any() else s


def _user_index(src) -> np.ndarray | None:
    """Row position in ``users`` of each of ``src.data.user_labels``."""
    return None if src.data is None else _positions(src.users["user"], src.data.user_labels)


def _attentive_logit(src) -> np.ndarray | None:
    """Attentive log-odds of choosing ``model_a`` for each usable row: from the known ``p_a`` column when
    the fit used one, else from the strengths; ``None`` when neither is available."""
    data = src.data
    usable = data.usable
    use_p_a = bool(src.summary.get("settings", {}).get("use_p_a", True))
    if data.p_a is not None and use_p_a and str(src.summary.get("strengths", "")).startswith("known (column"):
        p = np.clip(np.asarray(data.p_a, dtype=float)[usable], 1e-9, 1 - 1e-9)
        return np.log(p) - np.log1p(-p)
    s = _strength_vector(src)
    return None if s is None else s[data.model_a[usable]] - s[data.model_b[usable]]


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``frame[column]`` as floats (text and missing cells NaN; all NaN when the column is absent)."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(float)


def _active_users(src) -> pd.DataFrame:
    users = src.users
    if "n_labels" in users:
        users = users[pd.to_numeric(users["n_labels"], errors="coerce").fillna(0) > 0]
    return users


# --------------------------------------------------------------------------- quality


def plot_quality_distribution(result, *, bins: int = 20, ax=None):
    """Histogram of per-user quality, kept and filtered-out users stacked.

    Only users with at least one label in the likelihood are counted. The
    bar heights sum to that number of users.
    """
    src = check_result(result)
    ax = _axes(ax)
    users = _active_users(src)
    if users.empty:
        return _empty(ax, "no user has a label in the likelihood")
    quality = users["quality"].to_numpy(dtype=float)
    kept = bool_column(users["kept"]) if "kept" in users else np.ones(len(users), bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax.hist(
        [quality[kept], quality[~kept]],
        bins=edges,
        stacked=True,
        color=[KEPT_COLOR, DROPPED_COLOR],
        label=[f"kept ({int(kept.sum())})", f"filtered out ({int((~kept).sum())})"],
        edgecolor="white",
        linewidth=0.5,
    )
    rule = str(src.summary.get("filter", {}).get("rule", ""))
    if rule.startswith("prob:"):
        try:
            ax.axvline(float(rule.split(":", 1)[1]), color="black", linestyle="--", linewidth=1, label=f"threshold ({rule})")
        except ValueError:
            pass
    label = "P(attentive | data)" if src.summary.get("variant") == "two-class" else "quality (share of attentive labels, eta)"
    ax.set_xlabel(label)
    ax.set_ylabel("users")
    ax.set_xlim(0, 1)
    ax.set_title(f"User quality ({len(users)} users with labels)")
    ax.legend(loc="upper center", frameon=False, fontsize=8)
    return ax


def decision_threshold(result) -> float:
    """The quality at which the fit's filter decides (for display): ``t`` of ``prob:t`` / ``credible:t``,
    the lowest kept quality under ``fdr``, 0.5 under ``none`` or when unknown."""
    src = check_result(result)
    rule = str((src.summary.get("filter") or {}).get("rule", "")).strip().lower()
    kind, _, value = rule.partition(":")
    if kind in ("prob", "credible"):
        try:
            return float(value)
        except ValueError:
            return 0.5
    if kind == "fdr" and "kept" in src.users:
        kept = bool_column(src.users["kept"])
        quality = _numbers(src.users, "quality")
        if kept.any():
            return float(np.nanmin(quality[kept]))
    return 0.5


def plot_quality_caterpillar(result, *, max_users: int = 60, ax=None):
    """Per-user quality sorted, with credible intervals when the engine gives them.

    With more than ``max_users`` users, the ``max_users`` users the decision is
    least sure about are shown: those whose quality lies nearest the filter's
    threshold (:func:`decision_threshold`, drawn as a dashed line), users whose
    interval straddles it first. (The best and worst users sit at 0 or 1 with
    no visible interval; they say nothing about the decision.) One point per
    shown user.
    """
    src = check_result(result)
    users = _active_users(src)
    n_show = min(len(users), max_users)
    ax = _axes(ax, figsize=(6.0, max(3.0, 0.12 * n_show + 1.0)))
    if users.empty:
        return _empty(ax, "no user has a label in the likelihood")
    threshold = decision_threshold(src)
    truncated = len(users) > max_users
    quality_all = _numbers(users, "quality")
    if truncated:
        distance = np.abs(quality_all - threshold)
        straddles = (_numbers(users, "quality_low") <= threshold) & (threshold <= _numbers(users, "quality_high"))
        distance = np.where(straddles, -1.0 + distance, distance)  # straddling users first
        pick = np.argsort(distance, kind="mergesort")[:max_users]
        users = users.iloc[np.sort(pick)]
    order = users.sort_values("quality", ascending=False, kind="mergesort")
    q = order["quality"].to_numpy(dtype=float)
    lo, hi = _numbers(order, "quality_low"), _numbers(order, "quality_high")
    y = np.arange(len(order))[::-1].astype(float)
    kept = bool_column(order["kept"]) if "kept" in order else np.ones(len(order), bool)
    colors = np.where(kept, KEPT_COLOR, DROPPED_COLOR)
    if np.isfinite(lo).any():
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(y[ok], lo[ok], hi[ok], colors=colors[ok], linewidth=1.5, alpha=0.6)
        ax.set_title("User quality with 94% credible intervals")
    else:
        ax.set_title("User quality (point estimates)")
    ax.scatter(q, y, c=colors, s=14, zorder=3)
    ax.axvline(threshold, color=NEUTRAL_COLOR, linestyle="--", linewidth=1)
    if truncated:
        ax.set_title(
            ax.get_title() + f": the {max_users} users nearest the threshold {threshold:.2g} "
            f"({len(quality_all) - max_users} more not shown)",
            fontsize=10,
        )
    labels = order["user"].astype(str).to_numpy()
    fontsize = 7 if n_show <= 40 else 6
    ax.set_yticks(y)
    ax.set_yticklabels([f"{u} (n={int(n)})" for u, n in zip(labels, order["n_labels"])], fontsize=fontsize)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(y.min() - 1, y.max() + 1)
    ax.set_xlabel("quality")
    ax.grid(axis="x", alpha=0.3)
    return ax


# --------------------------------------------------------------------------- models


def plot_strengths(result, *, ax=None):
    """Model strengths (Bradley–Terry log-odds), sorted, with intervals when sampled. One point per model."""
    src = check_result(result)
    models = src.models
    ax = _axes(ax, figsize=(6.0, max(2.5, 0.3 * len(models) + 1.0)))
    if models.empty or "strength" not in models or models["strength"].isna().all():
        return _empty(ax, "no strengths: attentive probabilities were given (known p_a)")
    order = models.sort_values("strength", ascending=True, kind="mergesort")
    s = order["strength"].to_numpy(dtype=float)
    y = np.arange(len(order), dtype=float)
    lo, hi = _numbers(order, "strength_low"), _numbers(order, "strength_high")
    if np.isfinite(lo).any():
        ax.hlines(y, lo, hi, color=KEPT_COLOR, linewidth=2, alpha=0.6)
        ax.set_title("Model strengths with 94% credible intervals")
    else:
        ax.set_title("Model strengths (point estimates)")
    ax.scatter(s, y, color=KEPT_COLOR, zorder=3)
    ax.axvline(0.0, color=NEUTRAL_COLOR, linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(order["model"].astype(str), fontsize=8 if len(order) <= 30 else 5)
    ax.set_xlabel("strength (log-odds; a 1-unit gap = 73% attentive preference)")
    ax.grid(axis="x", alpha=0.3)
    return ax


def comparison_counts(result) -> pd.DataFrame | None:
    """Model x model counts of the comparisons that enter the likelihood (symmetric).

    A dense ``K x K`` frame: ``None`` above :data:`bayes_annot.pairs.DENSE_PLOT_MAX_MODELS`
    models (use ``pair_counts`` of the fit, a sparse table, there).
    """
    from .pairs import DENSE_PLOT_MAX_MODELS

    pairs = check_result(result).pair_counts  # Dask fits: the table summed on the workers
    if pairs is None or pairs.n_models > DENSE_PLOT_MAX_MODELS:
        return None
    mat = pairs.toarray().astype(np.int64)
    labels = [str(m) for m in result.models["model"]]
    mat = mat + mat.T
    return pd.DataFrame(mat, index=labels, columns=labels)


def plot_comparison_matrix(result, *, ax=None):
    """Heatmap of how often each pair of models was compared (rows in the likelihood)."""
    from .pairs import DENSE_PLOT_MAX_MODELS

    src = check_result(result)
    if len(src.models) > DENSE_PLOT_MAX_MODELS:
        ax = _axes(ax, figsize=(5.0, 4.0))
        return _empty(ax, f"{len(src.models)} models: too many for a model x model heat map "
                          f"(drawn up to {DENSE_PLOT_MAX_MODELS})")
    counts = comparison_counts(src)
    k = 0 if counts is None else len(counts)
    size = min(9.0, max(4.0, 0.45 * k + 2.0))
    ax = _axes(ax, figsize=(size + 1.0, size))
    if counts is None:
        return _empty(ax, "comparison counts need the rows (rows.csv) of the fit")
    values = counts.to_numpy().astype(float)
    shown = np.where(values > 0, values, np.nan)
    top = float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0
    image = ax.imshow(shown, cmap="Blues", interpolation="nearest", vmin=0.0, vmax=top)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="comparisons")
    from matplotlib.patches import Rectangle

    for i in range(k):  # a model is never compared with itself: grey, not "never compared"
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1.0, 1.0, facecolor="#cbd5e0", edgecolor="none"))
    step = max(1, int(np.ceil(k / 30)))
    ticks = np.arange(0, k, step)
    fontsize = 8 if k <= 12 else 6
    ax.set_xticks(ticks)
    ax.set_xticklabels(counts.columns[ticks], rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticks(ticks)
    ax.set_yticklabels(counts.index[ticks], fontsize=fontsize)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if values[i, j] > 0:
                    ax.text(j, i, f"{int(values[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > 0.6 * top else "black")
    ax.set_title("Comparisons per model pair (white: never compared)")
    return ax


# --------------------------------------------------------------------------- data


def plot_labels_per_user(result, *, ax=None):
    """Histogram of the number of labels per user (rows in the likelihood); bars sum to the users with labels."""
    src = check_result(result)
    ax = _axes(ax)
    users = src.users
    col = "n_labels" if "n_labels" in users else "n_rows"
    n = pd.to_numeric(users[col], errors="coerce").fillna(0).to_numpy(dtype=int)
    n = n[n > 0]
    if len(n) == 0:
        return _empty(ax, "no user has a label in the likelihood")
    top = int(n.max())
    if top <= 40:
        edges = np.arange(0.5, top + 1.5, 1.0)
        ax.hist(n, bins=edges, color=KEPT_COLOR, edgecolor="white", linewidth=0.5)
    else:
        edges = np.unique(np.round(np.logspace(0, np.log10(top + 1), 30)).astype(int)).astype(float) - 0.5
        edges = np.append(edges, top + 0.5) if edges[-1] < top + 0.5 else edges
        ax.hist(n, bins=edges, color=KEPT_COLOR, edgecolor="white", linewidth=0.5)
        ax.set_xscale("log")
    few = int((n < 5).sum())
    ax.axvline(4.5, color=DROPPED_COLOR, linestyle="--", linewidth=1, label=f"fewer than 5 labels: {few} users")
    ax.set_xlabel("labels per user (in the likelihood)")
    ax.set_ylabel("users")
    ax.set_title(f"Labels per user: median {np.median(n):g}, max {top}")
    ax.legend(frameon=False, fontsize=8)
    return ax


# --------------------------------------------------------------------------- convergence


def plot_loglik_trace(result, *, ax=None):
    """Penalised log-likelihood per EM iteration (never decreases). One point per iteration."""
    src = check_result(result)
    ax = _axes(ax)
    trace = src.loglik_trace
    if not trace:
        why = "saved outputs keep no EM trace" if src.backend == "folder" else f"no EM trace ({src.summary.get('engine')} engine)"
        return _empty(ax, why)
    trace = np.asarray(trace, dtype=float)
    it = np.arange(len(trace))
    ax.plot(it, trace, marker="o", markersize=3, color=KEPT_COLOR)
    ax.set_xlabel("EM iteration (0 = starting values)")
    ax.set_ylabel("penalised log-likelihood")
    conv = src.summary.get("converged")
    state = ", converged" if conv else (", did NOT converge" if conv is False else "")
    ax.set_title(f"EM log-likelihood: {len(trace) - 1} iterations{state}")
    ax.grid(alpha=0.3)
    return ax


# --------------------------------------------------------------------------- calibration


def plot_reliability(result, truth, *, n_bins: int = 10, prob: str | None = None, ax=None):
    """Reliability diagram of P(attentive) against the true user type (simulations).

    Parameters
    ----------
    truth : array of bool, pandas.Series indexed by user, or DataFrame with ``true_attentive``
        A boolean per user (e.g. ``bayes_annot.truth_users(log)``). An array
        must follow the order of ``result.users``.
    prob : str, optional
        Column of ``users`` with the predicted probability; default
        ``p_eta_above_half`` when present (continuous), else ``quality``.
    """
    from .metrics import expected_calibration_error, reliability_table

    src = check_result(result)
    ax = _axes(ax, figsize=(4.8, 4.8))
    users = src.users
    if prob is None:
        prob = "p_eta_above_half" if "p_eta_above_half" in users else "quality"
    if isinstance(truth, pd.DataFrame):
        truth = truth["true_attentive"]
    if isinstance(truth, pd.Series) and not isinstance(truth.index, pd.RangeIndex):
        series = truth.copy()
        series.index = series.index.astype(str)
        aligned = series.reindex(users["user"].astype(str).to_numpy())
        valid = aligned.notna().to_numpy()
        t = aligned.to_numpy()[valid].astype(bool)
    else:
        t = np.asarray(truth).astype(bool)
        if t.shape[0] != len(users):
            raise ValueError(f"truth has {t.shape[0]} entries but the result has {len(users)} users")
        valid = np.ones(len(users), bool)
    p = users[prob].to_numpy(dtype=float)[valid]
    if "n_labels" in users:
        has = users["n_labels"].to_numpy()[valid] > 0
        p, t = p[has], t[has]
    if len(p) == 0:
        return _empty(ax, "no user to compare with the truth")
    table = reliability_table(p, t, n_bins=n_bins)
    ece = expected_calibration_error(p, t, n_bins=n_bins)
    ax.plot([0, 1], [0, 1], color=NEUTRAL_COLOR, linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(table["predicted"], table["observed"], color=KEPT_COLOR, linewidth=1)
    sizes = 20 + 200 * table["n"].to_numpy() / table["n"].max()
    ax.scatter(table["predicted"], table["observed"], s=sizes, color=KEPT_COLOR, zorder=3, label="bins (size = users)")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"predicted P(attentive) ({prob})")
    ax.set_ylabel("observed share attentive")
    ax.set_title(f"Reliability ({len(p)} users, ECE {ece:.3f})")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return ax


# --------------------------------------------------------------------------- posterior predictive check


def _posterior_draws(idata, names, dim: str | None = None, want=None) -> np.ndarray | None:
    """Draws of the first of ``names`` in the posterior: flat, or (draw x ``dim``) with the
    ``dim`` labels in the order of ``want``; ``None`` when absent or a label is missing."""
    post = getattr(idata, "posterior", None)
    var = next((post[name] for name in names if name in post), None) if post is not None else None
    if var is None:
        return None
    if dim is None:
        return np.ravel(var.values) if var.ndim == 2 else None
    if dim not in var.dims:
        return None
    var = var.stack(sample=("chain", "draw")).transpose("sample", dim)
    idx = _positions(var[dim].values, want)
    return None if idx is None else var.values[:, idx]


def _taste_strength_draws(idata, want) -> np.ndarray | None:
    """Draws of a taste-class fit's strengths ``strength`` (draw x taste x model, the models in the order of
    ``want``); ``None`` when the posterior has no ``taste`` dimension."""
    post = getattr(idata, "posterior", None)
    if post is None or "strength" not in post or "taste" not in post["strength"].dims:
        return None
    var = post["strength"].stack(sample=("chain", "draw")).transpose("sample", "taste", "model")
    idx = _positions(var["model"].values, want)
    return None if idx is None else var.values[:, :, idx]


def _draws(src, n_rep: int, rng: np.random.Generator):
    """Yield the parameters of each replicate (a namespace): ``quality`` per user [data.user order],
    ``strengths`` [model order] or None, ``q``, casual effects ``g`` or None, the style term's ``delta`` or
    None, the ties' ``nu`` and ``t`` (None when ties are not modelled), and for taste-class fits ``s_taste``
    (classes x models) and ``shares`` (classes). One posterior draw each when the result is sampled (every
    parameter of that draw), else the point estimates."""
    from .style import delta_from_summary

    data = src.data
    uidx = _user_index(src)
    point_q = src.users["quality"].to_numpy(dtype=float)[uidx]
    point_s = _strength_vector(src)
    params = src.summary.get("parameters", {}) or {}
    point_qbias = params.get("q")
    fixed_q = (src.summary.get("settings", {}) or {}).get("q")
    point_qbias = float(fixed_q if fixed_q is not None else (point_qbias if point_qbias is not None else 0.5))
    effects = src.summary.get("casual_effects") or None
    point_g = None if effects is None else np.concatenate(
        [np.asarray(c["g"], dtype=float) for c in effects["covariates"]])
    point_delta = delta_from_summary(src.summary)
    ties = src.summary.get("ties") or {}
    modelled = ties.get("mode") == "model" and ties.get("nu") is not None
    point_nu, point_t = (float(ties["nu"]), float(ties["t"])) if modelled else (None, None)
    tastes = _taste_types(src, uidx) if uidx is not None else None
    point_shares = None if tastes is None else _point_shares(src, tastes[1].shape[0])

    draws = {}
    if src.sampled:
        draws["quality"] = _posterior_draws(src.idata, QUALITY_VARS, "user", data.user_labels)
        draws["q"] = _posterior_draws(src.idata, ("q",))
        if point_g is not None:
            draws["g"] = _effect_draws(src.idata, "casual_effect", len(point_g))
        if point_delta is not None:
            draws["delta"] = _effect_draws(src.idata, "style_effect", len(point_delta))
        if modelled:
            draws["nu"], draws["t"] = (_posterior_draws(src.idata, ("tie_nu",)),
                                       _posterior_draws(src.idata, ("casual_tie_rate",)))
        if tastes is not None:
            draws["s_taste"] = _taste_strength_draws(src.idata, data.model_labels)
            draws["shares"] = _type_share_draws(src.idata)
        else:
            draws["strengths"] = _posterior_draws(src.idata, ("strength",), "model", data.model_labels)
    draws = {k: v for k, v in draws.items() if v is not None}
    n_samples = max((len(v) for v in draws.values()), default=1)
    point = dict(quality=point_q, strengths=point_s, q=point_qbias, g=point_g, delta=point_delta, nu=point_nu,
                 t=point_t, s_taste=None if tastes is None else tastes[1], shares=point_shares)
    for _ in range(n_rep):
        i = int(rng.integers(n_samples))
        rep = {k: (draws[k][i % len(draws[k])] if k in draws else v) for k, v in point.items()}
        if "s_taste" in draws:
            rep["strengths"] = rep["s_taste"][0]
        for k in ("q", "nu", "t"):
            rep[k] = None if rep[k] is None else float(rep[k])
        yield SimpleNamespace(**rep)


def _effect_draws(idata, name: str, n_effects: int) -> np.ndarray | None:
    """Draws of an effect vector ``name`` (draw x effect, the design's order)."""
    post = getattr(idata, "posterior", None)
    if post is None or name not in post:
        return None
    values = np.asarray(post[name].values, dtype=float)
    return values.reshape(-1, n_effects) if values.size and values.shape[-1] == n_effects else None


def _type_share_draws(idata) -> np.ndarray | None:
    """Draws of a taste-class fit's class shares (draw x class; the casual type's share left out)."""
    post = getattr(idata, "posterior", None)
    if post is None or "shares" not in post or "type" not in post["shares"].dims:
        return None
    values = post["shares"].stack(sample=("chain", "draw")).transpose("sample", "type").values
    return values[:, 1:]


def _casual_rows(src, default: bool = False, rows: np.ndarray | None = None):
    """The casual covariates of a result's usable rows: ``(design, x (usable rows x m))``, or ``None`` when
    the fit had none or its rows cannot give them (covariates recomputed from the rows as the fit read them).

    ``default``: a fit without casual covariates gets the default ones (the log length ratio, when its
    rows hold the response texts), binned as a fit would bin them. ``rows``: a row mask other than the
    usable rows (e.g. with the ties)."""
    from .casual import DEFAULT_BINS, casual_design, design_from_summary
    from .data import casual_input_columns, covariate_values

    design = design_from_summary(src.summary)
    data = src.data
    if data is None or (design is None and not default):
        return None
    x = getattr(data, "casual_x", None)
    if design is None or x is None or tuple(getattr(data, "casual_names", ())) != design.names:
        try:
            frame = src.input_rows() if src.backend == "folder" else data.frame
            if len(frame) != data.n_rows:
                return None
            names = design.names if design is not None else casual_input_columns(frame.columns, "auto")[0]
            if not names:
                return None
            x = covariate_values(frame, names, np.asarray(data.usable))
            if design is None:
                design = casual_design(names, x[data.usable], DEFAULT_BINS)
        except Exception:  # noqa: BLE001 - a check that cannot read the covariates is left out, not failed
            return None
    return design, np.asarray(x, dtype=float)[data.usable if rows is None else rows]


def _casual_prob(design, x_cells: np.ndarray | None, beta0: float, g) -> np.ndarray | float:
    """Casual probability of choosing ``model_a``: ``sigmoid(beta0 + D g)`` per row's cell, or ``q`` alone."""
    if design is None or g is None:
        return 1.0 / (1.0 + np.exp(-beta0))
    eta = beta0 + design.design() @ np.asarray(g, dtype=float)
    return (1.0 / (1.0 + np.exp(-eta)))[x_cells]


def _attentive_rows(quality, user: np.ndarray, n_users: int, continuous: bool, rng: np.random.Generator):
    """Which rows a replicated data set draws as attentive: each user's type from their quality (two-class), or
    each label on its own with the user's quality (continuous)."""
    quality = np.clip(np.asarray(quality, dtype=float), 0.0, 1.0)
    if continuous:
        return rng.random(len(user)) < quality[user]
    return (rng.random(n_users) < quality)[user]


def _per_user_histograms(observed: np.ndarray, replicated: np.ndarray, bins: int, close_last: bool = False) -> dict:
    """The per-user PPCs' common part: the observed and replicated per-user rates, the ``bins`` equal bins of
    [0, 1] (``close_last``: the last bin also holds 1 exactly) and each data set's counts per bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    if close_last:
        edges[-1] += 1e-9
    return {
        "observed": observed,
        "replicated": replicated,
        "edges": edges,
        "observed_counts": np.histogram(observed, bins=edges)[0],
        "replicated_counts": np.stack([np.histogram(row, bins=edges)[0] for row in replicated]),
    }


def ppc_agreement(result, *, n_rep: int = 200, seed: int = 0, min_labels: int = 1, bins: int = 20) -> dict | None:
    """Observed and replicated per-user agreement with the stronger model.

    Agreement of a user = share of their labels (on pairs whose fitted
    strengths differ) that picked the stronger model. With taste classes a user
    is judged against their own class mixture: each label counts for class ``c``
    with the user's posterior weight of class ``c`` given attentive, "stronger" by
    that class's strengths; the weights come from one rule at the fit's point
    estimates, applied to the observed and to every replicated data set (as
    :func:`ppc_length_bins` groups users). Replicated data are simulated from the fitted
    model: each user's type (two-class; with taste classes, casual or class ``c``)
    or each label's attentiveness (continuous) is drawn from the fitted
    posterior, an attentive label follows the (user's class's) fitted strengths
    (with an attentive style term, ``s_a - s_b + delta' x`` of the label's casual
    cell), a casual one picks the left response with probability ``q`` (with
    casual covariates: ``sigmoid(beta_0 + f(x))`` of the label's covariates, the
    fitted effects). Sampled runs use one posterior draw per replicate, every
    parameter of it (strengths, ``q``, casual and style effects, shares; the user
    types from that draw's posterior).

    Returns
    -------
    dict or None
        ``observed`` (per-user agreement), ``replicated`` (n_rep x users),
        ``edges``, ``observed_counts``, ``replicated_counts`` (n_rep x bins),
        ``low_share_observed`` and ``low_share_replicated`` (share of users
        agreeing at most 50%), ``n_tastes``; ``None`` when the rows or strengths are unavailable.
    """
    src = check_result(result)
    data = src.data
    if data is None or _user_index(src) is None:
        return None
    ell = _attentive_logit(src)
    if ell is None:
        return None
    usable = data.usable
    user = data.user[usable]
    ma, mb = data.model_a[usable], data.model_b[usable]
    y = data.choice_a[usable].astype(int)
    n_users = data.n_users
    known_p_a = str(src.summary.get("strengths", "")).startswith("known (column")
    continuous = src.summary.get("variant") == "continuous"
    tastes = None if continuous or known_p_a else _taste_types(src, _user_index(src))
    casual = _casual_rows(src)
    design, cells = (None, None) if casual is None else (casual[0], casual[0].cells(casual[1]))
    class_ell, weights_of = ell[None, :], lambda choice: np.ones((n_users, 1))  # one ranking: weight 1 on it
    if tastes is not None:
        s_taste = tastes[1]
        class_ell = s_taste[:, ma] - s_taste[:, mb]
        weights_of = _class_weight_rule(src, design, cells, user, ma, mb, n_users, tastes)
    informative = np.abs(class_ell) > 1e-9  # (classes, rows)
    stronger_a = class_ell > 0
    shown = np.bincount(user[informative.any(axis=0)], minlength=n_users) >= max(1, int(min_labels))
    if not shown.any():
        return None

    def agreement(choice):
        row_w = weights_of(choice)[user].T * informative  # each label's weight for each class
        agree = (row_w * (choice[None, :] == stronger_a)).sum(axis=0)
        n_inf = np.bincount(user, weights=row_w.sum(axis=0), minlength=n_users)[shown]
        return np.bincount(user, weights=agree, minlength=n_users)[shown] / np.clip(n_inf, 1e-300, None)

    observed = agreement(y == 1)
    decided = SimpleNamespace(user=user, ma=ma, mb=mb, y=y == 1, design=design, cells=cells)
    rng = np.random.default_rng(seed)
    replicated = np.empty((n_rep, int(shown.sum())))
    for r, rep in enumerate(_draws(src, n_rep, rng)):
        offset = _style_row_offsets(src, design, cells, rep.delta)  # the style term's, per label (else 0)
        if tastes is not None:
            kind = _taste_kinds(src, tastes[0], rep, rng, n_users, decided)[user]
            attentive, cls = kind > 0, np.maximum(kind - 1, 0)
            ell_r = rep.s_taste[cls, ma] - rep.s_taste[cls, mb] + offset
        else:
            ell_r = (ell if known_p_a or rep.strengths is None else rep.strengths[ma] - rep.strengths[mb]) + offset
            attentive = _attentive_rows(rep.quality, user, n_users, continuous, rng)
        p_cas = _casual_prob(design, cells, _logit(rep.q), rep.g)
        p_a = np.where(attentive, 1.0 / (1.0 + np.exp(-ell_r)), p_cas)
        replicated[r] = agreement(rng.random(len(user)) < p_a)
    return {
        **_per_user_histograms(observed, replicated, bins),
        "low_share_observed": float(np.mean(observed <= 0.5)),
        "low_share_replicated": np.mean(replicated <= 0.5, axis=1),
        "n_users": int(shown.sum()),
        "n_rep": n_rep,
        "sampled": src.sampled,
        "n_tastes": 1 if tastes is None else int(tastes[1].shape[0]),
    }


#: Central range of the replicated data sets shown by the posterior predictive check (percent);
#: the report's text quotes the same range.
PPC_RANGE = 95


def ppc_range_percentiles() -> tuple[float, float]:
    """The lower and upper percentiles of :data:`PPC_RANGE` (2.5 and 97.5)."""
    tail = (100 - PPC_RANGE) / 2
    return tail, 100 - tail


def _ppc_histogram(ax, ppc: dict) -> None:
    """A per-user PPC histogram: observed counts as bars, the replicated median and central
    :data:`PPC_RANGE` % range as points with whiskers."""
    edges = ppc["edges"]
    centres = 0.5 * (edges[:-1] + edges[1:])
    width = edges[1] - edges[0]
    ax.bar(centres, ppc["observed_counts"], width=width * 0.9, color=KEPT_COLOR, alpha=0.55, label="observed")
    rep = ppc["replicated_counts"]
    med = np.median(rep, axis=0)
    lo, hi = np.percentile(rep, ppc_range_percentiles(), axis=0)
    ax.errorbar(
        centres, med, yerr=[med - lo, hi - med], fmt="o", color="black", markersize=3, capsize=2, linewidth=1,
        label=f"replicated (median, {PPC_RANGE}% range, {ppc['n_rep']} sets)",
    )


def plot_ppc_agreement(result, *, n_rep: int = 200, seed: int = 0, min_labels: int = 1, ax=None):
    """Posterior predictive check: observed vs replicated histogram of per-user agreement with the stronger model.

    Bars: observed users per bin (they sum to the users shown). Points and
    whiskers: median and central 95% range (:data:`PPC_RANGE`) of the same
    count over ``n_rep`` data sets replicated from the fitted model (see
    :func:`ppc_agreement`).
    """
    src = check_result(result)
    ax = _axes(ax, figsize=(7.0, 4.0))
    ppc = ppc_agreement(src, n_rep=n_rep, seed=seed, min_labels=min_labels)
    if ppc is None:
        return _empty(ax, "posterior predictive check needs the rows and fitted strengths")
    _ppc_histogram(ax, ppc)
    ax.set_xlabel("share of a user's labels that picked the stronger model"
                  + (" (of the user's taste classes)" if ppc.get("n_tastes", 1) > 1 else ""))
    ax.set_ylabel("users")
    rl, rh = np.percentile(ppc["low_share_replicated"], ppc_range_percentiles())
    ax.set_title(
        f"Agreement with the stronger model ({ppc['n_users']} users)\n"
        f"users at or below 50%: observed {ppc['low_share_observed']:.1%}, replicated {rl:.1%}–{rh:.1%}",
        fontsize=10,
    )
    ax.set_xlim(0, 1)
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return ax


# --------------------------------------------------------------------------- posterior predictive check by covariate bin


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1.0 - 1e-12)
    return float(np.log(p) - np.log1p(-p))


#: Columns of :func:`ppc_length_bins`.
PPC_BIN_COLUMNS = ("covariate", "group", "bin", "x_median", "n_labels", "observed", "replicated_median",
                   "replicated_low", "replicated_high", "checked", "outside")


def _taste_types(src, uidx) -> tuple[np.ndarray, np.ndarray] | None:
    """Taste classes of a result: ``(P(class k | data) per user (users x C), strengths (C x models))``."""
    users, models = src.users, src.models
    k = 1
    while f"p_taste_{k}" in users and f"strength_taste_{k}" in models:
        k += 1
    if k <= 2:
        return None
    midx = _positions(models["model"], src.data.model_labels)
    if midx is None:
        return None
    p = np.column_stack([_numbers(users, f"p_taste_{c}") for c in range(1, k)])[uidx]
    s = np.stack([_numbers(models, f"strength_taste_{c}")[midx] for c in range(1, k)])
    return (None if np.isnan(p).any() or np.isnan(s).any() else (p, s))


def _point_casual_logit(src, design, cells):
    """The fit's casual log-odds of choosing ``model_a``: ``beta_0 + f(x)`` of each row's casual cell (the fit's
    casual effects on ``design``), or ``logit(q)``; ``None`` when the summary does not hold them."""
    params = src.summary.get("parameters", {}) or {}
    effects = src.summary.get("casual_effects") or None
    fixed_q = (src.summary.get("settings", {}) or {}).get("q")
    q = fixed_q if fixed_q is not None else params.get("q")
    if effects is None:
        return None if q is None else _logit(q)
    beta0, g = float(effects["beta0"]), np.concatenate([np.asarray(c["g"], dtype=float) for c in effects["covariates"]])
    if design is None or not _effects_match(design, effects):
        return beta0
    return (beta0 + design.design() @ g)[cells]


def _point_shares(src, n_tastes: int) -> np.ndarray | None:
    """A taste-class fit's class shares (``summary["parameters"]["share_taste_k"]``), or ``None``."""
    params = src.summary.get("parameters", {}) or {}
    shares = np.array([params.get(f"share_taste_{c + 1}", np.nan) for c in range(n_tastes)], dtype=float)
    return None if np.isnan(shares).any() else shares


def _group_rule(src, design, cells, ell, user, ma, mb, n_users, threshold, tastes, continuous, style_offset=0.0):
    """The rule that groups users as the fit does, as a function of the labels: ``choice`` (per usable row)
    -> per row 1 when its user's posterior quality under the fitted point estimates is at least
    ``threshold`` (two-class: P(attentive); taste classes: P(not casual); continuous: E[eta]), else 0.
    ``style_offset`` (per row): the attentive style term's offset, added to every attentive log-odds.

    The observed and every replicated data set are grouped by this one rule, so that users a fit calls
    casual *because* their labels look casual are compared with replicated users selected the same way.
    When the fit's parameters needed are not in its summary, the fit's own quality groups every data set.
    """
    from scipy.special import expit, log_expit, logsumexp

    from .likelihood import ETA_GRID

    params = src.summary.get("parameters", {}) or {}
    uidx = _user_index(src)
    fixed = np.nan_to_num(src.users["quality"].to_numpy(dtype=float)[uidx], nan=0.0) >= threshold
    needs = ("m", "tau") if continuous else ("pi",) if tastes is None else ()
    cas_logit = _point_casual_logit(src, design, cells)
    if cas_logit is None or any(params.get(k) is None for k in needs):
        return lambda choice: fixed[user]
    ell = ell + style_offset

    def label_logps(choice, logit):
        sgn = np.where(choice, 1.0, -1.0)
        return log_expit(sgn * logit)

    if continuous:
        theta = ETA_GRID.theta(float(params["m"]), float(params["tau"]))  # (G,)
        log_w = ETA_GRID.log_weights
        eta_nodes = expit(theta)
        order = np.argsort(user, kind="stable")
        present, starts = np.unique(user[order], return_index=True)

        def eta_posterior(choice):
            """Each user's posterior over the grid's nodes ``(users, G)`` (users without labels: the prior)."""
            att = np.exp(label_logps(choice, ell)[order])
            cas = np.exp(label_logps(choice, cas_logit)[order])
            per_node = np.log(cas[:, None] + (att - cas)[:, None] * eta_nodes[None, :])  # P(label) at each node
            ll = np.zeros((n_users, len(theta)))
            ll[present] = np.add.reduceat(per_node, starts, axis=0)
            post = ll + log_w[None, :]
            return np.exp(post - logsumexp(post, axis=1, keepdims=True))

        def rule(choice):
            return ((eta_posterior(choice) @ eta_nodes) >= threshold)[user]
        rule.eta_posterior, rule.eta_nodes = eta_posterior, eta_nodes
        return rule
    if tastes is not None:
        _, s_taste = tastes
        shares = _point_shares(src, s_taste.shape[0])
        if shares is None:
            return lambda choice: fixed[user]

        def rule(choice):
            log_post = _type_log_posterior(choice, user, n_users, cas_logit, s_taste, ma, mb, style_offset, shares)
            return ((1.0 - np.exp(log_post[:, 0])) >= threshold)[user]
        return rule
    pi = float(params["pi"])

    def rule(choice):
        att = np.bincount(user, weights=label_logps(choice, ell), minlength=n_users)
        cas = np.bincount(user, weights=label_logps(choice, cas_logit), minlength=n_users)
        return (expit(_logit(pi) + att - cas) >= threshold)[user]
    return rule


def _style_row_offsets(src, design, cells, delta=None) -> np.ndarray | float:
    """Each label's attentive style offset ``delta' x~`` of its casual cell (``summary["style_effects"]``, on the
    casual covariates' own design ``design``), or 0 when the fit has no style term. ``delta``: these effects
    instead of the fit's estimate (one posterior draw's)."""
    from .casual import design_from_summary
    from .style import cell_offsets_from_summary, style_from_summary, style_offsets

    effects = src.summary.get("casual_effects") or None
    if not src.summary.get("style_effects") or effects is None or design is None or not _effects_match(design, effects):
        return 0.0
    if delta is None:
        return np.asarray(cell_offsets_from_summary(src.summary), dtype=float)[cells]
    values = style_from_summary(src.summary).values(design_from_summary(src.summary))
    return np.asarray(style_offsets(values, np.asarray(delta, dtype=float)), dtype=float)[cells]


def _type_log_posterior(choice, user, n_users, cas_logit, s_taste, ma, mb, style_offset, shares) -> np.ndarray:
    """Each user's log posterior over the types (casual, taste class 1..C) ``(users, C + 1)`` from the
    decided labels ``choice`` (per row, True = ``model_a``) at given parameters: ``cas_logit`` the casual
    log-odds (scalar or per row), ``s_taste`` (C x models), ``style_offset`` (per row, or 0), ``shares``
    the class shares (the casual type's is one minus their sum)."""
    from scipy.special import log_expit, logsumexp

    sgn = np.where(choice, 1.0, -1.0)
    cols = [np.bincount(user, weights=log_expit(sgn * cas_logit) * np.ones(len(user)), minlength=n_users)]
    for c in range(s_taste.shape[0]):
        ell = s_taste[c, ma] - s_taste[c, mb] + style_offset
        cols.append(np.bincount(user, weights=log_expit(sgn * ell), minlength=n_users))
    shares = np.asarray(shares, dtype=float)
    log_shares = np.log(np.clip(np.r_[1.0 - shares.sum(), shares], 1e-300, None))
    post = np.column_stack(cols) + log_shares[None, :]
    return post - logsumexp(post, axis=1, keepdims=True)


def _class_weights(log_post: np.ndarray) -> np.ndarray:
    """Each user's posterior over the taste classes given attentive ``(users, C)``, from their log posterior over
    the types ``(users, C + 1)`` (:func:`_type_log_posterior`, casual first)."""
    post = np.exp(log_post[:, 1:])
    return post / np.clip(post.sum(axis=1, keepdims=True), 1e-300, None)


def _taste_kinds(src, p_taste, rep, rng, n_users: int, decided=None) -> np.ndarray:
    """Each user's type in one replicated data set (0 casual, ``c`` taste class ``c``), drawn from their
    posterior: the fit's ``p_taste`` for a point fit; for a sampled fit, the draw's quality split over the
    classes by the user's class posterior at the draw's parameters (from their decided labels: ``decided``,
    a namespace of the usable rows' ``user, ma, mb, y, design, cells``)."""
    if src.sampled and decided is not None and rep.shares is not None:
        d = decided
        cas_logit = _logit(rep.q) if d.design is None or rep.g is None else (
            _logit(rep.q) + d.design.design() @ np.asarray(rep.g, dtype=float))[d.cells]
        offset = _style_row_offsets(src, d.design, d.cells, rep.delta) if rep.delta is not None else 0.0
        split = _class_weights(_type_log_posterior(d.y, d.user, n_users, cas_logit, rep.s_taste, d.ma, d.mb, offset,
                                                   rep.shares))
        p_taste = np.clip(np.asarray(rep.quality, dtype=float), 0.0, 1.0)[:, None] * split
    probs = np.column_stack([1.0 - p_taste.sum(axis=1), p_taste]).clip(0.0, None)
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return (rng.random(n_users)[:, None] > cum[:, :-1]).sum(axis=1)


def _class_weight_rule(src, design, cells, user, ma, mb, n_users, tastes):
    """A taste-class fit's per-user class weights as a function of the labels: ``choice`` (per usable row)
    -> ``(users, C)`` posterior over the classes given that the user is attentive, under the fit's point
    estimates (shares, class strengths, casual side, style term). The observed and every replicated data
    set are weighed by this one rule (as :func:`_group_rule` groups them). When the summary lacks a
    parameter it needs, the fit's own ``p_taste`` weighs every data set."""
    p_taste, s_taste = tastes
    total = p_taste.sum(axis=1, keepdims=True)
    shares = _point_shares(src, s_taste.shape[0])
    fallback = np.where(total > 1e-12, p_taste / np.clip(total, 1e-300, None), 1.0 / s_taste.shape[0])
    cas_logit = _point_casual_logit(src, design, cells)
    if shares is None or cas_logit is None:
        return lambda choice: fallback
    offset = _style_row_offsets(src, design, cells)

    def rule(choice):
        return _class_weights(_type_log_posterior(choice, user, n_users, cas_logit, s_taste, ma, mb, offset, shares))
    return rule


def _decided_rows(src, design=None, x_usable=None) -> SimpleNamespace:
    """The usable (decided) rows of a result: ``user, ma, mb, y`` and the casual ``design`` and ``cells``
    (None without casual covariates; ``x_usable`` their values)."""
    data = src.data
    usable = data.usable
    cells = None if design is None or x_usable is None else design.cells(x_usable)
    return SimpleNamespace(user=data.user[usable], ma=data.model_a[usable], mb=data.model_b[usable],
                           y=data.choice_a[usable].astype(bool), design=design if cells is not None else None,
                           cells=cells)


def _effects_match(design, effects: dict) -> bool:
    """True when ``effects`` (``summary["casual_effects"]``) are of the covariates and bins of ``design``."""
    covs = effects.get("covariates") or []
    return (tuple(c["name"] for c in covs) == tuple(design.names)
            and all(len(c["g"]) == j for c, j in zip(covs, design.n_bins)))


def ppc_length_bins(result, *, n_rep: int = 200, seed: int = 0, threshold: float = 0.5,
                    min_labels: int = 20, max_rows: int | None = 200_000) -> pd.DataFrame | None:
    """Posterior predictive check of the casual covariates: agreement with the stronger model per covariate bin.

    Every usable label on a pair whose fitted strengths differ is oriented so that the stronger
    model comes first: its covariate value ``x`` (for the length ratio, ``log(len(stronger's
    response) / len(other's))``) falls in one of the fit's own signed bins (``summary["casual_effects"]``:
    bin ``k > 0`` is ``x`` in the ``k``-th bin of ``|x|``, ``-k`` the same size with the stronger model's
    response the *shorter* one, ``0`` no contrast). Users are split by the fit: ``"attentive"`` when
    their quality (P(attentive), or ``E[eta]``) is at least ``threshold``, else ``"casual"``. In each
    group and bin, the *observed* share of labels that picked the stronger model is compared with the
    same share in ``n_rep`` data sets replicated from the fitted model on the same rows (as
    :func:`ppc_agreement`: user types drawn from the fitted quality, or each label's attentiveness
    for the continuous variant, or the type among casual and the taste classes; attentive labels
    follow the strengths, casual ones ``sigmoid(beta_0 + f(x))``; one posterior draw per replicate,
    every parameter of it, when the result is sampled, else the point estimates). Casual clicks that follow length show as a
    share rising across the bins among the casual users; a fit whose casual side ignores them
    replicates a flat share, and the observed points leave the replicated range. With an attentive
    style term (``summary["style_effects"]``) attentive labels follow ``s_a - s_b + delta' x`` at their
    casual cell's representative covariates (in the replicates: each one's posterior draw of ``delta``
    when sampled, else the fit's estimate; in the rule that groups users: the fit's estimate), so the
    reading-based length preference the fit models is replicated, not shown as misfit; the orientation
    ("the stronger model") stays the strengths'.

    The covariates are read from the result's rows (recomputed as the fit read them: a loaded folder
    gives them from its rows table).

    Parameters
    ----------
    result : FitResult
    n_rep : int
        Replicated data sets.
    seed : int
    threshold : float
        Quality at or above which a user counts as attentive.
    min_labels : int
        Bins (of a group) with fewer labels are listed but not ``checked``.
    max_rows : int or None
        A log with more usable labels is checked on a seeded random subset of its users (whole
        users, at most this many labels; ``frame.attrs["n_users"]`` says how many): the continuous
        variant's grouping costs ``33 x`` labels per replicate. ``None``: every user.

    Returns
    -------
    pandas.DataFrame or None
        One row per covariate, group and bin (:data:`PPC_BIN_COLUMNS`): ``x_median`` (median oriented
        covariate value of the bin's labels), ``n_labels``, ``observed``, the replicated median and
        central :data:`PPC_RANGE` % range, ``checked`` (``n_labels >= min_labels``) and ``outside``
        (checked and observed outside the range). ``None`` when the fit had no casual covariates or
        its rows (with the covariates) or fitted strengths are not available. ``frame.attrs`` holds
        ``n_rep``, ``sampled`` and ``threshold``.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> from bayes_annot.plotting import ppc_length_bins
    >>> log = ba.simulate(n_users=300, n_models=6, length_bias=0.85, seed=0)
    >>> table = ppc_length_bins(ba.fit(log), n_rep=200)
    >>> int(table["outside"].sum()), int(table["checked"].sum())  # bins outside the 95% range, of those checked
    (1, 23)
    >>> table = ppc_length_bins(ba.fit(log, casual_covariates="none"), n_rep=200)  # casual clicks as coins
    >>> int(table["outside"].sum()), int(table["checked"].sum())
    (7, 12)
    """
    src = check_result(result)
    casual = _casual_rows(src, default=True)
    data = src.data
    if casual is None or _user_index(src) is None:
        return None
    ell = _attentive_logit(src)
    if ell is None:
        return None
    design, x = casual
    usable = data.usable
    user = data.user[usable]
    y = data.choice_a[usable].astype(bool)
    ma, mb = data.model_a[usable], data.model_b[usable]
    n_users = data.n_users
    if max_rows is not None and len(user) > max_rows:  # whole users, seeded, up to max_rows labels
        order = np.random.default_rng([seed, 1]).permutation(n_users)
        take = order[np.cumsum(np.bincount(user, minlength=n_users)[order]) <= max_rows]
        keep = np.isin(user, take)
        ell, x, user, y, ma, mb = ell[keep], x[keep], user[keep], y[keep], ma[keep], mb[keep]
    informative = np.abs(ell) > 1e-9
    if not informative.any():
        return None
    uidx = _user_index(src)
    stronger_a = ell > 0
    sign = np.where(stronger_a, 1.0, -1.0)
    cells = design.cells(x)
    style_offset = _style_row_offsets(src, design, cells)  # the attentive style term's, per label (else 0)
    known_p_a = str(src.summary.get("strengths", "")).startswith("known (column")
    continuous = src.summary.get("variant") == "continuous"
    tastes = None if continuous or known_p_a else _taste_types(src, uidx)
    group_of = _group_rule(src, design, cells, ell, user, ma, mb, n_users, threshold, tastes, continuous,
                           style_offset)
    group = group_of(y).astype(np.int64)  # 0 casual, 1 attentive

    # per covariate: each informative label's signed bin (oriented to the stronger model), as a slot
    # (the group adds ``width``: a replicate's users are grouped by the same rule on its own labels)
    slots, widths, meta = [], [], []
    offset = 0
    for j, (name, edges) in enumerate(zip(design.names, design.edges)):
        n_bins = len(edges) + 1
        xo = x[:, j] * sign
        level = np.searchsorted(np.asarray(edges, dtype=float), np.abs(xo), side="left") + 1
        signed = np.where(xo > 0, level, np.where(xo < 0, -level, 0))
        slot = offset + signed + n_bins
        slots.append(np.where(informative, slot, -1))
        widths.append(2 * n_bins + 1)
        for gi, gname in enumerate(("casual", "attentive")):
            for b in range(-n_bins, n_bins + 1):
                sel = informative & (group == gi) & (signed == b)
                meta.append((name, gname, b, float(np.median(xo[sel])) if sel.any() else np.nan))
        offset += 2 * (2 * n_bins + 1)
    n_slots = offset

    def shares(choice_a: np.ndarray, grp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels agreeing with the stronger model, labels) per slot, users grouped by ``grp`` (per row)."""
        agree = (choice_a == stronger_a) & informative
        hits, n = np.zeros(n_slots), np.zeros(n_slots)
        for slot, width in zip(slots, widths):
            ok = slot >= 0
            idx = slot[ok] + grp[ok] * width
            hits += np.bincount(idx, weights=agree[ok], minlength=n_slots)
            n += np.bincount(idx, minlength=n_slots)
        return hits, n

    hits, counts = shares(y, group)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = hits / counts
    rng = np.random.default_rng(seed)
    replicated = np.empty((n_rep, n_slots))
    eta_cum = None  # continuous point fit: each user's eta drawn from their posterior on the grid
    if continuous and not src.sampled and hasattr(group_of, "eta_posterior"):
        eta_cum = np.cumsum(group_of.eta_posterior(y), axis=1)
    # a sampled fit's class posteriors per draw, from the checked users' labels (whole users)
    decided = SimpleNamespace(user=user, ma=ma, mb=mb, y=y, design=design, cells=cells)
    for r, rep in enumerate(_draws(src, n_rep, rng)):
        # the style term's offsets: each draw's delta when sampled, else the fit's (``style_offset``)
        offset = style_offset if not src.sampled or rep.delta is None else _style_row_offsets(src, design, cells,
                                                                                                 rep.delta)
        if tastes is not None:  # the type among casual and the taste classes, each class its own strengths
            kind_row = _taste_kinds(src, tastes[0], rep, rng, n_users, decided)[user]  # 0 casual, c: class c
            attentive = kind_row > 0
            cls = np.maximum(kind_row - 1, 0)
            ell_r = rep.s_taste[cls, ma] - rep.s_taste[cls, mb] + offset
        else:
            ell_r = (ell if known_p_a or rep.strengths is None else rep.strengths[ma] - rep.strengths[mb]) + offset
            if eta_cum is not None:
                node = (rng.random(n_users)[:, None] > eta_cum[:, :-1]).sum(axis=1)
                attentive = rng.random(len(user)) < group_of.eta_nodes[node][user]
            else:
                attentive = _attentive_rows(rep.quality, user, n_users, continuous, rng)
        p_cas = _casual_prob(design, cells, _logit(rep.q), rep.g)
        p_a = np.where(attentive, 1.0 / (1.0 + np.exp(-ell_r)), p_cas)
        choice = rng.random(len(user)) < p_a
        rep_hits, rep_n = shares(choice, group_of(choice).astype(np.int64))
        with np.errstate(invalid="ignore", divide="ignore"):
            replicated[r] = rep_hits / rep_n
    lo_pct, hi_pct = ppc_range_percentiles()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty bins: NaN
        med = np.nanmedian(replicated, axis=0)
        lo, hi = np.nanpercentile(replicated, [lo_pct, hi_pct], axis=0)
    checked = counts >= max(1, int(min_labels))
    outside = checked & ((observed < lo) | (observed > hi))
    frame = pd.DataFrame(meta, columns=["covariate", "group", "bin", "x_median"])
    frame["n_labels"] = counts.astype(np.int64)
    frame["observed"] = observed
    frame["replicated_median"], frame["replicated_low"], frame["replicated_high"] = med, lo, hi
    frame["checked"], frame["outside"] = checked, outside
    frame = frame[frame["n_labels"] > 0].reset_index(drop=True)
    frame.attrs.update(n_rep=int(n_rep), sampled=bool(src.sampled), threshold=float(threshold),
                       min_labels=int(min_labels), n_users=int(len(np.unique(user))), n_users_all=int(
                           len(np.unique(data.user[usable]))), fitted=src.summary.get("casual_effects") is not None)
    return frame


def plot_ppc_length_bins(result, *, n_rep: int = 200, seed: int = 0, covariate: str | None = None,
                         table: pd.DataFrame | None = None, ax=None):
    """Posterior predictive check of the casual covariates (:func:`ppc_length_bins`), one covariate.

    Per signed bin of the covariate (oriented to the stronger model; x axis: the bin's median value),
    the observed share of labels agreeing with the stronger model (points) and the replicated
    median and central :data:`PPC_RANGE` % range (bars), for the users the fit calls casual and
    those it calls attentive (two colours). ``table``: a :func:`ppc_length_bins` result to draw
    (default: computed with ``n_rep`` and ``seed``); ``covariate``: which one (default the first).
    """
    src = check_result(result)
    ax = _axes(ax, figsize=(7.0, 4.0))
    frame = table if table is not None else ppc_length_bins(src, n_rep=n_rep, seed=seed)
    if frame is None or frame.empty:
        return _empty(ax, "the check by covariate bin needs casual covariates, the rows and the fitted strengths")
    name = covariate or str(frame["covariate"].iloc[0])
    frame = frame[frame["covariate"] == name]
    positions = {b: i for i, b in enumerate(sorted(frame["bin"].unique()))}
    for gname, color, shift in (("casual", DROPPED_COLOR, -0.12), ("attentive", KEPT_COLOR, 0.12)):
        part = frame[(frame["group"] == gname) & frame["checked"]]
        if part.empty:
            continue
        xs = np.array([positions[b] for b in part["bin"]]) + shift
        med = part["replicated_median"].to_numpy()
        ax.errorbar(xs, med, yerr=[med - part["replicated_low"].to_numpy(), part["replicated_high"].to_numpy() - med],
                    fmt="_", color=color, alpha=0.6, capsize=3, linewidth=2,
                    label=f"{gname}: replicated ({PPC_RANGE}% range)")
        out = part["outside"].to_numpy()
        ax.scatter(xs[~out], part["observed"].to_numpy()[~out], color=color, s=22, zorder=3,
                   label=f"{gname}: observed ({int(part['n_labels'].sum())} labels)")
        if out.any():
            ax.scatter(xs[out], part["observed"].to_numpy()[out], color=color, marker="x", s=40, zorder=3,
                       label=f"{gname}: observed, outside the range")
    ticks = sorted(positions, key=positions.get)
    median_x = frame.groupby("bin")["x_median"].median()
    ax.set_xticks([positions[b] for b in ticks])
    ax.set_xticklabels([f"{median_x.get(b, np.nan):+.2f}" for b in ticks], fontsize=7, rotation=45)
    ax.axhline(0.5, color=NEUTRAL_COLOR, linewidth=0.8, linestyle=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{name}, stronger model's response vs the other's (bin median)")
    ax.set_ylabel("share of labels picking the stronger model")
    n_out, n_checked = int(frame["outside"].sum()), int(frame["checked"].sum())
    ax.set_title(f"By {name} bin: {n_out} of {n_checked} bins outside the replicated range", fontsize=10)
    ax.legend(loc="lower right", frameon=False, fontsize=7)
    ax.grid(alpha=0.3)
def ppc_tie_rates(result, *, n_rep: int = 200, seed: int = 0, min_labels: int = 5, bins: int = 10) -> dict | None:
    """Observed and replicated per-user tie rates (the ties' posterior predictive check).

    Tie rate of a user = share of their labels (decided ones and ties between two different models)
    that are ties. Replicated data are simulated from the fitted model: each user's type (two-class;
    with taste classes casual or class ``c``, as :func:`ppc_agreement`) or each label's attentiveness
    (continuous) is drawn from the fitted posterior; an attentive label is a tie with Davidson's
    probability :math:`\\nu / (2\\cosh(d/2) + \\nu)` at the pair's fitted log-odds ``d`` (under the
    user's class; with an attentive style term, plus ``delta' x`` of the label's casual cell), a casual
    one with the casual tie rate ``t`` (docs/model.md, "Ties"). A sampled fit uses one posterior draw
    per replicate (strengths, ``nu``, ``t``, ``delta``, quality). A fit that ignored ties
    is replicated with the log's overall tie rate for every label: one rate for everybody, which is
    what the check then tests.

    Returns
    -------
    dict or None
        ``observed`` (per-user tie rate, users with at least ``min_labels`` labels), ``replicated``
        (n_rep x users), ``edges``, ``observed_counts``, ``replicated_counts`` (n_rep x bins),
        ``high_share_observed`` / ``high_share_replicated`` (users tying at least half the time),
        ``zero_share_observed`` / ``zero_share_replicated`` (users who never tie), ``modelled``;
        ``None`` when the log has no ties or the rows are unavailable.
    """
    from .problem import tie_rows
    from .ties import davidson_logprobs

    src = check_result(result)
    data = src.data
    if data is None or _user_index(src) is None:
        return None
    tie = tie_rows(data)
    if not tie.any():
        return None
    rows = data.usable | tie
    user = data.user[rows]
    is_tie = tie[rows]
    n_users = data.n_users
    n_lab = np.bincount(user, minlength=n_users)
    shown = n_lab >= max(1, int(min_labels))
    if not shown.any():
        return None

    def rate(ties):
        return np.bincount(user, weights=ties, minlength=n_users)[shown] / n_lab[shown]

    observed = rate(is_tie)
    info = src.summary.get("ties") or {}
    modelled = info.get("mode") == "model" and info.get("nu") is not None
    continuous = src.summary.get("variant") == "continuous"
    rng = np.random.default_rng(seed)
    replicated = np.empty((n_rep, int(shown.sum())))
    pooled = float(is_tie.mean())
    casual = _casual_rows(src, rows=rows) if modelled else None
    design, cells = (None, None) if casual is None else (casual[0], casual[0].cells(casual[1]))
    tastes = None if continuous or not modelled else _taste_types(src, _user_index(src))
    decided = None
    if tastes is not None and src.sampled:
        decided_casual = _casual_rows(src)
        decided = _decided_rows(src, *(decided_casual or (None, None)))
    ma, mb = data.model_a[rows], data.model_b[rows]
    for r, rep in enumerate(_draws(src, n_rep, rng)):
        if not modelled:
            p_tie = np.full(len(user), pooled)
        else:
            offset = 0.0 if casual is None else _style_row_offsets(src, design, cells, rep.delta)
            if tastes is not None:  # the user's type among casual and the taste classes, each its strengths
                kind = _taste_kinds(src, tastes[0], rep, rng, n_users, decided)[user]
                attentive, cls = kind > 0, np.maximum(kind - 1, 0)
                d = rep.s_taste[cls, ma] - rep.s_taste[cls, mb]
            else:
                if rep.strengths is not None:
                    d = rep.strengths[ma] - rep.strengths[mb]
                elif data.p_a is not None:  # known attentive probabilities: each row's own log-odds
                    d = np.log(data.p_a[rows]) - np.log1p(-data.p_a[rows])
                else:
                    d = np.zeros(len(user))  # no strengths: every pair even
                attentive = _attentive_rows(rep.quality, user, n_users, continuous, rng)
            p_att = np.exp(davidson_logprobs(d + offset, rep.nu)[2])
            p_tie = np.where(attentive, p_att, rep.t)
        replicated[r] = rate(rng.random(len(user)) < p_tie)
    return {
        **_per_user_histograms(observed, replicated, bins, close_last=True),  # a user who always ties: last bin
        "high_share_observed": float(np.mean(observed >= 0.5)),
        "high_share_replicated": np.mean(replicated >= 0.5, axis=1),
        "zero_share_observed": float(np.mean(observed == 0)),
        "zero_share_replicated": np.mean(replicated == 0, axis=1),
        "n_users": int(shown.sum()),
        "n_rep": n_rep,
        "modelled": modelled,
        "sampled": src.sampled,
    }


def plot_ppc_tie_rates(result, *, n_rep: int = 200, seed: int = 0, min_labels: int = 5, ax=None):
    """Posterior predictive check of ties: observed vs replicated histogram of per-user tie rates
    (:func:`ppc_tie_rates`; bars observed, points and whiskers the replicated median and central
    :data:`PPC_RANGE` % range)."""
    src = check_result(result)
    ax = _axes(ax, figsize=(7.0, 4.0))
    ppc = ppc_tie_rates(src, n_rep=n_rep, seed=seed, min_labels=min_labels)
    if ppc is None:
        return _empty(ax, "the tie check needs a log with ties and its rows")
    _ppc_histogram(ax, ppc)
    ax.set_xlabel("share of a user's labels that are ties")
    ax.set_ylabel("users")
    how = "ties modelled (nu, t)" if ppc["modelled"] else "ties ignored: one tie rate for everybody"
    ax.set_title(f"Tie rate per user ({ppc['n_users']} users with ≥ {min_labels} labels; {how})", fontsize=10)
    ax.set_xlim(0, 1)
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    return ax
