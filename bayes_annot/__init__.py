"""bayes_annot: users as annotators.

Estimate each user's annotation quality from comparison-mode preference logs
(two responses from two different models, the user picks one), with a fast EM
engine and full posterior sampling in PyMC, then filter or weight the labels
before DPO / reward-model training.

>>> import bayes_annot as ba
>>> result = ba.fit(ba.simulate(n_users=200, seed=0))
>>> result.users[["user", "quality", "kept"]].shape
(200, 3)
"""

from .version import __version__  # noqa: F401
from .data import ColumnMap, prepare, read_table  # noqa: E402
from .decide import parse_filter  # noqa: E402
from .errors import FitWarning, InputError  # noqa: E402
from .fit import FitResult, UserQualityModel, fit, load  # noqa: E402
from .likelihood import Priors  # noqa: E402
from .simulate import simulate, truth_models, truth_users  # noqa: E402
from .datasets import load_demo  # noqa: E402
from .compare import compare, fit_baseline  # noqa: E402

__all__ = [
    "__version__",
    "ColumnMap",
    "compare",
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
