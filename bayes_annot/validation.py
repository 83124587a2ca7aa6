"""Checks of numeric settings (fit options, priors), shared by the API, the CLI, the spec and saved results folders.

Every check raises :class:`~bayes_annot.errors.InputError` with one line
``NAME must be ..., got VALUE`` before anything is read or fitted.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np

from .errors import InputError

__all__ = ["check_fit_settings", "check_number", "check_priors"]


def _shown(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
    optional: bool = False,
):
    """``value`` if it is a finite number (an integer when ``integer``) within the bounds; else InputError.

    ``optional``: ``None`` passes. Booleans and text are never numbers.
    """
    if value is None and optional:
        return value
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    is_real = is_int or (isinstance(value, (float, np.floating)) and not isinstance(value, bool))
    ok = is_int if integer else is_real and math.isfinite(float(value))
    if ok:
        v = float(value)
        if low is not None and (v < low or (open_low and v == low)):
            ok = False
        if high is not None and (v > high or (open_high and v == high)):
            ok = False
    if not ok:
        if low is not None and high is not None:
            what = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            what = f"an integer in {what}" if integer else f"a number in {what}"
        else:
            what = "an integer" if integer else "a finite number"
            if low is not None:
                what += f" {'>' if open_low else '>='} {low:g}"
            if high is not None:
                what += f" {'<' if open_high else '<='} {high:g}"
        raise InputError(f"{name} must be {what}, got {_shown(value)}")
    return value


#: Priors fields that must be positive (the rest, ``eta_m_mu``, any finite number).
_POSITIVE_PRIORS = ("pi_alpha", "pi_beta", "q_alpha", "q_beta", "strength_sigma", "eta_tau", "eta_m_sigma",
                    "casual_effect_sigma", "tie_nu_sigma", "tie_rate_alpha", "tie_rate_beta", "style_effect_sigma")


def check_priors(priors, name: str = "priors") -> None:
    """Every field of a :class:`~bayes_annot.likelihood.Priors` is a finite number (positive where it must be)."""
    if priors is None:
        return
    from .likelihood import Priors

    if not isinstance(priors, Priors):
        raise InputError(f"{name} must be a bayes_annot Priors, got {type(priors).__name__}")
    for item in fields(priors):
        value = getattr(priors, item.name)
        positive = item.name in _POSITIVE_PRIORS
        check_number(value, f"{name}.{item.name}", low=0.0 if positive else None, open_low=positive)


def check_fit_settings(
    *,
    tol=1e-9,
    max_iter=1000,
    draws=1000,
    tune=1000,
    chains=2,
    seed=0,
    mu=None,
    tastes=1,
) -> None:
    """Validate the numeric settings of :func:`bayes_annot.fit` (called before any input is read).

    ``tol`` a finite number >= 0, ``max_iter``, ``draws`` and ``chains``
    integers >= 1, ``tune`` and ``seed`` integers >= 0, ``mu`` in (0, 1) (or
    ``None``), ``tastes`` a positive integer or ``"auto"``. The settings of
    the model itself (variant, ``q``, priors, their combinations) are checked
    by :class:`bayes_annot.spec.BehaviourSpec`.
    """
    check_number(tol, "tol", low=0.0)
    check_number(max_iter, "max_iter", low=1, integer=True)
    check_number(draws, "draws", low=1, integer=True)
    check_number(tune, "tune", low=0, integer=True)
    check_number(chains, "chains", low=1, integer=True)
    check_number(seed, "seed", low=0, integer=True)
    check_number(mu, "mu", low=0.0, high=1.0, open_low=True, open_high=True, optional=True)
    if not (tastes == "auto" or (isinstance(tastes, (int, np.integer)) and not isinstance(tastes, bool) and tastes >= 1)):
        raise InputError(f"tastes must be a positive integer or 'auto', got {_shown(tastes)}")
