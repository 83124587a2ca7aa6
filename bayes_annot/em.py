r"""EM engine for the user behaviour model (vectorised numpy, log space).

The engine maximises the *penalised* observed log-likelihood (log-likelihood
plus the log priors of :class:`~bayes_annot.likelihood.Priors`), i.e. it finds
the MAP of the global parameters, with the discrete latents summed out. Each
iteration is one E-step (responsibilities: per user for ``two-class``, per
label for ``continuous``) and one M-step:

* ``pi`` and ``q``: closed form (Beta-prior MAP);
* strengths ``s``: weighted Bradley–Terry with a ridge (the Normal prior),
  solved to convergence by Newton's method with backtracking on the
  ``K x K`` table of weighted win counts (so its cost does not grow with rows);
* ``theta_u = logit(eta_u)`` (continuous): a vectorised one-dimensional Newton
  per user, then the population mean ``m`` in closed form.

Every M-step maximises its block exactly, so the penalised log-likelihood never
decreases (a tested property); ``loglik_trace`` records it per iteration.
Per-user sums use ``np.bincount``; the per-row work per iteration is a few
gathers and bincounts, which keeps 10^7 rows within seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit, log_expit, logit
from scipy.stats import norm

from .likelihood import (
    Priors,
    log_beta_pdf,
    log_normal_pdf,
    two_class_posterior,
    two_class_user_loglik,
)

__all__ = ["EMProblem", "EMResult", "fit_em", "fit_bradley_terry", "pair_weights", "has_converged", "param_tolerance",
           "bradley_terry_objective"]


@dataclass
class EMProblem:
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
    """

    user: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    choice_a: np.ndarray
    n_users: int
    n_models: int
    known_logit_mu: np.ndarray | None = None

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
    p_eta_above_half: np.ndarray | None
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


# --------------------------------------------------------------------------- Bradley–Terry


