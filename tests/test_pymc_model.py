"""The PyMC back end: same likelihood as numpy/EM, MAP = EM, NUTS diagnostics and coverage, LOO comparison."""

import functools
import json
import sys

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.errors import FitWarning, InputError
from bayes_annot.problem import build_problem
from bayes_annot.pymc_model import build_model, model_loglik, numpy_loglik, pytensor_loglik, relabel_by_share
from bayes_annot.spec import BehaviourSpec
from bayes_annot.tastes import fit_tastes, problem_from, simulate_tastes

pm = pytest.importorskip("pymc")
az = pytest.importorskip("arviz")


def _log(known: bool, seed: int = 3):
    if known:
        log = ba.simulate(n_users=60, known_mu=0.75, labels_per_user=(2, 12), tie_rate=0.1, seed=seed)
    else:
        log = ba.simulate(n_users=60, n_models=5, labels_per_user=(2, 12), tie_rate=0.1, seed=seed)
    # one extra user whose only label is a tie: in the data, not in the likelihood
    extra = log.iloc[:1].copy()
    extra["user"] = "zz_tie_only"
    extra["winner"] = "tie"
    import pandas as pd

    return pd.concat([log.astype({"user": str, "winner": str}), extra.astype({"user": str, "winner": str})])


#: How the attentive strengths enter: learned, a known ``p_a`` column, or the paper's global ``mu``.
STRENGTHS = ("learned", "p_a", "mu")
MU_SETTINGS = dict(mu=0.7, strong_model="model_0")


def _strength_settings(strengths: str) -> dict:
    return MU_SETTINGS if strengths == "mu" else {}


def _problem(strengths: str, seed: int = 3):
    problem, _ = build_problem(prepare(_log(strengths == "p_a", seed)), **_strength_settings(strengths))
    assert np.bincount(problem.user, minlength=problem.n_users).min() == 0
    assert problem.learned == (strengths == "learned")
    return problem


def _random_params(problem, rng, n_tastes: int = 1):
    params = {
        "pi": rng.uniform(0.1, 0.9),
        "q": rng.uniform(0.2, 0.8),
        "strength": rng.normal(0.0, 1.0, problem.n_models),
        "m": rng.normal(0.5, 1.0),
        "tau": rng.uniform(0.5, 2.0),
    }
    if n_tastes > 1:
        params["strength"] = rng.normal(0.0, 1.0, (n_tastes, problem.n_models))
        params["shares"] = rng.dirichlet(np.full(n_tastes + 1, 3.0))
    return params


# every variant x strengths x q combination of the one-class model, and C = 2 taste classes
# (two-class, learned strengths only: the others refuse taste classes, tested below)
COMBOS = [
    (variant, strengths, q_fixed, 1)
    for variant in ("two-class", "continuous")
    for strengths in STRENGTHS
    for q_fixed in (None, 0.4)
] + [("two-class", "learned", q_fixed, 2) for q_fixed in (None, 0.4)]


# --------------------------------------------------------------------------- (1) one likelihood, two back ends


@functools.lru_cache(maxsize=None)
def _normal_error(sigma: float) -> float:
    """PyMC's Normal(0, sigma) log-density at 0 minus numpy's (each ``.eval()`` compiles a function: once per sigma)."""
    from bayes_annot.likelihood import log_normal_pdf

    return float(pm.logp(pm.Normal.dist(0.0, sigma), 0.0).eval()) - float(log_normal_pdf(0.0, 0.0, sigma))


@functools.lru_cache(maxsize=None)
def _beta_error() -> float:
    from bayes_annot.likelihood import log_beta_pdf

    return float(pm.logp(pm.Beta.dist(2.0, 2.0), 0.5).eval()) - float(log_beta_pdf(0.5, 2.0, 2.0))


@functools.lru_cache(maxsize=None)
def _half_normal_error(sigma: float) -> float:
    from bayes_annot.likelihood import log_half_normal_pdf

    return float(pm.logp(pm.HalfNormal.dist(sigma), 1.0).eval()) - float(log_half_normal_pdf(1.0, sigma))


@functools.lru_cache(maxsize=None)
def _dirichlet_error(conc: tuple) -> float:
    from scipy.stats import dirichlet

    x = np.full(len(conc), 1.0 / len(conc))
    return float(pm.logp(pm.Dirichlet.dist(np.array(conc)), x).eval()) - float(dirichlet.logpdf(x, np.array(conc)))


