"""Taste classes (issue 9): taste is not noise.

Scenario of the issue: 600 users, 8 models, 30% casual, 18% of all users
(about 26% of the attentive ones) consistently follow the reversed ranking.
Known behaviour asserted here: the one-ranking model (C = 1) calls the
minority casual (AUC of quality vs the true type about 0.76, minority mean
quality near 0); C = 2 keeps them (AUC about 0.97, minority mean quality
about 0.87).
"""

import itertools

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.datasets import load_real
from bayes_annot.block_em import run_class_em
from bayes_annot.em import UsableLabels, bradley_terry_objective, fit_bradley_terry, fit_bradley_terry_batch
from bayes_annot.problem import build_problem
from bayes_annot.pairs import fit_bradley_terry_classes, fit_bradley_terry_labels, fit_bradley_terry_pairs
from bayes_annot.metrics import auc
from bayes_annot.tastes import (
    casual_group_test,
    fit_tastes,
    heldout_folds,
    problem_from,
    problem_runner,
    select_tastes,
    simulate_tastes,
    taste_columns,
)

from .reference_em import reference_em


def _truth(log):
    users = log.groupby("user", observed=True)[["true_attentive", "true_taste"]].first()
    return users.true_attentive.to_numpy(), users.true_taste.to_numpy()


def _monotone(trace, rel=1e-10):
    trace = np.asarray(trace)
    return np.all(np.diff(trace) >= -rel * (1.0 + np.abs(trace[1:])))


@pytest.fixture(scope="module")
def minority_log():
    return simulate_tastes(n_users=600, n_models=8, casual_share=0.3, minority_share=0.18, seed=1)


@pytest.fixture(scope="module")
def minority_problem(minority_log):
    return problem_from(minority_log)


@pytest.fixture(scope="module")
def minority_fits(minority_problem):
    return {c: fit_tastes(minority_problem, c) for c in (1, 2)}


@pytest.fixture(scope="module")
def one_taste_problem():
    return problem_from(ba.simulate(n_users=600, n_models=8, casual_share=0.3, seed=12))


@pytest.fixture(scope="module")
def topmodel_problem():
    problem, _ = build_problem(prepare(load_real("topmodel2007")))
    return problem


# --------------------------------------------------------------------------- C = 1 is the two-class model


@pytest.mark.parametrize("q_fixed", [None, 0.5])
def test_one_taste_reproduces_the_two_class_em(minority_log, minority_problem, q_fixed):
    res = fit_tastes(minority_problem, 1, q_fixed=q_fixed)
    assert res.n_iter == ba.fit(minority_log, q=q_fixed).estimates.n_iter  # the package's two-class EM
    em = reference_em(minority_problem, q_fixed=q_fixed, tol=-1.0, max_iter=res.n_iter)  # its textbook form
    assert np.max(np.abs(res.quality - em.quality)) < 1e-8
    assert np.max(np.abs(res.strengths[0] - em.strengths)) < 1e-8
    assert abs(res.pi - em.pi) < 1e-8 and abs(res.q - em.q) < 1e-8
    assert abs(res.loglik - em.loglik) < 1e-8 * (1 + abs(em.loglik))
    assert np.max(np.abs(np.asarray(res.loglik_trace) - em.loglik_trace)) < 1e-6
    assert np.array_equal(res.informative, em.informative)
    np.testing.assert_allclose(res.p_taste[:, 0], res.quality)
    assert res.starts_agreed == res.n_starts == 1


def test_one_taste_reproduces_the_two_class_em_real_and_sparse(topmodel_problem):
    res = fit_tastes(topmodel_problem, 1)
    em = reference_em(topmodel_problem, tol=-1.0, max_iter=res.n_iter)
    assert np.max(np.abs(res.quality - em.quality)) < 1e-8
    # a user without labels and an uninformative user (same-strength pair only) get the population level
    rng = np.random.default_rng(0)
    n = 400
    a = rng.integers(0, 3, n).astype(np.int32)
    b = ((a + 1) % 3).astype(np.int32)
    user = rng.integers(0, 40, n).astype(np.int32)
    user[user == 39] = 38
    problem = UsableLabels(user=user, model_a=a, model_b=b, choice_a=rng.integers(0, 2, n).astype(np.int8),
                        n_users=40, n_models=3)
    res = fit_tastes(problem, 1)
    em = reference_em(problem, tol=-1.0, max_iter=res.n_iter)
    assert np.max(np.abs(res.quality - em.quality)) < 1e-8


