r"""The block EM engine: EM passes over users' labels grouped in blocks.

A :class:`Block` holds the usable labels of a set of users, sorted by user:
with learned strengths, the ``users x cells`` count matrix (cell = ``2 * pair +
choice``, ``pair`` an index into the compared model pairs of a
:class:`~bayes_annot.pairs.PairTable`) in CSR form, so that per-user sums of a
cell table are a sparse mat-vec and the ``2 P`` table of weighted win counts
(the Bradley–Terry M-step's input) its transpose. Without a pair table the cells
are the dense ``(model_a, model_b, choice)`` index of ``2 K^2`` cells. A *runner* applies a pass to every
block and sums the sufficient statistics; :func:`run_class_em` is the driver loop of
the two-class variant with ``C`` taste classes (casual + ``C`` attentive types, all
classes' statistics in one pass; ``C = 1`` is the two-class variant), :func:`run_em`
that of either variant with one ranking (the penalised log-likelihood of
:mod:`bayes_annot.likelihood`, exact block-wise M-steps,
:func:`bayes_annot.em.has_converged`, optional SQUAREM extrapolation).

Every EM fit of :func:`bayes_annot.fit` (in memory: one block over all users,
:class:`LocalRunner`), :mod:`bayes_annot.incremental` (the previous fit's
block merged with the new labels' block by :func:`merge_blocks`) and
:mod:`bayes_annot.dask_em` (one block per partition, on the workers) runs here, and so does
every taste-class fit (:func:`bayes_annot.tastes.fit_tastes` drives :func:`run_class_em`
over any of these runners).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
from .ufuncs import expit, log_expit, logit

from .casual import casual_table, fit_casual
from .em import (
    EMResult, _update_q, has_converged, max_change, no_verdict_continuous, no_verdict_shares, param_tolerance,
    population_step,
)
from .likelihood import ETA_GRID, EtaGrid, Priors, log_normal_pdf, log_prior, log_type_shares
from .spec import BehaviourSpec
from .style import fit_style, style_davidson_tables, style_logits, style_offsets, style_table
from .ties import davidson_logprobs, davidson_tables, log_prior_ties, nu_step, tie_rate_step, tie_start
from .pairs import (
    DENSE_MAX_MODELS,
    EM_START_TOL,
    PairTable,
    _PairHessian,
    AttentiveTables,
    bt_fit_cells,
    bt_newton_step,
    uses_sparse_solve,
    differs_cells_pairs,
    fit_bradley_terry_classes,
    fit_bradley_terry_pairs,
    fit_davidson_pairs,
    numba_kernels,
)

__all__ = ["Block", "EMState", "make_block", "merge_blocks", "cell_index_map", "pair_cell_map", "LocalRunner", "run_em",
           "run_class_em", "ClassEMResult", "known_davidson_tables", "with_known_values"]

# --------------------------------------------------------------------------- blocks (pure numpy)


def _float_vector(values) -> np.ndarray:
    """``values`` as a contiguous float64 vector (no copy when it is one)."""
    return np.ascontiguousarray(values, dtype=np.float64)


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
    cell: np.ndarray | None = None  # int32 (n,) 2 * pair + choice when strengths are learned
    choice: np.ndarray | None = None  # int8 (n,) (known mode)
    known_logit: np.ndarray | None = None  # float (n,) (known mode)
    ties: int = 0  # rows of these users that are ties / same-model pairs (bookkeeping)
    same_model: int = 0
    pairs: PairTable | None = None  # the pair vocabulary of ``cell`` (None: every K x K pair)
    casual_cell: np.ndarray | None = None  # int32 (n,) casual cell of each entry (casual covariates), same order
    n_casual: int = 0  # casual cells of the design (bayes_annot.casual.CasualDesign.n_cells)
    _counts: object = field(default=None, repr=False)
    _casual_counts: object = field(default=None, repr=False)
    _joint_counts: object = field(default=None, repr=False)
    _joint_totals: np.ndarray | None = field(default=None, repr=False)
    _inactive: np.ndarray | None = field(default=None, repr=False)
    _cell_totals: np.ndarray | None = field(default=None, repr=False)
    _entry_choice: np.ndarray | None = field(default=None, repr=False)
    _known_cells: tuple | None = field(default=None, repr=False)
    # ties in the likelihood (bayes_annot.ties): each tie entry's pair index, grouped by user like the entries
    tie_cell: np.ndarray | None = None  # int32 (n_ties,) pair index (known: index into known_values; style: pair
    # n_tie_casual + casual cell); None: not modelled
    n_tie_casual: int = 1  # casual cells per pair in the tie index (> 1: an attentive style term, bayes_annot.style)
    tie_indptr: np.ndarray | None = None  # (Ul + 1,) start of each user's tie entries
    n_user_tie: np.ndarray | None = None  # float (Ul,) ties of each user
    # known strengths with ties: the vocabulary of the entries' and ties' known log-odds (sorted, distinct)
    known_values: np.ndarray | None = None
    _tie_counts: object = field(default=None, repr=False)
    _grid_tie_counts: object = field(default=None, repr=False)
    _tie_appended_totals: np.ndarray | None = field(default=None, repr=False)
    _known_counts: object = field(default=None, repr=False)
    _by_cell: tuple | None = field(default=None, repr=False)

    @property
    def has_ties(self) -> bool:
        """Whether the block's ties enter the likelihood (it then holds them, possibly none)."""
        return self.tie_cell is not None

    def tie_matrix(self):
        """``users x P`` CSR counts of each user's ties by pair (cached)."""
        if self._tie_counts is None:
            from scipy.sparse import csr_matrix

            self._tie_counts = csr_matrix((np.ones(self.tie_cell.shape[0]), self.tie_cell, self.tie_indptr),
                                          shape=(self.users.shape[0], self.n_tie_cells))
        return self._tie_counts

    @property
    def n_tie_cells(self) -> int:
        """Columns of :meth:`tie_matrix`: the pairs (learned strengths; times the casual cells with a style term)
        or the known log-odds values."""
        return self.n_cells // 2 * self.n_tie_casual if self.learned else int(self.known_values.shape[0])

    def known_matrix(self):
        """Known strengths with ties: ``users x 2 V`` CSR counts by ``2 * value + choice`` (``V`` the
        :attr:`known_values`; cached), so a table over the values sums per user as a learned block's cells do."""
        if self._known_counts is None:
            from scipy.sparse import csr_matrix

            cell = 2 * np.searchsorted(self.known_values, self.known_logit) + self.choice
            self._known_counts = csr_matrix((np.ones(self.n_entries), cell, self.indptr),
                                            shape=(self.users.shape[0], 2 * self.known_values.shape[0]))
        return self._known_counts

    @property
    def n_user_all(self) -> np.ndarray:
        """Labels of each user in the likelihood: decided ones, plus ties when they are modelled."""
        return self.n_user if self.n_user_tie is None else self.n_user + self.n_user_tie

    @property
    def n_entries(self) -> int:
        return int(self.cell.shape[0] if self.cell is not None else self.choice.shape[0])

    @property
    def learned(self) -> bool:
        return self.cell is not None

    @property
    def n_cells(self) -> int:
        """Length of a cell table: ``2 P`` (``2 K^2`` without a pair table)."""
        return 2 * (self.pairs.n_pairs if self.pairs is not None else self.n_models * self.n_models)

    @property
    def inactive(self) -> np.ndarray:
        """Local indices of users without usable labels (cached)."""
        if self._inactive is None:
            self._inactive = np.flatnonzero(self.n_user_all == 0)
        return self._inactive

    def matrix(self, data: np.ndarray | None = None):
        """``users x cells`` CSR matrix of the entries (``data`` per entry; ones by default)."""
        from scipy.sparse import csr_matrix

        shape = (self.users.shape[0], self.n_cells)
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
        """Per-user sums of ``table[cell]`` over the user's entries (many models: in cell order,
        :meth:`entries_by_cell`; else in entry order, the CSR mat-vec)."""
        if self.cell_ordered_passes and np.ndim(table) == 1:
            cell, user = self.entries_by_cell()
            kernels = self._kernels()
            if kernels is not None:  # the same additions in the same order, without the gathered temporary
                return kernels.gather_add(user, cell, _float_vector(table), np.zeros(self.users.shape[0]))
            return np.bincount(user, weights=np.take(table, cell), minlength=self.users.shape[0])
        return self.matrix() @ table

    def expand(self, per_user: np.ndarray) -> np.ndarray:
        """Per-user values repeated for each of the user's entries."""
        return np.repeat(per_user, self.n_user.astype(np.int64))

    def cell_sums(self, values: np.ndarray) -> np.ndarray:
        """Sums of per-entry values by pair cell: a table of ``n_cells``."""
        return self.matrix(values).T @ np.ones(self.users.shape[0])

    def cell_sums_by_user(self, per_user: np.ndarray) -> np.ndarray:
        """``sum_u per_user[u] * count[u, cell]``: the cell table of per-user weights (each cell's terms added in
        user order both ways: the CSR transpose's mat-vec, or many models :meth:`entries_by_cell`, bit for bit)."""
        if self.cell_ordered_passes and np.ndim(per_user) == 1:
            cell, user = self.entries_by_cell()
            kernels = self._kernels()
            if kernels is not None:
                return kernels.gather_add(cell, user, _float_vector(per_user), np.zeros(self.n_cells))
            return np.bincount(cell, weights=np.take(per_user, user), minlength=self.n_cells)
        return self.matrix().T @ per_user

    def _kernels(self):
        """The compiled kernels when they serve these cell-ordered passes (:func:`~bayes_annot.pairs.numba_kernels`),
        else ``None``."""
        return numba_kernels(self.n_models, self.n_cells // 2)

    @property
    def cell_ordered_passes(self) -> bool:
        """Whether the sparse passes go through the entries in cell order (:meth:`entries_by_cell`): learned
        strengths of more than :data:`~bayes_annot.pairs.DENSE_MAX_MODELS` models, whose cell tables (``2 P``
        entries, 16 MB at 10^6 pairs) do not stay in cache, while the per-user arrays do."""
        return self.cell is not None and self.n_models > DENSE_MAX_MODELS

    def entries_by_cell(self) -> tuple[np.ndarray, np.ndarray]:
        """``(cell, user)`` of every entry (``intp``; ``user`` the local index) sorted by cell, a cell's entries in
        user order (cached). A pass then reads and writes the cell tables in order and only the per-user arrays
        at random: 10^6 labels over 10^6 pairs, 6 + 8 ms against the CSR mat-vecs' 11 + 16 ms (AMD EPYC, loaded),
        which gather from and scatter into the cell table at random."""
        by_cell = self._by_cell  # read once: a compact() on another thread may reset the cache meanwhile
        if by_cell is None:
            n_users = self.users.shape[0]
            user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(self.indptr))
            bits = max(int(n_users - 1).bit_length(), 1)
            if int(self.n_cells).bit_length() + bits < 63:
                # one sort of cell << bits | user: the entries are grouped by user in ascending order, so this is the
                # stable order by cell (entries with the same cell and user are the same entry), without gathers
                key = np.left_shift(self.cell, bits, dtype=np.int64)
                key |= user
                key.sort()
                cell, user = np.right_shift(key, bits), key & ((1 << bits) - 1)
            else:
                order = _sort_order(self.cell)
                cell, user = self.cell[order], user[order]
            by_cell = (cell.astype(np.intp, copy=False), user.astype(np.intp, copy=False))
            self._by_cell = by_cell  # one assignment of the finished pair
        return by_cell

    def entry_choice(self) -> np.ndarray:
        """Per entry: 1 when ``model_a`` was chosen (cached)."""
        if not self.learned:
            return self.choice
        choice = self._entry_choice  # read once (as entries_by_cell)
        if choice is None:
            choice = self._entry_choice = (self.cell & 1).astype(np.int8)
        return choice

    def casual_index(self) -> np.ndarray:
        """Per entry: ``2 * casual_cell + choice``, the entry of the casual table (casual covariates only)."""
        return 2 * self.casual_cell.astype(np.int64) + self.entry_choice()

    def casual_matrix(self):
        """``users x 2 n_casual`` CSR counts of each user's labels by casual table entry (cached)."""
        if self._casual_counts is None:
            from scipy.sparse import csr_matrix

            self._casual_counts = csr_matrix(
                (np.ones(self.n_entries), self.casual_index(), self.indptr), shape=(self.users.shape[0], 2 * self.n_casual)
            )
        return self._casual_counts

    def casual_sums(self, casual) -> np.ndarray:
        """Per-user sums of casual log-probabilities: ``casual`` the position bias ``q`` (no covariates:
        ``n_a log q + (n - n_a) log(1 - q)``) or the casual table ``(2 n_casual,)``
        (:func:`bayes_annot.casual.casual_table`: one sparse mat-vec)."""
        if self.casual_cell is None:
            return self.n_user_a * np.log(casual) + (self.n_user - self.n_user_a) * np.log1p(-casual)
        return self.casual_matrix() @ casual

    @property
    def joint(self) -> bool:
        """Whether the passes use the joint (pair cell x casual cell) counts: learned strengths with covariates."""
        return self.cell is not None and self.casual_cell is not None

    def _joint_index(self) -> np.ndarray:
        """Per entry: its joint entry ``(pair n_casual + casual_cell) 2 + choice``."""
        cell = self.cell.astype(np.int64)
        return ((cell >> 1) * self.n_casual + self.casual_cell) * 2 + (cell & 1)

    def _joint_matrix(self):
        """``users x (2 P n_casual)`` CSR counts by joint entry ``(pair n_casual + casual_cell) 2 + choice`` (cached)."""
        if self._joint_counts is None:
            from scipy.sparse import csr_matrix

            self._joint_counts = csr_matrix((np.ones(self.n_entries), self._joint_index(), self.indptr),
                                            shape=(self.users.shape[0], self.n_cells * self.n_casual))
        return self._joint_counts

    def tie_appended_matrix(self):
        """``users x (n_pass + P)`` CSR counts: every entry in its pass column (its joint entry with casual
        covariates, else its cell; ``n_pass`` such columns), then every tie in column ``n_pass + pair``
        (cached; learned strengths with ties). One sparse pass then covers decided labels and ties."""
        if self._grid_tie_counts is None:
            from scipy.sparse import csr_matrix

            if self.casual_cell is None:
                column, n_pass = self.cell.astype(np.int64), self.n_cells
            else:
                column, n_pass = self._joint_index(), self.n_cells * self.n_casual
            indptr = self.indptr.astype(np.int64) + self.tie_indptr
            indices = np.empty(int(indptr[-1]), dtype=np.int64)
            # a user's row: its decided entries, then its ties
            indices[np.arange(column.shape[0]) + np.repeat(self.tie_indptr[:-1], np.diff(self.indptr))] = column
            indices[np.arange(self.tie_cell.shape[0]) + np.repeat(self.indptr[1:], np.diff(self.tie_indptr))] = \
                n_pass + self.tie_cell
            self._grid_tie_counts = csr_matrix((np.ones(indices.shape[0]), indices, indptr),
                                               shape=(self.users.shape[0], n_pass + self.n_tie_cells))
        return self._grid_tie_counts

    def _pass_totals(self, ties: bool) -> np.ndarray:
        """Column totals of the joint counts (``ties``: of :meth:`tie_appended_matrix`) (cached)."""
        if ties:
            if self._tie_appended_totals is None:
                self._tie_appended_totals = self.tie_appended_matrix().T @ np.ones(self.users.shape[0])
            return self._tie_appended_totals
        if self._joint_totals is None:
            self._joint_totals = self._joint_matrix().T @ np.ones(self.users.shape[0])
        return self._joint_totals

    def joint_two_class_terms(self, pi: float, att_table: np.ndarray, cas_table: np.ndarray, ties=None):
        r"""The two-class E-step of a joint block (learned strengths, casual covariates) from ONE forward and
        ONE transposed sparse pass over its labels (and its ties, appended as columns when they are modelled).

        A user's posterior needs only :math:`D_u = A_u - C_u` (attentive minus casual log-probability sums):
        one mat-vec of the tables' difference. With :math:`z_u = \operatorname{logit}\pi + D_u`, the
        objective's share is :math:`\sum_u \log(\pi e^{A_u} + (1 - \pi) e^{C_u}) = \sum_u C_u + \sum_u
        [\log(1 - \pi) + \operatorname{softplus}(z_u)]`, and :math:`\sum_u C_u` is the column totals times the
        casual table. ``att_table`` ``(2 P,)`` (log P_att per pair cell; ``(2 P n_casual,)`` per joint entry with a
        style term), ``cas_table`` ``(2 n_casual,)``; ``ties``: ``(log P_att(tie) per tie column, t)``. Returns ``(p_att (Ul,), softplus part (Ul,), sum_u C_u,
        weighted)``, ``weighted`` the columns' ``p_att``-weighted counts (the transposed pass). The same
        numbers as :func:`block_two_class_users` to rounding (tested through the engines' equality).
        """
        n_pairs = self.n_cells // 2
        shape = (n_pairs, self.n_casual, 2)
        att = np.broadcast_to(np.asarray(att_table, dtype=float).reshape(n_pairs, -1, 2), shape).reshape(-1)
        cas = np.broadcast_to(np.asarray(cas_table, dtype=float).reshape(1, self.n_casual, 2), shape).reshape(-1)
        if ties is None:
            matrix, cas_cols, diff = self._joint_matrix(), cas, att - cas
        else:
            tie_att, t = np.asarray(ties[0], dtype=float).reshape(-1), float(ties[1])
            log_t, log_1m_t = np.log(t), np.log1p(-t)
            matrix = self.tie_appended_matrix()
            cas_cols = np.concatenate([cas + log_1m_t, np.full(self.n_tie_cells, log_t)])
            diff = np.concatenate([att, tie_att]) - cas_cols
        z = matrix @ diff
        z += np.log(pi) - np.log1p(-pi)
        p_att = expit(z)
        upper = z >= 0
        softplus = np.where(upper, z, 0.0) - np.log(np.where(upper, p_att, 1.0 - p_att))
        softplus += np.log1p(-pi)
        return p_att, softplus, float(self._pass_totals(ties is not None) @ cas_cols), matrix.T @ p_att

    def is_joint_table(self, table) -> bool:
        """Whether an attentive table is per joint entry ``(pair n_casual + casual cell) 2 + choice`` (``2 P n_casual``
        values, the attentive style term of :mod:`bayes_annot.style`) rather than per pair cell (``2 P``)."""
        return table is not None and self.joint and np.shape(table)[0] == self.n_cells * self.n_casual

    def joint_sums(self, att_table: np.ndarray, cas_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-user sums of the attentive table (by pair cell, or by joint entry with a style term) and the casual
        table (by casual cell): two sparse mat-vecs of the joint counts (today's one, plus one for the casual side)."""
        n_pairs = self.n_cells // 2
        if self.is_joint_table(att_table):
            att = np.asarray(att_table).reshape(n_pairs, self.n_casual, 2)
        else:
            att = np.broadcast_to(np.asarray(att_table).reshape(n_pairs, 1, 2), (n_pairs, self.n_casual, 2))
        cas = np.broadcast_to(np.asarray(cas_table).reshape(1, self.n_casual, 2), (n_pairs, self.n_casual, 2))
        matrix = self._joint_matrix()
        return matrix @ att.reshape(-1), matrix @ cas.reshape(-1)

    def joint_stats(self, att_weight: np.ndarray, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The two-class E-step's cell tables from ONE transposed mat-vec of the joint counts: the pair cell
        table weighted by the users' P(attentive) ``att_weight`` (``full``: the joint table ``(2 P n_casual,)``
        itself, for a style term), and the casual cell table weighted by ``1 - att_weight`` (the joint totals
        minus the attentive-weighted joint table)."""
        n_pairs = self.n_cells // 2
        matrix = self._joint_matrix()
        if self._joint_totals is None:
            self._joint_totals = matrix.T @ np.ones(self.users.shape[0])
        weighted = matrix.T @ att_weight
        casual = (self._joint_totals - weighted).reshape(n_pairs, self.n_casual, 2)
        if full:
            return weighted, casual.sum(axis=0).reshape(-1)
        return weighted.reshape(n_pairs, self.n_casual, 2).sum(axis=1).reshape(-1), casual.sum(axis=0).reshape(-1)

    def release_pass_caches(self) -> None:
        """Drop what only the EM passes use (the CSR matrix with its float data, per-entry choices).

        A block kept for incremental updates then costs about 4 bytes per
        label (plus small per-user arrays); the caches are rebuilt on demand.
        """
        self._counts = None
        self._entry_choice = None
        self._known_cells = None
        self._casual_counts = None
        self._joint_counts = None
        self._joint_totals = None
        self._tie_counts = None
        self._grid_tie_counts = None
        self._tie_appended_totals = None
        self._known_counts = None
        self._by_cell = None

    @property
    def cell_totals(self) -> np.ndarray:
        """Unweighted label count of each (model_a, model_b, choice) cell (cached; learned strengths only)."""
        if self._cell_totals is None:
            self._cell_totals = self.cell_sums_by_user(np.ones(self.users.shape[0]))
        return self._cell_totals


@dataclass
class EMState:
    """What an in-memory EM fit keeps so that :mod:`bayes_annot.incremental` can extend it.

    Attributes
    ----------
    block : Block
        The usable labels of every user of the vocabulary (``users`` = ``0..U-1``).
    pair_counts : PairTable
        Usable labels per compared (model_a, model_b): model label counts, the comparison graph and
        (learned strengths) the pair vocabulary of the block's cells.
    key : tuple
        The likelihood's strength mode (see :func:`bayes_annot.problem.problem_key`);
        an update that changes it refits from the rows instead.
    """

    block: Block
    pair_counts: PairTable
    key: tuple


def make_block(
    user: np.ndarray,
    usable: np.ndarray,
    n_models: int,
    cell: np.ndarray | None = None,
    choice: np.ndarray | None = None,
    known_logit: np.ndarray | None = None,
    users: np.ndarray | None = None,
    pairs: PairTable | None = None,
    casual_cell: np.ndarray | None = None,
    n_casual: int = 0,
    tie: np.ndarray | None = None,
    tie_pair: np.ndarray | None = None,
    tie_logit: np.ndarray | None = None,
    n_tie_casual: int = 1,
) -> Block:
    """Build a :class:`Block` from per-row arrays (global user codes, all rows).

    ``cell`` (learned strengths) or ``choice`` + ``known_logit`` (known
    attentive probabilities) are given for the usable rows only, in row order.
    ``users`` (sorted global codes) fixes the block's user set; by default the
    users present in ``user``. ``pairs`` is the pair vocabulary of ``cell``
    (``2 * pair + choice``); without it ``cell`` is the dense ``(a K + b) 2 + choice``.
    ``casual_cell`` (usable rows, row order): each label's casual cell of a design of ``n_casual`` cells.
    ``tie`` (a mask over all rows) and ``tie_pair`` (those rows' pair indices in ``pairs``, row order): the
    ties, when they enter the likelihood (:mod:`bayes_annot.ties`); with known strengths ``tie_logit`` (those
    rows' known log-odds) instead of ``tie_pair``; with an attentive style term each tie's index is
    ``pair n_tie_casual + casual cell`` (``n_tie_casual`` the design's casual cells).
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
        seg_users=nonempty, seg_starts=indptr[:-1][nonempty].astype(np.int64), n_models=n_models, pairs=pairs,
    )
    if cell is not None:
        block.cell = np.asarray(cell, dtype=np.int32)[order]
    else:
        block.choice = np.asarray(choice, dtype=np.int8)[order]
        block.known_logit = np.asarray(known_logit, dtype=float)[order]
    block.n_user_a = block.row_sums(block.entry_choice().astype(float))
    if casual_cell is not None:
        block.casual_cell = np.asarray(casual_cell, dtype=np.int32)[order]
        block.n_casual = int(n_casual)
    if tie is not None:
        block.n_tie_casual = int(n_tie_casual)
        if cell is None:  # known strengths: ties index the vocabulary of known log-odds
            tie_logit = np.asarray(tie_logit, dtype=float).reshape(-1)
            block.known_values = np.unique(np.concatenate([block.known_logit, tie_logit]))
            tie_pair = np.searchsorted(block.known_values, tie_logit)
        _set_ties(block, local_all[np.asarray(tie, dtype=bool)], tie_pair)
    return block


def _set_ties(block: Block, local: np.ndarray, tie_pair) -> None:
    """The block's tie entries from each tie's local user index and pair index (any order; stable by user)."""
    n_local = block.users.shape[0]
    order = _sort_order(np.asarray(local, dtype=np.int64))
    counts = np.bincount(local, minlength=n_local)
    indptr = np.zeros(n_local + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    block.tie_cell = np.asarray(tie_pair, dtype=np.int32).reshape(-1)[order]
    block.tie_indptr = indptr
    block.n_user_tie = counts.astype(float)
    block._inactive = None


def with_known_values(block: Block, values: np.ndarray) -> Block:
    """``block`` (known strengths with ties) re-indexed on the vocabulary ``values`` of known log-odds (a superset
    of its own, e.g. the union over a Dask fit's blocks), so that every block's tables are the same."""
    import copy

    values = np.asarray(values, dtype=float)
    block = copy.copy(block)  # the input (a persisted Dask block) is left as it is
    block.tie_cell = np.searchsorted(values, block.known_values[block.tie_cell]).astype(np.int32)
    block.known_values = values
    block.release_pass_caches()
    block._known_cells = None
    return block


def merge_blocks(
    old: Block,
    new: Block,
    users: np.ndarray,
    user_map: np.ndarray | None = None,
    cell_map: np.ndarray | None = None,
    n_models: int | None = None,
    pairs: PairTable | None = None,
) -> Block:
    """One block holding the entries of ``old`` and ``new`` (each user's old entries, then new ones).

    Equal, entry for entry, to :func:`make_block` on the old rows followed by
    the new rows, but the old entries are only copied (and remapped), never
    re-sorted: the cost is one pass over the old entries plus the new ones.

    Parameters
    ----------
    old, new : Block
        Blocks of the same kind (learned cells, or known attentive log-odds).
        ``new.users`` and ``new.cell`` are already codes of the merged
        vocabularies.
    users : int array
        Sorted global codes of the merged block; must contain every user of
        both blocks (after ``user_map``).
    user_map : int array, optional
        Old global user code -> merged code (monotone), when users were added.
    cell_map : int array, optional
        Old cell index -> merged cell index, when models were added.
    n_models : int, optional
        Models of the merged vocabulary (default ``new.n_models``).
    pairs : PairTable, optional
        Pair vocabulary of the merged cells (default ``new.pairs``); ``cell_map``
        then maps the old block's cells into it (:func:`pair_cell_map`).
    """
    if old.learned != new.learned:
        raise ValueError("cannot merge a learned-strengths block with a known-probabilities block")
    if (old.casual_cell is None) != (new.casual_cell is None) or old.n_casual != new.n_casual:
        raise ValueError("cannot merge blocks with different casual covariates")
    users = np.asarray(users, dtype=np.int64)
    n_local = users.shape[0]
    old_users = old.users if user_map is None else np.asarray(user_map)[old.users]
    dense = n_local > 0 and users[0] == 0 and users[-1] == n_local - 1
    pos_old = old_users if dense else np.searchsorted(users, old_users)
    pos_new = new.users if dense else np.searchsorted(users, new.users)
    count_old = np.zeros(n_local, dtype=np.int64)
    count_new = np.zeros(n_local, dtype=np.int64)
    count_old[pos_old] = np.diff(old.indptr)
    count_new[pos_new] = np.diff(new.indptr)
    counts = count_old + count_new
    total = int(counts.sum())
    index_type = np.int32 if total < 2**31 - 1 else np.int64
    indptr = np.zeros(n_local + 1, dtype=index_type)
    np.cumsum(counts, out=indptr[1:])
    # destination of each new entry: after its user's old entries
    new_lengths = np.diff(new.indptr).astype(np.int64)
    offsets = indptr[:-1][pos_new].astype(np.int64) + count_old[pos_new] - new.indptr[:-1].astype(np.int64)
    dest_new = np.repeat(offsets, new_lengths) + np.arange(new.n_entries, dtype=np.int64)
    from_old = np.ones(total, dtype=bool)
    from_old[dest_new] = False

    def interleave(old_values, new_values, dtype):
        out = np.empty(total, dtype=dtype)
        out[dest_new] = new_values
        out[from_old] = old_values
        return out

    old_is_all = old_users.shape[0] == n_local  # old block covers every user, in order: no scatter needed
    new_is_all = new.users.shape[0] == n_local
    per_user = {}
    for name in ("n_rows", "n_user", "n_user_a"):
        values = getattr(old, name).copy() if old_is_all else np.zeros(n_local, dtype=getattr(old, name).dtype)
        if not old_is_all:
            values[pos_old] += getattr(old, name)
        if new_is_all:
            values += getattr(new, name)
        else:
            values[pos_new] += getattr(new, name)
        per_user[name] = values
    nonempty = np.flatnonzero(counts > 0)
    block = Block(
        users=users, indptr=indptr, seg_users=nonempty, seg_starts=indptr[:-1][nonempty].astype(np.int64),
        n_models=int(n_models if n_models is not None else new.n_models), ties=old.ties + new.ties,
        same_model=old.same_model + new.same_model, pairs=pairs if pairs is not None else new.pairs, **per_user,
    )
    if new.learned:
        old_cell = old.cell if cell_map is None else np.asarray(cell_map, dtype=np.int32)[old.cell]
        block.cell = interleave(old_cell, new.cell, np.int32)
        if old._cell_totals is not None:
            totals = new.cell_totals.copy()
            if cell_map is None:
                totals += old._cell_totals
            else:
                np.add.at(totals, np.asarray(cell_map), old._cell_totals)
            block._cell_totals = totals
    else:
        block.choice = interleave(old.choice, new.choice, np.int8)
        block.known_logit = interleave(old.known_logit, new.known_logit, float)
    if new.casual_cell is not None:
        block.casual_cell = interleave(old.casual_cell, new.casual_cell, np.int32)
        block.n_casual = new.n_casual
    if old.has_ties != new.has_ties:
        raise ValueError("cannot merge a block with modelled ties and one without")
    if new.has_ties and old.n_tie_casual != new.n_tie_casual:
        raise ValueError("cannot merge blocks whose ties carry different casual cells")
    if new.has_ties and not new.learned:  # known log-odds: one vocabulary of both blocks' values
        block.known_values = np.union1d(old.known_values, new.known_values)
        old_pair = np.searchsorted(block.known_values, old.known_values)[old.tie_cell]
        new_pair = np.searchsorted(block.known_values, new.known_values)[new.tie_cell]
        local = np.concatenate([np.repeat(pos_old, np.diff(old.tie_indptr)), np.repeat(pos_new, np.diff(new.tie_indptr))])
        _set_ties(block, local, np.concatenate([old_pair, new_pair]))
    elif new.has_ties:  # each user's old ties, then the new ones (old pairs mapped as their cells are)
        n_tc = new.n_tie_casual
        block.n_tie_casual = n_tc
        old_pair = old.tie_cell if cell_map is None else np.asarray(cell_map, dtype=np.int64)[2 * (
            old.tie_cell.astype(np.int64) // n_tc)] // 2 * n_tc + old.tie_cell.astype(np.int64) % n_tc
        local = np.concatenate([np.repeat(pos_old, np.diff(old.tie_indptr)), np.repeat(pos_new, np.diff(new.tie_indptr))])
        _set_ties(block, local, np.concatenate([old_pair, new.tie_cell]))
    return block


def cell_index_map(model_map: np.ndarray, n_models: int) -> np.ndarray:
    """Old flattened ``(model_a, model_b, choice)`` cell -> cell over ``n_models`` models (old model -> new code)."""
    model_map = np.asarray(model_map, dtype=np.int64)
    k_old = model_map.shape[0]
    a, b, c = np.meshgrid(model_map, model_map, np.arange(2), indexing="ij")
    return ((a * n_models + b) * 2 + c).reshape(2 * k_old * k_old).astype(np.int32)


def pair_cell_map(pair_index: np.ndarray) -> np.ndarray:
    """Old cell ``2 * pair + choice`` -> merged cell, from the merged index of each old pair
    (see :meth:`~bayes_annot.pairs.PairTable.union`)."""
    pair_index = np.asarray(pair_index, dtype=np.int64)
    return (2 * pair_index[:, None] + np.arange(2)).reshape(-1).astype(np.int32)


# ------------------------------------------------------------------ per-block passes


def _block_att_sum(block: Block, table: np.ndarray | None) -> np.ndarray:
    """Per-user sums of attentive log-probabilities."""
    if block.learned:
        return block.user_table_sums(table)
    if table is not None:  # known strengths with ties: Davidson's table over the known values
        return block.known_matrix() @ table
    return block.row_sums(log_expit((2.0 * block.choice - 1.0) * block.known_logit))


def block_cell_counts(block: Block) -> dict:
    """Unweighted pair table (initial strengths, model label counts, comparison graph)."""
    return {"cells": block.cell_totals if block.learned else None}


def two_class_user_terms(att_sum: np.ndarray, cas_sum: np.ndarray, pi: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Posterior P(attentive) and marginal log-likelihood of each user, with two transcendental calls.

    With :math:`z = \operatorname{logit}\pi + A - C` (``A``, ``C``: the user's attentive and
    casual log-probability sums), :math:`p = \sigma(z)` and
    :math:`\log(\pi e^A + (1-\pi) e^C) = \log\pi + A - \log p = \log(1-\pi) + C - \log(1-p)`;
    the first form is used where :math:`p \ge 1/2` and the second elsewhere, so the logarithm
    is always of a number in [1/2, 1] (no cancellation). Equal to
    :func:`~bayes_annot.likelihood.two_class_posterior` and
    :func:`~bayes_annot.likelihood.two_class_user_loglik` to rounding (tested); the E-step's
    cost is dominated by such calls.
    """
    log_pi, log_1m_pi = np.log(pi), np.log1p(-pi)
    z = att_sum - cas_sum
    z += log_pi - log_1m_pi
    p_att = expit(z)
    upper = z >= 0
    user_ll = np.where(upper, att_sum + log_pi, cas_sum + log_1m_pi)
    user_ll -= np.log(np.where(upper, p_att, 1.0 - p_att))
    return p_att, user_ll


def _tie_sums(block: Block, ties) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sums the ties add (:mod:`bayes_annot.ties`): attentive ``ties[0]`` (log P_att(tie) per pair,
    ``(P,)`` or ``(P, C)``) over the user's ties, and casual ``n_tie log t + n_decided log(1 - t)``."""
    tables, t = ties
    return block.tie_matrix() @ tables, block.n_user_tie * np.log(t) + block.n_user * np.log1p(-t)


def block_two_class_users(block: Block, pi: float, q, table: np.ndarray | None, ties=None):
    """Per-user posterior P(attentive) and marginal log-likelihood of one block (one taste class).

    ``q``: the casual position bias, or the casual table when the block has casual cells
    (:meth:`Block.casual_sums`; so in every pass function below). ``ties``: ``(log P_att(tie) per pair,
    t)`` when the block's ties enter the likelihood (``table`` then holds Davidson's decided
    probabilities), else ``None``."""
    if block.joint and table is not None:  # learned strengths with casual covariates: one pass for both sums
        att_sum, cas_sum = block.joint_sums(table, q)
    else:
        cas_sum = block.casual_sums(q)
        att_sum = _block_att_sum(block, table)
    if ties is not None:
        att_tie, cas_tie = _tie_sums(block, ties)
        att_sum = att_sum + att_tie
        cas_sum = cas_sum + cas_tie
    return two_class_user_terms(att_sum, cas_sum, pi)


def lse_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp; for two columns it is numpy's ``logaddexp`` formula."""
    idx = np.argmax(x, axis=1)
    m = x[np.arange(x.shape[0]), idx]
    rest = np.exp(x - m[:, None])
    rest[np.arange(x.shape[0]), idx] = 0.0
    return m + np.log1p(rest.sum(axis=1))


def block_type_logliks(block: Block, q, tables: np.ndarray, ties=None) -> np.ndarray:
    """``(Ul, C + 1)``: per user the casual log-probability sum, then the attentive sum of each class.

    ``tables`` ``(2 P, C)``: log P_att of every cell under each class; the attentive sums
    of all classes are one sparse product ``counts @ tables``. ``ties``: ``(tie tables (P, C), t)``.
    With an attentive style term ``tables`` is ``(2 P n_casual, C)``, per joint entry (:meth:`Block.is_joint_table`),
    and the tie tables ``(P n_casual, C)``.
    """
    att = (block._joint_matrix() if block.is_joint_table(tables) else block.matrix()) @ tables
    if ties is None:
        return np.column_stack([block.casual_sums(q), att])
    att_tie, cas_tie = _tie_sums(block, ties)
    return np.column_stack([block.casual_sums(q) + cas_tie, att + att_tie])


def block_class_users(block: Block, shares: np.ndarray, q: float, tables: np.ndarray | None, ties=None):
    """Per-user type posteriors and marginal log-likelihood of one block (casual + ``C`` taste classes).

    Returns ``(p_casual (Ul,), p_class (Ul, C), user_loglik (Ul,))``. With one class this is the
    two-class variant's arithmetic (:func:`two_class_user_terms`; ``tables`` may then be ``None``:
    known attentive probabilities); with ``C >= 2`` the responsibilities are taken in log space.
    """
    if shares.shape[0] == 1:
        one_tie = None if ties is None else (np.asarray(ties[0]).reshape(-1), ties[1])
        p_att, user_ll = block_two_class_users(block, shares[0], q, None if tables is None else tables[:, 0], one_tie)
        return 1.0 - p_att, p_att[:, None], user_ll
    logw = log_type_shares(shares)[None, :] + block_type_logliks(block, q, tables, ties)
    user_ll = lse_rows(logw)
    post = np.exp(logw - user_ll[:, None])
    return post[:, 0], post[:, 1:], user_ll


def block_class_pass(block: Block, shares: np.ndarray, q: float, tables: np.ndarray | None, users=None,
                     ties=None) -> dict:
    """Objective share and E-step sufficient statistics of one block.

    ``loglik`` (over users with labels), ``totals`` (C,) the classes' responsibility sums over those
    users, ``n_active``, ``casual_a`` / ``casual`` (the casual-weighted labels choosing ``model_a`` / all,
    for ``q``), ``casual_cells`` (casual covariates: the casual-weighted labels by casual table entry,
    for :func:`bayes_annot.casual.fit_casual`; else ``None``) and ``cells`` ``(2 P, C)``, the cell table weighted by each class's responsibilities (the
    Bradley–Terry M-steps' input). ``users``: :func:`block_class_users` at these parameters, when known.
    With ties in the likelihood (``ties``), also ``tie_cells`` ``(P, C)`` (each class's weighted ties per pair)
    and ``casual_ties`` (casual-weighted ties; ``casual`` counts decided labels only).
    """
    if users is None and shares.shape[0] == 1 and block.joint and tables is not None:
        return _joint_two_class_pass(block, float(shares[0]), q, tables[:, 0], ties)
    casual, att, user_ll = block_class_users(block, shares, q, tables, ties) if users is None else users
    inactive = block.inactive  # users without usable labels: no share of the likelihood
    casual_cells = None
    if att.shape[1] == 1:  # the two-class sums, on 1-d arrays
        p_att = att[:, 0]
        totals = np.array([p_att.sum() - p_att[inactive].sum()])
        if block.joint:  # both cell tables from one pass over the entries (casual = 1 - p_att here)
            cells, casual_cells = block.joint_stats(p_att, full=block.is_joint_table(tables))
            cells = cells[:, None]
        elif block.learned:
            cells = block.cell_sums_by_user(p_att)[:, None]
        else:  # known strengths: the values' weighted counts when ties are modelled (the nu M-step's input)
            cells = None if ties is None else (block.known_matrix().T @ p_att)[:, None]
    else:
        totals = att.sum(axis=0) - att[inactive].sum(axis=0)
        cells = (block._joint_matrix() if block.is_joint_table(tables) else block.matrix()).T @ att
    if casual_cells is None and block.casual_cell is not None:
        casual_cells = block.casual_matrix().T @ casual
    return {
        "loglik": float(user_ll.sum() - user_ll[inactive].sum()),
        "totals": totals,
        "n_active": int(user_ll.shape[0] - inactive.shape[0]),
        "casual_a": float(casual @ block.n_user_a),
        "casual": float(casual @ block.n_user),
        "casual_cells": casual_cells,
        "cells": cells,
        "tie_cells": None if ties is None else block.tie_matrix().T @ att,
        "casual_ties": None if ties is None else float(casual @ block.n_user_tie),
    }


def _joint_two_class_pass(block: Block, pi: float, cas_table, att_table, ties) -> dict:
    """:func:`block_class_pass` of a joint block with one class, from :meth:`Block.joint_two_class_terms`:
    one forward and one transposed sparse pass instead of two forward (three with ties) and two."""
    p_att, softplus, cas_total, weighted = block.joint_two_class_terms(pi, att_table, cas_table, ties)
    inactive = block.inactive
    n_pairs, n_joint = block.n_cells // 2, block.n_cells * block.n_casual
    totals = block._pass_totals(ties is not None)
    casual_cells = (totals[:n_joint] - weighted[:n_joint]).reshape(n_pairs, block.n_casual, 2).sum(axis=0).reshape(-1)
    casual = 1.0 - p_att
    return {
        "loglik": cas_total + float(softplus.sum() - softplus[inactive].sum()),
        "totals": np.array([p_att.sum() - p_att[inactive].sum()]),
        "n_active": int(p_att.shape[0] - inactive.shape[0]),
        "casual_a": float(casual @ block.n_user_a),
        "casual": float(casual @ block.n_user),
        "casual_cells": casual_cells,
        "cells": (weighted[:n_joint] if block.is_joint_table(att_table)  # a style term: per joint entry
                  else weighted[:n_joint].reshape(n_pairs, block.n_casual, 2).sum(axis=1).reshape(-1))[:, None],
        "tie_cells": None if ties is None else weighted[n_joint:][:, None],
        "casual_ties": None if ties is None else float(casual @ block.n_user_tie),
    }


def block_class_final(block: Block, shares, q, tables, differs_cell, informative_tol, users=None, ties=None) -> dict:
    """Per-user results of one block at the final parameters: ``quality`` (P(not casual)), ``p_casual``,
    ``p_taste`` (Ul, C), ``user_loglik``, ``informative`` (users without labels: the shares, 0)."""
    casual, att, user_ll = block_class_users(block, shares, q, tables, ties) if users is None else users
    quality = att[:, 0].copy() if att.shape[1] == 1 else 1.0 - casual
    att, casual, user_ll = att.copy(), casual.copy(), user_ll.copy()
    quality[block.inactive] = shares.sum()
    att[block.inactive] = shares
    casual[block.inactive] = 1.0 - shares.sum()
    user_ll[block.inactive] = 0.0
    informative = _block_informative(block, differs_cell, q, informative_tol)
    return {"users": block.users, "quality": quality, "p_casual": casual, "p_taste": att, "user_loglik": user_ll,
            "informative": informative, "n_user": block.n_user, "n_rows": block.n_rows}


def block_user_cells(block: Block, weights: np.ndarray) -> dict:
    """``cells``: ``sum_u weights[u] * count[u, cell]`` over the block's users (``weights`` over all users,
    ``(U,)`` or ``(U, C)``): the cell table ``(2 P,)`` or ``(2 P, C)``, as the E-step's ``cells``."""
    return {"cells": block.matrix().T @ np.asarray(weights)[block.users]}


def _block_informative(block: Block, differs_cell, q, tol) -> np.ndarray:
    if block.learned and block.has_ties:  # a tie on a pair that differs informs as a decided label does
        decided = block.user_table_sums(differs_cell.astype(float))
        return decided + block.tie_matrix() @ np.repeat(differs_cell[1::2].astype(float), block.n_tie_casual) > 0
    if block.learned:
        if bool(differs_cell[block.cell_totals > 0].all()):  # every label is informative: no pass needed
            return block.n_user > 0
        return block.user_table_sums(differs_cell.astype(float)) > 0  # users with a label in a differing cell
    differs = np.abs(block.known_logit) > tol  # same rule as em._informative_users
    if block.has_ties:
        return block.row_sums(differs.astype(float)) + block.tie_matrix() @ (np.abs(block.known_values) > tol) > 0
    return block.row_sums(differs.astype(float)) > 0


def _grid_cells(block: Block, att_prob_table, casual, ties=None):
    """The continuous E-step's cells: ``(users x cells counts, P_att per cell, P_cas per cell, n_casual)``.

    A cell is ``(outer, casual cell, choice)`` flattened, ``outer`` the pair (learned strengths; the
    table ``att_prob_table``) or one of the block's distinct attentive log-odds (known ones: a global
    ``mu`` has a handful, a ``p_a`` column at most one per label), and the casual cell that of the casual
    covariates (one cell without them; ``casual`` is then ``q``, else the casual log-probability table
    ``(2 n_casual,)``). The known-strengths cells are cached on the block.

    ``ties`` (``(P_att(tie) per pair, t)``, ties in the likelihood): the block's tie counts are appended as
    ``P`` more cells (attentive ``P_att(tie)``, casual ``t``; decided cells' casual probabilities times
    ``1 - t``); the fifth value returned is their number (0 without ties).
    """
    n_casual = max(block.n_casual, 1)
    if block.casual_cell is None:
        cas = np.array([1.0 - casual, casual])
    else:
        cas = np.exp(np.asarray(casual, dtype=float))
    if block.learned:
        if ties is not None:  # decided labels and ties in one matrix (below)
            counts = None
        else:
            counts = block.matrix() if block.casual_cell is None else block._joint_matrix()
        per_cell = n_casual if block.is_joint_table(att_prob_table) else 1  # a style term: per (pair, casual cell)
        att = np.asarray(att_prob_table).reshape(-1, per_cell, 2)
    else:
        if block._known_cells is None:
            from scipy.sparse import csr_matrix

            if block.known_values is not None:  # with ties: the vocabulary the tie entries index too
                values, index = block.known_values, np.searchsorted(block.known_values, block.known_logit)
            else:
                values, index = np.unique(block.known_logit, return_inverse=True)
            outer = index.reshape(-1).astype(np.int64) * n_casual
            if block.casual_cell is not None:
                outer = outer + block.casual_cell
            counts = csr_matrix((np.ones(block.n_entries), 2 * outer + block.choice, block.indptr),
                                shape=(block.users.shape[0], 2 * len(values) * n_casual))
            block._known_cells = (counts, np.stack([expit(-values), expit(values)], axis=1))
        counts, att = block._known_cells
        att = (att if att_prob_table is None else np.asarray(att_prob_table)).reshape(-1, 1, 2)
    shape = (att.shape[0], n_casual, 2)
    att, cas = np.broadcast_to(att, shape).reshape(-1), np.broadcast_to(cas.reshape(1, -1, 2), shape).reshape(-1)
    if ties is None:
        return counts, att, cas, n_casual, 0
    tie_prob, t = ties
    if block.learned:
        counts = block.tie_appended_matrix()
    else:
        if block._grid_tie_counts is None:
            from scipy.sparse import hstack

            block._grid_tie_counts = hstack([counts, block.tie_matrix()], format="csr")
        counts = block._grid_tie_counts
    tie_prob = np.asarray(tie_prob, dtype=float).reshape(-1)
    return counts, np.concatenate([att, tie_prob]), \
        np.concatenate([cas * (1.0 - t), np.full(tie_prob.shape[0], t)]), n_casual, tie_prob.shape[0]


def _normalise_rows(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``exp(joint)`` normalised (the posterior over the grid) and their log-sum-exp (in place)."""
    top = joint.max(axis=1, keepdims=True)
    np.subtract(joint, top, out=joint)
    np.exp(joint, out=joint)
    total = joint.sum(axis=1, keepdims=True)
    joint /= total
    return joint, (top + np.log(total))[:, 0]


def block_grid_posterior(block: Block, m: float, tau: float, casual, att_prob_table, grid: EtaGrid = ETA_GRID,
                         ties=None):
    r"""Each user's posterior over the grid's nodes :math:`\theta_g = m + \tau z_g` and marginal log-likelihood.

    ``(post (Ul, G), user_loglik (Ul,))`` with
    :math:`\log p(y_u) = \operatorname{logsumexp}_g(\log w_g + \sum_{r \in u} \log(\eta_g P_{att}(y_r)
    + (1 - \eta_g) P_{cas}(y_r)))`: one sparse product of the user-cell counts with the ``cells x G``
    table of log mixtures (:func:`_grid_cells`; ``casual``: ``q``, or the casual table with covariates).
    Users without labels get the prior's weights and 0.
    """
    eta = expit(grid.theta(m, tau))
    counts, att, cas, _, _ = _grid_cells(block, att_prob_table, casual, ties)
    joint = np.asarray(counts @ np.log(att[:, None] * eta + cas[:, None] * (1.0 - eta)))
    joint += grid.log_weights
    post, user_ll = _normalise_rows(joint)
    user_ll[block.inactive] = 0.0
    return post, user_ll


def block_continuous_pass(block: Block, m: float, tau: float, casual, att_prob_table,
                          grid: EtaGrid = ETA_GRID, ties=None) -> dict:
    """One continuous E-step of a block: objective share and the M-steps' sufficient statistics.

    ``loglik``; ``eta_a`` / ``eta_b`` ``(G,)``: expected attentive / casual labels at each grid node
    (:func:`~bayes_annot.em.population_step`'s input); ``casual_a`` / ``casual``: expected casual labels
    choosing ``model_a`` / all (``q``); ``casual_cells`` (casual covariates): expected casual labels by
    casual table entry (:func:`bayes_annot.casual.fit_casual`); ``cells``: expected attentive labels per
    pair cell (Bradley–Terry). With ``ties`` (:func:`_grid_cells`): ``tie_cells`` (expected attentive ties
    per pair) and ``casual_ties`` (expected casual ties; ``casual`` counts decided labels only).
    """
    post, user_ll = block_grid_posterior(block, m, tau, casual, att_prob_table, grid, ties)
    eta = expit(grid.theta(m, tau))
    counts, att, cas, n_casual, n_tie = _grid_cells(block, att_prob_table, casual, ties)
    att_part = att[:, None] * eta
    weighted = np.asarray(counts.T @ post)  # (cells, G): expected labels of each cell at each node
    attentive = weighted * (att_part / (att_part + cas[:, None] * (1.0 - eta)))
    tie_stats = {"tie_cells": None, "casual_ties": None}
    if ties is not None:
        eta_a_all = attentive.sum(axis=0)
        eta_b_all = weighted.sum(axis=0) - eta_a_all
        tie_att = attentive[-n_tie:].sum(axis=1)
        tie_stats = {"tie_cells": tie_att, "casual_ties": float(weighted[-n_tie:].sum() - tie_att.sum())}
        attentive, weighted = attentive[:-n_tie], weighted[:-n_tie]
    by_cell = attentive.sum(axis=1).reshape(-1, n_casual, 2)
    casual_w = weighted.sum(axis=1).reshape(-1, n_casual, 2) - by_cell
    casual_cells = casual_w.sum(axis=0)  # (n_casual, 2): by casual cell and choice
    eta_a = attentive.sum(axis=0)
    eta_b = weighted.sum(axis=0) - eta_a
    if ties is not None:
        eta_a, eta_b = eta_a_all, eta_b_all
    return {
        "loglik": float(user_ll.sum()), "eta_a": eta_a, "eta_b": eta_b,
        "casual_a": float(casual_cells[:, 1].sum()), "casual": float(casual_cells.sum()),
        "casual_cells": None if block.casual_cell is None else casual_cells.reshape(-1),
        "cells": (by_cell.reshape(-1) if block.is_joint_table(att_prob_table) else by_cell.sum(axis=1).reshape(-1))
        if block.learned or ties is not None else None, **tie_stats,
    }


def block_continuous_final(block: Block, m, tau, casual, att_prob_table, differs_cell, informative_tol,
                           grid: EtaGrid = ETA_GRID, ties=None) -> dict:
    """Per-user results of one block at the final parameters: ``quality`` :math:`E[\\eta_u \\mid y_u]`,
    ``p_good`` :math:`P(\\eta_u \\ge 1/2 \\mid y_u)` (the users table's ``p_eta_above_half``), ``theta`` :math:`E[\\theta_u \\mid y_u]`,
    ``user_loglik`` and ``informative``."""
    post, user_ll = block_grid_posterior(block, m, tau, casual, att_prob_table, grid, ties)
    theta = grid.theta(m, tau)
    return {
        "users": block.users, "quality": post @ expit(theta), "p_good": post @ grid.above_half(m, tau),
        "theta": post @ theta, "user_loglik": user_ll,
        "informative": _block_informative(block, differs_cell, casual, informative_tol),
        "n_user": block.n_user, "n_rows": block.n_rows,
    }


def _sum_stats(parts: list[dict]) -> dict:
    """Statistics summed over blocks (``max_*`` ones: the largest)."""
    if len(parts) == 1:  # one block: its statistics (a sum of one array would copy it: 16 MB per pass at 10^6 pairs)
        return dict(parts[0])
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if values[0] is None:
            out[key] = None
        elif key.startswith("max_"):
            out[key] = max(values)
        else:
            out[key] = np.sum(values, axis=0) if isinstance(values[0], np.ndarray) else sum(values)
    return out


# --------------------------------------------------------------------------- runners


def _frozen(table):
    """``table`` itself when read-only (the cached attentive tables and their views: no 16 MB copy per E-step at
    10^6 pairs), else a copy (the caller may change its array)."""
    if table is None:
        return None
    table = np.asarray(table)
    return table if not table.flags.writeable else np.array(table, copy=True)


def _same_values(kept, table) -> bool:
    """Whether ``table`` holds the values of ``kept`` (a :func:`_frozen` table): the same read-only memory
    (same data pointer, shape and strides) without a comparison, else elementwise."""
    if kept is None or table is None:
        return kept is None and table is None
    table = np.asarray(table)
    if not kept.flags.writeable and not table.flags.writeable and kept.shape == table.shape and \
            kept.strides == table.strides and kept.__array_interface__["data"][0] == table.__array_interface__["data"][0]:
        return True
    return np.array_equal(kept, table)


class LocalRunner:
    """Runs the block passes in this process (one or more in-memory blocks)."""

    def __init__(self, blocks: list[Block], n_users: int, pairs: PairTable | None = None):
        self.blocks = blocks
        self.n_users = n_users
        self.pairs = pairs if pairs is not None else (blocks[0].pairs if blocks else None)
        self.ties = bool(blocks) and blocks[0].has_ties

    def tie_counts(self) -> tuple[float, float]:
        """Ties and decided labels in the likelihood, summed over the blocks (ties modelled)."""
        return (float(sum(b.n_user_tie.sum() for b in self.blocks)), float(sum(b.n_user.sum() for b in self.blocks)))

    @property
    def known_values(self) -> np.ndarray:
        """Known strengths with ties: the blocks' one vocabulary of known log-odds (:attr:`Block.known_values`)."""
        values = [b.known_values for b in self.blocks]
        if any(not np.array_equal(v, values[0]) for v in values[1:]):
            raise ValueError("known strengths with ties need one vocabulary of known log-odds over the blocks")
        return values[0]

    def cell_counts(self):
        """The unweighted pair table summed over the blocks (see ``block_cell_counts``)."""
        return _sum_stats([block_cell_counts(b) for b in self.blocks])["cells"]

    def user_cells(self, weights):
        """The cell table of per-user weights (``(U,)`` or ``(U, C)`` over all users), summed over the blocks."""
        return _sum_stats([block_user_cells(b, weights) for b in self.blocks])["cells"]

    def _users(self, shares, q, tables, ties=None):
        """Per-block :func:`block_class_users`; the last parameters' are kept, since the final
        pass is at the parameters of the last E-step."""
        key = (tuple(shares), q if np.ndim(q) == 0 else np.asarray(q).tobytes(),
               None if ties is None else (np.asarray(ties[0]).tobytes(), float(ties[1])))
        cached = getattr(self, "_last_users", None)
        if cached is not None and cached[0] == key and _same_values(cached[1], tables):
            return cached[2]
        users = [block_class_users(b, shares, q, tables, ties) for b in self.blocks]
        self._last_users = (key, _frozen(tables), users)
        return users

    def class_pass(self, shares, q, tables, ties=None):
        """One E-step over the blocks (casual + ``C`` classes): summed objective and statistics."""
        if np.size(shares) == 1 and tables is not None and all(b.joint for b in self.blocks):
            # one sparse pass each way (Block.joint_two_class_terms); the final pass takes its own users
            return _sum_stats([block_class_pass(b, shares, q, tables, ties=ties) for b in self.blocks])
        users = self._users(shares, q, tables, ties)
        return _sum_stats([block_class_pass(b, shares, q, tables, u, ties) for b, u in zip(self.blocks, users)])

    def class_final(self, shares, q, tables, differs_cell, informative_tol, ties=None):
        """Per-block final results (quality, type posteriors, log-likelihood, informative)."""
        users = self._users(shares, q, tables, ties)
        return [block_class_final(b, shares, q, tables, differs_cell, informative_tol, u, ties)
                for b, u in zip(self.blocks, users)]

    def continuous_pass(self, m, tau, q, att_prob_table, ties=None):
        """One continuous E-step over the blocks: summed objective and statistics."""
        return _sum_stats([block_continuous_pass(b, m, tau, q, att_prob_table, ties=ties) for b in self.blocks])

    def continuous_final(self, m, tau, q, att_prob_table, differs_cell, informative_tol, ties=None):
        """Per-block final continuous results."""
        return [block_continuous_final(b, m, tau, q, att_prob_table, differs_cell, informative_tol, ties=ties)
                for b in self.blocks]


# --------------------------------------------------------------------------- the EM loop (driver)


def _split_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair weights choosing ``model_a`` and ``model_b`` from a cell table."""
    return cells[1::2], cells[0::2]


class _PairBT:
    """The strengths' pieces of EM over a pair vocabulary: cell tables and the Bradley–Terry M-steps."""

    def __init__(self, pairs: PairTable | None, n_models: int, sigma: float):
        self.pairs = pairs if pairs is not None else PairTable.dense(n_models)
        self.sigma = sigma
        self._structure = None
        # each point's table once (E- and M-step); numpy's log1p / exp on the sparse path (small K: log_expit's)
        self._tables = AttentiveTables(self.pairs.a, self.pairs.b, fast=uses_sparse_solve(self.pairs.n_models),
                                       n_models=self.pairs.n_models)

    def table(self, s: np.ndarray) -> np.ndarray:
        """log P_att of every cell (read-only)."""
        return self._tables.table(s)

    def tables(self, strengths: np.ndarray) -> np.ndarray:
        """``(2 P, C)``: log P_att of every cell under each class's strengths (rows of ``strengths``); one class:
        a read-only view of the cached table (no 16 MB copy per E-step at 10^6 pairs)."""
        if len(strengths) == 1:
            return self.table(strengths[0])[:, None]
        return np.column_stack([self.table(s) for s in strengths])

    def differs(self, s: np.ndarray, tol: float) -> np.ndarray:
        """Cells whose attentive log-odds are more than ``tol`` from 0 (under any class, for ``(C, K)`` strengths)."""
        rows = np.atleast_2d(s)
        return np.logical_or.reduce([differs_cells_pairs(r, self.pairs.a, self.pairs.b, tol) for r in rows])

    def _sparse_structure(self):
        if self.pairs.n_models > DENSE_MAX_MODELS and self._structure is None:
            self._structure = _PairHessian(self.pairs.a, self.pairs.b, self.pairs.n_models)
        return self._structure

    def fit(self, cells: np.ndarray, start=None) -> np.ndarray:
        """The strengths' M-step from a cell table: solved to convergence from zeros (``start=None``) or up to
        :data:`~bayes_annot.pairs.DENSE_MAX_MODELS` models, else one sparse Newton step from ``start`` (ECM:
        :func:`~bayes_annot.pairs.bt_newton_step`, same fixed points, a third of the per-pair work)."""
        if uses_sparse_solve(self.pairs.n_models):
            if start is None:  # the same solve through the cached tables (the first E-step reuses its last table)
                return bt_fit_cells(self.pairs, cells, self.sigma, self._tables, self._sparse_structure(),
                                    tol=EM_START_TOL)
            return bt_newton_step(self.pairs, cells, self.sigma, start, self._tables, self._sparse_structure())
        w1, w0 = _split_cells(cells)
        return fit_bradley_terry_pairs(self.pairs, w1, w0, self.sigma, start=start, structure=self._sparse_structure())

    def fit_classes(self, cells: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Each class's strengths ``(C, K)`` from the class-weighted cell tables ``(2 P, C)``."""
        if cells.shape[1] == 1:  # the two-class M-step
            return self.fit(cells[:, 0], start=start[0])[None, :]
        w1, w0 = _split_cells(cells)
        return fit_bradley_terry_classes(self.pairs, w1.T, w0.T, self.sigma, start, structure=self._sparse_structure())

    # ties in the likelihood (bayes_annot.ties): Davidson's tables and M-steps, ``nu`` shared by the classes
    def davidson(self, strengths: np.ndarray, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """``(2 P, C)`` log P_att of every decided cell and ``(P, C)`` of a tie on every pair, per class."""
        parts = [davidson_tables(s, self.pairs.a, self.pairs.b, nu) for s in np.atleast_2d(strengths)]
        return np.column_stack([p[0] for p in parts]), np.column_stack([p[1] for p in parts])

    def fit_ties(self, cells: np.ndarray, tie_cells: np.ndarray, start: np.ndarray, nu: float) -> np.ndarray:
        """Each class's Davidson strengths ``(C, K)`` at fixed ``nu`` from its weighted decided cells ``(2 P, C)``
        and ties ``(P, C)``."""
        w1, w0 = _split_cells(np.asarray(cells).reshape(cells.shape[0], -1))
        wt = np.asarray(tie_cells).reshape(w1.shape[0], -1)
        return np.stack([fit_davidson_pairs(self.pairs, w1[:, c], w0[:, c], wt[:, c], nu, self.sigma, start=start[c],
                                            structure=self._sparse_structure()) for c in range(w1.shape[1])])

    def nu(self, strengths: np.ndarray, cells: np.ndarray, tie_cells: np.ndarray, nu: float, priors: Priors) -> float:
        """The ``nu`` M-step at fixed strengths (:func:`~bayes_annot.ties.nu_step`, all classes' pairs)."""
        w1, w0 = _split_cells(np.asarray(cells).reshape(cells.shape[0], -1))
        wt = np.asarray(tie_cells).reshape(w1.shape[0], -1)
        s = np.atleast_2d(strengths)
        d = (s[:, self.pairs.a] - s[:, self.pairs.b]).T
        return nu_step(nu, d, w1 + w0 + wt, float(wt.sum()), priors)


class _KnownTies:
    """Known strengths with ties in the likelihood: :class:`_PairBT`'s Davidson pieces over the blocks' vocabulary
    of known log-odds (the ``d`` of every decided cell and tie) instead of pairs; the strengths stay fixed."""

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values, dtype=float)

    def davidson(self, strengths, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """``(2 V, 1)`` log P_att of every decided cell ``2 * value + choice`` and ``(V, 1)`` of a tie."""
        return known_davidson_tables(self.values, nu)

    @staticmethod
    def fit_ties(cells, tie_cells, start, nu):
        return start  # known: nothing to fit

    def nu(self, strengths, cells: np.ndarray, tie_cells: np.ndarray, nu: float, priors: Priors) -> float:
        """The ``nu`` M-step (:func:`~bayes_annot.ties.nu_step`) over the known values' weighted counts."""
        w1, w0 = _split_cells(np.asarray(cells).reshape(-1))
        wt = np.asarray(tie_cells).reshape(-1)
        return nu_step(nu, self.values, w1 + w0 + wt, float(wt.sum()), priors)


def known_davidson_tables(values: np.ndarray, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """Known strengths with ties: ``(2 V, 1)`` Davidson log P_att of every decided cell ``2 * value + choice``
    and ``(V, 1)`` of a tie, over a vocabulary of known log-odds ``values`` (:attr:`Block.known_values`)."""
    pa, pb, pt = davidson_logprobs(np.asarray(values, dtype=float), nu)
    return np.stack([pb, pa], axis=-1).reshape(-1, 1), pt[:, None]


def _tie_strengths(runner, bt, learned: bool):
    """The Davidson pieces of the EM drivers: the pair vocabulary's (learned) or the known values'."""
    if learned:
        return bt
    return _KnownTies(runner.known_values)


class _TieSide:
    """The ties' part of the EM drivers: ``(nu, t)`` and their M-steps (nothing at all when ties are ignored)."""

    def __init__(self, runner, priors: Priors, nu=None, t=None):
        self.on = bool(getattr(runner, "ties", False))
        self.priors = priors
        self.start = (None, None)
        if self.on:
            nu0, t0 = tie_start(*runner.tie_counts())
            self.start = (float(nu) if nu is not None else nu0, float(t) if t is not None else t0)

    def log_prior(self, nu, t) -> float:
        return log_prior_ties(nu, t, self.priors) if self.on else 0.0

    def t_step(self, st: dict) -> float | None:
        return tie_rate_step(st["casual_ties"], st["casual"], self.priors) if self.on else None

    def pack(self, nu, t) -> list:
        return [np.array([np.log(nu), logit(t)])] if self.on else []

    def unpack(self, x: np.ndarray, i: int):
        """``(nu, t, next index)`` from a SQUAREM vector."""
        if not self.on:
            return None, None, i
        return float(np.exp(x[i])), float(expit(x[i + 1])), i + 2

    @staticmethod
    def valid(nu, t) -> bool:
        return nu is None or (np.isfinite(nu) and nu > 0.0 and 0.0 < t < 1.0)


def _gather(parts: list[dict], n_users: int, keys) -> dict:
    out = {}
    for key in keys:
        first = parts[0][key]
        array = np.zeros((n_users,) + first.shape[1:], dtype=first.dtype)
        for p in parts:
            array[p["users"]] = p[key]
        out[key] = array
    return out


@dataclass
class ClassEMResult:
    """What :func:`run_class_em` estimated: global parameters and per-user arrays over all users.

    ``quality`` (P(not casual)), ``p_casual`` and ``p_taste`` ``(U, C)`` are the posteriors at the
    final parameters (users without labels: the shares); informative-user levels are left to the caller.
    """

    shares: np.ndarray
    q: float
    strengths: np.ndarray | None  # (C, K); None with known attentive probabilities
    loglik_trace: list
    n_iter: int
    converged: bool
    quality: np.ndarray
    p_casual: np.ndarray
    p_taste: np.ndarray
    user_loglik: np.ndarray
    informative: np.ndarray
    n_user: np.ndarray
    runtime_seconds: float = 0.0
    casual_g: np.ndarray | None = None  # casual covariate effects (``casual``'s design), else None
    nu: float | None = None  # Davidson's attentive tie parameter (ties modelled), else None
    tie_rate: float | None = None  # the casual tie rate t (ties modelled), else None
    style_delta: np.ndarray | None = None  # the attentive style effects (bayes_annot.style), else None

    @property
    def loglik(self) -> float:
        """Penalised log-likelihood at the final parameters."""
        return float(self.loglik_trace[-1])


def one_blas_thread(fn):
    """Run ``fn`` with the BLAS library on one thread (``threadpoolctl``; restored on return).

    EM's dense BLAS calls are per-user vector reductions (``casual @ n_user_a``) and the continuous
    grid's ``(users x nodes) @ nodes`` products: memory-bound, so extra threads do not speed them
    up, and on a busy machine OpenBLAS's threads wait for cores: a 10^6-element dot product took
    14-24 ms with the default threads against 0.1-0.7 ms on one (2 cores at load 6). One thread
    also makes the sums' rounding independent of the machine's core count.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


@one_blas_thread
def run_class_em(
    runner,
    n_models: int,
    shares,
    q: float = 0.5,
    strengths: np.ndarray | None = None,
    *,
    learned: bool = True,
    priors: Priors | None = None,
    q_fixed: float | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = 0.2,
    callback=None,
    accelerate: bool = False,
    param_tol: float | None = None,
    casual=None,
    casual_g=None,
    nu: float | None = None,
    tie_rate: float | None = None,
    style=None,
    style_delta=None,
) -> ClassEMResult:
    r"""EM of the two-class variant with ``C = len(shares)`` taste classes over the blocks of ``runner``.

    A user is casual (share :math:`\pi_0 = 1 - \sum_c \pi_c`, labels follow the position bias ``q``)
    or attentive under class ``c`` (share :math:`\pi_c`, Bradley–Terry with strengths ``strengths[c]``);
    the priors are :math:`\mathrm{Dirichlet}(\beta, \alpha, \dots, \alpha)` on the shares
    (``Priors.pi_beta``, ``Priors.pi_alpha``: for ``C = 1`` the two-class ``Beta(alpha, beta)``),
    ``Beta`` on ``q`` and Normal on every strength (see :mod:`bayes_annot.tastes`). Each pass
    returns the sufficient statistics of every class at once (:func:`block_class_pass`); the
    M-steps are closed form for the shares and ``q`` and Bradley–Terry fits per class
    (:func:`~bayes_annot.pairs.fit_bradley_terry_classes`), so the objective never decreases.
    ``C = 1`` is the two-class EM of :func:`run_em`, operation for operation.

    ``strengths`` ``(C, K)`` is the start (``None``, one class only: the plain Bradley–Terry
    fit of the unweighted labels); ``accelerate`` adds SQUAREM steps kept only when they do not
    lower the objective; the stopping rule is :func:`~bayes_annot.em.has_converged`.

    ``casual`` (a :class:`~bayes_annot.casual.CasualDesign`; the runner's blocks then carry casual
    cells): casual clicks follow covariates, ``q = sigmoid(beta_0)`` and the effects ``casual_g``
    (start; zeros by default) are fitted by :func:`~bayes_annot.casual.fit_casual` in the M-step.

    When the runner's blocks hold ties (``runner.ties``; :mod:`bayes_annot.ties`), attentive labels follow
    Davidson's model with one ``nu`` shared by the classes and casual ties the rate ``t``; ``nu`` and
    ``tie_rate`` are their starts (default from the tie share, :func:`~bayes_annot.ties.tie_start`). The
    M-steps are then ECM: ``t`` in closed form, each class's strengths at fixed ``nu``, then ``nu``.

    ``style`` (a :class:`~bayes_annot.style.StyleDesign`, with ``casual``; learned strengths, ties or not): the
    attentive log-odds of every class get the style term ``delta' x`` of the row's casual cell, ``delta`` shared
    by the classes (docs/tastes.md); ``style_delta`` is its start (zeros by default) and the strengths' M-step the
    joint Newton of ``(s^(1..C), delta)`` (:meth:`_StyleSide.fit_classes`).
    """
    started = time.perf_counter()
    priors = priors or Priors()
    shares = np.array(shares, dtype=float).reshape(-1)
    n_classes = shares.shape[0]
    bt = _PairBT(getattr(runner, "pairs", None), n_models, priors.strength_sigma) if learned else None
    if learned:
        if strengths is None:
            strengths = np.repeat(bt.fit(runner.cell_counts())[None, :], n_classes, axis=0)
        strengths = np.array(strengths, dtype=float).reshape(n_classes, n_models)
    else:
        strengths = None
    q = float(q) if q_fixed is None else float(q_fixed)
    q_free = q_fixed is None
    cas = _CasualSide(casual, priors, q_free)
    g0 = cas.start(casual_g)
    ties = _TieSide(runner, priors, nu, tie_rate)
    dv = _tie_strengths(runner, bt, learned) if ties.on else None  # Davidson's tables and M-steps
    sty = _StyleSide(style, casual, priors, bt)
    d0 = sty.start(style_delta)

    def evaluate(shares, q, strengths, g, nu, t, delta):
        """Objective at (shares, q, s, g, nu, t, delta) and the EM map's image of them."""
        if sty.on and ties.on:
            tabs, tie_tabs = sty.davidson_classes(strengths, delta, nu)
            st = runner.class_pass(shares, cas.arg(q, g), tabs, ties=(tie_tabs, t))
        elif sty.on:
            st = runner.class_pass(shares, cas.arg(q, g), sty.tables(strengths, delta))
        elif ties.on:
            tabs, tie_tabs = dv.davidson(strengths, nu)
            st = runner.class_pass(shares, cas.arg(q, g), tabs, ties=(tie_tabs, t))
        else:
            st = runner.class_pass(shares, cas.arg(q, g), bt.tables(strengths) if learned else None)
        value = st["loglik"] + log_prior(priors, q, strengths, q_free, shares=shares) + cas.log_prior(g) \
            + ties.log_prior(nu, t) + sty.log_prior(delta)
        new_shares = (st["totals"] + priors.pi_alpha - 1.0) / (
            st["n_active"] + priors.pi_alpha * n_classes + priors.pi_beta - (n_classes + 1.0)
        )
        if cas.design is None:
            new_q, new_g = (float(_update_q(st["casual_a"], st["casual"], priors)) if q_free else q), None
        else:
            new_q, new_g = cas.m_step(st, q, g)
        new_nu, new_t, new_delta = nu, ties.t_step(st), delta
        if sty.on:  # the joint Newton of (s, delta) (ECM with ties: at fixed nu, then nu)
            tie_cells = st["tie_cells"] if ties.on else None
            new_s, new_delta = sty.fit_classes(st["cells"], strengths, delta, tie_cells, nu if ties.on else 0.0)
            if ties.on:
                new_nu = sty.nu_classes(new_s, new_delta, st["cells"], tie_cells, nu)
        elif ties.on:  # ECM: strengths at fixed nu, then nu at the new strengths
            new_s = dv.fit_ties(st["cells"], st["tie_cells"], strengths, nu)
            new_nu = dv.nu(new_s, st["cells"], st["tie_cells"], nu, priors)
        else:
            new_s = bt.fit_classes(st["cells"], strengths) if learned else None
        # a user's posteriors are functions of (shares, q, strengths, g, nu, t): their change is the step's
        step = max(max_change(shares, new_shares), max_change(q, new_q), max_change(strengths, new_s),
                   max_change(g, new_g), max_change(nu, new_nu), max_change(t, new_t), max_change(delta, new_delta))
        return value, (new_shares, new_q, new_s, new_g, new_nu, new_t, new_delta), step

    def pack(shares, q, s, g, nu, t, delta):
        head = logit(shares) if n_classes == 1 else np.log(shares) - np.log1p(-shares.sum())
        return _pack_shared([head] + ([] if g is None else [g]) + ties.pack(nu, t) + sty.pack(delta), q,
                            None if s is None else s.ravel(), q_fixed, learned)

    def unpack(x, like):
        head = x[:n_classes]
        if n_classes == 1:
            shares = expit(head)
        else:
            shares = np.exp(head - np.logaddexp.reduce(np.concatenate([[0.0], head])))
        n_g = 0 if like[3] is None else like[3].shape[0]
        g = None if like[3] is None else x[n_classes: n_classes + n_g].copy()
        nu, t, i = ties.unpack(x, n_classes + n_g)
        delta, i = sty.unpack(x, i)
        q, s = _unpack_shared(x, i, q_fixed, learned)
        return shares, q, None if s is None else s.reshape(n_classes, n_models), g, nu, t, delta

    def valid(params):
        shares, q = params[0], params[1]
        return bool(np.all(shares > 0.0) and shares.sum() < 1.0) and (q is None or 0.0 < q < 1.0) and \
            ties.valid(params[4], params[5])

    params, trace, iteration, converged = _em_iterations(
        evaluate, (shares, q, strengths, g0) + ties.start + (d0,), tol=tol, max_iter=max_iter, callback=callback,
        param_tol=param_tol, squarem=(pack, unpack, valid) if accelerate else None,
    )
    shares, q, strengths, g0, nu, t, delta = params
    differs_cell = bt.differs(strengths, informative_tol) if learned else None  # as em._informative_users
    if sty.on and ties.on:
        tabs, tie_tabs = sty.davidson_classes(strengths, delta, nu)
        parts = runner.class_final(shares, cas.arg(q, g0), tabs, differs_cell, informative_tol, ties=(tie_tabs, t))
    elif sty.on:
        parts = runner.class_final(shares, cas.arg(q, g0), sty.tables(strengths, delta), differs_cell, informative_tol)
    elif ties.on:
        tabs, tie_tabs = dv.davidson(strengths, nu)
        parts = runner.class_final(shares, cas.arg(q, g0), tabs, differs_cell, informative_tol, ties=(tie_tabs, t))
    else:
        parts = runner.class_final(shares, cas.arg(q, g0), bt.tables(strengths) if learned else None, differs_cell,
                                   informative_tol)
    g = _gather(parts, runner.n_users, ["quality", "p_casual", "p_taste", "user_loglik", "informative", "n_user"])
    return ClassEMResult(
        shares=shares, q=float(q), strengths=strengths, loglik_trace=trace, n_iter=iteration, converged=converged,
        runtime_seconds=time.perf_counter() - started, casual_g=g0, nu=nu, tie_rate=t, style_delta=delta, **g,
    )


class _CasualSide:
    """The casual covariates' part of the EM drivers (nothing at all without covariates)."""

    def __init__(self, design, priors: Priors, q_free: bool):
        self.design, self.priors, self.q_free = design, priors, q_free
        self.matrix = None if design is None else design.design()

    def start(self, g):
        if self.design is None:
            return None
        if g is None or np.shape(g) != (self.design.n_effects,):  # none, or another design's (a warm start)
            return np.zeros(self.design.n_effects)
        return np.asarray(g, dtype=float).copy()

    def arg(self, q, g):
        """What the blocks' passes take as the casual side: ``q``, or the casual table at ``(logit q, g)``."""
        return q if self.design is None else casual_table(float(logit(q)), g, self.matrix)

    def log_prior(self, g) -> float:
        """The Normal prior of the effects (the Beta prior of ``q`` is :func:`log_prior`'s)."""
        if self.design is None:
            return 0.0
        return float(log_normal_pdf(g, 0.0, self.priors.casual_effect_sigma).sum())

    def m_step(self, st: dict, q, g):
        beta0, new_g = fit_casual(st["casual_cells"], self.matrix, float(logit(q)), g, self.priors, self.q_free)
        return (float(expit(beta0)) if self.q_free else q), new_g


class _StyleSide:
    """The attentive style term's part of the EM drivers (:mod:`bayes_annot.style`; nothing at all without it).

    With it, the attentive table is per joint entry ``(pair n_casual + casual cell) 2 + choice`` and the
    strengths' M-step is the joint Newton of ``(s, delta)`` (:func:`~bayes_annot.style.fit_style`) on the
    attentive-weighted joint counts.
    """

    def __init__(self, style, casual, priors: Priors, bt):
        self.on = style is not None
        self.bt, self.priors = bt, priors
        if self.on:
            if casual is None or bt is None:
                raise ValueError("an attentive style term needs casual covariates and learned strengths")
            self.values = style.values(casual)
            self.n_effects = style.n_effects

    def start(self, delta):
        if not self.on:
            return None
        if delta is None or np.shape(delta) != (self.n_effects,):
            return np.zeros(self.n_effects)
        return np.asarray(delta, dtype=float).copy()

    def table(self, s: np.ndarray, delta) -> np.ndarray:
        """log P_att of every joint entry ``(2 P n_casual,)`` at strengths ``s`` (K,) and effects ``delta``."""
        return style_table(s, self.bt.pairs.a, self.bt.pairs.b, style_offsets(self.values, delta))

    def davidson(self, s: np.ndarray, delta, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """Ties in the likelihood: Davidson's decided table ``(2 P n_casual,)`` and tie table ``(P n_casual,)``."""
        return style_davidson_tables(s, self.bt.pairs.a, self.bt.pairs.b, style_offsets(self.values, delta), nu)

    def nu(self, s: np.ndarray, delta, cells: np.ndarray, tie_cells: np.ndarray, nu: float) -> float:
        """The ``nu`` M-step at fixed ``(s, delta)`` (:func:`~bayes_annot.ties.nu_step` over the ``(pair, cell)`` terms)."""
        w = np.asarray(cells, dtype=float).reshape(-1, 2)
        wt = np.asarray(tie_cells, dtype=float).reshape(-1)
        d = style_logits(s, self.bt.pairs.a, self.bt.pairs.b, style_offsets(self.values, delta)).ravel()
        return nu_step(nu, d, w.sum(axis=1) + wt, float(wt.sum()), self.priors)

    def log_prior(self, delta) -> float:
        if not self.on:
            return 0.0
        return float(log_normal_pdf(np.asarray(delta, dtype=float), 0.0, self.priors.style_effect_sigma).sum())

    def fit(self, cells: np.ndarray, s: np.ndarray, delta, tie_cells=None, nu: float = 0.0):
        """``(s, delta)`` from the attentive-weighted joint cells ``(2 P n_casual,)`` (and, ties in the likelihood,
        the attentive-weighted ties ``(P n_casual,)`` at Davidson's ``nu``)."""
        shape = (self.bt.pairs.n_pairs, self.values.shape[0])
        w = np.asarray(cells, dtype=float).reshape(shape + (2,))
        wt = None if tie_cells is None else np.asarray(tie_cells, dtype=float).reshape(shape)
        return fit_style(self.bt.pairs, w[..., 1], w[..., 0], self.values, s, delta, self.priors.strength_sigma,
                         self.priors.style_effect_sigma, structure=self.bt._sparse_structure(), wt=wt, nu=nu)

    def tables(self, strengths: np.ndarray, delta) -> np.ndarray:
        """``(2 P n_casual, C)``: :meth:`table` of every class's strengths ``(C, K)`` at the shared ``delta``."""
        return np.stack([self.table(s, delta) for s in strengths], axis=1)

    def davidson_classes(self, strengths: np.ndarray, delta, nu: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`davidson` of every class ``(C, K)``: ``(2 P n_casual, C)`` and ``(P n_casual, C)``."""
        parts = [self.davidson(s, delta, nu) for s in strengths]
        return np.stack([p[0] for p in parts], axis=1), np.stack([p[1] for p in parts], axis=1)

    def _stacked(self, n_classes: int):
        """The pair vocabulary of ``C`` classes side by side: class ``c``'s model ``k`` is ``c K + k``, and the
        sparse Hessian structure :func:`~bayes_annot.style.fit_style` would build for it (``None`` when dense), both
        cached: built once per EM, not per M-step."""
        if getattr(self, "_stack", None) is None or self._stack[0] != n_classes:
            from .pairs import PairTable, _Laplacian

            pairs, k = self.bt.pairs, self.bt.pairs.n_models
            big = k * n_classes
            offset = np.repeat(np.arange(n_classes) * k, pairs.n_pairs)
            keys = (np.tile(pairs.a, n_classes) + offset) * big + np.tile(pairs.b, n_classes) + offset
            stacked = PairTable.from_keys(keys, big)
            structure = None if big <= DENSE_MAX_MODELS else _Laplacian(stacked.a, stacked.b, big)
            self._stack = (n_classes, stacked, structure)
        return self._stack[1:]

    def fit_classes(self, cells: np.ndarray, strengths: np.ndarray, delta, tie_cells=None, nu: float = 0.0):
        """``(s^(1..C), delta)`` from each class's attentive-weighted joint cells ``(2 P n_casual, C)`` (and ties
        ``(P n_casual, C)``): one class is :meth:`fit`; ``C`` classes one joint Newton of the stacked problem
        (class ``c``'s strengths are models ``c K .. c K + K - 1`` of a pair table holding every class's pairs:
        the likelihood is the sum of the classes' and the ridge is per strength, so this is the exact M-step of
        the shared ``delta``). Returns ``(C, K)`` strengths and ``delta``."""
        strengths = np.asarray(strengths, dtype=float)
        n_classes, k = strengths.shape
        if n_classes == 1:
            s, d = self.fit(np.asarray(cells)[:, 0], strengths[0], delta,
                            None if tie_cells is None else np.asarray(tie_cells)[:, 0], nu)
            return s[None, :], d
        stacked, structure = self._stacked(n_classes)  # class-major: class c's pair p is row c P + p
        n_pairs, n_cells = self.bt.pairs.n_pairs, self.values.shape[0]
        w = np.asarray(cells, dtype=float).reshape(n_pairs, n_cells, 2, n_classes).transpose(3, 0, 1, 2)
        w = w.reshape(n_classes * n_pairs, n_cells, 2)
        wt = None
        if tie_cells is not None:
            wt = np.asarray(tie_cells, dtype=float).reshape(n_pairs, n_cells, n_classes).transpose(2, 0, 1)
            wt = wt.reshape(n_classes * n_pairs, n_cells)
        s, d = fit_style(stacked, w[..., 1], w[..., 0], self.values, strengths.reshape(-1), delta,
                         self.priors.strength_sigma, self.priors.style_effect_sigma, structure=structure, wt=wt, nu=nu)
        return s.reshape(n_classes, k), d

    def nu_classes(self, strengths: np.ndarray, delta, cells: np.ndarray, tie_cells: np.ndarray, nu: float) -> float:
        """The ``nu`` M-step at fixed ``(s^(1..C), delta)`` over every class's ``(pair, cell)`` terms."""
        n_classes = strengths.shape[0]
        if n_classes == 1:
            return self.nu(strengths[0], delta, np.asarray(cells)[:, 0], np.asarray(tie_cells)[:, 0], nu)
        w = np.asarray(cells, dtype=float).T.reshape(n_classes, -1, 2)
        wt = np.asarray(tie_cells, dtype=float).T
        offsets = style_offsets(self.values, delta)
        d = np.concatenate([style_logits(s, self.bt.pairs.a, self.bt.pairs.b, offsets).ravel() for s in strengths])
        return nu_step(nu, d, (w.sum(axis=2) + wt).ravel(), float(wt.sum()), self.priors)

    def pack(self, delta) -> list:
        return [np.asarray(delta, dtype=float)] if self.on else []

    def unpack(self, x: np.ndarray, i: int):
        if not self.on:
            return None, i
        return x[i: i + self.n_effects].copy(), i + self.n_effects


def run_em(
    runner,
    n_models: int,
    spec: BehaviourSpec,
    *,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = 0.2,
    start: dict | None = None,
    callback=None,
    accelerate: bool = False,
    param_tol: float | None = None,
) -> EMResult:
    """EM of the behaviour model ``spec`` (either variant, one ranking) over the blocks of ``runner``.

    Parameters
    ----------
    runner
        The blocks' runner (:class:`LocalRunner`, :class:`~bayes_annot.dask_em.DaskRunner`, ...);
        its cells hold learned pairs or known log-odds as ``spec.strengths`` says.
    n_models : int
    spec : BehaviourSpec
        The model: variant, learned or known strengths, ``q`` fixed or estimated,
        priors. One taste class (``spec.n_tastes > 1``: :func:`bayes_annot.tastes.fit_tastes`).
    tol, max_iter, informative_tol, start, callback, accelerate, param_tol
        How EM runs (see below).

    Notes
    -----
    The two-class variant is :func:`run_class_em` with one class. ``accelerate=True``
    (either variant, any runner) adds SQUAREM
    extrapolation steps, each kept only when it does not lower the objective, so the
    trace still never decreases; the stopping rule (:func:`~bayes_annot.em.has_converged`:
    objective change below ``tol`` AND largest parameter change below ``param_tol``,
    default ``100 * tol``) is applied to plain EM steps.
    """
    if spec.n_tastes != 1:
        raise ValueError(f"run_em fits one ranking; {spec.n_tastes} taste classes are fitted by tastes.fit_tastes")
    variant, learned, priors, q_fixed = spec.variant, spec.learned, spec.priors, spec.q_fixed
    started = time.perf_counter()
    start = start or {}
    k = n_models
    strengths = None
    if learned and start.get("strengths") is not None:
        strengths = np.asarray(start["strengths"], dtype=float).copy()
    q = float(start.get("q") or 0.5) if q_fixed is None else float(q_fixed)
    if variant == "two-class":
        res = run_class_em(
            runner, k, [float(start.get("pi") or 0.5)], q, None if strengths is None else strengths[None, :],
            learned=learned, priors=priors, q_fixed=q_fixed, tol=tol, max_iter=max_iter, informative_tol=informative_tol,
            callback=callback, accelerate=accelerate, param_tol=param_tol, casual=spec.casual,
            casual_g=start.get("casual_g"), nu=start.get("tie_nu"), tie_rate=start.get("casual_tie_rate"),
            style=spec.style, style_delta=start.get("style_delta"),
        )
        pi = float(res.shares[0])
        level = no_verdict_shares(res.shares, res.informative.any(), priors)[0]
        quality = np.where(res.informative, res.quality, level)
        return EMResult(
            variant=variant, pi=pi, q=res.q, strengths=None if res.strengths is None else res.strengths[0],
            quality=quality, p_good=quality, n_labels_user=res.n_user.astype(np.int64),
            informative=res.informative.astype(bool), loglik=res.loglik, loglik_trace=res.loglik_trace,
            n_iter=res.n_iter, converged=res.converged, runtime_seconds=time.perf_counter() - started,
            user_loglik=res.user_loglik, theta=None, m=None, tau=None, casual_g=res.casual_g,
            nu=res.nu, tie_rate=res.tie_rate, style_delta=res.style_delta,
        )
    bt = _PairBT(getattr(runner, "pairs", None), k, priors.strength_sigma) if learned else None
    if learned and strengths is None:
        strengths = bt.fit(runner.cell_counts())
    cas = _CasualSide(spec.casual, priors, q_fixed is None)
    sty = _StyleSide(spec.style, spec.casual, priors, bt)
    out = _run_continuous(runner, bt, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate,
                          param_tol, cas, sty)
    s = out["strengths"]
    differs_cell = bt.differs(s, informative_tol) if learned else None  # same rule as em._informative_users
    if sty.on and out["nu"] is not None:
        tab, tie_tab = sty.davidson(s, out["delta"], out["nu"])
        parts = runner.continuous_final(out["m"], out["tau"], cas.arg(out["q"], out["g"]), np.exp(tab), differs_cell,
                                        informative_tol, ties=(np.exp(tie_tab), out["t"]))
    elif sty.on:
        parts = runner.continuous_final(out["m"], out["tau"], cas.arg(out["q"], out["g"]),
                                        np.exp(sty.table(s, out["delta"])), differs_cell, informative_tol)
    elif out["nu"] is not None:
        tabs, tie_tabs = _tie_strengths(runner, bt, learned).davidson(s, out["nu"])
        parts = runner.continuous_final(out["m"], out["tau"], cas.arg(out["q"], out["g"]), np.exp(tabs[:, 0]),
                                        differs_cell, informative_tol, ties=(np.exp(tie_tabs[:, 0]), out["t"]))
    else:
        parts = runner.continuous_final(
            out["m"], out["tau"], cas.arg(out["q"], out["g"]), np.exp(bt.table(s)) if learned else None, differs_cell,
            informative_tol,
        )
    g = _gather(parts, runner.n_users, ["quality", "p_good", "theta", "user_loglik", "informative", "n_user"])
    level, p_level = no_verdict_continuous(out["m"], out["tau"], g["informative"].any(), priors)
    g["quality"] = np.where(g["informative"], g["quality"], level)
    g["p_good"] = np.where(g["informative"], g["p_good"], p_level)
    return EMResult(
        variant=variant, pi=None, q=float(out["q"]), strengths=s, quality=g["quality"],
        n_labels_user=g["n_user"].astype(np.int64), informative=g["informative"].astype(bool), loglik=out["trace"][-1],
        loglik_trace=out["trace"], n_iter=out["n_iter"], converged=out["converged"],
        runtime_seconds=time.perf_counter() - started, user_loglik=g["user_loglik"], p_good=g["p_good"],
        theta=g["theta"], m=float(out["m"]), tau=float(out["tau"]), casual_g=out["g"], nu=out["nu"], tie_rate=out["t"],
        style_delta=out["delta"],
    )


def _squarem_point(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray | None:
    """SQUAREM extrapolation (Varadhan & Roland's S3 step length) from two EM steps x0 -> x1 -> x2.

    ``None`` when the step would not extrapolate (step length >= -1) or is not finite.
    """
    r, v = x1 - x0, x2 - 2.0 * x1 + x0
    vv = float(v @ v)
    if not (vv > 0 and np.all(np.isfinite(v))):
        return None
    alpha = -np.sqrt(float(r @ r) / vv)
    if alpha >= -1.0:
        return None
    alpha = max(alpha, -1e3)
    return x0 - 2.0 * alpha * r + alpha**2 * v


def _em_iterations(evaluate, params, *, tol, max_iter, callback, param_tol=None, squarem=None):
    """The EM loop of both variants: plain EM steps until :func:`~bayes_annot.em.has_converged`.

    ``evaluate(*params)`` returns the penalised log-likelihood at ``params``,
    the EM map's image of ``params`` and the largest parameter change between
    the two (see :func:`~bayes_annot.em.has_converged`). With ``squarem = (pack, unpack,
    valid)``, after each EM step an extrapolated point is evaluated and kept
    only when its objective is at least the EM step's, so the trace never
    decreases; the stopping rule is applied to plain EM steps only (objective
    change and parameter change of the step that led to the current point).

    Returns ``(params, trace, n_iter, converged)``.
    """
    trace: list[float] = []
    value, nxt, step = evaluate(*params)
    trace.append(value)
    if callback is not None:
        callback(0, value)
    converged = False
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        prev_params, params, last_step = params, nxt, step
        value, nxt, step = evaluate(*params)  # a plain EM step
        trace.append(value)
        if callback is not None:
            callback(iteration, value)
        if has_converged(trace, tol, last_step, param_tol):
            converged = True
            break
        if squarem is None or iteration >= max_iter:
            continue
        pack, unpack, valid = squarem
        point = _squarem_point(pack(*prev_params), pack(*params), pack(*nxt))
        if point is None:
            continue
        candidate = unpack(point, params)
        if not valid(candidate):
            continue
        c_value, c_nxt, c_step = evaluate(*candidate)
        if np.isfinite(c_value) and c_value >= value:
            iteration += 1
            params, value, nxt, step = candidate, c_value, c_nxt, c_step
            trace.append(value)
            if callback is not None:
                callback(iteration, value)
    return params, trace, iteration, converged


def _shared_m_step(st: dict, q, strengths, bt, learned: bool, priors: Priors, q_fixed):
    """M-step of the parameters both variants share: ``q`` (unless fixed) and the strengths (Bradley–Terry)."""
    new_q = q if q_fixed is not None else float(_update_q(st["casual_a"], st["casual"], priors))
    new_s = strengths
    if learned:
        new_s = bt.fit(st["cells"], start=strengths)
    return float(new_q), new_s


def _pack_shared(head: list, q, s, q_fixed, learned: bool) -> np.ndarray:
    """SQUAREM vector: the variant's own parameters (``head``), then ``logit(q)`` (if free) and the strengths."""
    parts = list(head)
    if q_fixed is None:
        parts.append(np.array([logit(q)]))
    if learned:
        parts.append(s)
    return np.concatenate(parts)


def _unpack_shared(x: np.ndarray, i: int, q_fixed, learned: bool):
    """``(q, strengths)`` from a SQUAREM vector whose shared part starts at ``i``."""
    q = q_fixed
    if q_fixed is None:
        q = float(expit(x[i]))
        i += 1
    return q, (x[i:].copy() if learned else None)


CONTINUOUS_PARAM_TOL_DIVISOR = 10.0
"""The continuous variant's default parameter tolerance is :func:`~bayes_annot.em.param_tolerance` divided by
this (1e-8 at ``tol=1e-9``). EM moves ``(m, tau)`` by a small fraction of their distance to the optimum per
step (most of the information about a user's eta is missing), so a step of 1e-7 left a 1% update 2.6e-6 from
the refit in quality (3,000 users); at 1e-8 it is within 7e-7, for about 30% more iterations."""


@one_blas_thread
def _run_continuous(runner, bt, learned, priors, q_fixed, tol, max_iter, start, strengths, q, callback, accelerate,
                    param_tol=None, cas=None, sty=None):
    """EM of the continuous variant: each user's :math:`z_u` summed out on the grid, the population
    ``(m, tau)``, ``q`` (and the casual covariates' effects) and the strengths estimated (every parameter
    is global, so any runner works, with or without SQUAREM)."""
    m = float(start["m"]) if start.get("m") is not None else float(logit(0.7))
    tau = float(start["tau"]) if start.get("tau") is not None else float(priors.eta_tau)
    if param_tol is None:  # (m, tau) converge slowly: stop 10x closer (keeps a 1% update within 1e-6 of a refit)
        param_tol = param_tolerance(tol) / CONTINUOUS_PARAM_TOL_DIVISOR

    cas = cas if cas is not None else _CasualSide(None, priors, q_fixed is None)
    g0 = cas.start(start.get("casual_g"))
    ties = _TieSide(runner, priors, start.get("tie_nu"), start.get("casual_tie_rate"))
    dv = _tie_strengths(runner, bt, learned) if ties.on else None  # Davidson's tables and M-steps
    sty = sty if sty is not None else _StyleSide(None, None, priors, bt)
    d0 = sty.start(start.get("style_delta"))

    def evaluate(m, tau, q, strengths, g, nu, t, delta):
        if sty.on and ties.on:
            tab, tie_tab = sty.davidson(strengths, delta, nu)
            st = runner.continuous_pass(m, tau, cas.arg(q, g), np.exp(tab), ties=(np.exp(tie_tab), t))
        elif sty.on:
            st = runner.continuous_pass(m, tau, cas.arg(q, g), np.exp(sty.table(strengths, delta)))
        elif ties.on:  # Davidson's attentive probabilities; tie entries mix eta P_att(tie) + (1 - eta) t
            tabs, tie_tabs = dv.davidson(strengths, nu)
            st = runner.continuous_pass(m, tau, cas.arg(q, g), np.exp(tabs[:, 0]), ties=(np.exp(tie_tabs[:, 0]), t))
        else:
            st = runner.continuous_pass(m, tau, cas.arg(q, g), np.exp(bt.table(strengths)) if learned else None)
        value = st["loglik"] + log_prior(priors, q, strengths, q_fixed is None, m=m, tau=tau) + cas.log_prior(g) \
            + ties.log_prior(nu, t) + sty.log_prior(delta)
        new_m, new_tau = population_step(st["eta_a"], st["eta_b"], m, tau, priors)
        new_nu, new_t, new_delta = nu, ties.t_step(st), delta
        if sty.on:
            new_q = q if q_fixed is not None else float(_update_q(st["casual_a"], st["casual"], priors))
            new_s, new_delta = sty.fit(st["cells"], strengths, delta, st["tie_cells"] if ties.on else None,
                                       nu if ties.on else 0.0)
            if ties.on:
                new_nu = sty.nu(new_s, new_delta, st["cells"], st["tie_cells"], nu)
        elif ties.on:
            new_q = q if q_fixed is not None else float(_update_q(st["casual_a"], st["casual"], priors))
            new_s = dv.fit_ties(st["cells"][:, None], st["tie_cells"][:, None], None if strengths is None
                                else strengths[None, :], nu)
            new_s = None if new_s is None else new_s[0]
            new_nu = dv.nu(new_s, st["cells"][:, None], st["tie_cells"][:, None], nu, priors)
        else:
            new_q, new_s = _shared_m_step(st, q, strengths, bt, learned, priors, q_fixed)
        new_g = None
        if cas.design is not None:
            new_q, new_g = cas.m_step(st, q, g)
        step = max(max_change(m, new_m), max_change(tau, new_tau), max_change(q, new_q), max_change(strengths, new_s),
                   max_change(g, new_g), max_change(nu, new_nu), max_change(t, new_t), max_change(delta, new_delta))
        return value, (new_m, new_tau, new_q, new_s, new_g, new_nu, new_t, new_delta), step

    def pack(m, tau, q, s, g, nu, t, delta):
        return _pack_shared([np.array([m, np.log(tau)])] + ([] if g is None else [g]) + ties.pack(nu, t)
                            + sty.pack(delta), q, s, q_fixed, learned)

    def unpack(x, like):
        n_g = 0 if like[4] is None else like[4].shape[0]
        g = None if like[4] is None else x[2: 2 + n_g].copy()
        nu, t, i = ties.unpack(x, 2 + n_g)
        delta, i = sty.unpack(x, i)
        q, s = _unpack_shared(x, i, q_fixed, learned)
        return float(x[0]), float(np.exp(x[1])), q, s, g, nu, t, delta

    def valid(params):
        return (params[2] is None or 0.0 < params[2] < 1.0) and ties.valid(params[5], params[6])

    params, trace, iteration, converged = _em_iterations(
        evaluate, (m, tau, q, strengths, g0) + ties.start + (d0,), tol=tol, max_iter=max_iter, callback=callback,
        param_tol=param_tol, squarem=(pack, unpack, valid) if accelerate else None,
    )
    m, tau, q, strengths, g0, nu, t, delta = params
    return dict(m=m, tau=tau, q=q, strengths=strengths, trace=trace, n_iter=iteration, converged=converged, g=g0,
                nu=nu, t=t, delta=delta)
