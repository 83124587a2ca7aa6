"""Embedded data sets.

* :func:`load_demo` — the default data set of ``bayes-annot demo``: a simulated
  comparison-mode log (seeded, so identical everywhere) with prompt/response
  text and ground-truth columns.
* :func:`load_real` — real paired comparisons with judge ids, converted from
  the R packages psychotree / psychotools (CRAN, GPL-2; Debian
  ``r-cran-psychotree``, ``r-cran-psychotools``):

  - ``cemschoice``: 303 students x 15 pairs of 6 universities, with ties
    (Dittrich, Hatzinger & Katzenbeisser 1998, JRSS C 47);
  - ``topmodel2007``: 192 judges x 15 pairs of 6 candidates
    (Strobl, Wickelmaier & Zeileis 2011, JEBS 36);
  - ``germanparties2009``: 192 judges x 15 pairs of 6 parties (Wickelmaier & Zeileis).

  Converted from the packages' ``paircomp`` objects (1 = first object
  preferred, -1 = second, 0 = tie).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..simulate import simulate

__all__ = ["load_demo", "load_real", "real_data_path", "REAL_DATASETS"]

REAL_DATASETS = ("cemschoice", "topmodel2007", "germanparties2009")

#: Settings of the demo log (documented so the demo can be reproduced by hand).
DEMO_SETTINGS = dict(
    n_users=2000,
    n_models=8,
    casual_share=0.3,
    q=0.6,
    labels_per_user=(3, 40),
    variant="two-class",
    tie_rate=0.05,
    with_text=True,
    seed=20251015,
)


def load_demo() -> pd.DataFrame:
    """The demo log: 2,000 users, 8 models, 30% casual users clicking left 60% of the time."""
    return simulate(**DEMO_SETTINGS)


def real_data_path(name: str):
    """Path of an embedded real data set (``cemschoice``, ``topmodel2007``, ``germanparties2009``)."""
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown data set '{name}', expected one of {', '.join(REAL_DATASETS)}")
    return resources.files(__package__).joinpath(f"{name}.csv")


def load_real(name: str) -> pd.DataFrame:
    """Load an embedded real data set as a frame (ids as text)."""
    with resources.as_file(real_data_path(name)) as path:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
