r"""Which behaviour model do the data support? LOO across fitted models.

:func:`compare` runs ArviZ's ``az.compare`` (PSIS-LOO) on the per-user
pointwise log-likelihood ``y_user`` of NUTS fits: leave one *user* out, which
is the predictive question that matters here (how well does the model predict
a new user's labels). :func:`fit_baseline` fits the no-casual-users baseline
(a plain Bradley–Terry model: every label attentive) with the same priors and
sampler, so a table can show two-class, continuous and plain BT side by side.

For ``continuous`` the per-user log-likelihood stored by the fit is
conditional on that user's own :math:`\eta_u`; leaving the user out removes all
information about :math:`\eta_u`, so PSIS fails for it (Pareto k > 0.7 for most
users). :func:`compare` therefore uses, by default, the *marginal* per-user
log-likelihood :math:`\log\int p(y_u \mid \theta) N(\theta; m, \tau)\,d\theta`
(a fixed grid over :math:`z = (\theta - m)/\tau` per draw), which puts it on the
same footing as ``two-class`` (whose user type is summed out) and the baseline
(no user latent).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from .ufuncs import expit

from .errors import InputError
from .likelihood import Priors

__all__ = ["compare", "fit_baseline", "BaselineResult", "marginal_user_loglik"]


class BaselineResult:
    """A plain Bradley–Terry fit (no casual users), shaped like a :class:`~bayes_annot.fit.FitResult`.

    Attributes
    ----------
    idata : arviz.InferenceData
        Posterior of ``strength`` (dim ``model``) and the ``log_likelihood``
        group ``y_user`` (dim ``user``).
    models : pandas.DataFrame
        ``model, strength`` (+ ``strength_low, strength_high``).
    summary : dict
        ``engine``, ``model`` (``"bradley-terry"``), ``loglik``, diagnostics.
    """

    def __init__(self, idata, models: pd.DataFrame, summary: dict):
        self.idata = idata
        self.models = models
        self.summary = summary

    def __repr__(self) -> str:
        return f"<BaselineResult bradley-terry via {self.summary['engine']}: {len(self.models)} models>"


def _baseline_model(problem, priors: Priors, user_labels, model_labels):
    import pymc as pm
    import pytensor.tensor as pt

    from .pymc_model import _labels, compress_cells

    cells = compress_cells(problem)
    coords = {
        "user": _labels(user_labels, problem.n_users, "u"),
        "model": _labels(model_labels, problem.n_models, "model_"),
        "cell": np.arange(len(cells["count"])),
        "pair": np.arange(len(cells["pair_model_a"])),
    }
    with pm.Model(coords=coords) as model:
        cell_user = pm.Data("cell_user", cells["user"], dims="cell")
        cell_choice = pm.Data("cell_choice_a", cells["choice_a"], dims="cell")
        cell_count = pm.Data("cell_count", cells["count"], dims="cell")
        pair_a = pm.Data("pair_model_a", cells["pair_model_a"], dims="pair")
        pair_b = pm.Data("pair_model_b", cells["pair_model_b"], dims="pair")
        cell_pair = pm.Data("cell_pair", cells["pair"], dims="cell")
        strength = pm.ZeroSumNormal("strength", sigma=priors.strength_sigma, dims="model")
        d = strength[pair_a] - strength[pair_b]
        att_cell = pt.stack([-pt.softplus(d), -pt.softplus(-d)], axis=1).reshape((-1,))[2 * cell_pair + cell_choice]
        pm.Potential("y_user", pt.inc_subtensor(pt.zeros(problem.n_users)[cell_user], cell_count * att_cell), dims="user")
    return model, cells


def fit_baseline(
    data,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    sampler: str = "pymc",
    seed: int = 0,
    priors: Priors | None = None,
    progress: bool | None = None,
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
) -> BaselineResult:
    """Fit the no-casual-users baseline (plain Bradley–Terry) by NUTS.

    Every label is attentive: :math:`P(y_r = 1) = \\sigma(s_{a_r} - s_{b_r})`,
    centred strengths ~ ZeroSumNormal(``priors.strength_sigma``). Uses exactly
    the rows :func:`bayes_annot.fit` puts in the likelihood (ties and same-model
    pairs excluded), so its ``y_user`` is comparable with the behaviour models'.

    Parameters
    ----------
    data : str, Path or pandas.DataFrame
    draws, tune, chains, sampler, seed, progress
        NUTS settings (as in :func:`bayes_annot.fit`).
    priors : Priors, optional
    user, model_a, model_b, winner : str
        Column names.
    """
    import sys
    import warnings

    import arviz as az
    import pymc as pm
    import xarray as xr

    from .baselines import load_prepared
    from .problem import build_problem
    from .pymc_model import _cell_att, _cell_matrix, _stack, _unstack, nuts_diagnostics

    start = time.perf_counter()
    priors = priors or Priors()
    prepared = load_prepared(data, user, model_a, model_b, winner)
    problem, _ = build_problem(prepared, use_p_a=False)
    if problem.n_labels == 0:
        raise InputError("no row enters the likelihood (all ties or same-model pairs): nothing to compare")
    model, cells = _baseline_model(problem, priors, prepared.user_labels, prepared.model_labels)
    kwargs = dict(
        draws=draws, tune=tune, chains=chains, random_seed=seed, compute_convergence_checks=False,
        progressbar=sys.stderr.isatty() if progress is None else bool(progress),
    )
    if sampler == "nutpie":
        kwargs["nuts_sampler"] = "nutpie"
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*The effect of Potentials.*")
        idata = pm.sample(**kwargs)
    post = idata.posterior
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    s = _stack(post, "strength")
    # plain BT: the per-user log-lik is the attentive sum A_u
    agg = _cell_matrix(cells, problem.n_users)
    user_ll = np.asarray(agg @ (_cell_att(cells, s) * cells["count"]).T).T
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "user": [str(u) for u in prepared.user_labels]}
    ll = xr.DataArray(_unstack(user_ll, n_chains, n_draws), dims=("chain", "draw", "user"), coords=coords)
    if "log_likelihood" in idata.groups():
        del idata["log_likelihood"]
    idata.add_groups(log_likelihood=xr.Dataset({"y_user": ll}))
    hdi = az.hdi(post[["strength"]], hdi_prob=0.94)["strength"]
    models = pd.DataFrame(
        {
            "model": prepared.model_labels,
            "strength": s.mean(axis=0),
            "strength_low": hdi.sel(hdi="lower").values,
            "strength_high": hdi.sel(hdi="higher").values,
        }
    )
    summary = {"engine": "nuts", "variant": "bradley-terry", "loglik": float(user_ll.sum(axis=1).mean())}
    summary.update(nuts_diagnostics(idata, ["strength"]))
    summary["runtime_seconds"] = round(time.perf_counter() - start, 4)
    return BaselineResult(idata, models, summary)


def marginal_user_loglik(idata, n_grid: int = 121, max_draws: int | None = 500, seed: int = 0):
    """Per-user log-likelihood of a ``continuous`` NUTS fit with ``eta_u`` integrated out.

    :math:`\\log\\int p(y_u \\mid \\theta)\\,N(\\theta; m, \\tau)\\,d\\theta` per draw,
    on ``n_grid`` equally spaced points of :math:`z \\in [-6, 6]` (normalised
    Normal weights). Uses only the fit's ``posterior`` and ``constant_data``.
    Returns an ``(chain, draw, user)`` :class:`xarray.DataArray` (draws thinned
    to at most ``max_draws`` per chain).
    """
    import xarray as xr
    from scipy.sparse import csr_matrix
    from scipy.special import logsumexp

    post, data = idata.posterior, idata.constant_data
    n_draws = post.sizes["draw"]
    keep = np.arange(n_draws)
    if max_draws is not None and n_draws > max_draws:
        keep = np.unique(np.linspace(0, n_draws - 1, max_draws).round().astype(int))
    post = post.isel(draw=keep)
    n_chains, n_kept = post.sizes["chain"], post.sizes["draw"]
    user = data["cell_user"].values.astype(np.int64)
    choice = data["cell_choice_a"].values
    count = data["cell_count"].values
    n_users = post.sizes["user"]
    agg = csr_matrix((np.ones(len(user)), (user, np.arange(len(user)))), shape=(n_users, len(user)))
    z = np.linspace(-6.0, 6.0, n_grid)
    log_w = -0.5 * z**2
    log_w -= logsumexp(log_w)
    flat = lambda name: post[name].values.reshape((n_chains * n_kept,) + post[name].shape[2:])  # noqa: E731
    m, tau = flat("m"), flat("tau")
    q = flat("q") if "q" in post else np.full(len(m), float(data["q"].values))
    if "strength" in post:
        s = flat("strength")
        pa, pb, cp = data["pair_model_a"].values, data["pair_model_b"].values, data["cell_pair"].values
    else:
        logit_mu = data["cell_logit_mu"].values
    out = np.empty((len(m), n_users))
    sign = 2.0 * choice - 1.0
    for i in range(len(m)):
        lm = (s[i, pa] - s[i, pb])[cp] if "strength" in post else logit_mu
        p_att = expit(sign * lm)
        p_cas = np.where(choice == 1, q[i], 1.0 - q[i])
        eta = expit(m[i] + tau[i] * z)
        ll = np.log(p_att[:, None] * eta[None, :] + p_cas[:, None] * (1.0 - eta[None, :])) * count[:, None]
        out[i] = logsumexp(np.asarray(agg @ ll) + log_w[None, :], axis=1)
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "user": post["user"].values}
    return xr.DataArray(out.reshape(n_chains, n_kept, n_users), dims=("chain", "draw", "user"), coords=coords)


def _idata_of(result):
    idata = getattr(result, "idata", None)
    if idata is None:
        raise InputError(f"cannot compare a {type(result).__name__}: it has no idata")
    return idata


def compare(results: dict, ic: str = "loo", marginal_continuous: bool = True, **kwargs) -> pd.DataFrame:
    """Compare fitted behaviour models by leave-one-user-out predictive accuracy.

    Parameters
    ----------
    results : dict of name -> FitResult or BaselineResult
        NUTS fits of the same data (e.g. ``{"two-class": ..., "continuous": ...,
        "bradley-terry": fit_baseline(data)}``).
    ic : {"loo", "waic"}
    marginal_continuous : bool
        Integrate each user's ``eta_u`` out of the continuous variant's per-user
        log-likelihood (see :func:`marginal_user_loglik`); the conditional one
        makes PSIS unreliable.
    **kwargs
        Passed to :func:`arviz.compare`.

    Returns
    -------
    pandas.DataFrame
        ArviZ's comparison table (``rank, elpd_loo, p_loo, elpd_diff, weight,
        se, dse, warning, scale``), best model first.

    Raises
    ------
    InputError
        Fewer than two results, a point-estimate (EM / MAP) result, or results
        whose users differ.
    """
    import warnings

    import arviz as az

    if len(results) < 2:
        raise InputError("compare needs at least two fits")
    prepared = {}
    users = None
    for name, result in results.items():
        idata = _idata_of(result)
        if "log_likelihood" not in idata.groups() or "y_user" not in idata.log_likelihood:
            raise InputError(f"fit '{name}' has no per-user log-likelihood (y_user)")
        if idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"] < 10:
            raise InputError(
                f"fit '{name}' is a point estimate (EM / MAP): LOO needs posterior draws; fit with method='nuts'"
            )
        these = list(map(str, idata.log_likelihood["user"].values))
        if users is None:
            users = these
        elif these != users:
            raise InputError(f"fit '{name}' was made on other users than the first fit: compare needs the same data")
        summary = getattr(result, "summary", {}) or {}
        variant = summary.get("variant") or idata.posterior.attrs.get("variant")
        if marginal_continuous and (variant == "continuous" or "z" in idata.posterior):
            ll = marginal_user_loglik(idata)
            post = idata.posterior.sel(draw=ll["draw"].values)
            idata = az.InferenceData(posterior=post, log_likelihood=ll.to_dataset(name="y_user"))
        prepared[name] = idata
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Estimated shape parameter of Pareto.*")
        warnings.filterwarnings("ignore", message=".*For one or more samples the posterior variance.*")
        table = az.compare(prepared, ic=ic, **kwargs)
    return table
