r"""Sparse pair statistics and the sparse Bradley–Terry solver (many models).

Only the ordered model pairs ``(model_a, model_b)`` that were actually compared
are stored: a :class:`PairTable` lists them (sorted by ``model_a * K + model_b``)
with their usable label counts. It is the comparison graph (:meth:`PairTable.components`),
gives the model label counts, and is the *pair vocabulary* of the EM blocks: a
label's cell is ``2 * pair + choice`` (``choice`` = 1 when ``model_a`` was chosen),
so every cell table has ``2 P`` entries (``P`` = compared pairs, at most the
number of labels), never ``2 K^2``.

The strengths' M-step (:func:`fit_bradley_terry_pairs`) maximises the ridge
Bradley–Terry objective over those pairs. Its negative Hessian is a weighted graph
Laplacian plus ``I / sigma^2``; up to :data:`DENSE_MAX_MODELS` models it is solved
densely (exactly :func:`bayes_annot.em.fit_bradley_terry`, the pair weights
scattered into ``K x K`` tables), above by conjugate gradients on the sparse
Hessian, preconditioned by Jacobi plus a coarse correction for the strengths'
common shift (:func:`_cg_solve`): ``O(P + K)`` memory and time per CG step.
"""

from __future__ import annotations

from dataclasses import dataclass

import os
import sys

import numpy as np
from .ufuncs import expit, log_expit

__all__ = ["PairTable", "DENSE_MAX_MODELS", "fit_bradley_terry_pairs", "fit_bradley_terry_classes", "bt_objective_pairs",
           "bt_derivatives_pairs", "attentive_table_pairs", "AttentiveTables", "bt_newton_step", "bt_fit_cells",
           "uses_sparse_solve", "numba_kernels", "NUMBA_MIN_PAIRS"]

DENSE_MAX_MODELS = 64
"""Up to this many models the Bradley–Terry Newton step is a dense ``K x K`` solve (faster there:
measured 0.7 ms dense vs 2 ms sparse at 20 models, 2 vs 3.5 ms at 60 models with every pair
compared, but 0.7 s vs 0.04 s at 100 models); above it, a sparse conjugate-gradient solve.
Both reach the same optimum (tested to 1e-10)."""

CG_FORCING = 1e-4
"""Inexact Newton in the sparse solve: conjugate gradients stop at a relative residual equal to the
expected size of the Newton step (the largest element of the Jacobi step ``grad / diag``), at most this
and at least ``cg_rtol``. The solve's error is then of the order of the step squared, as Newton's own,
so the ascent ends at the same optimum as with exact solves (1e-15 apart in a whole 250-model EM fit,
tested to 1e-10) with about 45% fewer CG products."""

ECM_CG_RTOL = 3e-2
"""Relative residual of the conjugate gradients in EM's one-step M-step (:func:`bt_newton_step`): each step
then shrinks the distance to the M-step's optimum ~30-fold, more than EM's own contraction per iteration, so
the two-class EM takes about as many iterations to the same fixed point (where the gradient, and the step, is
zero). With the coarse-corrected preconditioner of :func:`_cg_solve` that is 2 CG products per step. Measured on
the benchmark's logs (``benchmarks/bench_many_models.py``; strengths and qualities 6e-8 apart, as between any two
ways of reaching the default tolerance): 10^6 rows of 10^4 models, 21 EM iterations at 1e-3 and at 3e-2, CG
products 125 -> 60; 10^6 rows of 10^5 models, 361 -> 339 iterations, 2618 -> 1192 products (CPU 28.5 -> 21.8
s); 10^5 rows of 300 models, 15 -> 17 iterations (same time); a review's 8 other two-class logs (300 to 10^4
models, disconnected, ties) within one to four iterations, each faster. At 1e-1 iterations began to vary (19 at
10^4 models), at 3e-1 they grew (25). Where EM is slow and weakly identified the count moves more, as it does
under any change of the solver: at 2 x 10^5 models seen ~10 times each (10^6 rows) 443 -> 662 iterations (CPU
46 -> ~50 s, products 3476 -> 2842), and fits through different solver settings end up to 3 apart in some
strengths (main's, main's at 1e-4 and this one's penalised log-likelihoods -922655.15, -922655.15, -922643.52:
this one highest); the continuous variant's SQUAREM iteration counts swing up to ~3x with the CG tolerance on
main as here (11 logs of 500-1000 models: 233 s on main, 243 s here)."""

EM_START_TOL = 1e-3
"""EM's start above :data:`DENSE_MAX_MODELS` models, the plain Bradley–Terry fit of the unweighted labels
(:func:`bt_fit_cells`), stops after a Newton step below this: Newton converges quadratically, so the start is then
within ~the step squared of the solved fit (2.3e-7 at 10^4 models, 10^6 labels: steps 1.4, 0.39, 0.05, 7.6e-4,
then 2.3e-7), far less than EM then moves the strengths, and the solve skips its last, most precise step."""

NUMBA_MIN_PAIRS = 50_000
"""The compiled kernels (:mod:`bayes_annot.numba_kernels`, when numba is installed) serve EM above
:data:`DENSE_MAX_MODELS` models with at least this many compared pairs. Loading them costs ~0.04 s of CPU once per
process (llvmlite and the cached object file; numba itself only to compile them, once per machine); they save
~30 ms per EM evaluation per 10^6 pairs (table, Newton direction, E-step; AMD EPYC). Fresh-process fits of 10^4
models (CPU s, compiled / numpy path): 3 x 10^4 labels 0.29 / 0.30 (30 EM iterations), 10^5 labels 1.10 / 1.65,
3 x 10^5 labels 0.59 / 0.83, so they pay from a few 10^4 pairs on."""

NUMBA_MIN_PAIRS_UNCACHED = 500_000
"""The threshold instead of :data:`NUMBA_MIN_PAIRS` where the kernels cannot be cached on disk (systems without
user ids, such as Windows: :func:`bayes_annot.numba_kernels.cache_dirs`), so every process compiles them (numba,
~1.5 s of CPU)."""

