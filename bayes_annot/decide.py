r"""Deciding whom to keep: filter rules on the posterior, and soft weights.

Rules (``--filter`` in the CLI, ``result.filter(rule)`` in Python):

``prob:t``
    keep users whose quality is at least ``t``.
``fdr:alpha``
    Bayesian false-discovery control (Müller, Parmigiani & Rice 2006): rank
    users by their probability of being attentive :math:`p_u` (two-class) or
    :math:`P(\eta_u \ge 0.5)` (continuous) and keep the largest top set
    :math:`S` with :math:`\frac{1}{|S|}\sum_{u \in S}(1 - p_u) \le \alpha`,
    the expected share of casual users among those kept.
``credible:t``
    keep users whose lower credible bound of quality is at least ``t``
    (sampled results only).
``none``
    keep everyone; rows still carry ``weight``.

**Users without a verdict.** Some users are kept or dropped by a rule without
their labels having decided it:

* *uninformative* users, whose every pair carries no information about their
  quality (equally strong models; under a global ``mu`` every pair without the
  strong model): their quality is the population level;
* (two-class variant, one ranking) users the rule keeps **whatever they
  clicked**: even if every one of their labels had gone the least attentive
  way, their quality would still pass the rule's threshold (the threshold
  ``t`` of ``prob:t`` / ``credible:t``, the lowest kept ``p_good`` of
  ``fdr``). Typical of Arena-like logs: one label on a close pair moves
  nobody far from the prior.

Their rows get ``reason = "no_verdict"``. The option ``no_verdict`` (``fit(...,
no_verdict=)``, ``result.filter(rule, no_verdict=)``, ``--no-verdict``) says
what happens to them: ``"keep"`` (default) keeps them all, ``"drop"`` drops
them all. The default is ``keep`` because dropping them silently discards what
can be most of a log (2,976 of 5,000 users in the paper's ``mu`` setting, most
single-label users of an Arena log) although their expected casual share is
the population's ``1 - pi``, no worse than an unfiltered log; a warning gives
their number and share of rows, and ``drop`` is there for a training set that
should hold vetted users only. The DPO export follows ``kept``.

Every row's ``weight`` is its user's quality, for weighted DPO / reward-model
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["FilterRule", "parse_filter", "decide_users", "decide", "NO_VERDICT_POLICIES"]

#: What a rule does with users it has no verdict on (see the module notes).
NO_VERDICT_POLICIES = ("keep", "drop")


@dataclass(frozen=True)
class FilterRule:
    """A parsed filter rule: ``kind`` in {prob, fdr, credible, none} and its ``value``."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_filter(rule: str | FilterRule) -> FilterRule:
    """Parse ``"prob:0.5"``, ``"fdr:0.1"``, ``"credible:0.5"`` or ``"none"``.

    >>> parse_filter("fdr:0.1")
    FilterRule(kind='fdr', value=0.1)
    """
    if isinstance(rule, FilterRule):
        return rule
    text = str(rule).strip().lower()
    if text == "none":
        return FilterRule("none")
    kind, _, raw = text.partition(":")
    if kind not in ("prob", "fdr", "credible") or not raw:
        raise InputError(f"filter '{rule}' not understood; expected prob:T, fdr:ALPHA, credible:T or none")
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"filter '{rule}': '{raw}' is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"filter '{rule}': {value:g} must lie in [0, 1]")
    return FilterRule(kind, value)


