"""Many models: sparse pair statistics and the sparse Bradley–Terry solver (issue 15, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot import pairs as pairs_mod
from bayes_annot.em import bradley_terry_derivatives, bradley_terry_objective
from bayes_annot.pairs import PairTable, bt_derivatives_pairs, bt_objective_pairs, fit_bradley_terry_pairs

ROOT = Path(__file__).resolve().parents[1]


def random_graph(seed: int, k: int, n: int, connected: bool = True):
    """Random pair weights over ``n`` labels of ``k`` models (optionally two disconnected halves)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    if not connected:  # models < k/2 only meet each other, the rest likewise
        half = k // 2
        low = a < half
        b = np.where(low, rng.integers(0, half, n), rng.integers(half, k, n))
        keep = a != b
        a, b = a[keep], b[keep]
    table, index = PairTable.from_labels(a, b, k)
    w1 = np.bincount(index, weights=rng.random(a.shape[0]) * (rng.random(a.shape[0]) < 0.7), minlength=table.n_pairs)
    w0 = np.bincount(index, weights=rng.random(a.shape[0]), minlength=table.n_pairs)
    return table, w1, w0


def dense_tables(table: PairTable, w1, w0):
    t1 = np.zeros((table.n_models,) * 2)
    t0 = np.zeros_like(t1)
    t1[table.a, table.b] = w1
    t0[table.a, table.b] = w0
    return t1, t0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connected", [True, False])
def test_sparse_solver_equals_dense(seed, connected):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(3, 60))
    n = int(rng.integers(k, 20 * k))
    sigma = float(rng.choice([0.5, 3.0, 20.0]))
    table, w1, w0 = random_graph(seed, k, n, connected)
    dense = fit_bradley_terry_pairs(table, w1, w0, sigma, method="dense")
    sparse = fit_bradley_terry_pairs(table, w1, w0, sigma, method="sparse")
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-10)
    t1, t0 = dense_tables(table, w1, w0)
    # objective, gradient and Hessian of the pair form equal the dense K x K form
    s = rng.normal(size=k)
    assert bt_objective_pairs(s, table.a, table.b, w1, w0, sigma) == pytest.approx(
        bradley_terry_objective(s, t1, t0, sigma), rel=1e-13, abs=1e-12)
    grad, neg_hess, _ = bt_derivatives_pairs(s, table.a, table.b, w1, w0, sigma)
    grad_d, neg_hess_d = bradley_terry_derivatives(s, t1, t0, sigma)
    np.testing.assert_allclose(grad, grad_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(neg_hess.toarray(), neg_hess_d, rtol=1e-12, atol=1e-12)
    # gradient by central finite differences on the sparse objective
    h = 1e-6
    fd = np.array([
        (bt_objective_pairs(s + h * e, table.a, table.b, w1, w0, sigma)
         - bt_objective_pairs(s - h * e, table.a, table.b, w1, w0, sigma)) / (2 * h)
        for e in np.eye(k)
    ])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)
    # the Hessian by finite differences of the gradient
    fd_h = np.array([(bt_derivatives_pairs(s + h * e, table.a, table.b, w1, w0, sigma)[0]
                      - bt_derivatives_pairs(s - h * e, table.a, table.b, w1, w0, sigma)[0]) / (2 * h) for e in np.eye(k)])
    np.testing.assert_allclose(-fd_h, neg_hess.toarray(), rtol=1e-5, atol=1e-5)
    # at the optimum the gradient vanishes
    g_opt = bt_derivatives_pairs(sparse, table.a, table.b, w1, w0, sigma)[0]
    assert np.abs(g_opt).max() < 1e-8


def test_sparse_solver_warm_start_and_isolated_models():
    table, w1, w0 = random_graph(7, 400, 900)  # some of the 400 models are never compared
    assert len(np.unique(np.concatenate([table.a, table.b]))) < 400
    cold = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="sparse")
    warm = fit_bradley_terry_pairs(table, w1, w0, 3.0, start=cold + 0.01, method="sparse")
    dense = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="dense")
    np.testing.assert_allclose(cold, dense, rtol=0, atol=1e-10)
    np.testing.assert_allclose(warm, dense, rtol=0, atol=1e-10)
    unseen = np.setdiff1d(np.arange(400), np.concatenate([table.a, table.b]))
    np.testing.assert_array_equal(cold[unseen], 0.0)


