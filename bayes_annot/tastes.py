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
is exactly the ``Beta(pi_alpha, pi_beta)`` prior of the two-class variant, and
for any ``C`` every share's MAP stays strictly inside (0, 1);
:math:`q \sim \mathrm{Beta}(2, 2)`; every class's strengths
:math:`s^{(c)}_k \sim \mathcal N(0, \sigma_s^2)`.

**EM** is the package's one driver, :func:`bayes_annot.block_em.run_class_em`
(the two-class EM is its ``C = 1`` case): E-step responsibilities over the
``C + 1`` types per user (log space); M-step Dirichlet-MAP shares and Beta-MAP
``q`` in closed form, each class's strengths by Bradley–Terry on the pair table
weighted by that class's responsibilities
(:func:`~bayes_annot.pairs.fit_bradley_terry_classes`). Each block is maximised
exactly, so the penalised observed log-likelihood never decreases (tested). It
runs over a *runner*: in memory (:func:`problem_runner`, or an update's merged
block) or over the partitions of a Dask DataFrame
(:class:`~bayes_annot.dask_em.DaskRunner`); the starts below only need per-user
weighted pair tables (``runner.user_cells``).

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
from .ufuncs import expit, log_expit, logit

from .block_em import LocalRunner, block_type_logliks, lse_rows, make_block, run_class_em
from .casual import casual_table
from .em import INFORMATIVE_TOL, UsableLabels, newton_ascent, no_verdict_shares, pair_weights
from .likelihood import Priors, log_prior, log_type_shares
from .pairs import PairTable, attentive_table_pairs, fit_bradley_terry_pairs
from .style import style_davidson_tables, style_offsets, style_table
from .ties import davidson_tables, log_prior_ties
from .simulate import _lengths, _texts, draw_labels_per_user

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
    "problem_runner",
    "subproblem",
    "label_users",
    "labelled_users",
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
    casual: object = None  # the casual covariates' design (bayes_annot.casual.CasualDesign), if any
    casual_g: np.ndarray | None = None  # their effects
    nu: float | None = None  # Davidson's attentive tie parameter (ties modelled; bayes_annot.ties)
    tie_rate: float | None = None  # the casual tie rate t (ties modelled)
    style: object = None  # the attentive style term's design (bayes_annot.style.StyleDesign), if any
    style_delta: np.ndarray | None = None  # its effects, shared by the classes

    @property
    def pi(self) -> float:
        """Attentive share ``1 - casual_share`` (the two-class variant's ``pi``)."""
        return float(1.0 - self.casual_share)

    def as_start(self) -> dict:
        """This fit as a start for :func:`fit_tastes` (``init=[result.as_start()]``)."""
        start = {"strengths": self.strengths.copy(), "shares": self.shares.copy(), "q": float(self.q)}
        if self.casual_g is not None:
            start["casual_g"] = self.casual_g.copy()
        if self.nu is not None:
            start.update(tie_nu=float(self.nu), casual_tie_rate=float(self.tie_rate))
        if self.style_delta is not None:
            start["style_delta"] = np.asarray(self.style_delta, dtype=float).copy()
        return start

    def casual_arg(self):
        """The casual side the block passes take: ``q``, or the casual table (casual covariates)."""
        if self.casual is None:
            return float(self.q)
        return casual_table(float(logit(self.q)), self.casual_g, self.casual.design())

    def parameters(self) -> dict:
        """Global parameters as a flat dict (for ``summary.json``)."""
        out = {"pi": self.pi, "q": float(self.q)}
        for k, share in enumerate(self.shares, start=1):
            out[f"share_taste_{k}"] = float(share)
        active = self.n_labels_user > 0
        out["mean_quality"] = float(np.mean(self.quality[active])) if active.any() else self.pi
        if self.nu is not None:
            out.update(tie_nu=float(self.nu), casual_tie_rate=float(self.tie_rate))
        return out


# --------------------------------------------------------------------------- fitting (the block EM engine)


def problem_runner(problem: UsableLabels) -> LocalRunner:
    """The in-memory runner of a learned-strength problem: one block over all users (its own pair vocabulary)."""
    if not problem.learned:
        raise ValueError(
            "taste classes need learned strengths: with known attentive probabilities (p_a / mu) "
            "the model stays one class"
        )
    if problem.tie_user is not None:  # ties in the likelihood: the decided labels, then the ties (one vocabulary)
        n = problem.n_labels
        pairs = PairTable.from_labels(np.concatenate([problem.model_a, problem.tie_model_a]),
                                      np.concatenate([problem.model_b, problem.tie_model_b]), problem.n_models)[0]
        decided = np.arange(n + problem.n_ties) < n
        tie_pair, styled = pairs.index(problem.tie_model_a, problem.tie_model_b), {}
        if problem.tie_casual_cell is not None:  # an attentive style term: ties by (pair, casual cell)
            tie_pair = tie_pair.astype(np.int64) * problem.n_casual + problem.tie_casual_cell
            styled = {"n_tie_casual": problem.n_casual}
        block = make_block(np.concatenate([problem.user, problem.tie_user]), decided, problem.n_models,
                           cell=pairs.cells(problem.model_a, problem.model_b, problem.choice_a),
                           users=np.arange(problem.n_users), pairs=pairs, casual_cell=problem.casual_cell,
                           n_casual=problem.n_casual, tie=~decided, tie_pair=tie_pair, **styled)
        return LocalRunner([block], problem.n_users, pairs)
    pairs, index = PairTable.from_labels(problem.model_a, problem.model_b, problem.n_models)
    block = make_block(problem.user, np.ones(problem.n_labels, dtype=bool), problem.n_models,
                       cell=(2 * index + problem.choice_a).astype(np.int32), users=np.arange(problem.n_users), pairs=pairs,
                       casual_cell=problem.casual_cell, n_casual=problem.n_casual)
    return LocalRunner([block], problem.n_users, pairs)


