r"""Compiled kernels of the many-models EM path (optional: ``pip install bayes_annot[fast]``, numba).

Used only above :data:`~bayes_annot.pairs.DENSE_MAX_MODELS` models and only when numba is importable
(:func:`bayes_annot.pairs.numba_kernels`); importing this module imports numba (~0.2 s), so nothing imports it
at start-up or for a fit with few models. Every kernel has a pure-numpy twin in :mod:`bayes_annot.pairs` /
:mod:`bayes_annot.block_em`, and a fit through either path reaches the same optimum (tested to 1e-10).

* :func:`attentive_table`: the attentive table ``log P_att`` of every cell ``2 * pair + choice`` and each pair's
  ``p = sigmoid(d)`` (the Newton direction's input) from ``d = s_a - s_b``, in three passes, the two
  transcendentals (``exp(-|d|)`` and ``log1p`` of it) as polynomials that the compiler vectorises (numpy's
  ``exp`` / ``log1p`` are scalar libm calls on CPUs without AVX-512: ~5 ns per pair each). Within 4 ulp of
  numpy's ``-log1p(exp(-|d|))`` (tested); ``|d|`` above :data:`EXP_CLAMP` is taken as :data:`EXP_CLAMP` in the
  exponential (``exp(-700) ~ 1e-304``: the table and ``p`` move by less than ``1e-300``).
* :func:`pair_slopes`: each pair's curvature ``c = wsum p (1 - p)`` and, per model, the sums of the derivatives
  ``w1 - wsum p`` (``wsum = w1 + w0``) and curvatures over its pairs as ``model_a`` and as ``model_b`` (one pass; the same terms in
  the same order as the sparse products of :class:`~bayes_annot.pairs._PairHessian`).
* :func:`gather_add`: the E-step's two passes over the labels in cell order,
  ``np.bincount``'s numbers (the same additions in the same order) without the gathered temporary.

Compiled on first use and cached on disk (``cache=True``: next to this file, or, when that folder is read-only,
numba's user-wide cache folder; ``NUMBA_CACHE_DIR`` overrides both). When no cache folder is writable the kernels
are compiled in memory each run.
"""

from __future__ import annotations

import warnings

import numpy as np
import numba

__all__ = ["attentive_table", "pair_slopes", "gather_add", "EXP_CLAMP"]

EXP_CLAMP = 700.0
"""``|d|`` above this is taken as this in ``exp(-|d|)`` (a normal number, ``2^-k`` built from exponent bits)."""

_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # Cody and Waite's split of log(2): k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10


