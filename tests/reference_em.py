"""Reference EM for the user behaviour model: the tests' independent oracle.

A plain textbook EM, written to be read, not to be fast: every step is a pass over
the labels, with dense arrays and no blocks, sufficient-statistic tables or
acceleration, and its own solvers for the M-steps (Newton for the strengths and for
the continuous population ``(m, tau)``). The continuous users are summed out node by
node on the grid the model defines (33 nodes on [-4, 4], Normal(0, 1) weights; built here
from those numbers). It shares with the package only the public per-label formulas of
:mod:`bayes_annot.likelihood` and reads the arrays of an ``UsableLabels``. It starts where
the package starts (strengths: a Bradley–Terry fit of every label; ``pi = q = 0.5``;
``m = logit(0.7)``, ``tau = 1.5``) and makes the same exact block-wise M-steps, so its
iterates, and so its trace, are the package's to rounding.
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


GRID_Z = np.linspace(-4.0, 4.0, 33)
GRID_LOG_W = -0.5 * GRID_Z**2 - np.log(np.exp(-0.5 * GRID_Z**2).sum())


def _population_newton(eta_a, eta_b, m, tau, priors, steps=200):
    """Maximise sum_g eta_a[g] log sigmoid(t_g) + eta_b[g] log sigmoid(-t_g) + log N(m) + log HalfNormal(tau),
    t_g = m + tau z_g, by Newton's method with step halving."""
    def objective(m, tau):
        t = m + tau * GRID_Z
        return (eta_a @ np.log(expit(t)) + eta_b @ np.log(expit(-t)) + log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma)
                - 0.5 * (tau / priors.eta_tau) ** 2)

    for _ in range(steps):
        p = expit(m + tau * GRID_Z)
        r = eta_a - (eta_a + eta_b) * p
        w = (eta_a + eta_b) * p * (1 - p)
        grad = np.array([r.sum() - (m - priors.eta_m_mu) / priors.eta_m_sigma**2, r @ GRID_Z - tau / priors.eta_tau**2])
        hess = np.array([[w.sum() + 1 / priors.eta_m_sigma**2, w @ GRID_Z],
                         [w @ GRID_Z, w @ GRID_Z**2 + 1 / priors.eta_tau**2]])
        step, length, before = np.linalg.solve(hess, grad), 1.0, objective(m, tau)
        while length > 1e-12 and not (tau + length * step[1] > 0 and objective(m + length * step[0], tau + length * step[1]) >= before):
            length /= 2
        if length <= 1e-12:
            break
        m, tau = m + length * step[0], tau + length * step[1]
        if np.abs(length * step).max() < 1e-14:
            break
    return float(m), float(tau)


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
            theta_g = m + tau * GRID_Z
            joint = np.stack([np.bincount(u, continuous_label_loglik(att, cas, t), n_users) for t in theta_g], 1)
            joint += GRID_LOG_W
            top = joint.max(axis=1, keepdims=True)
            user_ll = (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]
            post = np.exp(joint - user_ll[:, None])  # each user's posterior over the grid
            value = user_ll[active].sum() + log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma)
            value += np.log(2.0 / np.pi) / 2 - np.log(priors.eta_tau) - 0.5 * (tau / priors.eta_tau) ** 2
        trace.append(float(value) + prior_terms(s, q))
        if _converged(trace, tol) or iteration == max_iter:
            break
        # E-step: the posterior weight of the attentive behaviour of each label
        if variant == "two-class":
            z = two_class_posterior(att_sum, cas_sum, pi)
            weight = z[u]
            pi = (z[active].sum() + priors.pi_alpha - 1.0) / (active.sum() + priors.pi_alpha + priors.pi_beta - 2.0)
        else:
            resp = np.stack([continuous_label_responsibility(att, cas, t) for t in theta_g], 1)  # (labels, G)
            attentive = post[u] * resp
            weight = attentive.sum(axis=1)
            m, tau = _population_newton(attentive.sum(axis=0), (post[u] - attentive).sum(axis=0), m, tau, priors)
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
        # the loop stopped right after the E-step at the final parameters: post is theirs
        m_level, tau_level = (m, tau) if informative.any() else (priors.eta_m_mu, priors.eta_tau)
        level = np.exp(GRID_LOG_W) @ expit(m_level + tau_level * GRID_Z)
        quality = np.where(informative, post @ expit(theta_g), level)
        extra = dict(m=float(m), tau=float(tau))
    return ReferenceFit(
        variant=variant, quality=quality, informative=informative, strengths=s, q=float(q),
        loglik=trace[-1], loglik_trace=trace, n_iter=iteration, **extra,
    )