@dataclass
class _Fitter:
    """One problem's runner and settings: EM runs (:func:`~bayes_annot.block_em.run_class_em`) and start tables."""

    runner: object
    n_models: int
    priors: Priors
    q_fixed: float | None
    tol: float
    max_iter: int
    informative_tol: float
    casual: object = None
    style: object = None

    def run(self, strengths, shares, q, callback=None, casual_g=None, nu=None, tie_rate=None, style_delta=None):
        return run_class_em(
            self.runner, self.n_models, shares, q, strengths, priors=self.priors, q_fixed=self.q_fixed, tol=self.tol,
            max_iter=self.max_iter, informative_tol=self.informative_tol, callback=callback, casual=self.casual,
            casual_g=casual_g, nu=nu, tie_rate=tie_rate, style=self.style, style_delta=style_delta,
        )

    def plain_bt(self, weights=None) -> np.ndarray:
        """Bradley–Terry fit of the labels, each user's weighted by ``weights`` (``(U,)``; ``(U, C)``: one fit per column)."""
        cells = self.runner.cell_counts() if weights is None else self.runner.user_cells(weights)
        fit = lambda c: fit_bradley_terry_pairs(self.runner.pairs, c[1::2], c[0::2], self.priors.strength_sigma)  # noqa: E731
        return fit(cells) if cells.ndim == 1 else np.stack([fit(c) for c in cells.T])


def _split_start(f: _Fitter, base, rng=None):
    """Add one class to a fitted solution: BT on labels weighted by each user's casual posterior
    (times random Exp(1) factors: the reweighted split)."""
    w_user = base.p_casual * (base.n_user > 0)
    if rng is not None:
        w_user = w_user * rng.exponential(1.0, size=w_user.shape[0])
    shares = np.concatenate([base.shares, [(1.0 - base.shares.sum()) / 2.0]])
    return np.vstack([base.strengths, f.plain_bt(w_user)]), shares


def _split_chain(f: _Fitter, base, n_tastes: int, rng=None):
    """Grow ``base`` to ``n_tastes`` classes one split at a time, fitting each intermediate ``C``;
    returns the last start ``(strengths, shares, q)``."""
    for c in range(base.shares.shape[0] + 1, n_tastes + 1):
        s0, sh0 = _split_start(f, base, rng)
        if c == n_tastes:
            return s0, sh0, base.q
        base = f.run(s0, sh0, base.q)


def _perturbed_start(s_bt, n_classes, rng):
    """Class 1 the plain Bradley–Terry fit; every other class a random ranking, N(0, scale^2)
    strengths with ``scale = max(1, 2 sd(s_BT))`` (a pooled fit is flattened when tastes disagree)."""
    scale = max(1.0, 2.0 * float(np.std(s_bt)))
    rows = [s_bt.copy()] + [rng.normal(0.0, scale, size=s_bt.shape[0]) for _ in range(n_classes - 1)]
    return np.vstack(rows), np.full(n_classes, 0.6 / n_classes)


def _partition_start(f: _Fitter, active, n_classes, rng):
    """Random user partition into casual / classes; each class's BT fit on its users' labels."""
    group = rng.integers(0, n_classes + 1, size=active.shape[0])
    strengths = f.plain_bt((group[:, None] == np.arange(1, n_classes + 1)[None, :]).astype(float))
    counts = np.bincount(group[active], minlength=n_classes + 1)[1:].astype(float) + 1.0
    return strengths, 0.7 * counts / counts.sum()


def _order_and_package(f: _Fitter, run, extra) -> TasteResult:
    order = np.argsort(-run.shares, kind="stable")
    shares, strengths, p_taste = run.shares[order], run.strengths[order], run.p_taste[:, order]
    n_classes = len(shares)
    # No verdict on users none of whose labels any class can tell from a coin (as every engine):
    # population-level quality, or the prior's when nobody is informative.
    informative, active = run.informative, run.n_user > 0
    level_shares = no_verdict_shares(shares, informative.any(), f.priors)
    no_verdict = ~active | ~informative
    quality = np.where(no_verdict, float(level_shares.sum()), run.quality)
    p_taste = np.where(no_verdict[:, None], level_shares[None, :], p_taste)
    data_ll = float(run.user_loglik[active].sum())
    n_params = n_classes * (f.n_models - 1) + n_classes + (1 if f.q_fixed is None else 0)
    n_params += 0 if f.casual is None else f.casual.n_effects
    n_params += 0 if run.nu is None else 2
    n_params += 0 if f.style is None else f.style.n_effects
    return TasteResult(
        n_tastes=n_classes, quality=quality, p_taste=p_taste, taste=(np.argmax(p_taste, axis=1) + 1).astype(np.int64),
        strengths=strengths, shares=shares, casual_share=float(1.0 - shares.sum()), q=float(run.q),
        loglik=run.loglik, data_loglik=data_ll, n_params=int(n_params),
        bic=float(-2.0 * data_ll + n_params * np.log(max(float(run.n_user.sum()), 1.0))),
        loglik_trace=run.loglik_trace, n_iter=run.n_iter, converged=run.converged, informative=informative,
        n_labels_user=run.n_user.astype(np.int64), class_spread=np.std(strengths, axis=1),
        user_loglik=np.where(active, run.user_loglik, 0.0), casual=f.casual, casual_g=run.casual_g, nu=run.nu,
        tie_rate=run.tie_rate, style=f.style, style_delta=run.style_delta, **extra,
    )