def _pymc_constant_error(problem, variant, q_fixed, n_tastes=1):
    """PyMC rounds the normalising constants of Normal (log sqrt(2 pi)) and Beta (gammaln) by ~2e-8.

    Measured once per distribution at a fixed reference value: a constant, the
    same at every parameter value, so the value-dependent part is still
    compared to 1e-8.
    """
    priors = ba.Priors()
    beta = _beta_error()
    error = (q_fixed is None) * beta
    if n_tastes > 1:
        error += _dirichlet_error(tuple(np.r_[priors.pi_beta, np.full(n_tastes, priors.pi_alpha)].tolist()))
    elif variant == "two-class":
        error += beta
    if problem.learned:
        error += n_tastes * problem.n_models * _normal_error(priors.strength_sigma)
    if variant == "continuous":  # m and tau (the users' z_u are summed out)
        error += _normal_error(priors.eta_m_sigma)
        error += _half_normal_error(priors.eta_tau)
    return error


@pytest.mark.parametrize("variant,strengths,q_fixed,n_tastes", COMBOS)
def test_pytensor_equals_numpy_at_random_parameters(variant, strengths, q_fixed, n_tastes, rng):
    problem = _problem(strengths)
    spec = BehaviourSpec(variant, n_tastes, "learned" if problem.learned else "known", q=q_fixed)
    model = build_model(problem, spec, marginal=True)
    offset = _pymc_constant_error(problem, variant, q_fixed, n_tastes)
    values = []
    for _ in range(3):
        params = _random_params(problem, rng, n_tastes)
        if q_fixed is not None:
            params["q"] = q_fixed
        # log-likelihood: equal to 1e-8
        expected = numpy_loglik(problem, variant, params, q_fixed=q_fixed, penalised=False)
        assert model_loglik(model, params, penalised=False) == pytest.approx(expected, abs=1e-8, rel=0)
        # penalised (EM's objective): equal to 1e-8 once PyMC's rounded Normal constant is accounted for
        expected_pen = numpy_loglik(problem, variant, params, q_fixed=q_fixed, penalised=True)
        got_pen = model_loglik(model, params, penalised=True)
        assert got_pen - offset == pytest.approx(expected_pen, abs=1e-8, rel=0)
        values.append((got_pen, expected_pen))
    # differences between parameter values agree exactly (constants cancel)
    (g0, e0), (g1, e1) = values[0], values[1]
    assert g1 - g0 == pytest.approx(e1 - e0, abs=1e-8, rel=0)
    assert abs(e1 - e0) > 1e-3  # the objective moves with the parameters
    # per user, zero for the user without labels
    per_user = model_loglik(model, params, per_user=True)
    counts = np.bincount(problem.user, minlength=problem.n_users)
    assert per_user.shape == (problem.n_users,)
    assert np.all(np.abs(per_user[counts == 0]) < 1e-12)
    assert per_user.sum() == pytest.approx(expected, abs=1e-8, rel=0)


@pytest.mark.parametrize("variant,strengths,q_fixed,n_tastes", COMBOS)
def test_pytensor_equals_em_objective_at_em_estimates(variant, strengths, q_fixed, n_tastes):
    """The PyMC model's log density at the EM estimates equals the objective EM reports."""
    problem = _problem(strengths, seed=8)
    if n_tastes > 1:
        em = fit_tastes(problem, n_tastes, q_fixed=q_fixed)
        params = {"shares": np.r_[em.casual_share, em.shares], "q": em.q, "strength": em.strengths}
        em_loglik = em.loglik
    else:
        em = ba.fit(_log(strengths == "p_a", seed=8), model=variant, q=q_fixed, ties="ignore",  # ties: test_ties.py
                    **_strength_settings(strengths)).estimates
        params = {**em.parameters, "strength": em.strengths}
        em_loglik = em.loglik
    value = pytensor_loglik(problem, variant, params, q_fixed=q_fixed, n_tastes=n_tastes)
    offset = _pymc_constant_error(problem, variant, q_fixed, n_tastes)
    assert value - offset == pytest.approx(em_loglik, abs=1e-8, rel=0)
    assert abs(offset) < 1e-5