def test_known_strengths_stay_one_class():
    log = ba.simulate(n_users=50, known_mu=0.7, seed=0)
    problem, mode = build_problem(prepare(log))
    assert mode.startswith("known")
    with pytest.raises(ValueError, match="learned strengths"):
        fit_tastes(problem, 2)
    with pytest.raises(ValueError):
        fit_tastes(problem_from(ba.simulate(n_users=20, seed=0)), 0)


# --------------------------------------------------------------------------- EM properties


def test_batch_bradley_terry_matches_single(minority_problem):
    runner = problem_runner(minority_problem)
    pairs, k = runner.pairs, minority_problem.n_models
    rng = np.random.default_rng(3)
    cells = runner.user_cells(rng.random((minority_problem.n_users, 3)))  # (2P, 3): per-user weighted labels
    w1, w0 = cells[1::2].T, cells[0::2].T
    batch = fit_bradley_terry_classes(pairs, w1, w0, 3.0, np.zeros((3, k)))  # batched dense Newton (K <= 64)
    t1, t0 = np.zeros((3, k, k)), np.zeros((3, k, k))
    t1[:, pairs.a, pairs.b], t0[:, pairs.a, pairs.b] = w1, w0
    for c in range(3):
        single = fit_bradley_terry(t1[c], t0[c], 3.0)
        assert np.max(np.abs(batch[c] - single)) < 1e-8
        sparse = fit_bradley_terry_pairs(pairs, w1[c], w0[c], 3.0, method="sparse")
        assert np.max(np.abs(sparse - single)) < 1e-10
        # the optimum: a finite-difference gradient of the objective vanishes there
        f = lambda s: bradley_terry_objective(s, t1[c], t0[c], 3.0)  # noqa: E731
        grad = [(f(batch[c] + h) - f(batch[c] - h)) / 2e-6 for h in np.eye(k) * 1e-6]
        assert np.max(np.abs(grad)) < 1e-5
    # from a poor start the batch still climbs every class's objective to the same optimum
    again = fit_bradley_terry_batch(t1, t0, 3.0, rng.normal(0, 3, (3, k)))
    assert np.max(np.abs(again - batch)) < 1e-8


@pytest.mark.parametrize("n_tastes", [2, 3])
def test_penalised_loglik_never_decreases(minority_problem, n_tastes):
    res = fit_tastes(minority_problem, n_tastes, n_starts=2, max_iter=300)
    assert _monotone(res.loglik_trace)
    # and from random starts, which wander further (the EM driver every fit runs)
    runner, k = problem_runner(minority_problem), minority_problem.n_models
    p = minority_problem
    s_bt = fit_bradley_terry_labels(p.model_a, p.model_b, p.choice_a, k, 3.0)
    rng = np.random.default_rng(7)
    perturbed = np.vstack([s_bt] + [rng.normal(0, 2, k) for _ in range(n_tastes - 1)])
    group = rng.integers(0, n_tastes, p.n_users)
    cells = runner.user_cells((group[:, None] == np.arange(n_tastes)).astype(float))  # each group's labels
    partition = fit_bradley_terry_classes(runner.pairs, cells[1::2].T, cells[0::2].T, 3.0, np.zeros((n_tastes, k)))
    shares = np.full(n_tastes, 0.6 / n_tastes)
    for s0 in (perturbed, partition):
        run = run_class_em(runner, k, shares, 0.5, s0, max_iter=300)
        assert _monotone(run.loglik_trace) and len(run.loglik_trace) > 5
    run = run_class_em(runner, k, shares, 0.5, perturbed, q_fixed=0.5, max_iter=300)
    assert _monotone(run.loglik_trace)
    assert run.q == 0.5