def _fit_chain(f: _Fitter, n_tastes, n_starts, seed, init=None, callback=None):
    """Every start's run for ``n_tastes`` classes (split first, then seeded, then ``init``)."""
    extra = []
    for start in init or []:
        strengths = np.asarray(start["strengths"], dtype=float).reshape(n_tastes, f.n_models)
        shares = np.asarray(start["shares"], dtype=float).reshape(n_tastes)
        extra.append(f.run(strengths, shares, float(start.get("q", 0.5)), casual_g=start.get("casual_g"),
                           nu=start.get("tie_nu"), tie_rate=start.get("casual_tie_rate"),
                           style_delta=start.get("style_delta")))
    if n_starts == 0:
        return extra
    s_bt = f.plain_bt()
    base = f.run(s_bt[None, :], np.array([0.5]), 0.5, callback if n_tastes == 1 else None)
    if n_tastes == 1:
        return [base] + extra
    runs = [f.run(*_split_chain(f, base, n_tastes))]  # split start: grow one class at a time from C = 1
    runs += _seeded_runs(f, s_bt, base.n_user > 0, n_tastes, n_starts, np.random.default_rng(seed),
                         lambda rng: _split_chain(f, base, n_tastes, rng))
    return runs + extra


def _seeded_runs(f: _Fitter, s_bt, active, n_classes: int, n_starts: int, rng, reweighted) -> list:
    """The runs of starts ``1..n_starts - 1``, in turn a perturbed, a random partition and a reweighted split
    start (``reweighted(rng)`` gives the last: its base differs between callers)."""
    runs = []
    for i in range(1, n_starts):
        kind = ("perturbed", "partition", "reweighted")[(i - 1) % 3]
        if kind == "perturbed":
            start = (*_perturbed_start(s_bt, n_classes, rng), 0.5)
        elif kind == "partition":
            start = (*_partition_start(f, active, n_classes, rng), 0.5)
        else:
            start = reweighted(rng)
        runs.append(f.run(*start))
    return runs


def fit_tastes(
    problem,
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
    casual=None,
    style=None,
) -> TasteResult:
    """Fit the two-class variant with ``n_tastes`` taste classes by EM (MAP).

    Every EM run is :func:`bayes_annot.block_em.run_class_em` over a *runner*: the
    in-memory one of ``problem`` (:func:`problem_runner`), or any runner given instead
    (:class:`~bayes_annot.block_em.LocalRunner` over an update's merged block,
    :class:`~bayes_annot.dask_em.DaskRunner` over a Dask DataFrame's partitions);
    the starts only need per-user weighted cell tables (``runner.user_cells``).

    Parameters
    ----------
    problem : UsableLabels or runner
        Learned-strength problem (``problem.known_logit_mu is None``), or a runner
        with a pair vocabulary (``runner.pairs``).
    n_tastes : int
        Number of taste classes ``C >= 1``; ``C = 1`` is the two-class variant
        and reproduces the two-class EM of :func:`bayes_annot.fit`.
    priors : Priors, optional
        ``pi_alpha`` is each class's Dirichlet concentration, ``pi_beta`` the casual type's.
    q_fixed : float, optional
        Fix the casual position bias; estimated when ``None``.
    n_starts : int
        Seeded starts for ``C >= 2`` (``C = 1`` has one deterministic start);
        ``0`` runs the ``init`` starts only (a warm-started update).
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
    casual : CasualDesign, optional
        Casual clicks follow these covariates (the problem's or runner's labels carry casual cells).
    style : StyleDesign, optional
        An attentive style term (:mod:`bayes_annot.style`, with ``casual``): every class's attentive log-odds
        get ``delta' x`` of the row's casual cell, one ``delta`` shared by the classes (docs/tastes.md).

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
    if n_starts < 0 or (n_starts == 0 and not init):
        raise ValueError("n_starts must be at least 1 (or 0 with init starts)")
    t0 = time.perf_counter()
    runner = problem_runner(problem) if isinstance(problem, UsableLabels) else problem
    if getattr(runner, "pairs", None) is None:
        raise ValueError("taste classes need learned strengths (known p_a / mu stays one class)")
    f = _Fitter(runner, runner.pairs.n_models, priors or Priors(), q_fixed, tol, max_iter, informative_tol, casual,
                style)
    runs = _fit_chain(f, int(n_tastes), n_starts, seed, init, callback)
    return _best_run(f, runs, agree_tol, t0)[1]


def _best_run(f: _Fitter, runs, agree_tol: float, t0: float):
    """The best of ``runs`` (its raw run and its :class:`TasteResult`)."""
    logliks = [r.loglik for r in runs]
    top = max(logliks)
    # a start stopped by ``tol`` may sit a little short of its optimum: starts within the EM
    # tolerance of the best reached the same optimum, and the first of them is the fit (not the
    # one rounding put on top: the engines sum in different orders, and must pick the same run)
    same = 10.0 * f.tol * (1.0 + abs(top))
    best = next(i for i, v in enumerate(logliks) if v >= top - same)
    agreed = int(sum(abs(v - top) <= max(agree_tol, same) for v in logliks))
    return runs[best], _order_and_package(
        f, runs[best],
        dict(starts_agreed=agreed, n_starts=len(logliks), start_logliks=[float(v) for v in logliks],
             runtime_seconds=time.perf_counter() - t0),
    )


def _grown_fits(f: _Fitter, max_tastes: int, n_starts: int, seed: int, agree_tol: float = 1e-2) -> dict:
    """Fits of ``C = 1..max_tastes`` classes to one runner's labels alone, each ``C`` grown from the best
    ``C - 1`` fit: ``C = 1`` the deterministic start; for ``C >= 2`` start 0 splits the best ``C - 1`` fit
    (:func:`_split_start`), and the other ``n_starts - 1`` starts are :func:`fit_tastes`'s seeded ones
    (perturbed, random partition, reweighted split: the same draws for the same ``seed``). ``C = 2`` is
    thus ``fit_tastes(runner, 2, n_starts, seed=seed)`` exactly; with ``n_starts = 1`` every ``C`` is
    ``fit_tastes(runner, C, n_starts=1)``'s (the split chain), computed once for all ``C``."""
    t0 = time.perf_counter()
    s_bt = f.plain_bt()
    prev, out = _best_run(f, [f.run(s_bt[None, :], np.array([0.5]), 0.5)], agree_tol, t0)
    fits = {1: out}
    active = prev.n_user > 0
    for c in range(2, max_tastes + 1):
        t0 = time.perf_counter()
        base = prev
        runs = [f.run(*_split_start(f, base), base.q)]
        # each C's seeded starts are fit_tastes(..., C, seed=seed)'s (a fresh generator per C)
        runs += _seeded_runs(f, s_bt, active, c, n_starts, np.random.default_rng(seed),
                             lambda rng, base=base: (*_split_start(f, base, rng), base.q))
        prev, fits[c] = _best_run(f, runs, agree_tol, t0)
    return fits


