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


# --------------------------------------------------------------------------- fits through the public API

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402

import bayes_annot as ba  # noqa: E402
from bayes_annot.errors import InputError  # noqa: E402
from bayes_annot.metrics import auc  # noqa: E402

STRENGTHS = np.linspace(1.5, -1.5, 8)


def _nu_for(attentive_tie_share: float) -> float:
    """The Davidson ``nu`` whose attentive ties make up this share over the simulator's (uniform) pairs."""
    from scipy.optimize import brentq

    d = (STRENGTHS[:, None] - STRENGTHS[None, :])[~np.eye(8, dtype=bool)]
    return round(brentq(lambda v: np.mean(v / (2 * np.cosh(d / 2) + v)) - attentive_tie_share, 1e-6, 100.0), 4)


def _user_auc(result, log) -> float:
    truth = log.groupby("user", observed=True).true_attentive.first()
    return auc(result.users.set_index("user").loc[truth.index.astype(str), "quality"].to_numpy(), truth.to_numpy())


@pytest.mark.parametrize("t", [0.02, 0.45])
def test_recovery_of_nu_and_t_with_20_percent_ties(t):
    """~20% ties overall (30% casual users), casual tie rates 2% and 45%: nu and t within 10%, and quality
    separates attentive from casual users at least as well as ignoring ties."""
    nu = _nu_for((0.2 - 0.3 * t) / 0.7)
    log = ba.simulate(n_users=3000, n_models=8, casual_share=0.3, labels_per_user=(20, 60), tie_nu=nu,
                      casual_tie_rate=t, seed=11)
    assert 0.18 < (log.winner == "tie").mean() < 0.22
    result = ba.fit(log)
    assert result.ties_["mode"] == "model" and result.ties_["n_ties"] == int((log.winner == "tie").sum())
    assert result.ties_["nu"] == pytest.approx(nu, rel=0.10)
    assert result.ties_["t"] == pytest.approx(t, rel=0.10)
    assert result.summary["parameters"]["tie_nu"] == result.ties_["nu"]
    ignored = ba.fit(log, ties="ignore")
    assert ignored.ties_ == {"mode": "ignore", "n_ties": result.ties_["n_ties"]}
    assert _user_auc(result, log) >= _user_auc(ignored, log)


@pytest.mark.parametrize("model, tastes", [("two-class", 1), ("continuous", 1), ("two-class", 2)])
@pytest.mark.parametrize("accelerate", [False, True])
def test_em_objective_never_decreases_with_ties(model, tastes, accelerate):
    log = ba.simulate(n_users=400, n_models=6, casual_share=0.3, labels_per_user=(3, 25), quality=model,
                      tie_nu=0.8, casual_tie_rate=0.3, seed=4)
    result = ba.fit(log, variant=model, tastes=tastes, accelerate=accelerate, tol=1e-11, max_iter=300)
    assert result.ties_["mode"] == "model"
    trace = np.asarray(result.loglik_trace)
    assert trace.shape[0] > 3
    assert np.all(np.diff(trace) >= -1e-9 * (1 + np.abs(trace[1:])))
    if tastes == 2:
        assert result.summary["tastes"]["n_tastes"] == 2 and result.ties_["nu"] > 0


def test_continuous_recovers_nu_and_t():
    log = ba.simulate(n_users=2000, n_models=8, casual_share=0.3, labels_per_user=(20, 60), variant="continuous",
                      eta_tau=0.5, tie_nu=0.8, casual_tie_rate=0.3, seed=2)
    result = ba.fit(log, variant="continuous")
    assert result.ties_["nu"] == pytest.approx(0.8, rel=0.10)
    assert result.ties_["t"] == pytest.approx(0.3, rel=0.10)


def _tie_log(seed=3, n_users=500):
    log = ba.simulate(n_users=n_users, n_models=5, labels_per_user=(3, 25), tie_nu=0.7, casual_tie_rate=0.25,
                      seed=seed)
    log = log[["user", "model_a", "model_b", "winner"]].astype(str)
    # a tie (bothbad), a user who only declared ties and a same-model pair
    extra = pd.DataFrame({"user": ["u_tie", "u_tie", "u001", "u002"], "model_a": ["model_0", "model_1", "model_2", "model_3"],
                          "model_b": ["model_1", "model_2", "model_2", "model_4"],
                          "winner": ["tie", "tie (bothbad)", "model_a", "tie (bothbad)"]})
    return pd.concat([log, extra], ignore_index=True)


