r"""Generative simulator of comparison-mode logs with ground truth.

Every simulated user sees pairs of responses from two *different* models
(chosen uniformly at random, shown in random order) and picks one:

* an attentive label picks ``model_a`` with probability
  :math:`\sigma(s_a - s_b)` (or the known ``mu`` in the paper's two-model setting);
* a casual label picks ``model_a`` (the left response) with probability ``q``;
  with ``length_bias`` set, casual clicks follow length as well:
  :math:`\operatorname{logit} P(a) = \operatorname{logit} q + \operatorname{sign}(\log L_a / L_b)
  \operatorname{logit}(\text{length\_bias})`, so with ``q = 0.5`` the longer response is picked
  with probability ``length_bias`` (docs/model.md, "casual covariates"); response lengths
  :math:`\log L = \log 60 + \text{length\_confound}\, s_k + \text{length\_noise}\,\varepsilon`
  grow with the model's strength, and the texts are in ``response_a`` / ``response_b``;
  with ``style_bias`` set, attentive labels follow length too, after reading (the attentive style
  term, docs/model.md "Style covariates"): :math:`P(a) = \sigma(s_a - s_b + \text{style\_bias} \log L_a / L_b)`;
* an adversarial user (optional) picks the *weaker* model attentively.

``variant="two-class"``: a user is casual with probability ``casual_share`` and
then every label is casual. ``variant="continuous"``: each user has
:math:`\eta_u = \sigma(\theta_u)`, :math:`\theta_u \sim N(\operatorname{logit}(1 - \text{casual\_share}), \tau^2)`,
the chance that any one label is attentive.

Truth columns (prefixed ``true_``) travel with the log: ``true_attentive``
(user type; for continuous, ``true_eta >= 0.5``), ``true_eta``,
``true_label_attentive``, ``true_strength_a``, ``true_strength_b`` and
``true_p_a`` (the attentive probability of choosing ``model_a``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from .ufuncs import expit, logit

from .errors import renamed_keyword

__all__ = ["simulate", "draw_labels_per_user", "truth_users", "truth_models"]


def draw_labels_per_user(n_users: int, spec, rng: np.random.Generator) -> np.ndarray:
    """Draw the number of labels of each user.

    ``spec`` is an int (everyone the same), a ``(low, high)`` tuple (uniform,
    inclusive), or ``"arena"``: heavy-tailed like Chatbot Arena, ``Zipf(2)``
    capped at 200 — about 61% of users vote once and 83% one to three times.
    """
    if isinstance(spec, str):
        if spec != "arena":
            raise ValueError(f"unknown labels_per_user '{spec}', expected an int, (low, high) or 'arena'")
        return np.minimum(rng.zipf(2.0, size=n_users), 200).astype(np.int64)
    if np.isscalar(spec):
        if int(spec) < 1:
            raise ValueError("labels_per_user must be at least 1")
        return np.full(n_users, int(spec), dtype=np.int64)
    low, high = spec
    if not 1 <= low <= high:
        raise ValueError(f"labels_per_user range must satisfy 1 <= low <= high, got {spec}")
    return rng.integers(int(low), int(high) + 1, size=n_users).astype(np.int64)


@renamed_keyword("quality", "variant")
def simulate(
    n_users: int = 1000,
    n_models: int = 8,
    casual_share: float = 0.3,
    q: float = 0.5,
    labels_per_user=(5, 40),
    variant: str = "two-class",
    strengths=None,
    known_mu: float | None = None,
    eta_tau: float = 1.5,
    adversarial_share: float = 0.0,
    tie_rate: float = 0.0,
    tie_nu: float | None = None,
    casual_tie_rate: float | None = None,
    with_text: bool = False,
    length_bias: float | None = None,
    length_confound: float = 0.5,
    length_noise: float = 0.5,
    style_bias: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a comparison-mode log with its ground truth.

    Parameters
    ----------
    n_users, n_models : int
    casual_share : float
        Share of casual users (two-class) or ``1 - mean`` of the eta prior's
        centre (continuous).
    q : float
        Casual users' probability of picking the left response (position bias).
    labels_per_user : int, (low, high) or "arena"
    variant : {"two-class", "continuous"}
        The behaviour variant that generates the labels (docs/model.md). ``quality=`` is its
        deprecated alias (a :class:`FutureWarning`).
    strengths : array, optional
        Model strengths; default evenly spaced from +1.5 (``model_0``) down to -1.5.
    known_mu : float, optional
        The paper's setting: two models, the stronger (``model_0``) wins an
        attentive comparison with probability ``known_mu``; adds a ``p_a`` column.
    eta_tau : float
        Spread of ``logit(eta)`` for continuous quality.
    adversarial_share : float
        Share of users (taken from the attentive ones) who pick the weaker model.
    tie_rate : float
        Probability that any label is a tie whoever gave it (random ties, unrelated to the pair).
    tie_nu, casual_tie_rate : float, optional
        Ties as the model has them (docs/model.md, "Ties"): an attentive label is a tie with Davidson's
        probability ``nu / (2 cosh(d / 2) + nu)`` (``d`` the pair's strength difference; ``tie_nu``,
        default 0), a casual label with probability ``casual_tie_rate`` (default 0); labels that are not
        ties keep the model's choice. Drawn from their own random stream (earlier seeds reproduce);
        adds the truth column ``true_p_tie``.
    with_text : bool
        Add ``prompt``, ``response_a``, ``response_b`` text columns.
    length_bias : float, optional
        Casual clicks follow length: with ``q = 0.5`` a casual click picks the
        longer response with this probability (in general
        ``logit P(a) = logit q + sign(log L_a/L_b) * logit(length_bias)``). Adds
        ``prompt``, ``response_a``, ``response_b`` whose lengths (in words) are
        drawn as ``log L = log 60 + length_confound * s_k + length_noise * N(0, 1)``,
        and the truth column ``true_log_length_ratio``. ``None`` (default): no
        length effect, and no random numbers drawn for it (earlier seeds reproduce).
    length_confound : float
        Slope of log response length on model strength (stronger models write longer).
    length_noise : float
        Standard deviation of log response length around that line.
    style_bias : float, optional
        Attentive users prefer the longer answer after reading: their log-odds of choosing ``model_a`` are
        ``s_a - s_b + style_bias * log(L_a / L_b)`` (``true_p_a`` includes it; so does Davidson's ``d`` of
        ``tie_nu``). Draws the response
        lengths as ``length_bias`` does (with ``length_bias=None`` casual clicks then ignore length).
        ``None`` (default): no style effect, and no random numbers drawn for it.
    seed : int

    Returns
    -------
    pandas.DataFrame
        Columns ``user, model_a, model_b, winner`` (+ ``p_a``, text) and the
        ``true_*`` columns; ids are categorical to keep large logs small.

    Examples
    --------
    >>> from bayes_annot import simulate
    >>> log = simulate(n_users=50, n_models=4, seed=1)
    >>> sorted(log.winner.unique())
    ['model_a', 'model_b']
    """
    if variant not in ("two-class", "continuous"):
        raise ValueError(f"unknown variant '{variant}', expected 'two-class' or 'continuous'")
    if not 0.0 <= casual_share <= 1.0:
        raise ValueError("casual_share must be in [0, 1]")
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    rng = np.random.default_rng(seed)
    if known_mu is not None:
        if not 0.0 < known_mu < 1.0:
            raise ValueError("known_mu must be in (0, 1)")
        n_models = 2
        strengths = np.array([logit(known_mu) / 2.0, -logit(known_mu) / 2.0])
    if strengths is None:
        strengths = np.linspace(1.5, -1.5, n_models)
    strengths = np.asarray(strengths, dtype=float)
    if strengths.shape != (n_models,):
        raise ValueError(f"strengths must have length n_models={n_models}")
    if n_models < 2:
        raise ValueError("need at least two models")

    counts = draw_labels_per_user(n_users, labels_per_user, rng)
    # user types
    if variant == "two-class":
        attentive_user = rng.random(n_users) >= casual_share
        eta = attentive_user.astype(float)
    else:
        centre = logit(np.clip(1.0 - casual_share, 1e-3, 1 - 1e-3))
        eta = expit(centre + eta_tau * rng.standard_normal(n_users))
        attentive_user = eta >= 0.5
    adversarial = np.zeros(n_users, dtype=bool)
    if adversarial_share > 0:
        candidates = np.flatnonzero(attentive_user)
        n_adv = min(len(candidates), int(round(adversarial_share * n_users)))
        adversarial[rng.choice(candidates, size=n_adv, replace=False)] = True

    user = np.repeat(np.arange(n_users), counts)
    n_rows = user.shape[0]
    model_a = rng.integers(0, n_models, size=n_rows)
    model_b = (model_a + rng.integers(1, n_models, size=n_rows)) % n_models
    p_attentive = expit(strengths[model_a] - strengths[model_b])
    label_attentive = rng.random(n_rows) < eta[user]
    p_casual = q
    lengths = length_bias is not None or style_bias is not None
    if length_bias is not None and not 0.0 < length_bias < 1.0:
        raise ValueError("length_bias must be in (0, 1)")
    if style_bias is not None and not np.isfinite(style_bias):
        raise ValueError("style_bias must be a finite number")
    if lengths:
        length_rng = np.random.default_rng([seed, 1])  # its own stream: the other draws stay those of the seed
        words_a = _lengths(strengths[model_a], length_confound, length_noise, length_rng)
        words_b = _lengths(strengths[model_b], length_confound, length_noise, length_rng)
        log_ratio = np.log(words_a / words_b)
    if length_bias is not None:
        p_casual = expit(logit(q) + np.sign(log_ratio) * logit(length_bias))
    if style_bias is not None:
        p_attentive = expit(strengths[model_a] - strengths[model_b] + float(style_bias) * log_ratio)
    p_choose_a = np.where(label_attentive, np.where(adversarial[user], 1.0 - p_attentive, p_attentive), p_casual)
    choice_a = rng.random(n_rows) < p_choose_a
    winner_code = np.where(choice_a, 0, 1)
    if tie_rate > 0:
        winner_code = np.where(rng.random(n_rows) < tie_rate, 2, winner_code)
    modelled_ties = tie_nu is not None or casual_tie_rate is not None
    if modelled_ties:
        nu, t = float(tie_nu or 0.0), float(casual_tie_rate or 0.0)
        if nu < 0 or not 0.0 <= t < 1.0:
            raise ValueError("tie_nu must be >= 0 and casual_tie_rate in [0, 1)")
        d = strengths[model_a] - strengths[model_b]
        if style_bias is not None:  # Davidson's d with the style term
            d = d + float(style_bias) * log_ratio
        p_tie = np.where(label_attentive, nu / (2.0 * np.cosh(0.5 * d) + nu), t)
        winner_code = np.where(np.random.default_rng([seed, 2]).random(n_rows) < p_tie, 2, winner_code)

    width = len(str(max(n_users - 1, 1)))
    user_names = np.array([f"u{i:0{width}d}" for i in range(n_users)], dtype=object)
    model_names = np.array([f"model_{k}" for k in range(n_models)], dtype=object)
    frame = pd.DataFrame(
        {
            "user": pd.Categorical.from_codes(user, categories=user_names),
            "model_a": pd.Categorical.from_codes(model_a, categories=model_names),
            "model_b": pd.Categorical.from_codes(model_b, categories=model_names),
            "winner": pd.Categorical.from_codes(winner_code, categories=["model_a", "model_b", "tie"]),
        }
    )
    if known_mu is not None:
        frame["p_a"] = p_attentive
    if with_text:
        prompt_id = np.arange(n_rows)
        frame["prompt"] = [f"Prompt {i}: explain topic {i % 97}." for i in prompt_id]
        frame["response_a"] = [f"Answer by {model_names[m]} to prompt {i}." for m, i in zip(model_a, prompt_id)]
        frame["response_b"] = [f"Answer by {model_names[m]} to prompt {i}." for m, i in zip(model_b, prompt_id)]
    if lengths:
        frame["prompt"] = [f"Prompt {i}" for i in range(n_rows)]
        frame["response_a"] = _texts(words_a)
        frame["response_b"] = _texts(words_b)
        frame["true_log_length_ratio"] = log_ratio
    frame["true_attentive"] = attentive_user[user] & ~adversarial[user]
    frame["true_adversarial"] = adversarial[user]
    frame["true_eta"] = eta[user]
    frame["true_label_attentive"] = label_attentive
    frame["true_strength_a"] = strengths[model_a]
    frame["true_strength_b"] = strengths[model_b]
    frame["true_p_a"] = p_attentive
    if modelled_ties:
        frame["true_p_tie"] = p_tie
    frame.winner = frame.winner.cat.remove_unused_categories() if tie_rate == 0 and not modelled_ties else frame.winner
    return frame


