"""Exception and warning types of bayes_annot."""

from __future__ import annotations

import os
import sys


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
