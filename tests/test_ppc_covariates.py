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


@pytest.fixture(scope="module")
def style_log():
    """Attentive users prefer length after reading (style_bias 0.8) and casual ones click the longer answer."""
    return ba.simulate(n_users=600, n_models=6, casual_share=0.3, length_bias=0.85, style_bias=0.8, seed=1)


@pytest.mark.parametrize("model", ["two-class", "continuous"])
def test_style_fit_replicates_reading_based_length_preference(style_log, model):
    """With the attentive style term the replicated attentive clicks follow ``s_a - s_b + delta' x``, so the
    fit that models reading-based length preference passes; the fit without the term (casual covariates only)
    leaves the attentive users' bins (measured, seed 1: two-class 0 vs 12 of 25 bins outside, continuous 1 vs
    8; seed 2: 2 vs 10 and 2 vs 4; before the replicates had the term, the style fit showed 9-10 of 25)."""
    styled = ppc_length_bins(_fit(style_log, model=model, style_covariates="auto"), n_rep=200, seed=0)
    plain = ppc_length_bins(_fit(style_log, model=model), n_rep=200, seed=0)
    n_styled, checked = _outside(styled)
    n_plain, checked_plain = _outside(plain)
    print(f"{model}: {n_styled} of {checked} bins outside with the style term, {n_plain} of {checked_plain} without")
    assert checked >= 20 and checked_plain >= 20
    assert n_styled <= 2 and ppc_verdict_ok(n_styled, checked)
    assert n_plain >= n_styled + 5 and not ppc_verdict_ok(n_plain, checked_plain)
    attentive = plain[plain["outside"] & (plain["group"] == "attentive")]
    assert len(attentive) >= 4  # the misfit is on the attentive side, where the style term acts


def test_style_fit_with_taste_classes_passes(style_log):
    frame = ppc_length_bins(_fit(style_log, tastes=2, style_covariates="auto"), n_rep=100, seed=0)
    n_out, n_checked = _outside(frame)
    assert ppc_verdict_ok(n_out, n_checked), (n_out, n_checked)


def _bins_outside(ppc) -> int:
    """Histogram bins whose observed count lies outside the replicated counts' 95% band."""
    lo, hi = np.percentile(ppc["replicated_counts"], [2.5, 97.5], axis=0)
    return int(((ppc["observed_counts"] < lo) | (ppc["observed_counts"] > hi)).sum())


@pytest.fixture(scope="module")
def style_tie_log():
    return ba.simulate(n_users=600, n_models=6, casual_share=0.3, length_bias=0.85, style_bias=0.8, tie_nu=0.5,
                       casual_tie_rate=0.1, seed=1)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_per_user_ppcs_replicate_the_style_term(style_tie_log, variant):
    """The per-user agreement and tie-rate checks replicate attentive labels at ``s_a - s_b + delta' x`` (Davidson's
    ``d`` too) when the fit has a style term. Measured (seed 1, two-class / continuous): mean agreement observed
    0.797, replicated 0.796 / 0.800 (0.759 / 0.768 before, without the term), 0 / 1 of 20 histogram bins outside
    the 95% band (7 / 5 before); mean tie rate 0.1225 observed, 0.124 replicated (0.140 before), 0 of 10 bins
    outside (2 before)."""
    from bayes_annot.plotting import ppc_agreement, ppc_tie_rates

    result = _fit(style_tie_log, variant=variant, style_covariates="auto")
    agree = ppc_agreement(result, n_rep=200, seed=0)
    assert abs(agree["observed"].mean() - agree["replicated"].mean()) < 0.01
    assert _bins_outside(agree) <= 2
    lo, hi = np.percentile(agree["low_share_replicated"], [2.5, 97.5])
    assert lo <= agree["low_share_observed"] <= hi
    ties = ppc_tie_rates(result, n_rep=200, seed=0)
    assert ties["modelled"]
    assert abs(ties["observed"].mean() - ties["replicated"].mean()) < 0.005
    assert _bins_outside(ties) <= 1