NUMBA_ENV = "BAYES_ANNOT_NUMBA"
"""Environment variable: ``0`` keeps every fit on the numpy path even when numba is installed."""

_NUMBA_MODULE = None  # the imported kernels module, or False when they cannot be loaded (looked up once)


def numba_kernels(n_models: int, n_pairs: int):
    """:mod:`bayes_annot.numba_kernels` when the compiled path serves EM over ``n_pairs`` pairs of ``n_models``
    models (above :data:`DENSE_MAX_MODELS` models, at least :data:`NUMBA_MIN_PAIRS` pairs, or
    :data:`NUMBA_MIN_PAIRS_UNCACHED` where they cannot be cached; the kernels loadable: their cached shared library
    or object file (llvmlite), or numba to compile them; and not switched off by :data:`NUMBA_ENV`), else ``None``.
    Fits with few models never load them (nor numba, nor llvmlite)."""
    global _NUMBA_MODULE
    min_pairs = NUMBA_MIN_PAIRS if hasattr(os, "getuid") else max(NUMBA_MIN_PAIRS, NUMBA_MIN_PAIRS_UNCACHED)
    if n_models <= DENSE_MAX_MODELS or n_pairs < min_pairs or os.environ.get(NUMBA_ENV, "").strip() == "0":
        return None
    if _NUMBA_MODULE is None:
        try:
            from .numba_kernels import attentive_table  # llvmlite (numba to compile): the extra bayes_annot[fast]

            kernels = sys.modules[attentive_table.__module__]
        except ImportError:
            kernels = False
        _NUMBA_MODULE = kernels
    return _NUMBA_MODULE or None


ACCELERATE_MIN_MODELS = 200
"""Above this many models ``fit`` / ``update`` use SQUAREM by default for the two-class variant too
(many weakly identified strengths slow plain EM down)."""

DENSE_PLOT_MAX_MODELS = 200
"""The report's ``K x K`` comparison heat map is drawn only up to this many models."""


