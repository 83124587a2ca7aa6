"""In-memory EM runs: a prepared log's block, one EM run on it, and its :class:`~bayes_annot.problem.Estimates`.

The engines layer's glue between :mod:`bayes_annot.problem` (the arrays of a
log) and :mod:`bayes_annot.block_em` (the EM driver over runners), shared by
:func:`bayes_annot.fit` and the incremental update.
"""

from __future__ import annotations

import json

import numpy as np

from .ufuncs import logit

from .block_em import Block, EMState, LocalRunner, make_block, run_em
from .casual import casual_effects
from .style import style_effects
from .data import PreparedData
from .em import UsableLabels, EMResult
from .pairs import ACCELERATE_MIN_MODELS, PairTable
from .problem import Estimates, problem_key, tie_rows
from .spec import BehaviourSpec

__all__ = [
    "problem_block", "em_state", "default_accelerate", "run_block_em", "em_estimates", "fit_taste_classes",
    "taste_estimates", "taste_diagnostic", "casual_test_summary",
]


def problem_block(
    prepared: PreparedData, problem: UsableLabels, rows: slice | None = None, users=None, pairs: PairTable | None = None,
    n_casual: int = 0, pair_index: np.ndarray | None = None,
) -> Block:
    """The :class:`~bayes_annot.block_em.Block` of a prepared log's usable labels (optionally of a row range).

    ``problem`` holds the usable labels of the same rows (``build_problem``);
    the block covers ``users`` (default: every user of the vocabulary).
    ``pairs``: the pair vocabulary of the cells (must hold every pair of the
    labels; default: the labels' own pairs). ``n_casual``: the casual cells of the covariates' design
    (when ``problem.casual_cell`` is set). ``pair_index``: the pair of each of ``problem``'s labels in ``pairs``
    when known (:func:`~bayes_annot.problem.pair_counts`; whole logs only), instead of looking them up.
    """
    user, usable = prepared.user, prepared.usable
    if rows is not None:
        user, usable = user[rows], usable[rows]
    if users is None:
        users = np.arange(prepared.n_users)
    if problem.learned:
        ties = {}
        if problem.tie_user is not None:  # ties in the likelihood: their rows and pairs
            tie = tie_rows(prepared) if rows is None else tie_rows(prepared)[rows]
            if pairs is None:
                pairs = PairTable.from_labels(np.concatenate([problem.model_a, problem.tie_model_a]),
                                              np.concatenate([problem.model_b, problem.tie_model_b]), problem.n_models)[0]
            ties = {"tie": tie, "tie_pair": pairs.index(problem.tie_model_a, problem.tie_model_b)}
            if problem.tie_casual_cell is not None:  # an attentive style term: ties by (pair, casual cell)
                ties = {"tie": tie, "n_tie_casual": n_casual,
                        "tie_pair": ties["tie_pair"].astype(np.int64) * n_casual + problem.tie_casual_cell}
        if pairs is None:
            pairs, index = PairTable.from_labels(problem.model_a, problem.model_b, problem.n_models)
            cell = (2 * index + problem.choice_a).astype(np.int32)
        elif pair_index is not None and rows is None:
            cell = (2 * np.asarray(pair_index, dtype=np.int64) + problem.choice_a).astype(np.int32)
        else:
            cell = pairs.cells(problem.model_a, problem.model_b, problem.choice_a)
        return make_block(user, usable, problem.n_models, cell=cell, users=users, pairs=pairs,
                          casual_cell=problem.casual_cell, n_casual=n_casual, **ties)
    ties = {}
    if problem.tie_user is not None:  # known strengths with ties: each tie's known log-odds
        ties = {"tie": tie_rows(prepared) if rows is None else tie_rows(prepared)[rows], "tie_logit": problem.tie_logit_mu}
    return make_block(user, usable, problem.n_models, choice=problem.choice_a, known_logit=problem.known_logit_mu, users=users,
                      casual_cell=problem.casual_cell, n_casual=n_casual, **ties)


def em_state(prepared: PreparedData, problem: UsableLabels, pairs: PairTable, *, mu, strong_model, use_p_a,
             casual=None, pair_index=None) -> EMState:
    """The EM block of a whole prepared log, with what an incremental update needs to extend it
    (``casual``: the casual covariates' design, when ``problem`` has casual cells; ``pair_index``: each usable
    label's pair in ``pairs``, when known)."""
    return EMState(
        block=problem_block(prepared, problem, pairs=pairs, n_casual=0 if casual is None else casual.n_cells,
                            pair_index=pair_index),
        pair_counts=pairs,
        key=problem_key(mu, strong_model, use_p_a, prepared.has_p_a) + (("ties",) if problem.tie_user is not None else ()),
    )