def test_agreement_check_of_taste_classes_judges_each_user_by_their_classes():
    """With taste classes, a user's agreement is judged against their own class mixture (their posterior class
    weights, by one rule for the observed and every replicated data set), and the replicates draw each user's
    type among casual and the classes, so a fit of the right number of classes passes. Measured
    (simulate_tastes(400, 6, seed=3), 200 replicates): share of users agreeing at most 50%, C = 2: observed
    0.125, replicated 0.09-0.15 (it was 0.352 against 0.17-0.24: everybody judged by class 1's ranking);
    C = 1 misses the minority taste and is flagged (0.352 against 0.27-0.34)."""
    from bayes_annot.plotting import ppc_agreement
    from bayes_annot.tastes import simulate_tastes

    log = simulate_tastes(n_users=400, n_models=6, seed=3)
    ppcs = {c: ppc_agreement(_fit(log, tastes=c), n_rep=200, seed=0) for c in (1, 2)}
    for c, ppc in ppcs.items():
        lo, hi = np.percentile(ppc["low_share_replicated"], [2.5, 97.5])
        assert (lo <= ppc["low_share_observed"] <= hi) == (c == 2), (c, ppc["low_share_observed"], lo, hi)
    assert abs(ppcs[2]["observed"].mean() - ppcs[2]["replicated"].mean()) < 0.01
    assert ppcs[2]["observed"].mean() > ppcs[1]["observed"].mean() + 0.04  # the minority judged by its ranking
    assert _bins_outside(ppcs[2]) <= 2


@pytest.mark.parametrize("tastes", [1, 2], ids=["one-ranking", "taste-classes"])
def test_sampled_ppcs_replicate_with_each_draw(monkeypatch, tastes):
    """With method="nuts", each replicated data set uses one posterior draw's parameters, the style term's
    ``delta`` and the ties' ``nu`` included (they were the posterior means), and taste-class fits are replicated
    from the draws of every class's strengths and shares (a mocked sampler: the draws are the prior's). Shifting
    the draws of ``delta`` or ``nu`` while the summary's means stay moves the replicates."""
    import functools

    pm = pytest.importorskip("pymc")
    from pymc.testing import mock_sample

    from bayes_annot.plotting import ppc_agreement, ppc_tie_rates
    from bayes_annot.tastes import simulate_tastes

    log = simulate_tastes(n_users=80, n_models=4, style_bias=0.8, tie_nu=0.5, casual_tie_rate=0.1, seed=2,
                          labels_per_user=(3, 12))
    monkeypatch.setattr(pm, "sample", functools.partial(mock_sample, sample_stats={
        "diverging": lambda size: np.zeros(size, dtype=bool)}))
    result = _fit(log, tastes=tastes, method="nuts", draws=20, tune=5, chains=2, progress=False, casual_bins=3,
                  style_covariates="auto")
    assert result.sampled and result.ties_["mode"] == "model"
    checks = {"agreement": lambda: ppc_agreement(result, n_rep=40, seed=0)["replicated"],
              "bins": lambda: ppc_length_bins(result, n_rep=40, seed=0, min_labels=1)["replicated_median"].to_numpy(),
              "ties": lambda: ppc_tie_rates(result, n_rep=40, seed=0)["replicated"]}
    before = {name: check() for name, check in checks.items()}
    np.testing.assert_array_equal(before["agreement"], checks["agreement"]())  # seeded
    post = result.idata.posterior
    post["style_effect"] = post["style_effect"] + 3.0  # every draw prefers the longer answer much more
    for name in ("agreement", "bins"):
        assert not np.array_equal(before[name], checks[name](), equal_nan=True), name
    post["tie_nu"] = post["tie_nu"] * 20.0  # every draw ties far more often
    assert checks["ties"]().mean() > before["ties"].mean() + 0.1