@dataclass
class PairTable:
    """Usable labels per compared ordered pair ``(a[i], b[i])`` of ``n_models`` models.

    ``a``, ``b`` (int64) are sorted by ``a * n_models + b`` and unique; ``counts``
    (int64) are the usable labels of each pair. Behaves like the former dense
    ``K x K`` count table where that is cheap: ``sum(axis=1)`` / ``sum(axis=0)`` are
    the row / column sums, ``toarray()`` (and ``np.asarray``) the dense table — only
    for small ``K``.
    """

    n_models: int
    a: np.ndarray
    b: np.ndarray
    counts: np.ndarray

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_labels(cls, model_a, model_b, n_models: int, weights=None) -> tuple["PairTable", np.ndarray]:
        """The pairs of some labels and each label's pair index: ``O(n + K^2)`` through a table over every
        pair key when ``K^2`` is at most ``max(65536, n)``, else a sort (``O(n log n)``, no ``K^2`` array)."""
        k = int(n_models)
        key = np.asarray(model_a).astype(np.int64) * k + np.asarray(model_b)
        if key.shape[0] and _small_key_space(k, key.shape[0]) and key.min() >= 0 and key.max() < k * k:
            # O(n + K^2) with K^2 <= n: a presence count over every key instead of a sort (same result)
            present = np.bincount(key, minlength=k * k)
            keys = np.flatnonzero(present)
            inverse = _lookup(keys, k)[key]
            if weights is None:
                return cls.from_keys(keys, k, present[keys].astype(np.int64)), inverse
        else:
            keys, inverse = _unique_inverse(key)
        counts = np.bincount(inverse, weights=weights, minlength=keys.shape[0])
        if weights is None:
            counts = counts.astype(np.int64)
        return cls.from_keys(keys, k, counts), inverse.reshape(-1)

    @classmethod
    def from_keys(cls, keys, n_models: int, counts=None) -> "PairTable":
        """A table from pair keys ``a * n_models + b`` (one per compared ordered pair) and their counts."""
        keys = np.asarray(keys, dtype=np.int64)
        k = int(n_models)
        counts = np.zeros(keys.shape[0], dtype=np.int64) if counts is None else np.asarray(counts)
        return cls(k, keys // k, keys % k, counts)

    @classmethod
    def dense(cls, n_models: int) -> "PairTable":
        """Every ordered pair (``K^2``; the vocabulary of the former dense cell index ``(a K + b) 2 + choice``)."""
        return cls.from_keys(np.arange(int(n_models) ** 2, dtype=np.int64), n_models)

    # ----------------------------------------------------------------- lookups
    @property
    def n_pairs(self) -> int:
        return int(self.a.shape[0])

    @property
    def keys(self) -> np.ndarray:
        return self.a * self.n_models + self.b

    def index(self, model_a, model_b) -> np.ndarray:
        """Pair index of each ``(model_a, model_b)`` (every pair must be in the table)."""
        key = np.asarray(model_a).astype(np.int64) * self.n_models + np.asarray(model_b)
        k2 = self.n_models * self.n_models
        if key.shape[0] and _small_key_space(self.n_models, key.shape[0]) and key.min() >= 0 and key.max() < k2:
            pos = _lookup(self.keys, self.n_models)[key]  # O(n + K^2) instead of a binary search per label
            if pos.min() < 0:
                raise KeyError("pair not in the pair table")
            return pos
        pos = _sorted_search(self.keys, key)
        if key.shape[0] and (pos.max(initial=0) >= self.n_pairs or np.any(self.keys[pos] != key)):
            raise KeyError("pair not in the pair table")
        return pos

    def cells(self, model_a, model_b, choice_a) -> np.ndarray:
        """Cell index ``2 * pair + choice`` of each label (int32)."""
        return (2 * self.index(model_a, model_b) + np.asarray(choice_a)).astype(np.int32)

    def union(self, other: "PairTable", model_map=None) -> tuple["PairTable", np.ndarray, np.ndarray]:
        """Pairs of ``self`` (models renamed by ``model_map`` into ``other``'s codes) and ``other``, counts summed.

        Returns the merged table and the merged index of each pair of ``self`` and of ``other``.
        """
        k = other.n_models
        a, b = (self.a, self.b) if model_map is None else (np.asarray(model_map)[self.a], np.asarray(model_map)[self.b])
        old_keys = a.astype(np.int64) * k + b
        keys = np.union1d(old_keys, other.keys)
        pos_old, pos_new = np.searchsorted(keys, old_keys), np.searchsorted(keys, other.keys)
        counts = np.zeros(keys.shape[0], dtype=np.result_type(self.counts, other.counts))
        counts[pos_old] += self.counts
        counts[pos_new] += other.counts
        return PairTable.from_keys(keys, k, counts), pos_old, pos_new

    # ----------------------------------------------------------------- the former dense table's uses
    def sum(self, axis=None):
        """Row sums (``axis=1``: labels as ``model_a``), column sums (``axis=0``), or the total."""
        if axis is None:
            return self.counts.sum()
        idx = self.a if axis in (1, -1) else self.b
        return np.bincount(idx, weights=self.counts, minlength=self.n_models).astype(self.counts.dtype)

    def model_counts(self) -> np.ndarray:
        """Usable labels per model (as ``model_a`` or ``model_b``)."""
        return self.sum(axis=1) + self.sum(axis=0)

    def components(self) -> np.ndarray:
        """Connected part of each model in the (undirected) comparison graph: ``O(P + K)`` per round.

        Parts are numbered by their smallest model code, as
        ``scipy.sparse.csgraph.connected_components`` numbers them (tested), without importing it.
        """
        used = self.counts > 0
        return _connected_parts(self.a[used], self.b[used], self.n_models)

    def toarray(self) -> np.ndarray:
        """The dense ``K x K`` table (``K^2`` memory: small ``K`` only)."""
        out = np.zeros((self.n_models, self.n_models), dtype=self.counts.dtype)
        out[self.a, self.b] = self.counts
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.toarray()
        return out if dtype is None else out.astype(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_models, self.n_models)


def _connected_parts(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Part of each of ``k`` nodes joined by the edges ``(a[i], b[i])``, numbered by their smallest node.

    Hook and shortcut rounds: every node points at a node of its part with a smaller or equal
    code; each round hooks the larger root of every edge whose ends have different roots onto the
    smaller one, then follows pointers until each node points at its root (the part's smallest node).
    """
    parent = np.arange(k, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    first = True
    while a.shape[0]:
        ra, rb = (a, b) if first else (parent[a], parent[b])  # every node is its own root at first
        first = False
        high, low = np.maximum(ra, rb), np.minimum(ra, rb)
        apart = high != low
        n_apart = int(np.count_nonzero(apart))
        if not n_apart:
            break
        if n_apart < a.shape[0] // 2:  # edges inside a part never matter again (hooking a root onto itself is a no-op,
            a, b, high, low = a[apart], b[apart], high[apart], low[apart]  # so they are dropped only when it pays)
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return np.unique(parent, return_inverse=True)[1].reshape(-1)


def _unique_inverse(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` of non-negative int64 keys through one sort of ``key << bits | index``
    (``bits`` for the positions) instead of an argsort: the same arrays, 10^6 keys in ~30 ms instead of ~100 ms.
    Falls back to ``np.unique`` when the keys are too large to share 63 bits with their positions."""
    n = key.shape[0]
    bits = max(int(n - 1).bit_length(), 1)
    if n < 2 or int(key.min()) < 0 or int(key.max()).bit_length() + bits > 62:
        keys, inverse = np.unique(key, return_inverse=True)
        return keys, inverse.reshape(-1)
    packed = np.left_shift(key, bits, dtype=np.int64)
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    ordered = packed >> bits  # the keys in sorted order
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.intp)
    inverse[packed & ((1 << bits) - 1)] = np.cumsum(first) - 1
    return ordered[first], inverse


def _small_key_space(n_models: int, n_labels: int) -> bool:
    """Whether a table over every ``K^2`` pair key costs no more than the labels themselves (then lookups
    go through it, ``O(n + K^2)``, instead of sorting or binary search, ``O(n log n)``)."""
    return n_models * n_models <= max(1 << 16, n_labels)


def _sorted_search(keys: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``np.searchsorted(keys, needles)`` through the needles in sorted order (same result): each binary search
    then starts where the previous one ended, so the searches walk ``keys`` once instead of jumping across it
    (10^6 labels over 10^6 pairs: 0.06 s with the sort against 0.36 s)."""
    if needles.shape[0] < 2:
        return np.searchsorted(keys, needles)
    order = np.argsort(needles)
    pos = np.empty(needles.shape[0], dtype=np.intp)
    pos[order] = np.searchsorted(keys, needles[order])
    return pos


def _lookup(keys: np.ndarray, n_models: int) -> np.ndarray:
    """Position of each pair key in the sorted ``keys`` (``-1`` for keys not there), over all ``K^2`` keys."""
    table = np.full(n_models * n_models, -1, dtype=np.int64)
    table[keys] = np.arange(keys.shape[0], dtype=np.int64)
    return table


# --------------------------------------------------------------------------- Bradley–Terry over pairs


def attentive_table_pairs(s: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log P_att of every cell ``2 * pair + choice`` (the two entries of a pair: ``model_b``, then ``model_a`` chosen)."""
    d = s[a] - s[b]
    # one transcendental per pair: log sigmoid(-|d|) = log sigmoid(|d|) - |d| (both terms <= 0: no cancellation),
    # bit for bit what log_expit gives each sign (it computes x - log1p(exp(x)) for x < 0; tested). The
    # cell of the losing side is hi - |d|, written as hi - max(d, 0) and hi + min(d, 0) (the same numbers
    # without a select: the other side's max / min is an exact 0)
    hi = log_expit(np.abs(d))
    out = np.empty((d.shape[0], 2))
    np.subtract(hi, np.maximum(d, 0.0), out=out[:, 0])
    np.add(hi, np.minimum(d, 0.0), out=out[:, 1])
    return out.ravel()


def differs_cells_pairs(s: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Per cell: the pair's attentive log-odds are more than ``tol`` from 0 (``em._informative_users``' rule)."""
    return np.repeat(np.abs(s[a] - s[b]) > tol, 2)


def bt_objective_pairs(s, a, b, w1, w0, sigma, wsum=None) -> float:
    """The ridge Bradley–Terry objective over pair weights (``w1``: ``a`` chosen, ``w0``: ``b`` chosen).

    Uses ``log sigmoid(-d) = log sigmoid(d) - d``: one transcendental per pair (``wsum = w1 + w0``).
    """
    d = s[a] - s[b]
    if wsum is None:
        wsum = w1 + w0
    return float(wsum @ log_expit(d) - w0 @ d - 0.5 * (s @ s) / sigma**2)


class _Laplacian:
    """The sparse negative Hessian's CSR structure over fixed pairs (built once, refilled per Newton step)."""

    def __init__(self, a, b, k):
        from scipy.sparse import csr_matrix

        rows = np.concatenate([a, b, np.arange(k)])
        cols = np.concatenate([b, a, np.arange(k)])
        self.order = np.argsort(rows, kind="stable")
        indptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=k), out=indptr[1:])
        self.matrix = csr_matrix((np.zeros(rows.shape[0]), cols[self.order], indptr), shape=(k, k))
        self.k = k

    def fill(self, c, diag):
        self.matrix.data = np.concatenate([-c, -c, diag])[self.order]
        return self.matrix


class _PairHessian:
    """The Newton solve's negative Hessian ``D - W - W^T`` as an operator over fixed pairs (built once per EM).

    ``W`` is the ``K x K`` CSR table of the pairs' curvatures at ``(a, b)``: with the pairs sorted by ``a``
    (a :class:`PairTable`'s order) its data *is* the curvature vector, so a Newton step only writes it in
    place (no permutation of ``2 P`` entries, as the symmetric CSR of :class:`_Laplacian` needs), and a
    product is ``D x - W x - W^T x`` (the transpose shares ``W``'s arrays).
    """

    def __init__(self, a, b, k):
        from scipy.sparse import csr_matrix

        a = np.asarray(a)
        self.order = None if a.shape[0] < 2 or bool(np.all(a[1:] >= a[:-1])) else np.argsort(a, kind="stable")
        rows, cols = (a, np.asarray(b)) if self.order is None else (a[self.order], np.asarray(b)[self.order])
        indptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=k), out=indptr[1:])
        self.w = csr_matrix((np.zeros(rows.shape[0]), cols.astype(np.int64), indptr), shape=(k, k))
        self.wt = self.w.transpose()  # CSC over the same data, indices and indptr
        self.n_pairs = rows.shape[0]
        self.k = k
        self.diag = None

    def _set(self, values):
        """The pairs' weights: ``values`` itself when in table order (float64, contiguous; no copy), else
        permuted into the matrix's order. The transpose shares the array."""
        if self.order is None:
            values = np.ascontiguousarray(values, dtype=float)
            self.w.data = values
            self.wt.data = values
        else:
            self.w.data[:] = values[self.order]

    def sums(self, values):
        """Per model, the sums of per-pair ``values`` over its pairs as ``a`` and as ``b`` (``np.bincount``'s
        numbers: with the pairs in table order, each sum adds the same terms in the same order); leaves
        ``values`` as the pairs' weights (``fill`` sets them again)."""
        self._set(values)
        ones = np.ones(self.k)
        return self.w @ ones, self.wt @ ones

    def fill(self, c, diag):
        """Set the pairs' curvatures ``c`` and the diagonal; returns the operator."""
        self._set(c)
        self.diag = diag
        return self

    def __matmul__(self, x):
        return self.diag * x - self.w @ x - self.wt @ x


