r"""EM on logs larger than memory: map-reduce over the partitions of a Dask DataFrame.

The engine is the in-memory EM of :mod:`bayes_annot.em` with every pass over
rows replaced by a pass over *blocks*; the driver only ever holds arrays of
length ``n_models**2`` (and, once at the end, the per-user results).

1. **Scan** (one pass over the input): per partition, the text form of every id
   (the normalisation of :mod:`bayes_annot.data`), validation of ``winner`` and
   ``p_a``, and the row count. The sorted user and model vocabularies are
   built by a tree of ``np.union1d`` on the workers, so the driver receives each
   id once.
2. **Encode and shuffle by user** (one pass): ids become codes against the
   global vocabularies (``np.searchsorted`` per partition); rows are then
   shuffled with Dask's own shuffle so that all rows of a user sit in one
   partition, and each partition becomes a compact *block* (``int32`` pair cell
   per label, sorted by user) that is ``persist()``-ed on the workers.
3. **EM iterations**: because a user lives in exactly one block, every
   per-user quantity (sums of attentive log-probabilities, posteriors,
   ``theta_u`` of the continuous variant) is computed *inside* its block; a
   pass returns only sufficient statistics: the block's share of the
   objective, of the ``pi`` / ``q`` / ``m`` updates and the ``K x K x 2`` table
   of weighted win counts for the Bradley–Terry M-step (solved on the driver
   with :func:`bayes_annot.em.fit_bradley_terry`). Nothing of length ``U`` is
   broadcast per iteration; the continuous variant's ``theta_u`` stays on the
   workers as persisted per-block state.
4. **Finalise**: one pass gathers the per-user results (quality, labels,
   informativeness, ...) into arrays over all users, in vocabulary order.

The objective, M-steps and stopping rule are those of
:func:`bayes_annot.em.fit_em`, so the tables agree with the in-memory fit to
rounding (sums are taken in another order). The same block code also serves
the in-memory incremental path (:mod:`bayes_annot.incremental`) through
:class:`LocalRunner`.

Dask is an optional dependency (``pip install 'bayes_annot[dask]'``); this
module imports it only inside the functions that need it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, log_expit, logit
from scipy.stats import norm

from .data import ColumnMap, _encode_p_a, _encode_winner, _resolve_columns, _uniques_as_text
from .em import EMResult, _attentive_table, _two_class_objective, _update_q, _update_theta, fit_bradley_terry, has_converged
from .errors import InputError
from .likelihood import Priors, log_beta_pdf, log_normal_pdf, two_class_posterior, two_class_user_loglik

__all__ = ["DaskFit", "fit_dask", "to_rows", "LocalRunner", "Block", "make_block", "run_em"]

REASON_CATEGORIES = ["ok", "tie", "same_model", "user_low_quality"]


# --------------------------------------------------------------------------- blocks (pure numpy)


def _sort_order(values: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers (a sort of value<<bits | index: 5x faster than argsort)."""
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if int(values.max()) < 65536:  # numpy's stable sort of 16-bit integers is a radix sort
        return np.argsort(values.astype(np.uint16), kind="stable")
    bits = max(int(n - 1).bit_length(), 1)
    key = (values.astype(np.int64) << bits) | np.arange(n, dtype=np.int64)
    key.sort()
    return key & ((1 << bits) - 1)


