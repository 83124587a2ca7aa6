"""The faster paths of issue 15's update and many-models work give what the paths they replace gave."""

import numpy as np
import pytest
from scipy.special import log_expit

import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.fit import model_spec
from bayes_annot.local_em import em_estimates, em_state, run_block_em
from bayes_annot.pairs import (AttentiveTables, PairTable, attentive_table_pairs, bt_fit_cells,
                             fit_bradley_terry_pairs)
from bayes_annot.problem import block_quality_floor, build_problem, pair_counts, quality_floor


@pytest.mark.parametrize("n_models", [6, 90, 300])
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
    """The table is log_expit's bit for bit; the many-models path's tables (numpy log1p / exp,
    ``AttentiveTables(fast=True)``) equal it to a few units in the last place."""
    rng = np.random.default_rng(0)
    k = 50
    s = np.concatenate([rng.normal(0, 10, k - 4), [400.0, -400.0, 0.0, -0.0]])
    table = PairTable.dense(k)
    d = s[table.a] - s[table.b]
    expected = np.stack([log_expit(-d), log_expit(d)], axis=-1).ravel()
    assert np.array_equal(attentive_table_pairs(s, table.a, table.b), expected)
    assert np.array_equal(AttentiveTables(table.a, table.b).table(s), expected)  # the small-model path's arithmetic
    fast = AttentiveTables(table.a, table.b, fast=True).table(s)
    assert np.all(np.abs(fast - expected) <= 4 * np.spacing(np.abs(expected)))


def test_fast_tables_reuse_memory_only_when_nobody_holds_the_old_table():
    """``AttentiveTables(fast=True)`` writes a new table over an evicted one: every table it returns equals a
    fresh cache's (bit for bit), and a table a caller still holds (itself or a view) keeps its values."""
    rng = np.random.default_rng(3)
    k = 120
    table = PairTable.from_labels(rng.integers(0, k, 3000), rng.integers(0, k, 3000), k)[0]
    cache = AttentiveTables(table.a, table.b, size=2, fast=True)
    points = [rng.normal(0, 2, k) for _ in range(8)]
    held = cache.table(points[0])
    held_view = cache.table(points[1])[:, None]
    kept = (held.copy(), held_view.copy())
    for s in points[2:] + points[:2]:
        out = cache.table(s)
        assert not out.flags.writeable
        assert np.array_equal(out, AttentiveTables(table.a, table.b, fast=True).table(s))
    assert np.array_equal(held, kept[0]) and np.array_equal(held_view, kept[1])


def test_em_start_solve_through_the_cached_tables_equals_the_sparse_solver():
    """``bt_fit_cells`` (EM's start above 64 models) reaches ``fit_bradley_terry_pairs``' optimum (1e-10), on a
    connected graph and on one in two parts."""
    for connected in (True, False):
        rng = np.random.default_rng(4)
        k, n = 300, 9000
        a = rng.integers(0, k, n)
        b = (a + rng.integers(1, k, n)) % k
        if not connected:
            b = np.where(a < k // 2, rng.integers(0, k // 2, n), rng.integers(k // 2, k, n))
            a, b = a[a != b], b[a != b]
        pairs, index = PairTable.from_labels(a, b, k)
        cells = np.bincount(2 * index + (rng.random(a.shape[0]) < 0.6), minlength=2 * pairs.n_pairs).astype(float)
        expected = fit_bradley_terry_pairs(pairs, cells[1::2], cells[0::2], 3.0, method="sparse")
        np.testing.assert_allclose(bt_fit_cells(pairs, cells, 3.0), expected, rtol=0, atol=1e-10)


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


@pytest.mark.parametrize("n_users", [50, 3000])
def test_cell_ordered_passes_equal_the_csr_passes(n_users):
    """Above 64 models a block's passes go through its entries in cell order (``Block.entries_by_cell``): the cell
    table of per-user weights is the CSR transpose's bit for bit (each cell's terms in user order both ways), the
    per-user sums of a table equal the CSR mat-vec's to rounding (added in cell order instead of entry order);
    with repeated (user, cell) entries and users without labels."""
    from bayes_annot.block_em import make_block

    rng = np.random.default_rng(5)
    k, n = 200, 20000
    user = rng.integers(0, n_users, n)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    pairs, index = PairTable.from_labels(a, b, k)
    cell = (2 * index + (rng.random(n) < 0.5)).astype(np.int32)
    usable = rng.random(n) < 0.9
    block = make_block(user, usable, k, cell=cell[usable], users=np.arange(n_users + 7), pairs=pairs)
    assert block.cell_ordered_passes
    weights, table = rng.random(n_users + 7), rng.normal(0, 3, block.n_cells)
    csr = block.matrix()
    assert np.array_equal(block.cell_sums_by_user(weights), csr.T @ weights)
    assert np.array_equal(block.cell_totals, csr.T @ np.ones(n_users + 7))
    np.testing.assert_allclose(block.user_table_sums(table), csr @ table, rtol=1e-13, atol=1e-13)
    cells, users = block.entries_by_cell()
    assert np.all(np.diff(cells) >= 0) and np.array_equal(np.sort(cells), np.sort(block.cell))


def test_pair_keys_unique_inverse_equals_numpy_unique():
    """``pairs._unique_inverse`` (one sort of packed key and position) is ``np.unique(return_inverse=True)``, also
    where the keys are too large to pack (``np.unique`` itself) and for one key."""
    from bayes_annot.pairs import _unique_inverse

    rng = np.random.default_rng(6)
    for n, high in [(50_000, 10**8), (3000, 40), (1, 5), (2000, 2**55)]:
        key = rng.integers(0, high, n).astype(np.int64)
        keys, inverse = _unique_inverse(key)
        expected_keys, expected_inverse = np.unique(key, return_inverse=True)
        assert np.array_equal(keys, expected_keys) and np.array_equal(inverse, expected_inverse)