def fdr_keep(p_good: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Largest top-ranked set whose mean ``1 - p_good`` is at most ``alpha``.

    Returns the boolean keep mask and the expected share of bad users in it
    (0 when nobody is kept). Ties in ``p_good`` are broken by position (stable).
    """
    p_good = np.asarray(p_good, dtype=float)
    order = np.argsort(-p_good, kind="stable")
    running = np.cumsum(1.0 - p_good[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(running <= alpha + 1e-12)
    keep = np.zeros(len(p_good), dtype=bool)
    if len(ok) == 0:
        return keep, 0.0
    n_keep = int(ok[-1]) + 1  # running mean is non-decreasing along the ranking
    keep[order[:n_keep]] = True
    return keep, float(running[n_keep - 1])


def decide_users(
    rule: FilterRule,
    quality: np.ndarray,
    p_good: np.ndarray,
    quality_low: np.ndarray | None,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Apply a rule to per-user posterior summaries.

    Parameters
    ----------
    rule : FilterRule
    quality : array
        Posterior mean quality per user.
    p_good : array
        Probability the user is good (two-class: = quality; continuous: P(eta >= 0.5)).
    quality_low : array or None
        Lower credible bound (sampled results only).
    eligible : bool array, optional
        Users that have at least one label in the likelihood; others are never kept.

    Returns
    -------
    keep : bool array
    info : dict
        ``rule``, ``kept_users``, ``expected_casual_share`` among kept users.
    """
    n = len(quality)
    eligible = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    info: dict = {"rule": str(rule)}
    if rule.kind == "none":
        keep = eligible.copy()
    elif rule.kind == "prob":
        keep = eligible & (quality >= rule.value)
    elif rule.kind == "credible":
        if quality_low is None or np.all(np.isnan(quality_low)):
            raise InputError(
                f"filter '{rule}' needs credible intervals: fit with method='nuts' (the EM and MAP engines give point estimates)"
            )
        keep = eligible & (quality_low >= rule.value)
    elif rule.kind == "fdr":
        keep = np.zeros(n, dtype=bool)
        idx = np.flatnonzero(eligible)
        sub_keep, _ = fdr_keep(p_good[idx], rule.value)
        keep[idx[sub_keep]] = True
    else:  # pragma: no cover - parse_filter guards this
        raise InputError(f"unknown filter kind '{rule.kind}'")
    info["kept_users"] = int(keep.sum())
    info["expected_casual_share"] = float(np.mean(1.0 - p_good[keep])) if keep.any() else 0.0
    return keep, info


def check_no_verdict_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`NO_VERDICT_POLICIES`, else :class:`~bayes_annot.errors.InputError`."""
    if policy not in NO_VERDICT_POLICIES:
        raise InputError(f"no_verdict must be one of {', '.join(NO_VERDICT_POLICIES)}, got {policy!r}")
    return policy


def decide(
    rule: FilterRule,
    quality: np.ndarray,
    p_good: np.ndarray,
    quality_low: np.ndarray | None,
    eligible: np.ndarray | None = None,
    *,
    uninformative: np.ndarray | None = None,
    quality_floor: np.ndarray | None = None,
    no_verdict: str = "keep",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`decide_users` plus the users without a verdict (see the module notes).

    Parameters
    ----------
    rule, quality, p_good, quality_low, eligible :
        As in :func:`decide_users`.
    uninformative : bool array, optional
        Users none of whose labels carries information about their quality.
    quality_floor : array, optional
        Per user, the quality they would have had had every one of their labels
        gone the least attentive way (two-class variant); ``None``: not known.
    no_verdict : {"keep", "drop"}
        What happens to users without a verdict.

    Returns
    -------
    keep : bool array
    no_verdict_mask : bool array
        Users with labels in the likelihood but no verdict.
    info : dict
        As :func:`decide_users`'s, plus ``no_verdict`` (the policy) and ``no_verdict_users``.
    """
    check_no_verdict_policy(no_verdict)
    n = len(quality)
    eligible = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    keep, info = decide_users(rule, quality, p_good, quality_low, eligible=eligible)
    mask = np.zeros(n, dtype=bool)
    if uninformative is not None:
        mask |= eligible & np.asarray(uninformative, dtype=bool)
    if quality_floor is not None and rule.kind != "none":
        if rule.kind == "fdr":
            threshold = float(np.min(p_good[keep])) if keep.any() else np.inf
        else:
            threshold = float(rule.value)
        floor = np.asarray(quality_floor, dtype=float)
        mask |= eligible & keep & (floor >= threshold)
    keep = keep | mask if no_verdict == "keep" else keep & ~mask
    info["kept_users"] = int(keep.sum())
    info["expected_casual_share"] = float(np.mean(1.0 - p_good[keep])) if keep.any() else 0.0
    info["no_verdict"] = no_verdict
    info["no_verdict_users"] = int(mask.sum())
    return keep, mask, info