def bt_derivatives_pairs(s, a, b, w1, w0, sigma, structure=None):
    """Gradient and sparse negative Hessian (weighted graph Laplacian + ``I / sigma^2``, CSR) of
    :func:`bt_objective_pairs`."""
    k = s.shape[0]
    if structure is None:
        structure = _Laplacian(a, b, k)
    p = expit(s[a] - s[b])
    wsum = w1 + w0
    g = w1 - wsum * p  # w1 (1 - p) - w0 p
    grad = np.bincount(a, weights=g, minlength=k) - np.bincount(b, weights=g, minlength=k) - s / sigma**2
    c = wsum * p * (1.0 - p)
    diag = np.bincount(a, weights=c, minlength=k) + np.bincount(b, weights=c, minlength=k) + 1.0 / sigma**2
    return grad, structure.fill(c, diag), diag


def _cg_solve(matrix, diag, rhs, rtol, ridge=None):
    r"""Preconditioned conjugate gradients from zero for the SPD ``matrix`` (numpy loop, ``O(nnz)`` per step),
    stopping at the relative residual ``rtol``.

    The preconditioner is Jacobi's, :math:`D^{-1}`, plus, given ``ridge``, a coarse correction for the
    all-ones vector :math:`u` over the compared models: :math:`M^{-1} = D^{-1} + u u^\top / (u^\top A u)`.
    The Bradley–Terry negative Hessian is a graph Laplacian plus ``ridge * I``, so :math:`A u = \text{ridge}\,
    u` and :math:`u^\top A u = \text{ridge}\, |u|`: the ridge alone holds the strengths' common shift, an eigenvalue
    far below the rest that Jacobi leaves as it is (at 10^4 models, 10^6 pairs it made CG take 7-8 products
    instead of 4 at ``rtol`` 1e-3, every other step); the correction solves that mode exactly. :math:`M^{-1}` is
    SPD whatever the matrix, so the solve is right for any ``ridge``, only slower when it is not the Hessian's.
    Starting from zero rather than from the preconditioned step ``M^{-1} rhs`` saves the first residual's
    product: the first iteration moves along that same step with its best length.
    """
    inv = 1.0 / diag
    # u: the models in some pair of positive curvature (a never-compared model's row is ridge * I alone, and its
    # strength stays exactly 0); with A's rows summing to ridge, A u = ridge u still, so u' A u = ridge * |u|
    u = None if ridge is None else (diag > ridge).astype(float)
    coarse = 0.0 if u is None or not u.any() else 1.0 / (u.sum() * ridge)

    def precondition(residual):
        z = residual * inv
        if coarse:
            z += (coarse * (u @ residual)) * u
        return z

    x = np.zeros(rhs.shape[0])
    r = np.array(rhs, dtype=float)
    target = rtol * np.sqrt(r @ r)
    z = precondition(r)
    p = z.copy()
    rz = r @ z
    for _ in range(10 * rhs.shape[0] + 100):
        if np.sqrt(r @ r) <= target:
            break
        ap = matrix @ p
        alpha = rz / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        z = precondition(r)
        rz_new = r @ z
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x