class _CountingOperator:
    """A matrix whose products are counted."""

    def __init__(self, matrix):
        self.matrix, self.products = matrix, 0

    def __matmul__(self, x):
        self.products += 1
        return self.matrix @ x


@pytest.mark.parametrize("connected", [True, False])
@pytest.mark.parametrize("rtol", [3e-2, 1e-3, 1e-10])
def test_conjugate_gradients_reach_their_tolerance_and_the_coarse_correction_saves_products(connected, rtol):
    """The sparse Newton solve (``pairs._cg_solve``) on the ridge Bradley–Terry Hessian of a random graph (1000
    models, 20000 labels; connected, or two halves that never meet): the residual is within ``rtol`` of the
    right-hand side, with and without the all-ones coarse correction (``ridge``); with it, no more products, and
    fewer from 1e-3 down when the strengths are off-centre (as in EM, where they drift together): their common
    shift, held by the ridge alone, is what Jacobi leaves slow (here 8 -> 5 products at 1e-3, 18 -> 14 at
    1e-10)."""
    table, w1, w0 = random_graph(11, 1000, 20_000, connected=connected)
    sigma = 3.0
    s = np.random.default_rng(1).normal(0.5, 1, table.n_models)  # off-centre: the prior pulls all back alike
    grad, matrix, diag = bt_derivatives_pairs(s, table.a, table.b, w1, w0, sigma)
    products = {}
    for name, ridge in (("jacobi", None), ("coarse", 1.0 / sigma**2)):
        operator = _CountingOperator(matrix)
        x = pairs_mod._cg_solve(operator, diag, grad, rtol, ridge)
        assert np.linalg.norm(matrix @ x - grad) <= rtol * np.linalg.norm(grad), name
        products[name] = operator.products
    assert products["coarse"] <= products["jacobi"]
    if rtol <= 1e-3:  # (3 products each at 3e-2 here: too few to gain one)
        assert products["coarse"] < products["jacobi"]


def test_pair_table_matches_dense_table():
    rng = np.random.default_rng(3)
    k = 30
    a = rng.integers(0, k, 500)
    b = (a + rng.integers(1, k, 500)) % k
    table, index = PairTable.from_labels(a, b, k)
    dense = np.zeros((k, k), dtype=np.int64)
    np.add.at(dense, (a, b), 1)
    np.testing.assert_array_equal(table.toarray(), dense)
    np.testing.assert_array_equal(np.asarray(table), dense)
    np.testing.assert_array_equal(table.sum(axis=1), dense.sum(axis=1))
    np.testing.assert_array_equal(table.sum(axis=0), dense.sum(axis=0))
    np.testing.assert_array_equal(table.keys[index], a * k + b)
    np.testing.assert_array_equal(table.index(a, b), index)
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    np.testing.assert_array_equal(table.components(), connected_components(csr_matrix(dense > 0), directed=False)[1])
    # union with renamed models (as an incremental update with new models)
    model_map = np.arange(k) * 2  # old model i -> code 2 i of 2 k models
    other, _ = PairTable.from_labels(np.array([1, 0]), np.array([3, 2]), 2 * k)
    merged, pos_old, pos_new = table.union(other, model_map=model_map)
    big = np.zeros((2 * k, 2 * k), dtype=np.int64)
    big[np.ix_(model_map, model_map)] = dense
    big[1, 3] += 1
    big[0, 2] += 1
    np.testing.assert_array_equal(merged.toarray(), big)
    np.testing.assert_array_equal(merged.keys[pos_old], model_map[table.a] * 2 * k + model_map[table.b])


