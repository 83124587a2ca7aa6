"""Exception and warning types of bayes_annot."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data or settings.

    The message is one line naming the column, value or row at fault. The CLI
    prints it without a traceback and exits with code 2.
    """


class FitWarning(UserWarning):
    """Something about a fit the analyst should know (convergence, identifiability)."""