def _segment_starts(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and value of each run of equal values in a sorted array."""
    if sorted_values.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), sorted_values[:0]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return starts, sorted_values[starts]


@dataclass
class Block:
    """The labels of a set of users, sorted by user, ready for EM passes.

    ``users`` are global user codes (sorted); every per-user array is aligned
    with it. Entries are the usable labels (ties and same-model pairs are only
    counted in ``n_rows``), grouped by user. With learned strengths the entries
    are the ``users x cells`` count matrix in CSR form (``indptr``, ``cell``):
    per-user sums of a cell table are a sparse mat-vec and the ``K x K x 2``
    table of weighted counts its transpose, both cache-friendly, O(labels).
    """

    users: np.ndarray  # int64 (Ul,) global codes
    n_rows: np.ndarray  # int64 (Ul,) all input rows of the user
    n_user: np.ndarray  # float (Ul,) usable labels
    n_user_a: np.ndarray  # float (Ul,) usable labels choosing model_a
    indptr: np.ndarray  # int32/int64 (Ul + 1,) start of each user's entries
    seg_users: np.ndarray  # int64: local index of each non-empty user
    seg_starts: np.ndarray  # start of each non-empty user's entries
    n_models: int
    cell: np.ndarray | None = None  # int32 (n,) flattened (model_a, model_b, choice) when strengths are learned
    choice: np.ndarray | None = None  # int8 (n,) (known mode)
    known_logit: np.ndarray | None = None  # float (n,) (known mode)
    ties: int = 0  # rows of these users that are ties / same-model pairs (bookkeeping)
    same_model: int = 0
    _counts: object = field(default=None, repr=False)

    @property
    def n_entries(self) -> int:
        return int(self.cell.shape[0] if self.cell is not None else self.choice.shape[0])

    @property
    def learned(self) -> bool:
        return self.cell is not None

    def matrix(self, data: np.ndarray | None = None):
        """``users x cells`` CSR matrix of the entries (``data`` per entry; ones by default)."""
        from scipy.sparse import csr_matrix

        shape = (self.users.shape[0], 2 * self.n_models * self.n_models)
        if data is None:
            if self._counts is None:
                self._counts = csr_matrix((np.ones(self.n_entries), self.cell, self.indptr), shape=shape)
            return self._counts
        return csr_matrix((data, self.cell, self.indptr), shape=shape)

    def row_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-user sums of per-entry values (the blocks' ``np.bincount(user, weights)``)."""
        out = np.zeros(self.users.shape[0])
        if self.seg_starts.shape[0]:
            out[self.seg_users] = np.add.reduceat(values, self.seg_starts)
        return out

    def user_table_sums(self, table: np.ndarray) -> np.ndarray:
        """Per-user sums of ``table[cell]`` over the user's entries."""
        return self.matrix() @ table

    def expand(self, per_user: np.ndarray) -> np.ndarray:
        """Per-user values repeated for each of the user's entries."""
        return np.repeat(per_user, self.n_user.astype(np.int64))

    def cell_sums(self, values: np.ndarray) -> np.ndarray:
        """Sums of per-entry values by pair cell: a flattened ``K x K x 2`` table."""
        return self.matrix(values).T @ np.ones(self.users.shape[0])

    def cell_sums_by_user(self, per_user: np.ndarray) -> np.ndarray:
        """``sum_u per_user[u] * count[u, cell]``: the cell table of per-user weights."""
        return self.matrix().T @ per_user

    def entry_choice(self) -> np.ndarray:
        """Per entry: 1 when ``model_a`` was chosen."""
        return (self.cell & 1).astype(np.int8) if self.learned else self.choice


def make_block(
    user: np.ndarray,
    usable: np.ndarray,
    n_models: int,
    cell: np.ndarray | None = None,
    choice: np.ndarray | None = None,
    known_logit: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> Block:
    """Build a :class:`Block` from per-row arrays (global user codes, all rows).

    ``cell`` (learned strengths) or ``choice`` + ``known_logit`` (known
    attentive probabilities) are given for the usable rows only, in row order.
    ``users`` (sorted global codes) fixes the block's user set; by default the
    users present in ``user``.
    """
    user = np.asarray(user)
    if users is None:
        users = np.unique(user)
    users = np.asarray(users, dtype=np.int64)
    if users.shape[0] and users[0] == 0 and users[-1] == users.shape[0] - 1:
        local_all = user  # users are 0..U-1: codes are already local
    else:
        local_all = np.searchsorted(users, user)
    n_local = users.shape[0]
    n_rows = np.bincount(local_all, minlength=n_local).astype(np.int64)
    local = local_all[usable]
    order = _sort_order(local)
    counts = np.bincount(local, minlength=n_local)
    index_type = np.int32 if local.shape[0] < 2**31 - 1 else np.int64
    indptr = np.zeros(n_local + 1, dtype=index_type)
    np.cumsum(counts, out=indptr[1:])
    nonempty = np.flatnonzero(counts > 0)
    block = Block(
        users=users, n_rows=n_rows, n_user=counts.astype(float), n_user_a=np.zeros(n_local), indptr=indptr,
        seg_users=nonempty, seg_starts=indptr[:-1][nonempty].astype(np.int64), n_models=n_models,
    )
    if cell is not None:
        block.cell = np.asarray(cell, dtype=np.int32)[order]
    else:
        block.choice = np.asarray(choice, dtype=np.int8)[order]
        block.known_logit = np.asarray(known_logit, dtype=float)[order]
    block.n_user_a = block.row_sums(block.entry_choice().astype(float))
    return block


# ------------------------------------------------------------------ per-block passes


def _block_att_sum(block: Block, table: np.ndarray | None) -> np.ndarray:
    """Per-user sums of attentive log-probabilities."""
    if block.learned:
        return block.user_table_sums(table)
    return block.row_sums(log_expit((2.0 * block.choice - 1.0) * block.known_logit))


def block_cell_counts(block: Block) -> dict:
    """Unweighted pair table (initial strengths, model label counts, comparison graph)."""
    return {"cells": block.cell_sums_by_user(np.ones(block.users.shape[0])) if block.learned else None}


def block_two_class_pass(block: Block, pi: float, q: float, table: np.ndarray | None) -> dict:
    """Objective share and E-step sufficient statistics of one block (two-class)."""
    att_sum = _block_att_sum(block, table)
    cas_sum = block.n_user_a * np.log(q) + (block.n_user - block.n_user_a) * np.log1p(-q)
    active = block.n_user > 0
    loglik = float(two_class_user_loglik(att_sum[active], cas_sum[active], pi).sum())
    p_att = two_class_posterior(att_sum, cas_sum, pi)
    casual = 1.0 - p_att
    out = {
        "loglik": loglik,
        "p_active": float(p_att[active].sum()),
        "n_active": int(active.sum()),
        "casual_a": float(casual @ block.n_user_a),
        "casual": float(casual @ block.n_user),
        "cells": block.cell_sums_by_user(p_att) if block.learned else None,
    }
    return out


def block_two_class_final(block: Block, pi: float, q: float, table: np.ndarray | None, differs_cell, informative_tol):
    att_sum = _block_att_sum(block, table)
    cas_sum = block.n_user_a * np.log(q) + (block.n_user - block.n_user_a) * np.log1p(-q)
    active = block.n_user > 0
    quality = two_class_posterior(att_sum, cas_sum, pi)
    quality[~active] = pi
    user_ll = np.where(active, two_class_user_loglik(att_sum, cas_sum, pi), 0.0)
    informative = _block_informative(block, differs_cell, q, informative_tol)
    return {"users": block.users, "quality": quality, "user_loglik": user_ll, "informative": informative,
            "n_user": block.n_user, "n_rows": block.n_rows}


def _block_informative(block: Block, differs_cell, q, tol) -> np.ndarray:
    if block.learned:
        differs = differs_cell[block.cell]
    else:
        differs = np.abs(block.known_logit) > tol  # same rule as em._informative_users
    return block.row_sums(differs.astype(float)) > 0


def _continuous_entries(block: Block, theta, q, att_prob_table):
    if block.learned:
        att_prob = att_prob_table[block.cell]
    else:
        att_prob = expit((2.0 * block.choice - 1.0) * block.known_logit)
    choice = block.entry_choice()
    cas_prob = np.where(choice == 1, q, 1.0 - q)
    eta = block.expand(expit(theta))
    attentive = eta * att_prob
    mixture = attentive + (1.0 - eta) * cas_prob
    return np.log(mixture), attentive / mixture, choice


def block_continuous_pass(block: Block, theta: np.ndarray, m: float, q: float, tau: float, att_prob_table):
    """One continuous EM pass of a block: objective share at ``theta``, new ``theta`` and statistics."""
    label_ll, resp, choice = _continuous_entries(block, theta, q, att_prob_table)
    value = float(label_ll.sum()) + float(log_normal_pdf(theta, m, tau).sum())
    attentive_sum = block.row_sums(resp)
    theta_new = _update_theta(attentive_sum, block.n_user, m, tau, theta)
    casual = 1.0 - resp
    stats = {
        "loglik": value,
        "theta_sum": float(theta_new.sum()),
        "casual_a": float(casual @ choice.astype(float)),
        "casual": float(casual.sum()),
        "cells": block.cell_sums(resp) if block.learned else None,
    }
    return theta_new, stats


def block_continuous_final(block, theta, m, q, tau, att_prob_table, differs_cell, informative_tol):
    label_ll, resp, _ = _continuous_entries(block, theta, q, att_prob_table)
    eta = expit(theta)
    curvature_rows = block.row_sums(resp * (1.0 - resp))
    precision = np.maximum(block.n_user * eta * (1.0 - eta) - curvature_rows + 1.0 / tau**2, 1e-6)
    return {
        "users": block.users, "quality": eta, "p_eta_above_half": norm.cdf(theta * np.sqrt(precision)),
        "theta": theta, "user_loglik": block.row_sums(label_ll),
        "informative": _block_informative(block, differs_cell, q, informative_tol),
        "n_user": block.n_user, "n_rows": block.n_rows,
    }


def block_initial_theta(block: Block, start_theta: np.ndarray | None, m: float) -> np.ndarray:
    if start_theta is None:
        return np.full(block.users.shape[0], m)
    theta = np.asarray(start_theta, dtype=float)[block.users]
    return np.where(np.isnan(theta), m, theta)


def _sum_stats(parts: list[dict]) -> dict:
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = None if values[0] is None else (np.sum(values, axis=0) if isinstance(values[0], np.ndarray) else sum(values))
    return out


# --------------------------------------------------------------------------- runners


class LocalRunner:
    """Runs the block passes in this process (one or more in-memory blocks)."""

    def __init__(self, blocks: list[Block], n_users: int):
        self.blocks = blocks
        self.n_users = n_users

    def cell_counts(self):
        """The unweighted pair table summed over the blocks (see ``block_cell_counts``)."""
        return _sum_stats([block_cell_counts(b) for b in self.blocks])["cells"]

    def two_class_pass(self, pi, q, table):
        """One two-class E-step over the blocks: summed objective and statistics."""
        return _sum_stats([block_two_class_pass(b, pi, q, table) for b in self.blocks])

    def two_class_final(self, pi, q, table, differs_cell, informative_tol):
        """Per-block final two-class results (quality, log-likelihood, informative)."""
        return [block_two_class_final(b, pi, q, table, differs_cell, informative_tol) for b in self.blocks]

    def initial_theta(self, start_theta, m):
        """Per-block starting ``theta`` (logit eta) of the continuous model."""
        return [block_initial_theta(b, start_theta, m) for b in self.blocks]

    def continuous_pass(self, thetas, m, q, tau, att_prob_table):
        """One continuous EM pass over the blocks: new ``thetas`` and summed statistics."""
        outs = [block_continuous_pass(b, t, m, q, tau, att_prob_table) for b, t in zip(self.blocks, thetas)]
        return [o[0] for o in outs], _sum_stats([o[1] for o in outs])

    def continuous_final(self, thetas, m, q, tau, att_prob_table, differs_cell, informative_tol):
        """Per-block final continuous results."""
        return [
            block_continuous_final(b, t, m, q, tau, att_prob_table, differs_cell, informative_tol)
            for b, t in zip(self.blocks, thetas)
        ]


class DaskRunner:
    """Runs the block passes on persisted Dask blocks (any scheduler; distributed when a Client is active)."""

    def __init__(self, blocks: list, n_users: int):
        self.blocks = blocks  # list of persisted Delayed
        self.n_users = n_users

    def _compute(self, tasks):
        import dask

        return list(dask.compute(*tasks))

    def cell_counts(self):
        from dask import delayed

        return _sum_stats(self._compute([delayed(block_cell_counts)(b) for b in self.blocks]))["cells"]

    def two_class_pass(self, pi, q, table):
        from dask import delayed

        return _sum_stats(self._compute([delayed(block_two_class_pass)(b, pi, q, table) for b in self.blocks]))

    def two_class_final(self, pi, q, table, differs_cell, informative_tol):
        from dask import delayed

        return self._compute(
            [delayed(block_two_class_final)(b, pi, q, table, differs_cell, informative_tol) for b in self.blocks]
        )

    def initial_theta(self, start_theta, m):
        import dask
        from dask import delayed

        start = None if start_theta is None else delayed(np.asarray(start_theta, dtype=float))
        return list(dask.persist(*[delayed(block_initial_theta)(b, start, m) for b in self.blocks]))

    def continuous_pass(self, thetas, m, q, tau, att_prob_table):
        import dask
        from dask import delayed

        outs = [delayed(block_continuous_pass, nout=2)(b, t, m, q, tau, att_prob_table) for b, t in zip(self.blocks, thetas)]
        outs = dask.persist(*outs)
        stats = self._compute([o[1] for o in outs])
        new_thetas = list(dask.persist(*[o[0] for o in outs]))
        return new_thetas, _sum_stats(stats)

    def continuous_final(self, thetas, m, q, tau, att_prob_table, differs_cell, informative_tol):
        from dask import delayed

        return self._compute(
            [
                delayed(block_continuous_final)(b, t, m, q, tau, att_prob_table, differs_cell, informative_tol)
                for b, t in zip(self.blocks, thetas)
            ]
        )


# --------------------------------------------------------------------------- the EM loop (driver)


def _split_cells(cells: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    table = cells.reshape(k, k, 2)
    return table[:, :, 1], table[:, :, 0]


def _gather(parts: list[dict], n_users: int, keys) -> dict:
    out = {}
    for key in keys:
        first = parts[0][key]
        array = np.zeros(n_users, dtype=first.dtype)
        for p in parts:
            array[p["users"]] = p[key]
        out[key] = array
    return out


def run_em(
    runner,
    n_models: int,
    learned: bool,
    variant: str = "two-class",
    priors: Priors | None = None,
    q_fixed: float | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = 0.2,
    start: dict | None = None,
    callback=None,
    accelerate: bool = False,
) -> EMResult:
    """EM of :func:`bayes_annot.em.fit_em` over the blocks of ``runner``.

    Same objective, M-steps, stopping rule and outputs as ``fit_em``.
    ``accelerate=True`` (two-class, :class:`LocalRunner` or any runner; continuous
    needs a single local block) adds SQUAREM extrapolation steps, each kept only
    when it does not lower the objective, so the trace still never decreases;
    the stopping rule is applied to plain EM steps, as in ``fit_em``.
    """
    if variant not in ("two-class", "continuous"):
        raise ValueError(f"unknown model variant '{variant}', expected 'two-class' or 'continuous'")
    priors = priors or Priors()
    started = time.perf_counter()
    start = start or {}
    k = n_models
    strengths = None
    if learned:
        if start.get("strengths") is not None:
            strengths = np.asarray(start["strengths"], dtype=float).copy()
        else:
            w1, w0 = _split_cells(runner.cell_counts(), k)
            strengths = fit_bradley_terry(w1, w0, priors.strength_sigma)
    q = float(start.get("q") or 0.5) if q_fixed is None else float(q_fixed)
    if variant == "two-class":
        out = _run_two_class(runner, k, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate)
    else:
        out = _run_continuous(runner, k, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate)
    s = out["strengths"]
    differs_cell = None
    if learned:
        d = s[:, None] - s[None, :]
        differs_cell = np.repeat((np.abs(d) > informative_tol).ravel(), 2)  # same rule as em._informative_users
    n_users = runner.n_users
    if variant == "two-class":
        parts = runner.two_class_final(out["pi"], out["q"], _attentive_table(s) if learned else None, differs_cell, informative_tol)
        g = _gather(parts, n_users, ["quality", "user_loglik", "informative", "n_user"])
        level = out["pi"] if g["informative"].any() else priors.pi_alpha / (priors.pi_alpha + priors.pi_beta)
        g["quality"] = np.where(g["informative"], g["quality"], level)
        extra = dict(p_eta_above_half=None, theta=None, m=None, tau=None)
    else:
        parts = runner.continuous_final(
            out["thetas"], out["m"], out["q"], out["tau"], np.exp(_attentive_table(s)) if learned else None,
            differs_cell, informative_tol,
        )
        g = _gather(parts, n_users, ["quality", "p_eta_above_half", "theta", "user_loglik", "informative", "n_user"])
        m_level = out["m"] if g["informative"].any() else priors.eta_m_mu
        g["quality"] = np.where(g["informative"], g["quality"], expit(m_level))
        g["p_eta_above_half"] = np.where(g["informative"], g["p_eta_above_half"], norm.cdf(m_level / out["tau"]))
        extra = dict(p_eta_above_half=g["p_eta_above_half"], theta=g["theta"], m=float(out["m"]), tau=float(out["tau"]))
    return EMResult(
        variant=variant, pi=out.get("pi"), q=float(out["q"]), strengths=s, quality=g["quality"],
        n_labels_user=g["n_user"].astype(np.int64), informative=g["informative"].astype(bool), loglik=out["trace"][-1],
        loglik_trace=out["trace"], n_iter=out["n_iter"], converged=out["converged"],
        runtime_seconds=time.perf_counter() - started, user_loglik=g["user_loglik"], **extra,
    )


def _run_two_class(runner, k, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate):
    pi = float(start.get("pi") or 0.5)

    def evaluate(pi, q, strengths):
        """Objective at (pi, q, s) and the EM map's image of (pi, q, s)."""
        st = runner.two_class_pass(pi, q, _attentive_table(strengths) if learned else None)
        value = st["loglik"] + _two_class_objective(
            np.zeros(1), np.zeros(1), np.zeros(1, bool), pi, q, strengths, priors, q_fixed is None
        )
        new_pi = (st["p_active"] + priors.pi_alpha - 1.0) / (st["n_active"] + priors.pi_alpha + priors.pi_beta - 2.0)
        new_q = q if q_fixed is not None else _update_q(st["casual_a"], st["casual"], priors)
        new_s = strengths
        if learned:
            w1, w0 = _split_cells(st["cells"], k)
            new_s = fit_bradley_terry(w1, w0, priors.strength_sigma, start=strengths)
        return value, (float(new_pi), float(new_q), new_s)

    def pack(pi, q, s):
        parts = [np.array([logit(pi)])]
        if q_fixed is None:
            parts.append(np.array([logit(q)]))
        if learned:
            parts.append(s)
        return np.concatenate(parts)

    def unpack(x):
        pi = float(expit(x[0]))
        i = 1
        qq = q_fixed
        if q_fixed is None:
            qq = float(expit(x[1]))
            i = 2
        s = x[i:].copy() if learned else None
        return pi, qq, s

    trace: list[float] = []
    params = (pi, q, strengths)
    value, nxt = evaluate(*params)
    trace.append(value)
    if callback is not None:
        callback(0, value)
    converged = False
    iteration = 0
    while True:
        if iteration >= max_iter:
            break
        iteration += 1
        prev_params = params
        params = nxt
        value, nxt = evaluate(*params)  # a plain EM step
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if has_converged(trace, tol):
            converged = True
            break
        if accelerate and iteration < max_iter:
            x0, x1, x2 = pack(*prev_params), pack(*params), pack(*nxt)
            r, v = x1 - x0, x2 - 2.0 * x1 + x0
            vv = float(v @ v)
            if vv > 0 and np.all(np.isfinite(v)):
                alpha = -np.sqrt(float(r @ r) / vv)
                if alpha < -1.0:
                    alpha = max(alpha, -1e3)
                    cand = unpack(x0 - 2.0 * alpha * r + alpha**2 * v)
                    if 0.0 < cand[0] < 1.0 and (cand[1] is None or 0.0 < cand[1] < 1.0):
                        c_value, c_nxt = evaluate(*cand)
                        if np.isfinite(c_value) and c_value >= value:
                            iteration += 1
                            params, value, nxt = cand, c_value, c_nxt
                            trace.append(value)
                            if callback is not None:
                                callback(iteration, value)
    pi, q, strengths = params
    return dict(pi=pi, q=q, strengths=strengths, trace=trace, n_iter=iteration, converged=converged)


def _run_continuous(runner, k, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate):
    tau = priors.eta_tau
    m = float(start["m"]) if start.get("m") is not None else float(logit(0.7))
    thetas = runner.initial_theta(start.get("theta"), m)
    n_users = runner.n_users
    local = isinstance(runner, LocalRunner)
    if accelerate and not local:
        raise ValueError("accelerate=True for the continuous variant needs a LocalRunner")

    def evaluate(thetas, m, q, strengths):
        new_thetas, st = runner.continuous_pass(thetas, m, q, tau, np.exp(_attentive_table(strengths)) if learned else None)
        value = st["loglik"] + float(log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma))
        if q_fixed is None:
            value += float(log_beta_pdf(q, priors.q_alpha, priors.q_beta))
        if strengths is not None:
            value += float(log_normal_pdf(strengths, 0.0, priors.strength_sigma).sum())
        new_m = (st["theta_sum"] / tau**2 + priors.eta_m_mu / priors.eta_m_sigma**2) / (
            n_users / tau**2 + 1.0 / priors.eta_m_sigma**2
        )
        new_q = q if q_fixed is not None else float(_update_q(st["casual_a"], st["casual"], priors))
        new_s = strengths
        if learned:
            w1, w0 = _split_cells(st["cells"], k)
            new_s = fit_bradley_terry(w1, w0, priors.strength_sigma, start=strengths)
        return value, (new_thetas, float(new_m), new_q, new_s)

    def pack(thetas, m, q, s):
        parts = [np.concatenate(thetas), np.array([m])]
        if q_fixed is None:
            parts.append(np.array([logit(q)]))
        if learned:
            parts.append(s)
        return np.concatenate(parts)

    sizes = None

    def unpack(x):
        pieces, i = [], 0
        for size in sizes:
            pieces.append(x[i : i + size].copy())
            i += size
        m = float(x[i])
        i += 1
        qq = q_fixed
        if q_fixed is None:
            qq = float(expit(x[i]))
            i += 1
        s = x[i:].copy() if learned else None
        return pieces, m, qq, s

    trace: list[float] = []
    params = (thetas, m, q, strengths)
    value, nxt = evaluate(*params)
    trace.append(value)
    if callback is not None:
        callback(0, value)
    converged = False
    iteration = 0
    while True:
        if iteration >= max_iter:
            break
        iteration += 1
        prev_params = params
        params = nxt
        value, nxt = evaluate(*params)
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if has_converged(trace, tol):
            converged = True
            break
        if accelerate and iteration < max_iter:
            sizes = [t.shape[0] for t in params[0]]
            x0, x1, x2 = pack(*prev_params), pack(*params), pack(*nxt)
            r, v = x1 - x0, x2 - 2.0 * x1 + x0
            vv = float(v @ v)
            if vv > 0 and np.all(np.isfinite(v)):
                alpha = -np.sqrt(float(r @ r) / vv)
                if alpha < -1.0:
                    alpha = max(alpha, -1e3)
                    cand = unpack(x0 - 2.0 * alpha * r + alpha**2 * v)
                    if cand[2] is None or 0.0 < cand[2] < 1.0:
                        c_value, c_nxt = evaluate(*cand)
                        if np.isfinite(c_value) and c_value >= value:
                            iteration += 1
                            params, value, nxt = cand, c_value, c_nxt
                            trace.append(value)
                            if callback is not None:
                                callback(iteration, value)
    thetas, m, q, strengths = params
    return dict(thetas=thetas, m=m, q=q, tau=tau, strengths=strengths, trace=trace, n_iter=iteration, converged=converged)


# --------------------------------------------------------------------------- Dask: scan, encode, shuffle


_ROW_RE = re.compile(r"input row (\d+)")


def _partition_texts(frame: pd.DataFrame, columns: dict, check: bool):
    """Text ids (per unique value) of one partition, with factorize codes; validates when ``check``."""
    out = {}
    for role in ("user", "model_a", "model_b"):
        name = columns[role]
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        text, missing = _uniques_as_text(uniques)
        if check:
            bad = codes < 0
            if missing.any():
                bad |= missing[np.where(codes < 0, 0, codes)] & (codes >= 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"column '{name}' has {int(bad.sum())} missing value(s), first at input row {row + 1}")
        out[role] = (codes, text.astype(str))
    return out


def _scan_partition(frame: pd.DataFrame, columns: dict) -> dict:
    """Row count, unique text ids and the first validation error of one partition."""
    try:
        texts = _partition_texts(frame, columns, check=True)
        choice = _encode_winner(frame[columns["winner"]], columns["winner"])
        if columns.get("p_a") is not None:
            ca, ta = texts["model_a"]
            cb, tb = texts["model_b"]
            same = ta[ca] == tb[cb]
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _encode_p_a(frame[columns["p_a"]].reset_index(drop=True), columns["p_a"], (choice >= 0) & ~same)
        error = None
    except InputError as exc:
        return {"n": len(frame), "users": np.zeros(0, str), "models": np.zeros(0, str), "error": str(exc)}
    users = np.sort(texts["user"][1])
    if users.shape[0] > 1 and (users[1:] == users[:-1]).any():
        users = np.unique(users)
    models = np.unique(np.concatenate([texts["model_a"][1], texts["model_b"][1]]))
    return {"n": len(frame), "users": users, "models": models, "error": error}


def _header(scan: dict):
    return scan["n"], scan["error"]


def _pick(scan: dict, key: str):
    return scan[key]


def _union(*arrays):
    return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, str)


def _tree_union(items: list, split_every: int = 8):
    """Tree reduction of sorted unique arrays with np.union1d on the workers."""
    from dask import delayed

    level = list(items)
    while len(level) > 1:
        level = [delayed(_union)(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


def _encode_partition(frame: pd.DataFrame, columns: dict, user_vocab, model_vocab, strong_code, mu, use_p_a) -> pd.DataFrame:
    """Codes of one partition against the global vocabularies: user, cell (-1 unusable), reason, known."""
    texts = _partition_texts(frame, columns, check=False)
    cu, tu = texts["user"]
    user = np.searchsorted(user_vocab, tu)[cu].astype(np.int32)
    ca, ta = texts["model_a"]
    cb, tb = texts["model_b"]
    a = np.searchsorted(model_vocab, ta)[ca].astype(np.int64)
    b = np.searchsorted(model_vocab, tb)[cb].astype(np.int64)
    choice = _encode_winner(frame[columns["winner"]], columns["winner"])
    reason = np.where(a == b, 2, np.where(choice < 0, 1, 0)).astype(np.int8)
    k = model_vocab.shape[0]
    usable = reason == 0
    cell = np.where(usable, (a * k + b) * 2 + np.maximum(choice, 0), -1).astype(np.int32)
    out = {"user": user, "cell": cell, "reason": reason}
    if mu is not None:
        out["known"] = np.where(a == strong_code, logit(mu), np.where(b == strong_code, -logit(mu), 0.0))
    elif use_p_a and columns.get("p_a") is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = _encode_p_a(frame[columns["p_a"]].reset_index(drop=True), columns["p_a"], usable)
        out["known"] = logit(p)
    return pd.DataFrame(out)


def _broadcast(value):
    """Send a (possibly large) array to every worker once: a scattered future under
    distributed, else a Delayed (the local schedulers share memory)."""
    from dask import delayed

    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return delayed(value)
    return client.scatter(value, broadcast=True, hash=False)


def _block_from_frame(frame: pd.DataFrame, n_models: int, known: bool) -> Block:
    user = frame["user"].to_numpy()
    reason = frame["reason"].to_numpy()
    usable = reason == 0
    cell = frame["cell"].to_numpy()[usable]
    if not known:
        block = make_block(user, usable, n_models, cell=cell)
    else:
        block = make_block(user, usable, n_models, choice=(cell & 1).astype(np.int8), known_logit=frame["known"].to_numpy()[usable])
    block.ties = int((reason == 1).sum())
    block.same_model = int((reason == 2).sum())
    return block


@dataclass
class DaskFit:
    """What :func:`fit_dask` hands back: the EM result over all users and models, plus bookkeeping.

    Attributes
    ----------
    em : bayes_annot.em.EMResult
        Arrays over all users (``user_labels`` order) and models.
    user_labels, model_labels : numpy.ndarray of str (object)
        Sorted vocabularies, as :func:`bayes_annot.data.prepare` builds them.
    n_rows_user : int64 array
        Input rows per user (ties and same-model pairs included).
    n_labels_model : int64 array
        Usable labels per model (as ``model_a`` or ``model_b``).
    pair_counts : (K, K) array
        Usable labels per (model_a, model_b) (the comparison graph).
    counts : dict
        ``rows, rows_in_likelihood, ties, same_model, users, models``.
    columns : dict
        Resolved role -> column name.
    strength_mode : str
        ``"learned"`` or ``"known (...)"``, as :func:`bayes_annot.fit.build_problem` says.
    strengths : array
        The learned strengths, or the implied ones for a known ``mu``.
    n_partitions : int
        Blocks after the shuffle by user.
    timings : dict
        Seconds spent in scan, encode+shuffle+persist, EM.
    """

    em: EMResult
    user_labels: np.ndarray
    model_labels: np.ndarray
    n_rows_user: np.ndarray
    n_labels_model: np.ndarray
    pair_counts: np.ndarray
    counts: dict
    columns: dict
    strength_mode: str
    strengths: np.ndarray | None
    n_partitions: int
    timings: dict = field(default_factory=dict)

    @property
    def parameters(self) -> dict:
        em = self.em
        params = {"pi": em.pi, "q": em.q} if em.variant == "two-class" else {"m": em.m, "tau": em.tau, "q": em.q}
        active = em.n_labels_user > 0
        params["mean_quality"] = float(np.mean(em.quality[active])) if active.any() else float("nan")
        return params

    def to_estimates(self):
        """The engine-neutral :class:`bayes_annot.fit.Estimates` of this fit."""
        from .fit import Estimates

        em = self.em
        return Estimates(
            engine="em", variant=em.variant, quality=em.quality,
            p_good=em.p_eta_above_half if em.variant == "continuous" else em.quality,
            n_labels_user=em.n_labels_user, informative=em.informative, strengths=self.strengths,
            parameters=self.parameters, loglik=em.loglik, loglik_trace=em.loglik_trace, n_iter=em.n_iter,
            converged=em.converged, runtime_seconds=em.runtime_seconds, user_loglik=em.user_loglik,
        )

    def components(self) -> np.ndarray:
        """Connected component of each model in the comparison graph (as ``fit._graph_components``)."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        _, labels = connected_components(csr_matrix(self.pair_counts > 0), directed=False)
        return labels


def fit_dask(
    ddf,
    *,
    model: str = "two-class",
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
    p_a: str | None = None,
    use_p_a: bool = True,
    mu: float | None = None,
    strong_model: str | None = None,
    q: float | None = None,
    priors: Priors | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = 0.2,
    start: dict | None = None,
    npartitions: int | None = None,
    callback=None,
) -> DaskFit:
    """Fit the behaviour model by EM on a Dask DataFrame (map-reduce over partitions).

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        One row per annotation (columns as for :func:`bayes_annot.fit`).
    model : {"two-class", "continuous"}
    user, model_a, model_b, winner, p_a, use_p_a, mu, strong_model, q, priors, tol, max_iter
        As in :func:`bayes_annot.fit`.
    informative_tol : float
        As in :func:`bayes_annot.em.fit_em`.
    start : dict, optional
        Warm start (``pi``, ``q``, ``strengths``, ``theta`` (n_users, NaN = new), ``m``)
        in this data's vocabularies.
    npartitions : int, optional
        Number of blocks after the shuffle by user (default: the input's).
    callback : callable(iteration, loglik), optional

    Returns
    -------
    DaskFit

    Raises
    ------
    InputError
        As :func:`bayes_annot.data.prepare` (missing columns or ids, unknown
        winners, bad ``p_a``); row numbers count from the start of the log.

    Notes
    -----
    Runs on whatever scheduler Dask is configured with: a ``distributed.Client``
    when one is active, else the local threaded scheduler.
    """
    import dask
    from dask import delayed

    timings = {}
    t0 = time.perf_counter()
    if model not in ("two-class", "continuous"):
        raise InputError(f"unknown model '{model}', expected one of two-class, continuous")
    if q is not None and not 0.0 < q < 1.0:
        raise InputError(f"q must lie in (0, 1), got {q}")
    priors = priors or Priors()
    meta = ddf._meta
    if meta.columns.duplicated().any():
        raise InputError(f"column '{meta.columns[meta.columns.duplicated()][0]}' appears more than once")
    columns = _resolve_columns(meta, ColumnMap(user=user, model_a=model_a, model_b=model_b, winner=winner, p_a=p_a))
    wanted = [columns[r] for r in ("user", "model_a", "model_b", "winner")] + ([columns["p_a"]] if columns.get("p_a") else [])
    narrow = ddf[list(dict.fromkeys(wanted))]
    parts = narrow.to_delayed()
    scans = [delayed(_scan_partition)(p, columns) for p in parts]
    headers, user_vocab, model_vocab = dask.compute(
        [delayed(_header)(s) for s in scans],
        _tree_union([delayed(_pick)(s, "users") for s in scans]),
        _tree_union([delayed(_pick)(s, "models") for s in scans]),
    )
    lengths = np.array([h[0] for h in headers], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, (_, error) in enumerate(headers):
        if error is not None:
            raise InputError(_ROW_RE.sub(lambda mt: f"input row {int(mt.group(1)) + offsets[i]}", error))
    if offsets[-1] == 0:
        raise InputError("input is empty: no rows")
    if len(model_vocab) < 2:
        raise InputError(
            f"only one model ('{model_vocab[0]}') in columns '{columns['model_a']}'/'{columns['model_b']}': nothing to compare"
        )
    timings["scan"] = time.perf_counter() - t0
    k = int(model_vocab.shape[0])
    strength_mode, strong_code = "learned", None
    if mu is not None:
        if not 0.0 < mu < 1.0:
            raise InputError(f"mu must lie in (0, 1), got {mu}")
        if strong_model is None:
            raise InputError("a global mu needs --strong-model NAME (the model an attentive user prefers with probability mu)")
        matches = np.flatnonzero(model_vocab == str(strong_model).strip())
        if len(matches) == 0:
            raise InputError(f"strong model '{strong_model}' is not among the models: {', '.join(map(str, model_vocab[:20]))}")
        strong_code = int(matches[0])
        strength_mode = f"known (mu={mu:g} for '{model_vocab[strong_code]}')"
    elif use_p_a and columns.get("p_a") is not None:
        strength_mode = f"known (column '{columns['p_a']}')"
    known = strength_mode != "learned"

    t1 = time.perf_counter()
    uv, mv = _broadcast(user_vocab), _broadcast(model_vocab)
    meta_enc = {"user": np.int32, "cell": np.int32, "reason": np.int8}
    if known:
        meta_enc["known"] = float
    meta_frame = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in meta_enc.items()})
    encoded = narrow.map_partitions(
        _encode_partition, columns, uv, mv, strong_code, mu, use_p_a, meta=meta_frame
    )
    nparts = npartitions or narrow.npartitions
    shuffled = encoded.shuffle("user", npartitions=nparts)
    blocks = [delayed(_block_from_frame)(p, k, known) for p in shuffled.to_delayed()]
    blocks = list(dask.persist(*blocks))
    summaries = dask.compute(*[delayed(_block_counts)(b) for b in blocks])
    timings["encode_shuffle"] = time.perf_counter() - t1
    n_users = int(user_vocab.shape[0])
    cells = np.sum([s["cells"] for s in summaries], axis=0)
    counts_all = np.sum([s["tally"] for s in summaries], axis=0)  # rows, usable
    pair_counts = cells.reshape(k, k, 2).sum(axis=2)
    n_labels_model = (pair_counts.sum(axis=1) + pair_counts.sum(axis=0)).astype(np.int64)
    n_rows_user = np.zeros(n_users, dtype=np.int64)
    for s in summaries:
        n_rows_user[s["users"]] = s["n_rows"]
    counts = {
        "rows": int(offsets[-1]),
        "rows_in_likelihood": int(counts_all[1]),
        "ties": int(np.sum([s["ties"] for s in summaries])),
        "same_model": int(np.sum([s["same_model"] for s in summaries])),
        "users": n_users,
        "models": k,
    }
    t2 = time.perf_counter()
    runner = DaskRunner(blocks, n_users)
    em = run_em(
        runner, k, learned=not known, variant=model, priors=priors, q_fixed=q, tol=tol, max_iter=max_iter,
        informative_tol=informative_tol, start=start, callback=callback,
    )
    timings["em"] = time.perf_counter() - t2
    strengths = em.strengths
    if strengths is None and mu is not None:
        strengths = np.full(k, -logit(mu) / k)
        strengths[strong_code] = logit(mu) * (k - 1) / k
    del blocks, runner
    return DaskFit(
        em=em, user_labels=np.asarray(user_vocab, dtype=object), model_labels=np.asarray(model_vocab, dtype=object),
        n_rows_user=n_rows_user, n_labels_model=n_labels_model, pair_counts=pair_counts, counts=counts, columns=columns,
        strength_mode=strength_mode, strengths=strengths, n_partitions=nparts, timings=timings,
    )


def _block_counts(block: Block) -> dict:
    k = block.n_models
    cells = block.cell_sums_by_user(np.ones(block.users.shape[0])) if block.learned else None
    return {
        "users": block.users, "n_rows": block.n_rows, "cells": cells if cells is not None else np.zeros(2 * k * k),
        "tally": np.array([int(block.n_rows.sum()), int(block.n_user.sum())]),
        "ties": block.ties, "same_model": block.same_model,
    }


# --------------------------------------------------------------------------- rows accounting


def _rows_partition(frame, columns, user_vocab, model_vocab, quality, keep, out_columns):
    texts = _partition_texts(frame, columns, check=False)
    cu, tu = texts["user"]
    user = np.searchsorted(user_vocab, tu)[cu]
    ca, ta = texts["model_a"]
    cb, tb = texts["model_b"]
    same = (ta[ca] == tb[cb])
    choice = _encode_winner(frame[columns["winner"]], columns["winner"])
    usable = ~same & (choice >= 0)
    kept = usable & keep[user]
    code = np.where(usable, np.where(kept, 0, 3), np.where(same, 2, 1)).astype(np.int8)
    out = frame.copy()
    out.columns = out_columns
    out["kept"] = kept
    out["reason"] = pd.Categorical.from_codes(code, categories=REASON_CATEGORIES)
    out["weight"] = quality[user]
    return out


def to_rows(ddf, fit: DaskFit, keep: np.ndarray, quality: np.ndarray | None = None):
    """Every input row with ``kept``, ``reason`` and ``weight``, as a lazy Dask DataFrame.

    Computed partition by partition from the input (same order as the input);
    only the vocabulary and the per-user ``quality``/``keep`` arrays are sent to
    the workers. Write it with ``.to_csv(path, single_file=True, index=False)``
    or ``.to_parquet(dir)``. Input columns named ``kept``, ``reason`` or
    ``weight`` are renamed ``input_<name>`` as in ``FitResult.rows``.
    """
    quality = fit.em.quality if quality is None else quality
    clashes = {"kept", "reason", "weight"}
    out_columns = [f"input_{c}" if c in clashes else c for c in ddf.columns]
    meta = ddf._meta.copy()
    meta.columns = out_columns
    meta["kept"] = pd.Series([], dtype=bool)
    meta["reason"] = pd.Categorical([], categories=REASON_CATEGORIES)
    meta["weight"] = pd.Series([], dtype=float)
    uv = _broadcast(np.asarray(fit.user_labels).astype(str))
    mv = _broadcast(np.asarray(fit.model_labels).astype(str))
    return ddf.map_partitions(
        _rows_partition, fit.columns, uv, mv, _broadcast(np.asarray(quality, dtype=float)),
        _broadcast(np.asarray(keep, dtype=bool)), out_columns, meta=meta,
    )