@pytest.mark.parametrize("variant,strengths", [("continuous", "learned"), ("two-class", "p_a"), ("two-class", "mu")])
def test_taste_classes_refused_where_undefined(variant, strengths):
    problem = _problem(strengths)
    with pytest.raises(InputError, match="two-class" if variant == "continuous" else "learned strengths"):
        build_model(problem, BehaviourSpec(variant, n_tastes=2, strengths="learned" if problem.learned else "known"))
    with pytest.raises(InputError, match="two-class" if variant == "continuous" else "learned strengths"):
        ba.fit(_log(strengths == "p_a"), model=variant, method="map", tastes=2, **_strength_settings(strengths))


# --------------------------------------------------------------------------- (2) MAP = EM


@pytest.fixture(scope="module")
def map_log():
    return ba.simulate(n_users=400, n_models=6, casual_share=0.3, labels_per_user=(5, 30), seed=21)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_map_matches_em(map_log, variant):
    em = ba.fit(map_log, model=variant, method="em", tol=1e-12, max_iter=5000)
    mp = ba.fit(map_log, model=variant, method="map")
    assert mp.summary["engine"] == "map" and mp.summary["converged"] is True
    np.testing.assert_allclose(mp.models.strength, em.models.strength, atol=1e-4)  # measured gap: 1e-9 two-class, 2e-6 continuous
    np.testing.assert_allclose(mp.users.quality, em.users.quality, atol=1e-4)  # measured gap: 1e-9 two-class, 2e-6 continuous
    np.testing.assert_allclose(mp.estimates.p_good, em.estimates.p_good, atol=1e-4)  # measured gap: 1e-9 two-class, 2e-6 continuous
    # both maximise the same objective
    assert mp.summary["loglik"] == pytest.approx(em.summary["loglik"], abs=1e-3)
    # MAP strengths sum to zero (connected graph), like EM's
    assert abs(mp.models.strength.sum()) < 1e-3
    # same InferenceData shape as EM: 1 chain x 1 draw, quality over users
    idata = mp.idata
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 1
    assert idata.posterior["quality"].dims == ("chain", "draw", "user")
    assert set(em.idata.posterior.data_vars) == set(idata.posterior.data_vars)
    assert mp.users.quality_low.isna().all()


@pytest.fixture(scope="module")
def taste_log():
    # 18% of users follow the reversed ranking (docs/tastes.md)
    return simulate_tastes(n_users=300, n_models=6, casual_share=0.3, minority_share=0.18, seed=4)


def test_map_with_taste_classes_matches_em(taste_log):
    """MAP and EM maximise the same penalised objective with C = 2: same optimum, same taste columns."""
    em = ba.fit(taste_log, tastes=2, tol=1e-12, max_iter=5000)
    mp = ba.fit(taste_log, tastes=2, method="map")
    assert mp.summary["engine"] == "map" and mp.summary["converged"] is True
    assert mp.summary["tastes"]["n_tastes"] == 2 and mp.summary["tastes"]["start"] == "the EM fit"
    assert list(mp.users.columns) == list(em.users.columns)
    assert list(mp.models.columns) == list(em.models.columns)
    # measured gaps (helper run): quality 7e-8, strengths 2e-8
    for column in ("quality", "p_taste_1", "p_taste_2"):
        np.testing.assert_allclose(mp.users[column], em.users[column], atol=1e-4)
    assert (mp.users.taste == em.users.taste).all()
    for column in ("strength", "strength_taste_1", "strength_taste_2"):
        np.testing.assert_allclose(mp.models[column], em.models[column], atol=1e-4)
    for key in ("pi", "q", "share_taste_1", "share_taste_2"):
        assert mp.summary["parameters"][key] == pytest.approx(em.summary["parameters"][key], abs=1e-5)
    assert mp.summary["loglik"] == pytest.approx(em.summary["loglik"], abs=1e-6)
    # quality = 1 - P(casual) = sum of the class posteriors
    np.testing.assert_allclose(mp.users.p_taste_1 + mp.users.p_taste_2, mp.users.quality, atol=1e-12)
    # the minority is kept as attentive under its own class
    truth = taste_log.groupby("user", observed=True).true_taste.first().loc[mp.users.user].values
    assert mp.users.quality[truth == 2].mean() > 0.8
    assert np.mean(mp.users.taste[truth == 2] == 2) > 0.9


