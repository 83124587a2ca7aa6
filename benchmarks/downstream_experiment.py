r"""The downstream experiment: does filtering users improve a reward model?

An experiment built on the package, not part of it: ``benchmarks/downstream.py``
runs the full grid, ``benchmarks/bench_methods.py`` reuses the simulator and the
reward model (import with ``benchmarks/`` on ``sys.path``).

The paper's claim at CPU scale. Every response has a feature vector
:math:`x \in \mathbb{R}^d` and a true utility :math:`u = w \cdot x`; each
prompt gets two responses from two *different* models whose features scatter
around model-specific means (so the models differ in strength; by default
their mean utilities are evenly spaced, as in :func:`bayes_annot.simulate`). An attentive
user picks response ``a`` with Bradley–Terry probability
:math:`\sigma(u_a - u_b)`; a casual user clicks the left response (``a``) with
probability ``q``.

From the log, :func:`bayes_annot.fit` estimates each user's quality (it sees
only ``user, model_a, model_b, winner``: no features). Then a Bradley–Terry
reward model — logistic regression without intercept on
:math:`x_a - x_b`, small L2 — is trained on

* ``all``: every label;
* ``fdr:ALPHA`` / ``prob:T``: the labels of the users a filter rule keeps;
* ``weighted``: every label, weighted by its user's quality;
* ``oracle``: the labels of the truly attentive users only;

and scored on fresh held-out pairs by the share whose predicted order,
:math:`\operatorname{sign}(\hat w \cdot (x_a - x_b))`, matches the true one,
:math:`\operatorname{sign}(u_a - u_b)`.

>>> from downstream_experiment import run_experiment, summarise
>>> runs = run_experiment(casual_shares=(0.3,), qs=(0.5,), seeds=(0,), n_users=40, n_test=2000)
>>> sorted(runs.arm.unique())
['all', 'fdr:0.1', 'oracle', 'prob:0.5', 'weighted']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from bayes_annot import fit

from bayes_annot.simulate import draw_labels_per_user

__all__ = [
    "ARMS",
    "FeatureLog",
    "simulate_features",
    "fit_reward_model",
    "pair_accuracy",
    "run_once",
    "run_experiment",
    "summarise",
    "markdown_table",
    "gain_table",
    "plot_summary",
]

#: Default arms, in display order (filter arms are named by their rule).
ARMS = ("all", "fdr:0.1", "prob:0.5", "weighted", "oracle")
DEFAULT_FILTERS = ("fdr:0.1", "prob:0.5")


@dataclass
class FeatureLog:
    """A simulated comparison log whose responses carry features and a true utility.

    Attributes
    ----------
    log : pandas.DataFrame
        ``user, model_a, model_b, winner`` (what :func:`bayes_annot.fit` reads)
        and the truth: ``true_attentive`` (the user's type),
        ``true_utility_a``, ``true_utility_b``.
    x_a, x_b : numpy.ndarray
        Features of the two responses of every row, shape ``(n_rows, dim)``.
    w : numpy.ndarray
        True utility weights; ``u = x @ w``.
    model_means : numpy.ndarray
        Mean feature vector of each model, shape ``(n_models, dim)``.
    response_sd : float
        Spread of a response's features around its model's mean.
    """

    log: pd.DataFrame
    x_a: np.ndarray
    x_b: np.ndarray
    w: np.ndarray
    model_means: np.ndarray
    response_sd: float

    def fresh_pairs(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new held-out pairs (two different models each), drawn like the log's."""
        rng = np.random.default_rng(seed)
        return _draw_pairs(rng, n, self.model_means, self.response_sd)[2:]


def _draw_pairs(rng: np.random.Generator, n: int, means: np.ndarray, sd: float):
    k, dim = means.shape
    a = rng.integers(0, k, size=n)
    b = (a + rng.integers(1, k, size=n)) % k
    x_a = means[a] + sd * rng.standard_normal((n, dim))
    x_b = means[b] + sd * rng.standard_normal((n, dim))
    return a, b, x_a, x_b


def simulate_features(
    n_users: int = 200,
    n_models: int = 8,
    dim: int = 8,
    casual_share: float = 0.3,
    q: float = 0.5,
    labels_per_user=(5, 40),
    model_spread: float = 1.0,
    response_sd: float = 1.0,
    utility_scale: float = 1.0,
    strength_range: float | None = 1.5,
    seed: int = 0,
) -> FeatureLog:
    """Simulate a two-class user population labelling feature-bearing response pairs.

    Parameters
    ----------
    n_users, n_models, dim : int
    casual_share : float
        Share of casual users.
    q : float
        A casual user's probability of picking the left response (``model_a``).
    labels_per_user : int, (low, high) or "arena"
        As in :func:`bayes_annot.simulate`.
    model_spread : float
        Standard deviation of the model means' coordinates.
    response_sd : float
        Standard deviation of a response's features around its model's mean.
    utility_scale : float
        Norm of ``w``; larger means attentive choices are more decisive.
    strength_range : float or None
        Set the models' mean utilities (their strengths, ``w . mean``) evenly
        from ``+strength_range`` (``model_0``) to ``-strength_range``, as
        :func:`bayes_annot.simulate` does; the means vary at random only
        orthogonally to ``w``. ``None``: fully random means, so that in some
        draws the models are nearly tied in strength and labels say little
        about who is attentive.
    seed : int

    Returns
    -------
    FeatureLog
    """
    if not 0.0 <= casual_share <= 1.0:
        raise ValueError("casual_share must be in [0, 1]")
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    if n_models < 2:
        raise ValueError("need at least two models")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w *= utility_scale / np.linalg.norm(w)
    means = model_spread * rng.standard_normal((n_models, dim))
    if strength_range is not None:
        direction = w / np.linalg.norm(w)
        target = np.linspace(strength_range, -strength_range, n_models)
        means += np.outer(target / np.linalg.norm(w) - means @ direction, direction)
    counts = draw_labels_per_user(n_users, labels_per_user, rng)
    attentive = rng.random(n_users) >= casual_share
    user = np.repeat(np.arange(n_users), counts)
    n_rows = user.shape[0]
    a, b, x_a, x_b = _draw_pairs(rng, n_rows, means, response_sd)
    u_a, u_b = x_a @ w, x_b @ w
    p_choose_a = np.where(attentive[user], expit(u_a - u_b), q)
    choice_a = rng.random(n_rows) < p_choose_a
    width = len(str(max(n_users - 1, 1)))
    user_names = np.array([f"u{i:0{width}d}" for i in range(n_users)], dtype=object)
    model_names = np.array([f"model_{k}" for k in range(n_models)], dtype=object)
    log = pd.DataFrame(
        {
            "user": user_names[user],
            "model_a": model_names[a],
            "model_b": model_names[b],
            "winner": np.where(choice_a, "model_a", "model_b"),
            "true_attentive": attentive[user],
            "true_utility_a": u_a,
            "true_utility_b": u_b,
        }
    )
    return FeatureLog(log=log, x_a=x_a, x_b=x_b, w=w, model_means=means, response_sd=response_sd)


def fit_reward_model(
    x_a: np.ndarray, x_b: np.ndarray, choice_a: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0
) -> np.ndarray:
    r"""Bradley–Terry reward model: weighted logistic regression on ``x_a - x_b``, no intercept.

    Minimises :math:`\sum_i v_i \log(1 + e^{-y_i \theta \cdot (x_{a,i} - x_{b,i})}) + \frac{l2}{2}\lVert\theta\rVert^2`
    with :math:`y_i = \pm 1` (``a`` chosen or not) and weights :math:`v_i`.
    Returns :math:`\hat\theta` (zeros when there is no label or no weight).
    """
    diff = np.asarray(x_a, float) - np.asarray(x_b, float)
    y = np.where(np.asarray(choice_a, bool), 1.0, -1.0)
    v = np.ones(len(y)) if weight is None else np.asarray(weight, float)
    dim = diff.shape[1]
    if len(y) == 0 or v.sum() <= 0:
        return np.zeros(dim)
    z = diff * y[:, None]

    def objective(theta):
        margin = z @ theta
        return v @ np.logaddexp(0.0, -margin) + 0.5 * l2 * theta @ theta, margin

    # Newton's method with backtracking: the objective is smooth and strictly convex (l2 > 0).
    theta = np.zeros(dim)
    loss, margin = objective(theta)
    for _ in range(100):
        p = expit(-margin)
        grad = -(z.T @ (v * p)) + l2 * theta
        if np.max(np.abs(grad)) <= 1e-9 * max(1.0, v.sum()):
            break
        hess = (z * (v * p * (1.0 - p))[:, None]).T @ z + (l2 + 1e-12) * np.eye(dim)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            candidate = theta - t * step
            new_loss, new_margin = objective(candidate)
            if new_loss <= loss - 1e-4 * t * grad @ step or t < 1e-10:
                break
            t *= 0.5
        if loss - new_loss <= 1e-14 * max(1.0, abs(loss)):
            theta, loss, margin = candidate, new_loss, new_margin
            break
        theta, loss, margin = candidate, new_loss, new_margin
    return theta


def pair_accuracy(theta: np.ndarray, x_a: np.ndarray, x_b: np.ndarray, w: np.ndarray) -> float:
    """Share of pairs ordered as the true utility orders them (a tie in the prediction counts 1/2)."""
    diff = x_a - x_b
    predicted = np.sign(diff @ theta)
    true = np.sign(diff @ w)
    return float(np.mean(np.where(predicted == 0, 0.5, predicted == true)))


def run_once(
    casual_share: float,
    q: float,
    seed: int,
    *,
    n_users: int = 100,
    filters=DEFAULT_FILTERS,
    n_test: int = 20000,
    l2: float = 1.0,
    **simulate_kwargs,
) -> list[dict]:
    """One simulated log, one quality fit, every arm's reward model and its held-out accuracy.

    Returns one record per arm: ``arm, accuracy, cosine`` (between the fitted
    and the true ``w``), ``n_labels`` (labels with non-zero weight),
    ``weight_total`` and ``casual_label_share`` (the weighted share of the
    training labels that come from casual users), plus the settings.
    """

    sim = simulate_features(n_users=n_users, casual_share=casual_share, q=q, seed=seed, **simulate_kwargs)
    log = sim.log
    choice_a = (log["winner"] == "model_a").to_numpy()
    casual = ~log["true_attentive"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(log[["user", "model_a", "model_b", "winner"]], filter="none")
    quality = result.rows["weight"].to_numpy(dtype=float)
    weights = {"all": np.ones(len(log)), "weighted": quality, "oracle": (~casual).astype(float)}
    for rule in filters:
        weights[str(rule)] = result.filter(rule).rows["kept"].to_numpy().astype(float)
    x_test_a, x_test_b = sim.fresh_pairs(n_test, seed=10_000 + seed)
    records = []
    for arm in ("all", *map(str, filters), "weighted", "oracle"):
        v = weights[arm]
        theta = fit_reward_model(sim.x_a, sim.x_b, choice_a, v, l2=l2)
        total = float(v.sum())
        norm = np.linalg.norm(theta) * np.linalg.norm(sim.w)
        records.append(
            {
                "n_users": n_users,
                "q": q,
                "casual_share": casual_share,
                "seed": seed,
                "arm": arm,
                "accuracy": pair_accuracy(theta, x_test_a, x_test_b, sim.w),
                "cosine": float(theta @ sim.w / norm) if norm > 0 else 0.0,
                "n_rows": len(log),
                "n_labels": int((v > 0).sum()),
                "weight_total": total,
                "casual_label_share": float(v @ casual / total) if total > 0 else np.nan,
            }
        )
    return records


def run_experiment(
    casual_shares=(0.1, 0.2, 0.3, 0.4, 0.5),
    qs=(0.5, 0.7),
    seeds=range(10),
    *,
    n_users=100,
    filters=DEFAULT_FILTERS,
    n_test: int = 20000,
    l2: float = 1.0,
    **simulate_kwargs,
) -> pd.DataFrame:
    """Every (n_users, q, casual share, seed) and every arm: one record per arm and run (see :func:`run_once`).

    ``n_users`` may be an int or a sequence of ints (data set sizes to compare).
    """
    sizes = [int(n_users)] if np.isscalar(n_users) else [int(n) for n in n_users]
    records = []
    for size in sizes:
        for q in qs:
            for share in casual_shares:
                for seed in seeds:
                    records.extend(
                        run_once(
                            share, q, int(seed), n_users=size, filters=filters, n_test=n_test, l2=l2, **simulate_kwargs
                        )
                    )
    runs = pd.DataFrame.from_records(records)
    order = list(dict.fromkeys(runs["arm"]))
    runs["arm"] = pd.Categorical(runs["arm"], categories=order, ordered=True)
    return runs


KEYS = ["n_users", "q", "casual_share"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ``n_users, q, casual_share, arm``: accuracy mean and sd over seeds, and the paired gain over ``all``.

    ``gain_mean`` / ``gain_se`` are the mean and standard error over seeds of
    (arm accuracy - ``all`` accuracy) on the same simulated data;
    ``gap_closed`` = mean gain of the arm / mean gain of ``oracle``.
    """
    runs = runs.copy()
    base = runs[runs.arm == "all"].set_index(KEYS + ["seed"])["accuracy"]
    paired = base.reindex(pd.MultiIndex.from_frame(runs[KEYS + ["seed"]])).to_numpy()
    runs["gain"] = runs["accuracy"].to_numpy() - paired
    grouped = runs.groupby(KEYS + ["arm"], observed=True, sort=True)
    summary = grouped.agg(
        accuracy_mean=("accuracy", "mean"),
        accuracy_sd=("accuracy", "std"),
        gain_mean=("gain", "mean"),
        gain_sd=("gain", "std"),
        n_seeds=("accuracy", "size"),
        n_rows=("n_rows", "mean"),
        n_labels=("n_labels", "mean"),
        casual_label_share=("casual_label_share", "mean"),
        runs_without_labels=("n_labels", lambda n: int((n == 0).sum())),
    ).reset_index()
    summary["gain_se"] = summary["gain_sd"] / np.sqrt(summary["n_seeds"])
    oracle = summary[summary.arm == "oracle"].set_index(KEYS)["gain_mean"]
    gap = oracle.reindex(pd.MultiIndex.from_frame(summary[KEYS])).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        summary["gap_closed"] = np.where(gap > 0, summary["gain_mean"].to_numpy() / gap, np.nan)
    return summary


def _arms(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary["arm"].astype(str)))


def markdown_table(summary: pd.DataFrame, digits: int = 2) -> str:
    """Accuracy in percent (mean ± sd over seeds): one row per ``n_users, q, casual share``, one column per arm."""
    arms = _arms(summary)
    lines = ["| users (labels) | q | casual share | " + " | ".join(f"`{a}`" for a in arms) + " |"]
    lines.append("|" + "---|" * (3 + len(arms)))
    for (n_users, q, share), block in summary.groupby(KEYS, sort=True):
        by = {str(r.arm): r for r in block.itertuples()}
        cells = [
            f"{100 * by[a].accuracy_mean:.{digits}f} ± {100 * by[a].accuracy_sd:.{digits}f}" if a in by else ""
            for a in arms
        ]
        n_rows = by["all"].n_rows if "all" in by else np.nan
        lines.append(f"| {n_users} ({n_rows:,.0f}) | {q:g} | {share:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gain_table(summary: pd.DataFrame, digits: int = 2) -> str:
    """Paired gain over ``all`` in accuracy points (mean ± se over seeds) and the share of the oracle's gain."""
    arms = [a for a in _arms(summary) if a != "all"]
    lines = ["| users | q | casual share | " + " | ".join(f"`{a}`" for a in arms) + " |"]
    lines.append("|" + "---|" * (3 + len(arms)))
    for (n_users, q, share), block in summary.groupby(KEYS, sort=True):
        by = {str(r.arm): r for r in block.itertuples()}
        cells = []
        for a in arms:
            if a not in by:
                cells.append("")
                continue
            r = by[a]
            cell = f"{100 * r.gain_mean:+.{digits}f} ± {100 * r.gain_se:.{digits}f}"
            if a != "oracle" and np.isfinite(r.gap_closed):
                cell += f" ({r.gap_closed:.0%})"
            cells.append(cell)
        lines.append(f"| {n_users} | {q:g} | {share:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(summary: pd.DataFrame, path=None):
    """Accuracy against casual share: one panel per (``n_users``, ``q``), one line per arm (bars: ± 1 se of the mean).

    Uses matplotlib (the ``plot`` extra); returns the figure and saves it when ``path`` is given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sizes = sorted(summary["n_users"].unique())
    qs = sorted(summary["q"].unique())
    arms = _arms(summary)
    fig, axes = plt.subplots(
        len(sizes), len(qs), figsize=(5.0 * len(qs), 3.6 * len(sizes)), sharex=True, squeeze=False
    )
    for row, n_users in enumerate(sizes):
        for col, q in enumerate(qs):
            ax = axes[row][col]
            block = summary[(summary.n_users == n_users) & (summary.q == q)]
            for i, arm in enumerate(arms):
                part = block[block.arm.astype(str) == arm].sort_values("casual_share")
                offset = (i - (len(arms) - 1) / 2) * 0.004
                ax.errorbar(
                    100 * (part.casual_share + offset),
                    100 * part.accuracy_mean,
                    yerr=100 * part.accuracy_sd / np.sqrt(part.n_seeds),
                    marker="o",
                    markersize=4,
                    capsize=2,
                    label=arm,
                    linestyle="--" if arm in ("all", "oracle") else "-",
                )
            n_rows = block["n_rows"].mean()
            ax.set_title(f"{n_users} users (~{n_rows:,.0f} labels), casual q = {q:g}", fontsize=10)
            ax.grid(alpha=0.3)
            if row == len(sizes) - 1:
                ax.set_xlabel("casual users (%)")
            if col == 0:
                ax.set_ylabel("held-out accuracy (%)")
    axes[0][-1].legend(title="training labels", fontsize=8)
    fig.suptitle("Bradley-Terry reward model: agreement with the true utility on fresh pairs", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
