"""In-memory EM runs: a prepared log's block, one EM run on it, and its :class:`~bayes_annot.problem.Estimates`.

The engines layer's glue between :mod:`bayes_annot.problem` (the arrays of a
log) and :mod:`bayes_annot.block_em` (the EM driver over runners), shared by
:func:`bayes_annot.fit` and the incremental update.
"""

from __future__ import annotations

import numpy as np

from .block_em import Block, EMState, LocalRunner, make_block, run_em
from .data import PreparedData
from .em import EMProblem, EMResult
from .pairs import ACCELERATE_MIN_MODELS, PairTable
from .problem import Estimates, problem_key

__all__ = ["problem_block", "em_state", "default_accelerate", "run_block_em", "em_estimates"]


def problem_block(
    prepared: PreparedData, problem: EMProblem, rows: slice | None = None, users=None, pairs: PairTable | None = None
) -> Block:
    """The :class:`~bayes_annot.block_em.Block` of a prepared log's usable labels (optionally of a row range).

    ``problem`` holds the usable labels of the same rows (``build_problem``);
    the block covers ``users`` (default: every user of the vocabulary).
    ``pairs``: the pair vocabulary of the cells (must hold every pair of the
    labels; default: the labels' own pairs).
    """
    user, usable = prepared.user, prepared.usable
    if rows is not None:
        user, usable = user[rows], usable[rows]
    if users is None:
        users = np.arange(prepared.n_users)
    if problem.learned:
        if pairs is None:
            pairs, index = PairTable.from_labels(problem.model_a, problem.model_b, problem.n_models)
            cell = (2 * index + problem.choice_a).astype(np.int32)
        else:
            cell = pairs.cells(problem.model_a, problem.model_b, problem.choice_a)
        return make_block(user, usable, problem.n_models, cell=cell, users=users, pairs=pairs)
    return make_block(user, usable, problem.n_models, choice=problem.choice_a, known_logit=problem.known_logit_mu, users=users)


def em_state(prepared: PreparedData, problem: EMProblem, pairs: PairTable, *, mu, strong_model, use_p_a) -> EMState:
    """The EM block of a whole prepared log, with what an incremental update needs to extend it."""
    return EMState(
        block=problem_block(prepared, problem, pairs=pairs), pair_counts=pairs,
        key=problem_key(mu, strong_model, use_p_a, prepared.has_p_a),
    )


def default_accelerate(accelerate: bool | None, model: str, n_models: int) -> bool:
    """SQUAREM on or off: ``accelerate`` if given, else on for ``continuous`` or more than
    :data:`bayes_annot.pairs.ACCELERATE_MIN_MODELS` models."""
    if accelerate is not None:
        return bool(accelerate)
    return model == "continuous" or n_models > ACCELERATE_MIN_MODELS


def run_block_em(block: Block, problem: EMProblem, model: str, *, priors, q, tol, max_iter, start, accelerate,
                 callback=None) -> EMResult:
    """EM on one in-memory block (plain, or with SQUAREM steps kept only when the objective does not decrease);
    ``callback(iteration, objective)`` is called after every iteration."""
    if start is not None and not problem.learned:
        start = {key: value for key, value in start.items() if key != "strengths"}
    em = run_em(
        LocalRunner([block], block.users.shape[0]), problem.n_models, problem.learned, variant=model, priors=priors,
        q_fixed=q, tol=tol, max_iter=max_iter, start=start, accelerate=accelerate, callback=callback,
    )
    block.release_pass_caches()  # the block is kept for updates; its pass caches are not needed
    return em


def em_estimates(em: EMResult, model: str, known_strengths: np.ndarray | None) -> Estimates:
    """:class:`Estimates` of an EM result (``known_strengths``: the fixed strengths of a global ``mu``)."""
    params = {"pi": em.pi, "q": em.q} if model == "two-class" else {"m": em.m, "tau": em.tau, "q": em.q}
    params["mean_quality"] = float(np.mean(em.quality[em.n_labels_user > 0]))
    estimates = Estimates(
        engine="em",
        variant=model,
        quality=em.quality,
        p_good=em.p_eta_above_half if model == "continuous" else em.quality,
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
    estimates.theta = em.theta  # exact theta for a warm start (continuous)
    return estimates
