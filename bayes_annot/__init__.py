"""bayes_annot: users as annotators.

Estimate each user's annotation quality from comparison-mode preference logs
(two responses from two different models, the user picks one), with a fast EM
engine and full posterior sampling in PyMC, then filter or weight the labels
before DPO / reward-model training.

>>> import bayes_annot as ba
>>> result = ba.fit(ba.simulate(n_users=200, seed=0))
>>> result.users[["user", "quality", "kept"]].shape
(200, 3)

``import bayes_annot`` is quick (no numpy, pandas, SciPy or PyMC): the names
below are loaded from their submodules on first use (PEP 562), and each
submodule imports its heavy dependencies (PyMC, ArviZ, matplotlib, Dask) only
in the functions that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

#: public name -> submodule that defines it (loaded on first access)
_EXPORTS = {
    "__version__": "version",  # importlib.metadata: ~50 ms, not needed by --help
    "ColumnMap": "data",
    "prepare": "data",
    "read_table": "data",
    "parse_filter": "decide",
    "FitWarning": "errors",
    "InputError": "errors",
    "FitResult": "fit",
    "UserQualityModel": "fit",
    "fit": "fit",
    "load": "fit",
    "Priors": "likelihood",
    "simulate": "simulate",
    "truth_models": "simulate",
    "truth_users": "simulate",
    "load_demo": "datasets",
    "compare": "compare",
    "fit_baseline": "compare",
    "diagnose": "evaluate",
}

if TYPE_CHECKING:  # what static tools (type checkers, griffe) see; at run time these load lazily
    from .version import __version__
    from .compare import compare, fit_baseline
    from .data import ColumnMap, prepare, read_table
    from .datasets import load_demo
    from .decide import parse_filter
    from .errors import FitWarning, InputError
    from .evaluate import diagnose
    from .fit import FitResult, UserQualityModel, fit, load
    from .likelihood import Priors
    from .simulate import simulate, truth_models, truth_users

__all__ = [
    "__version__",
    "ColumnMap",
    "compare",
    "diagnose",
    "fit_baseline",
    "FitResult",
    "FitWarning",
    "InputError",
    "Priors",
    "UserQualityModel",
    "fit",
    "load",
    "load_demo",
    "parse_filter",
    "prepare",
    "read_table",
    "simulate",
    "truth_models",
    "truth_users",
]


def __getattr__(name: str):
    """Load a public name (or a submodule, e.g. ``ba.metrics``) on first access."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later accesses are plain attribute look-ups
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: ``ba.fit``, ``ba.compare`` and ``ba.simulate`` stay the functions.

    Importing the submodule ``bayes_annot.fit`` (as ``from .fit import ...`` anywhere does) binds it on
    the package under the same name as the public function; that binding is skipped here, so the
    function is what ``ba.fit`` returns, whichever was imported first (``sys.modules`` keeps the submodule).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
