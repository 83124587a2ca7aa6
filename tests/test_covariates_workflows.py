"""Casual covariates in the workflows that refit (issue #14 item 1 leftovers).

* ``heldout_loglik(..., tastes=C)`` fits the training labels' taste classes with the casual
  covariates the fit uses (binned on the training rows) and scores the held-out labels with them;
* ``diagnose(result, taste_check=True)`` (and ``fit(..., taste_check=True)``) runs the casual-group
  test with the fit's casual covariates: under its null the flagged users click by position and
  length, so length-clickers are noise and a minority ranking is still a taste group.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.evaluate import compare_heldout, heldout_loglik
from bayes_annot.tastes import simulate_tastes


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def length_log():
    """The issue's scenario, smaller: 30% casual users picking the longer response 85% of the time."""
    return ba.simulate(n_users=500, n_models=6, casual_share=0.3, length_bias=0.85, seed=1)


@pytest.fixture(scope="module")
def taste_log():
    """A minority taste group, with response texts whose lengths carry nothing."""
    log = simulate_tastes(n_users=600, seed=2)
    rng = np.random.default_rng(0)
    log["response_a"] = ["x" * int(n) for n in rng.integers(50, 800, len(log))]
    log["response_b"] = ["x" * int(n) for n in rng.integers(50, 800, len(log))]
    return log


def test_heldout_with_tastes_scores_with_the_covariates(length_log):
    new = _quiet(heldout_loglik, length_log, "two-class", seed=1, tastes=2, max_iter=200)
    old = _quiet(heldout_loglik, length_log, "two-class", seed=1, tastes=2, max_iter=200, casual_covariates="none")
    print(f"held-out, 2 taste classes: with the length covariate {new['heldout_loglik']:.1f}, "
          f"without {old['heldout_loglik']:.1f} ({new['n_heldout']} labels)")
    assert new["n_heldout"] == old["n_heldout"]
    assert new["heldout_loglik"] > old["heldout_loglik"] + 30


@pytest.mark.slow
def test_compare_heldout_refits_a_taste_fit_with_its_covariates(length_log):
    fits = {"tastes": _quiet(ba.fit, length_log, tastes=2, max_iter=200),
            "tastes-none": _quiet(ba.fit, length_log, tastes=2, max_iter=200, casual_covariates="none")}
    table = _quiet(compare_heldout, fits, seed=1)
    assert list(table["fit"]) == ["tastes", "tastes-none"]


@pytest.mark.slow
def test_taste_check_with_covariates_calls_length_clickers_noise(length_log, tmp_path):
    result = _quiet(ba.fit, length_log)
    assert result.casual_effects_ is not None
    check = _quiet(ba.diagnose, result, taste_check=True).summary["taste_diagnostic"]
    assert check["n_flagged"] > 100 and check["verdict"] == "noise", check
    assert "log_length_ratio" in check["message"]
    loaded = ba.load(result.save(tmp_path / "out"))
    assert _quiet(ba.diagnose, loaded, taste_check=True).summary["taste_diagnostic"] == check


def test_taste_check_with_covariates_still_finds_a_taste_group(taste_log):
    """The test can fail: a minority ranking is a taste group whether or not the log has texts."""
    result = _quiet(ba.fit, taste_log)
    assert result.casual_effects_ is not None
    check = _quiet(ba.diagnose, result, taste_check=True).summary["taste_diagnostic"]
    assert check["verdict"] == "taste group", check
    at_fit = _quiet(ba.fit, taste_log, taste_check=True).summary["taste_diagnostic"]
    assert at_fit == check
