r"""Casual clicks that follow covariates: the casual side of the behaviour model (v2).

A casual click ignores the content but not the surface: it follows the position and, above all,
length. For label :math:`r` with covariates :math:`x_r` (a-vs-b *contrasts*: swapping the two
responses negates them; the default is the log length ratio :math:`\log(L_a / L_b)`)

.. math::

    \operatorname{logit} P_{cas}(a \mid x_r) = \beta_0 + \sum_j \operatorname{sign}(x_{rj})\, g_j\big(\mathrm{bin}(|x_{rj}|)\big),

so :math:`f` is odd (:math:`f(-x) = -f(x)`, :math:`f(0) = 0`) and piecewise constant on ``J``
bins of :math:`|x|` per covariate (edges: quantiles of the nonzero :math:`|x|`, fixed at fit
time by :class:`CasualDesign`). :math:`\beta_0` stays the pure position bias at equal length,
``q = sigmoid(beta_0)``. Priors: Beta(``q_alpha``, ``q_beta``) on ``q`` (as without covariates,
on the natural scale) and Normal(0, ``casual_effect_sigma``) on each :math:`g`.

The sufficient statistics stay compressed: a row's *casual cell* is the joint signed-bin index
over the covariates (:math:`(2J + 1)^m` cells); per cell the casual log-probabilities of choosing
``model_a`` / ``model_b`` are a table (:func:`casual_table`, entry ``2 * cell + choice``), and the
M-step of :math:`(\beta_0, g)` is an exact Newton solve of a weighted logistic regression on the
cells' design matrix (:func:`fit_casual`), so EM's objective never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .ufuncs import expit, log_expit

from .data import PreparedData, casual_covariates
from .em import newton_ascent
from .errors import InputError
from .likelihood import Priors, log_beta_pdf, log_normal_pdf

__all__ = ["CasualDesign", "prepare_casual", "design_from_summary", "DEFAULT_BINS", "MAX_CELLS", "casual_design", "casual_table", "casual_logits",
           "casual_objective", "fit_casual", "casual_tables", "casual_log_prior", "casual_effects"]

DEFAULT_BINS = 6
"""Bins of :math:`|x|` per covariate (fewer when the nonzero values have fewer distinct quantiles)."""

MAX_CELLS = 4096
"""Largest number of joint casual cells :math:`\\prod_j (2 J_j + 1)`."""


@dataclass(frozen=True)
class CasualDesign:
    """The casual covariates' binning, fixed at fit time (stored in ``summary.json``, reused by updates).

    Attributes
    ----------
    names : tuple of str
        The covariates (``log_length_ratio`` or input columns).
    edges : tuple of tuple of float
        Per covariate the inner edges of the bins of :math:`|x|` (``J - 1`` numbers, increasing):
        bin 1 is :math:`0 < |x| \\le e_1`, bin ``J`` is :math:`|x| > e_{J-1}`; ``x = 0`` is cell 0.
    """

    names: tuple
    edges: tuple

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "edges", tuple(tuple(float(e) for e in row) for row in self.edges))
        if len(self.names) != len(self.edges) or not self.names:
            raise InputError("a casual design needs one list of bin edges per covariate")
        if self.n_cells > MAX_CELLS:
            raise InputError(
                f"{len(self.names)} casual covariates with {self.n_bins} bins make {self.n_cells} casual cells "
                f"(at most {MAX_CELLS}): name fewer covariates"
            )

    @property
    def n_bins(self) -> tuple:
        """Bins ``J`` of each covariate."""
        return tuple(len(e) + 1 for e in self.edges)

    @property
    def n_effects(self) -> int:
        """Number of ``g`` values: :math:`\\sum_j J_j`."""
        return int(sum(self.n_bins))

    @property
    def n_cells(self) -> int:
        """Joint casual cells :math:`\\prod_j (2 J_j + 1)`."""
        return int(np.prod([2 * j + 1 for j in self.n_bins]))

    def cells(self, x: np.ndarray) -> np.ndarray:
        """The casual cell of each row of ``x`` ``(n, m)``: the joint signed-bin index (int32)."""
        x = np.asarray(x, dtype=float).reshape(-1, len(self.names))
        cell = np.zeros(x.shape[0], dtype=np.int64)
        for j, edges in enumerate(self.edges):
            v = x[:, j]
            level = np.searchsorted(np.asarray(edges, dtype=float), np.abs(v), side="left") + 1
            signed = np.where(v > 0, level, np.where(v < 0, -level, 0)) + (len(edges) + 1)
            cell = cell * (2 * (len(edges) + 1) + 1) + signed
        return cell.astype(np.int32)

    def design(self) -> np.ndarray:
        """``(n_cells, n_effects)``: each cell's row of the logistic design (entries -1, 0, 1)."""
        levels = [np.arange(-j, j + 1) for j in self.n_bins]
        grids = np.meshgrid(*levels, indexing="ij")
        out = np.zeros((self.n_cells, self.n_effects))
        col = 0
        for j, grid in zip(self.n_bins, grids):
            signed = grid.reshape(-1)
            rows = np.flatnonzero(signed != 0)
            out[rows, col + np.abs(signed[rows]) - 1] = np.sign(signed[rows])
            col += j
        return out

    def to_dict(self) -> dict:
        """JSON-ready form (``summary.json``'s ``casual_covariates``)."""
        return {"names": list(self.names), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, value: dict) -> "CasualDesign":
        return cls(names=tuple(value["names"]), edges=tuple(tuple(e) for e in value["edges"]))


