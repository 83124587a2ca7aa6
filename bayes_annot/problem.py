"""The problem a fit solves: a prepared log's labels as the engines' arrays, and what engines hand back.

:func:`build_problem` turns :class:`~bayes_annot.data.PreparedData` into an
:class:`~bayes_annot.em.UsableLabels` (the usable labels, and the attentive
log-odds when the strengths are known); :class:`Estimates` is the
engine-neutral result every engine (EM, Dask, MAP, NUTS) returns, which
:func:`bayes_annot.fit` turns into a :class:`~bayes_annot.fit.FitResult`.
This is the model layer: it imports only data, errors and the model's maths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from .ufuncs import log_expit, logit

from .casual import CasualDesign
from .data import PreparedData
from .em import UsableLabels, row_logit_mu, tie_logit_mu
from .errors import InputError
from .likelihood import two_class_posterior
from .pairs import PairTable

__all__ = [
    "Estimates", "ProblemSize", "build_problem", "strength_mode", "pair_counts", "graph_components",
    "known_strengths", "quality_floor", "block_quality_floor", "problem_key", "tie_rows",
]


@dataclass
class Estimates:
    """What any engine hands back (arrays over all users / models)."""

    engine: str
    variant: str
    quality: np.ndarray
    p_good: np.ndarray  # P(user is good | data): two-class P(attentive) (= quality); continuous P(eta_u >= 1/2),
    # the users table's p_eta_above_half. What the filter rules rank on (docs/outputs.md, "Names").
    n_labels_user: np.ndarray
    informative: np.ndarray
    strengths: np.ndarray | None
    parameters: dict
    quality_low: np.ndarray | None = None
    quality_high: np.ndarray | None = None
    strength_low: np.ndarray | None = None
    strength_high: np.ndarray | None = None
    loglik: float | None = None
    loglik_trace: list = field(default_factory=list)
    n_iter: int | None = None
    converged: bool | None = None
    runtime_seconds: float = 0.0
    diagnostics: dict = field(default_factory=dict)
    user_loglik: np.ndarray | None = None
    idata: object | None = None
    extra_user_columns: dict = field(default_factory=dict)
    extra_model_columns: dict = field(default_factory=dict)
    extra_summary: dict = field(default_factory=dict)
    quality_floor: np.ndarray | None = None  # two-class: quality had every label gone the least attentive way


def build_problem(
    data: PreparedData, mu: float | None = None, strong_model: str | None = None, use_p_a: bool = True,
    casual: CasualDesign | None = None, ties: bool = False, style: bool = False,
) -> tuple[UsableLabels, str]:
    """Turn prepared data into the engines' arrays; returns the problem and the strength mode.

    ``casual``: the casual covariates' design; each label then gets its casual cell from
    ``data.casual_x`` (:func:`bayes_annot.data.casual_covariates`). ``ties``: the tie rows
    (:func:`tie_rows`) enter the likelihood; with known strengths each tie gets its attentive log-odds as a
    decided label does (``mu``: ``±logit(mu)`` on pairs with the strong model, else 0; a ``p_a`` column: the
    tie row's ``logit(p_a)``, 0.5 where it is missing). ``style``: an attentive style term
    (:mod:`bayes_annot.style`) is fitted, so the ties get their casual cells too.
    """
    usable = data.usable
    choice = data.choice_a[usable].astype(np.int8)
    a = data.model_a[usable]
    b = data.model_b[usable]
    known = None
    mode = strength_mode(data, mu, strong_model, use_p_a)
    k = strong_model_code(mu, strong_model, data.model_labels)
    if k is not None:
        known = np.where(a == k, logit(mu), np.where(b == k, -logit(mu), 0.0))
    elif use_p_a and data.p_a is not None:
        known = logit(data.p_a[usable])
    problem = UsableLabels(
        user=data.user[usable],
        model_a=a,
        model_b=b,
        choice_a=choice,
        n_users=data.n_users,
        n_models=data.n_models,
        known_logit_mu=known,
    )
    if casual is not None:
        if data.casual_x is None or tuple(data.casual_names) != tuple(casual.names):
            raise InputError(
                f"the casual covariates {', '.join(casual.names)} are not all in this log "
                f"(it has {', '.join(data.casual_names) or 'none'})"
            )
        problem.casual_cell = casual.cells(data.casual_x[usable])
        problem.n_casual = casual.n_cells
    if ties:
        tie = tie_rows(data)
        problem.tie_user, problem.tie_model_a, problem.tie_model_b = data.user[tie], data.model_a[tie], data.model_b[tie]
        if mu is not None:
            problem.tie_logit_mu = np.where(problem.tie_model_a == k, logit(mu),
                                            np.where(problem.tie_model_b == k, -logit(mu), 0.0))
        elif not problem.learned:
            problem.tie_logit_mu = logit(data.p_a[tie])
        if style and casual is not None:
            problem.tie_casual_cell = casual.cells(data.casual_x[tie])
    return problem, mode


def tie_rows(data: PreparedData) -> np.ndarray:
    """Mask of the rows that are ties between two different models (``tie`` and ``tie (bothbad)``)."""
    return data.reason_code == 1


def strong_model_code(mu: float | None, strong_model: str | None, labels: np.ndarray) -> int | None:
    """The code of the strong model of a global ``mu`` among the model ``labels`` (``None`` without ``mu``), after
    checking the pair: ``mu`` in (0, 1), ``strong_model`` given and among the models; ``strong_model`` without ``mu``
    is an error too (the paper's setting half given: never learn strengths silently instead)."""
    if mu is None:
        if strong_model is not None:
            raise InputError(f"--strong-model '{strong_model}' needs --mu P (the probability an attentive user prefers it)")
        return None
    if not 0.0 < mu < 1.0:
        raise InputError(f"mu must lie in (0, 1), got {mu}")
    if strong_model is None:
        raise InputError("a global mu needs --strong-model NAME (the model an attentive user prefers with probability mu)")
    matches = np.flatnonzero(labels == str(strong_model).strip())
    if len(matches) == 0:
        raise InputError(f"strong model '{strong_model}' is not among the models: {', '.join(map(str, labels[:20]))}")
    return int(matches[0])


def strength_mode(data: PreparedData, mu: float | None, strong_model: str | None, use_p_a: bool) -> str:
    """How the attentive probabilities are set: ``learned``, or ``known (...)`` (summary.json's ``strengths``)."""
    if mu is not None:
        return f"known (mu={mu:g} for '{str(strong_model).strip()}')"
    if use_p_a and data.has_p_a:
        return f"known (column '{data.columns['p_a']}')"
    return "learned"


@dataclass
class ProblemSize:
    """What the summary and the block engine need to know of an :class:`~bayes_annot.em.UsableLabels`
    (used when the labels are already in an EM block and the per-row problem is not rebuilt)."""

    n_labels: int
    n_models: int
    learned: bool


def pair_counts(data: PreparedData, ties: bool = False, return_index: bool = False):
    """Usable labels per compared (model_a, model_b): a sparse :class:`~bayes_annot.pairs.PairTable`
    (only the pairs that occur; ``.toarray()`` is the ``K x K`` table). ``ties``: ties are in the
    likelihood, and counted too.

    ``return_index``: also the pair index of each usable label in row order (``None`` with ``ties``), as
    ``PairTable.index`` gives it, so that the EM block need not search the pairs again (0.08 s at 10^6
    labels over 10^6 pairs)."""
    usable = data.usable | tie_rows(data) if ties else data.usable
    table, index = PairTable.from_labels(data.model_a[usable], data.model_b[usable], data.n_models)
    if return_index:
        return table, None if ties else index
    return table


def graph_components(pairs) -> np.ndarray:
    """Connected part of each model in the comparison graph (``pairs``: a
    :class:`~bayes_annot.pairs.PairTable`, or a ``K x K`` count table)."""
    if isinstance(pairs, PairTable):
        return pairs.components()
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(csr_matrix(np.asarray(pairs) > 0), directed=False)
    return labels


def known_strengths(problem: UsableLabels, data: PreparedData, mu, strong_model) -> np.ndarray | None:
    """The fixed strengths of a global ``mu`` (the strong model above the others by ``logit(mu)``), else ``None``."""
    if mu is None:
        return None
    k = data.n_models
    strong = int(np.flatnonzero(data.model_labels == str(strong_model).strip())[0])
    s = np.full(k, -logit(mu) / k)
    s[strong] = logit(mu) * (k - 1) / k
    return s


def quality_floor(problem: UsableLabels, estimates: Estimates) -> np.ndarray | None:
    """Two-class: each user's quality had every one of their labels gone the least attentive way.

    Per label the likelihood ratio attentive / casual of the less attentive
    outcome, ``min(sigmoid(l) / q, sigmoid(-l) / (1 - q))`` (``l`` the attentive
    log-odds of choosing ``model_a``), multiplied over the user's labels and
    combined with the prior odds ``pi``. A user the filter keeps although this
    floor passes its threshold was kept whatever they clicked: no verdict
    (:func:`bayes_annot.decide.decide`). ``None`` for the continuous variant
    (per-user quality is not a closed form of the labels there).
    """
    if estimates.variant != "two-class" or problem.n_labels == 0 or "pi" not in estimates.parameters:
        return None
    pi, q = float(estimates.parameters["pi"]), float(estimates.parameters["q"])
    if problem.learned and estimates.strengths is None:
        return None
    eps = 1e-12
    k = problem.n_models
    effects = estimates.extra_summary.get("casual_effects")
    if "tie_nu" in estimates.parameters and getattr(problem, "tie_user", None) is not None:
        return _tie_quality_floor(problem, estimates, pi, q, effects)
    if getattr(problem, "casual_cell", None) is not None and effects:  # casual covariates: each label's own casual log-odds
        from .casual import casual_logits, design_from_summary, effects_start

        ell = np.asarray(row_logit_mu(problem, np.asarray(estimates.strengths, dtype=float) if problem.learned else None),
                         dtype=float)
        summary = {"casual_effects": effects}
        eta = casual_logits(effects["beta0"], effects_start(summary), design_from_summary(summary).design())
        eta = eta[problem.casual_cell]
        if estimates.extra_summary.get("style_effects"):  # the attentive style term: each label's own offset
            from .style import cell_offsets_from_summary

            summary["style_effects"] = estimates.extra_summary["style_effects"]
            ell = ell + cell_offsets_from_summary(summary)[problem.casual_cell]
        worst = np.minimum(log_expit(ell) - log_expit(eta), log_expit(-ell) - log_expit(-eta))
    elif problem.learned and k * k <= max(1 << 16, problem.n_labels):
        # the log-odds depend on the pair only: the same values per pair key a K + b, gathered per label
        s = np.asarray(estimates.strengths, dtype=float)
        ell = (s[:, None] - s[None, :]).ravel()
        worst_pair = np.minimum(log_expit(ell) - np.log(max(q, eps)), log_expit(-ell) - np.log(max(1.0 - q, eps)))
        worst = worst_pair[problem.model_a.astype(np.int64) * k + problem.model_b]
    elif problem.learned:  # more than 256 models (K^2 beyond the labels): per label, as EM's sparse path
        worst = _least_attentive(row_logit_mu(problem, np.asarray(estimates.strengths, dtype=float)), q, eps)
    else:
        ell = np.asarray(row_logit_mu(problem, None), dtype=float)
        worst = np.minimum(log_expit(ell) - np.log(max(q, eps)), log_expit(-ell) - np.log(max(1.0 - q, eps)))
    total = np.bincount(problem.user, weights=worst, minlength=problem.n_users)
    pi = min(max(pi, eps), 1.0 - eps)
    return two_class_posterior(total, 0.0, pi)


def _least_attentive(ell: np.ndarray, q: float, eps: float) -> np.ndarray:
    """``min(log sigmoid(l) - log q, log sigmoid(-l) - log(1 - q))`` per label (``ell``: the attentive log-odds,
    overwritten) with one transcendental pair per label: ``log sigmoid(+-l) = min(+-l, 0) - log1p(exp(-|l|))``,
    numpy's ``exp`` / ``log1p`` as the many-models EM tables (:func:`~bayes_annot.pairs._fast_table`; within a few
    ulp of ``log_expit``), and the shared ``log1p`` term subtracted after the ``min`` (rounding is monotonic: the
    same minimum). 30 ms instead of 60 at 10^6 labels."""
    h = np.abs(ell)
    np.negative(h, out=h)
    np.exp(h, out=h)
    np.log1p(h, out=h)
    chose_a = np.minimum(ell, 0.0)
    chose_a -= np.log(max(q, eps))
    np.maximum(ell, 0.0, out=ell)
    np.negative(ell, out=ell)
    ell -= np.log(max(1.0 - q, eps))
    np.minimum(chose_a, ell, out=ell)
    ell -= h
    return ell


def block_quality_floor(estimates: Estimates, block, n_users: int):
    """:func:`quality_floor` from an EM block's cell counts instead of the per-label arrays (an update's
    fit, whose labels are already in its block): with learned strengths, no ties and no casual covariates
    the least attentive ratio of a label depends on its pair only, so a user's total is one sparse
    mat-vec of the block (:meth:`~bayes_annot.block_em.Block.user_table_sums`) over a ``2 P`` cell
    table: ``O(P)`` work beyond the block's own pass, no ``O(labels)`` temporaries. Same values as
    :func:`quality_floor` but for the order of the sums (``1e-16`` relative).

    Parameters
    ----------
    estimates : Estimates
        The fit's estimates (two-class: ``pi``, ``q`` and the strengths).
    block : bayes_annot.block_em.Block
        The EM block of the fit's labels (global user codes ``block.users``).
    n_users : int
        Users of the fit (users outside the block have no labels: total 0).

    Returns
    -------
    numpy.ndarray or None or NotImplemented
        What :func:`quality_floor` returns (``None`` for the continuous variant), or ``NotImplemented``
        for the cases it leaves to the labels (ties, casual covariates, known strengths).
    """
    if estimates.variant != "two-class" or "pi" not in estimates.parameters:
        return None
    if (not block.learned or block.has_ties or block.casual_cell is not None or "tie_nu" in estimates.parameters
            or estimates.extra_summary.get("casual_effects") or estimates.strengths is None):
        return NotImplemented
    if block.n_entries == 0:
        return None
    eps = 1e-12
    pi, q = float(estimates.parameters["pi"]), float(estimates.parameters["q"])
    s = np.asarray(estimates.strengths, dtype=float)
    k = block.n_models
    pairs = block.pairs if block.pairs is not None else PairTable.dense(k)
    ell = s[pairs.a] - s[pairs.b]
    worst_pair = np.minimum(log_expit(ell) - np.log(max(q, eps)), log_expit(-ell) - np.log(max(1.0 - q, eps)))
    total = np.zeros(int(n_users))
    total[block.users] = block.user_table_sums(np.repeat(worst_pair, 2))  # cell 2 p + choice: the pair's value
    pi = min(max(pi, eps), 1.0 - eps)
    return two_class_posterior(total, 0.0, pi)


def _tie_quality_floor(problem: UsableLabels, estimates: Estimates, pi: float, q: float, effects) -> np.ndarray:
    """:func:`quality_floor` with ties in the likelihood: every label (decided or tie) could have been any of
    the three outcomes; the least attentive one's ratio ``P_att / P_cas`` (Davidson's and ``(1 - t) q``,
    ``(1 - t)(1 - q)``, ``t``; with casual covariates a decided label's own casual log-odds)."""
    from .ties import davidson_logprobs

    eps = 1e-12
    s = np.asarray(estimates.strengths, dtype=float) if problem.learned else None
    nu, t = float(estimates.parameters["tie_nu"]), float(estimates.parameters["casual_tie_rate"])
    eta = np.full(problem.n_labels, logit(min(max(q, eps), 1.0 - eps)))
    if getattr(problem, "casual_cell", None) is not None and effects:
        from .casual import casual_logits, design_from_summary, effects_start

        summary = {"casual_effects": effects}
        eta = casual_logits(effects["beta0"], effects_start(summary), design_from_summary(summary).design())
        eta = eta[problem.casual_cell]
    eta_tie = np.full(problem.n_ties, logit(min(max(q, eps), 1.0 - eps)))
    offset, tie_offset = 0.0, 0.0
    if estimates.extra_summary.get("style_effects") and effects:  # the attentive style term: each label's offset
        from .style import cell_offsets_from_summary

        cell_offsets = cell_offsets_from_summary({"casual_effects": effects,
                                                  "style_effects": estimates.extra_summary["style_effects"]})
        offset = cell_offsets[problem.casual_cell]
        tie_offset = cell_offsets[problem.tie_casual_cell]

    def worst(d, eta):
        pa, pb, pt = davidson_logprobs(d, nu)
        return np.minimum(np.minimum(pa - np.log1p(-t) - log_expit(eta), pb - np.log1p(-t) - log_expit(-eta)),
                          pt - np.log(t))

    total = np.bincount(problem.user, weights=worst(row_logit_mu(problem, s) + offset, eta), minlength=problem.n_users)
    total += np.bincount(problem.tie_user, weights=worst(tie_logit_mu(problem, s) + tie_offset, eta_tie),
                         minlength=problem.n_users)
    pi = min(max(pi, eps), 1.0 - eps)
    return two_class_posterior(total, 0.0, pi)


def problem_key(mu: float | None, strong_model: str | None, use_p_a: bool, has_p_a: bool) -> tuple:
    """What identifies the likelihood's strength mode (learned, known ``p_a`` column, or a global ``mu``)."""
    if mu is not None:
        return ("mu", float(mu), str(strong_model).strip())
    if use_p_a and has_p_a:
        return ("p_a",)
    return ("learned",)
