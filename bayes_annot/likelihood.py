r"""The user behaviour model's log-probabilities (numpy): one source of truth.

Notation (docs/model.md). For label :math:`r` by user :math:`u(r)` on the pair
:math:`(a_r, b_r)` let :math:`y_r = 1` when ``model_a`` was chosen and
:math:`\ell_r = \operatorname{logit}\mu_r` the attentive log-odds of choosing
``model_a``: :math:`\ell_r = s_{a_r} - s_{b_r}` (learned Bradley–Terry
strengths) or :math:`\operatorname{logit} p_{a,r}` (known).

* attentive: :math:`\log P_{att}(y_r) = \log\sigma\big((2y_r - 1)\,\ell_r\big)`;
* casual: :math:`\log P_{cas}(y_r) = y_r \log q + (1 - y_r)\log(1 - q)`;
* ``two-class``: with :math:`A_u = \sum_{r \in u} \log P_{att}(y_r)` and
  :math:`C_u = \sum_{r \in u} \log P_{cas}(y_r)`,
  :math:`\log p(y_u) = \operatorname{logsumexp}(\log\pi + A_u, \log(1-\pi) + C_u)`
  and :math:`P(z_u = \text{attentive} \mid y_u) = \sigma(\operatorname{logit}\pi + A_u - C_u)`;
* ``continuous``: :math:`\eta_u = \sigma(\theta_u)`, :math:`\theta_u = m + \tau z_u`, and
  :math:`\log p(y_r \mid \theta_u) = \operatorname{logsumexp}(\log\eta_u + \log P_{att}(y_r), \log(1-\eta_u) + \log P_{cas}(y_r))`;
  every engine but NUTS sums :math:`z_u` out on the fixed grid :class:`EtaGrid` (a discretised
  :math:`\mathcal N(0, 1)`): :math:`\log p(y_u) = \operatorname{logsumexp}_g(\log w_g + \sum_{r \in u}
  \log p(y_r \mid m + \tau z_g))`, so ``m`` and ``tau`` are estimated from the marginal likelihood
  and each user's posterior over the grid gives quality :math:`E[\eta_u \mid y_u]` and
  :math:`P(\eta_u \ge 1/2 \mid y_u)` exactly (NUTS samples :math:`z_u \sim \mathcal N(0, 1)`).

Priors (the penalties of the EM objective and the PyMC model's priors):
:math:`\pi, q \sim \mathrm{Beta}(2, 2)`, :math:`s_k \sim \mathcal N(0, \sigma_s^2)`,
:math:`\theta_u \sim \mathcal N(m, \tau^2)`, :math:`m \sim \mathcal N(m_0, \sigma_m^2)`,
:math:`\tau \sim \mathrm{HalfNormal}(\sigma_\tau)`.

The PyMC back end (:mod:`bayes_annot.pymc_model`) writes the same formulas in
PyTensor; a test checks the two agree to 1e-8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .ufuncs import expit, gammaln, log_expit

__all__ = [
    "Priors",
    "attentive_logprob",
    "casual_logprob",
    "two_class_user_loglik",
    "two_class_posterior",
    "continuous_label_loglik",
    "continuous_label_responsibility",
    "log_beta_pdf",
    "log_normal_pdf",
    "log_type_shares",
    "log_prior",
    "EtaGrid",
    "ETA_GRID",
    "log_half_normal_pdf",
]

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class Priors:
    """Weakly informative priors shared by every engine.

    Attributes
    ----------
    pi_alpha, pi_beta : float
        Beta prior on the attentive share ``pi`` (two-class).
    q_alpha, q_beta : float
        Beta prior on the casual position bias ``q``.
    strength_sigma : float
        Normal(0, sigma) prior on each model's strength (log-odds units); it also
        fixes the location, so MAP strengths sum to zero within each connected
        component of the comparison graph.
    eta_tau : float
        Scale of the HalfNormal prior on ``tau``, the spread of ``logit(eta_u)``
        around ``m`` (continuous; every engine estimates ``tau``).
    eta_m_mu, eta_m_sigma : float
        Normal prior on the population mean ``m`` of ``logit(eta_u)``.
    casual_effect_sigma : float
        Normal(0, sigma) prior on each casual covariate effect ``g`` (log-odds units;
        :mod:`bayes_annot.casual`).
    tie_nu_mu, tie_nu_sigma : float
        LogNormal(mu, sigma) prior on Davidson's tie parameter ``nu`` of attentive users (ties modelled;
        :mod:`bayes_annot.ties`): median ``exp(mu)`` = 1, i.e. a third of even pairs tied, and wide.
    tie_rate_alpha, tie_rate_beta : float
        Beta prior on the casual tie rate ``t`` (ties modelled).
    style_effect_sigma : float
        Normal(0, sigma) prior on each attentive style effect ``delta`` (log-odds per unit of the style
        covariate, e.g. per unit of log length ratio; :mod:`bayes_annot.style`).
    """

    pi_alpha: float = 2.0
    pi_beta: float = 2.0
    q_alpha: float = 2.0
    q_beta: float = 2.0
    strength_sigma: float = 3.0
    eta_tau: float = 1.5
    eta_m_mu: float = 0.0
    eta_m_sigma: float = 2.0
    casual_effect_sigma: float = 2.0
    tie_nu_mu: float = 0.0
    tie_nu_sigma: float = 2.0
    tie_rate_alpha: float = 2.0
    tie_rate_beta: float = 2.0
    style_effect_sigma: float = 1.0


def attentive_logprob(choice_a, logit_mu):
    """Log-probability of each label under the attentive behaviour.

    Parameters
    ----------
    choice_a : array of {0, 1}
        1 when ``model_a`` was chosen.
    logit_mu : array of float
        Attentive log-odds of choosing ``model_a``.
    """
    sign = 2.0 * np.asarray(choice_a, dtype=float) - 1.0
    return log_expit(sign * np.asarray(logit_mu, dtype=float))


def casual_logprob(choice_a, q):
    """Log-probability of each label under the casual behaviour (position bias ``q``)."""
    choice_a = np.asarray(choice_a, dtype=float)
    return choice_a * np.log(q) + (1.0 - choice_a) * np.log1p(-q)


def two_class_user_loglik(att_sum, cas_sum, pi):
    """Marginal log-likelihood of each user's labels with the type summed out."""
    return np.logaddexp(np.log(pi) + att_sum, np.log1p(-pi) + cas_sum)


