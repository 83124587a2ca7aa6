"""The faster paths of issue 15's update and many-models work give what the paths they replace gave."""

import numpy as np
import pytest
from scipy.special import log_expit

import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.fit import model_spec
from bayes_annot.local_em import em_estimates, em_state, run_block_em
from bayes_annot.pairs import PairTable, attentive_table_pairs, fit_bradley_terry_pairs
from bayes_annot.problem import block_quality_floor, build_problem, pair_counts, quality_floor


@pytest.mark.parametrize("n_models", [6, 90])
def test_block_quality_floor_equals_the_floor_from_the_labels(n_models):
    """An update's no-verdict floor, from the EM block's cell counts, is the per-label one (1e-12)."""
    log = ba.simulate(n_users=300, n_models=n_models, casual_share=0.3, labels_per_user=(1, 12), seed=3)
    prepared = prepare(log)
    problem, _ = build_problem(prepared)
    state = em_state(prepared, problem, pair_counts(prepared), mu=None, strong_model=None, use_p_a=True, casual=None)
    em = run_block_em(state.block, problem, model_spec(), tol=1e-9, max_iter=200, start=None, accelerate=False)
    estimates = em_estimates(em, "two-class", None)
    expected = quality_floor(problem, estimates)
    got = block_quality_floor(estimates, state.block, prepared.n_users)
    assert expected is not None and got is not NotImplemented
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    continuous = em_estimates(run_block_em(state.block, problem, model_spec(variant="continuous"), tol=1e-6,
                                           max_iter=50, start=None, accelerate=True), "continuous", None)
    assert block_quality_floor(continuous, state.block, prepared.n_users) is None  # as quality_floor


def test_attentive_table_is_the_two_log_sigmoids_bit_for_bit():
    rng = np.random.default_rng(0)
    k = 50
    s = np.concatenate([rng.normal(0, 10, k - 4), [400.0, -400.0, 0.0, -0.0]])
    table = PairTable.dense(k)
    d = s[table.a] - s[table.b]
    expected = np.stack([log_expit(-d), log_expit(d)], axis=-1).ravel()
    assert np.array_equal(attentive_table_pairs(s, table.a, table.b), expected)


def test_inexact_sparse_newton_reaches_the_exact_optimum_from_a_warm_start():
    """The sparse solve's loose first CG solves (inexact Newton) end at the optimum of exact solves."""
    rng = np.random.default_rng(1)
    k, n = 400, 20000
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    table, index = PairTable.from_labels(a, b, k)
    s_true = rng.normal(0, 1, k)
    choice = rng.random(n) < 1 / (1 + np.exp(-(s_true[a] - s_true[b])))
    cells = np.bincount(2 * index + choice, minlength=2 * table.n_pairs).astype(float)
    w1, w0 = cells[1::2], cells[0::2]
    dense = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="dense")
    cold = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="sparse")
    warm = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="sparse", start=dense + rng.normal(0, 1e-3, k))
    np.testing.assert_allclose(cold, dense, rtol=0, atol=1e-10)
    np.testing.assert_allclose(warm, dense, rtol=0, atol=1e-10)