def test_map_from_a_perturbed_start_finds_the_em_optimum(taste_log):
    """The PyMC objective alone (not the EM start) leads to EM's optimum, up to the class labels."""
    problem = problem_from(taste_log)
    em = fit_tastes(problem, 2, tol=1e-12, max_iter=5000)
    rng = np.random.default_rng(0)
    # classes swapped and moved: the optimiser has to climb back
    start = em.strengths[::-1] + rng.normal(0.0, 0.3, em.strengths.shape)
    model = build_model(problem, BehaviourSpec(n_tastes=2), strength_init=start, share_init=[0.3, 0.4], q_init=0.4)
    with model:
        point = pm.find_MAP(progressbar=False, maxeval=50000, options={"ftol": 1e-14, "gtol": 1e-7})
    shares, strengths = relabel_by_share(point["shares"][None], point["strength"][None])
    assert np.abs(strengths[0] - em.strengths).max() < 1e-4
    np.testing.assert_allclose(shares[0], np.r_[em.casual_share, em.shares], atol=1e-5)
    assert float(point["q"]) == pytest.approx(em.q, abs=1e-5)


def test_relabel_by_share_orders_every_draw():
    shares = np.array([[0.2, 0.1, 0.7], [0.3, 0.5, 0.2], [0.1, 0.45, 0.45]])
    strengths = np.arange(3 * 2 * 4, dtype=float).reshape(3, 2, 4)
    new_shares, new_strengths = relabel_by_share(shares, strengths)
    np.testing.assert_array_equal(new_shares, [[0.2, 0.7, 0.1], [0.3, 0.5, 0.2], [0.1, 0.45, 0.45]])
    np.testing.assert_array_equal(new_strengths[0], strengths[0, ::-1])
    np.testing.assert_array_equal(new_strengths[1:], strengths[1:])  # already ordered, and a tie keeps its order


# --------------------------------------------------------------------------- (5) sampling plumbing, mocked


def _mock_sample(monkeypatch, diverging):
    from pymc.testing import mock_sample

    fake = functools.partial(mock_sample, sample_stats={"diverging": diverging})
    monkeypatch.setattr(pm, "sample", fake)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_nuts_plumbing_with_mocked_sampler(monkeypatch, tmp_path, variant):
    log = ba.simulate(n_users=40, n_models=4, labels_per_user=(3, 10), seed=4)
    _mock_sample(monkeypatch, lambda size: np.zeros(size, dtype=bool))
    with pytest.warns(FitWarning, match="effective draws"):
        result = ba.fit(log, model=variant, method="nuts", draws=30, tune=5, chains=2, progress=False)
    users, models, summary = result.users, result.models, result.summary
    assert summary["engine"] == "nuts"
    for key in ("rhat_max", "ess_bulk_min", "divergences"):
        assert key in summary
    assert summary["divergences"] == 0
    assert summary["ess_bulk_min"] < 400
    assert any("effective draws" in w for w in summary["warnings"])
    assert users.quality_low.notna().all() and users.quality_high.notna().all()
    assert (users.quality_low <= users.quality + 1e-12).all() and (users.quality <= users.quality_high + 1e-12).all()
    assert {"strength_low", "strength_high"} <= set(models.columns)
    idata = result.idata
    assert idata.posterior.sizes["draw"] == 30 and idata.posterior.sizes["chain"] == 2
    assert idata.posterior["strength"].dims == ("chain", "draw", "model")
    assert idata.posterior["quality"].dims == ("chain", "draw", "user")
    assert idata.log_likelihood["y_user"].dims == ("chain", "draw", "user")
    # quality is the posterior mean of the per-draw quality
    np.testing.assert_allclose(users.quality, idata.posterior["quality"].mean(("chain", "draw")).values)
    # per-user log-lik matches the numpy likelihood at one draw
    problem, _ = build_problem(prepare(log))
    draw = idata.posterior.isel(chain=1, draw=7)
    params = {k: draw[k].values for k in ("q", "strength")}
    if variant == "two-class":
        params["pi"] = float(draw["pi"])
        expected = numpy_loglik(problem, variant, params, penalised=False)
    else:  # NUTS samples each user's z_u: the log-likelihood given the draw's theta_u
        from bayes_annot.em import label_logprobs
        from bayes_annot.likelihood import continuous_label_loglik

        theta = float(draw["m"]) + float(draw["tau"]) * draw["z"].values
        att, cas = label_logprobs(problem, params["strength"], float(params["q"]))
        expected = float(continuous_label_loglik(att, cas, theta[problem.user]).sum())
    assert float(idata.log_likelihood["y_user"].isel(chain=1, draw=7).sum()) == pytest.approx(expected, abs=1e-8)
    az.loo(idata)  # works on the stored group
    out = result.save(tmp_path / "out")
    assert (out / "posterior.nc").exists()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["divergences"] == 0 and saved["ess_bulk_min"] == pytest.approx(summary["ess_bulk_min"])
    assert ba.load(out)["idata"].posterior.sizes["draw"] == 30


