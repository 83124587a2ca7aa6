"""Reference EM for the user behaviour model: the tests' independent oracle.

A plain textbook EM, written to be read, not to be fast: every step is a pass over
the labels, with dense arrays and no blocks, sufficient-statistic tables or
acceleration, and its own solvers for the M-steps (Newton for the strengths,
bisection for each user's ``theta``). It shares with the package only the public
formulas of :mod:`bayes_annot.likelihood` and reads the arrays of an
``UsableLabels``. It starts where the package starts (strengths: a Bradley–Terry
fit of every label; ``pi = q = 0.5``; ``m = theta_u = logit(0.7)``) and makes the
same exact block-wise M-steps, so its iterates, and so its trace, are the
package's to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from bayes_annot.likelihood import (
    Priors,
    attentive_logprob,
    casual_logprob,
    continuous_label_loglik,
    continuous_label_responsibility,
    log_beta_pdf,
    log_normal_pdf,
    two_class_posterior,
    two_class_user_loglik,
)

INFORMATIVE_TOL = 0.2  # docs/model.md: no verdict on a user whose labels all have |logit mu| <= 0.2


@dataclass
class ReferenceFit:
    variant: str
    quality: np.ndarray
    informative: np.ndarray
    strengths: np.ndarray | None
    q: float
    pi: float | None = None
    m: float | None = None
    tau: float | None = None
    theta: np.ndarray | None = None
    loglik: float = np.nan
    loglik_trace: list | None = None
    n_iter: int = 0


def bradley_terry(a, b, y, weight, n_models, sigma, start=None, tol=1e-13, max_iter=200):
    """Maximise sum_r weight_r log P_att(y_r | s) + log N(s; 0, sigma) by Newton with step halving."""
    s = np.zeros(n_models) if start is None else np.array(start, dtype=float)
    sign = 2.0 * y - 1.0

    def objective(s):
        return float(weight @ attentive_logprob(y, s[a] - s[b]) + log_normal_pdf(s, 0.0, sigma).sum())

    for _ in range(max_iter):
        p = expit(sign * (s[a] - s[b]))  # probability of the label given
        g = weight * sign * (1.0 - p)
        grad = np.bincount(a, g, n_models) - np.bincount(b, g, n_models) - s / sigma**2
        c = weight * p * (1.0 - p)
        hess = -np.eye(n_models) / sigma**2
        np.add.at(hess, (a, a), -c)
        np.add.at(hess, (b, b), -c)
        np.add.at(hess, (a, b), c)
        np.add.at(hess, (b, a), c)
        step = np.linalg.solve(hess, -grad)
        t, value = 1.0, objective(s)
        while objective(s + t * step) < value and t > 1e-12:
            t /= 2
        s = s + t * step
        if np.max(np.abs(t * step)) < tol:
            break
    return s


def _theta_map(attentive_sum, n_labels, m, tau):
    """Each user's MAP of theta given the label responsibilities: the root of a decreasing gradient, by bisection."""
    lo, hi = m - n_labels * tau**2 - 1.0, m + n_labels * tau**2 + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        up = attentive_sum - n_labels * expit(mid) - (mid - m) / tau**2 > 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return 0.5 * (lo + hi)


def _converged(trace, tol):
    return len(trace) > 1 and abs(trace[-1] - trace[-2]) <= tol * (1.0 + abs(trace[-1]))


def reference_em(problem, variant="two-class", priors=None, q_fixed=None, tol=1e-13, max_iter=5000):
    """Fit ``problem`` (an ``UsableLabels``) by plain EM; see the module docstring."""
    priors = priors or Priors()
    u, a, b = problem.user, problem.model_a, problem.model_b
    y = problem.choice_a.astype(float)
    n_users, k = problem.n_users, problem.n_models
    learned = problem.known_logit_mu is None
    n = np.bincount(u, minlength=n_users).astype(float)
    active = n > 0
    s = bradley_terry(a, b, y, np.ones_like(y), k, priors.strength_sigma) if learned else None
    q = 0.5 if q_fixed is None else q_fixed
    pi, m, tau = 0.5, float(logit(0.7)), priors.eta_tau
    theta = np.full(n_users, m)

    def logit_mu(s):
        return s[a] - s[b] if learned else problem.known_logit_mu

    def prior_terms(s, q):
        value = float(log_beta_pdf(q, priors.q_alpha, priors.q_beta)) if q_fixed is None else 0.0
        return value + (float(log_normal_pdf(s, 0.0, priors.strength_sigma).sum()) if learned else 0.0)

    trace = []
    for iteration in range(max_iter + 1):
        att, cas = attentive_logprob(y, logit_mu(s)), casual_logprob(y, q)
        if variant == "two-class":
            att_sum, cas_sum = np.bincount(u, att, n_users), np.bincount(u, cas, n_users)
            value = two_class_user_loglik(att_sum[active], cas_sum[active], pi).sum()
            value += log_beta_pdf(pi, priors.pi_alpha, priors.pi_beta)
        else:
            value = continuous_label_loglik(att, cas, theta[u]).sum() + log_normal_pdf(theta, m, tau).sum()
            value += log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma)
        trace.append(float(value) + prior_terms(s, q))
        if _converged(trace, tol) or iteration == max_iter:
            break
        # E-step: the posterior weight of the attentive behaviour of each label
        if variant == "two-class":
            z = two_class_posterior(att_sum, cas_sum, pi)
            weight = z[u]
            pi = (z[active].sum() + priors.pi_alpha - 1.0) / (active.sum() + priors.pi_alpha + priors.pi_beta - 2.0)
        else:
            weight = continuous_label_responsibility(att, cas, theta[u])
            theta = _theta_map(np.bincount(u, weight, n_users), n, m, tau)
            m = (theta.sum() / tau**2 + priors.eta_m_mu / priors.eta_m_sigma**2) / (
                n_users / tau**2 + 1.0 / priors.eta_m_sigma**2
            )
        # M-step of the shared parameters: q (Beta MAP) and the strengths (weighted Bradley–Terry)
        if q_fixed is None:
            casual = 1.0 - weight
            q = (casual @ y + priors.q_alpha - 1.0) / (casual.sum() + priors.q_alpha + priors.q_beta - 2.0)
        if learned:
            s = bradley_terry(a, b, y, weight, k, priors.strength_sigma, start=s)

    informative = np.bincount(u, np.abs(logit_mu(s)) > INFORMATIVE_TOL, n_users) > 0
    if variant == "two-class":
        quality = two_class_posterior(att_sum, cas_sum, pi)
        level = pi if informative.any() else priors.pi_alpha / (priors.pi_alpha + priors.pi_beta)
        quality = np.where(informative, quality, level)
        extra = dict(pi=float(pi))
    else:
        quality = np.where(informative, expit(theta), expit(m if informative.any() else priors.eta_m_mu))
        extra = dict(m=float(m), tau=float(tau), theta=theta)
    return ReferenceFit(
        variant=variant, quality=quality, informative=informative, strengths=s, q=float(q),
        loglik=trace[-1], loglik_trace=trace, n_iter=iteration, **extra,
    )