# --------------------------------------------------------------------------- the objective at given parameters


def type_logliks(problem: UsableLabels, strengths, q, casual_log_table=None, ties=None, offsets=None) -> np.ndarray:
    """Per-user log-likelihood of each user type at given parameters.

    Parameters
    ----------
    problem : UsableLabels
        Learned-strength problem.
    strengths : array (C, K) or (S, C, K)
        Each class's strengths; a leading axis evaluates ``S`` parameter draws.
    q : float or array (S,)
        Casual position bias (one per draw).
    casual_log_table : array (2 n_casual,), optional
        The casual log-probability table (casual covariates: the problem has casual cells); replaces ``q``.
    ties : tuple (nu, t), optional
        Ties in the likelihood (the problem holds them; :mod:`bayes_annot.ties`): Davidson's ``nu`` and the
        casual tie rate ``t`` (floats, or arrays (S,) with a draw axis). Required when the problem has ties.
    offsets : array (n_casual,) or (S, n_casual), optional
        An attentive style term (:mod:`bayes_annot.style`): each casual cell's offset ``delta' x``, added to every
        class's attentive log-odds of the labels (and ties) in that cell.

    Returns
    -------
    numpy.ndarray
        ``(U, C + 1)`` (or ``(S, U, C + 1)``): column 0 the casual sum
        :math:`C_u`, column ``c`` the attentive sum :math:`A^{(c)}_u` (module
        docstring; with ties, Davidson's attentive probabilities and the casual ``t``, ties included);
        0 for users without labels.
    """
    runner = problem_runner(problem)
    block, pairs = runner.blocks[0], runner.pairs
    strengths = np.asarray(strengths, dtype=float)
    if runner.ties and ties is None:
        raise ValueError("the problem holds ties: type_logliks needs ties=(nu, t)")

    def one(s, q, nu=None, t=None, off=None):
        cas = float(q) if casual_log_table is None else casual_log_table
        if off is not None:  # a style term: tables per joint entry (pair, casual cell, choice)
            if nu is None or not runner.ties:
                return block_type_logliks(block, cas, np.column_stack([style_table(row, pairs.a, pairs.b, off)
                                                                       for row in s]))
            parts = [style_davidson_tables(row, pairs.a, pairs.b, off, float(nu)) for row in s]
        elif nu is None or not runner.ties:
            tables = np.column_stack([attentive_table_pairs(row, pairs.a, pairs.b) for row in s])
            return block_type_logliks(block, cas, tables)
        else:
            parts = [davidson_tables(row, pairs.a, pairs.b, float(nu)) for row in s]
        return block_type_logliks(block, cas, np.column_stack([p[0] for p in parts]),
                                  ties=(np.column_stack([p[1] for p in parts]), float(t)))

    nu, t = (None, None) if ties is None else ties
    if strengths.ndim == 2:
        return one(strengths, q, nu, t, None if offsets is None else np.asarray(offsets, dtype=float))
    n_draws = strengths.shape[0]
    q = np.broadcast_to(np.asarray(q, dtype=float), (n_draws,))
    nus = [None] * n_draws if nu is None else np.broadcast_to(np.asarray(nu, dtype=float), (n_draws,))
    ts = [None] * n_draws if t is None else np.broadcast_to(np.asarray(t, dtype=float), (n_draws,))
    offs = [None] * n_draws if offsets is None else np.broadcast_to(np.asarray(offsets, dtype=float),
                                                                    (n_draws, np.shape(offsets)[-1]))
    return np.stack([one(s, qq, v, tt, o) for s, qq, v, tt, o in zip(strengths, q, nus, ts, offs)])