def test_nuts_taste_plumbing_with_mocked_sampler(monkeypatch, tmp_path, taste_log):
    _mock_sample(monkeypatch, lambda size: np.zeros(size, dtype=bool))
    with pytest.warns(FitWarning):
        result = ba.fit(taste_log, tastes=2, method="nuts", draws=40, tune=5, chains=2, progress=False)
    users, models, summary = result.users, result.models, result.summary
    assert summary["engine"] == "nuts" and summary["tastes"]["n_tastes"] == 2
    assert {"taste", "p_taste_1", "p_taste_2"} <= set(users.columns)
    assert {"strength_taste_1", "strength_taste_2", "strength_low", "strength_high"} <= set(models.columns)
    post = result.idata.posterior
    assert post["shares"].dims == ("chain", "draw", "type")
    assert list(post["type"].values) == ["casual", "taste_1", "taste_2"]
    assert post["strength"].dims == ("chain", "draw", "taste", "model")
    # every (prior) draw relabelled: class shares non-increasing, strengths moved with them
    assert (post["shares"].sel(type="taste_1") >= post["shares"].sel(type="taste_2")).all()
    np.testing.assert_allclose(models.strength_taste_2, post["strength"].sel(taste="taste_2").mean(("chain", "draw")))
    np.testing.assert_allclose(models.strength, models.strength_taste_1)
    # quality is the posterior mean of 1 - P(casual), and the class posteriors add up to it
    np.testing.assert_allclose(users.quality, post["quality"].mean(("chain", "draw")).values)
    np.testing.assert_allclose(users.p_taste_1 + users.p_taste_2, users.quality, atol=1e-12)
    # (prior draws here: a mean may fall outside a skewed draw set's HDI, so only the interval itself is checked)
    assert ((0.0 <= users.quality_low) & (users.quality_low <= users.quality_high) & (users.quality_high <= 1.0)).all()
    # per-user log-lik of one draw = the taste model's likelihood at that draw
    problem = problem_from(taste_log)
    draw = post.isel(chain=1, draw=7)
    params = {"shares": draw["shares"].values, "q": float(draw["q"]), "strength": draw["strength"].values}
    expected = numpy_loglik(problem, "two-class", params, penalised=False)
    assert float(result.idata.log_likelihood["y_user"].isel(chain=1, draw=7).sum()) == pytest.approx(expected, abs=1e-8)
    for key in ("rhat_max", "ess_bulk_min", "divergences"):
        assert key in summary
    out = result.save(tmp_path / "out")
    loaded = ba.load(out)
    assert loaded["idata"].posterior["shares"].dims == ("chain", "draw", "type")
    np.testing.assert_allclose(loaded["users"].p_taste_2, users.p_taste_2)


def test_divergences_are_warned_and_mark_not_converged(monkeypatch):
    log = ba.simulate(n_users=30, n_models=3, labels_per_user=(3, 8), seed=6)

    def some_divergent(size):
        out = np.zeros(size, dtype=bool)
        out[0, :3] = True
        return out

    _mock_sample(monkeypatch, some_divergent)
    with pytest.warns(FitWarning, match="3 divergent transition"):
        result = ba.fit(log, method="nuts", draws=20, chains=2, progress=False)
    assert result.summary["divergences"] == 3
    assert result.estimates.converged is False


def test_nutpie_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nutpie", None)
    with pytest.raises(InputError, match=r"pip install 'bayes_annot\[nutpie\]'"):
        ba.fit(ba.simulate(n_users=20, seed=1), method="nuts", sampler="nutpie")


# --------------------------------------------------------------------------- (3), (4) real NUTS


