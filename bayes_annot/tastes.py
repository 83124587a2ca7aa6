r"""Taste classes: taste is not noise (docs/tastes.md).

The ``two-class`` model has one ranking for every attentive user, so a user
who consistently follows *another* ranking looks "casual" and would be
filtered out. With ``C`` taste classes a user is

* casual, with probability :math:`\pi_0 = 1 - \sum_c \pi_c`: every label
  follows the position bias ``q``;
* attentive under class :math:`c` (probability :math:`\pi_c`): every label
  follows Bradley–Terry with the class's own strengths :math:`s^{(c)}`.

All labels of a user follow the user's type. With
:math:`A^{(c)}_u = \sum_{r\in u}\log\sigma\big((2y_r-1)(s^{(c)}_{a_r} - s^{(c)}_{b_r})\big)` and
:math:`C_u = \sum_{r\in u} y_r\log q + (1-y_r)\log(1-q)`,

.. math::

    \log p(y_u) = \operatorname{logsumexp}\big(\log\pi_0 + C_u,\;
                  \log\pi_1 + A^{(1)}_u, \dots, \log\pi_C + A^{(C)}_u\big).

**Priors** (the penalties of the EM objective): the type shares
:math:`(\pi_0, \pi_1, \dots, \pi_C) \sim \mathrm{Dirichlet}(\beta, \alpha, \dots, \alpha)`
with :math:`\alpha` = ``Priors.pi_alpha`` (2) for every taste class and
:math:`\beta` = ``Priors.pi_beta`` (2) for the casual type — for ``C = 1`` this
is exactly the ``Beta(pi_alpha, pi_beta)`` prior of the two-class model, and
for any ``C`` every share's MAP stays strictly inside (0, 1);
:math:`q \sim \mathrm{Beta}(2, 2)`; every class's strengths
:math:`s^{(c)}_k \sim \mathcal N(0, \sigma_s^2)`.

**EM.** E-step: responsibilities over the ``C + 1`` types per user (log
space). M-step: Dirichlet-MAP shares and Beta-MAP ``q`` in closed form; each
class's strengths by :func:`~bayes_annot.pairs.fit_bradley_terry_pairs` on the pair
table weighted by that class's responsibilities. Each block is maximised
exactly, so the penalised observed log-likelihood never decreases (tested).

**Starts.** ``C = 1`` uses the single deterministic start of the two-class EM
(plain Bradley–Terry fit, ``pi = q = 0.5``) and reproduces it to rounding. ``C >= 2`` runs ``n_starts`` seeded starts: start 0
is the *split* start (grow from the ``C = 1`` fit one class at a time: fit
``c - 1`` classes, then start class ``c`` from a Bradley–Terry fit to the
labels weighted by each user's casual posterior, i.e. the users the current
classes explain worst); the other starts cycle through a *perturbed* start
(class 1 the plain Bradley–Terry fit, other classes random rankings), a
*random partition* of the users (each class fitted to its users' labels) and
a *reweighted split* (the split start with random Exp(1) user weights).
The best penalised log-likelihood wins; ``starts_agreed`` counts the starts
within ``agree_tol`` of it.

**Label switching.** The likelihood is invariant to relabelling the taste
classes; after fitting, classes are ordered by share, largest first, so
class 1 is the majority taste. (The casual type never swaps with a class: it
has no ranking.) MAP and NUTS (:func:`bayes_annot.pymc_model.fit_pymc`) fit the
same model started at this EM fit; NUTS sorts every posterior draw's classes
by share the same way.

**Caveat.** With more classes than the data hold, an extra class may become
nearly *flat* (strengths near 0), i.e. a coin flip that competes with the
casual type; its users then get quality near 0.5. ``class_spread`` (the
standard deviation of each class's strengths) shows it; choose ``C`` with
:func:`select_tastes`, which would not pick such a class.

Known-strength problems (the paper's ``p_a`` / global ``mu``) stay one class:
:func:`fit_tastes` raises ``ValueError`` for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.special import expit, gammaln, log_expit

from .em import INFORMATIVE_TOL, EMProblem, has_converged, max_change, pair_weights
from .pairs import DENSE_MAX_MODELS, PairTable, attentive_table_pairs, fit_bradley_terry_pairs
from .likelihood import Priors, log_beta_pdf, log_normal_pdf
from .simulate import draw_labels_per_user

__all__ = [
    "TasteResult",
    "TasteSelection",
    "CasualGroupTest",
    "fit_tastes",
    "select_tastes",
    "casual_group_test",
    "simulate_tastes",
    "taste_columns",
    "type_logliks",
    "taste_loglik",
    "heldout_folds",
    "heldout_user_scores",
    "problem_from",
    "subproblem",
]


# --------------------------------------------------------------------------- result


@dataclass
class TasteResult:
    """What :func:`fit_tastes` estimated (arrays over all users / models).

    Attributes
    ----------
    n_tastes : int
        ``C``, the number of taste classes.
    quality : (U,) float
        ``P(not casual | data)`` per user (users with no labels, and
        uninformative users, get the prior level ``1 - casual_share``).
    p_taste : (U, C) float
        ``P(attentive under class c | data)`` — unconditional, so each row
        sums to ``quality``. ``p_taste / quality`` is the posterior over
        classes given that the user is attentive.
    taste : (U,) int
        Most probable class, **1-based** (``argmax(p_taste) + 1``), class 1
        being the largest.
    strengths : (C, K) float
        Bradley–Terry strengths of each class (rows ordered like ``shares``).
    shares : (C,) float
        Class shares :math:`\\pi_c`, descending.
    casual_share : float
        :math:`\\pi_0 = 1 - \\sum_c \\pi_c`.
    q : float
        Casual position bias.
    loglik : float
        Penalised observed log-likelihood at the optimum (EM objective).
    data_loglik : float
        Unpenalised marginal log-likelihood at the optimum (sum of ``user_loglik``).
    bic : float
        ``-2 data_loglik + n_params log(n_labels)``.
    loglik_trace : list of float
        Penalised log-likelihood per iteration of the winning start.
    starts_agreed, n_starts : int
        How many of the ``n_starts`` starts ended within ``agree_tol`` of the best.
    start_logliks : list of float
        Final penalised log-likelihood of every start (in start order).
    class_spread : (C,) float
        Standard deviation of each class's strengths (near 0: a flat class,
        i.e. a coin flip competing with the casual type).
    """

    n_tastes: int
    quality: np.ndarray
    p_taste: np.ndarray
    taste: np.ndarray
    strengths: np.ndarray
    shares: np.ndarray
    casual_share: float
    q: float
    loglik: float
    data_loglik: float
    n_params: int
    bic: float
    loglik_trace: list[float]
    n_iter: int
    converged: bool
    starts_agreed: int
    n_starts: int
    start_logliks: list[float]
    informative: np.ndarray
    n_labels_user: np.ndarray
    class_spread: np.ndarray
    runtime_seconds: float = 0.0
    user_loglik: np.ndarray = field(repr=False, default=None)

    @property
    def pi(self) -> float:
        """Attentive share ``1 - casual_share`` (the two-class model's ``pi``)."""
        return float(1.0 - self.casual_share)

    def as_start(self) -> dict:
        """This fit as a start for :func:`fit_tastes` (``init=[result.as_start()]``)."""
        return {"strengths": self.strengths.copy(), "shares": self.shares.copy(), "q": float(self.q)}

    def parameters(self) -> dict:
        """Global parameters as a flat dict (for ``summary.json``)."""
        out = {"pi": self.pi, "q": float(self.q)}
        for k, share in enumerate(self.shares, start=1):
            out[f"share_taste_{k}"] = float(share)
        active = self.n_labels_user > 0
        out["mean_quality"] = float(np.mean(self.quality[active])) if active.any() else self.pi
        return out


# --------------------------------------------------------------------------- core EM


def _log_dirichlet(log_shares: np.ndarray, conc: np.ndarray) -> float:
    return float(gammaln(conc.sum()) - gammaln(conc).sum() + ((conc - 1.0) * log_shares).sum())


def _lse_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp; for two columns it is numpy's ``logaddexp`` formula."""
    idx = np.argmax(x, axis=1)
    m = x[np.arange(x.shape[0]), idx]
    rest = np.exp(x - m[:, None])
    rest[np.arange(x.shape[0]), idx] = 0.0
    return m + np.log1p(rest.sum(axis=1))


class _Data:
    """Per-problem constants shared by every start and iteration."""

    def __init__(self, problem: EMProblem):
        if not problem.learned:
            raise ValueError(
                "taste classes need learned strengths: with known attentive probabilities (p_a / mu) "
                "the model stays one class"
            )
        self.problem = problem
        self.user = problem.user
        self.n_users = problem.n_users
        self.k = problem.n_models
        # the compared pairs (sparse): a label's cell is 2 * pair + choice
        self.pairs, index = PairTable.from_labels(problem.model_a, problem.model_b, self.k)
        self.cell = 2 * index + problem.choice_a
        self.n_user = np.bincount(problem.user, minlength=problem.n_users).astype(float)
        self.n_user_a = np.bincount(problem.user, weights=problem.choice_a, minlength=problem.n_users)
        self.active = self.n_user > 0
        self.n_active = int(self.active.sum())
        # users x (pair, choice) counts: per-user sums and weighted pair
        # tables become one sparse product for all classes at once
        n_cells = 2 * self.pairs.n_pairs
        self.counts = csr_matrix(
            (np.ones(problem.n_labels), (problem.user, self.cell)), shape=(problem.n_users, n_cells)
        )
        self.counts.sum_duplicates()
        self.counts_t = self.counts.T.tocsr()

    def type_logliks(self, strengths: np.ndarray, q: float) -> np.ndarray:
        """``(U, C + 1)``: column 0 the casual sum ``C_u``, column ``c`` the attentive sum ``A_u^(c)``."""
        tables = np.column_stack([attentive_table_pairs(s, self.pairs.a, self.pairs.b) for s in strengths])
        casual = self.n_user_a * np.log(q) + (self.n_user - self.n_user_a) * np.log1p(-q)
        return np.column_stack([casual, self.counts @ tables])

    def pair_tables(self, resp: np.ndarray) -> np.ndarray:
        """``(2 P, C)`` weighted counts per cell, user weights ``resp`` (U, C)."""
        return self.counts_t @ resp


def _bt_objective_batch(s, w1, w0, sigma):
    d = s[:, :, None] - s[:, None, :]
    return (w1 * log_expit(d)).sum(axis=(1, 2)) + (w0 * log_expit(-d)).sum(axis=(1, 2)) - 0.5 * (s * s).sum(1) / sigma**2


def _fit_bt_batch(w1, w0, sigma, start, tol=1e-10, max_iter=50):
    """:func:`~bayes_annot.em.fit_bradley_terry` for several classes at once, ``(C, K, K)`` tables.

    Newton with per-class backtracking: every class's (strictly concave) ridge
    Bradley–Terry objective never decreases, so the EM step stays monotone.
    """
    s = np.array(start, dtype=float, copy=True)
    n_classes, k = s.shape
    eye = np.eye(k)
    value = _bt_objective_batch(s, w1, w0, sigma)
    for _ in range(max_iter):
        p = expit(s[:, :, None] - s[:, None, :])
        g = w1 * (1.0 - p) - w0 * p
        grad = g.sum(2) - g.sum(1) - s / sigma**2
        c = (w1 + w0) * p * (1.0 - p)
        c = c + c.transpose(0, 2, 1)
        neg_hess = c.sum(2)[:, :, None] * eye - c + eye / sigma**2
        step = np.linalg.solve(neg_hess, grad[:, :, None])[:, :, 0]
        t = np.ones(n_classes)
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


def _log_shares(shares: np.ndarray) -> np.ndarray:
    """log of (casual, class 1..C) shares, the casual one as ``log1p(-sum)``."""
    return np.concatenate([[np.log1p(-shares.sum())], np.log(shares)])


def _objective(d: _Data, table, shares, q, strengths, priors, q_free):
    logw = _log_shares(shares)[None, :] + table
    user_ll = _lse_rows(logw)
    conc = np.concatenate([[priors.pi_beta], np.full(len(shares), priors.pi_alpha)])
    value = float(user_ll[d.active].sum())
    value += _log_dirichlet(_log_shares(shares), conc)
    if q_free:
        value += float(log_beta_pdf(q, priors.q_alpha, priors.q_beta))
    value += float(log_normal_pdf(strengths, 0.0, priors.strength_sigma).sum())
    return value, logw, user_ll


def _run_em(d: _Data, strengths, shares, q, priors, q_fixed, tol, max_iter, callback=None):
    """EM from one start. The two-class EM step by step when ``C = 1`` (so ``C = 1`` reproduces it)."""
    strengths = np.array(strengths, dtype=float, copy=True)
    shares = np.array(shares, dtype=float, copy=True)
    q = float(q) if q_fixed is None else float(q_fixed)
    n_classes = strengths.shape[0]
    conc_sum = priors.pi_beta + n_classes * priors.pi_alpha
    trace: list[float] = []
    converged = False
    iteration = 0
    step = None  # largest change of shares, q and strengths in the last M-step (see em.has_converged)
    while True:
        table = d.type_logliks(strengths, q)
        value, logw, user_ll = _objective(d, table, shares, q, strengths, priors, q_fixed is None)
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if step is not None and has_converged(trace, tol, step):
            converged = True
            break
        if iteration >= max_iter:
            break
        iteration += 1
        # E-step: posterior over the C + 1 types per user
        resp = np.exp(logw - user_ll[:, None])
        # M-step
        previous = (shares, q, strengths.copy())
        totals = resp[d.active].sum(axis=0)
        shares = (totals[1:] + priors.pi_alpha - 1.0) / (d.n_active + conc_sum - (n_classes + 1))
        if q_fixed is None:
            casual = resp[:, 0]
            q = (float(casual @ d.n_user_a) + priors.q_alpha - 1.0) / (
                float(casual @ d.n_user) + priors.q_alpha + priors.q_beta - 2.0
            )
        cells = d.pair_tables(resp[:, 1:]).T.reshape(n_classes, d.pairs.n_pairs, 2)
        if n_classes == 1:  # the EM engine's solver, so that C = 1 reproduces the two-class EM to rounding
            strengths[0] = fit_bradley_terry_pairs(d.pairs, cells[0, :, 1], cells[0, :, 0], priors.strength_sigma,
                                                   start=strengths[0])
        elif d.k <= DENSE_MAX_MODELS:  # all classes in one batched dense solve
            w = np.zeros((n_classes, d.k, d.k, 2))
            w[:, d.pairs.a, d.pairs.b, :] = cells
            strengths = _fit_bt_batch(w[..., 1], w[..., 0], priors.strength_sigma, strengths)
        else:  # many models: one sparse solve per class (no C x K x K table)
            strengths = np.stack([
                fit_bradley_terry_pairs(d.pairs, cells[c, :, 1], cells[c, :, 0], priors.strength_sigma, start=strengths[c])
                for c in range(n_classes)
            ])
        step = max(max_change(a, b) for a, b in zip(previous, (shares, q, strengths)))
    return dict(
        strengths=strengths, shares=shares, q=q, loglik=trace[-1], trace=trace, n_iter=iteration,
        converged=converged, table=table, logw=logw, user_ll=user_ll,
    )


def _plain_bt(d: _Data, priors: Priors, weights=None) -> np.ndarray:
    table = np.bincount(d.cell, weights=weights, minlength=2 * d.pairs.n_pairs)
    return fit_bradley_terry_pairs(d.pairs, table[1::2], table[0::2], priors.strength_sigma)


def _split_start(d: _Data, base: dict, priors: Priors):
    """Add one class to a fitted solution: BT on labels weighted by each user's casual posterior."""
    resp = np.exp(base["logw"] - base["user_ll"][:, None])
    w_user = resp[:, 0] * d.active
    new = _plain_bt(d, priors, w_user[d.user])
    casual = 1.0 - base["shares"].sum()
    shares = np.concatenate([base["shares"], [casual / 2.0]])
    return np.vstack([base["strengths"], new]), shares


def _reweighted_split_start(d: _Data, first: dict, n_tastes, priors, q_fixed, tol, max_iter, rng):
    """The split start with each user's casual weight multiplied by a random Exp(1) factor."""
    base = first
    for c in range(2, n_tastes + 1):
        resp = np.exp(base["logw"] - base["user_ll"][:, None])
        w_user = resp[:, 0] * d.active * rng.exponential(1.0, size=d.n_users)
        new = _plain_bt(d, priors, w_user[d.user])
        strengths = np.vstack([base["strengths"], new])
        shares = np.concatenate([base["shares"], [(1.0 - base["shares"].sum()) / 2.0]])
        if c == n_tastes:
            return strengths, shares, base["q"]
        base = _run_em(d, strengths, shares, base["q"], priors, q_fixed, tol, max_iter)


def _perturbed_start(d: _Data, s_bt, n_classes, rng):
    """Class 1 the plain Bradley–Terry fit; every other class a random ranking, N(0, scale^2)
    strengths with ``scale = max(1, 2 sd(s_BT))`` (a pooled fit is flattened when tastes disagree)."""
    scale = max(1.0, 2.0 * float(np.std(s_bt)))
    rows = [s_bt.copy()]
    for _ in range(n_classes - 1):
        rows.append(rng.normal(0.0, scale, size=d.k))
    shares = np.full(n_classes, 0.6 / n_classes)
    return np.vstack(rows), shares


def _partition_start(d: _Data, n_classes, priors, rng):
    """Random user partition into casual / classes; each class's BT fit on its users' labels."""
    group = rng.integers(0, n_classes + 1, size=d.n_users)
    rows = []
    for c in range(1, n_classes + 1):
        rows.append(_plain_bt(d, priors, (group == c).astype(float)[d.user]))
    counts = np.bincount(group[d.active], minlength=n_classes + 1)[1:].astype(float) + 1.0
    shares = 0.7 * counts / counts.sum()
    return np.vstack(rows), shares


def _order_and_package(d: _Data, run: dict, priors, q_fixed, informative_tol, extra) -> TasteResult:
    order = np.argsort(-run["shares"], kind="stable")
    shares = run["shares"][order]
    strengths = run["strengths"][order]
    logw = run["logw"][:, np.concatenate([[0], order + 1])]
    user_ll = run["user_ll"]
    post = np.exp(logw - user_ll[:, None])
    n_classes = len(shares)
    # quality = 1 - P(casual); for C = 1 computed exactly as em.two_class_posterior
    if n_classes == 1:
        quality = expit(np.log(shares[0]) - np.log1p(-shares[0]) + run["table"][:, 1] - run["table"][:, 0])
        p_taste = quality[:, None].copy()
    else:
        p_taste = post[:, 1:]
        quality = 1.0 - post[:, 0]
    attentive_share = float(shares.sum())
    # No verdict on users none of whose labels any class can tell from a coin (as every engine):
    # population-level quality, or the prior's when nobody is informative.
    informative = np.zeros(d.n_users, dtype=bool)
    for s in strengths:
        differs = np.abs(s[d.problem.model_a] - s[d.problem.model_b]) > informative_tol
        informative |= np.bincount(d.user, weights=differs, minlength=d.n_users) > 0
    if informative.any():
        level, level_shares = attentive_share, shares
    else:
        conc = np.concatenate([[priors.pi_beta], np.full(n_classes, priors.pi_alpha)])
        level_shares = conc[1:] / conc.sum()
        level = float(level_shares.sum())
    no_verdict = ~d.active | ~informative
    quality = np.where(no_verdict, level, quality)
    p_taste = np.where(no_verdict[:, None], level_shares[None, :], p_taste)
    taste = np.argmax(p_taste, axis=1) + 1
    data_ll = float(user_ll[d.active].sum())
    n_params = n_classes * (d.k - 1) + n_classes + (1 if q_fixed is None else 0)
    n_labels = int(d.n_user.sum())
    return TasteResult(
        n_tastes=n_classes,
        quality=quality,
        p_taste=p_taste,
        taste=taste.astype(np.int64),
        strengths=strengths,
        shares=shares,
        casual_share=float(1.0 - attentive_share),
        q=float(run["q"]),
        loglik=float(run["loglik"]),
        data_loglik=data_ll,
        n_params=int(n_params),
        bic=float(-2.0 * data_ll + n_params * np.log(max(n_labels, 1))),
        loglik_trace=run["trace"],
        n_iter=run["n_iter"],
        converged=run["converged"],
        informative=informative,
        n_labels_user=d.n_user.astype(np.int64),
        class_spread=np.std(strengths, axis=1),
        user_loglik=np.where(d.active, user_ll, 0.0),
        **extra,
    )


def _fit_chain(d, n_tastes, priors, q_fixed, n_starts, seed, tol, max_iter, init=None, callback=None):
    """Best run for ``n_tastes`` classes plus the start log-liks (recursive split starts)."""
    s_bt = _plain_bt(d, priors)
    base = _run_em(d, s_bt[None, :], np.array([0.5]), 0.5, priors, q_fixed, tol, max_iter,
                   callback if n_tastes == 1 else None)
    extra = []
    for start in init or []:
        strengths = np.asarray(start["strengths"], dtype=float).reshape(n_tastes, d.k)
        shares = np.asarray(start["shares"], dtype=float).reshape(n_tastes)
        extra.append(_run_em(d, strengths, shares, float(start.get("q", 0.5)), priors, q_fixed, tol, max_iter))
    if n_tastes == 1:
        runs = [base] + extra
        logliks = [r["loglik"] for r in runs]
        return runs[int(np.argmax(logliks))], logliks
    first = base
    # split start: grow one class at a time from the C = 1 solution
    for c in range(2, n_tastes + 1):
        s0, sh0 = _split_start(d, base, priors)
        base = _run_em(d, s0, sh0, base["q"], priors, q_fixed, tol, max_iter)
    runs = [base]
    rng = np.random.default_rng(seed)
    for i in range(1, n_starts):
        kind = ("perturbed", "partition", "reweighted")[(i - 1) % 3]
        q0 = 0.5
        if kind == "perturbed":
            s0, sh0 = _perturbed_start(d, s_bt, n_tastes, rng)
        elif kind == "partition":
            s0, sh0 = _partition_start(d, n_tastes, priors, rng)
        else:
            s0, sh0, q0 = _reweighted_split_start(d, first, n_tastes, priors, q_fixed, tol, max_iter, rng)
        runs.append(_run_em(d, s0, sh0, q0, priors, q_fixed, tol, max_iter))
    runs += extra
    logliks = [r["loglik"] for r in runs]
    best = runs[int(np.argmax(logliks))]
    return best, logliks


def fit_tastes(
    problem: EMProblem,
    n_tastes: int,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    n_starts: int = 5,
    seed: int = 0,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = INFORMATIVE_TOL,
    agree_tol: float = 1e-2,
    init: list[dict] | None = None,
    callback=None,
) -> TasteResult:
    """Fit the two-class model with ``n_tastes`` taste classes by EM (MAP).

    Parameters
    ----------
    problem : EMProblem
        Learned-strength problem (``problem.known_logit_mu is None``).
    n_tastes : int
        Number of taste classes ``C >= 1``; ``C = 1`` is the two-class model
        and reproduces the two-class EM of :func:`bayes_annot.fit`.
    priors : Priors, optional
        ``pi_alpha`` is each class's Dirichlet concentration, ``pi_beta`` the casual type's.
    q_fixed : float, optional
        Fix the casual position bias; estimated when ``None``.
    n_starts : int
        Seeded starts for ``C >= 2`` (``C = 1`` has one deterministic start).
    seed : int
    tol, max_iter :
        EM stops when the penalised log-likelihood changes by less than
        ``tol * (1 + |loglik|)`` and no share, ``q`` or strength changes by more
        than ``100 * tol`` (:func:`~bayes_annot.em.has_converged`).
    informative_tol : float
        As :data:`~bayes_annot.em.INFORMATIVE_TOL`; a user is informative when any
        class's strengths separate one of their labels from the casual behaviour.
    agree_tol : float
        Starts whose final penalised log-likelihood is within
        ``max(agree_tol, 10 tol (1 + |best|))`` of the best count as agreeing.
    init : list of dict, optional
        Extra starts (run after the others, counted in ``n_starts`` of the
        result): each a dict with ``strengths`` (C, K), ``shares`` (C,) and
        optionally ``q`` — e.g. :meth:`TasteResult.as_start` of a previous fit
        (warm start). With ``C = 1`` and no ``init`` the fit is exactly
        the two-class EM's.
    callback : callable(iteration, loglik), optional
        Progress of the ``C = 1`` run.

    Returns
    -------
    TasteResult
        Classes ordered by share, largest first.

    Raises
    ------
    ValueError
        Known-strength problems, ``n_tastes < 1``, ``q_fixed`` outside (0, 1).

    Examples
    --------
    >>> from bayes_annot.tastes import simulate_tastes, fit_tastes, problem_from
    >>> log = simulate_tastes(n_users=300, n_models=6, seed=1)
    >>> res = fit_tastes(problem_from(log), 2, n_starts=2)
    >>> res.p_taste.shape
    (300, 2)
    """
    if int(n_tastes) != n_tastes or n_tastes < 1:
        raise ValueError(f"n_tastes must be a positive integer, got {n_tastes}")
    if q_fixed is not None and not 0.0 < q_fixed < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q_fixed}")
    if n_starts < 1:
        raise ValueError("n_starts must be at least 1")
    priors = priors or Priors()
    t0 = time.perf_counter()
    d = _Data(problem)
    n_tastes = int(n_tastes)
    best, logliks = _fit_chain(d, n_tastes, priors, q_fixed, n_starts, seed, tol, max_iter, init, callback)
    top = max(logliks)
    # a start stopped by ``tol`` may sit a little short of its optimum
    threshold = max(agree_tol, 10.0 * tol * (1.0 + abs(top)))
    agreed = int(sum(abs(v - top) <= threshold for v in logliks))
    return _order_and_package(
        d, best, priors, q_fixed, informative_tol,
        dict(starts_agreed=agreed, n_starts=len(logliks), start_logliks=[float(v) for v in logliks],
             runtime_seconds=time.perf_counter() - t0),
    )