def taste_loglik(
    problem: UsableLabels,
    strengths,
    shares,
    q: float,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    penalised: bool = True,
    casual_log_table=None,
    ties=None,
    offsets=None,
) -> float:
    """The EM objective of :func:`fit_tastes` at given parameters.

    Parameters
    ----------
    problem : UsableLabels
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
    casual_log_table : array, optional
        Casual covariates: the casual table (:func:`bayes_annot.casual.casual_table`) at ``q`` and the
        effects; the effects' own prior is the caller's.
    ties : tuple (nu, t), optional
        Ties in the likelihood (:func:`type_logliks`); their LogNormal / Beta prior is added when penalised.
    offsets : array (n_casual,), optional
        An attentive style term's offsets per casual cell (:func:`type_logliks`); the effects' own prior is the
        caller's.

    Returns
    -------
    float
    """
    priors = priors or Priors()
    strengths = np.asarray(strengths, dtype=float).reshape(-1, problem.n_models)
    shares = np.asarray(shares, dtype=float).reshape(strengths.shape[0])
    q = float(q_fixed) if q_fixed is not None else float(q)
    user_ll = lse_rows(log_type_shares(shares)[None, :] + type_logliks(problem, strengths, q, casual_log_table, ties,
                                                                        offsets))
    active = labelled_users(problem)
    value = float(user_ll[active].sum())
    if not penalised:
        return value
    tie_prior = 0.0 if ties is None or not problem.n_ties else log_prior_ties(float(ties[0]), float(ties[1]), priors)
    return value + log_prior(priors, q, strengths, q_fixed is None, shares=shares) + tie_prior


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


def problem_from(data) -> UsableLabels:
    """An :class:`UsableLabels` from a problem, ``PreparedData``, a frame or a file path (learned strengths)."""
    from .data import PreparedData, prepare, read_table
    from .problem import build_problem

    if isinstance(data, UsableLabels):
        return data
    if isinstance(data, (str, Path)):
        data = read_table(data)
    if isinstance(data, pd.DataFrame):
        data = prepare(data)
    if isinstance(data, PreparedData):
        problem, _ = build_problem(data, use_p_a=False)
        return problem
    raise TypeError(f"expected an UsableLabels, PreparedData, DataFrame or path, got {type(data).__name__}")


def subproblem(problem: UsableLabels, mask: np.ndarray) -> UsableLabels:
    """The labels ``mask`` selects, with the same user and model codes (learned strengths).

    With ties in the likelihood ``mask`` runs over the decided labels, then the ties
    (``n_labels + n_ties``, as :func:`heldout_folds`); the ties it selects stay ties."""
    mask = np.asarray(mask, dtype=bool)
    n = problem.n_labels
    if mask.shape[0] != n + problem.n_ties:
        raise ValueError(f"the mask has {mask.shape[0]} entries for {n} labels and {problem.n_ties} ties")
    ties = {}
    if problem.tie_user is not None:
        tie = mask[n:]
        ties = dict(tie_user=problem.tie_user[tie], tie_model_a=problem.tie_model_a[tie],
                    tie_model_b=problem.tie_model_b[tie])
        if problem.tie_casual_cell is not None:  # an attentive style term: the ties' casual cells
            ties["tie_casual_cell"] = problem.tie_casual_cell[tie]
        mask = mask[:n]
    return UsableLabels(
        user=problem.user[mask], model_a=problem.model_a[mask], model_b=problem.model_b[mask],
        choice_a=problem.choice_a[mask], n_users=problem.n_users, n_models=problem.n_models,
        known_logit_mu=None, casual_cell=None if problem.casual_cell is None else problem.casual_cell[mask],
        n_casual=problem.n_casual, **ties,
    )


def label_users(problem: UsableLabels) -> np.ndarray:
    """The user of every label in the likelihood: the decided labels, then the ties (when modelled)."""
    return problem.user if problem.tie_user is None else np.concatenate([problem.user, problem.tie_user])


def labelled_users(problem: UsableLabels) -> np.ndarray:
    """Users with at least one label in the likelihood (a decided label, or a tie when ties are modelled)."""
    return np.bincount(label_users(problem), minlength=problem.n_users) > 0


# --------------------------------------------------------------------------- choosing C