def test_ignore_is_the_model_without_tie_rows():
    """``ties="ignore"``: tie rows are counted and left out, exactly as the paper's model (a log without them)."""
    log = _tie_log()
    ignored = ba.fit(log, ties="ignore")
    decided = ba.fit(log[~log.winner.str.startswith("tie")])
    users = ignored.users.set_index("user").loc[decided.users.user]
    # to rounding (the tie-only user's empty row shifts the sums' order); the golden fixtures pin "ignore" exactly
    np.testing.assert_allclose(users.quality.to_numpy(), decided.users.quality.to_numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ignored.models.strength.to_numpy(), decided.models.strength.to_numpy(), atol=1e-12)
    for key, value in decided.summary["parameters"].items():
        assert ignored.summary["parameters"][key] == pytest.approx(value, rel=1e-12)
    assert set(ignored.summary["parameters"]) == set(decided.summary["parameters"])
    # a log without ties: the default is the paper's model
    assert decided.ties_ == {"mode": "ignore", "n_ties": 0}
    assert decided.summary["settings"]["ties"] == "auto"


def test_ties_are_never_kept_and_every_row_is_accounted_for(tmp_path):
    log = _tie_log()
    result = ba.fit(log)
    rows = result.rows
    assert len(rows) == len(log)
    tie = log.winner.str.startswith("tie") & (log.model_a != log.model_b)
    assert (rows.reason[tie] == "tie").all() and not rows.kept[tie].any()
    assert (rows.winner[tie] == log.winner[tie]).all()  # "tie (bothbad)" keeps its label
    assert result.summary["counts"]["ties"] == int(tie.sum()) == result.ties_["n_ties"]
    assert not result.kept_rows.winner.str.startswith("tie").any()
    assert result.users.set_index("user").loc["u_tie", "n_labels"] == 0


def test_update_equals_refit_with_ties():
    log = _tie_log(seed=5, n_users=600)
    old, new = log.iloc[: len(log) // 2], log.iloc[len(log) // 2:]
    updated = ba.fit(old, tol=1e-13).update(new, tol=1e-13)
    full = ba.fit(log, tol=1e-13)
    assert updated.ties_["mode"] == full.ties_["mode"] == "model"
    np.testing.assert_allclose(updated.users.quality, full.users.quality, atol=1e-6)
    np.testing.assert_allclose(updated.models.strength, full.models.strength, atol=1e-6)
    assert updated.ties_["nu"] == pytest.approx(full.ties_["nu"], abs=1e-6)
    assert updated.ties_["t"] == pytest.approx(full.ties_["t"], abs=1e-6)


def test_dask_equals_in_memory_with_ties(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    log = _tie_log(seed=7)
    folder = tmp_path / "log"
    folder.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(log)), 3)):
        log.iloc[chunk].to_parquet(folder / f"part-{i}.parquet", index=False)
    for model in ("two-class", "continuous"):
        # both fits run to tol=1e-13: at a looser tolerance each stops 1e-7 short of the optimum, and where it stops
        # follows the rounding of the partition sums (CI's machine: 1e-7 apart at tol=1e-9; here 9e-9)
        lazy = ba.fit(dd.read_parquet(str(folder / "*.parquet")), variant=model, tol=1e-13)
        memory = ba.fit(log, variant=model, tol=1e-13)
        assert lazy.ties_["mode"] == "model"
        np.testing.assert_allclose(lazy.users.quality, memory.users.quality, atol=1e-8)
        np.testing.assert_allclose(lazy.models.strength, memory.models.strength, atol=1e-8)
        assert lazy.ties_["nu"] == pytest.approx(memory.ties_["nu"], abs=1e-8)
        assert lazy.ties_["t"] == pytest.approx(memory.ties_["t"], abs=1e-8)