# --------------------------------------------------------------------------- the objective at given parameters


def type_logliks(problem: EMProblem, strengths, q) -> np.ndarray:
    """Per-user log-likelihood of each user type at given parameters.

    Parameters
    ----------
    problem : EMProblem
        Learned-strength problem.
    strengths : array (C, K) or (S, C, K)
        Each class's strengths; a leading axis evaluates ``S`` parameter draws.
    q : float or array (S,)
        Casual position bias (one per draw).

    Returns
    -------
    numpy.ndarray
        ``(U, C + 1)`` (or ``(S, U, C + 1)``): column 0 the casual sum
        :math:`C_u`, column ``c`` the attentive sum :math:`A^{(c)}_u` (module
        docstring); 0 for users without labels.
    """
    d = _Data(problem)
    strengths = np.asarray(strengths, dtype=float)
    if strengths.ndim == 2:
        return d.type_logliks(strengths, float(q))
    q = np.broadcast_to(np.asarray(q, dtype=float), strengths.shape[:1])
    return np.stack([d.type_logliks(s, float(qq)) for s, qq in zip(strengths, q)])


def taste_loglik(
    problem: EMProblem,
    strengths,
    shares,
    q: float,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    penalised: bool = True,
) -> float:
    """The EM objective of :func:`fit_tastes` at given parameters.

    Parameters
    ----------
    problem : EMProblem
    strengths : array (C, K)
    shares : array (C,)
        Class shares :math:`\\pi_1..\\pi_C` (the casual share is ``1 - sum``).
    q : float
        Casual position bias (``q_fixed`` when given).
    priors : Priors, optional
    q_fixed : float, optional
        When given, ``q`` is fixed and carries no prior term.
    penalised : bool
        Add the log prior densities (Dirichlet shares, Beta ``q`` when free,
        Normal strengths) on the natural scale, no Jacobian: the quantity
        :attr:`TasteResult.loglik` reports. ``False``: the marginal
        log-likelihood :math:`\\sum_u \\log p(y_u)` only.

    Returns
    -------
    float
    """
    priors = priors or Priors()
    d = _Data(problem)
    strengths = np.asarray(strengths, dtype=float).reshape(-1, d.k)
    shares = np.asarray(shares, dtype=float).reshape(strengths.shape[0])
    q = float(q_fixed) if q_fixed is not None else float(q)
    value, _, user_ll = _objective(d, d.type_logliks(strengths, q), shares, q, strengths, priors, q_fixed is None)
    return value if penalised else float(user_ll[d.active].sum())