def fit_bradley_terry_pairs(
    pairs,
    w1: np.ndarray,
    w0: np.ndarray,
    sigma: float,
    start: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
    method: str = "auto",
    cg_rtol: float = 1e-13,
    structure=None,
) -> np.ndarray:
    r"""Weighted ridge Bradley–Terry strengths from per-pair weights (Newton).

    Parameters
    ----------
    pairs : PairTable
        The compared pairs (``a``, ``b``, ``n_models``).
    w1, w0 : float arrays (P,)
        Weighted labels of each pair choosing ``model_a`` / ``model_b``.
    sigma : float
        The strengths' Normal(0, sigma) prior (ridge).
    start : float array (K,), optional
        Starting strengths (default zeros).
    tol, max_iter : float, int
        Newton stops when the largest step is below ``tol`` (or the objective stops improving).
    method : {"auto", "dense", "sparse"}
        ``"dense"``: :func:`bayes_annot.em.fit_bradley_terry` on the ``K x K``
        tables; ``"sparse"``: Newton with a conjugate-gradient solve of the
        sparse Hessian; ``"auto"``: dense up to :data:`DENSE_MAX_MODELS` models.
    cg_rtol : float
        Relative residual at which conjugate gradients stop (sparse method).
    structure : optional
        The Hessian's sparsity pattern over ``pairs``, built once by the caller
        when it solves many times over the same pairs (EM).

    Notes
    -----
    Both methods maximise the same strictly concave objective with the same
    backtracking and stopping rule, so they agree to the solver's accuracy.
    """
    from .em import fit_bradley_terry

    k = pairs.n_models
    a, b = pairs.a, pairs.b
    if method == "auto":
        method = "dense" if k <= DENSE_MAX_MODELS else "sparse"
    if method == "dense":
        t1 = np.zeros((k, k))
        t0 = np.zeros((k, k))
        t1[a, b] = w1
        t0[a, b] = w0
        return fit_bradley_terry(t1, t0, sigma, start=start, tol=tol, max_iter=max_iter)
    if method != "sparse":
        raise ValueError(f"unknown method '{method}', expected auto, dense or sparse")
    w1 = np.asarray(w1, dtype=float)
    w0 = np.asarray(w0, dtype=float)
    keep = (w1 != 0) | (w0 != 0)  # pairs without weight do not enter the objective
    if keep.all():
        keep = None
    else:
        w1, w0 = w1[keep], w0[keep]
    wsum = w1 + w0

    def value(d):  # log sigmoid(-d) = log sigmoid(d) - d: one transcendental per pair
        return float(wsum @ log_expit(d) - w0 @ d)

    def slopes(d):  # derivative w1 (1 - p) - w0 p and curvature (w1 + w0) p (1 - p) of each pair's term
        p = expit(d)
        return w1 - wsum * p, wsum * p * (1.0 - p)

    return _sparse_pair_newton(pairs, value, slopes, sigma, start, tol, max_iter, cg_rtol, structure, keep)


def fit_bradley_terry_classes(pairs, w1: np.ndarray, w0: np.ndarray, sigma: float, start: np.ndarray,
                              structure=None) -> np.ndarray:
    """:func:`fit_bradley_terry_pairs` for ``C`` taste classes: pair weights ``w1``, ``w0`` of shape ``(C, P)``,
    ``start`` ``(C, K)``; returns ``(C, K)`` strengths.

    Up to :data:`DENSE_MAX_MODELS` models all classes are solved in one batched dense Newton
    (:func:`bayes_annot.em.fit_bradley_terry_batch`); above, one sparse solve per class (no
    ``C x K x K`` table). Each class's objective never decreases.
    """
    from .em import fit_bradley_terry_batch

    k, n_classes = pairs.n_models, w1.shape[0]
    if k <= DENSE_MAX_MODELS:
        t1 = np.zeros((n_classes, k, k))
        t0 = np.zeros((n_classes, k, k))
        t1[:, pairs.a, pairs.b] = w1
        t0[:, pairs.a, pairs.b] = w0
        return fit_bradley_terry_batch(t1, t0, sigma, start)
    return np.stack([fit_bradley_terry_pairs(pairs, w1[c], w0[c], sigma, start=start[c], structure=structure)
                     for c in range(n_classes)])


def fit_bradley_terry_labels(model_a, model_b, choice_a, n_models: int, sigma: float, weights=None) -> np.ndarray:
    """Ridge Bradley–Terry strengths of labels (``choice_a`` = 1 when ``model_a`` was chosen), optionally weighted."""
    table, index = PairTable.from_labels(model_a, model_b, n_models)
    cells = np.bincount(2 * index + np.asarray(choice_a, dtype=np.int64), weights=weights, minlength=2 * table.n_pairs)
    return fit_bradley_terry_pairs(table, cells[1::2].astype(float), cells[0::2].astype(float), sigma)