def default_accelerate(accelerate: bool | None, variant: str, n_models: int) -> bool:
    """SQUAREM on or off: ``accelerate`` if given, else on for ``continuous`` or more than
    :data:`bayes_annot.pairs.ACCELERATE_MIN_MODELS` models."""
    if accelerate is not None:
        return bool(accelerate)
    return variant == "continuous" or n_models > ACCELERATE_MIN_MODELS


def run_block_em(block: Block, problem: UsableLabels, spec: BehaviourSpec, *, tol, max_iter, start, accelerate,
                 callback=None, release: bool = True) -> EMResult:
    """EM of the model ``spec`` (one ranking) on one in-memory block.

    Plain EM, or with SQUAREM steps kept only when the objective does not
    decrease (``accelerate``); ``callback(iteration, objective)`` is called
    after every iteration. ``spec.strengths`` must be the block's (learned
    cells, or known log-odds); a warm ``start``'s strengths are dropped for known ones. ``release=False``
    keeps the block's pass caches (the caller releases them once it has used them too).
    """
    if spec.learned != problem.learned:
        raise ValueError(f"the spec has {spec.strengths} strengths but the labels have "
                         f"{'learned' if problem.learned else 'known'} ones")
    if start is not None and not spec.learned:
        start = {key: value for key, value in start.items() if key != "strengths"}
    em = run_em(
        LocalRunner([block], block.users.shape[0]), problem.n_models, spec, tol=tol, max_iter=max_iter, start=start,
        accelerate=accelerate, callback=callback,
    )
    if release:
        block.release_pass_caches()  # the block is kept for updates; its pass caches are not needed
    return em


def em_estimates(em: EMResult, variant: str, known_strengths: np.ndarray | None, casual=None, style=None) -> Estimates:
    """:class:`Estimates` of an EM result (``known_strengths``: the fixed strengths of a global ``mu``;
    ``casual``: the casual covariates' design, whose effects go to ``extra_summary["casual_effects"]``;
    ``style``: the attentive style term's design, whose effects go to ``extra_summary["style_effects"]``)."""
    params = {"pi": em.pi, "q": em.q} if variant == "two-class" else {"m": em.m, "tau": em.tau, "q": em.q}
    params["mean_quality"] = float(np.mean(em.quality[em.n_labels_user > 0]))
    estimates = Estimates(
        engine="em",
        variant=variant,
        quality=em.quality,
        p_good=em.p_good,
        n_labels_user=em.n_labels_user,
        informative=em.informative,
        strengths=em.strengths if em.strengths is not None else known_strengths,
        parameters=params,
        loglik=em.loglik,
        loglik_trace=em.loglik_trace,
        n_iter=em.n_iter,
        converged=em.converged,
        runtime_seconds=em.runtime_seconds,
        user_loglik=em.user_loglik,
    )
    if casual is not None and em.casual_g is not None:
        estimates.extra_summary["casual_effects"] = casual_effects(casual, float(logit(em.q)), em.casual_g)
    if style is not None and em.style_delta is not None:
        estimates.extra_summary["style_effects"] = style_effects(style, em.style_delta)
    if em.nu is not None:
        params.update(tie_nu=float(em.nu), casual_tie_rate=float(em.tie_rate))
    return estimates


def taste_diagnostic(problem: UsableLabels, result_c1=None, *, priors=None, q_fixed=None, seed: int = 0,
                     casual=None, style=None) -> dict:
    """The casual-group test's verdict as ``summary["taste_diagnostic"]`` holds it: the one place it is computed.

    :func:`bayes_annot.tastes.casual_group_test` with its defaults (100 simulated
    logs, ``alpha = 0.01``) on the one-ranking fit ``result_c1`` (fitted here when
    ``None``), with the casual covariates ``casual`` (a ``CasualDesign``) and the attentive style term
    ``style`` (a ``StyleDesign``) when the fit has them.
    :func:`fit` stores it (``taste_check=True`` or ``tastes="auto"``);
    the report shows the stored verdict and never recomputes it.
    """
    from .tastes import casual_group_test

    return casual_test_summary(casual_group_test(problem, result_c1, seed=seed, priors=priors, q_fixed=q_fixed,
                                                 casual=casual, style=style))