# --------------------------------------------------------------------------- tables for FitResult


def taste_columns(result: TasteResult) -> tuple[dict, dict]:
    """Extra output columns: ``(user_columns, model_columns)``, dicts of name -> array.

    ``users.csv``: ``taste`` (1-based most probable class) and ``p_taste_<k>``
    for ``k = 1..C`` (unconditional ``P(class k | data)``; they sum to ``quality``).
    ``models.csv``: ``strength_taste_<k>`` for ``k = 1..C`` (class 1, the
    largest, is also the natural ``strength`` column).
    """
    users = {"taste": result.taste}
    for k in range(result.n_tastes):
        users[f"p_taste_{k + 1}"] = result.p_taste[:, k]
    models = {f"strength_taste_{k + 1}": result.strengths[k] for k in range(result.n_tastes)}
    return users, models


# --------------------------------------------------------------------------- input helpers


def problem_from(data) -> EMProblem:
    """An :class:`EMProblem` from a problem, ``PreparedData``, a frame or a file path (learned strengths)."""
    from .data import PreparedData, prepare, read_table
    from .fit import build_problem

    if isinstance(data, EMProblem):
        return data
    if isinstance(data, (str, Path)):
        data = read_table(data)
    if isinstance(data, pd.DataFrame):
        data = prepare(data)
    if isinstance(data, PreparedData):
        problem, _ = build_problem(data, use_p_a=False)
        return problem
    raise TypeError(f"expected an EMProblem, PreparedData, DataFrame or path, got {type(data).__name__}")