def test_result_shapes_ordering_and_columns(minority_fits):
    res = minority_fits[2]
    assert res.p_taste.shape == (600, 2) and res.strengths.shape == (2, 8)
    assert np.all(np.diff(res.shares) <= 0)  # label switching: ordered by share, largest first
    assert abs(res.shares.sum() + res.casual_share - 1.0) < 1e-12
    np.testing.assert_allclose(res.p_taste.sum(axis=1), res.quality, atol=1e-12)
    assert set(np.unique(res.taste)) <= {1, 2}
    assert 1 <= res.starts_agreed <= res.n_starts == 5
    assert res.converged
    users, models = taste_columns(res)
    assert list(users) == ["taste", "p_taste_1", "p_taste_2"]
    assert list(models) == ["strength_taste_1", "strength_taste_2"]
    params = res.parameters()
    assert {"pi", "q", "share_taste_1", "share_taste_2", "mean_quality"} <= set(params)


def test_seeded_starts_are_reproducible(minority_problem):
    a = fit_tastes(minority_problem, 2, n_starts=2, seed=4, tol=1e-7)
    b = fit_tastes(minority_problem, 2, n_starts=2, seed=4, tol=1e-7)
    assert a.start_logliks == b.start_logliks
    np.testing.assert_array_equal(a.quality, b.quality)


# --------------------------------------------------------------------------- the scenario


def test_one_ranking_fails_on_minority_taste(minority_log, minority_fits):
    """Known behaviour of C = 1 (documented, asserted): the minority is called casual."""
    attentive, taste = _truth(minority_log)
    res = minority_fits[1]
    assert auc(res.quality, attentive) < 0.85
    assert res.quality[taste == 2].mean() < 0.1


def test_two_tastes_keep_the_minority(minority_log, minority_fits):
    attentive, taste = _truth(minority_log)
    res = minority_fits[2]
    assert auc(res.quality, attentive) >= 0.95
    assert res.quality[taste == 2].mean() >= 0.8
    assert abs(res.casual_share - 0.3) < 0.06
    # taste recovery among attentive users, up to label switching
    m = attentive
    accuracy = max(np.mean(res.taste[m] == np.array(p)[taste[m] - 1]) for p in itertools.permutations([1, 2]))
    assert accuracy >= 0.95
    # class 1 (largest) is the majority ranking, class 2 the reversed one
    truth = np.linspace(1.5, -1.5, 8)
    assert np.corrcoef(res.strengths[0], truth)[0, 1] > 0.95
    assert np.corrcoef(res.strengths[1], truth)[0, 1] < -0.95


def test_heldout_folds_spread_each_user(minority_problem):
    folds = heldout_folds(minority_problem, 5, seed=0)
    counts = np.zeros((minority_problem.n_users, 5), int)
    np.add.at(counts, (minority_problem.user, folds), 1)
    assert np.all(counts.max(axis=1) - counts.min(axis=1) <= 1)
    np.testing.assert_array_equal(folds, heldout_folds(minority_problem, 5, seed=0))


def test_select_tastes_picks_two_on_minority_scenario(minority_problem):
    sel = select_tastes(minority_problem, max_tastes=3)
    assert sel.chosen == 2
    assert sel.chosen_bic == 2
    table = sel.table.set_index("n_tastes")
    assert table.loc[2, "heldout_loglik"] > table.loc[1, "heldout_loglik"] + 100
    assert table.loc[2, "chosen"] and "C = 2" in sel.message
    assert set(sel.fits) == {1, 2, 3}


def test_select_tastes_picks_one_on_one_taste_scenario(one_taste_problem):
    sel = select_tastes(one_taste_problem, max_tastes=3)
    assert sel.chosen == 1
    assert "C = 1" in sel.message