def heldout_folds(problem: UsableLabels, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold of every label: each user's labels are shuffled (seeded) and dealt round-robin
    into ``n_folds`` folds from a random offset, so every user is spread evenly over the folds.
    With ties in the likelihood they are labels too: the folds run over the decided labels, then the ties."""
    rng = np.random.default_rng(seed)
    user = label_users(problem)
    n = user.shape[0]
    key = rng.random(n)
    order = np.lexsort((key, user))
    sorted_user = user[order]
    first = np.searchsorted(sorted_user, sorted_user, side="left")
    position = np.arange(n) - first
    offset = rng.integers(0, n_folds, size=problem.n_users)
    folds = np.empty(n, dtype=np.int64)
    folds[order] = (position + offset[sorted_user]) % n_folds
    return folds


def heldout_user_scores(train: UsableLabels, test: UsableLabels, res: TasteResult) -> np.ndarray:
    """Per-user log predictive of the ``test`` labels under a fit ``res`` of the ``train`` labels.

    The mixture over the user's types (casual, taste class 1..C) weighted by their
    posterior given their training labels (the fitted shares for a user without
    any): a user's type persists across their labels. ``train`` and ``test`` share
    the user and model codes (0 for users without test labels). The one held-out
    score of the taste model, used by :func:`select_tastes` and
    :func:`bayes_annot.evaluate.heldout_loglik` (``tastes=``). A fit with an
    attentive style term (``res.style``) adds its offset ``delta' x`` of each label's
    casual cell to every class's attentive log-odds, on both sides.
    """
    strengths = np.atleast_2d(res.strengths)
    table = None if getattr(res, "casual", None) is None else res.casual_arg()
    ties = None if getattr(res, "nu", None) is None else (res.nu, res.tie_rate)  # ties scored by the model
    offsets = None
    if getattr(res, "style", None) is not None and res.style_delta is not None:
        offsets = style_offsets(res.style.values(res.casual), res.style_delta)
    lw = log_type_shares(np.atleast_1d(res.shares))[None, :] + type_logliks(train, strengths, res.q, table, ties,
                                                                            offsets)
    log_post = lw - lse_rows(lw)[:, None]
    active = labelled_users(test)
    return np.where(active, lse_rows(log_post + type_logliks(test, strengths, res.q, table, ties, offsets)), 0.0)


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
    fold_starts: int | None = None,
    casual=None,
    style=None,
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
    data_or_problem : UsableLabels, PreparedData, DataFrame or path
    max_tastes : int
        Largest ``C`` tried (``1..max_tastes``).
    n_folds : int
    n_starts : int
        Starts of the full-data fits (``fits``).
    fold_starts : int, optional
        Starts of each fold's fit of ``C`` classes (default ``n_starts``: a fold's optimum is searched
        as hard as the full data's), all from the fold's training labels alone: the fold's ``C = 1``
        fit, then each ``C`` from a split of the fold's own best ``C - 1`` fit (start 0), plus
        ``fold_starts - 1`` seeded starts (seed ``seed + 1 + fold``, :func:`fit_tastes`'s kinds and
        draws); the best training penalised log-likelihood is kept. No fold fit starts from the
        full-data fits: they have seen the held-out labels, and a start there leaks them into the
        score (it inflated the held-out gain of extra classes; docs/tastes.md). A fold's fit of
        ``C = 2`` is ``fit_tastes(train, 2, n_starts=fold_starts, seed=seed + 1 + fold)``.
    seed, priors, q_fixed, tol, max_iter :
        ``tol`` is looser than :func:`fit_tastes`'s default for speed; the
        full-data fits in ``fits`` use it too.
    casual, style :
        Casual covariates (a ``CasualDesign``) and an attentive style term (a ``StyleDesign``), as
        :func:`fit_tastes` takes them: every fit has them, and the held-out scores use them
        (:func:`heldout_user_scores`).

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
    fold_starts = n_starts if fold_starts is None else fold_starts
    if fold_starts < 1:
        raise ValueError("fold_starts must be at least 1")
    priors = priors or Priors()
    folds = heldout_folds(problem, n_folds, seed)
    fits = {c: fit_tastes(problem, c, priors=priors, q_fixed=q_fixed, n_starts=n_starts, casual=casual, style=style,
                          seed=seed, tol=tol, max_iter=max_iter) for c in range(1, max_tastes + 1)}
    per_user = {c: np.zeros(problem.n_users) for c in fits}
    for f in range(n_folds):
        # each fold's fits see its training labels only (nothing of the full-data fits, which saw the
        # held-out labels): C = 1, then each C grown from the fold's own best C - 1 fit
        train, test = subproblem(problem, folds != f), subproblem(problem, folds == f)
        runner = problem_runner(train)
        fitter = _Fitter(runner, runner.pairs.n_models, priors, q_fixed, tol, max_iter, INFORMATIVE_TOL,
                         casual, style)
        for c, res in _grown_fits(fitter, max_tastes, fold_starts, seed + 1 + f).items():
            per_user[c] += heldout_user_scores(train, test, res)
    n_labels = problem.n_labels + problem.n_ties
    active = labelled_users(problem)
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


def _bt_bias_loglik(theta, w1, w0) -> float:
    """sum W1 log s(d) + W0 log s(-d), d = s_a - s_b + beta (``theta = (s, beta)``): Bradley–Terry with a position bias."""
    k = w1.shape[0]
    d = theta[:k, None] - theta[None, :k] + theta[k]
    return float((w1 * log_expit(d)).sum() + (w0 * log_expit(-d)).sum())


def _fit_bt_bias(w1, w0, sigma=10.0, tol=1e-10, max_iter=100):
    """Maximise :func:`_bt_bias_loglik` with a weak ridge on ``(s, beta)`` (Newton)."""
    k = w1.shape[0]

    def objective(theta):
        s, beta = theta[:k], theta[k]
        return _bt_bias_loglik(theta, w1, w0) - 0.5 * (s @ s) / sigma**2 - 0.5 * beta**2 / sigma**2

    def direction(theta):
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
        return np.linalg.solve(neg, grad)

    return newton_ascent(objective, direction, np.zeros(k + 1), tol, max_iter)


def _lr_statistic(problem: UsableLabels, mask: np.ndarray, choice: np.ndarray):
    """LR of BT+position bias vs position bias alone on the labels in ``mask`` (exact likelihoods)."""
    k = problem.n_models
    cell = (problem.model_a[mask].astype(np.int64) * k + problem.model_b[mask]) * 2 + choice[mask]
    w1, w0 = pair_weights(cell, None, k)
    theta, _ = _fit_bt_bias(w1, w0)
    s = theta[:k]
    l_alt = _bt_bias_loglik(theta, w1, w0)
    n, n_a = float(mask.sum()), float(choice[mask].sum())
    q = n_a / n
    l_null = (n_a * np.log(q) if n_a > 0 else 0.0) + ((n - n_a) * np.log1p(-q) if n_a < n else 0.0)
    return max(2.0 * (l_alt - l_null), 0.0), s, q


#: Weak priors of the casual-group test's fits with casual covariates (near maximum likelihood).
_LR_PRIORS = Priors(q_alpha=1.0, q_beta=1.0, casual_effect_sigma=10.0)


def _casual_counts(cells: np.ndarray, choice: np.ndarray, n_cells: int) -> np.ndarray:
    """``(2 n_cells,)`` counts of labels choosing ``model_b`` / ``model_a`` per casual cell (as ``casual_table``)."""
    return np.bincount(2 * cells.astype(np.int64) + choice, minlength=2 * n_cells).astype(float)


def _fit_bt_casual(problem: UsableLabels, mask: np.ndarray, choice: np.ndarray, design_matrix: np.ndarray,
                   sigma: float = 10.0, tol: float = 1e-10, max_iter: int = 100):
    """Bradley–Terry plus the casual side's terms, ``logit P(a) = s_a - s_b + beta0 + D[cell] g``, on the labels
    in ``mask``, with a weak ridge (Newton on the distinct (pair, cell) combinations); returns ``(s, loglik)``."""
    k, n_eff = problem.n_models, design_matrix.shape[1]
    ma, mb = problem.model_a[mask].astype(np.int64), problem.model_b[mask].astype(np.int64)
    cell = problem.casual_cell[mask].astype(np.int64)
    key, inverse = np.unique((ma * k + mb) * design_matrix.shape[0] + cell, return_inverse=True)
    w1 = np.bincount(inverse, weights=choice[mask], minlength=len(key))
    n = np.bincount(inverse, minlength=len(key)).astype(float)
    pair, cc = key // design_matrix.shape[0], key % design_matrix.shape[0]
    x = np.zeros((len(key), k + 1 + n_eff))
    x[np.arange(len(key)), pair // k] += 1.0
    x[np.arange(len(key)), pair % k] -= 1.0
    x[:, k] = 1.0
    x[:, k + 1:] = design_matrix[cc]

    def loglik(theta):
        eta = x @ theta
        return float(w1 @ log_expit(eta) + (n - w1) @ log_expit(-eta))

    def objective(theta):
        return loglik(theta) - 0.5 * float(theta @ theta) / sigma**2

    def direction(theta):
        p = expit(x @ theta)
        grad = x.T @ (w1 - n * p) - theta / sigma**2
        neg = (x * (n * p * (1.0 - p))[:, None]).T @ x + np.eye(x.shape[1]) / sigma**2
        return np.linalg.solve(neg, grad)

    theta, _ = newton_ascent(objective, direction, np.zeros(x.shape[1]), tol, max_iter)
    return theta[:k], loglik(theta)


def _lr_statistic_casual(problem: UsableLabels, mask: np.ndarray, choice: np.ndarray, casual):
    """:func:`_lr_statistic` when casual clicks follow covariates: BT plus the casual side's terms against the
    casual side alone (``beta0 + D g`` of each label's casual cell); returns the null's ``(beta0, g)`` too."""
    from .casual import fit_casual

    design_matrix = casual.design()
    counts = _casual_counts(problem.casual_cell[mask], choice[mask], casual.n_cells)
    beta0, g = fit_casual(counts, design_matrix, 0.0, np.zeros(casual.n_effects), _LR_PRIORS, q_free=True)
    l_null = float(counts @ casual_table(beta0, g, design_matrix))
    s, l_alt = _fit_bt_casual(problem, mask, choice, design_matrix)
    return max(2.0 * (l_alt - l_null), 0.0), s, (beta0, g)


def casual_group_test(
    problem: UsableLabels,
    result_c1=None,
    threshold: float = 0.5,
    n_sim: int = 100,
    alpha: float = 0.01,
    seed: int = 0,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    min_labels: int = 20,
    casual=None,
    style=None,
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
    problem : UsableLabels
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
    casual : CasualDesign, optional
        Casual clicks follow these covariates (the problem's labels carry casual cells): the one-ranking
        fit has them, the casual side of the statistic is ``beta_0 + f(x)`` (fitted on the flagged labels;
        the alternative adds Bradley–Terry strengths to it), and under the null the flagged labels are
        redrawn from that fitted casual side: covariate-following clicks, not coin flips.
    style : StyleDesign, optional
        An attentive style term (:mod:`bayes_annot.style`, with ``casual``): the one-ranking fit and every
        bootstrap refit have it (one ``delta``), so the users are flagged by the styled model. The statistic
        is unchanged: its alternative's casual-cell terms ``D g`` already span the style offsets ``delta' x``
        (each a function of the label's casual cell).

    Returns
    -------
    CasualGroupTest
    """
    from scipy.stats import spearmanr

    if n_sim < 1.0 / alpha - 1.0:
        raise ValueError(f"n_sim = {n_sim} cannot reach p <= alpha = {alpha}: use n_sim >= {int(np.ceil(1 / alpha - 1))}")
    if casual is not None and problem.casual_cell is None:
        raise ValueError("casual_group_test with casual covariates needs the labels' casual cells")
    if style is not None and casual is None:
        raise ValueError("casual_group_test with a style term needs its casual covariates (casual=)")
    covariates = casual is not None
    priors = priors or Priors()
    active = np.bincount(problem.user, minlength=problem.n_users) > 0
    if result_c1 is None:
        result_c1 = fit_tastes(problem, 1, priors=priors, q_fixed=q_fixed, casual=casual, style=style)
    strengths = np.asarray(result_c1.strengths, dtype=float).reshape(-1, problem.n_models)
    if strengths.shape[0] != 1:
        raise ValueError("casual_group_test needs a one-ranking (C = 1) fit")
    pi0 = float(getattr(result_c1, "pi", None) or 1.0 - result_c1.casual_share)
    quality = np.asarray(result_c1.quality)
    flagged_user = active & (quality < threshold)
    mask = flagged_user[problem.user]
    n_flag, n_lab = int(flagged_user.sum()), int(mask.sum())
    if n_lab < min_labels:
        msg = f"{n_flag} user(s) flagged casual with {n_lab} labels: too few to tell noise from taste."
        return CasualGroupTest(np.nan, np.nan, "too few", msg, n_flag, n_lab, np.zeros(problem.n_models), np.nan,
                               np.array([]))
    choice = problem.choice_a.astype(np.int64)
    if covariates:
        stat, s_flag, (beta0_hat, g_hat) = _lr_statistic_casual(problem, mask, choice, casual)
        p_null = expit(beta0_hat + casual.design() @ g_hat)[problem.casual_cell[mask]]  # each flagged label's
    else:
        stat, s_flag, q_hat = _lr_statistic(problem, mask, choice)
        p_null = q_hat
    rho = float(spearmanr(s_flag, strengths[0]).statistic) if np.std(s_flag) > 0 else np.nan
    rng = np.random.default_rng(seed)
    null = np.empty(n_sim)
    for i in range(n_sim):
        sim_choice = choice.copy()
        sim_choice[mask] = rng.random(n_lab) < p_null
        # the ties (when modelled) are kept as they are: the refit is the fitted model, only the flagged
        # users' decided labels are redrawn
        sim = UsableLabels(user=problem.user, model_a=problem.model_a, model_b=problem.model_b,
                           choice_a=sim_choice.astype(np.int8), n_users=problem.n_users, n_models=problem.n_models,
                           casual_cell=problem.casual_cell if covariates else None,
                           n_casual=problem.n_casual if covariates else 0, tie_user=problem.tie_user,
                           tie_model_a=problem.tie_model_a, tie_model_b=problem.tie_model_b,
                           tie_casual_cell=problem.tie_casual_cell if covariates else None)
        run = run_class_em(problem_runner(sim), problem.n_models, [pi0], result_c1.q, strengths, priors=priors,
                           q_fixed=q_fixed, tol=1e-8, max_iter=500, casual=casual,
                           casual_g=getattr(result_c1, "casual_g", None) if covariates else None,
                           nu=getattr(result_c1, "nu", None), tie_rate=getattr(result_c1, "tie_rate", None),
                           style=style, style_delta=getattr(result_c1, "style_delta", None) if style is not None else None)
        sim_mask = (active & (run.quality < threshold))[problem.user]
        if sim_mask.sum() < min_labels:
            null[i] = 0.0
        elif covariates:
            null[i] = _lr_statistic_casual(sim, sim_mask, sim_choice, casual)[0]
        else:
            null[i] = _lr_statistic(sim, sim_mask, sim_choice)[0]
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
            f"what {'casual clicks following ' + ', '.join(casual.names) if covariates else 'coin flips'} produce "
            f"(likelihood ratio {stat:.1f}, bootstrap p = {p_value:.3g}): consistent with noise."
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
    tie_nu: float | None = None,
    casual_tie_rate: float | None = None,
    style_bias: float | None = None,
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
    tie_nu, casual_tie_rate : float, optional
        Ties (:mod:`bayes_annot.ties`, as :func:`bayes_annot.simulate.simulate`): an attentive label is a tie
        with Davidson's probability ``nu / (2 cosh(d / 2) + nu)`` (``d`` under the user's taste), a casual one
        with probability ``casual_tie_rate``; drawn from their own stream, so the other draws stay the seed's.
    style_bias : float, optional
        Attentive users of either taste also prefer length after reading (the attentive style term, one effect
        for both tastes): their log-odds are ``s_a - s_b + style_bias * log(L_a / L_b)`` (Davidson's ``d`` too).
        Adds ``prompt``, ``response_a``, ``response_b`` with lengths drawn as in
        :func:`~bayes_annot.simulate.simulate` (around ``60 exp(0.5 s_k)`` of the majority strengths, log-sd 0.5;
        their own random stream) and ``true_log_length_ratio``; casual clicks ignore length.

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
    d = sa - sb
    if style_bias is not None:
        length_rng = np.random.default_rng([seed, 1])  # its own stream: the other draws stay those of the seed
        words_a = _lengths(strengths[model_a], 0.5, 0.5, length_rng)
        words_b = _lengths(strengths[model_b], 0.5, 0.5, length_rng)
        log_ratio = np.log(words_a / words_b)
        d = d + float(style_bias) * log_ratio
    p_att = expit(d)
    p_choose_a = np.where(taste[user] == 0, q, p_att)
    choice_a = rng.random(n_rows) < p_choose_a
    winner_code = np.where(choice_a, 0, 1)
    categories = ["model_a", "model_b"]
    if tie_nu is not None or casual_tie_rate is not None:
        nu, t = float(tie_nu or 0.0), float(casual_tie_rate or 0.0)
        if nu < 0 or not 0.0 <= t < 1.0:
            raise ValueError("tie_nu must be >= 0 and casual_tie_rate in [0, 1)")
        p_tie = np.where(taste[user] == 0, t, nu / (2.0 * np.cosh(0.5 * d) + nu))
        winner_code = np.where(np.random.default_rng([seed, 2]).random(n_rows) < p_tie, 2, winner_code)
        categories.append("tie")
    width = len(str(max(n_users - 1, 1)))
    user_names = np.array([f"u{i:0{width}d}" for i in range(n_users)], dtype=object)
    model_names = np.array([f"model_{k}" for k in range(n_models)], dtype=object)
    frame = pd.DataFrame(
        {
            "user": pd.Categorical.from_codes(user, categories=user_names),
            "model_a": pd.Categorical.from_codes(model_a, categories=model_names),
            "model_b": pd.Categorical.from_codes(model_b, categories=model_names),
            "winner": pd.Categorical.from_codes(winner_code, categories=categories),
            "true_attentive": taste[user] > 0,
            "true_taste": taste[user],
            "true_eta": (taste[user] > 0).astype(float),
            "true_p_a": p_att,
            "true_strength_a": sa,
            "true_strength_b": sb,
        }
    )
    if style_bias is not None:
        frame["prompt"] = [f"Prompt {i}" for i in range(n_rows)]
        frame["response_a"] = _texts(words_a)
        frame["response_b"] = _texts(words_b)
        frame["true_log_length_ratio"] = log_ratio
    return frame