def _lengths(strength, confound, noise, rng) -> np.ndarray:
    """Response lengths in words: log-normal around ``60 * exp(confound * strength)``, at least 1."""
    log_len = np.log(60.0) + confound * strength + noise * rng.standard_normal(strength.shape[0])
    return np.maximum(np.round(np.exp(log_len)), 1.0)


def _texts(words: np.ndarray) -> list:
    """A text of ``n`` words (``"w w w ..."``; the length ratio is what matters) for each ``n``."""
    cache: dict = {}
    out = []
    for n in words.astype(np.int64):
        text = cache.get(n)
        if text is None:
            text = cache[n] = " ".join(["w"] * int(n))
        out.append(text)
    return out


def truth_users(log: pd.DataFrame, user: str = "user") -> pd.DataFrame:
    """One row per user of a simulated log: ``true_attentive``, ``true_eta``, ``n_labels``."""
    grouped = log.groupby(user, observed=True, sort=True)
    out = grouped.agg(
        true_attentive=("true_attentive", "first"),
        true_eta=("true_eta", "first"),
        n_labels=("true_eta", "size"),
    )
    out.index = out.index.astype(str)
    return out


def truth_models(log: pd.DataFrame) -> pd.Series:
    """True strength of each model of a simulated log."""
    a = log.groupby("model_a", observed=True)["true_strength_a"].first()
    b = log.groupby("model_b", observed=True)["true_strength_b"].first()
    out = pd.concat([a, b]).groupby(level=0).first()
    out.index = out.index.astype(str)
    return out.rename("true_strength")