def casual_design(names, x: np.ndarray | None, n_bins: int = DEFAULT_BINS) -> CasualDesign | None:
    """The design of covariates ``x`` ``(n, m)`` (the rows in the likelihood): bin edges at the quantiles
    ``k / J`` of each covariate's nonzero :math:`|x|`; ``None`` without covariates.

    A covariate whose nonzero values have fewer distinct quantiles gets fewer bins (one, when it is
    constant in size: then only its sign matters).
    """
    if x is None or not len(names):
        return None
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise InputError(f"casual_bins must be a positive integer, got {n_bins!r}")
    x = np.asarray(x, dtype=float).reshape(-1, len(names))
    edges = []
    for j in range(x.shape[1]):
        size = np.abs(x[:, j])
        size = size[size > 0]
        if size.shape[0] == 0 or n_bins == 1:
            edges.append(())
            continue
        inner = np.quantile(size, np.arange(1, n_bins) / n_bins)
        inner = np.unique(inner[inner < size.max()])
        edges.append(tuple(inner))
    return CasualDesign(names=tuple(names), edges=tuple(edges))


def casual_logits(beta0: float, g: np.ndarray, design_matrix: np.ndarray) -> np.ndarray:
    """Casual log-odds of choosing ``model_a`` in every cell: ``beta0 + D g``."""
    return beta0 + design_matrix @ np.asarray(g, dtype=float)


def casual_table(beta0: float, g: np.ndarray, design_matrix: np.ndarray) -> np.ndarray:
    """``(2 n_cells,)``: casual log-probability of entry ``2 * cell + choice`` (choice 1: ``model_a``)."""
    eta = casual_logits(beta0, g, design_matrix)
    out = np.empty(2 * eta.shape[0])
    out[0::2] = log_expit(-eta)
    out[1::2] = log_expit(eta)
    return out


def casual_tables(beta0, g, design_matrix: np.ndarray) -> np.ndarray:
    """:func:`casual_table` of ``S`` parameter draws at once: ``beta0`` ``(S,)``, ``g`` ``(S, n_effects)``;
    returns ``(S, 2 n_cells)``."""
    eta = np.asarray(beta0, dtype=float)[:, None] + np.asarray(g, dtype=float) @ np.asarray(design_matrix).T
    out = np.empty((eta.shape[0], 2 * eta.shape[1]))
    out[:, 0::2] = log_expit(-eta)
    out[:, 1::2] = log_expit(eta)
    return out


def casual_log_prior(beta0: float, g: np.ndarray, priors: Priors, q_free: bool) -> float:
    """Log prior of the casual parameters: Beta on ``q = sigmoid(beta0)`` (when free, natural scale, as
    :func:`~bayes_annot.likelihood.log_prior`) plus Normal(0, ``casual_effect_sigma``) on each ``g``."""
    value = float(log_normal_pdf(np.asarray(g, dtype=float), 0.0, priors.casual_effect_sigma).sum())
    if q_free:
        value += float(log_beta_pdf(expit(beta0), priors.q_alpha, priors.q_beta))
    return value


def casual_objective(beta0, g, counts: np.ndarray, design_matrix, priors: Priors, q_free: bool) -> float:
    """The casual M-step's objective: ``counts`` ``(2 n_cells,)`` (casual-weighted labels choosing ``model_b`` /
    ``model_a`` per cell, as :func:`casual_table`) times the log table, plus :func:`casual_log_prior`."""
    return float(counts @ casual_table(beta0, g, design_matrix)) + casual_log_prior(beta0, g, priors, q_free)