def fit_taste_classes(problem: UsableLabels, spec: BehaviourSpec, *, tol: float = 1e-9, max_iter: int = 1000,
                      seed: int = 0, max_tastes: int | None = None, runner=None, start: dict | None = None):
    """The taste-class fit of :func:`fit`: ``spec.n_tastes`` classes of the model ``spec``, or, with
    ``max_tastes``, the number chosen by :func:`~bayes_annot.tastes.select_tastes` among ``1..max_tastes``
    (``tastes="auto"``); returns the ``TasteResult`` (its ``n_tastes`` the number fitted) and summary entries.

    ``runner``: the EM runner of a fixed number of classes (default: the problem's in-memory one); a
    ``start`` with a ``"tastes"`` entry (``strengths`` (C, K), ``shares``, ``q``: a previous fit of as
    many classes) is the only start (a warm start: an update converges from it)."""
    from .tastes import fit_tastes, select_tastes

    spec.with_tastes(max(spec.n_tastes, 2))  # the spec's refusal where taste classes are not defined
    priors, q_fixed, tastes = spec.priors, spec.q_fixed, spec.n_tastes
    extra_summary: dict = {}
    if max_tastes is not None:
        selection = select_tastes(problem, max_tastes=max_tastes, seed=seed, priors=priors, q_fixed=q_fixed,
                                  casual=spec.casual, style=spec.style)
        # The chosen C fitted as ``tastes=C`` is (its tolerance and starts; the selection's fits use a looser
        # tol and fewer starts), with the selection's fit as one more start: never worse than ``tastes=C``.
        chosen = int(selection.chosen)
        res = fit_tastes(problem if runner is None else runner, chosen, priors=priors, q_fixed=q_fixed, tol=tol,
                         max_iter=max_iter, seed=seed, casual=spec.casual, style=spec.style,
                         init=[selection.fits[chosen].as_start()] if chosen > 1 else None)
        extra_summary["taste_diagnostic"] = taste_diagnostic(problem, selection.fits[1], priors=priors, q_fixed=q_fixed,
                                                             seed=seed, casual=spec.casual, style=spec.style)
        table = selection.table.replace({np.nan: None})
        extra_summary["taste_selection"] = {
            "chosen": int(selection.chosen),
            "chosen_by_bic": int(selection.chosen_bic),
            "max_tastes": int(max_tastes),
            "at_limit": bool(selection.chosen == max_tastes and max_tastes > 1),
            "message": selection.message,
            "table": json.loads(table.to_json(orient="records")),
        }
    else:
        warm = (start or {}).get("tastes")
        warm = warm if warm is not None and np.shape(warm["shares"]) == (int(tastes),) else None
        res = fit_tastes(problem if runner is None else runner, int(tastes), priors=priors, q_fixed=q_fixed, tol=tol,
                         max_iter=max_iter, seed=seed, casual=spec.casual, style=spec.style,
                         **({"n_starts": 0, "init": [warm]} if warm else {}))
    return res, extra_summary


def taste_estimates(res, extra_summary: dict | None = None) -> Estimates:
    """:class:`Estimates` of a :class:`~bayes_annot.tastes.TasteResult` (class 1's strengths as ``strength``,
    the taste columns, ``summary["tastes"]``), whichever engine ran it."""
    from .tastes import taste_columns

    extra_summary = dict(extra_summary or {})
    if getattr(res, "casual", None) is not None and res.casual_g is not None:
        extra_summary["casual_effects"] = casual_effects(res.casual, float(logit(res.q)), res.casual_g)
    if getattr(res, "style", None) is not None and res.style_delta is not None:
        extra_summary["style_effects"] = style_effects(res.style, res.style_delta)
    extra_summary["tastes"] = {
        "n_tastes": int(res.n_tastes),
        "starts_agreed": int(res.starts_agreed),
        "n_starts": int(res.n_starts),
        "class_spread": [float(v) for v in res.class_spread],
        "ordering": "classes numbered by share, largest first",
    }
    user_cols, model_cols = taste_columns(res)
    return Estimates(
        engine="em",
        variant="two-class",
        quality=res.quality,
        p_good=res.quality,
        n_labels_user=res.n_labels_user,
        informative=res.informative,
        strengths=res.strengths[0],
        parameters=res.parameters(),
        loglik=res.loglik,
        loglik_trace=res.loglik_trace,
        n_iter=res.n_iter,
        converged=res.converged,
        runtime_seconds=res.runtime_seconds,
        user_loglik=res.user_loglik,
        extra_user_columns=user_cols,
        extra_model_columns=model_cols,
        extra_summary=extra_summary,
    )


def casual_test_summary(check) -> dict:
    """The JSON-ready verdict of a :class:`~bayes_annot.tastes.CasualGroupTest` (``summary["taste_diagnostic"]``)."""
    return {
        "verdict": check.verdict,
        "message": check.message,
        "statistic": float(check.statistic),
        "p_value": float(check.p_value),
        "n_flagged": int(check.n_flagged),
        "n_labels": int(check.n_labels),
        "rank_correlation": None if not np.isfinite(check.rank_correlation) else float(check.rank_correlation),
    }