def two_class_posterior(att_sum, cas_sum, pi):
    """Posterior probability that each user is attentive (closed form)."""
    return expit(np.log(pi) - np.log1p(-pi) + att_sum - cas_sum)


def continuous_label_loglik(att_logp, cas_logp, eta_logit):
    """Log-likelihood of each label under the continuous variant (``eta_logit`` per label)."""
    return np.logaddexp(log_expit(eta_logit) + att_logp, log_expit(-eta_logit) + cas_logp)


def continuous_label_responsibility(att_logp, cas_logp, eta_logit):
    """Posterior probability that each label was given attentively."""
    return expit(eta_logit + att_logp - cas_logp)


def log_beta_pdf(x, alpha, beta):
    """Log density of Beta(alpha, beta) at ``x``."""
    return (
        (alpha - 1.0) * np.log(x)
        + (beta - 1.0) * np.log1p(-x)
        + gammaln(alpha + beta)
        - gammaln(alpha)
        - gammaln(beta)
    )


def log_normal_pdf(x, mu, sigma):
    """Log density of Normal(mu, sigma) at ``x`` (elementwise)."""
    z = (np.asarray(x, dtype=float) - mu) / sigma
    return -0.5 * z * z - np.log(sigma) - 0.5 * LOG_2PI


def log_type_shares(shares: np.ndarray) -> np.ndarray:
    """log of the type shares (casual, class 1..C) from the class shares, the casual one as ``log1p(-sum)``."""
    return np.concatenate([[np.log1p(-shares.sum())], np.log(shares)])