def pair_weights(cell: np.ndarray, weights: np.ndarray | None, n_models: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted counts ``W1[a, b]`` (model_a chosen) and ``W0[a, b]`` (model_b chosen)."""
    table = np.bincount(cell, weights=weights, minlength=2 * n_models * n_models).reshape(n_models, n_models, 2)
    return table[:, :, 1], table[:, :, 0]


def bradley_terry_objective(s, w1, w0, sigma):
    """The ridge Bradley–Terry objective :func:`fit_bradley_terry` maximises (weighted counts ``w1``, ``w0``)."""
    d = s[:, None] - s[None, :]
    return float((w1 * log_expit(d)).sum() + (w0 * log_expit(-d)).sum() - 0.5 * (s @ s) / sigma**2)


def fit_bradley_terry(
    w1: np.ndarray,
    w0: np.ndarray,
    sigma: float,
    start: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> np.ndarray:
    r"""Weighted Bradley–Terry strengths with a Normal(0, sigma) ridge (Newton).

    Maximises :math:`\sum_{a,b} W^1_{ab}\log\sigma(s_a - s_b) + W^0_{ab}\log\sigma(s_b - s_a)
    - \lVert s\rVert^2 / (2\sigma^2)`, a strictly concave function, by Newton's
    method with backtracking; the analytic gradient is checked against finite
    differences in the tests.
    """
    k = w1.shape[0]
    s = np.zeros(k) if start is None else np.array(start, dtype=float)
    value = bradley_terry_objective(s, w1, w0, sigma)
    for _ in range(max_iter):
        d = s[:, None] - s[None, :]
        p = expit(d)
        g_pair = w1 * (1.0 - p) - w0 * p
        grad = g_pair.sum(axis=1) - g_pair.sum(axis=0) - s / sigma**2
        c = (w1 + w0) * p * (1.0 - p)
        c = c + c.T
        neg_hess = np.diag(c.sum(axis=1)) - c + np.eye(k) / sigma**2
        step = np.linalg.solve(neg_hess, grad)
        t = 1.0
        while True:
            candidate = s + t * step
            new_value = bradley_terry_objective(candidate, w1, w0, sigma)
            if new_value >= value - 1e-12 * abs(value) or t < 1e-8:
                break
            t *= 0.5
        s, improvement, value = candidate, new_value - value, new_value
        if np.max(np.abs(t * step)) < tol or abs(improvement) < 1e-14 * (1.0 + abs(value)):
            break
    return s


def bradley_terry_gradient(s, w1, w0, sigma):
    """Analytic gradient of the ridge Bradley–Terry objective (exposed for tests)."""
    p = expit(s[:, None] - s[None, :])
    g_pair = w1 * (1.0 - p) - w0 * p
    return g_pair.sum(axis=1) - g_pair.sum(axis=0) - s / sigma**2


# --------------------------------------------------------------------------- shared pieces


def user_cell_counts(problem: EMProblem, cell: np.ndarray):
    """Sparse ``n_users x (K * K * 2)`` matrix of label counts per (user, model_a, model_b, choice)."""
    from scipy.sparse import csr_matrix

    k = problem.n_models
    counts = csr_matrix(
        (np.ones(problem.n_labels), (problem.user, cell)), shape=(problem.n_users, 2 * k * k)
    )
    counts.sum_duplicates()
    return counts


def _attentive_table(s: np.ndarray) -> np.ndarray:
    """log P_att for every (model_a, model_b, choice) cell, flattened."""
    d = s[:, None] - s[None, :]
    return np.stack([log_expit(-d), log_expit(d)], axis=-1).ravel()


def _attentive_rows(problem: EMProblem, cell: np.ndarray | None, strengths: np.ndarray | None) -> np.ndarray:
    if problem.learned:
        return _attentive_table(strengths)[cell]
    sign = 2.0 * problem.choice_a - 1.0
    return log_expit(sign * problem.known_logit_mu)


def _attentive_prob_rows(problem: EMProblem, cell: np.ndarray | None, strengths: np.ndarray | None) -> np.ndarray:
    """P_att of each label (table lookup for learned strengths)."""
    if problem.learned:
        return np.exp(_attentive_table(strengths))[cell]
    sign = 2.0 * problem.choice_a - 1.0
    return expit(sign * problem.known_logit_mu)


def _row_logit_mu(problem: EMProblem, strengths: np.ndarray | None) -> np.ndarray:
    if problem.learned:
        return strengths[problem.model_a] - strengths[problem.model_b]
    return problem.known_logit_mu


def _informative_users(problem: EMProblem, strengths, tol: float) -> np.ndarray:
    """Users with at least one label whose attentive probability is away from 0.5.

    DESIGN §2: a user who only saw pairs with ``mu_r ~ 0.5`` (same model, or
    equally strong models) carries no information about their quality. This is
    deliberately conservative: with a position-biased casual behaviour such a
    user is weakly identifiable through ``q`` alone, which we do not trust.
    """
    differs = np.abs(_row_logit_mu(problem, strengths)) > tol
    return np.bincount(problem.user, weights=differs, minlength=problem.n_users) > 0


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
      (``sigmoid(theta_u)``, continuous), strengths, ``pi`` / taste shares, ``q``.

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


def _initial_strengths(problem: EMProblem, cell, priors: Priors):
    if not problem.learned:
        return None
    w1, w0 = pair_weights(cell, None, problem.n_models)
    return fit_bradley_terry(w1, w0, priors.strength_sigma)


# --------------------------------------------------------------------------- two-class


def _two_class_objective(att_sum, cas_sum, active, pi, q, strengths, priors, q_free):
    value = float(two_class_user_loglik(att_sum[active], cas_sum[active], pi).sum())
    value += float(log_beta_pdf(pi, priors.pi_alpha, priors.pi_beta))
    if q_free:
        value += float(log_beta_pdf(q, priors.q_alpha, priors.q_beta))
    if strengths is not None:
        value += float(log_normal_pdf(strengths, 0.0, priors.strength_sigma).sum())
    return value


def _fit_two_class(problem, priors, q_fixed, tol, max_iter, callback, start=None):
    cell = problem.cell() if problem.learned else None
    n_user = np.bincount(problem.user, minlength=problem.n_users).astype(float)
    n_user_a = np.bincount(problem.user, weights=problem.choice_a, minlength=problem.n_users)
    active = n_user > 0
    n_active = int(active.sum())
    start = start or {}
    if problem.learned and start.get("strengths") is not None:
        strengths = np.asarray(start["strengths"], dtype=float).copy()
    else:
        strengths = _initial_strengths(problem, cell, priors)
    pi = float(start.get("pi") or 0.5)
    q = float(start.get("q") or 0.5) if q_fixed is None else float(q_fixed)
    if problem.learned:
        # Sufficient statistics: counts of each (user, model_a, model_b, choice) cell as a sparse
        # users x cells matrix, so each iteration is two sparse mat-vecs instead of passes over rows.
        counts = user_cell_counts(problem, cell)
        counts_t = counts.T.tocsr()
    else:
        att_rows = _attentive_rows(problem, cell, strengths)
    trace: list[float] = []
    converged = False
    iteration = 0
    step = None  # largest change of pi, q and the strengths in the last M-step
    while True:
        if problem.learned:
            att_sum = counts @ _attentive_table(strengths)
        else:
            att_sum = np.bincount(problem.user, weights=att_rows, minlength=problem.n_users)
        cas_sum = n_user_a * np.log(q) + (n_user - n_user_a) * np.log1p(-q)
        value = _two_class_objective(att_sum, cas_sum, active, pi, q, strengths, priors, q_fixed is None)
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if step is not None and has_converged(trace, tol, step):
            converged = True
            break
        if iteration >= max_iter:
            break
        iteration += 1
        previous = (pi, q, strengths)
        # E-step: per-user posterior of being attentive
        p_attentive = two_class_posterior(att_sum, cas_sum, pi)
        # M-step
        pi = (p_attentive[active].sum() + priors.pi_alpha - 1.0) / (n_active + priors.pi_alpha + priors.pi_beta - 2.0)
        if q_fixed is None:
            casual = 1.0 - p_attentive
            q = _update_q(float(casual @ n_user_a), float(casual @ n_user), priors)
        if problem.learned:
            k = problem.n_models
            table = (counts_t @ p_attentive).reshape(k, k, 2)
            strengths = fit_bradley_terry(table[:, :, 1], table[:, :, 0], priors.strength_sigma, start=strengths)
        step = max(max_change(old, new) for old, new in zip(previous, (pi, q, strengths)))
    quality = two_class_posterior(att_sum, cas_sum, pi)
    quality[~active] = pi
    user_ll = np.where(active, two_class_user_loglik(att_sum, cas_sum, pi), 0.0)
    return dict(
        pi=float(pi), q=float(q), strengths=strengths, quality=quality, p_eta_above_half=None,
        theta=None, m=None, tau=None, n_labels_user=n_user.astype(np.int64), loglik=trace[-1],
        loglik_trace=trace, n_iter=iteration, converged=converged, user_loglik=user_ll,
    )


# --------------------------------------------------------------------------- continuous


def _update_theta(attentive_sum, n_user, m, tau, theta, tol=1e-12, max_iter=100):
    """Per-user MAP of theta = logit(eta) given label responsibilities (vectorised Newton)."""
    theta = theta.copy()
    inv_tau2 = 1.0 / tau**2
    for _ in range(max_iter):
        p = expit(theta)
        grad = attentive_sum - n_user * p - (theta - m) * inv_tau2
        curvature = n_user * p * (1.0 - p) + inv_tau2
        step = np.clip(grad / curvature, -4.0, 4.0)
        theta += step
        if np.max(np.abs(step), initial=0.0) < tol:
            break
    return theta


def _continuous_rows(att_prob, cas_prob, theta, user):
    """Per-label log-likelihood and attentive responsibility in one pass.

    Same quantity as :func:`~bayes_annot.likelihood.continuous_label_loglik`
    (a test checks equality), computed in probability space: per-label
    probabilities are bounded away from 0 (strength differences are finite,
    known ``p_a`` is clipped), so ``log(eta P_att + (1 - eta) P_cas)`` is exact
    to rounding and needs one ``log`` per label instead of three.
    """
    eta = expit(theta)[user]
    attentive = eta * att_prob
    mixture = attentive + (1.0 - eta) * cas_prob
    return np.log(mixture), attentive / mixture


def _continuous_objective(label_loglik, theta, m, q, strengths, priors, tau, q_free):
    value = float(label_loglik.sum())
    value += float(log_normal_pdf(theta, m, tau).sum())
    value += float(log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma))
    if q_free:
        value += float(log_beta_pdf(q, priors.q_alpha, priors.q_beta))
    if strengths is not None:
        value += float(log_normal_pdf(strengths, 0.0, priors.strength_sigma).sum())
    return value


def _fit_continuous(problem, priors, q_fixed, tol, max_iter, callback, start=None):
    cell = problem.cell() if problem.learned else None
    n_user = np.bincount(problem.user, minlength=problem.n_users).astype(float)
    choice = problem.choice_a.astype(float)
    start = start or {}
    if problem.learned and start.get("strengths") is not None:
        strengths = np.asarray(start["strengths"], dtype=float).copy()
    else:
        strengths = _initial_strengths(problem, cell, priors)
    tau = priors.eta_tau
    m = float(start["m"]) if start.get("m") is not None else float(logit(0.7))
    theta = np.full(problem.n_users, m)
    if start.get("theta") is not None:
        theta = np.where(np.isnan(start["theta"]), m, start["theta"]).astype(float)
    q = float(start.get("q") or 0.5) if q_fixed is None else float(q_fixed)
    att_prob = _attentive_prob_rows(problem, cell, strengths)
    trace: list[float] = []
    converged = False
    iteration = 0
    step = None  # largest change of a user's quality, sigmoid(m), q and the strengths in the last M-step
    while True:
        cas_prob = np.where(problem.choice_a == 1, q, 1.0 - q)
        label_loglik, resp = _continuous_rows(att_prob, cas_prob, theta, problem.user)
        value = _continuous_objective(label_loglik, theta, m, q, strengths, priors, tau, q_fixed is None)
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if step is not None and has_converged(trace, tol, step):
            converged = True
            break
        if iteration >= max_iter:
            break
        iteration += 1
        previous = (expit(theta), expit(m), q, strengths)
        # E-step: per-label posterior of attentive behaviour (resp, computed above)
        # M-step
        attentive_sum = np.bincount(problem.user, weights=resp, minlength=problem.n_users)
        theta = _update_theta(attentive_sum, n_user, m, tau, theta)
        m = (theta.sum() / tau**2 + priors.eta_m_mu / priors.eta_m_sigma**2) / (
            problem.n_users / tau**2 + 1.0 / priors.eta_m_sigma**2
        )
        if q_fixed is None:
            casual = 1.0 - resp
            q = _update_q(float(casual @ choice), float(casual.sum()), priors)
        if problem.learned:
            w1, w0 = pair_weights(cell, resp, problem.n_models)
            strengths = fit_bradley_terry(w1, w0, priors.strength_sigma, start=strengths)
            att_prob = _attentive_prob_rows(problem, cell, strengths)
        step = max(max_change(old, new) for old, new in zip(previous, (expit(theta), expit(m), q, strengths)))
    # Laplace approximation of each user's posterior of theta (other parameters at their MAP):
    # d^2/dtheta^2 log p(y_r) = w_r (1 - w_r) - sigma(theta)(1 - sigma(theta)).
    eta = expit(theta)
    curvature_rows = np.bincount(problem.user, weights=resp * (1.0 - resp), minlength=problem.n_users)
    precision = n_user * eta * (1.0 - eta) - curvature_rows + 1.0 / tau**2
    precision = np.maximum(precision, 1e-6)
    p_above = norm.cdf(theta * np.sqrt(precision))
    user_ll = np.bincount(problem.user, weights=label_loglik, minlength=problem.n_users)
    return dict(
        pi=None, q=float(q), strengths=strengths, quality=eta, p_eta_above_half=p_above,
        theta=theta, m=float(m), tau=float(tau), n_labels_user=n_user.astype(np.int64), loglik=trace[-1],
        loglik_trace=trace, n_iter=iteration, converged=converged, user_loglik=user_ll,
    )


# --------------------------------------------------------------------------- entry point


def fit_em(
    problem: EMProblem,
    variant: str = "two-class",
    priors: Priors | None = None,
    q_fixed: float | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = 0.2,
    callback=None,
    start: dict | None = None,
) -> EMResult:
    """Fit the behaviour model by EM.

    Parameters
    ----------
    problem : EMProblem
        The labels in the likelihood.
    variant : {"two-class", "continuous"}
    priors : Priors, optional
    q_fixed : float, optional
        Fix the casual position bias (e.g. 0.5 for a fair coin); estimated when ``None``.
    tol : float
        Stop when the penalised log-likelihood changes by less than
        ``tol * (1 + |loglik|)`` between iterations and no parameter by more than
        ``100 * tol`` (:func:`has_converged`).
    max_iter : int
    informative_tol : float
        A user is *uninformative* when, on every one of their labels, the
        attentive log-odds of choosing ``model_a`` are within this of 0
        (0.2: ``mu`` within about 0.05 of 0.5; e.g. only pairs of equally
        strong models). Their quality is set to the population level (``pi``,
        or ``sigmoid(m)`` for continuous; the prior's when nobody is
        informative): no verdict.
    callback : callable(iteration, loglik), optional
        Called once per iteration (progress reporting).
    start : dict, optional
        Warm start: any of ``pi``, ``q``, ``strengths`` (n_models,), ``theta``
        (n_users,; NaN for new users) and ``m`` from a previous fit. EM then
        converges to the same optimum in fewer iterations when the data changed little.

    Returns
    -------
    EMResult

    Examples
    --------
    >>> import numpy as np
    >>> from bayes_annot.em import EMProblem, fit_em
    >>> rng = np.random.default_rng(0)
    >>> n = 2000
    >>> problem = EMProblem(user=rng.integers(0, 100, n).astype(np.int32),
    ...     model_a=np.zeros(n, np.int32), model_b=np.ones(n, np.int32),
    ...     choice_a=rng.integers(0, 2, n).astype(np.int8), n_users=100, n_models=2)
    >>> result = fit_em(problem)
    >>> bool(np.all(np.diff(result.loglik_trace) >= -1e-8))
    True
    """
    if variant not in ("two-class", "continuous"):
        raise ValueError(f"unknown model variant '{variant}', expected 'two-class' or 'continuous'")
    priors = priors or Priors()
    if q_fixed is not None and not 0.0 < q_fixed < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q_fixed}")
    started = time.perf_counter()
    fitter = _fit_two_class if variant == "two-class" else _fit_continuous
    out = fitter(problem, priors, q_fixed, tol, max_iter, callback, start)
    informative = _informative_users(problem, out["strengths"], informative_tol)
    # No verdict on users whose labels cannot tell the behaviours apart: population-level
    # quality, or the prior's when nobody is informative (the population estimate is then an artefact).
    if variant == "two-class":
        level = out["pi"] if informative.any() else priors.pi_alpha / (priors.pi_alpha + priors.pi_beta)
        out["quality"] = np.where(informative, out["quality"], level)
    else:
        m_level = out["m"] if informative.any() else priors.eta_m_mu
        out["quality"] = np.where(informative, out["quality"], expit(m_level))
        out["p_eta_above_half"] = np.where(informative, out["p_eta_above_half"], norm.cdf(m_level / out["tau"]))
    return EMResult(variant=variant, informative=informative, runtime_seconds=time.perf_counter() - started, **out)
