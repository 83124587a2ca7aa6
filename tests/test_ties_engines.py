"""Ties in every engine (issues #13, #14): taste-class choice and held-out scores, known strengths, MAP / NUTS
with taste classes, and tastes="auto" on Dask, each checked against EM or the simulated truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.evaluate import heldout_loglik
from bayes_annot.problem import build_problem
from bayes_annot.tastes import (
    fit_tastes, heldout_folds, select_tastes, simulate_tastes, subproblem, taste_loglik,
)

COLUMNS = ["user", "model_a", "model_b", "winner"]


def _taste_tie_log(n_users=300, seed=1, **kw):
    """A reversed-taste minority (18%) and ties: Davidson nu = 0.8 for attentive users, casual tie rate 0.3."""
    kw = {"n_models": 5, "labels_per_user": (8, 30), "tie_nu": 0.8, "casual_tie_rate": 0.3, **kw}
    return simulate_tastes(n_users, seed=seed, **kw)[COLUMNS].astype(str)


def _fit(log, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ba.fit(log, **settings)


# --------------------------------------------------------------------------- (c), (d): taste classes choose with ties


def test_select_tastes_with_ties_chooses_two_classes():
    log = _taste_tie_log(n_users=200)
    problem, _ = build_problem(prepare(log), ties=True)
    selection = select_tastes(problem, max_tastes=2, seed=0)
    assert selection.chosen == 2
    fit2 = selection.fits[2]
    assert fit2.nu == pytest.approx(0.8, rel=0.15) and fit2.tie_rate == pytest.approx(0.3, rel=0.15)
    table = selection.table.set_index("n_tastes")
    assert table.loc[2, "heldout_loglik"] > table.loc[1, "heldout_loglik"] + 20
    # every label is scored held out once, the ties among them (the simulator draws no same-model pair)
    assert table.loc[2, "heldout_per_label"] == pytest.approx(table.loc[2, "heldout_loglik"] / len(log), rel=1e-12)


@pytest.mark.slow
def test_tastes_auto_models_ties_and_chooses_two_classes():
    log = _taste_tie_log(n_users=200)
    result = _fit(log, tastes="auto", max_tastes=2, seed=0)
    assert result.ties_["mode"] == "model"
    assert result.summary["taste_selection"]["chosen"] == 2 and result.summary["tastes"]["n_tastes"] == 2
    assert result.ties_["nu"] == pytest.approx(0.8, rel=0.15)
    assert result.ties_["t"] == pytest.approx(0.3, rel=0.15)


def test_taste_objective_with_ties_is_the_em_objective():
    """The numpy taste-class objective with ties (Davidson attentive, casual t, their priors) at EM's estimates
    equals EM's reported objective: one likelihood, in the EM passes and in the held-out score's type sums."""
    log = _taste_tie_log(n_users=200, seed=3)
    problem, _ = build_problem(prepare(log), ties=True)
    assert problem.n_ties > 0
    res = fit_tastes(problem, 2, n_starts=2, seed=0, tol=1e-10)
    assert res.nu is not None
    value = taste_loglik(problem, res.strengths, res.shares, res.q, ties=(res.nu, res.tie_rate))
    assert value == pytest.approx(res.loglik, abs=1e-7, rel=0)
    with pytest.raises(ValueError, match="ties"):
        taste_loglik(problem, res.strengths, res.shares, res.q)


def test_folds_deal_the_ties_and_subproblems_keep_them():
    log = _taste_tie_log(n_users=100, seed=4)
    problem, _ = build_problem(prepare(log), ties=True)
    folds = heldout_folds(problem, 5, seed=0)
    assert folds.shape == (problem.n_labels + problem.n_ties,)
    parts = [subproblem(problem, folds == f) for f in range(5)]
    assert sum(p.n_ties for p in parts) == problem.n_ties and sum(p.n_labels for p in parts) == problem.n_labels


def test_taste_heldout_scores_ties_with_the_model():
    """Held-out score with taste classes: the ties are predicted by the fitted nu and t, which beats the
    training tie rate (ties ignored) when casual users tie much more often than attentive ones."""
    log = _taste_tie_log(n_users=200, seed=5, casual_tie_rate=0.5, tie_nu=0.3)
    modelled = heldout_loglik(log, "two-class", seed=1, tastes=2)
    ignored = heldout_loglik(log, "two-class", seed=1, tastes=2, ties="ignore", with_ties=True)
    assert modelled["with_ties"] and ignored["with_ties"]
    assert modelled["n_heldout"] == ignored["n_heldout"]
    assert modelled["heldout_loglik"] > ignored["heldout_loglik"] + 20