def pair_model_derivatives(s, a, b, g, c, sigma, structure=None, dense: bool = False):
    """Gradient and negative Hessian in the strengths of a sum of per-pair terms ``f_p(s_a - s_b)`` minus the
    Normal(0, sigma) ridge, from each pair's derivative ``g = f'`` and curvature ``c = -f''`` (``c >= 0``).

    The negative Hessian is the weighted graph Laplacian of ``c`` plus ``I / sigma^2``: dense ``(K, K)``
    (``dense=True``) or the sparse CSR of :func:`bt_derivatives_pairs` (Bradley–Terry is the case
    ``g = w1 - (w1 + w0) p``, ``c = (w1 + w0) p (1 - p)``). Returns ``(grad, neg_hess, diag)``.
    """
    k = s.shape[0]
    grad = np.bincount(a, weights=g, minlength=k) - np.bincount(b, weights=g, minlength=k) - s / sigma**2
    diag = np.bincount(a, weights=c, minlength=k) + np.bincount(b, weights=c, minlength=k) + 1.0 / sigma**2
    if dense:
        off = np.bincount(a.astype(np.int64) * k + b, weights=c, minlength=k * k).reshape(k, k)
        return grad, np.diag(diag) - off - off.T, diag
    if structure is None:
        structure = _Laplacian(a, b, k)
    return grad, structure.fill(c, diag), diag


def fit_pair_newton(pairs, terms, sigma: float, start: np.ndarray | None = None, tol: float = 1e-10,
                    max_iter: int = 100, method: str = "auto", cg_rtol: float = 1e-13, structure=None,
                    keep=None) -> np.ndarray:
    r"""Ridge strengths maximising a sum of concave per-pair terms by Newton with backtracking.

    The pair Newton behind every strengths M-step that is not plain Bradley–Terry (Davidson's ties:
    :func:`bayes_annot.ties.davidson_pair_terms`): ``terms(d, keep)`` returns, at the pairs' log-odds
    ``d = s_a - s_b`` of the pairs ``keep`` (a mask or ``None``: all), the terms' sum, per-pair
    derivative and per-pair curvature (``>= 0``). The objective is the sum minus ``|s|^2 / (2 sigma^2)``,
    strictly concave. ``method``: ``dense`` solve up to :data:`DENSE_MAX_MODELS` models (``auto``),
    else conjugate gradients on the sparse Laplacian (:func:`pair_model_derivatives`), as
    :func:`fit_bradley_terry_pairs`; the stopping rule is :func:`bayes_annot.em.newton_ascent`'s.
    """
    from .em import newton_ascent

    k = pairs.n_models
    a, b = pairs.a, pairs.b
    if keep is not None and not np.all(keep):
        a, b = a[keep], b[keep]
        structure = None
    if method == "auto":
        method = "dense" if k <= DENSE_MAX_MODELS else "sparse"
    if method not in ("dense", "sparse"):
        raise ValueError(f"unknown method '{method}', expected auto, dense or sparse")
    if method == "sparse":
        return _sparse_pair_newton(pairs, lambda d: terms(d, keep)[0], lambda d: terms(d, keep)[1:], sigma, start, tol,
                                   max_iter, cg_rtol, structure, keep)

    def objective(s):
        return terms(s[a] - s[b], keep)[0] - 0.5 * float(s @ s) / sigma**2

    def direction(s):
        _, g, c = terms(s[a] - s[b], keep)
        grad, neg_hess, _ = pair_model_derivatives(s, a, b, g, c, sigma, None, True)
        return np.linalg.solve(neg_hess, grad)

    return newton_ascent(objective, direction, np.zeros(k) if start is None else np.asarray(start, dtype=float),
                         tol, max_iter)[0]


def _sparse_pair_newton(pairs, value, slopes, sigma, start, tol, max_iter, cg_rtol, structure, keep):
    """:func:`fit_pair_newton`'s sparse method from the pair terms' sum ``value(d)`` and their derivatives and
    curvatures ``slopes(d)`` at the log-odds ``d`` of the pairs ``keep``: the objective is evaluated at every
    backtracking point, the derivatives only where a step starts (reusing that point's ``d``)."""
    from .em import newton_ascent

    k = pairs.n_models
    a, b = pairs.a, pairs.b
    if keep is not None and not np.all(keep):
        a, b = a[keep], b[keep]
        structure = None
    if not isinstance(structure, _PairHessian):
        structure = _PairHessian(a, b, k)
    last = [None, None]  # the last point the objective saw and its d

    def log_odds(s):
        if last[0] is s:
            return last[1]
        d = s[a] - s[b]
        last[0], last[1] = s, d
        return d

    def objective(s):
        return value(log_odds(s)) - 0.5 * float(s @ s) / sigma**2

    def direction(s):
        return _sparse_direction(structure, s, *slopes(log_odds(s)), sigma, cg_rtol)

    return newton_ascent(objective, direction, np.zeros(k) if start is None else np.asarray(start, dtype=float),
                         tol, max_iter)[0]


def _sparse_direction(structure, s, g, c, sigma, cg_rtol, forcing=CG_FORCING):
    """The sparse Newton step at ``s`` from the pairs' derivatives ``g`` and curvatures ``c`` (inexact CG solve:
    relative residual the Jacobi step's size, at most ``forcing`` and at least ``cg_rtol``)."""
    out_g, in_g = structure.sums(g)
    out_c, in_c = structure.sums(c)
    return _solve_direction(structure, s, out_g, in_g, out_c, in_c, c, sigma, cg_rtol, forcing)


def _solve_direction(structure, s, out_g, in_g, out_c, in_c, c, sigma, cg_rtol, forcing):
    """:func:`_sparse_direction` from the per-model sums of the pairs' derivatives and curvatures over the pairs
    where the model is ``a`` (``out_*``) and ``b`` (``in_*``), and the curvatures ``c``."""
    grad = out_g - in_g - s / sigma**2
    diag = out_c + in_c + 1.0 / sigma**2
    # inexact Newton: CG's relative residual is the step's expected size (the Jacobi step), at most
    # CG_FORCING and at least cg_rtol, so the solve's error stays of the order of Newton's own (quadratic)
    estimate = float(np.max(np.abs(grad) / diag, initial=0.0))
    return _cg_solve(structure.fill(c, diag), diag, grad, max(cg_rtol, min(forcing, estimate)), 1.0 / sigma**2)