@pytest.mark.parametrize("k", [30, 300, 3000])  # a lookup table over the K^2 keys (K^2 <= n or small), or a sort
def test_pair_table_from_labels_and_index_equal_a_sort(k):
    rng = np.random.default_rng(k)
    n = 20_000
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    w = rng.random(n)
    key = a * k + b
    keys, inverse = np.unique(key, return_inverse=True)
    table, index = PairTable.from_labels(a, b, k)
    np.testing.assert_array_equal(table.keys, keys)
    np.testing.assert_array_equal(index, inverse)
    np.testing.assert_array_equal(table.counts, np.bincount(inverse))
    weighted, _ = PairTable.from_labels(a, b, k, weights=w)
    np.testing.assert_array_equal(weighted.counts, np.bincount(inverse, weights=w))
    np.testing.assert_array_equal(table.index(a[::-1], b[::-1]), inverse[::-1])
    missing = np.setdiff1d(np.arange(k * k), keys)[:1]
    with pytest.raises(KeyError):
        table.index(np.r_[a[:5], missing // k], np.r_[b[:5], missing % k])
    with pytest.raises(KeyError):
        table.index(np.array([k]), np.array([0]))  # a model code outside the table


def test_pair_table_components_number_parts_as_scipy_does():
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    for _ in range(200):
        k, n = int(rng.integers(1, 60)), int(rng.integers(0, 80))
        a, b = rng.integers(0, k, n), rng.integers(0, k, n)
        table, _ = PairTable.from_labels(a, b, k)
        expected = connected_components(csr_matrix((np.ones(n), (a, b)), shape=(k, k)), directed=False)[1]
        np.testing.assert_array_equal(table.components(), expected)
    order = rng.permutation(3000)  # one long path, visited in random order
    table, _ = PairTable.from_labels(order[:-1], order[1:], 3000)
    assert not table.components().any()


def sparse_log(n_rows: int, n_models: int, n_users: int, seed: int = 0, connected: bool = True) -> pd.DataFrame:
    """A log where each model is seen a few times (random pairs, two-class users)."""
    rng = np.random.default_rng(seed)
    strengths = rng.normal(0.0, 1.0, n_models)
    user = rng.integers(0, n_users, n_rows)
    a = rng.integers(0, n_models, n_rows)
    b = (a + rng.integers(1, n_models, n_rows)) % n_models
    if not connected:
        half = n_models // 2
        b = np.where(a < half, (a + rng.integers(1, half, n_rows)) % half,
                     half + (a - half + rng.integers(1, n_models - half, n_rows)) % (n_models - half))
    attentive = rng.random(n_users) < 0.7
    p = np.where(attentive[user], 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b]))), 0.5)
    choice = rng.random(n_rows) < p
    return pd.DataFrame({
        "user": user, "model_a": a, "model_b": b, "winner": np.where(choice, "model_a", "model_b"),
    })


