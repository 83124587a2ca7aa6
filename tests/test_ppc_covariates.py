"""The posterior predictive check by casual-covariate bin (issue #14 item 5; ``plotting.ppc_length_bins``).

On the issue's length-bias scenario (30% casual users picking the longer response 85% of the
time, longer responses from stronger models), a fit with the length covariate reproduces the
share of labels picking the stronger model in every length-ratio bin, for the users it calls
casual and those it calls attentive; today's model (casual clicks follow position only) cannot,
and the check says so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.plotting import PPC_BIN_COLUMNS, plot_ppc_length_bins, ppc_length_bins
from bayes_annot.report import render_report
from bayes_annot.report.builder import ppc_verdict_ok


@pytest.fixture(scope="module")
def length_log():
    return ba.simulate(n_users=1000, n_models=8, casual_share=0.3, length_bias=0.85, seed=1)


def _fit(log, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ba.fit(log, **kwargs)


@pytest.fixture(scope="module")
def fits(length_log):
    return {"auto": _fit(length_log), "none": _fit(length_log, casual_covariates="none")}


def _outside(frame):
    return int(frame["outside"].sum()), int(frame["checked"].sum())


def test_fit_with_covariates_reproduces_every_bin(fits):
    frame = ppc_length_bins(fits["auto"], n_rep=200, seed=0)
    assert tuple(frame.columns) == PPC_BIN_COLUMNS
    assert set(frame["group"]) == {"casual", "attentive"}
    n_out, n_checked = _outside(frame)
    print(f"with the length covariate: {n_out} of {n_checked} bins outside the replicated 95% range")
    assert n_checked >= 20
    assert n_out <= 2 and ppc_verdict_ok(n_out, n_checked)
    casual = frame[(frame["group"] == "casual") & frame["checked"] & (frame["bin"] != 0)]
    # the casual users follow length: they pick the stronger model when its response is the longer
    assert casual.loc[casual["bin"] > 0, "observed"].min() > 0.75
    assert casual.loc[casual["bin"] < 0, "observed"].max() < 0.25


def test_fit_without_covariates_is_flagged(fits):
    """The check can fail: casual clicks follow length, the fit's casual side does not."""
    frame = ppc_length_bins(fits["none"], n_rep=200, seed=0)
    assert frame is not None and not frame.attrs["fitted"]
    n_out, n_checked = _outside(frame)
    print(f"without covariates: {n_out} of {n_checked} bins outside the replicated 95% range")
    assert n_out >= 8 and not ppc_verdict_ok(n_out, n_checked)


def test_the_check_is_seeded(fits):
    a, b = ppc_length_bins(fits["auto"], n_rep=30, seed=3), ppc_length_bins(fits["auto"], n_rep=30, seed=3)
    c = ppc_length_bins(fits["auto"], n_rep=30, seed=4)
    assert a.equals(b)
    assert not np.allclose(a["replicated_median"], c["replicated_median"])


def test_loaded_folder_gives_the_same_check(fits, tmp_path):
    """The report reads results and never fits: the covariates come back from the saved rows."""
    saved = ba.load(fits["auto"].save(tmp_path / "out"))
    a = ppc_length_bins(fits["auto"], n_rep=50, seed=1)
    b = ppc_length_bins(saved, n_rep=50, seed=1)
    assert a.equals(b)


def test_subset_of_users_when_the_log_is_large(fits):
    frame = ppc_length_bins(fits["auto"], n_rep=20, seed=0, max_rows=5000)
    assert frame["n_labels"].sum() <= 5000
    assert frame.attrs["n_users"] < frame.attrs["n_users_all"] == 1000


@pytest.mark.slow
def test_taste_classes_and_continuous_fits_pass(length_log):
    for kwargs in ({"tastes": 2}, {"variant": "continuous"}):
        frame = ppc_length_bins(_fit(length_log, **kwargs), n_rep=100, seed=0, max_rows=8000)
        n_out, n_checked = _outside(frame)
        assert ppc_verdict_ok(n_out, n_checked), (kwargs, n_out, n_checked)


def test_no_texts_no_check():
    result = _fit(ba.simulate(n_users=100, n_models=4, seed=0))
    assert ppc_length_bins(result, n_rep=10) is None
    ax = plot_ppc_length_bins(result, n_rep=10)
    assert "needs casual covariates" in ax.texts[0].get_text()
    html = render_report(result, n_rep=10)
    assert "The check by length-ratio bin is omitted" in html


@pytest.mark.slow
def test_report_shows_the_verdict(fits):
    good = render_report(fits["auto"], n_rep=50)
    assert "By length-ratio bin" in good and "the model reproduces how choices vary with log_length_ratio" in good
    bad = render_report(fits["none"], n_rep=50)
    assert "does not reproduce how choices vary with log_length_ratio" in bad
    assert "casual_covariates=&#x27;auto&#x27;" in bad
