r"""Baselines to compare the behaviour model against, on the same input contract.

Each baseline reads the same data as :func:`bayes_annot.fit` (a frame or a
``.csv`` / ``.parquet`` / ``.json`` / ``.jsonl`` path plus column names, via
:func:`~bayes_annot.data.prepare`) and returns an object whose ``users`` table
has the shape of :attr:`bayes_annot.FitResult.users`:
``user, n_labels, quality, quality_low, quality_high, kept, uninformative, n_rows``
(+ method-specific columns). ``quality`` is the method's *score* in [0, 1],
higher = better user, so AUCs and filters can be computed the same way for
every method. The baselines' scores are **not** calibrated probabilities of
being attentive (only the behaviour model's are); ``quality_low`` /
``quality_high`` are empty (NaN).

* :func:`agreement_rate` — each user's rate of agreement with the consensus
  Bradley–Terry ranking fitted on all labels, shrunk by a Beta prior.
* :func:`arena_outlier` — Chatbot Arena's anomalous-user rule (Chiang et al.
  2024, §5.1; FastChat ``elo_analysis.outlier_detect``): sequential betting
  e-values built from per-vote p-values against other users' votes on the same
  model pair.
* :class:`NoisyBradleyTerry` — per-user skill and position bias,
  :math:`P(y) = \sigma(\gamma_w)\,\sigma(y(s_i - s_j)) + (1 - \sigma(\gamma_w))\,\sigma(y\,q_w)`,
  the likelihood of crowd-kit's ``NoisyBradleyTerry`` fitted with a *correct*
  (finite-difference checked) gradient by L-BFGS.
* :class:`BradleyTerry` — plain Bradley–Terry (everyone follows the same
  strengths), the reference for held-out predictive log-likelihood.

>>> import bayes_annot as ba
>>> from bayes_annot.baselines import agreement_rate, arena_outlier, NoisyBradleyTerry
>>> log = ba.simulate(n_users=100, n_models=4, seed=0)
>>> agreement_rate(log).users.columns[:6].tolist()
['user', 'n_labels', 'quality', 'quality_low', 'quality_high', 'kept']
>>> NoisyBradleyTerry().fit(log).users_.shape[0]
100
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from .ufuncs import expit, log_expit

from .data import ColumnMap, PreparedData, prepare, read_table
from .pairs import fit_bradley_terry_labels
from .errors import InputError

__all__ = [
    "BaselineResult",
    "BradleyTerry",
    "NoisyBradleyTerry",
    "agreement_rate",
    "arena_outlier",
    "load_prepared",
]


# --------------------------------------------------------------------------- shared pieces


def load_prepared(
    data,
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
) -> PreparedData:
    """Read and encode ``data`` exactly as :func:`bayes_annot.fit` does.

    ``data`` may be a path, a :class:`pandas.DataFrame` or an already
    :class:`~bayes_annot.data.PreparedData` (returned unchanged).
    """
    if isinstance(data, PreparedData):
        return data
    if isinstance(data, (str, Path)):
        frame = read_table(data)
    elif isinstance(data, pd.DataFrame):
        frame = data
    else:
        raise InputError(f"data must be a file path or a pandas DataFrame, got {type(data).__name__}")
    # A p_a column (if any) is validated as in fit() but not used by any baseline.
    return prepare(frame, ColumnMap(user=user, model_a=model_a, model_b=model_b, winner=winner, p_a=None))


def _users_table(data: PreparedData, n_labels, quality, kept, uninformative, extra: dict | None = None) -> pd.DataFrame:
    n_rows = np.bincount(data.user, minlength=data.n_users)
    table = pd.DataFrame(
        {
            "user": data.user_labels,
            "n_labels": np.asarray(n_labels, dtype=np.int64),
            "quality": np.asarray(quality, dtype=float),
            "quality_low": np.nan,
            "quality_high": np.nan,
            "kept": np.asarray(kept, dtype=bool),
            "uninformative": np.asarray(uninformative, dtype=bool),
            "n_rows": n_rows.astype(np.int64),
        }
    )
    for name, values in (extra or {}).items():
        table[name] = values
    return table


def _plain_strengths(data: PreparedData, sigma: float) -> np.ndarray:
    """Ridge Bradley–Terry strengths on every usable label (everyone attentive)."""
    usable = data.usable
    return fit_bradley_terry_labels(data.model_a[usable], data.model_b[usable], data.choice_a[usable], data.n_models, sigma)


@dataclass
class BaselineResult:
    """What a baseline function returns.

    Attributes
    ----------
    method : str
        ``"agreement_rate"`` or ``"arena_outlier"``.
    users : pandas.DataFrame
        Same leading columns as :attr:`bayes_annot.FitResult.users`.
    models : pandas.DataFrame or None
        ``model, strength`` when the method fits strengths.
    settings : dict
        The settings used.
    """

    method: str
    users: pd.DataFrame
    models: pd.DataFrame | None = None
    settings: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"<BaselineResult {self.method}: {len(self.users)} users, "
            f"kept {int(self.users['kept'].sum())}>"
        )


# --------------------------------------------------------------------------- agreement rate


def agreement_rate(
    data,
    *,
    prior: tuple[float, float] = (1.0, 1.0),
    threshold: float = 0.5,
    strength_sigma: float = 3.0,
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
) -> BaselineResult:
    r"""Each user's rate of agreement with the consensus Bradley–Terry ranking.

    A plain Bradley–Terry model (ridge Normal(0, ``strength_sigma``)) is fitted
    on every usable label; a label *agrees* when the user picked the model with
    the higher consensus strength (a pair of exactly equal strengths counts
    1/2). ``quality`` is the posterior mean of the agreement rate under a
    ``Beta(*prior)`` prior, :math:`(k + a) / (n + a + b)`, so a one-label user
    gets 2/3 or 1/3 rather than 1 or 0.

    Parameters
    ----------
    data : path or DataFrame
    prior : (a, b)
        Beta prior on each user's agreement rate (default uniform).
    threshold : float
        ``kept`` = users with at least one usable label and ``quality >= threshold``
        (0.5: agrees with the consensus more often than a coin).
    strength_sigma : float
    user, model_a, model_b, winner : str
        Column names, as in :func:`bayes_annot.fit`.

    Returns
    -------
    BaselineResult
        ``users`` has extra columns ``agreements`` (k) and ``agreement_raw`` (k / n).
    """
    a_prior, b_prior = map(float, prior)
    if a_prior <= 0 or b_prior <= 0:
        raise InputError(f"prior must be two positive numbers, got {prior}")
    prepared = load_prepared(data, user, model_a, model_b, winner)
    usable = prepared.usable
    strengths = _plain_strengths(prepared, strength_sigma)
    d = strengths[prepared.model_a[usable]] - strengths[prepared.model_b[usable]]
    choice = prepared.choice_a[usable]
    agree = np.where(d == 0, 0.5, np.where(d > 0, choice == 1, choice == 0).astype(float))
    users = prepared.user[usable]
    n = np.bincount(users, minlength=prepared.n_users).astype(float)
    k = np.bincount(users, weights=agree, minlength=prepared.n_users)
    quality = (k + a_prior) / (n + a_prior + b_prior)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    table = _users_table(
        prepared, n, quality, (n > 0) & (quality >= threshold), n == 0,
        extra={"agreements": k, "agreement_raw": raw},
    )
    models = pd.DataFrame({"model": prepared.model_labels, "strength": strengths})
    return BaselineResult(
        "agreement_rate", table, models,
        settings=dict(prior=(a_prior, b_prior), threshold=threshold, strength_sigma=strength_sigma),
    )


# --------------------------------------------------------------------------- Chatbot Arena rule


def arena_outlier(
    data,
    *,
    alpha: float = 0.05,
    min_votes: int = 5,
    max_votes: int = 100,
    exclude_own: bool = True,
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
) -> BaselineResult:
    r"""Chatbot Arena's anomalous-user rule (Chiang et al. 2024, §5.1).

    Implemented from the published description (FastChat's
    ``elo_analysis.outlier_detect``):

    1. A vote on the unordered pair :math:`\{i, j\}` (``i`` the model whose
       name sorts first) scores :math:`v = 1` when ``i`` won, 0 when ``j`` won
       and 1/2 for a tie.
    2. Its reference distribution is the other users' non-tie votes on the same
       pair (``exclude_own=True``; FastChat counts every vote, the user's own
       included — ``exclude_own=False``): ``W`` wins of ``i`` and ``L`` losses.
    3. Two one-sided p-values of the vote against the reference:
       :math:`p^{\uparrow} = P(R \le v)` and :math:`p^{\downarrow} = P(R \ge v)`,
       e.g. a win has :math:`p^{\uparrow} = 1` and :math:`p^{\downarrow} = W / (W + L)`,
       a tie :math:`p^{\uparrow} = L / (W + L)` and :math:`p^{\downarrow} = W / (W + L)`.
    4. Betting e-values :math:`M^{\uparrow}_t = \prod_{r \le t} 1 / (2 p^{\uparrow}_r)`
       and likewise :math:`M^{\downarrow}_t`, over the user's first ``max_votes``
       votes in input order; the user is flagged as soon as either exceeds
       :math:`1 / \alpha`.
    5. Only users with at least ``min_votes`` votes (ties included) are checked;
       the others are never flagged.

    Votes on a pair nobody else voted on (no reference) are skipped (factor 1;
    in FastChat they turn the product into NaN and the user can no longer be
    flagged). Same-model rows are not votes.

    Score
    -----
    ``quality = 1 / (1 + M*)`` with :math:`M^* = \max_t \max(M^{\uparrow}_t, M^{\downarrow}_t)`
    the largest running e-value (the statistic the rule thresholds): a
    monotone map of the evidence against the user into (0, 1), 1/2 for a user
    never checked (``M* = 1``); a flagged user has ``quality < alpha / (1 + alpha)``.
    It ranks users, it is not a probability.

    Returns
    -------
    BaselineResult
        ``users`` has extra columns ``e_value`` (M*), ``checked`` (at least
        ``min_votes`` votes), ``flagged``, ``votes_checked`` (votes used, up to
        ``max_votes``) and ``votes_at_flag`` (votes seen when flagged, else 0).
        ``kept = not flagged``; ``uninformative`` = not checked.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    if min_votes < 1 or max_votes < 1:
        raise InputError("min_votes and max_votes must be at least 1")
    prepared = load_prepared(data, user, model_a, model_b, winner)
    n_users, k = prepared.n_users, prepared.n_models
    vote_rows = np.flatnonzero(prepared.reason_code <= 1)  # usable labels and ties, input order
    u = prepared.user[vote_rows].astype(np.int64)
    a = prepared.model_a[vote_rows].astype(np.int64)
    b = prepared.model_b[vote_rows].astype(np.int64)
    c = prepared.choice_a[vote_rows]
    first = np.minimum(a, b)  # label codes are sorted text, so this is the model sorting first
    pair = first * k + np.maximum(a, b)
    tie = c < 0
    first_won = ~tie & ((c == 1) == (a == first))
    vote = np.where(tie, 0.5, first_won.astype(float))

    # Reference counts per pair (non-tie votes), minus the user's own on that pair.
    _, pair_index = np.unique(pair, return_inverse=True)  # compared pairs only (no K x K table)
    pair_index = pair_index.reshape(-1)
    win = np.bincount(pair_index, weights=(~tie & first_won).astype(float))[pair_index]
    loss = np.bincount(pair_index, weights=(~tie & ~first_won).astype(float))[pair_index]
    if exclude_own:
        key = u * (int(pair_index.max(initial=0)) + 1) + pair_index
        _, inverse = np.unique(key, return_inverse=True)
        win = win - np.bincount(inverse, weights=(~tie & first_won).astype(float))[inverse]
        loss = loss - np.bincount(inverse, weights=(~tie & ~first_won).astype(float))[inverse]
    total = win + loss
    has_ref = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p_up = np.where(vote >= 1, 1.0, loss / total)  # P(R <= v): R in {0, 1}
        p_down = np.where(vote <= 0, 1.0, win / total)  # P(R >= v)
        log_up = np.where(has_ref, -np.log(2.0 * p_up), 0.0)
        log_down = np.where(has_ref, -np.log(2.0 * p_down), 0.0)

    # Each user's first max_votes votes, in input order.
    order = np.argsort(u, kind="stable")
    u_sorted = u[order]
    n_votes = np.bincount(u, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(n_votes)[:-1]])
    position = np.arange(len(order)) - starts[u_sorted]
    checked_user = n_votes >= min_votes
    take = (position < max_votes) & checked_user[u_sorted]
    idx = order[take]
    uu = u_sorted[take]
    e_value = np.ones(n_users)
    flagged = np.zeros(n_users, dtype=bool)
    votes_at_flag = np.zeros(n_users, dtype=np.int64)
    votes_checked = np.bincount(uu, minlength=n_users).astype(np.int64)
    if len(idx):
        threshold = -np.log(alpha)
        group = pd.Series(uu)
        run_up = pd.Series(log_up[idx]).groupby(group.values).cumsum().to_numpy()
        run_down = pd.Series(log_down[idx]).groupby(group.values).cumsum().to_numpy()
        run = np.maximum(run_up, run_down)
        best = np.full(n_users, -np.inf)
        np.maximum.at(best, uu, run)
        e_value = np.where(checked_user, np.exp(np.minimum(best, 700.0)), 1.0)
        crossed = run > threshold
        flagged = np.bincount(uu, weights=crossed, minlength=n_users) > 0
        pos = position[take]
        first_cross = np.full(n_users, np.iinfo(np.int64).max)
        np.minimum.at(first_cross, uu[crossed], pos[crossed])
        votes_at_flag = np.where(flagged, first_cross + 1, 0)
    quality = 1.0 / (1.0 + e_value)
    n_labels = np.bincount(prepared.user[prepared.usable], minlength=n_users)
    table = _users_table(
        prepared, n_labels, quality, ~flagged, ~checked_user,
        extra={
            "e_value": e_value,
            "checked": checked_user,
            "flagged": flagged,
            "votes_checked": votes_checked,
            "votes_at_flag": votes_at_flag,
        },
    )
    return BaselineResult(
        "arena_outlier", table, None,
        settings=dict(alpha=alpha, min_votes=min_votes, max_votes=max_votes, exclude_own=exclude_own),
    )