@pytest.mark.slow
def test_nuts_two_class_diagnostics_and_intervals():
    log = ba.simulate(n_users=300, n_models=6, casual_share=0.3, labels_per_user=30, seed=2)
    result = ba.fit(log, model="two-class", method="nuts", draws=1000, tune=1000, chains=2, seed=1, progress=False)
    s = result.summary
    assert s["rhat_max"] <= 1.01
    assert s["divergences"] == 0
    assert s["ess_bulk_min"] >= 400
    assert s["converged"] is True
    users, models = result.users, result.models
    assert ((users.quality_low <= users.quality) & (users.quality <= users.quality_high)).all()
    assert ((models.strength_low <= models.strength) & (models.strength <= models.strength_high)).all()
    # the posterior recovers the truth: types separate and true strengths (centred) are covered
    truth = ba.truth_users(log).loc[users.user]
    assert np.mean((users.quality.values > 0.5) == truth.true_attentive.values) > 0.95
    true_s = ba.truth_models(log).loc[models.model].values
    true_s = true_s - true_s.mean()
    assert np.mean((models.strength_low <= true_s) & (true_s <= models.strength_high)) >= 4 / 6
    # MAP/EM point estimate lies inside the posterior interval for nearly all users
    em = ba.fit(log, model="two-class")
    inside = (users.quality_low - 1e-9 <= em.users.quality) & (em.users.quality <= users.quality_high + 1e-9)
    assert inside.mean() > 0.95


@pytest.mark.slow
def test_nuts_continuous_coverage():
    log = ba.simulate(
        n_users=200, n_models=5, casual_share=0.3, labels_per_user=30, quality="continuous", eta_tau=1.5, seed=7
    )
    result = ba.fit(log, model="continuous", method="nuts", draws=500, tune=700, chains=2, seed=3, progress=False)
    idata = result.idata
    n_transitions = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    assert result.summary["divergences"] <= 0.01 * n_transitions
    hdi = az.hdi(idata.posterior[["eta"]], hdi_prob=0.90)["eta"]
    truth = ba.truth_users(log).loc[[str(u) for u in idata.posterior["user"].values]]
    covered = (hdi.sel(hdi="lower").values <= truth.true_eta.values) & (truth.true_eta.values <= hdi.sel(hdi="higher").values)
    print(f"90% HDI coverage of eta: {covered.mean():.3f}; divergences {result.summary['divergences']}")
    assert 0.85 <= covered.mean() <= 0.97


# --------------------------------------------------------------------------- (6) model comparison


@pytest.mark.slow
def test_compare_three_models():
    from bayes_annot.compare import compare, fit_baseline

    log = ba.simulate(n_users=120, n_models=4, casual_share=0.4, labels_per_user=20, seed=12)
    settings = dict(method="nuts", draws=300, tune=300, chains=2, seed=0, progress=False)
    fits = {
        "two-class": ba.fit(log, model="two-class", **settings),
        "continuous": ba.fit(log, model="continuous", **settings),
        "bradley-terry": fit_baseline(log, draws=300, tune=300, chains=2, seed=0, progress=False),
    }
    table = compare(fits)
    assert set(table.index) == {"two-class", "continuous", "bradley-terry"}
    assert {"elpd_loo", "p_loo", "weight"} <= set(table.columns)
    # data with 40% casual users: a model with casual users beats plain Bradley–Terry clearly
    assert table.index[-1] == "bradley-terry"
    assert table.loc["bradley-terry", "elpd_diff"] > 4 * table.loc["bradley-terry", "dse"]
    with pytest.raises(InputError, match="point estimate"):
        compare({"em": ba.fit(log), "two-class": fits["two-class"]})



@pytest.mark.slow
def test_nuts_taste_classes_minority_kept():
    """Issue 13: NUTS with tastes=2, 18% reversed-taste minority: R-hat <= 1.01, no divergence, minority kept."""
    import time

    log = simulate_tastes(n_users=600, n_models=8, casual_share=0.3, minority_share=0.18, seed=1)
    t0 = time.perf_counter()
    result = ba.fit(log, tastes=2, method="nuts", draws=1000, tune=500, chains=2, seed=1, progress=False)
    seconds = time.perf_counter() - t0
    s = result.summary
    truth = log.groupby("user", observed=True).true_taste.first().loc[result.users.user].values
    minority = result.users.quality[truth == 2].mean()
    print(f"tastes=2 NUTS: R-hat {s['rhat_max']:.4f}, bulk ESS {s['ess_bulk_min']:.0f}, "
          f"divergences {s['divergences']}, minority mean quality {minority:.3f}, {seconds:.0f} s")
    assert s["rhat_max"] <= 1.01  # over shares, strengths and q (relabelled draws)
    assert s["divergences"] == 0
    assert minority >= 0.8
    assert result.users.quality[truth == 0].mean() < 0.4  # casual users still caught
    assert np.mean(result.users.taste[truth == 2] == 2) > 0.9