def test_select_tastes_fold_fits_see_only_their_training_labels():
    """No cross-validation leak: each fold's fits start only from the fold's training labels (the
    full-data fit, which saw the held-out labels, used to be one more start of every fold fit, and won
    in some folds here). The held-out scores are those of fits of the training labels alone: with one
    start per fold, fit_tastes(train, C, n_starts=1) on each fold, scored by heldout_user_scores, to
    rounding."""
    from bayes_annot.tastes import heldout_user_scores, subproblem

    problem = problem_from(ba.simulate(n_users=200, n_models=5, labels_per_user=(5, 25), seed=3))
    table = select_tastes(problem, max_tastes=3, seed=0, fold_starts=1, tol=1e-6).table.set_index("n_tastes")
    folds = heldout_folds(problem, 5, seed=0)
    for c in (2, 3):
        oracle = 0.0
        for f in range(5):
            train, test = subproblem(problem, folds != f), subproblem(problem, folds == f)
            oracle += heldout_user_scores(train, test, fit_tastes(train, c, n_starts=1, seed=1 + f, tol=1e-6)).sum()
        assert abs(table.loc[c, "heldout_loglik"] - oracle) <= 1e-9 * abs(oracle), c


# --------------------------------------------------------------------------- casual-group diagnostic


def test_casual_group_test_taste_group(minority_problem, minority_fits):
    out = casual_group_test(minority_problem, minority_fits[1], n_sim=100, seed=0)
    assert out.verdict == "taste group"
    assert out.p_value <= 0.01
    assert out.rank_correlation < -0.9  # the flagged group follows the reversed ranking
    assert "taste group" in out.message


def test_casual_group_test_noise(one_taste_problem):
    out = casual_group_test(one_taste_problem, fit_tastes(one_taste_problem, 1), n_sim=100, seed=0)
    assert out.verdict == "noise"
    assert out.p_value > 0.05
    assert "noise" in out.message


# --------------------------------------------------------------------------- real data


def test_topmodel2007_tastes(topmodel_problem):
    """Topmodel2007 (192 judges, 15 pairs of 6 candidates): one ranking calls over half the judges casual."""
    called = {}
    for c in (1, 2):
        res = fit_tastes(topmodel_problem, c)
        called[c] = float(np.mean(res.quality < 0.5))
    assert 0.5 <= called[1] <= 0.65
    assert called[2] < called[1] - 0.15
    sel = select_tastes(topmodel_problem, max_tastes=3)
    assert sel.chosen >= 2


def test_fit_with_tastes_through_the_public_api():
    import bayes_annot as ba
    from bayes_annot.metrics import auc
    from bayes_annot.tastes import simulate_tastes

    log = simulate_tastes(n_users=400, n_models=8, casual_share=0.3, minority_share=0.2, seed=4)
    one = ba.fit(log)
    two = ba.fit(log, tastes=2)
    truth = log.groupby("user", observed=True)["true_attentive"].first()
    truth.index = truth.index.astype(str)
    q1 = one.users.set_index("user").loc[truth.index, "quality"]
    q2 = two.users.set_index("user").loc[truth.index, "quality"]
    assert auc(q2, truth) > auc(q1, truth) + 0.1
    assert {"taste", "p_taste_1", "p_taste_2"} <= set(two.users.columns)
    assert {"strength_taste_1", "strength_taste_2"} <= set(two.models.columns)
    np.testing.assert_allclose(two.users[["p_taste_1", "p_taste_2"]].sum(axis=1), two.users.quality, atol=1e-9)
    assert two.summary["tastes"]["n_tastes"] == 2


def test_tastes_rejected_where_unsupported():
    import bayes_annot as ba

    log = ba.simulate(n_users=50, known_mu=0.8, labels_per_user=10, seed=1)
    with pytest.raises(ba.InputError, match="known strengths"):
        ba.fit(log, tastes=2)
    with pytest.raises(ba.InputError, match="two-class"):
        ba.fit(log, tastes=2, variant="continuous")
