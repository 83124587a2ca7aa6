r"""The behaviour model as a PyMC model: MAP (``pm.find_MAP``) and NUTS.

The formulas are those of :mod:`bayes_annot.likelihood` written in PyTensor
(a test checks that both back ends agree to 1e-8). Discrete latents are summed
out, so the model is differentiable in all its free parameters:

* ``two-class``: the user type is marginalised per user,
  :math:`\log p(y_u) = \operatorname{logsumexp}(\log\pi + A_u, \log(1 - \pi) + C_u)`;
  the sampler sees only ``pi``, ``q`` and the strengths. Each user's
  :math:`P(\text{attentive} \mid y_u, \pi, q, s) = \sigma(\operatorname{logit}\pi + A_u - C_u)`
  is computed per posterior draw afterwards (Rao–Blackwellised): quality is its
  posterior mean and ``quality_low/high`` its 94% HDI.
* ``continuous``: the per-label type is marginalised; :math:`\operatorname{logit}\eta_u`
  is sampled non-centred.
* ``two-class`` with ``C`` taste classes (:mod:`bayes_annot.tastes`): the user
  type (casual or one of the classes) is marginalised per user; label
  switching is resolved by sorting the classes by share (every draw for NUTS).

The log is stored compressed: one *cell* per distinct
(user, model_a, model_b, choice) — or (user, known log-odds, choice) — with
its count, which is a sufficient statistic of the likelihood and makes the
per-gradient cost proportional to the number of distinct cells, not rows.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import weakref
from types import SimpleNamespace

import numpy as np
from .ufuncs import expit, logit

from .em import (
    INFORMATIVE_TOL, UsableLabels, _informative_users, label_logprobs, no_verdict_continuous, no_verdict_shares,
    row_logit_mu, tie_logit_mu,
)
from .casual import casual_effects, casual_table, casual_tables
from .pairs import fit_bradley_terry_labels
from .errors import FitWarning, InputError, user_stacklevel
from .likelihood import (
    Priors,
    attentive_logprob,
    casual_logprob,
    continuous_label_loglik,
    ETA_GRID,
    log_normal_pdf,
    log_prior,
    two_class_posterior,
    two_class_user_loglik,
)
from .spec import BehaviourSpec
from .style import style_effects, style_offsets

__all__ = [
    "build_model",
    "fit_pymc",
    "model_loglik",
    "pytensor_loglik",
    "numpy_loglik",
    "compress_cells",
    "relabel_by_share",
    "nuts_diagnostics",
    "diagnostic_warnings",
    "HDI_PROB",
    "RHAT_MAX",
    "ESS_MIN",
]

HDI_PROB = 0.94
RHAT_MAX = 1.01
ESS_MIN = 400
_DRAW_CHUNK = 64


# --------------------------------------------------------------------------- data


def compress_cells(problem: UsableLabels) -> dict:
    """Collapse the labels into distinct cells with counts (a sufficient statistic).

    Returns
    -------
    dict
        ``user`` (int64), ``choice_a`` (int64), ``count`` (float) per cell, plus
        ``model_a``, ``model_b`` and ``pair`` (index into the distinct ordered
        pairs ``pair_model_a``, ``pair_model_b``) for learned strengths, or
        ``logit_mu`` (known); with casual covariates also ``casual``, each cell's casual cell.
    """
    user = problem.user.astype(np.int64)
    choice = problem.choice_a.astype(np.int64)
    covariates = problem.casual_cell is not None
    n_cc = max(int(problem.n_casual), 1)
    cc = problem.casual_cell.astype(np.int64) if covariates else np.zeros_like(user)
    if problem.learned:
        k = problem.n_models
        key = (((user * k + problem.model_a) * k + problem.model_b) * n_cc + cc) * 2 + choice
        uniq, count = np.unique(key, return_counts=True)
        c = uniq % 2
        rest = uniq // 2
        casual = rest % n_cc
        rest = rest // n_cc
        b = rest % k
        rest = rest // k
        a = rest % k
        u = rest // k
        pairs, cell_pair = np.unique(a * k + b, return_inverse=True)
        out = dict(
            user=u, choice_a=c, count=count.astype(float), model_a=a, model_b=b,
            pair_model_a=pairs // k, pair_model_b=pairs % k, pair=cell_pair.astype(np.int64),
        )
        if covariates:
            out["casual"] = casual
        return out
    table = np.column_stack([user.astype(float), choice.astype(float), np.asarray(problem.known_logit_mu, float),
                             cc.astype(float)])
    uniq, count = np.unique(table, axis=0, return_counts=True)
    out = dict(
        user=uniq[:, 0].astype(np.int64),
        choice_a=uniq[:, 1].astype(np.int64),
        count=count.astype(float),
        logit_mu=uniq[:, 2].copy(),
    )
    if covariates:
        out["casual"] = uniq[:, 3].astype(np.int64)
    return out


def _user_choice_counts(problem: UsableLabels) -> tuple[np.ndarray, np.ndarray]:
    n_a = np.bincount(problem.user, weights=problem.choice_a, minlength=problem.n_users)
    n = np.bincount(problem.user, minlength=problem.n_users).astype(float)
    return n_a, n - n_a


def _labels(values, n: int, prefix: str) -> list[str]:
    if values is None:
        return [f"{prefix}{i}" for i in range(n)]
    return [str(v) for v in values]


# --------------------------------------------------------------------------- model

def casual_effect_names(design) -> list[str]:
    """Names of the ``casual_bin`` coordinate: ``<covariate>[<bin>]``, bins from 1 (smallest ``|x|``)."""
    return [f"{name}[{j}]" for name, n in zip(design.names, design.n_bins) for j in range(1, n + 1)]


def compress_ties(problem: UsableLabels) -> dict:
    """The ties in the likelihood as distinct (user, model_a, model_b) cells with counts (``None``: none);
    with known strengths distinct (user, known log-odds) cells (``logit_mu``); with an attentive style term
    (``problem.tie_casual_cell``) distinct (user, model_a, model_b, casual cell) cells (``casual``)."""
    if problem.tie_user is None or problem.n_ties == 0:
        return None
    n_tie_user = np.bincount(problem.tie_user, minlength=problem.n_users).astype(float)
    if not problem.learned:
        table = np.column_stack([problem.tie_user.astype(float), np.asarray(problem.tie_logit_mu, float)])
        uniq, count = np.unique(table, axis=0, return_counts=True)
        return dict(user=uniq[:, 0].astype(np.int64), logit_mu=uniq[:, 1].copy(), count=count.astype(float),
                    n_tie_user=n_tie_user)
    k = problem.n_models
    styled = problem.tie_casual_cell is not None  # an attentive style term: ties by (pair, casual cell) too
    n_cc = max(int(problem.n_casual), 1) if styled else 1
    cc = problem.tie_casual_cell.astype(np.int64) if styled else 0
    key = ((problem.tie_user.astype(np.int64) * k + problem.tie_model_a) * k + problem.tie_model_b) * n_cc + cc
    uniq, count = np.unique(key, return_counts=True)
    rest = uniq // n_cc
    out = dict(user=rest // (k * k), model_a=(rest // k) % k, model_b=rest % k, count=count.astype(float),
               n_tie_user=n_tie_user)
    if styled:
        out["casual"] = uniq % n_cc
    return out


def _davidson_log_norm(d, nu):
    r"""PyTensor :math:`\log(2\cosh(d/2) + \nu)` (:mod:`bayes_annot.ties`)."""
    import pytensor.tensor as pt

    return pt.logaddexp(pt.logaddexp(0.5 * d, -0.5 * d), pt.log(nu))


def _check_spec(problem: UsableLabels, spec: BehaviourSpec) -> None:
    """The spec's strengths are the labels' (learned pairs, or known log-odds); the spec itself is valid."""
    if (spec.casual is None) != (problem.casual_cell is None):
        raise InputError("the model spec's casual covariates and the labels' casual cells disagree")
    if spec.learned != problem.learned:
        raise InputError(
            f"the model spec has {spec.strengths} strengths but the labels have "
            f"{'learned' if problem.learned else 'known (p_a or mu)'} ones: BehaviourSpec.with_strengths sets them"
        )


def build_model(
    problem: UsableLabels,
    spec: BehaviourSpec,
    user_labels=None,
    model_labels=None,
    marginal: bool = False,
    strength_init: np.ndarray | None = None,
    strength_prior: str = "normal",
    share_init: np.ndarray | None = None,
    q_init: float = 0.5,
    casual_init: np.ndarray | None = None,
    tie_init: tuple | None = None,
    style_init: np.ndarray | None = None,
):
    r"""Build the behaviour model ``spec`` as a :class:`pymc.Model`.

    Parameters
    ----------
    problem : UsableLabels
        The labels in the likelihood (see :func:`bayes_annot.problem.build_problem`).
    spec : BehaviourSpec
        The model: ``variant``, ``n_tastes`` taste classes ``C``, learned or
        known strengths (must be the labels'), ``q`` fixed (then stored as
        data, not sampled) or free, and the priors. ``C = 1`` is the model
        below; ``C > 1`` the taste-class model (docs/tastes.md).
    user_labels, model_labels : sequence of str, optional
        Coordinates of the ``user`` and ``model`` dims.
    marginal : bool
        Continuous only: sum each user's :math:`z_u` out on the grid
        :data:`~bayes_annot.likelihood.ETA_GRID` (the MAP form: its log density is EM's
        objective, and a joint mode over the :math:`z_u` would be biased), instead of
        sampling :math:`z_u \sim \mathcal N(0, 1)` (NUTS).
    strength_init : array (K,) or (C, K), optional
        Initial strengths (default: a plain Bradley–Terry fit of all labels, so
        the attentive component starts on the strengths the data follow; with
        ``n_tastes > 1`` class 1 starts there and class ``c >= 2`` at that fit
        plus a seeded N(0, 1) perturbation — identical classes would stay
        identical under gradient ascent. :func:`fit_pymc` passes the EM fit of
        :func:`bayes_annot.tastes.fit_tastes` instead).
    strength_prior : {"normal", "zerosum"}
        ``normal``: :math:`s_k \sim N(0, \sigma_s^2)` independently (MAP; equal
        to EM's penalty). ``zerosum``: the centred strengths
        :math:`s_k - \bar s \sim \mathrm{ZeroSumNormal}(\sigma_s)` (NUTS). The
        likelihood depends on differences only, so the overall level
        :math:`\bar s \sim N(0, \sigma_s^2 / K)` is a pure prior draw; integrating
        it out is exact and the zero-sum form is exactly the marginal prior of the
        centred strengths. It removes the one direction NUTS explores slowly
        (posterior sd of the level ~ :math:`\sigma_s/\sqrt K` against ~0.05 for
        the differences: tree depth 6-8 instead of 2-3). With taste classes,
        each class's strengths are centred on their own (the likelihood of a
        class depends on its differences only).
    share_init : array (C,), optional
        ``n_tastes > 1``: initial class shares (default ``0.6 / C`` each; the
        casual share is ``1 - sum``).
    q_init : float
        Initial position bias (when ``q`` is free).
    style_init : array, optional
        Initial attentive style effects (``spec.style``, :mod:`bayes_annot.style`; default zeros). With a
        style term the model has ``style_effect`` (dim ``style_covariate``, Normal(0, ``style_effect_sigma``))
        and each cell's attentive log-odds are ``s_a - s_b + delta' x`` at its casual cell's
        representative covariates (with ties, Davidson's ``d`` gets the term too, each tie at its own casual cell).
    casual_init : array, optional
        Initial casual covariate effects (``spec.casual``; default zeros). With casual covariates
        the model has ``casual_effect`` (dim ``casual_bin``, Normal(0, ``casual_effect_sigma``))
        and each cell's casual log-probability is its entry of the casual table
        (:func:`bayes_annot.casual.casual_table` at ``beta_0 = logit(q)``).
    tie_init : tuple (nu, t), optional
        Ties in the likelihood: initial ``tie_nu`` and ``casual_tie_rate`` (default 1 and 0.2). With taste
        classes every class's attentive labels follow Davidson's model with the one shared ``nu`` (as EM).

    Returns
    -------
    pymc.Model

    Notes
    -----
    Data (``pm.Data``, dim ``cell``): the log compressed to distinct cells
    :math:`c` (user :math:`u_c`, pair :math:`(a_c, b_c)` or known log-odds
    :math:`\ell_c`, choice :math:`y_c`) with counts :math:`n_c`; for
    ``two-class`` also each user's number of ``model_a`` / ``model_b`` choices
    (dim ``user``).

    Likelihood, with :math:`\ell_c = s_{a_c} - s_{b_c}` (learned) or known,

    .. math::

        \log P_{att}(y_c) = \log\sigma\big((2y_c - 1)\ell_c\big), \qquad
        \log P_{cas}(y_c) = y_c\log q + (1 - y_c)\log(1 - q).

    ``two-class`` (potential ``y_user``, dim ``user``):
    :math:`A_u = \sum_{c: u_c = u} n_c \log P_{att}(y_c)`,
    :math:`C_u = \sum_{c: u_c = u} n_c \log P_{cas}(y_c)`,
    :math:`\log p(y_u) = \operatorname{logsumexp}(\log\pi + A_u, \log(1-\pi) + C_u)`.

    ``continuous`` (potential ``y_user``): :math:`\eta_u = \sigma(\theta_u)`,
    :math:`\log p(y_u \mid \theta_u) = \sum_{c: u_c = u} n_c \operatorname{logsumexp}
    (\log\eta_u + \log P_{att}(y_c), \log(1 - \eta_u) + \log P_{cas}(y_c))`; with
    ``marginal`` the potential is :math:`\operatorname{logsumexp}_g(\log w_g + \log p(y_u \mid m + \tau z_g))`
    over the grid's nodes and weights. Users without labels contribute 0.

    Priors (all overridable through :class:`Priors`):

    .. math::

        \pi &\sim \mathrm{Beta}(\alpha_\pi, \beta_\pi) = \mathrm{Beta}(2, 2)
            \quad\text{(two-class)} \\
        q &\sim \mathrm{Beta}(\alpha_q, \beta_q) = \mathrm{Beta}(2, 2)
            \quad\text{(unless fixed)} \\
        s_k &\sim \mathcal N(0, \sigma_s^2), \ \sigma_s = 3
            \quad\text{(dim model; learned strengths only; see strength_prior)} \\
        m &\sim \mathcal N(\mu_m, \sigma_m^2) = \mathcal N(0, 2^2)
            \quad\text{(continuous)} \\
        \tau &\sim \mathrm{HalfNormal}(\sigma_\tau), \ \sigma_\tau = 1.5
            \quad\text{(continuous)} \\
        z_u &\sim \mathcal N(0, 1), \quad \theta_u = m + \tau z_u
            \quad\text{(non-centred, dim user; summed out on the grid with ``marginal``)}.

    **Taste classes** (``n_tastes = C > 1``, :mod:`bayes_annot.tastes`): a user
    is casual or attentive under one of ``C`` classes, each with its own
    strengths (variable ``strength``, dims ``("taste", "model")``). The type
    shares (variable ``shares``, dim ``type`` = ``casual, taste_1..taste_C``)
    have a :math:`\mathrm{Dirichlet}(\beta_\pi, \alpha_\pi, \dots, \alpha_\pi)`
    prior (for ``C = 1`` the ``Beta`` prior of ``pi``). With
    :math:`A^{(c)}_u` the attentive sum under class :math:`c`, the potential
    ``y_user`` is
    :math:`\operatorname{logsumexp}(\log\pi_0 + C_u, \log\pi_1 + A^{(1)}_u, \dots, \log\pi_C + A^{(C)}_u)`,
    the per-user cell sums computed for all classes at once. No ``pi``
    variable exists (the attentive share is ``1 - shares[casual]``).

    *Label switching.* Classes have identical priors, so the posterior is
    symmetric under relabelling them; the model itself leaves it so (no
    ordering constraint). The engines resolve it after fitting: MAP orders
    the classes by share, largest first (as EM); NUTS starts every chain at
    the EM fit and relabels each posterior draw by sorting its classes by
    share, largest first (:func:`fit_pymc`). The casual type never swaps
    with a class (it has no ranking). The ``continuous`` variant and known
    strengths have no taste classes (the spec refuses them; docs/tastes.md says why).

    No sum-to-zero constraint on the strengths is needed: the Normal prior
    fixes their location (the MAP sums to zero within each connected component
    of the comparison graph, as in EM). Deterministics: ``eta`` (dim user,
    continuous). Known strengths: the per-row log-odds are data and no
    ``strength`` variable exists.
    """
    import pymc as pm
    import pytensor.tensor as pt

    _check_spec(problem, spec)
    variant, n_tastes, priors, q_fixed = spec.variant, spec.n_tastes, spec.priors, spec.q_fixed
    cells = compress_cells(problem)
    ties = compress_ties(problem)  # ties in the likelihood (bayes_annot.ties): Davidson's nu and the casual rate t
    n_users, n_models = problem.n_users, problem.n_models
    coords = {
        "user": _labels(user_labels, n_users, "u"),
        "model": _labels(model_labels, n_models, "model_"),
        "cell": np.arange(len(cells["count"])),
    }
    if problem.learned:
        names = np.asarray(coords["model"], dtype=object)
        coords["pair"] = [f"{a} vs {b}" for a, b in zip(names[cells["pair_model_a"]], names[cells["pair_model_b"]])]
    if spec.casual is not None:
        coords["casual_bin"] = casual_effect_names(spec.casual)
    if spec.style is not None:
        coords["style_covariate"] = list(spec.style.names)
    if problem.learned and strength_init is None:
        strength_init = fit_bradley_terry_labels(problem.model_a, problem.model_b, problem.choice_a, n_models,
                                                 priors.strength_sigma)
        if n_tastes > 1:
            rng = np.random.default_rng(0)
            strength_init = np.vstack([strength_init] + [
                strength_init + rng.normal(0.0, 1.0, n_models) for _ in range(n_tastes - 1)
            ])
    if n_tastes > 1:
        coords["taste"] = [f"taste_{c}" for c in range(1, n_tastes + 1)]
        coords["type"] = ["casual"] + coords["taste"]
        strength_init = np.asarray(strength_init, float).reshape(n_tastes, n_models)
        share_init = np.full(n_tastes, 0.6 / n_tastes) if share_init is None else np.asarray(share_init, float)
        share_init = np.concatenate([[1.0 - share_init.sum()], share_init])
        if not (share_init.shape == (n_tastes + 1,) and np.all(share_init > 0)):
            raise InputError(f"share_init must hold {n_tastes} positive class shares summing to less than 1")

    with pm.Model(coords=coords) as model:
        cell_user = pm.Data("cell_user", cells["user"], dims="cell")
        cell_choice = pm.Data("cell_choice_a", cells["choice_a"], dims="cell")
        cell_count = pm.Data("cell_count", cells["count"], dims="cell")

        if q_fixed is None:
            q = pm.Beta("q", alpha=priors.q_alpha, beta=priors.q_beta, initval=float(q_init))
        else:
            q = pm.Data("q", float(q_fixed))
        cas_cell = None
        if spec.casual is not None:
            # casual clicks follow covariates: logit P_cas(a) = logit(q) + D g per casual cell (bayes_annot.casual)
            design = pm.Data("casual_design", spec.casual.design())
            g = pm.Normal("casual_effect", mu=0.0, sigma=priors.casual_effect_sigma, dims="casual_bin",
                          initval=np.zeros(spec.casual.n_effects) if casual_init is None else np.asarray(casual_init))
            eta_cas = pt.log(q) - pt.log1p(-q) + pt.dot(design, g)
            cas_table = pt.stack([-pt.softplus(eta_cas), -pt.softplus(-eta_cas)], axis=1).reshape((-1,))
            cell_casual = pm.Data("cell_casual", cells["casual"], dims="cell")
            cas_cell = cas_table[2 * cell_casual + cell_choice]

        if ties is not None:
            nu0, t0 = (1.0, 0.2) if tie_init is None else (float(tie_init[0]), float(tie_init[1]))
            nu = pm.LogNormal("tie_nu", mu=priors.tie_nu_mu, sigma=priors.tie_nu_sigma, initval=nu0)
            t = pm.Beta("casual_tie_rate", alpha=priors.tie_rate_alpha, beta=priors.tie_rate_beta, initval=t0)
            tie_user = pm.Data("tie_user", ties["user"])
            tie_count = pm.Data("tie_count", ties["count"])
            if cas_cell is not None:
                cas_cell = cas_cell + pt.log1p(-t)

        if problem.learned:
            pair_a = pm.Data("pair_model_a", cells["pair_model_a"], dims="pair")
            pair_b = pm.Data("pair_model_b", cells["pair_model_b"], dims="pair")
            cell_pair = pm.Data("cell_pair", cells["pair"], dims="cell")
            init = np.asarray(strength_init, float)
            s_dims = ("taste", "model") if n_tastes > 1 else "model"
            if strength_prior == "zerosum":
                strength = pm.ZeroSumNormal(
                    "strength", sigma=priors.strength_sigma, dims=s_dims,
                    initval=init - init.mean(axis=-1, keepdims=True),
                )
            else:
                strength = pm.Normal("strength", mu=0.0, sigma=priors.strength_sigma, dims=s_dims, initval=init)
            table_index = 2 * cell_pair + cell_choice
            offsets = None
            if spec.style is not None:
                # the attentive style term (bayes_annot.style): s_a - s_b + delta' x at the cell's casual cell
                values = pm.Data("style_values", spec.style.values(spec.casual))
                delta = pm.Normal("style_effect", mu=0.0, sigma=priors.style_effect_sigma, dims="style_covariate",
                                  initval=np.zeros(spec.style.n_effects) if style_init is None else np.asarray(style_init))
                offsets = pt.dot(values, delta)  # per casual cell
            if n_tastes == 1 and offsets is not None and ties is not None:  # Davidson at d = s_a - s_b + delta' x
                d_cell = (strength[pair_a] - strength[pair_b])[cell_pair] + offsets[cell_casual]
                att_cell = 0.5 * (2.0 * cell_choice - 1.0) * d_cell - _davidson_log_norm(d_cell, nu)
                d_tie = (strength[pm.Data("tie_model_a", ties["model_a"])] - strength[pm.Data("tie_model_b", ties["model_b"])]
                         + offsets[pm.Data("tie_casual", ties["casual"])])
                att_tie = pt.log(nu) - _davidson_log_norm(d_tie, nu)
            elif n_tastes == 1 and offsets is not None:
                d_cell = (strength[pair_a] - strength[pair_b])[cell_pair] + offsets[cell_casual]
                att_cell = -pt.softplus(-(2.0 * cell_choice - 1.0) * d_cell)  # log sigmoid((2y - 1) d)
            elif n_tastes == 1 and ties is not None:  # Davidson: log P(a) = d/2 - log h, log P(b) = -d/2 - log h
                d = strength[pair_a] - strength[pair_b]
                log_h = _davidson_log_norm(d, nu)
                att_cell = pt.stack([-0.5 * d - log_h, 0.5 * d - log_h], axis=1).reshape((-1,))[table_index]
                d_tie = strength[pm.Data("tie_model_a", ties["model_a"])] - strength[pm.Data("tie_model_b", ties["model_b"])]
                att_tie = pt.log(nu) - _davidson_log_norm(d_tie, nu)  # log P_att(tie) per tie cell
            elif n_tastes == 1:
                # attentive log-odds of choosing model_a, once per distinct ordered pair
                d = strength[pair_a] - strength[pair_b]
                # [log P_att(choose b), log P_att(choose a)] per pair, flattened
                att_cell = pt.stack([-pt.softplus(d), -pt.softplus(-d)], axis=1).reshape((-1,))[table_index]
            else:
                # (C, pair) log-odds; the (C, cell) gather and the (user, C) sums below are done on
                # flat 1-d indices (as for C = 1): gradients ~3x faster than with 2-d advanced indexing
                d = strength[:, pair_a] - strength[:, pair_b]
                n_table = 2 * pair_a.shape[0]
                flat = (pt.arange(n_tastes)[:, None] * n_table + table_index[None, :]).reshape((-1,))
                if offsets is not None:  # a style term, delta shared by the classes: (C, cell) log-odds
                    d_cell = d[:, cell_pair] + offsets[cell_casual][None, :]
                    sign = (2.0 * cell_choice - 1.0)[None, :]
                    if ties is not None:
                        att_cell = (0.5 * sign * d_cell - _davidson_log_norm(d_cell, nu)).reshape((-1,))
                        tie_a, tie_b = pm.Data("tie_model_a", ties["model_a"]), pm.Data("tie_model_b", ties["model_b"])
                        d_tie = strength[:, tie_a] - strength[:, tie_b] + offsets[pm.Data("tie_casual", ties["casual"])][None, :]
                        att_tie = pt.log(nu) - _davidson_log_norm(d_tie, nu)
                    else:
                        att_cell = (-pt.softplus(-sign * d_cell)).reshape((-1,))
                elif ties is not None:  # Davidson per class, nu shared (as EM)
                    log_h = _davidson_log_norm(d, nu)
                    att_cell = pt.stack([-0.5 * d - log_h, 0.5 * d - log_h], axis=2).reshape((-1,))[flat]
                    tie_a, tie_b = pm.Data("tie_model_a", ties["model_a"]), pm.Data("tie_model_b", ties["model_b"])
                    d_tie = strength[:, tie_a] - strength[:, tie_b]  # (C, tie cells)
                    att_tie = pt.log(nu) - _davidson_log_norm(d_tie, nu)
                else:
                    att_cell = pt.stack([-pt.softplus(d), -pt.softplus(-d)], axis=2).reshape((-1,))[flat]
        else:
            logit_mu = pm.Data("cell_logit_mu", cells["logit_mu"], dims="cell")
            if ties is not None:  # Davidson at the known log-odds: log P(y) = (2y - 1) d / 2 - log h
                att_cell = 0.5 * (2.0 * cell_choice - 1.0) * logit_mu - _davidson_log_norm(logit_mu, nu)
                att_tie = pt.log(nu) - _davidson_log_norm(pm.Data("tie_logit_mu", ties["logit_mu"]), nu)
            else:
                att_cell = -pt.softplus(-(2.0 * cell_choice - 1.0) * logit_mu)  # log sigmoid((2y - 1) logit_mu)

        if n_tastes > 1:
            n_a, n_b = _user_choice_counts(problem)
            user_n_a = pm.Data("user_n_choice_a", n_a, dims="user")
            user_n_b = pm.Data("user_n_choice_b", n_b, dims="user")
            concentration = np.concatenate([[priors.pi_beta], np.full(n_tastes, priors.pi_alpha)])
            shares = pm.Dirichlet("shares", a=concentration, dims="type", initval=share_init)
            # (user, class) attentive sums from the cells, all classes at once
            user_flat = (cell_user[None, :] * n_tastes + pt.arange(n_tastes)[:, None]).reshape((-1,))
            weighted = (cell_count[None, :] * att_cell.reshape((n_tastes, -1))).reshape((-1,))
            att_sum = pt.inc_subtensor(pt.zeros(n_users * n_tastes)[user_flat], weighted).reshape((n_users, n_tastes))
            cas_sum = user_n_a * pt.log(q) + user_n_b * pt.log1p(-q)
            if cas_cell is not None:
                cas_sum = pt.inc_subtensor(pt.zeros(n_users)[cell_user], cell_count * cas_cell)
            elif ties is not None:
                cas_sum = cas_sum + (user_n_a + user_n_b) * pt.log1p(-t)
            if ties is not None:  # a tie: attentive Davidson under each class, casual t
                tie_flat = (tie_user[None, :] * n_tastes + pt.arange(n_tastes)[:, None]).reshape((-1,))
                att_sum = pt.inc_subtensor(att_sum.reshape((-1,))[tie_flat], (tie_count[None, :] * att_tie).reshape((-1,)))
                att_sum = att_sum.reshape((n_users, n_tastes))
                cas_sum = cas_sum + pm.Data("user_n_tie", ties["n_tie_user"], dims="user") * pt.log(t)
            type_ll = pt.concatenate([cas_sum[:, None], att_sum], axis=1)
            pm.Potential("y_user", pt.logsumexp(pt.log(shares)[None, :] + type_ll, axis=1), dims="user")
        elif variant == "two-class":
            n_a, n_b = _user_choice_counts(problem)
            user_n_a = pm.Data("user_n_choice_a", n_a, dims="user")
            user_n_b = pm.Data("user_n_choice_b", n_b, dims="user")
            pi = pm.Beta("pi", alpha=priors.pi_alpha, beta=priors.pi_beta, initval=0.5)
            att_sum = pt.inc_subtensor(pt.zeros(n_users)[cell_user], cell_count * att_cell)
            cas_sum = user_n_a * pt.log(q) + user_n_b * pt.log1p(-q)
            if cas_cell is not None:
                cas_sum = pt.inc_subtensor(pt.zeros(n_users)[cell_user], cell_count * cas_cell)
            elif ties is not None:
                cas_sum = cas_sum + (user_n_a + user_n_b) * pt.log1p(-t)
            if ties is not None:  # a tie: attentive Davidson, casual t
                att_sum = pt.inc_subtensor(att_sum[tie_user], tie_count * att_tie)
                cas_sum = cas_sum + pm.Data("user_n_tie", ties["n_tie_user"], dims="user") * pt.log(t)
            pm.Potential("y_user", pt.logaddexp(pt.log(pi) + att_sum, pt.log1p(-pi) + cas_sum), dims="user")
        else:
            m = pm.Normal("m", mu=priors.eta_m_mu, sigma=priors.eta_m_sigma, initval=float(logit(0.7)))
            tau = pm.HalfNormal("tau", sigma=priors.eta_tau, initval=float(priors.eta_tau) * (1.0 if marginal else 0.7))
            p_att = pt.exp(att_cell)
            p_cas = pt.switch(pt.eq(cell_choice, 1), q, 1.0 - q) if cas_cell is None else pt.exp(cas_cell)
            if cas_cell is None and ties is not None:
                p_cas = p_cas * (1.0 - t)
            if marginal:
                eta = pt.sigmoid(m + tau * ETA_GRID.z)  # (G,): eta at the grid's nodes
                label_ll = pt.log(p_att[:, None] * eta[None, :] + p_cas[:, None] * (1.0 - eta)[None, :])
                user_grid = pt.inc_subtensor(pt.zeros((n_users, ETA_GRID.n))[cell_user], cell_count[:, None] * label_ll)
                if ties is not None:  # a tie mixes eta P_att(tie) + (1 - eta) t
                    tie_ll = pt.log(pt.exp(att_tie)[:, None] * eta[None, :] + t * (1.0 - eta)[None, :])
                    user_grid = pt.inc_subtensor(user_grid[tie_user], tie_count[:, None] * tie_ll)
                pm.Potential("y_user", pt.logsumexp(user_grid + ETA_GRID.log_weights[None, :], axis=1), dims="user")
                return model
            z = pm.Normal("z", mu=0.0, sigma=1.0, dims="user")
            theta = m + tau * z
            eta = pm.Deterministic("eta", pt.sigmoid(theta), dims="user")
            # P(y_c) = eta_u P_att(y_c) + (1 - eta_u) P_cas(y_c), in probability space (one log per cell)
            eta_cell = eta[cell_user]
            casual_cell = pt.sigmoid(-theta)[cell_user]
            label_ll = pt.log(eta_cell * p_att + casual_cell * p_cas)
            user_ll = pt.inc_subtensor(pt.zeros(n_users)[cell_user], cell_count * label_ll)
            if ties is not None:
                tie_ll = pt.log(eta[tie_user] * pt.exp(att_tie) + pt.sigmoid(-theta)[tie_user] * t)
                user_ll = pt.inc_subtensor(user_ll[tie_user], tie_count * tie_ll)
            pm.Potential("y_user", user_ll, dims="user")
    return model


# --------------------------------------------------------------------------- log-likelihood helpers


def _to_value_point(model, params: dict) -> dict:
    """Natural-scale parameter values -> the model's value variables (transformed)."""
    point = {}
    for rv in model.free_RVs:
        name = rv.name
        if name == "z":
            tau = params["tau"]
            value = (np.asarray(params["theta"], float) - params["m"]) / tau
        else:
            value = np.asarray(params[name], float)
        value_var = model.rvs_to_values[rv]
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(value, *rv.owner.inputs).eval()
        point[value_var.name] = np.asarray(value, dtype=value_var.dtype)
    return point


def model_loglik(model, params: dict, penalised: bool = True, per_user: bool = False):
    """Evaluate a built model's log-likelihood at natural-scale parameter values.

    Parameters
    ----------
    model : pymc.Model
        From :func:`build_model`.
    params : dict
        ``pi`` / ``q`` / ``strength`` (two-class) or ``m``, ``tau``, ``theta``,
        ``q``, ``strength`` (continuous); with taste classes ``shares``
        (``C + 1``, casual first), ``q`` and ``strength`` (``C x K``); missing
        fixed ones are ignored.
    penalised : bool
        Add the log prior densities on the natural scale (no Jacobian) — the
        objective EM and MAP maximise. (PyMC's Normal log-density carries its
        ``log sqrt(2 pi)`` constant with ~2e-8 rounding per element, so the
        penalised value matches numpy to about 1e-8 per Normal variable;
        differences between parameter values match exactly.) For ``continuous`` this is EM's
        objective for the ``marginal`` model (``params`` then need no per-user value).
    per_user : bool
        Return the per-user log-likelihood (the ``y_user`` potential) instead.
    """
    point = _to_value_point(model, params)
    fn = _compiled_loglik(model, penalised, per_user)
    if penalised and not per_user:
        return float(fn(point))
    value = fn(*[point[v.name] for v in model.value_vars])
    return np.asarray(value) if per_user else float(value)


# model -> {(penalised, per_user): compiled function}: model_loglik evaluated at several points compiles once
_COMPILED_LOGLIK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_loglik(model, penalised: bool, per_user: bool):
    """The compiled function :func:`model_loglik` evaluates, compiled on its first use for ``model`` and kept
    while the model lives (a PyTensor compilation costs ~1 s; its evaluation microseconds)."""
    cache = _COMPILED_LOGLIK.setdefault(model, {})
    key = (bool(penalised), bool(per_user))
    if key not in cache:
        import pytensor.tensor as pt

        inputs = model.value_vars
        if per_user:
            (potential,) = model.replace_rvs_by_values([p for p in model.potentials if p.name == "y_user"])
            cache[key] = model.compile_fn(potential, inputs=inputs, point_fn=False, on_unused_input="ignore")
        elif penalised:
            cache[key] = model.compile_logp(jacobian=False)
        else:
            total = pt.add(*[pt.sum(p) for p in model.replace_rvs_by_values(model.potentials)])
            cache[key] = model.compile_fn(total, inputs=inputs, point_fn=False, on_unused_input="ignore")
    return cache[key]


def pytensor_loglik(
    problem: UsableLabels,
    variant: str,
    params: dict,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    penalised: bool = True,
    n_tastes: int = 1,
    casual=None,
    style=None,
) -> float:
    """Build the (MAP-form) PyMC model and evaluate its log-likelihood at ``params`` (see :func:`model_loglik`;
    ``casual``: the casual covariates' design, ``params["casual_effect"]`` their effects; ``style``: the attentive
    style term's design, ``params["style_effect"]`` its effects)."""
    spec = BehaviourSpec(variant, n_tastes, "learned" if problem.learned else "known", q_fixed, priors or Priors(),
                         casual=casual, style=style)
    model = build_model(problem, spec, marginal=True)
    if q_fixed is not None:
        params = dict(params, q=q_fixed)
    return model_loglik(model, params, penalised=penalised)


def numpy_loglik(
    problem: UsableLabels,
    variant: str,
    params: dict,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    penalised: bool = True,
    casual=None,
    style=None,
) -> float:
    """The same quantity as :func:`pytensor_loglik`, in numpy (:mod:`bayes_annot.likelihood`).

    The penalised value is EM's objective: log-likelihood (users without labels
    contribute 0) plus the log prior densities of ``pi`` (two-class), ``q``
    (when free), the strengths (learned), and ``m``, ``tau`` (continuous, whose
    users' :math:`z_u` are summed out on :data:`~bayes_annot.likelihood.ETA_GRID`). With taste classes (``params`` holds ``shares``,
    ``C + 1`` casual first, and ``strength`` ``C x K``) it is the EM objective
    of :func:`bayes_annot.tastes.taste_loglik`. ``casual``: the casual covariates' design
    (:mod:`bayes_annot.casual`), with their effects ``params["casual_effect"]`` (Normal prior added).
    ``style``: the attentive style term (:mod:`bayes_annot.style`, with ``casual``), its effects
    ``params["style_effect"]`` (Normal prior added).
    """
    priors = priors or Priors()
    q = float(q_fixed if q_fixed is not None else params["q"])
    table, g_prior = None, 0.0
    if casual is not None:
        g = np.asarray(params["casual_effect"], float)
        table = casual_table(float(logit(q)), g, casual.design())
        g_prior = float(log_normal_pdf(g, 0.0, priors.casual_effect_sigma).sum()) if penalised else 0.0
    cell_offsets = None  # the attentive style term's offset per casual cell (one delta, shared by any taste classes)
    if style is not None:
        delta = np.asarray(params["style_effect"], float)
        cell_offsets = style_offsets(style.values(casual), delta)
        g_prior += float(log_normal_pdf(delta, 0.0, priors.style_effect_sigma).sum()) if penalised else 0.0
    if "shares" in params:
        from .tastes import taste_loglik

        shares = np.asarray(params["shares"], float)
        ties = (float(params["tie_nu"]), float(params["casual_tie_rate"])) if problem.n_ties else None
        return taste_loglik(problem, params["strength"], shares[1:], q, priors, q_fixed, penalised,
                            casual_log_table=table, ties=ties, offsets=cell_offsets) + g_prior
    strengths = np.asarray(params["strength"], float) if problem.learned else None
    att, cas = label_logprobs(problem, strengths, q, table)
    offset = tie_offset = 0.0
    if cell_offsets is not None:
        att = _style_label_att(problem, strengths, cell_offsets)
        offset = cell_offsets[problem.casual_cell]
        if problem.n_ties:
            tie_offset = cell_offsets[problem.tie_casual_cell]
    user, tie_prior = problem.user, 0.0
    if problem.n_ties:  # ties in the likelihood (bayes_annot.ties): Davidson's attentive labels, casual rate t
        from .ties import davidson_logprobs, log_prior_ties

        nu, t = float(params["tie_nu"]), float(params["casual_tie_rate"])
        pa, pb, _ = davidson_logprobs(row_logit_mu(problem, strengths) + offset, nu)
        att = np.where(problem.choice_a == 1, pa, pb)
        tie_att = davidson_logprobs(tie_logit_mu(problem, strengths) + tie_offset, nu)[2]
        att = np.concatenate([att, tie_att])
        cas = np.concatenate([cas + np.log1p(-t), np.full(problem.n_ties, np.log(t))])
        user = np.concatenate([problem.user, problem.tie_user])
        tie_prior = log_prior_ties(nu, t, priors) if penalised else 0.0
    if variant == "two-class":
        pi = float(params["pi"])
        att_sum = np.bincount(user, weights=att, minlength=problem.n_users)
        cas_sum = np.bincount(user, weights=cas, minlength=problem.n_users)
        active = np.bincount(user, minlength=problem.n_users) > 0
        value = float(two_class_user_loglik(att_sum[active], cas_sum[active], pi).sum())
        prior = dict(shares=[pi])
    else:
        m, tau = float(params["m"]), float(params["tau"])
        eta = expit(ETA_GRID.theta(m, tau))
        label_ll = np.log(np.exp(att)[:, None] * eta + np.exp(cas)[:, None] * (1.0 - eta))
        user_grid = np.zeros((problem.n_users, ETA_GRID.n))
        np.add.at(user_grid, user, label_ll)
        active = np.bincount(user, minlength=problem.n_users) > 0
        joint = user_grid[active] + ETA_GRID.log_weights
        top = joint.max(axis=1)
        value = float((top + np.log(np.exp(joint - top[:, None]).sum(axis=1))).sum())
        prior = dict(m=m, tau=tau)
    return value + g_prior + tie_prior + log_prior(priors, q, strengths, q_fixed is None, **prior) if penalised else value


# --------------------------------------------------------------------------- per-draw quantities (numpy)


def _style_label_att(problem: UsableLabels, strengths, offsets) -> np.ndarray:
    """log P_att of every label with the attentive style term: ``log sigmoid(+-(s_a - s_b + offset[casual cell]))``."""
    d = strengths[problem.model_a] - strengths[problem.model_b] + np.asarray(offsets)[problem.casual_cell]
    return attentive_logprob(problem.choice_a, d)


def _cell_matrix(cells: dict, n_users: int):
    from scipy.sparse import csr_matrix

    n = len(cells["count"])
    return csr_matrix((np.ones(n), (cells["user"], np.arange(n))), shape=(n_users, n))


def _cell_att(cells: dict, strengths, offsets=None):
    """log P_att per cell; ``strengths`` (S, K) draws or None (known); ``offsets`` (S, n_casual): each draw's
    style offsets per casual cell (the attentive style term), else ``None``."""
    if strengths is None:
        return attentive_logprob(cells["choice_a"], cells["logit_mu"])[None, :]
    return attentive_logprob(cells["choice_a"], _draw_log_odds(cells, strengths, len(strengths), offsets))


def _draw_log_odds(cells: dict, strengths, n_draws: int, offsets=None) -> np.ndarray:
    """``(S, n_cells)`` attentive log-odds ``d`` of every cell in each draw: ``s_a - s_b`` of the draws, or the
    cells' known log-odds (``strengths`` None), the same in every draw; ``offsets`` (S, n_casual): plus each
    draw's style offset of the cell's casual cell (the attentive style term)."""
    if strengths is None:
        return np.broadcast_to(cells["logit_mu"], (n_draws, len(cells["logit_mu"])))
    d = strengths[:, cells["model_a"]] - strengths[:, cells["model_b"]]
    return d if offsets is None else d + offsets[:, cells["casual"]]


def _cell_casual(cells: dict, tables, sl):
    """Per draw of ``sl`` the casual log-probability of every cell (casual covariates: ``tables`` (S, 2 n_casual))."""
    return tables[sl][:, 2 * cells["casual"] + cells["choice_a"]]


def _tie_terms(problem, cells, ties, strengths, sl, offsets=None):
    r"""Per draw of ``sl``, what ties add to each user's sums (:mod:`bayes_annot.ties`): ``(att, cas)`` (S, U).

    ``ties = (tie_cells, nu, t)`` (:func:`compress_ties`, draws of ``nu`` and ``t``). Attentive: every decided
    cell's Davidson normaliser :math:`\log(2\cosh(d/2)) - \log(2\cosh(d/2) + \nu)` (the decided cells carry
    :math:`\log\sigma(\pm d)`) plus each tie's :math:`\log P_{att}(\text{tie})`; casual:
    :math:`n_{tie} \log t + n_{decided} \log(1 - t)`. ``offsets`` (S, n_casual): each draw's style offsets
    (the attentive style term: ``d`` of every cell and tie gets its casual cell's)."""
    from .ties import davidson_logprobs

    tie_cells, nu, t = ties
    n_draws = len(nu[sl])
    s = None if strengths is None else strengths[sl]
    off = None if offsets is None else offsets[sl]
    d, d_tie = _draw_log_odds(cells, s, n_draws, off), _draw_log_odds(tie_cells, s, n_draws, off)
    half = 0.5 * np.abs(d)
    log_base = half + np.log1p(np.exp(-2.0 * half))  # log(2 cosh(d/2))
    norm = np.stack([log_base[i] - (0.5 * d[i] - davidson_logprobs(d[i], float(v))[0]) for i, v in enumerate(nu[sl])])
    tie_ll = np.stack([davidson_logprobs(d_tie[i], float(v))[2] for i, v in enumerate(nu[sl])])
    att = np.asarray(_cell_matrix(cells, problem.n_users) @ (norm * cells["count"]).T).T
    att += np.asarray(_cell_matrix(tie_cells, problem.n_users) @ (tie_ll * tie_cells["count"]).T).T
    n_decided = np.bincount(problem.user, minlength=problem.n_users).astype(float)
    cas = tie_cells["n_tie_user"][None, :] * np.log(t[sl])[:, None] + n_decided[None, :] * np.log1p(-t[sl])[:, None]
    return att, cas


def _per_draw_two_class(problem, cells, pi, q, strengths, casual_tables_=None, ties=None, offsets=None):
    """Per-draw (S, U) P(attentive) and per-user log-lik (Rao–Blackwellised); ``casual_tables_`` (S, 2 n_casual):
    the casual tables of each draw (casual covariates); ``ties``: :func:`_tie_terms`'s (ties in the likelihood)."""
    agg = _cell_matrix(cells, problem.n_users)
    n_a, n_b = _user_choice_counts(problem)
    active = (n_a + n_b) > 0
    if ties is not None:
        active = active | (ties[0]["n_tie_user"] > 0)
    n_draws = len(pi)
    p_att = np.empty((n_draws, problem.n_users))
    user_ll = np.empty((n_draws, problem.n_users))
    for lo in range(0, n_draws, _DRAW_CHUNK):
        sl = slice(lo, min(lo + _DRAW_CHUNK, n_draws))
        s = None if strengths is None else strengths[sl]
        att = _cell_att(cells, s, None if offsets is None else offsets[sl]) * cells["count"]
        att_sum = np.asarray(agg @ att.T).T
        if att_sum.shape[0] == 1:
            att_sum = np.repeat(att_sum, sl.stop - sl.start, axis=0)
        if casual_tables_ is None:
            cas_sum = n_a[None, :] * np.log(q[sl])[:, None] + n_b[None, :] * np.log1p(-q[sl])[:, None]
        else:
            cas_sum = np.asarray(agg @ (_cell_casual(cells, casual_tables_, sl) * cells["count"]).T).T
        if ties is not None:
            tie_att, tie_cas = _tie_terms(problem, cells, ties, strengths, sl, offsets)
            att_sum, cas_sum = att_sum + tie_att, cas_sum + tie_cas
        p_pi = pi[sl][:, None]
        p_att[sl] = np.where(active, two_class_posterior(att_sum, cas_sum, p_pi), p_pi)
        user_ll[sl] = np.where(active, two_class_user_loglik(att_sum, cas_sum, p_pi), 0.0)
    return p_att, user_ll


def _per_draw_continuous(problem, cells, theta, q, strengths, casual_tables_=None, offsets=None, ties=None):
    r"""Per-draw (S, U) per-user log-likelihood of the continuous variant (``offsets``: the style term's, as
    :func:`_cell_att`); ``ties = (tie_cells, nu, t)``
    (:func:`compress_ties`, draws of ``nu`` and ``t``): a decided label's attentive side is Davidson's and its
    casual side carries ``1 - t``; a tie mixes :math:`\eta_u P_{att}(\text{tie}) + (1 - \eta_u) t` (as the
    model's potential and the continuous EM's grid pass)."""
    from .ties import davidson_logprobs

    agg = _cell_matrix(cells, problem.n_users)
    n_draws = theta.shape[0]
    user_ll = np.empty((n_draws, problem.n_users))
    for lo in range(0, n_draws, _DRAW_CHUNK):
        sl = slice(lo, min(lo + _DRAW_CHUNK, n_draws))
        s = None if strengths is None else strengths[sl]
        off = None if offsets is None else offsets[sl]
        if ties is None:
            att = _cell_att(cells, s, off)
        else:
            d = _draw_log_odds(cells, s, len(ties[1][sl]), off)
            att = np.stack([np.where(cells["choice_a"] == 1, *davidson_logprobs(d[i], float(v))[:2])
                            for i, v in enumerate(ties[1][sl])])
        if casual_tables_ is None:
            cas = casual_logprob(cells["choice_a"], np.asarray(q[sl], float)[:, None])
        else:
            cas = _cell_casual(cells, casual_tables_, sl)
        if ties is not None:
            cas = cas + np.log1p(-ties[2][sl])[:, None]
        ll = continuous_label_loglik(att, cas, theta[sl][:, cells["user"]]) * cells["count"]
        user_ll[sl] = np.asarray(agg @ ll.T).T
        if ties is not None:
            tie_cells, nu, t = ties
            d_tie = _draw_log_odds(tie_cells, s, len(nu[sl]), off)
            att_tie = np.stack([davidson_logprobs(d_tie[i], float(v))[2] for i, v in enumerate(nu[sl])])
            cas_tie = np.broadcast_to(np.log(t[sl])[:, None], att_tie.shape)
            tie_ll = continuous_label_loglik(att_tie, cas_tie, theta[sl][:, tie_cells["user"]]) * tie_cells["count"]
            user_ll[sl] += np.asarray(_cell_matrix(tie_cells, problem.n_users) @ tie_ll.T).T
    return user_ll


# --------------------------------------------------------------------------- engines


def fit_pymc(
    problem: UsableLabels,
    spec: BehaviourSpec,
    method: str = "map",
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    sampler: str = "pymc",
    progress: bool | None = None,
    seed: int = 0,
    user_labels=None,
    model_labels=None,
    target_accept: float = 0.9,
    informative_tol: float = INFORMATIVE_TOL,
    maxeval: int = 50000,
    start: dict | None = None,
):
    """Fit the behaviour model ``spec`` with PyMC: ``method="map"`` or ``"nuts"``.

    Parameters
    ----------
    problem : UsableLabels
    spec : BehaviourSpec
        The model (:func:`build_model` builds its log-probability): variant,
        taste classes, learned or known strengths (the labels'), ``q`` fixed or
        free, priors.
    method : {"map", "nuts"}
        ``map``: ``pm.find_MAP`` (L-BFGS-B, no Jacobian) of the same penalised
        log-likelihood EM maximises (continuous: the users' :math:`z_u` summed out on the
        grid, :func:`build_model` with ``marginal``). ``nuts``: full posterior.
    draws, tune, chains : int
        NUTS settings (per chain).
    sampler : {"pymc", "nutpie"}
        NUTS implementation; ``nutpie`` needs ``pip install 'bayes_annot[nutpie]'``.
    progress : bool, optional
        Progress bars; default: on when stderr is a terminal (NUTS), off (MAP).
    seed : int
    user_labels, model_labels : sequence of str, optional
        Coordinates of the ``user`` / ``model`` dims.
    target_accept : float
        NUTS target acceptance rate.
    informative_tol : float
        The informative-user rule of every engine (see :data:`bayes_annot.em.INFORMATIVE_TOL`).
    maxeval : int
        MAP: maximum number of log-density evaluations.
    start : dict, optional
        ``spec.n_tastes = C > 1`` (see :func:`build_model`): MAP and every NUTS chain start at
        ``start``; MAP orders the classes by share, largest first, and NUTS
        relabels every draw so (label switching; docs/tastes.md). Quality is
        ``1 - P(casual)``; NUTS reports posterior means of the per-draw user-type
        posteriors. The result carries the taste columns of EM
        (``extra_user_columns``: ``taste``, ``p_taste_1..C``;
        ``extra_model_columns``: ``strength_taste_1..C``; ``strengths`` is class 1's).
        ``start`` holds ``strengths`` (C, K), ``shares`` (C,) and ``q``, e.g.
        :meth:`bayes_annot.tastes.TasteResult.as_start`; default: the EM fit
        :func:`bayes_annot.tastes.fit_tastes` (``seed``).
        ``C = 1``, NUTS: the point every chain starts at before the sampler's
        jitter, by variable name (:func:`start_point` of an EM fit; :func:`bayes_annot.fit`
        passes its EM fit of the same model). A chain started far away can stay
        in a minor mode, e.g. with ties one that lays them on the other user type
        (docs/benchmarks_sbc.md). Default: :func:`build_model`'s initial values.
        MAP always starts at :func:`build_model`'s initial values. The nutpie sampler
        picks its own start.

    Returns
    -------
    bayes_annot.problem.Estimates
        ``idata`` holds the posterior (NUTS, dims ``user`` / ``model``, with a
        ``log_likelihood`` group ``y_user`` so ``az.loo`` works) or the MAP as
        1 chain x 1 draw.

    Warns
    -----
    FitWarning
        NUTS: R-hat above 1.01, bulk ESS below 400, or any divergent transition.
    """
    if method not in ("map", "nuts"):
        raise InputError(f"unknown method '{method}' for the PyMC engine, expected 'map' or 'nuts'")
    if sampler not in ("pymc", "nutpie"):
        raise InputError(f"unknown sampler '{sampler}', expected 'pymc' or 'nutpie'")
    if method == "nuts" and sampler == "nutpie":
        try:
            import nutpie  # noqa: F401
        except ImportError as exc:
            raise InputError(
                "the nutpie sampler is not installed: run pip install 'bayes_annot[nutpie]' or use --sampler pymc"
            ) from exc
    _check_spec(problem, spec)
    n_tastes, priors, q_fixed = spec.n_tastes, spec.priors, spec.q_fixed
    t0 = time.perf_counter()
    user_labels = _labels(user_labels, problem.n_users, "u")
    model_labels = _labels(model_labels, problem.n_models, "model_")
    if n_tastes > 1:
        if start is None:
            from .tastes import fit_tastes

            start = fit_tastes(problem, int(n_tastes), priors=priors, q_fixed=q_fixed, seed=seed,
                               casual=spec.casual, style=spec.style).as_start()
        est = _fit_tastes(
            problem, spec, start, method, draws, tune, chains, sampler, progress, seed,
            user_labels, model_labels, target_accept, informative_tol, maxeval,
        )
    elif method == "map":
        est = _fit_map(problem, spec, progress, seed, user_labels, model_labels, informative_tol, maxeval)
    else:
        est = _fit_nuts(
            problem, spec, draws, tune, chains, sampler, progress, seed,
            user_labels, model_labels, target_accept, informative_tol, start,
        )
    est.runtime_seconds = time.perf_counter() - t0
    return est


def _run_map(model, progress, seed, maxeval):
    import pymc as pm

    with model:
        return pm.find_MAP(
            progressbar=bool(progress), seed=seed, return_raw=True, maxeval=maxeval,
            options={"maxiter": maxeval, "ftol": 1e-14, "gtol": 1e-7},
        )


def _grid_posterior(problem: UsableLabels, m: float, tau: float, casual, strengths, offsets=None):
    """Continuous: each user's posterior over the grid and marginal log-likelihood at the given
    parameters (the block engine's :func:`~bayes_annot.block_em.block_grid_posterior`; ``casual``:
    ``q``, or the casual table with covariates; ``offsets``: the attentive style term's per casual cell)."""
    from .block_em import block_grid_posterior, make_block
    from .style import style_table
    from .pairs import PairTable, attentive_table_pairs

    usable, users = np.ones(problem.n_labels, dtype=bool), np.arange(problem.n_users)
    cells = dict(casual_cell=problem.casual_cell, n_casual=problem.n_casual)
    if not problem.learned:
        block = make_block(problem.user, usable, problem.n_models, choice=problem.choice_a,
                           known_logit=problem.known_logit_mu, users=users, **cells)
        return block_grid_posterior(block, m, tau, casual, None)
    pairs, index = PairTable.from_labels(problem.model_a, problem.model_b, problem.n_models)
    block = make_block(problem.user, usable, problem.n_models, cell=(2 * index + problem.choice_a).astype(np.int32),
                       users=users, pairs=pairs, **cells)
    table = attentive_table_pairs(strengths, pairs.a, pairs.b) if offsets is None else \
        style_table(strengths, pairs.a, pairs.b, offsets)
    return block_grid_posterior(block, m, tau, casual, np.exp(table))


def _tie_map_users(problem: UsableLabels, variant: str, point: dict, q: float, table, strengths, informative_tol,
                   offsets=None):
    """MAP with ties in the likelihood: per-user results at the MAP point by the block engine's passes
    (the EM engine's arithmetic; :mod:`bayes_annot.ties`). ``offsets``: the attentive style term's per casual
    cell (ties then indexed by ``(pair, casual cell)``, as EM's blocks). Returns ``(quality, p_good, user_ll,
    informative, active, params)`` before the no-verdict levels."""
    from .block_em import _block_informative, block_grid_posterior, block_two_class_users, known_davidson_tables, make_block
    from .pairs import PairTable
    from .style import style_davidson_tables
    from .ties import davidson_tables

    n, n_ties = problem.n_labels, problem.n_ties
    mask = np.arange(n + n_ties) < n
    nu, t = float(point["tie_nu"]), float(point["casual_tie_rate"])
    common = dict(users=np.arange(problem.n_users), casual_cell=problem.casual_cell, n_casual=problem.n_casual, tie=~mask)
    user = np.concatenate([problem.user, problem.tie_user])
    if problem.learned:
        pairs = PairTable.from_labels(np.concatenate([problem.model_a, problem.tie_model_a]),
                                      np.concatenate([problem.model_b, problem.tie_model_b]), problem.n_models)[0]
        tie_pair = pairs.index(problem.tie_model_a, problem.tie_model_b)
        if offsets is not None:  # a style term: each tie at (pair, casual cell)
            common["n_tie_casual"] = problem.n_casual
            tie_pair = tie_pair.astype(np.int64) * problem.n_casual + problem.tie_casual_cell
        block = make_block(user, mask, problem.n_models, cell=pairs.cells(problem.model_a, problem.model_b,
                                                                          problem.choice_a),
                           pairs=pairs, tie_pair=tie_pair, **common)
        if offsets is None:
            att_table, tie_table = davidson_tables(strengths, pairs.a, pairs.b, nu)
        else:  # (2 P n_casual,) decided joint entries and (P n_casual,) ties
            att_table, tie_table = style_davidson_tables(strengths, pairs.a, pairs.b, offsets, nu)
        differs = np.repeat(np.abs(strengths[pairs.a] - strengths[pairs.b]) > informative_tol, 2)
    else:  # known log-odds: Davidson's tables over the block's vocabulary of them
        block = make_block(user, mask, problem.n_models, choice=problem.choice_a, known_logit=problem.known_logit_mu,
                           tie_logit=problem.tie_logit_mu, **common)
        att_table, tie_table = (part[:, 0] for part in known_davidson_tables(block.known_values, nu))
        differs = None
    casual = q if table is None else table
    params = {"tie_nu": nu, "casual_tie_rate": t}
    if variant == "two-class":
        quality, user_ll = block_two_class_users(block, float(point["pi"]), casual, att_table, ties=(tie_table, t))
        p_good = quality
    else:
        m, tau = float(point["m"]), float(point["tau"])
        post, user_ll = block_grid_posterior(block, m, tau, casual, np.exp(att_table), ties=(np.exp(tie_table), t))
        quality, p_good = post @ expit(ETA_GRID.theta(m, tau)), post @ ETA_GRID.above_half(m, tau)
    informative = _block_informative(block, differs, casual, informative_tol)
    return quality, p_good, user_ll, informative, block.n_user_all > 0, params


def _fit_map(problem, spec, progress, seed, user_labels, model_labels, informative_tol, maxeval):
    from .inference_data import point_estimate_idata

    variant, priors, q_fixed = spec.variant, spec.priors, spec.q_fixed
    model = build_model(problem, spec, user_labels, model_labels, marginal=True)
    point, raw = _run_map(model, progress, seed, maxeval)
    q = float(q_fixed) if q_fixed is not None else float(point["q"])
    strengths = np.asarray(point["strength"], float) if problem.learned else None
    n_user = np.bincount(problem.user, minlength=problem.n_users)
    active = n_user > 0
    g = table = delta = offsets = None
    if spec.casual is not None:
        g = np.asarray(point["casual_effect"], float)
        table = casual_table(float(logit(q)), g, spec.casual.design())
    if spec.style is not None:
        delta = np.asarray(point["style_effect"], float)
        offsets = style_offsets(spec.style.values(spec.casual), delta)
    style_args = {} if delta is None else {"style_effect": delta}
    tie_params = {}
    if problem.n_ties:  # ties in the likelihood: the block engine's per-user arithmetic at the MAP point
        quality, p_good, user_ll, informative, with_labels, tie_params = _tie_map_users(
            problem, variant, point, q, table, strengths, informative_tol, offsets)
        if variant == "two-class":
            pi = float(point["pi"])
            quality = p_good = np.where(with_labels, quality, pi)
            params = {"pi": pi, "q": q}
        else:
            m, tau = float(point["m"]), float(point["tau"])
            params = {"m": m, "tau": tau, "q": q}
        user_ll = np.where(with_labels, user_ll, 0.0)
        loglik = numpy_loglik(problem, variant, {**params, "strength": strengths, "casual_effect": g, **tie_params,
                                                 **style_args}, priors, q_fixed, casual=spec.casual, style=spec.style)
    elif variant == "two-class":
        att, cas = label_logprobs(problem, strengths, q, table)
        if offsets is not None:
            att = _style_label_att(problem, strengths, offsets)
        pi = float(point["pi"])
        att_sum = np.bincount(problem.user, weights=att, minlength=problem.n_users)
        cas_sum = np.bincount(problem.user, weights=cas, minlength=problem.n_users)
        quality = np.where(active, two_class_posterior(att_sum, cas_sum, pi), pi)
        p_good = quality
        user_ll = np.where(active, two_class_user_loglik(att_sum, cas_sum, pi), 0.0)
        params = {"pi": pi, "q": q}
        loglik = numpy_loglik(problem, variant, {"pi": pi, "q": q, "strength": strengths, "casual_effect": g,
                                                 **style_args}, priors, q_fixed, casual=spec.casual, style=spec.style)
    else:
        m, tau = float(point["m"]), float(point["tau"])
        post, user_ll = _grid_posterior(problem, m, tau, q if table is None else table, strengths, offsets)
        quality = post @ expit(ETA_GRID.theta(m, tau))
        p_good = post @ ETA_GRID.above_half(m, tau)
        params = {"m": m, "tau": tau, "q": q}
        loglik = numpy_loglik(problem, variant, {"m": m, "tau": tau, "q": q, "strength": strengths, "casual_effect": g,
                                                 **style_args}, priors, q_fixed, casual=spec.casual, style=spec.style)
    if not problem.n_ties:
        informative = _informative_users(problem, strengths, informative_tol)
    if variant == "two-class":  # no verdict on uninformative users: the population level (as in EM)
        quality = p_good = np.where(informative, quality, no_verdict_shares([pi], informative.any(), priors)[0])
    else:
        level, p_level = no_verdict_continuous(m, tau, informative.any(), priors)
        quality, p_good = np.where(informative, quality, level), np.where(informative, p_good, p_level)
    params["mean_quality"] = float(np.mean(quality[active])) if active.any() else float("nan")
    params.update(tie_params)
    est = _estimates(
        engine="map",
        variant=variant,
        quality=quality,
        p_good=p_good,
        n_labels_user=n_user.astype(np.int64),
        informative=informative,
        strengths=strengths,
        parameters=params,
        loglik=float(loglik),
        n_iter=int(getattr(raw, "nit", 0)) if raw is not None else None,
        converged=bool(raw is not None and raw.success),
        user_loglik=user_ll,
    )
    if spec.casual is not None:
        est.extra_summary["casual_effects"] = casual_effects(spec.casual, float(logit(q)), g)
    if spec.style is not None:
        est.extra_summary["style_effects"] = style_effects(spec.style, delta)
    est.idata = point_estimate_idata(SimpleNamespace(user_labels=user_labels, model_labels=model_labels), est)
    return est


def _stack(posterior, name):
    """(chain, draw, ...) -> (S, ...) numpy array."""
    values = posterior[name].values
    return values.reshape((-1,) + values.shape[2:])


def _unstack(values, n_chains, n_draws):
    return values.reshape((n_chains, n_draws) + values.shape[1:])


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def nuts_diagnostics(idata, var_names) -> dict:
    """``rhat_max``, ``ess_bulk_min`` and ``divergences`` over ``var_names``."""
    import arviz as az

    rhat = az.rhat(idata, var_names=var_names)
    ess = az.ess(idata, var_names=var_names, method="bulk")
    rhat_values = np.concatenate([np.ravel(rhat[v].values) for v in rhat.data_vars])
    ess_values = np.concatenate([np.ravel(ess[v].values) for v in ess.data_vars])
    divergences = 0
    n_transitions = int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"])
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergences = int(np.asarray(idata.sample_stats["diverging"].values).sum())
    return {
        "rhat_max": _finite_or_none(np.nanmax(rhat_values)) if np.isfinite(rhat_values).any() else None,
        "ess_bulk_min": _finite_or_none(np.nanmin(ess_values)) if np.isfinite(ess_values).any() else None,
        "divergences": divergences,
        "divergent_share": divergences / max(n_transitions, 1),
    }


def diagnostic_warnings(diagnostics: dict) -> list[str]:
    """Plain-words warnings for poor NUTS diagnostics."""
    out = []
    rhat, ess, div = diagnostics.get("rhat_max"), diagnostics.get("ess_bulk_min"), diagnostics.get("divergences", 0)
    if rhat is None or rhat > RHAT_MAX:
        shown = "could not be computed" if rhat is None else f"is {rhat:.3f}"
        out.append(
            f"the chains disagree (largest R-hat {shown}, should be at most {RHAT_MAX}): "
            "the posterior is not reliable; run more tune/draws or more chains"
        )
    if ess is None or ess < ESS_MIN:
        shown = "could not be computed" if ess is None else f"is only {ess:.0f}"
        out.append(
            f"too few effective draws (smallest bulk ESS {shown}, want at least {ESS_MIN}): "
            "intervals are imprecise; run more draws"
        )
    if div:
        out.append(
            f"{div} divergent transition(s): the sampler could not explore part of the posterior and "
            "results may be biased; raise target_accept or simplify the model"
        )
    return out


def _estimates(**fields):
    """The engines' result (:class:`bayes_annot.problem.Estimates`): the one place this module names it."""
    from .problem import Estimates

    return Estimates(**fields)


def _sample(model, draws, tune, chains, sampler, progress, seed, target_accept):
    import pymc as pm

    progressbar = sys.stderr.isatty() if progress is None else bool(progress)
    kwargs = dict(
        draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=progressbar,
        target_accept=target_accept, compute_convergence_checks=False,
    )
    if sampler == "nutpie":
        kwargs["nuts_sampler"] = "nutpie"
    else:
        kwargs["cores"] = min(chains, os.cpu_count() or 1)
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*initvals.*nutpie.*")
        warnings.filterwarnings("ignore", message=".*The effect of Potentials.*")
        return pm.sample(**kwargs)


def _diagnose(idata, var_names, sampler):
    """NUTS diagnostics (warned as :class:`FitWarning`) and whether the run counts as converged."""
    diagnostics = nuts_diagnostics(idata, var_names)
    messages = diagnostic_warnings(diagnostics)
    for message in messages:
        warnings.warn(message, FitWarning, stacklevel=user_stacklevel())
    diagnostics["warnings"] = messages
    diagnostics["sampler"] = sampler
    converged = bool(
        diagnostics["rhat_max"] is not None and diagnostics["rhat_max"] <= RHAT_MAX and diagnostics["divergences"] == 0
    )
    return diagnostics, converged


def start_point(em) -> dict:
    """The point of an EM fit (:class:`bayes_annot.em.EMResult`) by the names of :func:`build_model`'s
    variables: where :func:`fit_pymc`'s NUTS chains start (``start``; centred strengths, as the
    sum-to-zero prior has them)."""
    point = {"q": em.q, "pi": em.pi, "m": em.m, "tau": em.tau, "casual_effect": em.casual_g,
             "style_effect": em.style_delta, "tie_nu": em.nu, "casual_tie_rate": em.tie_rate}
    if em.strengths is not None:
        point["strength"] = np.asarray(em.strengths, float) - np.mean(em.strengths)
    return {name: np.asarray(value, float) for name, value in point.items() if value is not None}


def _start_at(model, start: dict | None) -> None:
    """Start ``model``'s free variables at ``start`` (:func:`start_point`): the names it has, with their
    shapes; the sampler's jitter then spreads the chains around it."""
    for name, value in (start or {}).items():
        rv = model.named_vars.get(name)
        if rv is not None and rv in model.free_RVs and np.shape(value) == tuple(rv.shape.eval()):
            model.set_initval(rv, value)


def _fit_nuts(
    problem, spec, draws, tune, chains, sampler, progress, seed,
    user_labels, model_labels, target_accept, informative_tol, start=None,
):
    import arviz as az
    import xarray as xr

    variant, priors, q_fixed = spec.variant, spec.priors, spec.q_fixed
    model = build_model(problem, spec, user_labels, model_labels, strength_prior="zerosum")
    _start_at(model, start)
    idata = _sample(model, draws, tune, chains, sampler, progress, seed, target_accept)

    post = idata.posterior
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    cells = compress_cells(problem)
    q_draws = np.full(n_chains * n_draws, float(q_fixed)) if q_fixed is not None else _stack(post, "q")
    s_draws = _stack(post, "strength") if problem.learned else None
    g_draws = tables = None
    if spec.casual is not None:
        g_draws = _stack(post, "casual_effect")
        tables = casual_tables(logit(q_draws), g_draws, spec.casual.design())
    d_draws = offsets = None
    if spec.style is not None:  # each draw's style offsets per casual cell
        d_draws = _stack(post, "style_effect").reshape(-1, spec.style.n_effects)
        offsets = d_draws @ spec.style.values(spec.casual).T
    n_user = np.bincount(problem.user, minlength=problem.n_users)
    active = n_user > 0
    user_dims = ("chain", "draw", "user")
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "user": list(user_labels)}

    strengths = s_draws.mean(axis=0) if problem.learned else None
    informative = _informative_users(problem, strengths, informative_tol)
    # no verdict on uninformative users: the population level, per draw (as EM does at its estimate)
    if variant == "two-class":
        pi_draws = _stack(post, "pi")
        tie_cells = compress_ties(problem)
        ties = None if tie_cells is None else (tie_cells, _stack(post, "tie_nu"), _stack(post, "casual_tie_rate"))
        p_att, user_ll = _per_draw_two_class(problem, cells, pi_draws, q_draws, s_draws, tables, ties, offsets)
        quality_draws = p_att
        quality_draws[:, ~informative] = no_verdict_shares(pi_draws[:, None], informative.any(), priors)
        global_vars = ["pi"]
        p_good_fn = None
    else:
        m_draws, tau_draws = _stack(post, "m"), _stack(post, "tau")
        theta = m_draws[:, None] + tau_draws[:, None] * _stack(post, "z")
        tie_cells = compress_ties(problem)
        ties = None if tie_cells is None else (tie_cells, _stack(post, "tie_nu"), _stack(post, "casual_tie_rate"))
        user_ll = _per_draw_continuous(problem, cells, theta, q_draws, s_draws, tables, offsets, ties)
        quality_draws = _stack(post, "eta").copy()
        p_good_fn = (theta >= 0.0).mean(axis=0)
        if not informative.all():
            level, p_level = no_verdict_continuous(m_draws, tau_draws, informative.any(), priors)
            quality_draws[:, ~informative] = level[:, None]
            p_good_fn[~informative] = p_level.mean()
        global_vars = ["m", "tau"]
    if q_fixed is None:
        global_vars.append("q")
    if problem.learned:
        global_vars.append("strength")
    if spec.casual is not None:
        global_vars.append("casual_effect")
    if spec.style is not None:
        global_vars.append("style_effect")
    if "tie_nu" in post:
        global_vars += ["tie_nu", "casual_tie_rate"]
    idata.posterior["quality"] = xr.DataArray(_unstack(quality_draws, n_chains, n_draws), dims=user_dims, coords=coords)
    log_lik = xr.Dataset({"y_user": xr.DataArray(_unstack(user_ll, n_chains, n_draws), dims=user_dims, coords=coords)})
    if "log_likelihood" in idata.groups():
        del idata["log_likelihood"]
    idata.add_groups(log_likelihood=log_lik)
    idata.posterior.attrs["engine"] = "nuts"
    idata.posterior.attrs["sampler"] = sampler

    hdi = az.hdi(idata.posterior[["quality"]], hdi_prob=HDI_PROB)["quality"]
    quality = quality_draws.mean(axis=0)
    p_good = quality if p_good_fn is None else p_good_fn
    strength_low = strength_high = None
    if problem.learned:
        s_hdi = az.hdi(idata.posterior[["strength"]], hdi_prob=HDI_PROB)["strength"]
        strength_low, strength_high = s_hdi.sel(hdi="lower").values, s_hdi.sel(hdi="higher").values
    q_mean = float(q_draws.mean())
    if variant == "two-class":
        params = {"pi": float(pi_draws.mean()), "q": q_mean}
    else:
        params = {"m": float(_stack(post, "m").mean()), "tau": float(_stack(post, "tau").mean()), "q": q_mean}
    params["mean_quality"] = float(np.mean(quality[active])) if active.any() else float("nan")
    if "tie_nu" in post:  # posterior means
        params.update(tie_nu=float(_stack(post, "tie_nu").mean()), casual_tie_rate=float(_stack(post, "casual_tie_rate").mean()))

    diag_vars = global_vars + (["eta"] if variant == "continuous" else [])
    diagnostics, converged = _diagnose(idata, diag_vars, sampler)
    extra = {}
    if spec.casual is not None:  # posterior means
        extra["casual_effects"] = casual_effects(spec.casual, float(logit(q_draws).mean()), g_draws.mean(axis=0))
    if spec.style is not None:  # posterior means
        extra["style_effects"] = style_effects(spec.style, d_draws.mean(axis=0))
    return _estimates(
        extra_summary=extra,
        engine="nuts",
        variant=variant,
        quality=quality,
        p_good=p_good,
        n_labels_user=n_user.astype(np.int64),
        informative=informative,
        strengths=strengths,
        parameters=params,
        quality_low=hdi.sel(hdi="lower").values,
        quality_high=hdi.sel(hdi="higher").values,
        strength_low=strength_low,
        strength_high=strength_high,
        loglik=float(user_ll.sum(axis=1).mean()),
        converged=converged,
        diagnostics=diagnostics,
        user_loglik=user_ll.mean(axis=0),
        idata=idata,
    )