def fit_casual(counts: np.ndarray, design_matrix: np.ndarray, beta0: float, g: np.ndarray, priors: Priors,
               q_free: bool, tol: float = 1e-10, max_iter: int = 100) -> tuple[float, np.ndarray]:
    """The M-step of ``(beta0, g)``: maximise :func:`casual_objective` by Newton's method with backtracking.

    A weighted logistic regression of the cells' choices on ``[1, D]`` (``beta0`` fixed when ``q`` is),
    with the Beta prior of ``q`` and the Normal prior of ``g``: strictly concave when the Beta
    parameters are at least 1 (the default 2, 2) and the Normal prior is proper.
    """
    w1 = np.asarray(counts[1::2], dtype=float)
    w0 = np.asarray(counts[0::2], dtype=float)
    n = w1 + w0
    d = np.asarray(design_matrix, dtype=float)
    inv_var = 1.0 / priors.casual_effect_sigma**2
    a1, b1 = priors.q_alpha - 1.0, priors.q_beta - 1.0
    x_design = np.column_stack([np.ones(d.shape[0]), d]) if q_free else d
    n_eff = d.shape[1]

    def split(x):
        return (float(x[0]), x[1:]) if q_free else (float(beta0), x)

    def objective(x):
        b, gg = split(x)
        return casual_objective(b, gg, counts, d, priors, q_free)

    def direction(x):
        b, gg = split(x)
        p = expit(b + d @ gg)
        resid = w1 - n * p
        grad = x_design.T @ resid
        neg_hess = (x_design * (n * p * (1.0 - p))[:, None]).T @ x_design
        if q_free:
            qb = expit(b)
            grad[0] += a1 * (1.0 - qb) - b1 * qb
            neg_hess[0, 0] += (a1 + b1) * qb * (1.0 - qb)
        grad[-n_eff:] -= gg * inv_var
        neg_hess[-n_eff:, -n_eff:] += np.eye(n_eff) * inv_var
        try:
            return np.linalg.solve(neg_hess, grad)
        except np.linalg.LinAlgError:  # beta0 far out with no casual labels left (a SQUAREM extrapolation with
            # every user attentive): q's curvature underflows to 0; the least-squares step moves the rest
            return np.linalg.lstsq(neg_hess, grad, rcond=None)[0]

    start = np.concatenate([[beta0], g]) if q_free else np.asarray(g, dtype=float).copy()
    x, _ = newton_ascent(objective, direction, start, tol=tol, max_iter=max_iter)
    b, gg = split(x)
    return b, np.array(gg, dtype=float)


def casual_effects(design: CasualDesign, beta0: float, g: np.ndarray) -> dict:
    """JSON-ready casual effects: ``beta0``, ``q``, and per covariate its bin edges and ``g`` values."""
    g = np.asarray(g, dtype=float)
    out = {"beta0": float(beta0), "q": float(expit(beta0)), "covariates": []}
    col = 0
    for name, edges, j in zip(design.names, design.edges, design.n_bins):
        out["covariates"].append({"name": name, "edges": [float(e) for e in edges],
                                  "g": [float(v) for v in g[col: col + j]]})
        col += j
    return out


def prepare_casual(prepared: PreparedData, which="auto", n_bins: int = DEFAULT_BINS,
                   design: CasualDesign | None = None) -> CasualDesign | None:
    """Read a prepared log's casual covariates (:func:`bayes_annot.data.casual_covariates`, stored on
    ``prepared``) and return their design: ``design`` when given (a previous fit's bins, e.g. an
    update: the same covariates are read), else bins from the rows in the likelihood; ``None``
    without covariates."""
    names, x = casual_covariates(prepared, which if design is None else design.names)
    prepared.casual_names, prepared.casual_x = names, x
    if design is not None:
        return design
    return casual_design(names, None if x is None else x[prepared.usable], n_bins)


def design_from_summary(summary: dict) -> CasualDesign | None:
    """The casual covariates' design a result's ``summary["casual_effects"]`` records (``None``: none)."""
    effects = (summary or {}).get("casual_effects")
    if not effects:
        return None
    covs = effects["covariates"]
    return CasualDesign(names=tuple(c["name"] for c in covs), edges=tuple(tuple(c["edges"]) for c in covs))


def effects_start(summary: dict) -> np.ndarray | None:
    """The effects ``g`` a result's ``summary["casual_effects"]`` records, concatenated (a warm start)."""
    effects = (summary or {}).get("casual_effects")
    if not effects:
        return None
    return np.concatenate([np.asarray(c["g"], dtype=float) for c in effects["covariates"]])
