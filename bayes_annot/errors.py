"""Exception and warning types of bayes_annot."""

from __future__ import annotations

import functools
import os
import sys
import warnings


class InputError(ValueError):
    """Bad input data or settings.

    The message is one line naming the column, value or row at fault. The CLI
    prints it without a traceback and exits with code 2.
    """


class FitWarning(UserWarning):
    """Something about a fit the analyst should know (convergence, identifiability)."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn`, called right here, that points at the first caller
    outside bayes_annot (the user's ``ba.fit(...)`` line, however deep inside the package the warning is raised)."""
    frame, level = sys._getframe(1), 1  # the function calling warnings.warn is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def take_renamed(settings: dict, old: str, new: str, where: str) -> dict:
    """``settings`` with the deprecated keyword ``old`` moved to ``new`` (a copy; ``settings`` when ``old`` is absent).

    Emits a :class:`FutureWarning` naming ``new`` at the user's call; both given is a :class:`TypeError`
    (``where`` names the function, e.g. ``"fit()"``).
    """
    if old not in settings:
        return settings
    if new in settings:
        raise TypeError(f"{where} got both {new}= and its deprecated alias {old}=; pass {new}= only")
    warnings.warn(f"{where}: {old}= is deprecated and will be removed; use {new}= (same values)", FutureWarning,
                  stacklevel=user_stacklevel())
    settings = dict(settings)
    settings[new] = settings.pop(old)
    return settings


def renamed_keyword(old: str, new: str):
    """Decorator: the keyword ``old`` of the wrapped function is a deprecated alias of ``new`` (see
    :func:`take_renamed`). The signature seen by :mod:`inspect` (and the docs) is the wrapped one, without ``old``."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return function(*args, **take_renamed(kwargs, old, new, f"{function.__name__}()"))

        return wrapper

    return decorate