def subproblem(problem: EMProblem, mask: np.ndarray) -> EMProblem:
    """The labels ``mask`` selects, with the same user and model codes (learned strengths)."""
    return EMProblem(
        user=problem.user[mask], model_a=problem.model_a[mask], model_b=problem.model_b[mask],
        choice_a=problem.choice_a[mask], n_users=problem.n_users, n_models=problem.n_models,
        known_logit_mu=None,
    )


# --------------------------------------------------------------------------- choosing C


def heldout_folds(problem: EMProblem, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold of every label: each user's labels are shuffled (seeded) and dealt round-robin
    into ``n_folds`` folds from a random offset, so every user is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    n = problem.n_labels
    key = rng.random(n)
    order = np.lexsort((key, problem.user))
    sorted_user = problem.user[order]
    first = np.searchsorted(sorted_user, sorted_user, side="left")
    position = np.arange(n) - first
    offset = rng.integers(0, n_folds, size=problem.n_users)
    folds = np.empty(n, dtype=np.int64)
    folds[order] = (position + offset[sorted_user]) % n_folds
    return folds


def heldout_user_scores(train: EMProblem, test: EMProblem, res: TasteResult) -> np.ndarray:
    """Per-user log predictive of the ``test`` labels under a fit ``res`` of the ``train`` labels.

    The mixture over the user's types (casual, taste class 1..C) weighted by their
    posterior given their training labels (the fitted shares for a user without
    any): a user's type persists across their labels. ``train`` and ``test`` share
    the user and model codes (0 for users without test labels). The one held-out
    score of the taste model, used by :func:`select_tastes` and
    :func:`bayes_annot.evaluate.heldout_loglik` (``tastes=``).
    """
    d_train, d_test = _Data(train), _Data(test)
    log_shares = _log_shares(res.shares)
    lw = log_shares[None, :] + d_train.type_logliks(res.strengths, res.q)
    log_post = lw - _lse_rows(lw)[:, None]
    score = _lse_rows(log_post + d_test.type_logliks(res.strengths, res.q))
    return np.where(d_test.active, score, 0.0)


@dataclass
class TasteSelection:
    """What :func:`select_tastes` found.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per ``C``: ``n_tastes, heldout_loglik`` (sum over users of the
        cross-validated predictive log-likelihood), ``heldout_per_label``,
        ``heldout_se`` (standard error of the paired per-user difference to
        the best ``C``), ``loglik`` (penalised, full data), ``data_loglik``,
        ``n_params``, ``bic``, ``casual_share``, ``starts_agreed``, ``chosen``.
    chosen : int
        The selected ``C``.
    chosen_bic : int
        The ``C`` with the smallest BIC (reported, not used for the choice).
    fits : dict
        ``C -> TasteResult`` on the full data (reuse ``fits[chosen]``).
    message : str
        A plain-language explanation of the choice.
    """

    table: pd.DataFrame
    chosen: int
    chosen_bic: int
    fits: dict
    message: str
    n_folds: int


def select_tastes(
    data_or_problem,
    max_tastes: int = 4,
    n_folds: int = 5,
    n_starts: int = 3,
    seed: int = 0,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    fold_starts: int = 1,
) -> TasteSelection:
    """Choose the number of taste classes by cross-validated predictive log-likelihood.

    Each user's labels are dealt into ``n_folds`` folds (:func:`heldout_folds`).
    For every ``C = 1..max_tastes`` and fold, the model is fitted to the other
    folds and the held-out labels are scored per user with the user's
    posterior-weighted predictive: the mixture over the user's types (casual,
    class 1..C) given their training labels — a user's type persists across
    their labels. Scores are summed over folds (each label is held out once).

    **Rule (one standard error).** Let ``C*`` maximise the held-out
    log-likelihood. The choice is the smallest ``C`` whose held-out
    log-likelihood is within one standard error of ``C*``'s, the standard
    error being that of the sum of the paired per-user differences
    (``sqrt(U) * sd(d_u)``). BIC (``n`` = number of labels) is reported beside.

    Parameters
    ----------
    data_or_problem : EMProblem, PreparedData, DataFrame or path
    max_tastes : int
        Largest ``C`` tried (``1..max_tastes``).
    n_folds : int
    n_starts : int
        Starts of the full-data fits (``fits``).
    fold_starts : int
        Starts of each fold's fit from its training labels alone (the split
        start first); each fold fit also gets the full-data fit of the same
        ``C`` as one more start (a warm start: it only picks the basin, the
        fold's optimum is a function of its training labels), and keeps the
        best training penalised log-likelihood.
    seed, priors, q_fixed, tol, max_iter :
        ``tol`` is looser than :func:`fit_tastes`'s default for speed; the
        full-data fits in ``fits`` use it too.

    Returns
    -------
    TasteSelection
    """
    problem = problem_from(data_or_problem)
    if not problem.learned:
        raise ValueError("taste classes need learned strengths (known p_a / mu stays one class)")
    if max_tastes < 1:
        raise ValueError("max_tastes must be at least 1")
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    priors = priors or Priors()
    folds = heldout_folds(problem, n_folds, seed)
    per_user = {}
    fits = {}
    for c in range(1, max_tastes + 1):
        fits[c] = fit_tastes(problem, c, priors=priors, q_fixed=q_fixed, n_starts=n_starts,
                             seed=seed, tol=tol, max_iter=max_iter)
        score = np.zeros(problem.n_users)
        for f in range(n_folds):
            train, test = subproblem(problem, folds != f), subproblem(problem, folds == f)
            res = fit_tastes(train, c, priors=priors, q_fixed=q_fixed, n_starts=fold_starts,
                             seed=seed + 1 + f, tol=tol, max_iter=max_iter,
                             init=[fits[c].as_start()] if c > 1 else None)
            score += heldout_user_scores(train, test, res)
        per_user[c] = score
    n_labels = problem.n_labels
    active = np.bincount(problem.user, minlength=problem.n_users) > 0
    totals = {c: float(per_user[c].sum()) for c in per_user}
    best = max(totals, key=totals.get)
    se = {}
    for c in per_user:
        diff = (per_user[best] - per_user[c])[active]
        se[c] = float(np.sqrt(active.sum()) * diff.std(ddof=1)) if active.sum() > 1 else 0.0
    chosen = min(c for c in per_user if totals[c] >= totals[best] - se[c])
    rows = []
    for c in per_user:
        res = fits[c]
        rows.append(dict(
            n_tastes=c,
            heldout_loglik=totals[c],
            heldout_per_label=totals[c] / max(n_labels, 1),
            heldout_se=se[c],
            loglik=res.loglik,
            data_loglik=res.data_loglik,
            n_params=res.n_params,
            bic=res.bic,
            casual_share=res.casual_share,
            called_casual=float(np.mean(res.quality[active] < 0.5)) if active.any() else np.nan,
            starts_agreed=f"{res.starts_agreed}/{res.n_starts}",
            chosen=c == chosen,
        ))
    table = pd.DataFrame(rows)
    chosen_bic = int(table.loc[table.bic.idxmin(), "n_tastes"])
    gain = totals[chosen] - totals[1]
    boundary = (
        f" C = {max_tastes} is the largest C tried: more classes may fit better still (raise max_tastes, --max-tastes on the command line)."
        if chosen == max_tastes and max_tastes > 1 else ""
    )
    if chosen == 1:
        message = (
            f"C = 1 (one ranking): no model with more taste classes predicts held-out labels better by more "
            f"than one standard error ({n_folds}-fold cross-validation over each user's labels); BIC picks C = {chosen_bic}."
        )
    else:
        message = (
            f"C = {chosen} taste classes: held-out log-likelihood improves by {gain:.1f} over one ranking "
            f"({n_folds}-fold cross-validation over each user's labels; smallest C within one standard error "
            f"of the best, C = {best}); BIC picks C = {chosen_bic}. Users who follow a minority ranking are "
            "kept as attentive instead of being called casual." + boundary
        )
    return TasteSelection(table=table, chosen=int(chosen), chosen_bic=chosen_bic, fits=fits, message=message,
                          n_folds=n_folds)


# --------------------------------------------------------------------------- diagnostic


@dataclass
class CasualGroupTest:
    """Are the users flagged casual under one ranking coin-flippers or a taste group?

    Attributes
    ----------
    statistic : float
        Likelihood ratio ``2 (l_BT - l_casual)`` on the flagged users' labels:
        Bradley–Terry with a position-bias term versus the position bias alone.
    p_value : float
        Parametric bootstrap (see :func:`casual_group_test`).
    verdict : {"taste group", "noise", "too few"}
    message : str
    n_flagged, n_labels : int
    strengths : (K,) float
        The flagged group's own Bradley–Terry ranking.
    rank_correlation : float
        Spearman correlation of that ranking with the one-ranking model's strengths.
    null_statistics : (n_sim,) float
    """

    statistic: float
    p_value: float
    verdict: str
    message: str
    n_flagged: int
    n_labels: int
    strengths: np.ndarray
    rank_correlation: float
    null_statistics: np.ndarray = field(repr=False, default=None)


def _fit_bt_bias(w1, w0, sigma=10.0, tol=1e-10, max_iter=100):
    """Maximise sum W1 log s(d) + W0 log s(-d), d = s_a - s_b + beta, with a weak ridge (Newton)."""
    k = w1.shape[0]

    def objective(theta):
        s, beta = theta[:k], theta[k]
        d = s[:, None] - s[None, :] + beta
        return float((w1 * log_expit(d)).sum() + (w0 * log_expit(-d)).sum() - 0.5 * (s @ s) / sigma**2
                     - 0.5 * beta**2 / sigma**2)

    theta = np.zeros(k + 1)
    value = objective(theta)
    for _ in range(max_iter):
        s, beta = theta[:k], theta[k]
        p = expit(s[:, None] - s[None, :] + beta)
        g = w1 * (1.0 - p) - w0 * p
        h = (w1 + w0) * p * (1.0 - p)
        grad = np.concatenate([g.sum(1) - g.sum(0) - s / sigma**2, [g.sum() - beta / sigma**2]])
        hh = h + h.T
        neg = np.zeros((k + 1, k + 1))
        neg[:k, :k] = np.diag(hh.sum(1)) - hh + np.eye(k) / sigma**2
        cross = h.sum(1) - h.sum(0)
        neg[:k, k] = neg[k, :k] = cross
        neg[k, k] = h.sum() + 1.0 / sigma**2
        step = np.linalg.solve(neg, grad)
        t = 1.0
        while True:
            cand = theta + t * step
            new = objective(cand)
            if new >= value - 1e-12 * abs(value) or t < 1e-8:
                break
            t *= 0.5
        theta, improvement, value = cand, new - value, new
        if np.max(np.abs(t * step)) < tol or abs(improvement) < 1e-14 * (1.0 + abs(value)):
            break
    return theta, value


def _lr_statistic(problem: EMProblem, mask: np.ndarray, choice: np.ndarray):
    """LR of BT+position bias vs position bias alone on the labels in ``mask`` (exact likelihoods)."""
    k = problem.n_models
    cell = (problem.model_a[mask].astype(np.int64) * k + problem.model_b[mask]) * 2 + choice[mask]
    w1, w0 = pair_weights(cell, None, k)
    theta, _ = _fit_bt_bias(w1, w0)
    s, beta = theta[:k], theta[k]
    dd = s[:, None] - s[None, :] + beta
    l_alt = float((w1 * log_expit(dd)).sum() + (w0 * log_expit(-dd)).sum())
    n, n_a = float(mask.sum()), float(choice[mask].sum())
    q = n_a / n
    l_null = (n_a * np.log(q) if n_a > 0 else 0.0) + ((n - n_a) * np.log1p(-q) if n_a < n else 0.0)
    return max(2.0 * (l_alt - l_null), 0.0), s, q


def casual_group_test(
    problem: EMProblem,
    result_c1=None,
    threshold: float = 0.5,
    n_sim: int = 100,
    alpha: float = 0.01,
    seed: int = 0,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    min_labels: int = 20,
) -> CasualGroupTest:
    """Test whether the users a one-ranking fit calls casual are noise or a coherent taste group.

    The flagged users are those with ``quality < threshold`` under ``C = 1``.
    The statistic is the likelihood ratio, on their labels pooled, of a
    Bradley–Terry fit with a position-bias term against the casual model
    (position bias ``q`` alone): large when they agree with *each other* on a
    ranking. Under the null the flagged users flip (biased) coins; the null
    distribution is a **parametric bootstrap of the whole procedure**: their
    labels are redrawn as Bernoulli(``q̂``) on the same pairs (``q̂`` the
    flagged group's own click-left rate), the other users' labels are kept,
    the one-ranking model is refitted (warm start), users are re-flagged and
    the statistic recomputed. Refitting matters: users flagged because they
    disagreed with the majority ranking by chance are slightly anti-majority,
    which a naive coin-flip bootstrap would mistake for a ranking.

    Parameters
    ----------
    problem : EMProblem
    result_c1 : TasteResult (C = 1) or EMResult (two-class), optional
        Fitted here when ``None``.
    threshold : float
    n_sim : int
        Bootstrap replicates; ``p = (1 + #{T_sim >= T}) / (1 + n_sim)``.
    alpha : float
        Significance level of the verdict.
    seed : int
    min_labels : int
        Fewer flagged labels than this: verdict ``"too few"``.

    Returns
    -------
    CasualGroupTest
    """
    from scipy.stats import spearmanr

    if n_sim < 1.0 / alpha - 1.0:
        raise ValueError(f"n_sim = {n_sim} cannot reach p <= alpha = {alpha}: use n_sim >= {int(np.ceil(1 / alpha - 1))}")
    priors = priors or Priors()
    d = _Data(problem)
    if result_c1 is None:
        result_c1 = fit_tastes(problem, 1, priors=priors, q_fixed=q_fixed)
    strengths = np.asarray(result_c1.strengths, dtype=float).reshape(-1, problem.n_models)
    if strengths.shape[0] != 1:
        raise ValueError("casual_group_test needs a one-ranking (C = 1) fit")
    pi0 = float(getattr(result_c1, "pi", None) or 1.0 - result_c1.casual_share)
    quality = np.asarray(result_c1.quality)
    flagged_user = d.active & (quality < threshold)
    mask = flagged_user[problem.user]
    n_flag, n_lab = int(flagged_user.sum()), int(mask.sum())
    if n_lab < min_labels:
        msg = f"{n_flag} user(s) flagged casual with {n_lab} labels: too few to tell noise from taste."
        return CasualGroupTest(np.nan, np.nan, "too few", msg, n_flag, n_lab, np.zeros(problem.n_models), np.nan,
                               np.array([]))
    choice = problem.choice_a.astype(np.int64)
    stat, s_flag, q_hat = _lr_statistic(problem, mask, choice)
    rho = float(spearmanr(s_flag, strengths[0]).statistic) if np.std(s_flag) > 0 else np.nan
    rng = np.random.default_rng(seed)
    null = np.empty(n_sim)
    for i in range(n_sim):
        sim_choice = choice.copy()
        sim_choice[mask] = rng.random(n_lab) < q_hat
        sim = EMProblem(user=problem.user, model_a=problem.model_a, model_b=problem.model_b,
                        choice_a=sim_choice.astype(np.int8), n_users=problem.n_users, n_models=problem.n_models)
        ds = _Data(sim)
        run = _run_em(ds, strengths, np.array([pi0]), result_c1.q, priors, q_fixed, 1e-8, 500)
        post = expit(np.log(run["shares"][0]) - np.log1p(-run["shares"][0]) + run["table"][:, 1] - run["table"][:, 0])
        sim_mask = (ds.active & (post < threshold))[problem.user]
        null[i] = _lr_statistic(sim, sim_mask, sim_choice)[0] if sim_mask.sum() >= min_labels else 0.0
    p_value = float((1 + np.sum(null >= stat)) / (1 + n_sim))
    if p_value <= alpha:
        verdict = "taste group"
        message = (
            f"The {n_flag} users flagged casual under one ranking ({n_lab} labels) agree with each other on an "
            f"alternative ranking (likelihood ratio {stat:.1f}, bootstrap p = {p_value:.3g}; rank correlation with "
            f"the majority ranking {rho:+.2f}). They look like a taste group rather than noise: filtering them would "
            "remove a minority preference. Consider taste classes (tastes=2 or 'auto')."
        )
    else:
        verdict = "noise"
        message = (
            f"The {n_flag} users flagged casual under one ranking ({n_lab} labels) show no common ranking beyond "
            f"what coin flips produce (likelihood ratio {stat:.1f}, bootstrap p = {p_value:.3g}): consistent with noise."
        )
    return CasualGroupTest(stat, p_value, verdict, message, n_flag, n_lab, s_flag, rho, null)


# --------------------------------------------------------------------------- simulator


def simulate_tastes(
    n_users: int = 1000,
    n_models: int = 8,
    casual_share: float = 0.3,
    minority_share: float = 0.18,
    strengths=None,
    minority_strengths=None,
    q: float = 0.5,
    labels_per_user=(5, 40),
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a log where a minority of attentive users follows another ranking.

    Each user is casual (share ``casual_share``), attentive with the majority
    ranking, or attentive with the minority ranking (share ``minority_share``
    of *all* users, taken from the attentive ones). Pairs are two different
    models uniformly at random, as in :func:`~bayes_annot.simulate.simulate`.

    Parameters
    ----------
    strengths : array, optional
        Majority strengths; default evenly spaced from +1.5 (``model_0``) down to -1.5.
    minority_strengths : array, optional
        Default: the reversed ranking (``-strengths``).

    Returns
    -------
    pandas.DataFrame
        ``user, model_a, model_b, winner`` plus ``true_attentive`` (not casual),
        ``true_taste`` (0 casual, 1 majority, 2 minority), ``true_eta``,
        ``true_p_a`` (the user's attentive probability of choosing ``model_a``),
        ``true_strength_a``, ``true_strength_b`` (under the user's taste).
    """
    if not 0.0 <= casual_share <= 1.0 or not 0.0 <= minority_share <= 1.0 - casual_share:
        raise ValueError("need 0 <= casual_share and 0 <= minority_share <= 1 - casual_share")
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    rng = np.random.default_rng(seed)
    strengths = np.linspace(1.5, -1.5, n_models) if strengths is None else np.asarray(strengths, dtype=float)
    minority = -strengths if minority_strengths is None else np.asarray(minority_strengths, dtype=float)
    if strengths.shape != (n_models,) or minority.shape != (n_models,):
        raise ValueError(f"strengths must have length n_models={n_models}")
    counts = draw_labels_per_user(n_users, labels_per_user, rng)
    u = rng.random(n_users)
    taste = np.where(u < casual_share, 0, np.where(u < casual_share + minority_share, 2, 1))
    user = np.repeat(np.arange(n_users), counts)
    n_rows = user.shape[0]
    model_a = rng.integers(0, n_models, size=n_rows)
    model_b = (model_a + rng.integers(1, n_models, size=n_rows)) % n_models
    table = np.vstack([strengths, strengths, minority])  # row 0 unused for casual users
    s_user = table[taste[user]]
    sa, sb = s_user[np.arange(n_rows), model_a], s_user[np.arange(n_rows), model_b]
    p_att = expit(sa - sb)
    p_choose_a = np.where(taste[user] == 0, q, p_att)
    choice_a = rng.random(n_rows) < p_choose_a
    width = len(str(max(n_users - 1, 1)))
    user_names = np.array([f"u{i:0{width}d}" for i in range(n_users)], dtype=object)
    model_names = np.array([f"model_{k}" for k in range(n_models)], dtype=object)
    return pd.DataFrame(
        {
            "user": pd.Categorical.from_codes(user, categories=user_names),
            "model_a": pd.Categorical.from_codes(model_a, categories=model_names),
            "model_b": pd.Categorical.from_codes(model_b, categories=model_names),
            "winner": pd.Categorical.from_codes(np.where(choice_a, 0, 1), categories=["model_a", "model_b"]),
            "true_attentive": taste[user] > 0,
            "true_taste": taste[user],
            "true_eta": (taste[user] > 0).astype(float),
            "true_p_a": p_att,
            "true_strength_a": sa,
            "true_strength_b": sb,
        }
    )