@pytest.mark.parametrize("strengths", STRENGTHS)
def test_spec_strengths_must_be_the_labels(strengths):
    """The spec says learned or known strengths; a spec that contradicts the labels is refused, not misread."""
    problem = _problem(strengths)
    wrong = BehaviourSpec(strengths="known" if problem.learned else "learned")
    with pytest.raises(InputError, match="BehaviourSpec.with_strengths"):
        build_model(problem, wrong)


# --------------------------------------------------------------------------- casual covariates (issue #14)


def _covariate_problem(seed: int = 3, strengths: str = "learned", n_bins: int = 3):
    from bayes_annot.casual import prepare_casual

    log = ba.simulate(n_users=60, n_models=5, labels_per_user=(2, 12), tie_rate=0.1, length_bias=0.85, seed=seed)
    if strengths == "p_a":
        log["p_a"] = log["true_p_a"]
    prepared = prepare(log.astype({"user": str, "winner": str}))
    design = prepare_casual(prepared, "auto", n_bins)
    problem, _ = build_problem(prepared, casual=design)
    return log, problem, design


@pytest.mark.parametrize("variant,q_fixed,strengths", [
    ("two-class", None, "learned"), ("continuous", 0.4, "learned"), ("two-class", 0.4, "p_a"), ("continuous", None, "p_a"),
])
def test_pytensor_equals_numpy_with_casual_covariates(variant, q_fixed, strengths, rng):
    _, problem, design = _covariate_problem(strengths=strengths)
    spec = BehaviourSpec(variant, 1, "learned" if problem.learned else "known", q=q_fixed, casual=design)
    model = build_model(problem, spec, marginal=True)
    offset = _pymc_constant_error(problem, variant, q_fixed) + design.n_effects * _normal_error(
        ba.Priors().casual_effect_sigma)
    values = []
    for _ in range(3):
        params = _random_params(problem, rng)
        params["casual_effect"] = rng.normal(0.0, 1.5, design.n_effects)
        if q_fixed is not None:
            params["q"] = q_fixed
        expected = numpy_loglik(problem, variant, params, q_fixed=q_fixed, penalised=False, casual=design)
        assert model_loglik(model, params, penalised=False) == pytest.approx(expected, abs=1e-8, rel=0)
        expected_pen = numpy_loglik(problem, variant, params, q_fixed=q_fixed, penalised=True, casual=design)
        got_pen = model_loglik(model, params, penalised=True)
        assert got_pen - offset == pytest.approx(expected_pen, abs=1e-8, rel=0)
        values.append(expected)
    assert abs(values[1] - values[0]) > 1e-3
    # the effects move the likelihood: zero effects are the covariate-free model
    params["casual_effect"] = np.zeros(design.n_effects)
    plain = numpy_loglik(problem, variant, params, q_fixed=q_fixed, penalised=False, casual=design)
    from dataclasses import replace

    without = replace(problem, casual_cell=None, n_casual=0)
    assert plain == pytest.approx(numpy_loglik(without, variant, params, q_fixed=q_fixed, penalised=False), abs=1e-9)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_pytensor_equals_em_objective_with_casual_covariates(variant):
    """The PyMC log density at EM's estimates (with covariates) equals the objective EM reports."""
    from bayes_annot.casual import design_from_summary, effects_start

    from bayes_annot.casual import prepare_casual

    log = _covariate_problem(seed=8)[0].astype({"user": str, "winner": str})
    fitted = ba.fit(log, model=variant, casual_bins=3, ties="ignore")  # the problem below has no ties
    design = design_from_summary(fitted.summary)
    em = fitted.estimates
    params = {**em.parameters, "strength": em.strengths, "casual_effect": effects_start(fitted.summary)}
    prepared = prepare(log)
    prepare_casual(prepared, design=design)
    problem, _ = build_problem(prepared, casual=design)
    value = pytensor_loglik(problem, variant, params, casual=design)
    offset = _pymc_constant_error(problem, variant, None) + design.n_effects * _normal_error(
        ba.Priors().casual_effect_sigma)
    assert value - offset == pytest.approx(em.loglik, abs=1e-8, rel=0)


