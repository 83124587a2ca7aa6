r"""The pieces of the EM engine shared by every engine (vectorised numpy, log space).

EM itself runs in :mod:`bayes_annot.block_em` (:func:`~bayes_annot.block_em.run_em`;
``bayes_annot.fit`` runs it on one in-memory block, :mod:`bayes_annot.dask_em` on the
blocks of a Dask DataFrame). It maximises the *penalised* observed log-likelihood
(log-likelihood plus the log priors of :class:`~bayes_annot.likelihood.Priors`), i.e. it
finds the MAP of the global parameters, with the discrete latents summed out. This module
holds what the engines share:

* :class:`UsableLabels` (the labels in the likelihood) and :class:`EMResult`;
* the strengths' M-step: weighted Bradley–Terry with a ridge (the Normal prior),
  solved to convergence by Newton's method with backtracking on the ``K x K``
  table of weighted win counts (:func:`fit_bradley_terry`, :func:`pair_weights`: the
  dense form, for small ``K``; :func:`fit_bradley_terry_batch` for several taste classes
  at once; the engines call
  :func:`bayes_annot.pairs.fit_bradley_terry_pairs`, which uses it up to
  :data:`bayes_annot.pairs.DENSE_MAX_MODELS` models and a sparse solve over the
  compared pairs above);
* the closed-form ``q`` update, the population ``(m, tau)`` update of the
  continuous variant (:func:`population_step`);
* the stopping rule (:func:`has_converged`), the informative-user rule
  (:data:`INFORMATIVE_TOL`) and the no-verdict level of uninformative users
  (:func:`no_verdict_shares`, :func:`no_verdict_continuous`);
* the Newton ascent with backtracking every Bradley–Terry solver uses (:func:`newton_ascent`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from .ufuncs import expit, log_expit

from .likelihood import ETA_GRID, EtaGrid, Priors, attentive_logprob, casual_logprob

__all__ = ["UsableLabels", "EMResult", "INFORMATIVE_TOL", "fit_bradley_terry", "fit_bradley_terry_batch", "pair_weights",
           "has_converged", "param_tolerance", "bradley_terry_objective", "newton_ascent", "label_logprobs",
           "no_verdict_shares", "no_verdict_continuous", "row_logit_mu",
           "bradley_terry_derivatives", "population_step"]


@dataclass
class UsableLabels:
    """The labels that enter the likelihood, integer-coded.

    Attributes
    ----------
    user, model_a, model_b : int32 arrays (n,)
        Codes; ``user`` indexes ``n_users`` users, models index ``n_models``.
    choice_a : int8 array (n,)
        1 when ``model_a`` was chosen, else 0.
    n_users, n_models : int
    known_logit_mu : float array (n,) or None
        Attentive log-odds of choosing ``model_a`` when strengths are known;
        ``None`` means strengths are learned.
    casual_cell : int32 array (n,) or None
        Each label's casual cell (:meth:`bayes_annot.casual.CasualDesign.cells`) when casual clicks
        follow covariates; ``None``: no covariates.
    n_casual : int
        The design's number of casual cells (0 without covariates).
    tie_user, tie_model_a, tie_model_b : int arrays (n_ties,) or None
        The ties, when they enter the likelihood (:mod:`bayes_annot.ties`); ``None``: ties are ignored.
    tie_logit_mu : float array (n_ties,) or None
        Known strengths with ties in the likelihood: each tie's attentive log-odds ``d`` (Davidson's
        ``P(tie) = nu / (2 cosh(d/2) + nu)``), as ``known_logit_mu`` for the decided labels.
    tie_casual_cell : int32 array (n_ties,) or None
        Each tie's casual cell, when an attentive style term needs it (:mod:`bayes_annot.style`); else ``None``.
    """

    user: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    choice_a: np.ndarray
    n_users: int
    n_models: int
    known_logit_mu: np.ndarray | None = None
    casual_cell: np.ndarray | None = None
    n_casual: int = 0
    tie_user: np.ndarray | None = None
    tie_model_a: np.ndarray | None = None
    tie_model_b: np.ndarray | None = None
    tie_logit_mu: np.ndarray | None = None
    tie_casual_cell: np.ndarray | None = None

    @property
    def n_ties(self) -> int:
        """Ties in the likelihood (0 when ties are ignored)."""
        return 0 if self.tie_user is None else int(self.tie_user.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.user.shape[0])

    @property
    def learned(self) -> bool:
        return self.known_logit_mu is None

    def cell(self) -> np.ndarray:
        """Index of (model_a, model_b, choice) in a flattened ``K x K x 2`` table."""
        k = self.n_models
        return (self.model_a.astype(np.int64) * k + self.model_b) * 2 + self.choice_a


@dataclass
class EMResult:
    """What the EM engine estimated (arrays over all users / models)."""

    variant: str
    pi: float | None
    q: float
    strengths: np.ndarray | None
    quality: np.ndarray
    p_good: np.ndarray  # P(user is good | data): two-class P(attentive) (= quality), continuous P(eta_u >= 1/2)
    theta: np.ndarray | None
    m: float | None
    tau: float | None
    n_labels_user: np.ndarray
    informative: np.ndarray
    loglik: float
    loglik_trace: list[float]
    n_iter: int
    converged: bool
    runtime_seconds: float
    user_loglik: np.ndarray = field(repr=False, default=None)
    casual_g: np.ndarray | None = None  # casual covariate effects (bayes_annot.casual), when there are covariates
    nu: float | None = None  # Davidson's attentive tie parameter (bayes_annot.ties), when ties are modelled
    tie_rate: float | None = None  # the casual tie rate t, when ties are modelled
    style_delta: np.ndarray | None = None  # attentive style effects (bayes_annot.style), when there is a style term


# --------------------------------------------------------------------------- Bradley–Terry


def pair_weights(cell: np.ndarray, weights: np.ndarray | None, n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted counts ``W1[a, b]`` (model_a chosen) and ``W0[a, b]`` (model_b chosen)."""
    table = np.bincount(cell, weights=weights, minlength=2 * n_models * n_models).reshape(n_models, n_models, 2)
    return table[:, :, 1], table[:, :, 0]