# --------------------------------------------------------------------------- label prediction helpers


def _encode_like(data: PreparedData, user_labels: np.ndarray, model_labels: np.ndarray):
    """Codes of ``data``'s usable rows in a fitted vocabulary (-1 when unseen)."""
    usable = data.usable
    user_index = pd.Index(user_labels).get_indexer(data.user_labels)
    model_index = pd.Index(model_labels).get_indexer(data.model_labels)
    return (
        user_index[data.user[usable]],
        model_index[data.model_a[usable]],
        model_index[data.model_b[usable]],
        data.choice_a[usable].astype(np.int8),
    )


def _single_threaded_blas():
    """Limit BLAS threads while L-BFGS runs (its small vector operations only lose from
    threading, badly so on a loaded machine); a no-op without ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _rows_output(data: PreparedData, values: np.ndarray) -> np.ndarray:
    out = np.full(data.n_rows, np.nan)
    out[data.usable] = values
    return out


class BradleyTerry:
    """Plain Bradley–Terry with a Normal(0, ``strength_sigma``) ridge (every label attentive).

    Fitted attributes: ``strengths_`` (n_models,), ``models_`` (``model, strength``).
    """

    def __init__(self, strength_sigma: float = 3.0, user=None, model_a="model_a", model_b="model_b", winner="winner"):
        self.strength_sigma = strength_sigma
        self.user, self.model_a, self.model_b, self.winner = user, model_a, model_b, winner

    def fit(self, data) -> "BradleyTerry":
        """Fit the strengths to ``data`` (a frame or a path); returns ``self``."""
        prepared = load_prepared(data, self.user, self.model_a, self.model_b, self.winner)
        self.strengths_ = _plain_strengths(prepared, self.strength_sigma)
        self.model_labels_ = prepared.model_labels
        self.models_ = pd.DataFrame({"model": prepared.model_labels, "strength": self.strengths_})
        return self

    def predict_logproba(self, data) -> np.ndarray:
        """Log-probability of the observed choice of each input row (NaN for ties / same-model rows).

        Unseen models get strength 0.
        """
        prepared = load_prepared(data, self.user, self.model_a, self.model_b, self.winner)
        _, ia, ib, choice = _encode_like(prepared, np.array([], dtype=object), self.model_labels_)
        s = np.append(self.strengths_, 0.0)
        d = s[ia] - s[ib]  # index -1 -> the appended 0
        return _rows_output(prepared, log_expit((2.0 * choice - 1.0) * d))


# --------------------------------------------------------------------------- Noisy Bradley–Terry


def noisy_bt_objective(params, user, model_a, model_b, sign, n_users, n_models, regularization):
    r"""Penalised negative log-likelihood of Noisy Bradley–Terry and its gradient.

    ``params`` = ``[s (n_models), gamma (n_users), q (n_users)]``; ``sign`` is
    +1 when ``model_a`` was chosen, −1 otherwise. With :math:`a = \sigma(\gamma_w)`,
    :math:`A = \sigma(y(s_i - s_j))`, :math:`B = \sigma(y q_w)` and
    :math:`P = aA + (1 - a)B`:

    .. math::
        \partial P/\partial\gamma_w = a(1-a)(A - B),\quad
        \partial P/\partial s_i = -\partial P/\partial s_j = a A(1-A) y,\quad
        \partial P/\partial q_w = (1-a) B(1-B) y,

    summed over labels with ``np.bincount``; the objective is
    :math:`-\sum_r \log P_r + \tfrac{\lambda}{2}\lVert\text{params}\rVert^2`.
    Exposed for the finite-difference test.
    """
    s = params[:n_models]
    gamma = params[n_models : n_models + n_users]
    q = params[n_models + n_users :]
    a = expit(gamma)[user]
    big_a = expit(sign * (s[model_a] - s[model_b]))
    big_b = expit(sign * q[user])
    prob = a * big_a + (1.0 - a) * big_b
    prob = np.maximum(prob, 1e-300)
    value = -float(np.log(prob).sum()) + 0.5 * regularization * float(params @ params)
    inv = -1.0 / prob  # d(-log P)/dP
    g_gamma_rows = inv * a * (1.0 - a) * (big_a - big_b)
    g_d_rows = inv * a * big_a * (1.0 - big_a) * sign
    g_q_rows = inv * (1.0 - a) * big_b * (1.0 - big_b) * sign
    grad_s = np.bincount(model_a, weights=g_d_rows, minlength=n_models) - np.bincount(
        model_b, weights=g_d_rows, minlength=n_models
    )
    grad_gamma = np.bincount(user, weights=g_gamma_rows, minlength=n_users)
    grad_q = np.bincount(user, weights=g_q_rows, minlength=n_users)
    grad = np.concatenate([grad_s, grad_gamma, grad_q]) + regularization * params
    return value, grad


class NoisyBradleyTerry:
    r"""Noisy Bradley–Terry: per-user skill and position bias, fitted with a correct gradient.

    Each label of user :math:`w` on models :math:`(i, j)` (``i`` shown first)
    follows Bradley–Terry with probability :math:`\sigma(\gamma_w)` (the
    user's *skill*) and otherwise picks the first response with probability
    :math:`\sigma(q_w)` (the user's *bias*):

    .. math:: P(y) = \sigma(\gamma_w)\,\sigma(y(s_i - s_j)) + (1 - \sigma(\gamma_w))\,\sigma(y\,q_w),
        \quad y = \pm 1.

    This is crowd-kit's ``NoisyBradleyTerry`` likelihood; crowd-kit's
    hand-written gradient is wrong, this one is checked by finite differences
    in the tests. The penalised negative log-likelihood (ridge
    ``regularization / 2`` times the squared norm of all parameters) is
    minimised by L-BFGS-B from plain Bradley–Terry strengths, skills
    :math:`\gamma = 1` and biases 0. Ties and same-model rows are left out.

    Parameters
    ----------
    regularization : float
        Ridge on strengths, skills and biases (fixes the strengths' location
        and keeps users with few or unanimous labels finite).
    max_iter, tol : int, float
        L-BFGS settings.
    user, model_a, model_b, winner : str
        Column names, as in :func:`bayes_annot.fit`.
    threshold : float
        ``kept`` in ``users_`` = users with labels and skill ``>= threshold``.

    Attributes
    ----------
    strengths_ : ndarray (n_models,)
    skills_ : ndarray (n_users,)
        :math:`\sigma(\gamma_w)`: the probability a label follows Bradley–Terry.
    biases_ : ndarray (n_users,)
        :math:`\sigma(q_w)`: the probability of picking the first response when not.
    users_ : pandas.DataFrame
        Users table (``quality`` = skill) with extra columns ``bias``, ``gamma``, ``q_logit``.
    models_ : pandas.DataFrame
    loss_history_ : list of float
        Objective after each L-BFGS iteration.
    converged_ : bool
    n_iter_ : int

    Examples
    --------
    >>> import bayes_annot as ba
    >>> est = NoisyBradleyTerry().fit(ba.simulate(n_users=200, n_models=4, seed=1))
    >>> bool(((est.skills_ > 0) & (est.skills_ < 1)).all())
    True
    """

    def __init__(
        self,
        regularization: float = 0.01,
        max_iter: int = 1000,
        tol: float = 1e-9,
        threshold: float = 0.5,
        user: str | None = None,
        model_a: str = "model_a",
        model_b: str = "model_b",
        winner: str = "winner",
    ):
        self.regularization = regularization
        self.max_iter = max_iter
        self.tol = tol
        self.threshold = threshold
        self.user, self.model_a, self.model_b, self.winner = user, model_a, model_b, winner

    def get_params(self) -> dict:
        """The constructor's settings."""
        return dict(
            regularization=self.regularization, max_iter=self.max_iter, tol=self.tol, threshold=self.threshold,
            user=self.user, model_a=self.model_a, model_b=self.model_b, winner=self.winner,
        )

    def _arrays(self, prepared: PreparedData):
        usable = prepared.usable
        return (
            prepared.user[usable].astype(np.int64),
            prepared.model_a[usable].astype(np.int64),
            prepared.model_b[usable].astype(np.int64),
            2.0 * prepared.choice_a[usable] - 1.0,
        )

    def fit(self, data) -> "NoisyBradleyTerry":
        """Fit skills, position biases and strengths to ``data`` (a frame or a path); returns ``self``."""
        prepared = load_prepared(data, self.user, self.model_a, self.model_b, self.winner)
        user, ma, mb, sign = self._arrays(prepared)
        n_users, n_models = prepared.n_users, prepared.n_models
        reg = float(self.regularization)
        x0 = np.concatenate(
            [_plain_strengths(prepared, 1.0 / np.sqrt(reg) if reg > 0 else 10.0), np.ones(n_users), np.zeros(n_users)]
        )
        history: list[float] = []
        last = {}
        args = (user, ma, mb, sign, n_users, n_models, reg)

        def objective(x):
            value, grad = noisy_bt_objective(x, *args)
            last["value"] = value
            return value, grad

        def record(xk):  # L-BFGS-B calls back after evaluating at the accepted point
            history.append(last["value"])

        with _single_threaded_blas():
            res = minimize(
                objective, x0, jac=True, method="L-BFGS-B", callback=record,
                options=dict(maxiter=self.max_iter, ftol=self.tol, gtol=1e-6, maxcor=10),
            )
        params = res.x
        self.params_ = params
        self.strengths_ = params[:n_models].copy()
        gamma = params[n_models : n_models + n_users]
        q = params[n_models + n_users :]
        self.skills_ = expit(gamma)
        self.biases_ = expit(q)
        self.loss_history_ = [float(noisy_bt_objective(x0, *args)[0])] + history
        self.converged_ = bool(res.success)
        self.n_iter_ = int(res.nit)
        self.user_labels_ = prepared.user_labels
        self.model_labels_ = prepared.model_labels
        n_labels = np.bincount(user, minlength=n_users)
        self._gamma_mean = float(gamma[n_labels > 0].mean()) if (n_labels > 0).any() else 0.0
        self._q_mean = float(q[n_labels > 0].mean()) if (n_labels > 0).any() else 0.0
        self.users_ = _users_table(
            prepared, n_labels, self.skills_, (n_labels > 0) & (self.skills_ >= self.threshold), n_labels == 0,
            extra={"bias": self.biases_, "gamma": gamma.copy(), "q_logit": q.copy()},
        )
        self.models_ = pd.DataFrame({"model": prepared.model_labels, "strength": self.strengths_})
        return self

    @property
    def users(self) -> pd.DataFrame:
        """Alias of ``users_`` (the same attribute name as :class:`bayes_annot.FitResult`)."""
        return self.users_

    def predict_logproba(self, data) -> np.ndarray:
        """Log-probability of the observed choice of each input row under the fitted model.

        Rows are matched to the fitted users and models by label; an unseen user
        gets the mean fitted skill and bias (in logit units), an unseen model
        strength 0. Ties and same-model rows give NaN.
        """
        prepared = load_prepared(data, self.user, self.model_a, self.model_b, self.winner)
        iu, ia, ib, choice = _encode_like(prepared, self.user_labels_, self.model_labels_)
        n_models = len(self.model_labels_)
        n_users = len(self.user_labels_)
        s = np.append(self.strengths_, 0.0)
        gamma = np.append(self.params_[n_models : n_models + n_users], self._gamma_mean)
        q = np.append(self.params_[n_models + n_users :], self._q_mean)
        y = 2.0 * choice - 1.0
        log_att = log_expit(y * (s[ia] - s[ib]))
        log_cas = log_expit(y * q[iu])
        value = np.logaddexp(log_expit(gamma[iu]) + log_att, log_expit(-gamma[iu]) + log_cas)
        return _rows_output(prepared, value)