@pytest.fixture(scope="module")
def length_map_log():
    return ba.simulate(n_users=300, n_models=5, casual_share=0.3, labels_per_user=(5, 30), length_bias=0.85, seed=21)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_map_matches_em_with_casual_covariates(length_map_log, variant):
    em = ba.fit(length_map_log, model=variant, method="em", tol=1e-12, max_iter=5000, casual_bins=4)
    mp = ba.fit(length_map_log, model=variant, method="map", casual_bins=4)
    assert mp.summary["engine"] == "map" and mp.summary["converged"] is True
    np.testing.assert_allclose(mp.users.quality, em.users.quality, atol=1e-4)
    np.testing.assert_allclose(mp.models.strength, em.models.strength, atol=1e-4)
    g_em = em.casual_effects_["covariates"][0]["g"]
    np.testing.assert_allclose(mp.casual_effects_["covariates"][0]["g"], g_em, atol=1e-3)
    assert mp.casual_effects_["beta0"] == pytest.approx(em.casual_effects_["beta0"], abs=1e-4)
    assert mp.summary["loglik"] == pytest.approx(em.summary["loglik"], abs=1e-3)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_nuts_plumbing_with_casual_covariates(monkeypatch, variant):
    log = ba.simulate(n_users=40, n_models=4, labels_per_user=(3, 10), length_bias=0.85, seed=4)
    _mock_sample(monkeypatch, lambda size: np.zeros(size, dtype=bool))
    with pytest.warns(FitWarning):
        result = ba.fit(log, model=variant, method="nuts", draws=30, tune=5, chains=2, progress=False, casual_bins=3)
    idata = result.idata
    assert idata.posterior["casual_effect"].dims == ("chain", "draw", "casual_bin")
    assert result.casual_effects_ is not None and len(result.casual_effects_["covariates"][0]["g"]) == 3
    from bayes_annot.casual import design_from_summary, prepare_casual

    design = design_from_summary(result.summary)
    prepared = prepare(log)
    prepare_casual(prepared, design=design)
    problem, _ = build_problem(prepared, casual=design)
    draw = idata.posterior.isel(chain=1, draw=7)
    params = {k: draw[k].values for k in ("q", "strength", "casual_effect")}
    if variant == "two-class":
        params["pi"] = float(draw["pi"])
        expected = numpy_loglik(problem, variant, params, penalised=False, casual=design)
    else:  # NUTS samples each user's z_u: the log-likelihood given the draw's theta_u
        from bayes_annot.casual import casual_table
        from bayes_annot.em import label_logprobs
        from bayes_annot.likelihood import continuous_label_loglik
        from scipy.special import logit

        theta = float(draw["m"]) + float(draw["tau"]) * draw["z"].values
        table = casual_table(float(logit(params["q"])), params["casual_effect"], design.design())
        att, cas = label_logprobs(problem, params["strength"], float(params["q"]), table)
        expected = float(continuous_label_loglik(att, cas, theta[problem.user]).sum())
    assert float(idata.log_likelihood["y_user"].isel(chain=1, draw=7).sum()) == pytest.approx(expected, abs=1e-8)


def test_map_with_taste_classes_and_covariates_matches_em():
    log = simulate_tastes(n_users=200, n_models=5, casual_share=0.3, minority_share=0.2, seed=4)
    rng = np.random.default_rng(0)
    log["len_ratio"] = rng.normal(0.0, 1.0, len(log))  # any numeric contrast column
    em = ba.fit(log, tastes=2, casual_covariates=["len_ratio"], casual_bins=3, tol=1e-12, max_iter=5000)
    mp = ba.fit(log, tastes=2, method="map", casual_covariates=["len_ratio"], casual_bins=3)
    assert mp.summary["engine"] == "map"
    np.testing.assert_allclose(mp.users.quality, em.users.quality, atol=1e-3)
    np.testing.assert_allclose(mp.casual_effects_["covariates"][0]["g"], em.casual_effects_["covariates"][0]["g"],
                               atol=1e-3)
    assert mp.summary["loglik"] == pytest.approx(em.summary["loglik"], abs=1e-3)


def test_nuts_taste_plumbing_with_casual_covariates(monkeypatch):
    log = ba.simulate(n_users=60, n_models=4, labels_per_user=(3, 10), length_bias=0.85, seed=4)
    _mock_sample(monkeypatch, lambda size: np.zeros(size, dtype=bool))
    with pytest.warns(FitWarning):
        result = ba.fit(log, method="nuts", tastes=2, draws=20, tune=5, chains=2, progress=False, casual_bins=2)
    assert result.idata.posterior["casual_effect"].dims == ("chain", "draw", "casual_bin")
    assert len(result.casual_effects_["covariates"][0]["g"]) == 2
    assert result.users.quality.between(0, 1).all()