def test_settings_ties_cannot_model_are_refused_in_one_line():
    log = _tie_log()
    with pytest.raises(InputError, match="unknown ties mode 'foo'"):
        ba.fit(log, ties="foo")
    assert ba.fit(log, ties="model").ties_["mode"] == "model"
    assert ba.fit(log.assign(p_a=0.6), ties="model").ties_["mode"] == "model"  # known strengths model them too


def _run(*args):
    return subprocess.run([sys.executable, "-m", "bayes_annot", *map(str, args)], capture_output=True, text=True)


def test_cli_ties(tmp_path):
    path = tmp_path / "log.csv"
    _tie_log().to_csv(path, index=False)
    bad = _run("fit", path, "--out", tmp_path / "bad", "--ties", "foo")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown ties mode 'foo'" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert _run("fit", path, "--out", tmp_path / "o").returncode == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["ties"]["mode"] == "model" and summary["ties"]["nu"] > 0 and 0 < summary["ties"]["t"] < 1
    rows = pd.read_csv(tmp_path / "o" / "rows.csv")
    assert (rows.winner == "tie (bothbad)").sum() == 2
    assert (rows.reason[rows.winner.str.startswith("tie")] == "tie").all()
    assert _run("fit", path, "--out", tmp_path / "i", "--ties", "ignore").returncode == 0
    assert json.loads((tmp_path / "i" / "summary.json").read_text())["ties"]["mode"] == "ignore"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_numpy_pytensor_and_em_objective_agree_with_ties(variant):
    """One log-likelihood with ties: EM's reported objective = the numpy spec at EM's estimates, and the numpy
    spec = the PyMC model's (PyTensor) log density, unpenalised and in differences of the penalised one."""
    pytest.importorskip("pymc")
    from bayes_annot.data import prepare
    from bayes_annot.problem import build_problem
    from bayes_annot.pymc_model import build_model, model_loglik, numpy_loglik
    from bayes_annot.spec import BehaviourSpec

    log = _tie_log(seed=9, n_users=150)
    result = ba.fit(log, variant=variant)
    problem, _ = build_problem(prepare(log), ties=True)
    est = result.estimates
    params = {**est.parameters, "strength": est.strengths}
    assert numpy_loglik(problem, variant, params) == pytest.approx(est.loglik, abs=1e-8, rel=0)
    model = build_model(problem, BehaviourSpec(variant), marginal=True)
    rng = np.random.default_rng(0)
    points = [params] + [dict(params, strength=params["strength"] + rng.normal(0, 0.3, problem.n_models),
                              tie_nu=params["tie_nu"] * np.exp(rng.normal(0, 0.3)),
                              casual_tie_rate=float(np.clip(params["casual_tie_rate"] + rng.normal(0, 0.05), 0.01, 0.9)))
                         for _ in range(2)]
    for point in points:
        assert model_loglik(model, point, penalised=False) == pytest.approx(
            numpy_loglik(problem, variant, point, penalised=False), abs=1e-8, rel=0)
    diff_pt = model_loglik(model, points[1], penalised=True) - model_loglik(model, points[0], penalised=True)
    diff_np = numpy_loglik(problem, variant, points[1]) - numpy_loglik(problem, variant, points[0])
    assert diff_pt == pytest.approx(diff_np, abs=1e-8, rel=0) and abs(diff_np) > 1e-3
    if variant == "continuous":  # NUTS's form (each user's z sampled): the numpy per-user log-likelihood of
        # every draw (the log_likelihood group) = the model's y_user potential at that draw
        nuts = ba.fit(log, variant=variant, method="nuts", draws=3, tune=5, chains=1, seed=2, progress=False)
        assert nuts.ties_["mode"] == "model"
        nuts_model = build_model(problem, BehaviourSpec(variant))
        post, numpy_ll = nuts.idata.posterior, nuts.idata.log_likelihood["y_user"]
        for draw in range(3):
            at = {k: post[k].isel(chain=0, draw=draw).values for k in ("m", "tau", "q", "strength", "tie_nu",
                                                                       "casual_tie_rate", "z")}
            at["theta"] = at["m"] + at["tau"] * at.pop("z")
            np.testing.assert_allclose(model_loglik(nuts_model, at, per_user=True),
                                       numpy_ll.isel(chain=0, draw=draw).values, atol=1e-8, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_map_matches_em_with_ties(variant):
    pytest.importorskip("pymc")
    log = _tie_log(seed=12, n_users=300)
    em = ba.fit(log, variant=variant, tol=1e-12, max_iter=5000)
    mp = ba.fit(log, variant=variant, method="map")
    assert mp.ties_["mode"] == em.ties_["mode"] == "model"
    assert mp.ties_["nu"] == pytest.approx(em.ties_["nu"], abs=1e-4)
    assert mp.ties_["t"] == pytest.approx(em.ties_["t"], abs=1e-4)
    np.testing.assert_allclose(mp.models.strength, em.models.strength, atol=1e-4)
    np.testing.assert_allclose(mp.users.quality, em.users.quality, atol=1e-4)
    assert mp.summary["loglik"] == pytest.approx(em.summary["loglik"], abs=1e-3)


def _check_nuts_ties(nuts, em, em_tolerance: float) -> None:
    """NUTS with ties against EM on a log simulated with nu = 0.8, t = 0.3: both modelled, the posterior means of
    ``nu`` and ``t`` within ``em_tolerance`` (relative) of EM's and 15% of the truth, users' quality within 0.1
    of EM's, and R-hat of ``nu`` and ``t`` below 1.02."""
    import arviz as az

    assert nuts.ties_["mode"] == em.ties_["mode"] == "model"
    assert "tie_nu" in nuts.idata.posterior and "casual_tie_rate" in nuts.idata.posterior
    for key, truth in (("nu", 0.8), ("t", 0.3)):
        assert abs(nuts.ties_[key] - em.ties_[key]) < em_tolerance * truth
        assert abs(nuts.ties_[key] - truth) < 0.15 * truth
    q_em, q_nuts = em.users.set_index("user").quality, nuts.users.set_index("user").quality
    assert float((q_em - q_nuts).abs().max()) < 0.1
    assert float(az.rhat(nuts.idata, var_names=["tie_nu", "casual_tie_rate"]).to_array().max()) < 1.02


@pytest.mark.slow
def test_nuts_two_class_with_ties_agrees_with_em_and_recovers_nu_and_t():
    """NUTS samples the two-class model with ties (Davidson nu, casual rate t summed over user types): the
    posterior means of nu and t sit near the truth and near EM's, and users' quality near EM's."""
    log = ba.simulate(n_users=150, n_models=5, casual_share=0.3, labels_per_user=(10, 30), tie_nu=0.8,
                      casual_tie_rate=0.3, seed=5)
    em = ba.fit(log)
    nuts = ba.fit(log, method="nuts", draws=300, tune=300, chains=2, seed=1)
    _check_nuts_ties(nuts, em, em_tolerance=0.05)


@pytest.mark.slow
def test_nuts_continuous_with_ties_agrees_with_em_and_recovers_nu_and_t(monkeypatch):
    """NUTS samples the continuous model with ties (a tie mixes eta_u P_att(tie) + (1 - eta_u) t, as the
    continuous EM's grid pass): the posterior means of nu and t sit near the truth and near EM's estimates
    (EM's are the mode with the users' eta summed out on the grid, so a little further than two-class's),
    and users' quality near EM's."""
    log = ba.simulate(n_users=150, n_models=5, casual_share=0.3, labels_per_user=(10, 30), tie_nu=0.8,
                      casual_tie_rate=0.3, variant="continuous", seed=5)
    em = ba.fit(log, variant="continuous")
    nuts = ba.fit(log, variant="continuous", method="nuts", draws=300, tune=300, chains=2, seed=1)
    _check_nuts_ties(nuts, em, em_tolerance=0.12)
    # ties="ignore" is settled before sampling: a mocked sampler shows it (a real run cost a compile and 2 s)
    import functools

    import pymc as pm
    from pymc.testing import mock_sample

    monkeypatch.setattr(pm, "sample", functools.partial(mock_sample, sample_stats={
        "diverging": lambda size: np.zeros(size, dtype=bool)}))
    ignored = ba.fit(log, variant="continuous", method="nuts", ties="ignore", draws=20, tune=20, chains=1)
    assert ignored.ties_["mode"] == "ignore" and "tie_nu" not in ignored.idata.posterior