def log_prior(priors: Priors, q: float, strengths, q_free: bool, shares=None, m: float | None = None,
              tau: float | None = None) -> float:
    r"""Log prior density of the global parameters (natural scale, no Jacobian): the penalty of every
    engine's objective.

    ``shares`` (two-class with ``C`` taste classes, ``C >= 1``):
    :math:`\mathrm{Dirichlet}(\beta, \alpha, \dots, \alpha)` on (casual, class shares), for one
    class the two-class :math:`\mathrm{Beta}(\alpha, \beta)` on ``pi``; ``m`` (continuous):
    :math:`\mathcal N(m_0, \sigma_m^2)` (the users' :math:`\theta_u \sim \mathcal N(m, \tau^2)` are
    summed out), ``tau`` (continuous): :math:`\mathrm{HalfNormal}(\sigma_\tau)`; :math:`\mathrm{Beta}`
    on ``q`` when ``q_free``; :math:`\mathcal N(0, \sigma_s^2)` on every strength (``strengths`` ``None``: known attentive probabilities).
    """
    value = 0.0
    if shares is not None:
        shares = np.asarray(shares, dtype=float).reshape(-1)
        if shares.shape[0] == 1:
            value = float(log_beta_pdf(shares[0], priors.pi_alpha, priors.pi_beta))
        else:
            conc = np.concatenate([[priors.pi_beta], np.full(shares.shape[0], priors.pi_alpha)])
            value = float(gammaln(conc.sum()) - gammaln(conc).sum() + ((conc - 1.0) * log_type_shares(shares)).sum())
    if m is not None:
        value += float(log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma))
    if tau is not None:
        value += float(log_half_normal_pdf(tau, priors.eta_tau))
    if q_free:
        value += float(log_beta_pdf(q, priors.q_alpha, priors.q_beta))
    if strengths is not None:
        value += float(log_normal_pdf(strengths, 0.0, priors.strength_sigma).sum())
    return value


def log_half_normal_pdf(x, sigma):
    """Log density of HalfNormal(sigma) at ``x >= 0``."""
    return 0.5 * np.log(2.0 / np.pi) - np.log(sigma) - 0.5 * (np.asarray(x, dtype=float) / sigma) ** 2


@dataclass(frozen=True)
class EtaGrid:
    r"""The grid on which the continuous variant sums each user's :math:`z_u = (\theta_u - m) / \tau` out.

    ``n`` equally spaced nodes :math:`z_g` on :math:`[-h, h]` with weights :math:`w_g \propto
    \phi(z_g)` summing to one: a discretised :math:`\mathcal N(0, 1)`, the prior of :math:`z_u`.
    The default (33 nodes on [-4, 4], spacing 1/4) loses 6e-5 of the normal's mass in the tails.
    Each node stands for the interval of width ``spacing`` around it, which is how
    :meth:`above_half` gives :math:`P(\theta \ge 0)` as a smooth function of ``m`` and ``tau``.

    Examples
    --------
    >>> from bayes_annot.likelihood import ETA_GRID
    >>> round(float(np.exp(ETA_GRID.log_weights).sum()), 12), ETA_GRID.z.shape
    (1.0, (33,))
    """

    n: int = 33
    half_width: float = 4.0

    @property
    def z(self) -> np.ndarray:
        """The nodes :math:`z_g`."""
        return np.linspace(-self.half_width, self.half_width, self.n)

    @property
    def spacing(self) -> float:
        """Distance between neighbouring nodes."""
        return 2.0 * self.half_width / (self.n - 1)

    @property
    def log_weights(self) -> np.ndarray:
        r""":math:`\log w_g` (the weights sum to one)."""
        lw = -0.5 * self.z**2
        return lw - np.logaddexp.reduce(lw)

    def theta(self, m, tau) -> np.ndarray:
        r""":math:`\theta_g = m + \tau z_g` (``(G,)``, or ``(S, G)`` for arrays of draws)."""
        return np.asarray(m, dtype=float)[..., None] + np.asarray(tau, dtype=float)[..., None] * self.z

    def above_half(self, m, tau) -> np.ndarray:
        r"""Share of each node's interval where :math:`\eta \ge 1/2` (:math:`\theta \ge 0`), in [0, 1]."""
        tau = np.asarray(tau, dtype=float)[..., None]
        low = np.asarray(m, dtype=float)[..., None] + tau * (self.z - 0.5 * self.spacing)
        return np.clip(1.0 + low / (tau * self.spacing), 0.0, 1.0)

    def prior_levels(self, m, tau) -> tuple[np.ndarray, np.ndarray]:
        r"""Quality :math:`E[\eta]` and :math:`P(\eta \ge 1/2)` of a user whose labels say nothing: the prior's."""
        w = np.exp(self.log_weights)
        return expit(self.theta(m, tau)) @ w, self.above_half(m, tau) @ w


ETA_GRID = EtaGrid()
"""The grid every engine but NUTS sums the continuous variant's users out on."""
