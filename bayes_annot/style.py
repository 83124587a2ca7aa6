r"""The attentive side's style term (Chatbot Arena's style control): reading-based length preference (v2).

An attentive user reads both responses; they may still prefer the longer one *after reading*. With
:math:`x_r` a row's style covariates (a-vs-b contrasts, e.g. the log length ratio) the attentive
log-odds of choosing ``model_a`` are

.. math::

    d_r = s_a - s_b + \delta^\top \tilde x_r,

(with ties, Davidson's ``d``), ``delta`` the style effects: log-odds per unit of the covariate. So
"prefers long answers after reading" (``delta``, attentive) and "clicks the long one without reading"
(the casual :math:`f`, :mod:`bayes_annot.casual`) are separate, reported effects.

The statistics stay compressed: the style covariates are casual covariates too, and :math:`\tilde x_r`
is the *representative value* of the row's casual cell (per covariate, the mean of :math:`x` over the
fitted rows in the cell's signed bin; :class:`StyleDesign`). The attentive table is then per
``(pair, casual cell)`` (:func:`style_table`, entry ``(pair n_cells + cell) 2 + choice``, the joint
count matrix's order of :class:`~bayes_annot.block_em.Block`), and the M-step of ``(s, delta)`` is one
joint Newton solve on the ``(pair, cell)`` weighted counts (:func:`fit_style`), with the strengths'
Normal(0, ``strength_sigma``) ridge and a Normal(0, ``style_effect_sigma``) prior on each ``delta``: a
strictly concave objective, so EM's objective never decreases.

Identifiability: the same model pair is seen at many length ratios (a model's answers vary in length
from prompt to prompt), so ``delta`` is the within-pair slope of the attentive choice on the covariate,
and the strengths the choice at equal covariates. Without that within-pair spread (every answer of a
model exactly as long as every other) ``delta`` and the strengths are confounded and only the prior
separates them (docs/model.md, "Style covariates").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .ufuncs import expit, log_expit

from .casual import CasualDesign
from .errors import InputError

__all__ = ["StyleDesign", "STYLE_COVARIATES", "parse_style_covariates", "style_design", "style_offsets",
           "style_logits", "style_table", "style_davidson_tables", "style_objective", "style_derivatives", "fit_style", "style_effects",
           "cell_offsets_from_summary",
           "style_from_summary", "delta_from_summary"]

STYLE_COVARIATES = ("auto", "none")
"""The keyword settings of ``style_covariates`` (else column names)."""


@dataclass(frozen=True)
class StyleDesign:
    """The style covariates and their cells' representative values, fixed at fit time.

    Attributes
    ----------
    names : tuple of str
        The style covariates (each one of the casual design's covariates).
    index : tuple of int
        Each one's column in the casual design.
    level_means : tuple of tuple of float
        Per style covariate, the representative value of each signed bin level ``-J..J`` of its casual
        bins (``2 J + 1`` numbers; level 0, ``x = 0``, is 0): the mean of ``x`` over the fitted rows at
        that level (a level without rows: minus its mirror level's value).
    """

    names: tuple
    index: tuple
    level_means: tuple

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "index", tuple(int(i) for i in self.index))
        object.__setattr__(self, "level_means", tuple(tuple(float(v) for v in row) for row in self.level_means))
        if not self.names or len(self.names) != len(self.index) or len(self.names) != len(self.level_means):
            raise InputError("a style design needs one casual column and one list of level means per covariate")

    @property
    def n_effects(self) -> int:
        """Number of style effects ``delta`` (one per covariate)."""
        return len(self.names)

    def values(self, casual: CasualDesign) -> np.ndarray:
        """``(n_cells, n_effects)``: each casual cell's representative style covariates."""
        levels = [np.arange(-j, j + 1) for j in casual.n_bins]
        grids = [g.reshape(-1) for g in np.meshgrid(*levels, indexing="ij")]
        out = np.zeros((casual.n_cells, self.n_effects))
        for k, (col, means) in enumerate(zip(self.index, self.level_means)):
            j = casual.n_bins[col]
            if len(means) != 2 * j + 1:
                raise InputError(f"style covariate '{self.names[k]}' has {len(means)} level means for {j} casual bins")
            out[:, k] = np.asarray(means)[grids[col] + j]
        return out

    def to_dict(self) -> dict:
        """JSON-ready form: ``names``, ``index`` and ``level_means``."""
        return {"names": list(self.names), "index": list(self.index), "level_means": [list(m) for m in self.level_means]}


def parse_style_covariates(value) -> tuple[str, ...] | str:
    """``"auto"``, ``"none"`` or a tuple of names, from a setting (``None``, a string ``"COL,COL"`` or a list)."""
    if value is None:
        return "none"
    if isinstance(value, StyleDesign):
        return value.names
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in STYLE_COVARIATES:
            return text.lower()
        names = tuple(part.strip() for part in text.split(","))
    else:
        names = tuple(str(part).strip() for part in value)
    if not names or any(not n for n in names):
        raise InputError(f"style_covariates must be 'auto', 'none' or column names, got {value!r}")
    return names


def style_design(which, casual: CasualDesign | None, x: np.ndarray | None, columns=()) -> StyleDesign | None:
    """The style design of setting ``which`` over the casual design ``casual`` and the casual covariates ``x``
    ``(n, m)`` of the rows in the likelihood; ``None`` for ``"none"``, or ``"auto"`` without casual covariates.

    ``"auto"``: every casual covariate. Names must be casual covariates (the style term uses their cells).

    Raises
    ------
    InputError
        A name that is not a casual covariate (a column not in the log, or one not named as a casual covariate).
    """
    which = parse_style_covariates(which)
    if which == "none":
        return None
    if casual is None:
        if which == "auto":
            return None
        missing = [n for n in which if n not in set(columns) and n != "log_length_ratio"]
        if missing:
            raise InputError(f"style covariate column '{missing[0]}' is not in the log")
        raise InputError(f"style covariates ({', '.join(which)}) need the same casual covariates: the log has none "
                         "(set casual_covariates / --casual-covariates to include them)")
    names = casual.names if which == "auto" else which
    index = []
    for name in names:
        if name not in casual.names:
            if name not in set(columns) and name != "log_length_ratio":
                raise InputError(f"style covariate column '{name}' is not in the log")
            raise InputError(f"style covariate '{name}' is not a casual covariate (casual: {', '.join(casual.names)}); "
                             "name it in casual_covariates / --casual-covariates too")
        index.append(casual.names.index(name))
    if len(set(index)) != len(index):
        raise InputError(f"style covariates name a column twice: {', '.join(names)}")
    x = np.asarray(x, dtype=float).reshape(-1, len(casual.names))
    cells = casual.cells(x)
    levels = _signed_levels(casual, cells)
    means = []
    for col in index:
        j = casual.n_bins[col]
        lev = levels[:, col] + j
        total = np.bincount(lev, weights=x[:, col], minlength=2 * j + 1)
        count = np.bincount(lev, minlength=2 * j + 1)
        m = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        m = np.where(np.isnan(m), -m[::-1], m)  # an empty level: minus its mirror
        m = np.where(np.isnan(m), 0.0, m)
        m[j] = 0.0
        means.append(tuple(m))
    return StyleDesign(names=tuple(names), index=tuple(index), level_means=tuple(means))


def _signed_levels(casual: CasualDesign, cells: np.ndarray) -> np.ndarray:
    """``(n, m)`` signed bin level of each covariate, decoded from the joint casual cells."""
    cells = np.asarray(cells, dtype=np.int64)
    out = np.zeros((cells.shape[0], len(casual.names)), dtype=np.int64)
    for col in range(len(casual.names) - 1, -1, -1):
        width = 2 * casual.n_bins[col] + 1
        out[:, col] = cells % width - casual.n_bins[col]
        cells = cells // width
    return out


def style_offsets(values: np.ndarray, delta) -> np.ndarray:
    """Each casual cell's style offset :math:`\\delta^\\top \\tilde x_c` ``(n_cells,)``."""
    return np.asarray(values, dtype=float) @ np.asarray(delta, dtype=float)


def style_logits(s, a, b, offsets) -> np.ndarray:
    """``(P, n_cells)``: the attentive log-odds ``s_a - s_b + offset_c`` of every pair and cell."""
    s = np.asarray(s, dtype=float)
    return (s[a] - s[b])[:, None] + np.asarray(offsets, dtype=float)[None, :]


def style_davidson_tables(s, a, b, offsets, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """With ties in the likelihood: Davidson's attentive log P of every decided joint entry ``(2 P n_cells,)`` (as
    :func:`style_table`) and of a tie at every ``(pair, cell)`` ``(P n_cells,)``, at ``d = s_a - s_b + offset``."""
    from .ties import davidson_logprobs

    d = style_logits(s, a, b, offsets)
    pa, pb, pt = davidson_logprobs(d.ravel(), nu)
    return np.stack([pb, pa], axis=-1).ravel(), pt


def style_table(s, a, b, offsets) -> np.ndarray:
    """``(2 P n_cells,)``: attentive log P of every joint entry ``(pair n_cells + cell) 2 + choice`` (choice 1:
    ``model_a``)."""
    d = style_logits(s, a, b, offsets)
    out = np.empty(d.shape + (2,))
    out[..., 0] = log_expit(-d)
    out[..., 1] = log_expit(d)
    return out.reshape(-1)


def _terms(d, w1, w0, wt, nu):
    """Value, derivative and curvature (``-`` second derivative) in ``d`` of the ``(pair, cell)`` terms:
    Bradley–Terry (``wt`` None) or Davidson's ties (:func:`bayes_annot.ties.davidson_pair_terms`)."""
    if wt is None:
        p = expit(d)
        n = w1 + w0
        return float(np.sum(n * log_expit(d)) - np.sum(w0 * d)), w1 - n * p, n * p * (1.0 - p)
    from .ties import davidson_pair_terms

    value, g, c = davidson_pair_terms(d.ravel(), w1.ravel(), w0.ravel(), wt.ravel(), nu)
    return value, g.reshape(d.shape), c.reshape(d.shape)


def style_objective(s, delta, a, b, values, w1, w0, strength_sigma: float, style_sigma: float, wt=None,
                    nu: float = 0.0) -> float:
    r"""The M-step objective of ``(s, delta)``: :math:`\sum_{p,c} W^1_{pc} \log\sigma(d_{pc}) + W^0_{pc}
    \log\sigma(-d_{pc})` (``w1``, ``w0`` ``(P, n_cells)``: weighted labels choosing ``model_a`` / ``model_b``)
    minus the ridges :math:`|s|^2 / 2\sigma_s^2 + |\delta|^2 / 2\sigma_\delta^2`. With ties (``wt``
    ``(P, n_cells)`` weighted ties, Davidson's ``nu``) the terms are Davidson's
    (:func:`bayes_annot.ties.davidson_pair_terms`) at :math:`d_{pc}`."""
    s, delta = np.asarray(s, dtype=float), np.asarray(delta, dtype=float)
    d = style_logits(s, a, b, style_offsets(values, delta))
    value = _terms(d, w1, w0, wt, nu)[0]
    return value - 0.5 * float(s @ s) / strength_sigma**2 - 0.5 * float(delta @ delta) / style_sigma**2


def _pieces(s, delta, a, b, values, w1, w0, wt=None, nu=0.0):
    d = style_logits(s, a, b, style_offsets(values, delta))
    _, r, w = _terms(d, w1, w0, wt, nu)
    return r, w  # per (pair, cell): derivative and curvature in d


def style_derivatives(s, delta, a, b, values, w1, w0, strength_sigma: float, style_sigma: float, wt=None,
                      nu: float = 0.0):
    """Gradient ``(K + m,)`` and dense negative Hessian ``(K + m, K + m)`` of :func:`style_objective` in
    ``(s, delta)`` (small problems and tests; :func:`fit_style` solves larger ones by blocks)."""
    s, delta, values = np.asarray(s, dtype=float), np.asarray(delta, dtype=float), np.asarray(values, dtype=float)
    k, m = s.shape[0], delta.shape[0]
    r, w = _pieces(s, delta, a, b, values, w1, w0, wt, nu)
    grad_s, h_ss, h_sd, grad_d, h_dd = _blocks(s, delta, a, b, values, r, w, strength_sigma, style_sigma, dense=True)
    hess = np.zeros((k + m, k + m))
    hess[:k, :k], hess[:k, k:], hess[k:, :k], hess[k:, k:] = h_ss, h_sd, h_sd.T, h_dd
    return np.concatenate([grad_s, grad_d]), hess


def _blocks(s, delta, a, b, values, r, w, strength_sigma, style_sigma, dense, structure=None):
    """The Newton system's blocks: ``grad_s``, ``H_ss`` (the pairs' Laplacian, :func:`pair_model_derivatives`),
    ``H_sd`` ``(K, m)``, ``grad_d``, ``H_dd`` (all negative Hessian blocks); ``H_ss`` dense or sparse."""
    from .pairs import pair_model_derivatives

    k = s.shape[0]
    grad_s, h_ss, diag = pair_model_derivatives(s, a, b, r.sum(axis=1), w.sum(axis=1), strength_sigma, structure,
                                                dense)
    v = w @ values  # (P, m): sum over cells of curvature times x
    h_sd = np.stack([np.bincount(a, weights=v[:, j], minlength=k) - np.bincount(b, weights=v[:, j], minlength=k)
                     for j in range(values.shape[1])], axis=1)
    grad_d = r.sum(axis=0) @ values - delta / style_sigma**2
    h_dd = (values * w.sum(axis=0)[:, None]).T @ values + np.eye(values.shape[1]) / style_sigma**2
    if dense:
        return grad_s, h_ss, h_sd, grad_d, h_dd
    return grad_s, (h_ss, diag), h_sd, grad_d, h_dd


def fit_style(pairs, w1, w0, values, s, delta, strength_sigma: float, style_sigma: float, tol: float = 1e-10,
              max_iter: int = 100, structure=None, wt=None, nu: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The M-step of ``(s, delta)``: maximise :func:`style_objective` by Newton's method with backtracking.

    ``pairs`` the pair vocabulary (``a``, ``b``, ``n_models``); ``w1``, ``w0`` ``(P, n_cells)``; ``values``
    ``(n_cells, m)`` (:meth:`StyleDesign.values`). Up to
    :data:`~bayes_annot.pairs.DENSE_MAX_MODELS` models the ``(K + m)`` system is solved densely; above, by
    the Schur complement of the strengths' sparse Laplacian block (conjugate gradients, ``m + 1`` solves).
    Strictly concave (both priors are proper), so the objective never decreases. ``wt``, ``nu``: ties in the
    likelihood (Davidson's terms at fixed ``nu``, :func:`style_objective`).
    """
    from .em import newton_ascent
    from .pairs import DENSE_MAX_MODELS, _cg_solve, _Laplacian

    a, b = pairs.a, pairs.b
    k = pairs.n_models
    values = np.asarray(values, dtype=float)
    m = values.shape[1]
    w1, w0 = np.asarray(w1, dtype=float), np.asarray(w0, dtype=float)
    wt = None if wt is None else np.asarray(wt, dtype=float)
    dense = k <= DENSE_MAX_MODELS
    if not dense and structure is None:
        structure = _Laplacian(a, b, k)

    def objective(x):
        return style_objective(x[:k], x[k:], a, b, values, w1, w0, strength_sigma, style_sigma, wt, nu)

    def direction(x):
        r, w = _pieces(x[:k], x[k:], a, b, values, w1, w0, wt, nu)
        grad_s, h_ss, h_sd, grad_d, h_dd = _blocks(x[:k], x[k:], a, b, values, r, w, strength_sigma, style_sigma,
                                                   dense, structure)
        if dense:
            hess = np.block([[h_ss, h_sd], [h_sd.T, h_dd]])
            return np.linalg.solve(hess, np.concatenate([grad_s, grad_d]))
        matrix, diag = h_ss
        y0 = _cg_solve(matrix, diag, grad_s, 1e-13)
        y = np.stack([_cg_solve(matrix, diag, h_sd[:, j], 1e-13) for j in range(m)], axis=1)
        step_d = np.linalg.solve(h_dd - h_sd.T @ y, grad_d - h_sd.T @ y0)
        return np.concatenate([y0 - y @ step_d, step_d])

    start = np.concatenate([np.asarray(s, dtype=float), np.asarray(delta, dtype=float)])
    x, _ = newton_ascent(objective, direction, start, tol=tol, max_iter=max_iter)
    return x[:k].copy(), x[k:].copy()


def style_effects(style: StyleDesign, delta) -> dict:
    """JSON-ready style effects (``summary["style_effects"]``): per covariate its ``name``, ``delta`` (attentive
    log-odds per unit of the covariate) and the representative ``level_means`` of its casual bins."""
    delta = np.asarray(delta, dtype=float)
    return {"covariates": [{"name": n, "delta": float(v), "casual_index": int(i), "level_means": list(lm)}
                           for n, v, i, lm in zip(style.names, delta, style.index, style.level_means)]}


def style_from_summary(summary: dict) -> StyleDesign | None:
    """The style design a result's ``summary["style_effects"]`` records (``None``: no style term)."""
    effects = (summary or {}).get("style_effects")
    if not effects:
        return None
    covs = effects["covariates"]
    return StyleDesign(names=tuple(c["name"] for c in covs), index=tuple(c["casual_index"] for c in covs),
                       level_means=tuple(tuple(c["level_means"]) for c in covs))


def delta_from_summary(summary: dict) -> np.ndarray | None:
    """The style effects ``delta`` a result's summary records (a warm start; ``None``: none)."""
    effects = (summary or {}).get("style_effects")
    if not effects:
        return None
    return np.array([float(c["delta"]) for c in effects["covariates"]])


def cell_offsets_from_summary(summary: dict) -> np.ndarray | None:
    """Each casual cell's style offset :math:`\\delta^\\top \\tilde x_c` ``(n_cells,)`` of a fit's summary
    (``casual_effects`` and ``style_effects``; ``None`` without a style term)."""
    from .casual import design_from_summary

    style = style_from_summary(summary)
    if style is None:
        return None
    return style_offsets(style.values(design_from_summary(summary)), delta_from_summary(summary))
