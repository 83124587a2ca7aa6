"""Which behaviour model makes per-user quality track real raters? (issue #14, item 3)

Candidates are judged twice:

1. **Without truth** — held-out predictive log-likelihood on the four real data sets in
   ``../shared/data`` (cemschoice, topmodel2007, germanparties2009, countrypop): hide a seeded
   20% of each user's labels (:func:`bayes_annot.evaluate.holdout_mask`), fit on the rest, and
   score the hidden labels of each user *jointly* with the user's posterior from the training
   labels, :math:`\\log \\sum_k P(k \\mid y^{train}_u)\\, \\prod_{r \\in test(u)} P(y_r \\mid k)`.
   Several split seeds; the difference to two-class per held-out label gets a paired standard
   error over users.
2. **With truth** — on countrypop, Spearman of each candidate's quality with each worker's true
   accuracy (``countrypop_truth.csv``, workers with ``n_decided >= 10``) and AUC for spotting the
   workers with accuracy <= 0.5, each against the agreement-rate baseline
   (:func:`bayes_annot.baselines.agreement_rate`) with a bootstrap over workers.

The prototypes are one family, written once (:class:`TypeGrid`): every user has a latent
*type* ``k`` on a finite grid (casual or attentive, attentive share ``e_k``, sharpness ``g_k``,
taste class ``c_k``) with prior weights ``w_k(theta)`` whose few hyper-parameters are learned;
a label's probability under type ``k`` is

    P(y_r | k) = e_k * sigma(g_k * y_r (s^(c_k)_a - s^(c_k)_b)) + (1 - e_k) * q_y

(``y_r = +-1``; ``q_y`` the casual position bias). Types are summed out exactly and the
global parameters (strengths, ``q``, ``theta``) are MAP estimates found by L-BFGS on the
marginal log-posterior (gradient by Fisher's identity, finite-difference checked by
``--check-gradient``). The package's own fits (``bayes_annot.fit``) run alongside for the
two-class, continuous and taste-class variants.

The data licences keep these files out of the package: they are read from ``--data``
(default ``../shared/data`` next to the repository) at run time.

Usage::

    python benchmarks/bench_real_raters.py [--data DIR] [--seeds 5] [--boot 1000] [--quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import expit, log_expit, logsumexp  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

import bayes_annot as ba  # noqa: E402
from bayes_annot.baselines import agreement_rate  # noqa: E402
from bayes_annot.data import ColumnMap, prepare  # noqa: E402
from bayes_annot.evaluate import heldout_loglik, holdout_mask  # noqa: E402
from bayes_annot.metrics import auc, spearman  # noqa: E402
from bayes_annot.pairs import fit_bradley_terry_labels  # noqa: E402

DATASETS = ("countrypop", "cemschoice", "topmodel2007", "germanparties2009")
STRENGTH_SIGMA = 3.0  # the package's default ridge on strengths (Priors.strength_sigma)


# --------------------------------------------------------------------------- data


@dataclass
class Labels:
    """The usable (non-tie, two different models) labels of a log, integer-coded."""

    user: np.ndarray  # int, index into user_labels
    a: np.ndarray
    b: np.ndarray
    y: np.ndarray  # 1 when model_a was chosen, else 0
    n_users: int
    n_items: int
    user_labels: np.ndarray
    item_labels: np.ndarray

    @property
    def n(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "Labels":
        return Labels(self.user[mask], self.a[mask], self.b[mask], self.y[mask], self.n_users, self.n_items,
                      self.user_labels, self.item_labels)

    def user_matrix(self):
        """Sparse (users x labels) indicator: per-user sums of per-label columns."""
        return sparse.csr_matrix((np.ones(self.n), (self.user, np.arange(self.n))), shape=(self.n_users, self.n))


def load_labels(frame: pd.DataFrame) -> tuple[Labels, object]:
    prepared = prepare(frame, ColumnMap())
    u = prepared.usable
    labels = Labels(prepared.user[u].astype(np.int64), prepared.model_a[u].astype(np.int64),
                    prepared.model_b[u].astype(np.int64), prepared.choice_a[u].astype(np.int64),
                    prepared.n_users, prepared.n_models, np.asarray(prepared.user_labels),
                    np.asarray(prepared.model_labels))
    return labels, prepared


# --------------------------------------------------------------------------- prior weights on a grid


def normal_on_grid(x: np.ndarray, m: float, log_tau: float):
    """Normalised log-weights of N(m, tau) on the grid ``x`` and their derivatives in (m, log tau)."""
    tau = np.exp(log_tau)
    z = (x - m) / tau
    ell = -0.5 * z**2
    logw = ell - logsumexp(ell)
    w = np.exp(logw)
    d_ell = np.stack([z / tau, z**2], axis=1)  # d ell / d m, d ell / d log tau
    return logw, d_ell - w @ d_ell


def half_normal_log_tau(log_tau: float, scale: float):
    """log HalfNormal(tau; scale) + log tau (Jacobian of the log-tau parameterisation), and its derivative."""
    tau = np.exp(log_tau)
    return -0.5 * (tau / scale) ** 2 + log_tau, -((tau / scale) ** 2) + 1.0


def beta_logit(lp: float, alpha: float = 2.0, beta: float = 2.0):
    """Beta(alpha, beta) log-density of ``sigma(lp)`` in the probability scale (no Jacobian, as the package's MAP)."""
    p = expit(lp)
    return (alpha - 1) * log_expit(lp) + (beta - 1) * log_expit(-lp), (alpha - 1) * (1 - p) - (beta - 1) * p


ETA_GRID = np.linspace(-6.0, 6.0, 41)  # logit(eta)
GAMMA_GRID = np.linspace(-2.5, 2.5, 21)  # log(gamma)


@dataclass
class TypeGrid:
    """A finite set of user types and a parametric prior over them.

    Attributes
    ----------
    name : str
    e, g : arrays (K,)
        Attentive share and sharpness of each type (e = 0: casual).
    c : int array (K,)
        Taste class of each type.
    n_classes : int
    theta0 : array (P,)
        Starting hyper-parameters.
    weights : callable theta -> (logw (K,), dlogw (K, P))
    hyperprior : callable theta -> (logprior, dlogprior (P,))
    """

    name: str
    e: np.ndarray
    g: np.ndarray
    c: np.ndarray
    n_classes: int
    theta0: np.ndarray
    weights: object
    hyperprior: object
    describe: str = ""
    meta: dict = field(default_factory=dict)


def grid_bt() -> TypeGrid:
    """Plain Bradley–Terry: every label attentive."""
    return TypeGrid("bradley-terry", np.ones(1), np.ones(1), np.zeros(1, int), 1, np.zeros(0),
                    lambda th: (np.zeros(1), np.zeros((1, 0))), lambda th: (0.0, np.zeros(0)),
                    "no casual labels")


def grid_two_class() -> TypeGrid:
    def weights(th):
        p = expit(th[0])
        return np.array([log_expit(th[0]), log_expit(-th[0])]), np.array([[1 - p], [-p]])

    def hyper(th):
        lp, d = beta_logit(th[0])
        return lp, np.array([d])

    return TypeGrid("two-class", np.array([1.0, 0.0]), np.ones(2), np.zeros(2, int), 1, np.array([1.0]),
                    weights, hyper, "P(attentive | data); pi ~ Beta(2, 2)")


def grid_continuous() -> TypeGrid:
    x = ETA_GRID

    def weights(th):
        return normal_on_grid(x, th[0], th[1])

    def hyper(th):
        lt, dlt = half_normal_log_tau(th[1], 1.5)
        return -0.5 * (th[0] / 2.0) ** 2 + lt, np.array([-th[0] / 4.0, dlt])

    return TypeGrid("continuous (eta integrated)", expit(x), np.ones(len(x)), np.zeros(len(x), int), 1,
                    np.array([1.5, np.log(1.5)]), weights, hyper,
                    "E[eta_u | data]; logit eta ~ N(m, tau), m ~ N(0, 2), tau ~ HalfNormal(1.5), both learned")


def grid_sharp_two_class() -> TypeGrid:
    lg = GAMMA_GRID
    K = len(lg) + 1

    def weights(th):
        p = expit(th[0])
        lw_g, dlw_g = normal_on_grid(lg, 0.0, th[1])
        logw = np.r_[log_expit(-th[0]), log_expit(th[0]) + lw_g]
        d = np.zeros((K, 2))
        d[0, 0] = -p
        d[1:, 0] = 1 - p
        d[1:, 1] = dlw_g[:, 1]
        return logw, d

    def hyper(th):
        lp, dlp = beta_logit(th[0])
        lt, dlt = half_normal_log_tau(th[1], 1.0)
        return lp + lt, np.array([dlp, dlt])

    e = np.r_[0.0, np.ones(len(lg))]
    g = np.r_[1.0, np.exp(lg)]
    return TypeGrid("two-class x sharpness", e, g, np.zeros(K, int), 1, np.array([1.0, np.log(0.5)]), weights, hyper,
                    "expected accuracy; casual or attentive with gamma_u, log gamma ~ N(0, tau_g)")


def grid_sharp_continuous(n_eta: int = 21, n_gamma: int = 11) -> TypeGrid:
    x = np.linspace(ETA_GRID[0], ETA_GRID[-1], n_eta)
    lg = np.linspace(GAMMA_GRID[0], GAMMA_GRID[-1], n_gamma)
    X, LG = np.meshgrid(x, lg, indexing="ij")

    def weights(th):
        lw_e, d_e = normal_on_grid(x, th[0], th[1])
        lw_g, d_g = normal_on_grid(lg, 0.0, th[2])
        logw = (lw_e[:, None] + lw_g[None, :]).ravel()
        d = np.zeros((n_eta, n_gamma, 3))
        d[:, :, 0] = d_e[:, 0][:, None]
        d[:, :, 1] = d_e[:, 1][:, None]
        d[:, :, 2] = d_g[:, 1][None, :]
        return logw, d.reshape(-1, 3)

    def hyper(th):
        lt, dlt = half_normal_log_tau(th[1], 1.5)
        lg_, dlg = half_normal_log_tau(th[2], 1.0)
        return -0.5 * (th[0] / 2.0) ** 2 + lt + lg_, np.array([-th[0] / 4.0, dlt, dlg])

    K = n_eta * n_gamma
    return TypeGrid("continuous x sharpness", expit(X.ravel()), np.exp(LG.ravel()), np.zeros(K, int), 1,
                    np.array([1.5, np.log(1.5), np.log(0.5)]), weights, hyper,
                    "expected accuracy; eta_u and gamma_u independent, both integrated")


def grid_reversed() -> TypeGrid:
    """Continuous eta plus *reversed* raters (Crowd-BT-like): a user's attentive labels follow the ranking
    (g = +1) or its reverse (g = -1, share rho ~ Beta(1, 9)); with q = 0.5 this is Crowd-BT's
    ``eta sigma(d) + (1 - eta) sigma(-d)`` extended with a casual coin."""
    x = ETA_GRID
    G = len(x)

    def weights(th):
        lw_e, d_e = normal_on_grid(x, th[0], th[1])
        r = expit(th[2])
        logw = np.r_[log_expit(-th[2]) + lw_e, log_expit(th[2]) + lw_e]
        d = np.zeros((2 * G, 3))
        d[:, :2] = np.vstack([d_e, d_e])
        d[:G, 2] = -r
        d[G:, 2] = 1 - r
        return logw, d

    def hyper(th):
        lt, dlt = half_normal_log_tau(th[1], 1.5)
        lr, dlr = beta_logit(th[2], 1.0, 9.0)
        return -0.5 * (th[0] / 2.0) ** 2 + lt + lr, np.array([-th[0] / 4.0, dlt, dlr])

    return TypeGrid("continuous + reversed raters", np.tile(expit(x), 2), np.r_[np.ones(G), -np.ones(G)],
                    np.zeros(2 * G, int), 1, np.array([1.5, np.log(1.5), -3.0]), weights, hyper,
                    "expected accuracy (< 1/2 for a reversed rater)")


def grid_continuous_tastes(n_classes: int = 2) -> TypeGrid:
    """Continuous eta x taste classes: each user follows one of C rankings on their attentive labels."""
    x = ETA_GRID
    G = len(x)

    def weights(th):
        # class shares: softmax over (0, th[0], ...), eta prior N(m, tau)
        a = np.r_[0.0, th[: n_classes - 1]]
        lsh = a - logsumexp(a)
        sh = np.exp(lsh)
        lw_e, d_e = normal_on_grid(x, th[n_classes - 1], th[n_classes])
        logw = (lsh[:, None] + lw_e[None, :]).ravel()
        P = n_classes + 1
        d = np.zeros((n_classes, G, P))
        for j in range(1, n_classes):  # d log sh_c / d a_j = [c == j] - sh_j
            d[:, :, j - 1] = ((np.arange(n_classes) == j) - sh[j])[:, None]
        d[:, :, n_classes - 1] = d_e[:, 0][None, :]
        d[:, :, n_classes] = d_e[:, 1][None, :]
        return logw, d.reshape(-1, P)

    def hyper(th):
        lt, dlt = half_normal_log_tau(th[n_classes], 1.5)
        shares = th[: n_classes - 1]
        m = th[n_classes - 1]
        grad = np.r_[-shares / 4.0, -m / 4.0, dlt]  # N(0, 2) on the share logits and on m
        return float(-0.5 * np.sum((shares / 2.0) ** 2) - 0.5 * (m / 2.0) ** 2 + lt), grad

    e = np.tile(expit(x), n_classes)
    c = np.repeat(np.arange(n_classes), G)
    return TypeGrid(f"continuous x {n_classes} tastes", e, np.ones(len(e)), c, n_classes,
                    np.r_[np.full(n_classes - 1, -1.5), 1.5, np.log(1.5)], weights, hyper,
                    "E[eta_u | data]; C rankings, user in one class; eta prior as continuous")


def grid_two_class_tastes(n_classes: int = 2) -> TypeGrid:
    """Two-class x taste classes (the package's tastes=C, re-written in this family for the same scoring)."""
    K = n_classes + 1

    def weights(th):
        a = np.r_[0.0, th[1:]]
        lsh = a - logsumexp(a)
        sh = np.exp(lsh)
        p = expit(th[0])
        logw = np.r_[log_expit(-th[0]), log_expit(th[0]) + lsh]
        d = np.zeros((K, n_classes))
        d[0, 0] = -p
        d[1:, 0] = 1 - p
        for j in range(1, n_classes):
            d[1:, j] = (np.arange(n_classes) == j) - sh[j]
        return logw, d

    def hyper(th):
        lp, dlp = beta_logit(th[0])
        return float(lp - 0.5 * np.sum((th[1:] / 2.0) ** 2)), np.r_[dlp, -th[1:] / 4.0]

    e = np.r_[0.0, np.ones(n_classes)]
    c = np.r_[0, np.arange(n_classes)]
    return TypeGrid(f"two-class x {n_classes} tastes", e, np.ones(K), c, n_classes,
                    np.r_[1.0, np.full(n_classes - 1, -1.5)], weights, hyper, "P(not casual | data)")


# --------------------------------------------------------------------------- the model: likelihood, MAP, prediction


@dataclass
class Fitted:
    grid: TypeGrid
    s: np.ndarray  # (C, n_items)
    q: float
    theta: np.ndarray
    logpost: float
    n_evals: int
    posterior: np.ndarray  # (n_users, K): P(type | training labels)


def label_logprob(grid: TypeGrid, labels: Labels, s: np.ndarray, lq: float, want_grad: bool = False):
    """log P(y_r | k) for every label and type, (n, K); with ``want_grad`` also d/d d_r and d/d logit q."""
    d = (s[:, labels.a] - s[:, labels.b]).T  # (n, C)
    D = d[:, grid.c]  # (n, K)
    ysign = (2.0 * labels.y - 1.0)[:, None]
    z = grid.g[None, :] * ysign * D
    with np.errstate(divide="ignore"):
        log_e = np.log(grid.e)[None, :]
        log_1me = np.log1p(-grid.e)[None, :]
    log_cy = np.where(labels.y == 1, log_expit(lq), log_expit(-lq))[:, None]
    la = log_e + log_expit(z)
    lc = log_1me + log_cy
    logp = np.logaddexp(la, lc)
    if not want_grad:
        return logp
    d_dD = np.exp(la + log_expit(-z) - logp) * grid.g[None, :] * ysign
    q = expit(lq)
    d_dlq = np.exp(lc - logp) * np.where(labels.y == 1, 1.0 - q, -q)[:, None]
    return logp, d_dD, d_dlq


class Model:
    """MAP of the global parameters of a :class:`TypeGrid` model, types summed out."""

    def __init__(self, grid: TypeGrid, q_fixed: float | None = None, sigma: float = STRENGTH_SIGMA):
        self.grid = grid
        self.q_fixed = q_fixed
        self.sigma = sigma

    # parameter vector: s (C * n_items), [logit q], theta
    def _unpack(self, x, n_items):
        C = self.grid.n_classes
        s = x[: C * n_items].reshape(C, n_items)
        i = C * n_items
        if self.q_fixed is None:
            lq = x[i]
            i += 1
        else:
            lq = float(np.log(self.q_fixed) - np.log1p(-self.q_fixed))
        return s, lq, x[i:]

    def objective(self, x, labels: Labels, A):
        grid = self.grid
        s, lq, th = self._unpack(x, labels.n_items)
        logp, d_dD, d_dlq = label_logprob(grid, labels, s, lq, want_grad=True)
        logw, dlogw = grid.weights(th)
        LU = A @ logp + logw[None, :]
        ll_u = logsumexp(LU, axis=1)
        R = np.exp(LU - ll_u[:, None])
        Rl = R[labels.user]
        value = ll_u.sum()
        # strengths: d/d d_r summed over the types of each class
        gs = np.zeros_like(s)
        W = Rl * d_dD
        for c in range(grid.n_classes):
            gd = W[:, grid.c == c].sum(axis=1)
            gs[c] = np.bincount(labels.a, gd, labels.n_items) - np.bincount(labels.b, gd, labels.n_items)
        value += -0.5 * np.sum((s / self.sigma) ** 2)
        gs -= s / self.sigma**2
        grads = [gs.ravel()]
        if self.q_fixed is None:
            q = expit(lq)
            value += log_expit(lq) + log_expit(-lq)  # Beta(2, 2) on q
            grads.append(np.array([(Rl * d_dlq).sum() + (1 - q) - q]))
        N = R.sum(axis=0)
        hp, dhp = grid.hyperprior(th)
        value += hp
        grads.append(N @ dlogw + dhp)
        return -value, -np.concatenate(grads)

    def fit(self, labels: Labels, s0: np.ndarray | None = None, theta0=None, seed: int = 0, n_starts: int = 1) -> Fitted:
        grid = self.grid
        A = labels.user_matrix()
        if s0 is None:
            bt = fit_bradley_terry_labels(labels.a, labels.b, labels.y, labels.n_items, self.sigma)
        rng = np.random.default_rng(seed)
        best = None
        for start in range(n_starts):
            if s0 is not None:
                s_init = np.asarray(s0, float).reshape(grid.n_classes, labels.n_items)
            else:
                s_init = np.tile(bt, (grid.n_classes, 1))
                if grid.n_classes > 1:  # minority classes: start from the reversed ranking, then random perturbations
                    for c in range(1, grid.n_classes):
                        s_init[c] = -bt if start == 0 else bt + rng.normal(0, 1.0 + np.std(bt), labels.n_items)
            x0 = [s_init.ravel()]
            if self.q_fixed is None:
                x0.append([0.0])
            x0.append(grid.theta0 if theta0 is None else theta0)
            x0 = np.concatenate(x0)
            res = minimize(self.objective, x0, args=(labels, A), jac=True, method="L-BFGS-B",
                           options=dict(maxiter=5000, maxfun=20000, ftol=1e-12, gtol=1e-7))
            if best is None or res.fun < best.fun:
                best = res
        s, lq, th = self._unpack(best.x, labels.n_items)
        return Fitted(grid, s.copy(), float(expit(lq)), th.copy(), -float(best.fun), int(best.nfev),
                      self.posterior(labels, s, lq, th))

    def posterior(self, labels: Labels, s, lq, th) -> np.ndarray:
        logp = label_logprob(self.grid, labels, s, lq)
        logw, _ = self.grid.weights(th)
        LU = labels.user_matrix() @ logp + logw[None, :]
        return np.exp(LU - logsumexp(LU, axis=1, keepdims=True))


def predictive_scores(fitted: Fitted, test: Labels) -> np.ndarray:
    """Each user's joint held-out log-likelihood, log sum_k P(k | train) prod_{r in test(u)} P(y_r | k) (NaN: no test labels)."""
    lq = float(np.log(fitted.q) - np.log1p(-fitted.q))
    logp = label_logprob(fitted.grid, test, fitted.s, lq)
    LU = test.user_matrix() @ logp
    with np.errstate(divide="ignore"):
        scores = logsumexp(np.log(fitted.posterior) + LU, axis=1)
    has = np.bincount(test.user, minlength=test.n_users) > 0
    return np.where(has, scores, np.nan)


def expected_accuracy(fitted: Fitted, reference: Labels) -> np.ndarray:
    """Quality that combines attentiveness, sharpness and taste: the probability that the user picks the
    model the *majority* ranking (the taste class holding most attentive labels) puts higher, on a pair drawn from the log's
    own pair mix (``reference``, all its labels).

    For a type k it is ``mean_r [e_k sigma(g_k d^(c_k)_r sign(d^(0)_r)) + (1 - e_k) / 2]``, with ``d^(c)_r``
    the strength difference of pair r under class c (0: the majority class); a user's quality is its posterior mean. With one
    class and g = 1 it is an increasing affine map of P(attentive) / E[eta], so it ranks users exactly as
    those do.
    """
    grid = fitted.grid
    d = fitted.s[:, reference.a] - fitted.s[:, reference.b]  # (C, n)
    major = int(np.argmax(np.bincount(grid.c, weights=fitted.posterior.sum(axis=0) * grid.e, minlength=grid.n_classes)))
    sign0 = np.sign(d[major])
    acc = np.empty(len(grid.e))
    for k in range(len(grid.e)):
        acc[k] = np.mean(grid.e[k] * expit(grid.g[k] * d[grid.c[k]] * sign0) + (1 - grid.e[k]) / 2)
    return fitted.posterior @ acc


def attentive_share(fitted: Fitted) -> np.ndarray:
    """P(not casual) for two-class-like grids, E[eta_u] for continuous ones: the posterior mean of e_k."""
    return fitted.posterior @ fitted.grid.e


# --------------------------------------------------------------------------- one-coin Dawid–Skene on pairs


@dataclass
class DawidSkene:
    """One-coin Dawid–Skene on unordered pairs: each pair {i, j} has a latent truth ("i is better"),
    each worker an accuracy ``a_u`` (Beta(2, 2) prior, MAP); no ranking structure (no transitivity).

    Quality = ``a_u``. Held-out labels are scored with the pair posteriors of the training fit and
    ``a_u`` integrated over its Beta posterior given the training labels (soft counts).
    """

    prior: tuple = (2.0, 2.0)
    tol: float = 1e-10
    max_iter: int = 2000
    name: str = "one-coin Dawid-Skene (pairs)"

    @staticmethod
    def _pairs(labels: Labels):
        lo, hi = np.minimum(labels.a, labels.b), np.maximum(labels.a, labels.b)
        pair = lo * labels.n_items + hi
        o = np.where(labels.a < labels.b, labels.y, 1 - labels.y)  # 1 when the lower-index item won
        return pair, o

    def fit(self, labels: Labels) -> "DawidSkene":
        pair, o = self._pairs(labels)
        n_pairs = labels.n_items**2
        sign = 2.0 * o - 1.0
        n_u = np.bincount(labels.user, minlength=labels.n_users).astype(float)
        # start from the majority vote
        a = np.full(labels.n_users, 0.7)
        prev = -np.inf
        for _ in range(self.max_iter):
            la = np.log(a) - np.log1p(-a)
            lodds = np.bincount(pair, sign * la[labels.user], n_pairs)  # log P(t=1) - log P(t=0), flat prior
            pt = expit(lodds)
            p_agree = np.where(o == 1, pt[pair], 1 - pt[pair])
            k = np.bincount(labels.user, p_agree, labels.n_users)
            a = (k + self.prior[0] - 1) / (n_u + self.prior[0] + self.prior[1] - 2)
            # marginal log-likelihood with t summed out, + log prior of a: monotone under EM
            ll_pair_1 = np.bincount(pair, np.where(o == 1, np.log(a[labels.user]), np.log1p(-a[labels.user])), n_pairs)
            ll_pair_0 = np.bincount(pair, np.where(o == 0, np.log(a[labels.user]), np.log1p(-a[labels.user])), n_pairs)
            used = np.bincount(pair, minlength=n_pairs) > 0
            obj = np.sum(np.logaddexp(ll_pair_1, ll_pair_0)[used] + np.log(0.5)) + np.sum(
                (self.prior[0] - 1) * np.log(a) + (self.prior[1] - 1) * np.log1p(-a))
            if obj - prev < self.tol * abs(obj):
                break
            prev = obj
        la = np.log(a) - np.log1p(-a)
        self.pair_post_ = expit(np.bincount(pair, sign * la[labels.user], n_pairs))
        self.pair_seen_ = np.bincount(pair, minlength=n_pairs) > 0
        self.a_ = a
        self.k_ = k
        self.n_u_ = n_u
        self.objective_ = obj
        return self

    def predictive_scores(self, test: Labels) -> np.ndarray:
        pair, o = self._pairs(test)
        pt = np.where(self.pair_seen_[pair], self.pair_post_[pair], 0.5)
        p_o = np.where(o == 1, pt, 1 - pt)  # P(label agrees with the pair's truth = 1 if o matches)
        grid = np.linspace(0.0025, 0.9975, 200)
        alpha = self.k_ + self.prior[0]
        beta = self.n_u_ - self.k_ + self.prior[1]
        logpost = alpha[:, None] * 0 + ((alpha - 1)[:, None] * np.log(grid) + (beta - 1)[:, None] * np.log1p(-grid))
        logpost -= logsumexp(logpost, axis=1, keepdims=True)
        # P(y_r | a) = P(truth agrees with o) a + P(truth disagrees) (1 - a)
        lp = np.log(p_o[:, None] * grid[None, :] + (1 - p_o)[:, None] * (1 - grid[None, :]))
        LU = test.user_matrix() @ lp
        scores = logsumexp(logpost + LU, axis=1)
        has = np.bincount(test.user, minlength=test.n_users) > 0
        return np.where(has, scores, np.nan)


@dataclass
class OneCoin:
    """One-coin model on a fixed ranking: a label agrees with the ranking with the user's accuracy ``a_u``
    (Beta(1, 1) prior), whatever the strength gap. Its quality, the posterior mean (k_u + 1) / (n_u + 2),
    *is* the agreement-rate baseline when the ranking is the plain Bradley–Terry consensus; with
    ``ranking="tastes2"`` the ranking is the majority class of the two-class x 2 tastes model (c).
    Held-out labels are scored with ``a_u`` integrated over its Beta posterior from the training labels."""

    ranking: str = "bt"
    q_fixed: float | None = None

    def fit(self, labels: Labels) -> "OneCoin":
        if self.ranking == "bt":
            s = fit_bradley_terry_labels(labels.a, labels.b, labels.y, labels.n_items, STRENGTH_SIGMA)
        else:
            fitted = Model(grid_two_class_tastes(), q_fixed=self.q_fixed).fit(labels, n_starts=5)
            grid = fitted.grid
            major = int(np.argmax(np.bincount(grid.c, weights=fitted.posterior.sum(axis=0) * grid.e,
                                              minlength=grid.n_classes)))
            s = fitted.s[major]
        self.s_ = s
        agree = self._agree(labels)
        self.k_ = np.bincount(labels.user, agree, labels.n_users)
        self.n_u_ = np.bincount(labels.user, minlength=labels.n_users).astype(float)
        self.a_ = (self.k_ + 1) / (self.n_u_ + 2)
        return self

    def _agree(self, labels: Labels) -> np.ndarray:
        d = self.s_[labels.a] - self.s_[labels.b]
        return np.where(d == 0, 0.5, np.where(d > 0, labels.y == 1, labels.y == 0).astype(float))

    def predictive_scores(self, test: Labels) -> np.ndarray:
        agree = self._agree(test)
        grid = np.linspace(0.0025, 0.9975, 200)
        logpost = self.k_[:, None] * np.log(grid) + (self.n_u_ - self.k_)[:, None] * np.log1p(-grid)
        logpost -= logsumexp(logpost, axis=1, keepdims=True)
        lp = np.log(agree[:, None] * grid[None, :] + (1 - agree)[:, None] * (1 - grid[None, :]))
        scores = logsumexp(logpost + test.user_matrix() @ lp, axis=1)
        has = np.bincount(test.user, minlength=test.n_users) > 0
        return np.where(has, scores, np.nan)


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    key: str
    label: str
    quality: str  # what "quality" is for this candidate
    kind: str  # "grid", "ds", "package"
    make: object = None  # grid factory
    n_starts: int = 1
    fit_kwargs: dict = field(default_factory=dict)  # package candidates


def candidates(quick: bool = False) -> list[Candidate]:
    out = [
        Candidate("bt", "Bradley-Terry (no casual labels)", "-", "grid", grid_bt),
        Candidate("two-class", "(a) two-class", "P(attentive)", "grid", grid_two_class),
        Candidate("continuous", "(b) continuous, eta integrated", "E[eta]", "grid", grid_continuous),
        Candidate("pkg-continuous", "(b') continuous, package EM (eta summed out; held-out labels scored one by one)",
                  "E[eta]", "package",
                  fit_kwargs=dict(variant="continuous", ties="ignore")),
        Candidate("tastes2", "(c) two-class x 2 tastes", "expected agreement with the majority ranking", "grid",
                  grid_two_class_tastes, n_starts=5),
        Candidate("pkg-tastes", "(c') package tastes='auto'", "P(not casual)", "package",
                  fit_kwargs=dict(variant="two-class", tastes="auto", ties="ignore")),
        Candidate("sharp2", "(d) two-class x sharpness", "expected accuracy", "grid", grid_sharp_two_class),
        Candidate("sharpc", "(d') continuous x sharpness", "expected accuracy", "grid", grid_sharp_continuous),
        Candidate("ctastes2", "(e) continuous x 2 tastes", "expected agreement with the majority ranking", "grid",
                  grid_continuous_tastes, n_starts=3),
        Candidate("reversed", "(f) continuous + reversed raters (Crowd-BT-like)", "expected accuracy", "grid",
                  grid_reversed),
        Candidate("ds", "(f') one-coin Dawid-Skene on pairs", "worker accuracy a_u", "ds"),
        Candidate("onecoin-bt", "(g) one-coin on the BT consensus = the agreement-rate baseline",
                  "agreement rate", "onecoin", fit_kwargs=dict(ranking="bt")),
        Candidate("onecoin-tastes2", "(h) one-coin on the majority ranking of (c)",
                  "agreement rate with the majority ranking of (c)", "onecoin", fit_kwargs=dict(ranking="tastes2")),
    ]
    return out


def read_sets(data_dir: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    for name in DATASETS:
        path = data_dir / f"{name}.csv"
        if not path.exists():
            raise SystemExit(f"{path} not found: pass --data DIR (the folder with the four real data sets)")
        frames[name] = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return frames


def q_for(name: str):
    """countrypop's positions were assigned by a coin (README): fix q = 0.5 there; learn it elsewhere."""
    return 0.5 if name == "countrypop" else None


def fit_candidate(cand: Candidate, labels: Labels, q_fixed, seed: int = 0):
    if cand.kind == "grid":
        return Model(cand.make(), q_fixed=q_fixed).fit(labels, seed=seed, n_starts=cand.n_starts)
    if cand.kind == "ds":
        return DawidSkene().fit(labels)
    if cand.kind == "onecoin":
        return OneCoin(q_fixed=q_fixed, **cand.fit_kwargs).fit(labels)
    raise ValueError(cand.kind)


def heldout_scores(cand: Candidate, frame: pd.DataFrame, labels: Labels, prepared, q_fixed, seed: int,
                   frac: float) -> np.ndarray:
    """Per-user held-out log-likelihood (aligned to ``labels.user_labels``; NaN for users without test labels)."""
    if cand.kind == "package":
        kw = dict(cand.fit_kwargs)
        variant = kw.pop("variant")
        if q_fixed is not None:
            kw["q"] = q_fixed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = heldout_loglik(frame, variant, frac=frac, seed=seed, **kw)
        return res["per_user"].reindex(labels.user_labels).to_numpy(dtype=float)
    hidden = holdout_mask(prepared.user, prepared.usable, frac, seed)[prepared.usable]
    train, test = labels.subset(~hidden), labels.subset(hidden)
    fitted = fit_candidate(cand, train, q_fixed, seed=seed)
    if cand.kind in ("ds", "onecoin"):
        return fitted.predictive_scores(test)
    return predictive_scores(fitted, test)


def quality_on_all(cand: Candidate, frame: pd.DataFrame, labels: Labels, q_fixed):
    """The candidate's per-user quality fitted on every label (aligned to ``labels.user_labels``), and the
    strengths of its majority ranking (aligned to ``labels.item_labels``; None for Dawid-Skene)."""
    if cand.kind == "package":
        kw = dict(cand.fit_kwargs)
        if q_fixed is not None:
            kw["q"] = q_fixed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ba.fit(frame, filter="none", **kw)
        strength = res.models.set_index("model")["strength"].reindex(labels.item_labels).to_numpy(dtype=float)
        return res.users.set_index("user")["quality"].reindex(labels.user_labels).to_numpy(dtype=float), strength
    fitted = fit_candidate(cand, labels, q_fixed)
    if cand.kind == "ds":
        return fitted.a_, None
    if cand.kind == "onecoin":
        return fitted.a_, fitted.s_
    grid = fitted.grid
    major = int(np.argmax(np.bincount(grid.c, weights=fitted.posterior.sum(axis=0) * grid.e, minlength=grid.n_classes)))
    return expected_accuracy(fitted, labels), fitted.s[major]


def agreement_with(labels: Labels, strength: np.ndarray) -> np.ndarray:
    """Each user's agreement rate with a given ranking, Beta(1, 1)-smoothed as the baseline's."""
    d = strength[labels.a] - strength[labels.b]
    agree = np.where(d == 0, 0.5, np.where(d > 0, labels.y == 1, labels.y == 0).astype(float))
    n = np.bincount(labels.user, minlength=labels.n_users)
    return (np.bincount(labels.user, agree, labels.n_users) + 1) / (n + 2)


# --------------------------------------------------------------------------- statistics


def paired_difference(scores: np.ndarray, base: np.ndarray, n_labels: int) -> tuple[float, float]:
    """Difference of summed held-out log-likelihood per held-out label, and its SE (users as the unit)."""
    diff = scores - base
    diff = diff[np.isfinite(diff)]
    return float(diff.sum() / n_labels), float(np.sqrt(len(diff)) * diff.std(ddof=1) / n_labels)


def rank_metrics(q: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    return spearman(q, acc), auc(q, acc > 0.5)


def bootstrap(qualities: dict[str, np.ndarray], acc: np.ndarray, baseline: str, n_boot: int, seed: int) -> dict:
    """Bootstrap over workers of each candidate's Spearman / AUC difference to ``baseline``."""
    rng = np.random.default_rng(seed)
    n = len(acc)
    draws = {k: {"spearman": [], "auc": []} for k in qualities}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a = acc[idx]
        if (a > 0.5).all() or (a <= 0.5).all():
            continue
        base_sp, base_auc = rank_metrics(qualities[baseline][idx], a)
        for k, q in qualities.items():
            sp, au = rank_metrics(q[idx], a)
            draws[k]["spearman"].append(sp - base_sp)
            draws[k]["auc"].append(au - base_auc)
    out = {}
    for k, d in draws.items():
        out[k] = {}
        for m, v in d.items():
            v = np.asarray(v)
            out[k][m] = dict(lo=float(np.quantile(v, 0.025)), hi=float(np.quantile(v, 0.975)),
                             p_not_better=float(np.mean(v <= 0)), sd=float(v.std(ddof=1)))
    return out


def refit_bootstrap(frame: pd.DataFrame, truth: pd.DataFrame, n_boot: int, seed: int = 0, frac: float | None = None,
                    true_level: pd.Series | None = None) -> dict:
    """Bootstrap over workers *with every fit redone* on the resample (a resampled worker's copies are
    distinct users): the agreement rate, the package's two-class, and the agreement with the majority
    ranking of the package's ``fit(tastes=2)``. Returns each method's Spearman / AUC draws summarised,
    and the differences to the agreement rate. ``frac``: subsample that share of the workers without
    replacement instead (no duplicated workers, which a mixture fit may take for a tight cluster).
    With ``true_level``, also the share of resamples whose majority-taste ranking is closer to the true
    order (Spearman) than the plain consensus."""
    rng = np.random.default_rng(seed)
    groups = {u: g for u, g in frame.groupby("user", sort=False)}
    workers = np.array(list(groups))
    draws = {k: {"spearman": [], "auc": []} for k in ("agreement", "two-class", "majority-taste agreement")}
    closer = []
    for _ in range(n_boot):
        if frac is None:
            pick = workers[rng.integers(0, len(workers), len(workers))]
        else:
            pick = rng.choice(workers, size=int(round(frac * len(workers))), replace=False)
        parts, acc = [], []
        for j, w in enumerate(pick):
            g = groups[w].copy()
            g["user"] = f"{w}#{j}"
            parts.append(g)
            acc.append(truth.loc[w, "accuracy"])
        boot = pd.concat(parts, ignore_index=True)
        acc = np.asarray(acc, dtype=float)
        if (acc > 0.5).all() or (acc <= 0.5).all():
            continue
        labels, _ = load_labels(boot)
        order = pd.Index(labels.user_labels).get_indexer([f"{w}#{j}" for j, w in enumerate(pick)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            consensus = agreement_rate(boot)
            q = {"agreement": consensus.users.set_index("user")["quality"]
                 .reindex(labels.user_labels).to_numpy(dtype=float),
                 "two-class": ba.fit(boot, filter="none", q=0.5).users.set_index("user")["quality"]
                 .reindex(labels.user_labels).to_numpy(dtype=float)}
            res = ba.fit(boot, filter="none", q=0.5, tastes=2)
        s_major = res.models.set_index("model")["strength_taste_1"].reindex(labels.item_labels).to_numpy(dtype=float)
        q["majority-taste agreement"] = agreement_with(labels, s_major)
        if true_level is not None:
            t = true_level.reindex(labels.item_labels).to_numpy(dtype=float)
            s_bt = consensus.models.set_index("model")["strength"].reindex(labels.item_labels).to_numpy(dtype=float)
            closer.append(spearman(s_major, t) > spearman(s_bt, t))
        for k, v in q.items():
            sp, au = rank_metrics(v[order], acc)
            draws[k]["spearman"].append(sp)
            draws[k]["auc"].append(au)
    out = {"n": len(draws["agreement"]["spearman"]), "frac": frac,
           "majority_closer": float(np.mean(closer)) if closer else None}
    for k, d in draws.items():
        out[k] = {}
        for m, v in d.items():
            v = np.asarray(v)
            diff = v - np.asarray(draws["agreement"][m])
            out[k][m] = dict(mean=float(v.mean()), lo=float(np.quantile(v, 0.025)), hi=float(np.quantile(v, 0.975)),
                             diff_mean=float(diff.mean()), diff_lo=float(np.quantile(diff, 0.025)),
                             diff_hi=float(np.quantile(diff, 0.975)), p_not_better=float(np.mean(diff <= 0)))
    return out


# --------------------------------------------------------------------------- main


def run(data_dir: Path, seeds: list[int], n_boot: int, frac: float, quick: bool, only: list[str] | None = None,
        reuse: dict | None = None, refit_boot: int = 0) -> dict:
    frames = read_sets(data_dir)
    cands = [c for c in candidates(quick) if not only or c.key in only or c.key == "two-class"]
    results = {"heldout": {}, "truth": {}, "settings": dict(seeds=seeds, n_boot=n_boot, frac=frac,
                                                            data=str(data_dir))}
    if reuse is not None:  # held-out figures of an earlier run (same candidates): only the truth part reruns
        results["heldout"] = reuse["heldout"]
        results["settings"].update(seeds=reuse["settings"]["seeds"], frac=reuse["settings"]["frac"],
                                   heldout_command=reuse["settings"].get("heldout_command", reuse["settings"].get("command")))
    for name, frame in frames.items():
        if reuse is not None:
            break
        labels, prepared = load_labels(frame)
        q_fixed = q_for(name)
        n_test = 0
        per_user = {c.key: np.zeros(labels.n_users) for c in cands}
        times = {c.key: 0.0 for c in cands}
        for seed in seeds:
            hidden = holdout_mask(prepared.user, prepared.usable, frac, seed)
            n_test += int(hidden.sum())
            for c in cands:
                t0 = time.perf_counter()
                sc = heldout_scores(c, frame, labels, prepared, q_fixed, seed, frac)
                times[c.key] += time.perf_counter() - t0
                per_user[c.key] += np.nan_to_num(sc, nan=0.0)
            print(f"{name} seed {seed} done", flush=True)
        base = per_user["two-class"]
        results["heldout"][name] = {
            c.key: dict(per_label=float(per_user[c.key].sum() / n_test),
                        diff=paired_difference(per_user[c.key], base, n_test)[0],
                        se=paired_difference(per_user[c.key], base, n_test)[1],
                        seconds_per_fit=times[c.key] / len(seeds))
            for c in cands
        }
        results["heldout"][name]["_n_test"] = n_test
        results["heldout"][name]["_n_users"] = labels.n_users
        results["heldout"][name]["_n_labels"] = labels.n

    # truth on countrypop
    frame = frames["countrypop"]
    labels, prepared = load_labels(frame)
    truth = pd.read_csv(data_dir / "countrypop_truth.csv", dtype={"user": str}).set_index("user")
    keep = truth["n_decided"].reindex(labels.user_labels).to_numpy() >= 10
    acc = truth["accuracy"].reindex(labels.user_labels).to_numpy(dtype=float)[keep]
    qualities = {"agreement": agreement_rate(frame).users.set_index("user")["quality"]
                 .reindex(labels.user_labels).to_numpy(dtype=float)[keep]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qualities["pkg-two-class-default"] = ba.fit(frame, filter="none").users.set_index("user")["quality"] \
            .reindex(labels.user_labels).to_numpy(dtype=float)[keep]
    items = pd.read_csv(data_dir / "countrypop_items.csv").set_index("model")["true_level"]
    true_level = items.reindex(labels.item_labels).to_numpy(dtype=float)
    ranking = {"agreement": agreement_rate(frame).models.set_index("model")["strength"]
               .reindex(labels.item_labels).to_numpy(dtype=float)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranking["pkg-two-class-default"] = ba.fit(frame, filter="none").models.set_index("model")["strength"] \
            .reindex(labels.item_labels).to_numpy(dtype=float)
    for c in cands:
        if c.key == "bt":
            continue
        q, ranking[c.key] = quality_on_all(c, frame, labels, q_for("countrypop"))
        qualities[c.key] = q[keep]
    # diagnostics: the same counting rule as the baseline against other rankings
    for key in ("ctastes2",):
        if key in ranking:
            qualities[f"agree-{key}"] = agreement_with(labels, ranking[key])[keep]
            ranking[f"agree-{key}"] = ranking[key]
    # robustness of (h): the majority ranking of the package's own taste fits
    chosen_tastes = {}
    for tastes in (2, "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ba.fit(frame, filter="none", q=0.5, tastes=tastes)
        s_major = res.models.set_index("model")["strength_taste_1"].reindex(labels.item_labels).to_numpy(dtype=float)
        qualities[f"agree-pkg-tastes-{tastes}"] = agreement_with(labels, s_major)[keep]
        ranking[f"agree-pkg-tastes-{tastes}"] = s_major
        chosen_tastes[f"agree-pkg-tastes-{tastes}"] = int((res.summary.get("tastes") or {}).get("n_tastes", tastes))
    qualities["agree-true"] = agreement_with(labels, true_level)[keep]
    ranking["agree-true"] = true_level
    boot = bootstrap(qualities, acc, "agreement", n_boot, seed=0)
    for k, q in qualities.items():
        sp, au = rank_metrics(q, acc)
        rk = ranking.get(k)
        results["truth"][k] = dict(spearman=sp, auc=au, boot=boot[k],
                                   ranking_vs_true=None if rk is None else spearman(rk, true_level))
        if k in chosen_tastes:
            results["truth"][k]["n_tastes"] = chosen_tastes[k]
    if refit_boot:
        results["refit_boot"] = [refit_bootstrap(frame, truth, refit_boot, seed=0, true_level=items),
                                 refit_bootstrap(frame, truth, refit_boot, seed=0, frac=0.8, true_level=items)]
    results["truth"]["_n_workers"] = int(keep.sum())
    results["truth"]["_n_bad"] = int((acc <= 0.5).sum())
    results["candidates"] = {c.key: dict(label=c.label, quality=c.quality) for c in cands}
    return results


# truth rows that come from the package's taste fits whatever --only says (re-measured with pkg-tastes)
PKG_TASTE_ROWS = ("agree-pkg-tastes-2", "agree-pkg-tastes-auto")


def merge_rows(base: dict, new: dict, keys: list[str], command: str) -> dict:
    """``base`` (an earlier full run) with the rows of candidates ``keys`` taken from ``new`` (a run with
    ``--only`` those keys, same seeds, split share and bootstrap): their held-out cells and truth rows,
    plus the package taste-fit rows of the truth table when ``pkg-tastes`` is among them. Every other row
    keeps ``base``'s figures. Valid because two-class, the paired base, is deterministic, and the
    bootstrap draws the same workers for every row (seed 0), whatever the other rows are."""
    for name in ("seeds", "frac", "n_boot"):
        if base["settings"][name] != new["settings"][name]:
            raise SystemExit(f"--merge: {name} differs ({base['settings'][name]} vs {new['settings'][name]})")
    out = json.loads(json.dumps(base))
    missing = [k for k in keys if k not in out["candidates"]]
    if missing:
        raise SystemExit(f"--merge: candidate(s) {', '.join(missing)} not in the earlier run")
    for name, table in new["heldout"].items():
        for k in keys:
            out["heldout"][name][k] = table[k]
    rows = list(keys) + (list(PKG_TASTE_ROWS) if "pkg-tastes" in keys else [])
    for k in rows:
        if k in new["truth"]:
            out["truth"][k] = new["truth"][k]
    for k in keys:
        out["candidates"][k] = new["candidates"][k]
    out["settings"]["merged"] = dict(command=command, keys=rows, date=dt.date.today().isoformat(),
                                     machine=new["settings"].get("machine"))
    return out


NAMES = {"countrypop": "countrypop", "cemschoice": "CEMSChoice", "topmodel2007": "Topmodel2007",
         "germanparties2009": "GermanParties2009"}


def markdown(results: dict, command: str) -> str:
    cands = results["candidates"]
    st = results["settings"]
    reused = st.get("heldout_command")
    merged = st.get("merged")
    if merged:  # the rows of some candidates rerun and merged into an earlier run
        short = {"agree-pkg-tastes-2": "(h')", "agree-pkg-tastes-auto": "(h'')"}
        names = [cands[k]["label"].split(" ")[0] if k in cands else short.get(k, k) for k in merged["keys"]]
        head = (f"Generated by `{st['command']}` on {st.get('date', 'an earlier date')}"
                + (f" ({st['machine']})" if st.get("machine") else "") + f"; the rows of {', '.join(names)} "
                f"(held-out and truth tables) rerun by `{merged['command']}` on {merged['date']}"
                + (f" ({merged['machine']})" if merged.get("machine") else "")
                + " and merged into it; every other row keeps its figures.")
    else:
        head = f"Generated by `{command}` on {dt.date.today().isoformat()}; machine: {machine()}."
    lines = [
        head + (f" The held-out table is the one of `{reused}` (same code and candidates)." if reused else ""),
        f"Held-out split seeds {st['seeds']} (each hides {st['frac']:.0%} of every user's non-tie labels); "
        f"bootstrap: {st['n_boot']} resamples of workers, seed 0.",
        "",
        "### Held-out log-likelihood per held-out label (higher is better)",
        "",
        "Each cell: mean held-out log-likelihood per label over all seeds; in brackets the difference to (a) "
        "two-class ± its paired standard error (users as the unit, summed over seeds).",
        "",
        "| candidate | quality | " + " | ".join(NAMES[n] for n in results["heldout"]) + " |",
        "|---|---|" + "---:|" * len(results["heldout"]),
    ]
    for key, meta in cands.items():
        cells = []
        for name, table in results["heldout"].items():
            r = table[key]
            cells.append(f"{r['per_label']:.4f}" if key == "two-class"
                         else f"{r['per_label']:.4f} ({r['diff']:+.4f} ± {r['se']:.4f})")
        lines.append(f"| {meta['label']} | {meta['quality']} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{NAMES[n]} {t['_n_users']} users / {t['_n_labels']} non-tie labels / {t['_n_test']} held out "
                      "(all seeds)" for n, t in results["heldout"].items())
    lines += ["", f"Sizes: {sizes}.", "", "### countrypop: quality against each worker's true accuracy", "",
              f"{results['truth']['_n_workers']} workers with at least 10 labels (all of them: every worker has 16), "
              f"{results['truth']['_n_bad']} with accuracy ≤ 0.5. Differences are to the agreement rate; "
              "95% bootstrap interval over workers; P(≤ 0) = share of resamples in which the candidate does not beat it.",
              "",
              "| quality | Spearman | Δ vs agreement [95% CI] | P(Δ ≤ 0) | AUC (acc ≤ 0.5) | Δ vs agreement [95% CI] | P(Δ ≤ 0) "
              "| ranking vs true order |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    label = {"agreement": "agreement rate with the BT consensus (baseline)",
             "pkg-two-class-default": "package `fit(variant='two-class')`, default (q learned)",
             "agree-ctastes2": "diagnostic: agreement rate with the majority ranking of (e)",
             "agree-pkg-tastes-2": "(h') as (h), ranking of the package's `fit(tastes=2)` (taste 1)",
             "agree-pkg-tastes-auto": "(h'') as (h), ranking of the package's `fit(tastes='auto')` "
                                      + (f"({results['truth']['agree-pkg-tastes-auto']['n_tastes']} tastes; taste 1)"
                                         if "n_tastes" in results["truth"].get("agree-pkg-tastes-auto", {})
                                         else "(taste 1)"),
             "agree-true": "diagnostic: agreement rate with the true order (the truth itself, smoothed)"}
    label.update({k: v["label"] for k, v in cands.items()})
    for key, r in results["truth"].items():
        if key.startswith("_"):
            continue
        b = r["boot"]
        lines.append(
            f"| {label[key]} | {r['spearman']:.3f} | "
            + ("" if key == "agreement" else f"{r['spearman'] - results['truth']['agreement']['spearman']:+.3f} "
               f"[{b['spearman']['lo']:+.3f}, {b['spearman']['hi']:+.3f}]")
            + f" | {'' if key == 'agreement' else format(b['spearman']['p_not_better'], '.2f')} | {r['auc']:.3f} | "
            + ("" if key == "agreement" else f"{r['auc'] - results['truth']['agreement']['auc']:+.3f} "
               f"[{b['auc']['lo']:+.3f}, {b['auc']['hi']:+.3f}]")
            + f" | {'' if key == 'agreement' else format(b['auc']['p_not_better'], '.2f')} | "
            + ("" if r["ranking_vs_true"] is None else f"{r['ranking_vs_true']:.3f}") + " |"
        )
    for rb in results.get("refit_boot") or []:
        how = ("resamples of the workers with replacement (a worker drawn twice counts as two users)"
               if rb["frac"] is None else f"subsamples of {rb['frac']:.0%} of the workers without replacement")
        lines += ["", f"#### Every fit redone: {rb['n']} {how}, seed 0", "",
                  "The table above holds the fits fixed and resamples only the workers it evaluates. Here every fit "
                  "(consensus strengths, two-class, the 2-taste fit and its majority ranking) is redone on each "
                  "resample."
                  + ("" if rb.get("majority_closer") is None else
                     f" The majority taste's ranking is closer to the true order than the plain consensus in "
                     f"{rb['majority_closer']:.0%} of them."), "",
                  "| quality | Spearman [95% CI] | Δ vs agreement [95% CI] | P(Δ ≤ 0) | AUC [95% CI] | "
                  "Δ vs agreement [95% CI] | P(Δ ≤ 0) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for k in ("agreement", "two-class", "majority-taste agreement"):
            a, b = rb[k]["spearman"], rb[k]["auc"]
            cells = []
            for m in (a, b):
                cells.append(f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]")
                cells.append("" if k == "agreement" else f"{m['diff_mean']:+.3f} [{m['diff_lo']:+.3f}, {m['diff_hi']:+.3f}]")
                cells.append("" if k == "agreement" else f"{m['p_not_better']:.2f}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


START, END = "<!-- generated by benchmarks/bench_real_raters.py: start -->", "<!-- generated: end -->"


def write_page(out: Path, body: str) -> None:
    """Replace the generated block of the page (the hand-written analysis around it stays)."""
    block = f"{START}\n{body}\n{END}"
    if out.exists() and START in (text := out.read_text()):
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        out.write_text(head + block + tail)
    else:
        out.write_text("# Quality that tracks real raters\n\n" + block + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=5, help="held-out split seeds 0..N-1")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--frac", type=float, default=0.2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 bootstrap resamples")
    parser.add_argument("--only", default="", help="comma-separated candidate keys (two-class always runs)")
    parser.add_argument("--refit-boot", type=int, default=0,
                        help="also a bootstrap over workers that refits every model per resample (N resamples)")
    parser.add_argument("--reuse-heldout", default="", help="JSON of an earlier run: reuse its held-out table")
    parser.add_argument("--merge", default="",
                        help="JSON of an earlier full run: rerun only the --only candidates and merge their rows into it")
    parser.add_argument("--check-gradient", action="store_true", help="finite-difference check of every grid model")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_real_raters.md"))
    parser.add_argument("--json", default=str(HERE / "results_real_raters.json"))
    args = parser.parse_args(argv)
    if args.check_gradient:
        check_gradients(Path(args.data))
        return {}
    keys = [k for k in args.only.split(",") if k and k != "two-class"]
    if args.merge and not keys:
        parser.error("--merge needs --only (the candidates whose rows are rerun)")
    seeds = list(range(1 if args.quick else args.seeds))
    n_boot = 200 if args.quick else args.boot
    t0 = time.perf_counter()
    reuse = json.loads(Path(args.reuse_heldout).read_text()) if args.reuse_heldout else None
    results = run(Path(args.data), seeds, n_boot, args.frac, args.quick, [k for k in args.only.split(",") if k], reuse,
                  args.refit_boot)
    results["settings"]["seconds"] = time.perf_counter() - t0
    shown = list(argv if argv is not None else sys.argv[1:])
    for opt in ("--reuse-heldout", "--merge", "--data"):  # the page names the file, not this machine's path to it
        if opt in shown and shown.index(opt) + 1 < len(shown):
            i = shown.index(opt) + 1
            shown[i] = Path(shown[i]).name if opt != "--data" else "DIR"
    command = "python benchmarks/bench_real_raters.py" + (" " + " ".join(shown)).rstrip()
    results["settings"]["command"] = command.strip()
    results["settings"].update(date=dt.date.today().isoformat(), machine=machine())
    if args.merge:
        results = merge_rows(json.loads(Path(args.merge).read_text()), results, keys, command.strip())
    body = markdown(results, command.strip())
    write_page(Path(args.out), body)
    Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(body)
    return results


def check_gradients(data_dir: Path) -> None:
    """Central finite differences of the marginal log-posterior against the analytic gradient, per grid."""
    labels, _ = load_labels(read_sets(data_dir)["countrypop"])
    rng = np.random.default_rng(0)
    A = labels.user_matrix()
    for make in (grid_bt, grid_two_class, grid_continuous, grid_sharp_two_class, grid_sharp_continuous,
                 grid_continuous_tastes, grid_two_class_tastes, grid_reversed):
        grid = make()
        for q_fixed in (None, 0.5):
            model = Model(grid, q_fixed=q_fixed)
            n = grid.n_classes * labels.n_items + (q_fixed is None) + len(grid.theta0)
            x = rng.normal(0, 0.5, n)
            _, g = model.objective(x, labels, A)
            h = 1e-6
            num = np.array([(model.objective(x + h * e, labels, A)[0] - model.objective(x - h * e, labels, A)[0]) / (2 * h)
                            for e in np.eye(n)])
            err = np.max(np.abs(num - g)) / (1 + np.max(np.abs(g)))
            print(f"{grid.name:32s} q {'learned' if q_fixed is None else 'fixed'}: max relative error {err:.1e}")
            assert err < 1e-5, grid.name


if __name__ == "__main__":
    main()