def bradley_terry_objective(s, w1, w0, sigma):
    """The ridge Bradley–Terry objective :func:`fit_bradley_terry` maximises (weighted counts ``w1``, ``w0``)."""
    return float(_bt_objective_batch(s[None], w1[None], w0[None], sigma)[0])


def _bt_derivatives_batch(s, w1, w0, sigma):
    """Gradients ``(C, K)`` and negative Hessians ``(C, K, K)`` of ``C`` objectives at once."""
    p = expit(s[:, :, None] - s[:, None, :])
    g = w1 * (1.0 - p) - w0 * p
    grad = g.sum(2) - g.sum(1) - s / sigma**2
    c = (w1 + w0) * p * (1.0 - p)
    c = c + c.transpose(0, 2, 1)
    eye = np.eye(s.shape[1])
    return grad, c.sum(2)[:, :, None] * eye - c + eye / sigma**2


def bradley_terry_derivatives(s, w1, w0, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and negative Hessian of :func:`bradley_terry_objective` (the Newton step of :func:`fit_bradley_terry`).

    Parameters
    ----------
    s : numpy.ndarray
        Strengths ``(K,)``.
    w1, w0 : numpy.ndarray
        Weighted counts ``(K, K)``: ``model_a`` chosen, ``model_b`` chosen (see :func:`pair_weights`).
    sigma : float
        Scale of the Normal(0, sigma) ridge.

    Returns
    -------
    grad : numpy.ndarray
        ``(K,)``.
    neg_hess : numpy.ndarray
        ``(K, K)``, positive definite (the objective is strictly concave).
    """
    grad, neg_hess = _bt_derivatives_batch(s[None], w1[None], w0[None], sigma)
    return grad[0], neg_hess[0]


def _bt_objective_batch(s, w1, w0, sigma):
    d = s[:, :, None] - s[:, None, :]
    return (w1 * log_expit(d)).sum(axis=(1, 2)) + (w0 * log_expit(-d)).sum(axis=(1, 2)) - 0.5 * (s * s).sum(1) / sigma**2


def newton_ascent(objective, direction, start, tol: float = 1e-10, max_iter: int = 100):
    """Maximise a strictly concave ``objective`` by Newton steps with backtracking.

    ``direction(x)`` is the Newton step at ``x`` (the negative Hessian's solve of the gradient). A
    step is halved until the objective does not fall (by more than ``1e-12`` relative) or it is
    below ``1e-8`` of a full step; the ascent stops when the step taken is below ``tol`` (largest
    element) or the objective stopped improving (``1e-14`` relative), or after ``max_iter`` steps.
    :func:`fit_bradley_terry_batch` applies the same rule to several tables at once.

    Returns ``(x, objective(x))``.
    """
    x = np.array(start, dtype=float, copy=True)
    value = objective(x)
    for _ in range(max_iter):
        step = direction(x)
        t = 1.0
        while True:
            candidate = x + t * step
            new_value = objective(candidate)
            if new_value >= value - 1e-12 * abs(value) or t < 1e-8:
                break
            t *= 0.5
        x, improvement, value = candidate, new_value - value, new_value
        if np.max(np.abs(t * step), initial=0.0) < tol or abs(improvement) < 1e-14 * (1.0 + abs(value)):
            break
    return x, value


def fit_bradley_terry(w1, w0, sigma: float, start=None, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    r"""Weighted Bradley–Terry strengths with a Normal(0, sigma) ridge (Newton).

    Maximises :math:`\sum_{a,b} W^1_{ab}\log\sigma(s_a - s_b) + W^0_{ab}\log\sigma(s_b - s_a)
    - \lVert s\rVert^2 / (2\sigma^2)`, a strictly concave function, by Newton's
    method with backtracking (:func:`fit_bradley_terry_batch` of one table); the analytic
    gradient and Hessian are checked against finite differences in the tests.
    """
    start = np.zeros(w1.shape[0]) if start is None else np.asarray(start, dtype=float)
    return fit_bradley_terry_batch(w1[None], w0[None], sigma, start[None], tol=tol, max_iter=max_iter)[0]


def fit_bradley_terry_batch(w1, w0, sigma, start, tol=1e-10, max_iter=100) -> np.ndarray:
    """:func:`fit_bradley_terry` for ``C`` independent tables at once: ``w1``, ``w0`` of shape ``(C, K, K)``,
    ``start`` ``(C, K)``; returns ``(C, K)`` strengths.

    Batched Newton with per-table backtracking: every table's (strictly concave) ridge
    Bradley–Terry objective never decreases, so an EM step using it stays monotone.
    """
    s = np.array(start, dtype=float, copy=True)
    value = _bt_objective_batch(s, w1, w0, sigma)
    for _ in range(max_iter):
        grad, neg_hess = _bt_derivatives_batch(s, w1, w0, sigma)
        step = np.linalg.solve(neg_hess, grad[:, :, None])[:, :, 0]
        t = np.ones(s.shape[0])
        while True:
            candidate = s + t[:, None] * step
            new_value = _bt_objective_batch(candidate, w1, w0, sigma)
            bad = (new_value < value - 1e-12 * np.abs(value)) & (t >= 1e-8)
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
        improvement = new_value - value
        s, value = candidate, new_value
        if np.max(np.abs(t[:, None] * step)) < tol or np.all(np.abs(improvement) < 1e-14 * (1.0 + np.abs(value))):
            break
    return s


# --------------------------------------------------------------------------- shared pieces


def row_logit_mu(problem: UsableLabels, strengths: np.ndarray | None) -> np.ndarray:
    """Each label's attentive log-odds of choosing ``model_a``: ``s_a - s_b``, or the known ones."""
    if problem.learned:
        return strengths[problem.model_a] - strengths[problem.model_b]
    return problem.known_logit_mu


def tie_logit_mu(problem: UsableLabels, strengths: np.ndarray | None) -> np.ndarray:
    """Each tie's attentive log-odds (ties in the likelihood): ``s_a - s_b``, or the known ones."""
    if problem.learned:
        return strengths[problem.tie_model_a] - strengths[problem.tie_model_b]
    return problem.tie_logit_mu


def label_logprobs(problem: UsableLabels, strengths: np.ndarray | None, q: float,
                   casual_log_table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each label's attentive and casual log-probability (:func:`~bayes_annot.likelihood.attentive_logprob`,
    :func:`~bayes_annot.likelihood.casual_logprob`) at ``strengths`` (``None``: known log-odds) and ``q``;
    with casual covariates the casual one is the label's entry of ``casual_log_table``
    (:func:`bayes_annot.casual.casual_table`, entry ``2 * casual_cell + choice``)."""
    att = attentive_logprob(problem.choice_a, row_logit_mu(problem, strengths))
    if casual_log_table is not None:
        return att, np.asarray(casual_log_table)[2 * problem.casual_cell.astype(np.int64) + problem.choice_a]
    return att, casual_logprob(problem.choice_a, q)


INFORMATIVE_TOL = 0.2
"""Default of every engine's ``informative_tol``: a user is *uninformative* when, on every one of
their labels, the attentive log-odds of choosing ``model_a`` are within this of 0 (``mu`` within
about 0.05 of 0.5; e.g. only pairs of equally strong models). Their quality is set to the
population level (``pi``, or ``sigmoid(m)`` for continuous; the prior's when nobody is
informative): no verdict."""


def _informative_users(problem: UsableLabels, strengths, tol: float = INFORMATIVE_TOL) -> np.ndarray:
    """Users with at least one label whose attentive log-odds are more than ``tol`` away from 0.

    A user who only saw pairs with ``mu_r ~ 0.5`` (same model, or
    equally strong models) carries no information about their quality. This is
    deliberately conservative: with a position-biased casual behaviour such a
    user is weakly identifiable through ``q`` alone, which we do not trust (docs/model.md).
    """
    differs = np.abs(row_logit_mu(problem, strengths)) > tol
    return np.bincount(problem.user, weights=differs, minlength=problem.n_users) > 0


def no_verdict_shares(shares, any_informative: bool, priors: Priors) -> np.ndarray:
    """The class shares an uninformative user gets (two-class: ``C = 1``, the share ``pi``): the fitted
    ``shares`` (``(C,)``, or ``(S, C)`` draws), or the prior's mean shares when nobody is informative
    (:math:`\\alpha / (\\beta + C \\alpha)` each, the Dirichlet's). Their sum is the user's quality."""
    shares = np.asarray(shares, dtype=float)
    if any_informative:
        return shares
    conc = np.concatenate([[priors.pi_beta], np.full(shares.shape[-1], priors.pi_alpha)])
    return np.broadcast_to(conc[1:] / conc.sum(), shares.shape)


def no_verdict_continuous(m, tau, any_informative: bool, priors: Priors):
    """Quality and P(eta >= 1/2) of an uninformative user (continuous): the population's, :math:`E[\\eta]` and
    :math:`P(\\eta \\ge 1/2)` under :math:`\\theta \\sim N(m, \\tau^2)` on the grid (floats or draws), or at the
    prior's ``eta_m_mu`` and ``eta_tau`` when nobody is informative."""
    m = np.asarray(m, dtype=float)
    if not any_informative:
        m, tau = np.full_like(m, priors.eta_m_mu), np.full_like(m, priors.eta_tau)
    return ETA_GRID.prior_levels(m, tau)


PARAM_TOL_PER_TOL = 100.0
"""Default parameter tolerance as a multiple of ``tol`` (see :func:`has_converged`): 1e-7 at ``tol=1e-9``."""


PARAM_TOL_FLOOR = 1e-12
"""Smallest default parameter tolerance: changes below it are at the level of rounding in the E-step sums."""


def param_tolerance(tol: float, param_tol: float | None = None) -> float:
    """The parameter tolerance of :func:`has_converged`: ``param_tol`` if given, else
    ``max(PARAM_TOL_PER_TOL * tol, PARAM_TOL_FLOOR)`` (1e-7 at the default ``tol=1e-9``)."""
    return float(max(PARAM_TOL_PER_TOL * tol, PARAM_TOL_FLOOR) if param_tol is None else param_tol)


def has_converged(trace: list[float], tol: float, step: float | None = None, param_tol: float | None = None) -> bool:
    """The EM stopping rule shared by every engine: stop when BOTH

    * the penalised log-likelihood changed by at most ``tol * (1 + |loglik|)``
      in the last iteration, AND
    * the largest absolute parameter change of the last iteration, ``step``, is at most
      ``param_tol`` (default :func:`param_tolerance`: ``100 * tol``, at least 1e-12;
      1e-7 at the default ``tol=1e-9``). The engines measure ``step`` on the reported scale: user quality
      (continuous: ``m`` and ``tau``), strengths, ``pi`` / taste shares, ``q``.

    The objective alone is a weak rule: near the optimum its change is quadratic in
    the parameter change, so EM could stop while the parameters still moved by
    ~``sqrt(tol)``, and a warm-started update and a cold refit then disagreed by
    ~1e-5 in quality. ``step=None`` (an engine that does not report its parameter
    change) applies the objective rule only.
    """
    if not (len(trace) > 1 and abs(trace[-1] - trace[-2]) <= tol * (1.0 + abs(trace[-1]))):
        return False
    return step is None or step <= param_tolerance(tol, param_tol)


def max_change(old, new) -> float:
    """Largest absolute elementwise change between two parameter values (scalars, arrays or ``None``)."""
    if old is None or new is None:
        return 0.0
    diff = np.abs(np.asarray(new, dtype=float) - np.asarray(old, dtype=float))
    return float(diff.max(initial=0.0))


def _update_q(casual_weight_a: float, casual_weight: float, priors: Priors) -> float:
    return (casual_weight_a + priors.q_alpha - 1.0) / (casual_weight + priors.q_alpha + priors.q_beta - 2.0)


# --------------------------------------------------------------------------- continuous


def population_step(eta_a, eta_b, m: float, tau: float, priors: Priors, grid: EtaGrid = ETA_GRID,
                    max_iter: int = 100) -> tuple[float, float]:
    r"""M-step of the continuous variant's population ``(m, tau)``: Newton's method with backtracking.

    With :math:`\theta_g = m + \tau z_g` the grid's nodes (:class:`~bayes_annot.likelihood.EtaGrid`),
    ``eta_a[g]`` / ``eta_b[g]`` the expected numbers of attentive / casual labels at node ``g`` (the
    E-step's sums of user-node posteriors times label responsibilities), it maximises

    .. math::

        Q(m, \tau) = \sum_g a_g \log\sigma(\theta_g) + b_g \log\sigma(-\theta_g)
            + \log\mathcal N(m; m_0, \sigma_m^2) + \log\mathrm{HalfNormal}(\tau; \sigma_\tau),

    a concave two-parameter logistic regression; every accepted step increases :math:`Q`, and
    ``tau`` stays positive, so the EM objective never decreases.
    """
    z = grid.z
    inv_m2, inv_t2 = 1.0 / priors.eta_m_sigma**2, 1.0 / priors.eta_tau**2

    def objective(mm, tt):
        t = mm + tt * z
        return float(eta_a @ log_expit(t) + eta_b @ log_expit(-t)) - 0.5 * (mm - priors.eta_m_mu) ** 2 * inv_m2 \
            - 0.5 * tt * tt * inv_t2

    value = objective(m, tau)
    for _ in range(max_iter):
        p = expit(m + tau * z)
        r = eta_a * (1.0 - p) - eta_b * p
        grad = np.array([r.sum() - (m - priors.eta_m_mu) * inv_m2, r @ z - tau * inv_t2])
        w = (eta_a + eta_b) * p * (1.0 - p)
        hess = np.array([[w.sum() + inv_m2, w @ z], [w @ z, w @ (z * z) + inv_t2]])
        step = np.linalg.solve(hess, grad)
        length = 1.0
        while length > 1e-10:
            m_new, tau_new = m + length * step[0], tau + length * step[1]
            if tau_new > 0.0:
                new_value = objective(m_new, tau_new)
                if new_value >= value:
                    break
            length *= 0.5
        else:
            break
        gain = new_value - value
        m, tau, value = m_new, tau_new, new_value
        if gain <= 1e-13 * (1.0 + abs(value)) or np.max(np.abs(length * step)) < 1e-12:
            break
    return float(m), float(tau)