# --------------------------------------------------------------------------- taste classes (C > 1)


def relabel_by_share(shares: np.ndarray, strengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resolve label switching: number each draw's taste classes by share, largest first.

    Parameters
    ----------
    shares : array (S, C + 1)
        Type shares per draw, casual first (the casual type is never moved).
    strengths : array (S, C, K)
        Each class's strengths per draw.

    Returns
    -------
    shares, strengths
        The same draws with the classes of every draw permuted so that
        ``shares[:, 1:]`` is non-increasing (a stable sort: ties keep their order).
    """
    shares = np.asarray(shares, float)
    strengths = np.asarray(strengths, float)
    order = np.argsort(-shares[:, 1:], axis=1, kind="stable")
    rows = np.arange(shares.shape[0])[:, None]
    return np.concatenate([shares[:, :1], shares[:, 1:][rows, order]], axis=1), strengths[rows, order]


def _taste_informative(problem, strengths, tol):
    """Informative under any class (as :func:`bayes_annot.tastes.fit_tastes`; a tie on a pair that differs
    informs as a decided label does)."""
    informative = np.zeros(problem.n_users, dtype=bool)
    for s in strengths:
        informative |= _informative_users(problem, s, tol)
        if problem.n_ties:
            differs = np.abs(tie_logit_mu(problem, s)) > tol
            informative |= np.bincount(problem.tie_user, weights=differs, minlength=problem.n_users) > 0
    return informative


def _taste_posterior(problem, strengths, shares, q, informative, priors, tables=None, ties=None, offsets=None):
    """Per draw: the user-type posterior (S, U, C + 1), casual first, and per-user log-likelihood (S, U).

    Users without labels or without an informative label get no verdict: the
    draw's shares (or the prior mean shares when nobody is informative), as EM.
    ``ties``: each draw's ``(nu, t)`` (arrays (S,); ties in the likelihood). ``offsets`` (S, n_casual): each
    draw's style offsets (an attentive style term).
    """
    from scipy.special import logsumexp

    from .tastes import type_logliks

    if tables is None:
        logw = np.log(shares)[:, None, :] + type_logliks(problem, strengths, q, ties=ties)
    else:  # casual covariates: each draw's own casual table (and style offsets)
        nus, ts = (None, None) if ties is None else ties
        logw = np.log(shares)[:, None, :] + np.stack(
            [type_logliks(problem, s, qq, casual_log_table=tab, ties=None if ties is None else (nus[i], ts[i]),
                          offsets=None if offsets is None else offsets[i])
             for i, (s, qq, tab) in enumerate(zip(strengths, q, tables))])
    user_ll = logsumexp(logw, axis=2)
    post = np.exp(logw - user_ll[..., None])
    active = np.bincount(problem.user, minlength=problem.n_users) > 0
    classes = no_verdict_shares(shares[:, 1:], informative.any(), priors)
    level = np.concatenate([1.0 - classes.sum(axis=1, keepdims=True), classes], axis=1)[:, None, :]
    post = np.where((~active | ~informative)[None, :, None], level, post)
    return post, np.where(active[None, :], user_ll, 0.0)


def _fit_tastes(
    problem, spec, start, method, draws, tune, chains, sampler, progress, seed,
    user_labels, model_labels, target_accept, informative_tol, maxeval,
):
    """MAP or NUTS with ``spec.n_tastes > 1`` classes, started at ``start`` (see :func:`fit_pymc`)."""
    import arviz as az
    import xarray as xr

    from .inference_data import point_estimate_idata
    from .tastes import taste_columns

    nuts = method == "nuts"
    n_tastes, priors, q_fixed = spec.n_tastes, spec.priors, spec.q_fixed
    q0 = float(q_fixed) if q_fixed is not None else float(start.get("q", 0.5))
    casual_init = start.get("casual_g")
    if spec.casual is not None and np.shape(casual_init) != (spec.casual.n_effects,):
        casual_init = None
    tied = problem.n_ties > 0  # ties in the likelihood: Davidson's nu and the casual t (bayes_annot.ties)
    tie_init = (start["tie_nu"], start["casual_tie_rate"]) if tied and start.get("tie_nu") is not None else None
    style_init = start.get("style_delta")
    if spec.style is None or np.shape(style_init) != (spec.style.n_effects,):
        style_init = None
    model = build_model(
        problem, spec, user_labels, model_labels,
        strength_init=np.asarray(start["strengths"], float), share_init=np.asarray(start["shares"], float),
        q_init=q0, strength_prior="zerosum" if nuts else "normal", casual_init=casual_init, tie_init=tie_init,
        style_init=style_init,
    )
    delta = None
    ties = None
    if nuts:
        idata = _sample(model, draws, tune, chains, sampler, progress, seed, target_accept)
        post = idata.posterior
        n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
        shares, strengths = _stack(post, "shares"), _stack(post, "strength")
        q = np.full(len(shares), float(q_fixed)) if q_fixed is not None else _stack(post, "q")
        g = _stack(post, "casual_effect") if spec.casual is not None else None
        if spec.style is not None:
            delta = _stack(post, "style_effect").reshape(-1, spec.style.n_effects)
        if tied:
            ties = (_stack(post, "tie_nu"), _stack(post, "casual_tie_rate"))
    else:
        point, raw = _run_map(model, progress, seed, maxeval)
        shares, strengths = np.asarray(point["shares"], float)[None], np.asarray(point["strength"], float)[None]
        q = np.array([float(q_fixed) if q_fixed is not None else float(point["q"])])
        g = np.asarray(point["casual_effect"], float)[None] if spec.casual is not None else None
        if spec.style is not None:
            delta = np.asarray(point["style_effect"], float).reshape(1, spec.style.n_effects)
        if tied:
            ties = (np.array([float(point["tie_nu"])]), np.array([float(point["casual_tie_rate"])]))
    tables = None if g is None else casual_tables(logit(q), g, spec.casual.design())
    offsets = None if delta is None else delta @ spec.style.values(spec.casual).T  # (S, n_casual)
    shares, strengths = relabel_by_share(shares, strengths)
    class_strengths = strengths.mean(axis=0)  # (C, K)
    informative = _taste_informative(problem, class_strengths, informative_tol)
    n_user = np.bincount(problem.user, minlength=problem.n_users)
    active = n_user > 0

    n_draws_total = len(shares)
    quality_draws = np.empty((n_draws_total, problem.n_users))
    user_ll = np.empty((n_draws_total, problem.n_users))
    p_taste = np.zeros((problem.n_users, n_tastes))
    for lo in range(0, n_draws_total, _DRAW_CHUNK):
        sl = slice(lo, min(lo + _DRAW_CHUNK, n_draws_total))
        type_post, user_ll[sl] = _taste_posterior(problem, strengths[sl], shares[sl], q[sl], informative, priors,
                                                  None if tables is None else tables[sl],
                                                  None if ties is None else (ties[0][sl], ties[1][sl]),
                                                  None if offsets is None else offsets[sl])
        quality_draws[sl] = 1.0 - type_post[:, :, 0]
        p_taste += type_post[:, :, 1:].sum(axis=0)
    p_taste /= n_draws_total
    quality = quality_draws.mean(axis=0)
    columns = SimpleNamespace(
        n_tastes=n_tastes, taste=np.argmax(p_taste, axis=1) + 1, p_taste=p_taste, strengths=class_strengths
    )
    user_cols, model_cols = taste_columns(columns)
    params = {"pi": float((1.0 - shares[:, 0]).mean()), "q": float(q.mean())}
    for c in range(n_tastes):
        params[f"share_taste_{c + 1}"] = float(shares[:, c + 1].mean())
    params["mean_quality"] = float(np.mean(quality[active])) if active.any() else params["pi"]
    if ties is not None:
        params.update(tie_nu=float(ties[0].mean()), casual_tie_rate=float(ties[1].mean()))
    ordering = "classes numbered by share, largest first"
    extra_summary = {} if g is None else {
        "casual_effects": casual_effects(spec.casual, float(logit(q).mean()), g.mean(axis=0))}
    if delta is not None:  # posterior means (NUTS), the MAP point
        extra_summary["style_effects"] = style_effects(spec.style, delta.mean(axis=0))
    extra_summary |= {"tastes": {
        "n_tastes": int(n_tastes),
        "class_spread": [float(v) for v in np.std(class_strengths, axis=1)],
        "ordering": ordering + (" (every posterior draw relabelled so)" if nuts else ""),
    }}
    fields = dict(
        variant="two-class", quality=quality, p_good=quality, n_labels_user=n_user.astype(np.int64),
        informative=informative, strengths=class_strengths[0], parameters=params,
        extra_user_columns=user_cols, extra_model_columns=model_cols, extra_summary=extra_summary,
    )
    if not nuts:
        loglik = numpy_loglik(
            problem, "two-class",
            {"shares": shares[0], "q": q[0], "strength": strengths[0], "casual_effect": None if g is None else g[0],
             **({} if ties is None else {"tie_nu": ties[0][0], "casual_tie_rate": ties[1][0]}),
             **({} if delta is None else {"style_effect": delta[0]})},
            priors, q_fixed, casual=spec.casual, style=spec.style,
        )
        est = _estimates(
            engine="map", loglik=float(loglik), user_loglik=user_ll[0],
            n_iter=int(getattr(raw, "nit", 0)) if raw is not None else None,
            converged=bool(raw is not None and raw.success), **fields,
        )
        est.idata = point_estimate_idata(SimpleNamespace(user_labels=user_labels, model_labels=model_labels), est)
        return est

    # the relabelled draws replace the sampled ones, so idata, R-hat and the tables agree
    post["shares"] = (post["shares"].dims, _unstack(shares, n_chains, n_draws))
    post["strength"] = (post["strength"].dims, _unstack(strengths, n_chains, n_draws))
    post.attrs["taste_ordering"] = ordering + " in every draw (label switching resolved after sampling)"
    user_dims = ("chain", "draw", "user")
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "user": list(user_labels)}
    post["quality"] = xr.DataArray(_unstack(quality_draws, n_chains, n_draws), dims=user_dims, coords=coords)
    log_lik = xr.Dataset({"y_user": xr.DataArray(_unstack(user_ll, n_chains, n_draws), dims=user_dims, coords=coords)})
    if "log_likelihood" in idata.groups():
        del idata["log_likelihood"]
    idata.add_groups(log_likelihood=log_lik)
    post.attrs["engine"] = "nuts"
    post.attrs["sampler"] = sampler
    hdi = az.hdi(post[["quality"]], hdi_prob=HDI_PROB)["quality"]
    s_hdi = az.hdi(post[["strength"]], hdi_prob=HDI_PROB)["strength"].isel(taste=0)
    diagnostics, converged = _diagnose(idata, ["shares", "strength"] + (["q"] if q_fixed is None else [])
                                       + (["casual_effect"] if g is not None else [])
                                       + (["style_effect"] if delta is not None else [])
                                       + (["tie_nu", "casual_tie_rate"] if ties is not None else []), sampler)
    return _estimates(
        engine="nuts",
        quality_low=hdi.sel(hdi="lower").values,
        quality_high=hdi.sel(hdi="higher").values,
        strength_low=s_hdi.sel(hdi="lower").values,
        strength_high=s_hdi.sel(hdi="higher").values,
        loglik=float(user_ll.sum(axis=1).mean()),
        converged=converged,
        diagnostics=diagnostics,
        user_loglik=user_ll.mean(axis=0),
        idata=idata,
        **fields,
    )