def test_em_fit_sparse_path_equals_dense_path(monkeypatch):
    """A whole EM fit (250 models) gives the same numbers with the sparse and the dense Newton step."""
    log = sparse_log(6000, 250, 400, seed=1)
    sparse = ba.fit(log, tol=1e-13, accelerate=True)  # parameter tolerance 1e-11: the solvers, not the stopping rule
    monkeypatch.setattr(pairs_mod, "DENSE_MAX_MODELS", 10**6)
    dense = ba.fit(log, tol=1e-13, accelerate=True)
    np.testing.assert_allclose(sparse.models["strength"], dense.models["strength"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(sparse.users["quality"], dense.users["quality"], rtol=0, atol=1e-10)
    assert sparse.estimates.loglik == pytest.approx(dense.estimates.loglik, rel=1e-13)


def test_one_newton_step_m_steps_reach_the_fully_solved_fit(monkeypatch):
    """10^4 models: EM with one Newton step per strengths M-step (ECM, the default above 64 models) never lowers
    the objective and ends within 1e-6 of a tight-tolerance fit whose M-steps are solved to convergence."""
    log = sparse_log(100_000, 10_000, 10_000, seed=7)
    fast = ba.fit(log)
    trace = np.asarray(fast.loglik_trace)
    assert len(trace) > 3 and fast.estimates.converged
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    from bayes_annot import block_em

    monkeypatch.setattr(block_em, "uses_sparse_solve", lambda n_models: False)  # every M-step solved to convergence
    reference = ba.fit(log, tol=1e-12)
    np.testing.assert_allclose(fast.models["strength"], reference.models["strength"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.users["quality"], reference.users["quality"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant, accelerate", [("two-class", False), ("continuous", True)])
def test_em_with_one_step_m_steps_never_lowers_the_objective(monkeypatch, variant, accelerate):
    """One-step M-steps, plain EM (no SQUAREM steps to reject; the continuous variant needs SQUAREM to converge in
    1000 iterations): every iteration's objective is at least the last one's, and the fit equals the fit with
    fully solved M-steps under the same stopping rule (1e-6)."""
    log = sparse_log(8_000, 150, 800, seed=8)
    fast = ba.fit(log, variant=variant, accelerate=accelerate)
    trace = np.asarray(fast.loglik_trace)
    assert len(trace) > 10 and fast.estimates.converged
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    from bayes_annot import block_em

    monkeypatch.setattr(block_em, "uses_sparse_solve", lambda n_models: False)
    full = ba.fit(log, variant=variant, accelerate=accelerate)
    np.testing.assert_allclose(fast.models["strength"], full.models["strength"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.users["quality"], full.users["quality"], rtol=0, atol=1e-6)


def test_newton_step_never_lowers_the_objective_and_iterates_to_the_optimum():
    """Repeated one-step M-steps (:func:`bt_newton_step`) climb the ridge Bradley–Terry objective to the sparse
    solver's optimum (1e-10), each step from any start (zeros, or far off) at least as high as the last."""
    table, w1, w0 = random_graph(3, 400, 6000)
    cells = np.empty(2 * table.n_pairs)
    cells[1::2], cells[0::2] = w1, w0
    optimum = fit_bradley_terry_pairs(table, w1, w0, 3.0, method="sparse")
    rng = np.random.default_rng(0)
    for start in (np.zeros(table.n_models), rng.normal(0, 5, table.n_models)):
        s, values = start, [bt_objective_pairs(start, table.a, table.b, w1, w0, 3.0)]
        for _ in range(30):
            s = pairs_mod.bt_newton_step(table, cells, 3.0, s, rtol=1e-3)
            values.append(bt_objective_pairs(s, table.a, table.b, w1, w0, 3.0))
        assert np.all(np.diff(values) >= -1e-12 * np.abs(values[1:]))
        np.testing.assert_allclose(s, optimum, rtol=0, atol=1e-10)


def test_fit_with_2000_models():
    log = sparse_log(40_000, 2000, 3000, seed=2, connected=False)
    result = ba.fit(log)
    assert len(result.models) == 2000
    assert np.isfinite(result.models["strength"]).all()
    assert result.summary["comparison_graph_components"] == 2
    assert result.models["n_labels"].sum() == 2 * 40_000
    # update with rows adding new models and new pairs: equal to a refit of all rows
    extra = sparse_log(2_000, 2100, 3000, seed=3)
    extra["user"] += 10**6  # new users
    updated = result.update(extra)
    refit = ba.fit(pd.concat([log, extra], ignore_index=True))
    np.testing.assert_array_equal(updated.pair_counts.toarray(), refit.pair_counts.toarray())
    merged = updated.models.set_index("model")["strength"]
    np.testing.assert_allclose(merged.loc[refit.models["model"]].to_numpy(), refit.models["strength"].to_numpy(),
                               rtol=0, atol=1e-6)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_many_models import sparse_log
    import bayes_annot as ba
    log = sparse_log({rows}, {models}, {users}, seed=5, connected={connected})
    t = time.perf_counter()
    result = ba.fit(log)
    seconds = time.perf_counter() - t
    print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       "models": len(result.models), "components": result.summary["comparison_graph_components"]}}))
""")


def run_memory_fit(rows: int, models: int, users: int, connected: bool = True) -> dict:
    """Fit a sparse log in a fresh interpreter; its time and peak RSS."""
    script = MEMORY_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), rows=rows, models=models, users=users,
                                  connected=connected)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_bounded_fit_with_200k_models():
    """2 x 10^5 models on a sparse log (each model seen ~2 times): no K^2 memory (a dense table would need 320 GB)."""
    info = run_memory_fit(200_000, 200_000, 20_000, connected=True)
    assert info["models"] > 150_000  # models drawn for no label are not in the vocabulary
    assert info["peak_rss_mb"] < 2048, info