def uses_sparse_solve(n_models: int) -> bool:
    """Whether the Bradley–Terry M-step of ``n_models`` models is the sparse solve (above :data:`DENSE_MAX_MODELS`);
    EM then takes one Newton step per M-step (:func:`bt_newton_step`)."""
    return n_models > DENSE_MAX_MODELS


class AttentiveTables:
    """The attentive tables (:func:`attentive_table_pairs`) of the last few strength vectors: EM needs each
    point's table in its E-step and again in the M-step that starts there (the Bradley–Terry objective is the
    cell weights times the table), and the M-step's new point's table in the next E-step, so each table is
    computed once (:func:`bt_newton_step`). Looked up by value; ``size`` entries (the plain step's point, a
    SQUAREM candidate and its image). ``fast``: numpy's ``log1p`` / ``exp`` instead of ``log_expit``
    (:func:`_fast_table`; the sparse path's tables), or the compiled kernels when :func:`numba_kernels` serves
    these pairs (:attr:`kernels`; each table then comes with its pairs' ``sigmoid(d)``, :meth:`probs`)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, size: int = 3, fast: bool = False, n_models: int | None = None):
        self.a, self.b, self.size, self.fast = a, b, size, fast
        if fast and n_models is None:
            n_models = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
        self.kernels = numba_kernels(n_models, a.shape[0]) if fast else None
        self._entries: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._scratch: dict[str, np.ndarray] = {}

    def scratch(self, name: str, n: int, dtype=float) -> np.ndarray:
        """A work array of ``n`` entries kept between calls (``fast`` tables and :func:`bt_newton_step`):
        a fresh 8-16 MB array costs as much in page faults as a pass over it (1,600 faults, ~4 ms of system
        time per table at 10^6 pairs)."""
        work = self._scratch.get(name)
        if work is None or work.shape[0] != n or work.dtype != dtype:
            work = self._scratch[name] = np.empty(n, dtype=dtype)
        return work

    def _lookup(self, s: np.ndarray):
        """The cache entry ``(point, table, probs)`` at ``s``, computed when missing (moved to the front)."""
        hit = next((i for i, entry in enumerate(self._entries)
                    if entry[0].shape == s.shape and np.array_equal(entry[0], s)), None)
        if hit is not None:
            if hit:
                self._entries.insert(0, self._entries.pop(hit))
            return self._entries[0]
        evicted = self._entries[self.size - 1:]
        self._entries = self._entries[: self.size - 1]
        n = self.a.shape[0]
        # the evicted entry's arrays, each alone in a list (no other reference here: see _reusable)
        old_table, old_probs = [entry[1] for entry in evicted], [entry[2] for entry in evicted if entry[2] is not None]
        evicted.clear()
        probs = None
        if self.fast and not np.any(s):  # EM's start from zeros: every cell is log sigmoid(0), as computed below
            table = _reusable(old_table, 2 * n)
            table = np.empty(2 * n) if table is None else table
            table.fill(_fast_table(np.zeros(1), np.empty(1), None)[0])
            if self.kernels is not None:
                probs = _reusable(old_probs, n)
                probs = np.empty(n) if probs is None else probs
                probs.fill(0.5)
        elif self.kernels is not None:  # the compiled table and each pair's sigmoid(d)
            table = _reusable(old_table, 2 * n)
            probs = _reusable(old_probs, n)
            table = np.empty(2 * n) if table is None else table
            probs = np.empty(n) if probs is None else probs
            self.kernels.attentive_table(np.ascontiguousarray(s, dtype=float), self.a, self.b, self.scratch("d", n),
                                         self.scratch("work", n), self.scratch("bits", n, np.int64), table, probs)
        elif self.fast:
            # d = s[a] - s[b] in the work arrays (take's mode="wrap": no buffered copy; the codes are < K)
            d, work = self.scratch("d", n), self.scratch("work", n)
            np.take(s, self.a, out=d, mode="wrap")
            d -= np.take(s, self.b, out=work, mode="wrap")
            table = _fast_table(d, work, _reusable(old_table, 2 * n))
        else:
            table = attentive_table_pairs(s, self.a, self.b)
        table.flags.writeable = False
        self._entries.insert(0, (np.array(s, dtype=float, copy=True), table, probs))
        return self._entries[0]

    def table(self, s: np.ndarray) -> np.ndarray:
        """The attentive table at the strengths ``s`` (read-only)."""
        return self._lookup(s)[1]

    def probs(self, s: np.ndarray) -> np.ndarray | None:
        """Each pair's ``sigmoid(s_a - s_b)`` from the compiled table at ``s`` (read-only); ``None`` on the numpy
        path (its direction takes ``exp`` of the table's cells)."""
        probs = self._lookup(s)[2]
        if probs is not None:
            probs.flags.writeable = False
        return probs


def _reusable(slot: list, n: int):
    """An evicted cache entry's array (``slot``: a list of at most one, emptied) when nothing else holds it (no
    caller, no view: CPython's reference count), to be written over; else ``None``."""
    if not slot:
        return None
    array = slot.pop()
    # references: ``array`` (and getrefcount's argument, but from Python 3.14 on a local's load is borrowed and
    # counts nothing); a view or a caller's name would add one: compared with an object only a local holds
    alone = np.empty(0)
    if array.shape != (n,) or sys.getrefcount(array) > sys.getrefcount(alone):
        return None
    array.flags.writeable = True
    return array


def _fast_table(d: np.ndarray, work: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """:func:`attentive_table_pairs` from the pairs' log-odds ``d`` with ``log sigmoid(|d|)`` as numpy's
    ``-log1p(exp(-|d|))`` (4 ms per 10^6 pairs against scipy ``log_expit``'s 14 ms; within a few ulp of it, tested),
    for the sparse many-models path only: the small-model path keeps ``log_expit``'s arithmetic (golden numbers).
    Written into ``out`` (a new array when ``None``), using ``work`` (``P`` floats) for ``log1p(exp(-|d|))``;
    ``d`` is left unchanged."""
    out = np.empty(2 * d.shape[0]) if out is None else out
    cells = out.reshape(-1, 2)
    np.abs(d, out=work)
    np.negative(work, out=work)
    np.exp(work, out=work)
    np.log1p(work, out=work)  # -hi
    lose, win = cells[:, 0], cells[:, 1]
    np.maximum(d, 0.0, out=lose)  # hi - max(d, 0) = -(max(d, 0) + (-hi)): negation is exact
    lose += work
    np.negative(lose, out=lose)
    np.minimum(d, 0.0, out=win)  # hi + min(d, 0) = min(d, 0) - (-hi)
    win -= work
    return out


def bt_newton_step(pairs, cells: np.ndarray, sigma: float, start: np.ndarray, tables: AttentiveTables | None = None,
                   structure=None, rtol: float | None = None) -> np.ndarray:
    r"""One sparse Newton step with backtracking on :func:`fit_bradley_terry_pairs`' objective from ``start``,
    for the weights of a cell table ``cells`` (``2 P``: ``model_b`` chosen, then ``model_a`` chosen, per pair):
    an ECM (generalised EM) M-step, the objective does not fall (as in :func:`~bayes_annot.em.newton_ascent`)
    but is not maximised.

    EM with many models calls this instead of solving each M-step to convergence: EM's fixed points are
    the same (there the gradient, hence the step, is zero), and each EM iteration costs one Newton step instead
    of ~3 (EM took 21 iterations instead of 20 at 10^4 models, 10^6 rows). The objective is the cells times the
    attentive table (``tables``, cached: the E-step computed the start's, and the next E-step reuses the new
    point's). Conjugate gradients stop at the relative residual ``rtol`` (default :data:`ECM_CG_RTOL`): the
    step need not be exact, only shrink the distance to the M-step's optimum by about that factor.
    """
    rtol = ECM_CG_RTOL if rtol is None else rtol
    return _table_newton(pairs, cells, sigma, start, tables, structure, rtol, rtol, 0.0, 1)


def bt_fit_cells(pairs, cells: np.ndarray, sigma: float, tables: AttentiveTables | None = None, structure=None,
                 tol: float = 1e-10, max_iter: int = 100, cg_rtol: float = 1e-13) -> np.ndarray:
    """:func:`fit_bradley_terry_pairs`' sparse method from zeros for the weights of a cell table ``cells`` (``2 P``),
    through the cached attentive tables of :func:`bt_newton_step` (EM's start above :data:`DENSE_MAX_MODELS`
    models, :data:`EM_START_TOL`: its last point's table is the first E-step's): the same objective, Newton
    steps, conjugate-gradient tolerances and stopping rule, so the same optimum to the solver's accuracy (tested
    to 1e-10)."""
    return _table_newton(pairs, cells, sigma, np.zeros(pairs.n_models), tables, structure, cg_rtol, CG_FORCING,
                         tol, max_iter)


def _table_newton(pairs, cells, sigma, start, tables, structure, cg_rtol, forcing, tol, max_iter):
    """Newton ascent (:func:`~bayes_annot.em.newton_ascent`) on the ridge Bradley–Terry objective of a cell table,
    the objective and derivatives read from the cached attentive tables ``tables``."""
    from .em import newton_ascent

    k = pairs.n_models
    a, b = pairs.a, pairs.b
    tables = tables if tables is not None else AttentiveTables(a, b, fast=True, n_models=k)
    structure = structure if isinstance(structure, _PairHessian) else _PairHessian(a, b, k)
    cells = np.asarray(cells, dtype=float)
    n = a.shape[0]
    w1, w0 = cells[1::2], cells[0::2]
    wsum = None if tables.kernels is not None else np.add(w1, w0, out=tables.scratch("weight", n))

    def objective(s):
        return float(cells @ tables.table(s)) - 0.5 * float(s @ s) / sigma**2

    def direction(s):
        # p = sigmoid(d) of each pair, then wsum p, the derivative w1 - wsum p and the curvature wsum p (1 - p)
        # (work arrays kept by ``tables``; 1 - p is inexact where p ~ 1, but the curvature only sets the step's
        # length, not where the gradient vanishes: same optimum)
        if tables.kernels is not None:  # the compiled table's p, then one pass for c and the four per-model sums
            sums = [np.zeros(k) for _ in range(4)]
            c = tables.scratch("curvature", n)
            tables.kernels.pair_slopes(tables.probs(s), w1, w0, a, b, c, *sums)
            return _solve_direction(structure, s, *sums, c, sigma, cg_rtol, forcing)
        p = np.exp(tables.table(s)[1::2], out=tables.scratch("probs", n))
        c = np.multiply(wsum, p, out=tables.scratch("curvature", n))
        g = np.subtract(w1, c, out=tables.scratch("slope", n))
        np.subtract(1.0, p, out=p)
        c *= p
        return _sparse_direction(structure, s, g, c, sigma, cg_rtol, forcing)

    return newton_ascent(objective, direction, np.asarray(start, dtype=float), tol, max_iter)[0]


def fit_davidson_pairs(pairs, w1, w0, wt, nu: float, sigma: float, start=None, structure=None, **options) -> np.ndarray:
    """Ridge Davidson strengths at fixed ``nu`` from per-pair weighted counts (``w1``: ``model_a`` chosen,
    ``w0``: ``model_b`` chosen, ``wt``: tie): :func:`fit_pair_newton` with
    :func:`bayes_annot.ties.davidson_pair_terms`; ``nu = 0`` and no ties is Bradley–Terry."""
    from .ties import davidson_pair_terms

    w1, w0, wt = (np.asarray(w, dtype=float) for w in (w1, w0, wt))
    keep = (w1 != 0) | (w0 != 0) | (wt != 0)
    if keep.all():
        keep = None

    def terms(d, keep):
        if keep is None:
            return davidson_pair_terms(d, w1, w0, wt, nu)
        return davidson_pair_terms(d, w1[keep], w0[keep], wt[keep], nu)

    return fit_pair_newton(pairs, terms, sigma, start=start, structure=structure, keep=keep, **options)