def _jit(function):
    """``numba.njit(cache=True)``, or without the disk cache when no cache folder is writable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            return numba.njit(cache=True, error_model="numpy")(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(cache=False, error_model="numpy")(function)


@_jit
def _pair_log_odds(s, a, b, d):
    for i in range(a.shape[0]):
        d[i] = s[a[i]] - s[b[i]]


# The two polynomials are written out (Horner): a loop over a tuple of coefficients, even inlined, is not unrolled
# before LLVM's vectoriser, and the table then took 28-60 ms per 10^6 pairs instead of ~9 (measured).


@_jit
def _exp_neg_abs(d, mantissa, bits):
    """``exp(-min(|d|, EXP_CLAMP)) = mantissa * 2^-k``: ``mantissa`` (``e^r``, ``|r| <= log(2) / 2``, a degree-13
    Taylor polynomial: error below 5e-18 relative) and ``bits`` (the int64 bit pattern of the float ``2^-k``)."""
    for i in range(d.shape[0]):
        t = min(abs(d[i]), EXP_CLAMP)
        k = np.floor(t * _INV_LN2 + 0.5)
        r = (k * _LN2_HI - t) + k * _LN2_LO
        q = 1.0 / 6227020800.0
        q = q * r + 1.0 / 479001600.0
        q = q * r + 1.0 / 39916800.0
        q = q * r + 1.0 / 3628800.0
        q = q * r + 1.0 / 362880.0
        q = q * r + 1.0 / 40320.0
        q = q * r + 1.0 / 5040.0
        q = q * r + 1.0 / 720.0
        q = q * r + 1.0 / 120.0
        q = q * r + 1.0 / 24.0
        q = q * r + 1.0 / 6.0
        q = q * r + 0.5
        q = q * r + 1.0
        q = q * r + 1.0
        mantissa[i] = q
        bits[i] = np.int64(1023 - np.int32(k)) << 52


@_jit
def _table_tail(d, mantissa, scale, out, p):
    """From ``e = exp(-|d|)``: ``log1p(e) = 2 atanh(z)``, ``z = e / (2 + e) <= 1/3``, as its series (17 terms:
    truncation below 2e-17 relative), the two cells of each pair and ``p = sigmoid(d)``."""
    for i in range(d.shape[0]):
        v = d[i]
        e = mantissa[i] * scale[i]
        z = e / (2.0 + e)
        w = z * z
        h = 1.0 / 33.0
        h = h * w + 1.0 / 31.0
        h = h * w + 1.0 / 29.0
        h = h * w + 1.0 / 27.0
        h = h * w + 1.0 / 25.0
        h = h * w + 1.0 / 23.0
        h = h * w + 1.0 / 21.0
        h = h * w + 1.0 / 19.0
        h = h * w + 1.0 / 17.0
        h = h * w + 1.0 / 15.0
        h = h * w + 1.0 / 13.0
        h = h * w + 1.0 / 11.0
        h = h * w + 1.0 / 9.0
        h = h * w + 1.0 / 7.0
        h = h * w + 1.0 / 5.0
        h = h * w + 1.0 / 3.0
        h = h * w + 1.0
        f = 2.0 * z * h  # log1p(e) = -log sigmoid(|d|)
        if v != v:  # NaN strengths stay NaN (as numpy's table)
            f = v
        out[2 * i] = -(max(v, 0.0) + f)
        out[2 * i + 1] = min(v, 0.0) - f
        u = 1.0 / (1.0 + e)
        p[i] = u if v >= 0.0 else e * u


def attentive_table(s, a, b, d, mantissa, bits, out, p):
    """The attentive table of the strengths ``s`` over the pairs ``(a, b)`` into ``out`` (``2 P``) and each pair's
    ``sigmoid(s_a - s_b)`` into ``p``; ``d``, ``mantissa`` (float) and ``bits`` (int64) are ``P``-long work arrays.
    Returns ``out``."""
    _pair_log_odds(s, a, b, d)
    _exp_neg_abs(d, mantissa, bits)
    _table_tail(d, mantissa, bits.view(np.float64), out, p)
    return out


@_jit
def pair_slopes(p, w1, w0, a, b, c, out_g, in_g, out_c, in_c):
    """Each pair's curvature ``c = wsum p (1 - p)`` (into ``c``; ``wsum = w1 + w0``) and the per-model sums, over
    the pairs where the model is ``a`` (``out_*``) and ``b`` (``in_*``), of the derivatives ``w1 - wsum p`` and the
    curvatures (into the zeroed ``(K,)`` arrays)."""
    for i in range(p.shape[0]):
        pi = p[i]
        cw = (w1[i] + w0[i]) * pi
        g = w1[i] - cw
        ci = cw * (1.0 - pi)
        c[i] = ci
        out_g[a[i]] += g
        in_g[b[i]] += g
        out_c[a[i]] += ci
        in_c[b[i]] += ci


@_jit
def gather_add(into, source, values, out):
    """``out[into[i]] += values[source[i]]`` over ``i`` in order (``out`` zeroed): ``np.bincount(into,
    weights=values[source])``. The E-step's passes over the labels in cell order: per-user sums of a cell table
    (``into`` the users, ``source`` the cells) and the cell table of per-user weights (the other way round)."""
    for i in range(into.shape[0]):
        out[into[i]] += values[source[i]]
    return out
