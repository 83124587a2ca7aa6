"""Ties in the likelihood (issue #14 item 2): the model layer's maths (Davidson, nu, t) checked numerically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_expit

from bayes_annot.likelihood import Priors
from bayes_annot.pairs import PairTable, fit_bradley_terry_pairs, fit_davidson_pairs, pair_model_derivatives
from bayes_annot.ties import (
    davidson_logprobs, davidson_objective_pairs, davidson_pair_terms, nu_objective, nu_step, tie_rate_step,
)


def _pairs(k=6, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.array([a * k + b for a in range(k) for b in range(k) if a != b])
    pairs = PairTable.from_keys(keys, k)
    p = pairs.n_pairs
    return pairs, rng.integers(0, 20, p).astype(float), rng.integers(0, 20, p).astype(float), \
        rng.integers(0, 8, p).astype(float), rng.normal(0, 1.5, k)


@pytest.mark.parametrize("nu", [0.0, 0.3, 2.5])
def test_davidson_probabilities_sum_to_one_and_nu0_is_bradley_terry(nu):
    d = np.linspace(-40, 40, 81)
    pa, pb, pt = davidson_logprobs(d, nu)
    assert np.allclose(np.exp(pa) + np.exp(pb) + np.exp(pt), 1.0, atol=1e-13)
    # the closed form of the module docstring (p = e^s): nu sqrt(pa pb) / (pa + pb + nu sqrt(pa pb))
    dd = d[30:50]
    ref_tie = nu * np.exp(dd / 2) / (np.exp(dd) + 1.0 + nu * np.exp(dd / 2))
    assert np.allclose(np.exp(pt[30:50]), ref_tie, rtol=1e-12, atol=1e-300)
    if nu == 0.0:
        assert np.allclose(pa, log_expit(d), atol=1e-13) and np.allclose(pb, log_expit(-d), atol=1e-13)


@pytest.mark.parametrize("nu", [0.0, 0.7, 4.0])
def test_davidson_pair_derivatives_match_finite_differences(nu):
    rng = np.random.default_rng(1)
    d = rng.normal(0, 3, 25)
    w1, w0, wt = rng.uniform(0, 5, (3, 25))
    _, g, c = davidson_pair_terms(d, w1, w0, wt, nu)
    h = 1e-5
    for i in range(d.shape[0]):
        def f(x):
            dx = d.copy()
            dx[i] = x
            return davidson_pair_terms(dx, w1, w0, wt, nu)[0]
        fd_g = (f(d[i] + h) - f(d[i] - h)) / (2 * h)
        dp, dm = d.copy(), d.copy()
        dp[i] += h
        dm[i] -= h
        fd_c = -(davidson_pair_terms(dp, w1, w0, wt, nu)[1][i] - davidson_pair_terms(dm, w1, w0, wt, nu)[1][i]) / (2 * h)
        assert fd_g == pytest.approx(g[i], rel=1e-6, abs=1e-7)
        assert fd_c == pytest.approx(c[i], rel=1e-6, abs=1e-8)
        assert c[i] > 0


def test_davidson_newton_gradient_and_hessian_in_strengths():
    pairs, w1, w0, wt, s = _pairs()
    nu, sigma = 0.8, 3.0
    a, b = pairs.a, pairs.b
    _, g, c = davidson_pair_terms(s[a] - s[b], w1, w0, wt, nu)
    grad, neg_hess, _ = pair_model_derivatives(s, a, b, g, c, sigma, dense=True)
    _, sparse_hess, _ = pair_model_derivatives(s, a, b, g, c, sigma)
    assert np.allclose(sparse_hess.toarray(), neg_hess, atol=1e-12)
    h = 1e-5
    eye = np.eye(s.shape[0])

    def obj(x):
        return davidson_objective_pairs(x, a, b, w1, w0, wt, nu, sigma)

    fd_grad = np.array([(obj(s + h * e) - obj(s - h * e)) / (2 * h) for e in eye])
    assert np.allclose(fd_grad, grad, rtol=1e-6, atol=1e-6)
    fd_hess = np.array([[-(obj(s + h * ei + h * ej) - obj(s + h * ei - h * ej) - obj(s - h * ei + h * ej)
                           + obj(s - h * ei - h * ej)) / (4 * h * h) for ej in eye] for ei in eye])
    assert np.allclose(fd_hess, neg_hess, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_davidson_fit_is_the_optimum_and_reduces_to_bradley_terry(method):
    pairs, w1, w0, wt, _ = _pairs(k=7, seed=2)
    sigma = 3.0
    s = fit_davidson_pairs(pairs, w1, w0, wt, 0.6, sigma, method=method)
    _, g, c = davidson_pair_terms(s[pairs.a] - s[pairs.b], w1, w0, wt, 0.6)
    grad, _, _ = pair_model_derivatives(s, pairs.a, pairs.b, g, c, sigma, dense=True)
    assert np.max(np.abs(grad)) < 1e-8
    bt = fit_bradley_terry_pairs(pairs, w1, w0, sigma, method=method)
    assert np.allclose(fit_davidson_pairs(pairs, w1, w0, np.zeros_like(wt), 0.0, sigma, method=method), bt, atol=1e-9)


def test_nu_step_maximises_its_objective_and_matches_finite_differences():
    pairs, w1, w0, wt, s = _pairs(seed=3)
    d = s[pairs.a] - s[pairs.b]
    n, total = w1 + w0 + wt, float(wt.sum())
    priors = Priors()
    nu = nu_step(0.05, d, n, total, priors)
    lam = np.log(nu)
    h = 1e-4

    def f(x):
        return nu_objective(float(np.exp(x)), d, n, total, priors)

    assert abs((f(lam + h) - f(lam - h)) / (2 * h)) < 1e-5 * (1 + abs(f(lam)))  # a stationary point ...
    grid = np.linspace(lam - 3, lam + 3, 601)
    assert f(lam) >= max(f(x) for x in grid) - 1e-9  # ... and the maximum
    assert nu_objective(nu, d, n, total, priors) >= nu_objective(0.05, d, n, total, priors)


def test_tie_rate_step_is_the_beta_posterior_mode():
    priors = Priors(tie_rate_alpha=2.0, tie_rate_beta=2.0)
    t = tie_rate_step(30.0, 70.0, priors)
    assert t == pytest.approx(31.0 / 102.0)
    grid = np.linspace(0.01, 0.99, 9801)
    objective = 31 * np.log(grid) + 71 * np.log1p(-grid)
    assert abs(grid[np.argmax(objective)] - t) < 2e-4
