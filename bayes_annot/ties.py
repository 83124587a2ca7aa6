r"""Ties in the likelihood: Davidson's attentive ties and the casual tie rate (model layer, numpy).

An attentive user declares a tie more often when the two models are close: Davidson (1970). With
:math:`d = s_a - s_b` the attentive log-odds of the pair and :math:`\nu \ge 0`,

.. math::

    \log P_{att}(a) &= d/2 - \log(2\cosh(d/2) + \nu), \\
    \log P_{att}(b) &= -d/2 - \log(2\cosh(d/2) + \nu), \\
    \log P_{att}(\text{tie}) &= \log\nu - \log(2\cosh(d/2) + \nu).

(:math:`P(\text{tie}) = \nu\sqrt{p_a p_b} / (p_a + p_b + \nu\sqrt{p_a p_b})` with :math:`p = e^s`;
:math:`\nu = 0` is Bradley–Terry, :math:`\log P(a) = \log\sigma(d)`.) A tie is most likely on an even
pair, :math:`P(\text{tie} \mid d = 0) = \nu / (2 + \nu)`.

A casual click is a tie with a rate :math:`t` of its own, whatever the pair:
:math:`P_{cas}(\text{tie}) = t`, :math:`P_{cas}(a) = (1 - t)\,\sigma(\beta_0 + f(x))`,
:math:`P_{cas}(b) = (1 - t)(1 - \sigma(\beta_0 + f(x)))`. One :math:`t` for the casual class (not
one per user; docs/model.md, "Ties").

Priors: :math:`\nu \sim \mathrm{LogNormal}(\mu_\nu, \sigma_\nu)` and
:math:`t \sim \mathrm{Beta}(\alpha_t, \beta_t)` (:class:`~bayes_annot.likelihood.Priors`), densities on the
natural scale like every other prior of the EM objective.

EM's M-steps (ECM, each one increases the expected complete-data log posterior, so the EM objective
never decreases):

* strengths at fixed :math:`\nu`: Newton over the pairs' weighted counts :math:`(A, B, T)` (model ``a``
  chosen, ``b`` chosen, tie) with the per-pair gradient and curvature of :func:`davidson_pair_terms`
  (:func:`bayes_annot.pairs.fit_pair_newton`, the pair Newton Bradley–Terry's sparse solve shares);
* :math:`\nu` at fixed strengths: Newton on :math:`\lambda = \log\nu` (:func:`nu_step`; the objective is
  concave in :math:`\lambda`);
* :math:`t` in closed form (:func:`tie_rate_step`) from the casual-weighted tie and decided counts.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .likelihood import LOG_2PI, Priors, log_beta_pdf

__all__ = [
    "TIES_MODES", "davidson_logprobs", "davidson_tables", "davidson_pair_terms", "davidson_objective_pairs",
    "nu_objective", "nu_step", "tie_rate_step", "log_prior_ties", "tie_start", "log_normal_nu_pdf",
    "resolve_ties",
]

TIES_MODES = ("model", "ignore")
"""``model``: ties enter the likelihood (this module); ``ignore``: they are counted and left out (the paper's model)."""


def _log_norm(d, nu):
    """:math:`\\log(2\\cosh(d/2) + \\nu)`, stable for large ``|d|``: ``|d|/2 + log(1 + e^{-|d|} + nu e^{-|d|/2})``."""
    h = 0.5 * np.abs(np.asarray(d, dtype=float))
    return h + np.log1p(np.exp(-2.0 * h) + nu * np.exp(-h))


def davidson_logprobs(d, nu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log P(a), log P(b), log P(tie))`` of an attentive label at log-odds ``d`` (Davidson, ``nu >= 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import log_expit
    >>> a, b, t = davidson_logprobs(np.array([0.7, -2.0]), 0.0)
    >>> bool(np.allclose(a, log_expit([0.7, -2.0]))), bool(np.allclose(np.exp(a) + np.exp(b), 1.0))
    (True, True)
    >>> round(float(np.exp(davidson_logprobs(np.array([0.0]), 1.0)[2][0])), 6)  # an even pair: nu / (2 + nu)
    0.333333
    """
    d = np.asarray(d, dtype=float)
    z = _log_norm(d, nu)
    log_tie = (np.log(nu) if nu > 0 else -np.inf) - z
    return 0.5 * d - z, -0.5 * d - z, log_tie


def davidson_tables(s: np.ndarray, a: np.ndarray, b: np.ndarray, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """The attentive tables of a pair vocabulary: log P of every decided cell ``2 * pair + choice``
    (``model_b``, then ``model_a`` chosen; as :func:`bayes_annot.pairs.attentive_table_pairs`) and of a tie
    on every pair ``(P,)``."""
    pa, pb, pt = davidson_logprobs(s[a] - s[b], nu)
    return np.stack([pb, pa], axis=-1).ravel(), pt


def davidson_pair_terms(d, w1, w0, wt, nu: float):
    r"""Objective, gradient and curvature in ``d`` of each pair's weighted Davidson log-likelihood.

    Per pair :math:`\ell(d) = (A - B) d/2 - N \log h + T \log\nu`, :math:`h = 2\cosh(d/2) + \nu`,
    :math:`N = A + B + T`;
    :math:`\ell'(d) = (A - B)/2 - N \sinh(d/2) / h`,
    :math:`-\ell''(d) = N (1 + \nu\cosh(d/2)/2) / h^2 > 0` (concave).

    Returns ``(sum of ℓ, ℓ' (P,), -ℓ'' (P,))``; ``wt`` may be ``None`` (no ties: Bradley–Terry at ``nu``).
    """
    d = np.asarray(d, dtype=float)
    n = w1 + w0 + (0.0 if wt is None else wt)
    z = _log_norm(d, nu)
    value = float((w1 - w0) @ (0.5 * d) - n @ z)
    if wt is not None and nu > 0:
        value += float(np.sum(wt) * np.log(nu))
    # sinh(d/2) / h and (1 + nu cosh(d/2) / 2) / h^2, scaled by e^{-|d|/2} against overflow
    e = np.exp(-0.5 * np.abs(d))
    denom = 1.0 + e * e + nu * e  # h e^{-|d|/2}
    ratio = np.sign(d) * (1.0 - e * e) / (2.0 * denom)
    curv = (e * e + 0.5 * nu * e * 0.5 * (1.0 + e * e)) / denom**2
    return value, 0.5 * (w1 - w0) - n * ratio, n * curv


def davidson_objective_pairs(s, a, b, w1, w0, wt, nu: float, sigma: float) -> float:
    """The strengths' M-step objective at fixed ``nu``: the pairs' weighted Davidson log-likelihood plus the
    Normal(0, sigma) ridge of the strengths."""
    return davidson_pair_terms(s[a] - s[b], w1, w0, wt, nu)[0] - 0.5 * float(s @ s) / sigma**2


def log_normal_nu_pdf(nu: float, priors: Priors) -> float:
    """Log density of the LogNormal prior of ``nu`` (natural scale)."""
    lam = np.log(nu)
    zz = (lam - priors.tie_nu_mu) / priors.tie_nu_sigma
    return float(-lam - np.log(priors.tie_nu_sigma) - 0.5 * LOG_2PI - 0.5 * zz * zz)


def nu_objective(nu: float, d, n, total_ties: float, priors: Priors) -> float:
    r""":math:`T \log\nu - \sum_p N_p \log(2\cosh(d_p/2) + \nu) + \log p(\nu)`: the part of the M-step
    objective that depends on ``nu`` (``n`` the pairs' weighted label counts, ``total_ties`` their tie sum)."""
    return float(total_ties * np.log(nu) - n @ _log_norm(d, nu)) + log_normal_nu_pdf(nu, priors)


def nu_step(nu: float, d, n, total_ties: float, priors: Priors, tol: float = 1e-12, max_iter: int = 50) -> float:
    r"""M-step of ``nu`` at fixed strengths: Newton on :math:`\lambda = \log\nu` with backtracking.

    With :math:`r_p = \nu / h_p`, the objective :func:`nu_objective` has
    :math:`\partial_\lambda = T - \sum_p N_p r_p - 1 - (\lambda - \mu_\nu)/\sigma_\nu^2` and
    :math:`\partial^2_\lambda = -\sum_p N_p r_p (1 - r_p) - 1/\sigma_\nu^2 < 0` (concave in :math:`\lambda`),
    so the step never lowers it. ``d`` ``(P,)`` or ``(C, P)`` (taste classes share ``nu``) with ``n`` alike.
    """
    d = np.asarray(d, dtype=float).ravel()
    n = np.asarray(n, dtype=float).ravel()
    lam = float(np.log(nu))
    inv_s2 = 1.0 / priors.tie_nu_sigma**2
    value = nu_objective(nu, d, n, total_ties, priors)
    half = 0.5 * np.abs(d)
    log_base = half + np.log1p(np.exp(-2.0 * half))  # log(2 cosh(d/2))
    for _ in range(max_iter):
        r = 1.0 / (1.0 + np.exp(log_base - lam))  # nu / h
        grad = total_ties - n @ r - 1.0 - (lam - priors.tie_nu_mu) * inv_s2
        neg_hess = n @ (r * (1.0 - r)) + inv_s2
        step = grad / neg_hess
        length = 1.0
        while True:
            cand = lam + length * step
            new_value = nu_objective(float(np.exp(cand)), d, n, total_ties, priors)
            if new_value >= value - 1e-12 * abs(value) or length < 1e-8:
                break
            length *= 0.5
        if new_value < value:
            break
        lam, gain, value = cand, new_value - value, new_value
        if abs(length * step) < tol or gain < 1e-14 * (1.0 + abs(value)):
            break
    return float(np.exp(lam))


def tie_rate_step(casual_ties: float, casual_decided: float, priors: Priors) -> float:
    """M-step of the casual tie rate ``t``: the Beta posterior mode of the casual-weighted tie and decided counts."""
    return float((casual_ties + priors.tie_rate_alpha - 1.0)
                 / (casual_ties + casual_decided + priors.tie_rate_alpha + priors.tie_rate_beta - 2.0))


def log_prior_ties(nu: float, t: float, priors: Priors) -> float:
    """Log prior density of ``(nu, t)`` (LogNormal and Beta, natural scale): the ties' share of the EM penalty."""
    return log_normal_nu_pdf(nu, priors) + float(log_beta_pdf(t, priors.tie_rate_alpha, priors.tie_rate_beta))


def tie_start(n_ties: float, n_labels: float) -> tuple[float, float]:
    """Starting ``(nu, t)`` from the overall tie share ``f``: ``t = f`` and ``nu`` with ``nu / (2 + nu) = f``."""
    f = min(max((n_ties + 1.0) / (n_labels + 2.0), 1e-3), 0.9)
    return 2.0 * f / (1.0 - f), f


def resolve_ties(ties: str | None, n_ties: int) -> str:
    """The ties mode of a fit: ``ties`` if given (checked), else (``None`` or ``"auto"``) ``"model"`` when the log has ties
    (every engine models them: EM in memory, on Dask and in updates; MAP; NUTS of either variant; learned or known
    strengths, taste classes and an attentive style term alike), else ``"ignore"``; ``"model"`` on a log without ties is ``"ignore"`` (nothing to model).

    Raises
    ------
    InputError
        An unknown mode.
    """
    if ties == "auto":  # the default, as a fit's settings record it
        ties = None
    if ties is not None and ties not in TIES_MODES:
        raise InputError(f"unknown ties mode {ties!r}, expected one of {', '.join(TIES_MODES)}")
    if n_ties == 0:
        return "ignore"
    return ties or "model"
