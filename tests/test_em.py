"""EM engine: parameter recovery against simulated truth, calibration, monotonicity, gradients."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

import bayes_annot as ba
from bayes_annot.em import UsableLabels, bradley_terry_derivatives, bradley_terry_objective, fit_bradley_terry, pair_weights
from bayes_annot.metrics import auc, expected_calibration_error, spearman

from .conftest import aligned
from .reference_em import reference_em


# --------------------------------------------------------------------------- recovery


def test_two_class_recovery_standard(standard_log, standard_fit):
    users, truth = aligned(standard_fit, standard_log)
    assert auc(users.quality, truth.true_attentive) >= 0.95
    true_share = truth.true_attentive.mean()
    assert abs(standard_fit.summary["parameters"]["pi"] - true_share) <= 0.03
    assert expected_calibration_error(users.quality, truth.true_attentive) <= 0.05
    assert abs(standard_fit.summary["parameters"]["q"] - 0.5) <= 0.03


def test_two_class_strengths_recovered(standard_log, standard_fit):
    truth = ba.truth_models(standard_log)
    models = standard_fit.models.set_index("model").loc[truth.index]
    centred_truth = truth - truth.mean()
    assert np.max(np.abs(models.strength - centred_truth)) < 0.15
    # the ridge fixes the location: MAP strengths sum to zero
    assert abs(models.strength.sum()) < 1e-6


def test_paper_setting_known_mu_two_models():
    log = ba.simulate(n_users=1000, known_mu=0.75, labels_per_user=40, seed=21)
    result = ba.fit(log)  # uses the p_a column
    assert result.summary["strengths"].startswith("known")
    users, truth = aligned(result, log)
    assert auc(users.quality, truth.true_attentive) >= 0.9
    # the same with a global mu and the named stronger model instead of p_a
    result_mu = ba.fit(log, use_p_a=False, mu=0.75, strong_model="model_0")
    users_mu, _ = aligned(result_mu, log)
    np.testing.assert_allclose(users_mu.quality, users.quality, atol=1e-6)


def test_continuous_recovery_spearman():
    # Continuous quality is identified through how far users' choices depart from
    # a coin, so the models must differ clearly in strength (+-3 here); the
    # estimate must also beat the oracle agreement rate with the truly better model.
    log = ba.simulate(
        n_users=1000, variant="continuous", labels_per_user=40, strengths=np.linspace(3, -3, 8), seed=22
    )
    result = ba.fit(log, variant="continuous")
    users, truth = aligned(result, log)
    rho = spearman(users.quality, truth.true_eta)
    assert rho >= 0.8
    agrees = (log.true_p_a > 0.5) == (log.winner == "model_a")
    oracle_rate = agrees.groupby(log.user, observed=True).mean()
    oracle_rate.index = oracle_rate.index.astype(str)
    assert rho >= spearman(oracle_rate.loc[truth.index], truth.true_eta) - 0.01
    assert np.all(np.diff(result.loglik_trace) >= -1e-8 * np.abs(result.loglik_trace[1:]))


def test_position_biased_casual_users_separated_when_q_estimated():
    log = ba.simulate(n_users=2000, casual_share=0.3, q=0.8, labels_per_user=(5, 40), seed=23)
    result = ba.fit(log)
    users, truth = aligned(result, log)
    assert abs(result.summary["parameters"]["q"] - 0.8) < 0.03
    assert auc(users.quality, truth.true_attentive) >= 0.95
    # fixing q at a fair coin when casual users are biased is worse
    fixed = ba.fit(log, q=0.5)
    users_fixed, _ = aligned(fixed, log)
    assert auc(users.quality, truth.true_attentive) > auc(users_fixed.quality, truth.true_attentive)


def test_arena_like_log_runs_and_ranks():
    log = ba.simulate(n_users=20000, casual_share=0.3, labels_per_user="arena", seed=24)
    counts = log.groupby("user", observed=True).size()
    assert (counts <= 3).mean() > 0.75  # most users vote 1-3 times
    result = ba.fit(log)
    users, truth = aligned(result, log)
    assert 0.0 <= users.quality.min() and users.quality.max() <= 1.0
    heavy = users.n_labels >= 20
    assert auc(users.quality[heavy], truth.true_attentive[heavy]) >= 0.9
    # one vote cannot give a confident verdict: its Bayes factor is at most
    # max(mu) / q ~ 0.95 / 0.5, so P(attentive) stays well inside (0.1, 0.9)
    assert users.quality[users.n_labels == 1].between(0.1, 0.9).all()


# --------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
@pytest.mark.parametrize("q_fixed", [None, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalised_loglik_never_decreases(variant, q_fixed, seed):
    log = ba.simulate(n_users=300, n_models=6, casual_share=0.4, q=0.65, labels_per_user=(2, 30), quality=variant, seed=seed)
    result = ba.fit(log, variant=variant, q=q_fixed, tol=1e-12, max_iter=300)
    trace = np.asarray(result.loglik_trace)
    assert len(trace) > 3
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))


def test_known_strength_loglik_never_decreases():
    log = ba.simulate(n_users=400, known_mu=0.7, labels_per_user=(5, 30), seed=3)
    result = ba.fit(log, tol=1e-12)
    assert np.all(np.diff(result.loglik_trace) >= -1e-9)


# --------------------------------------------------------------------------- Bradley–Terry M-step


def _random_weights(rng, k):
    w1 = rng.gamma(2.0, 3.0, size=(k, k))
    w0 = rng.gamma(2.0, 3.0, size=(k, k))
    np.fill_diagonal(w1, 0)
    np.fill_diagonal(w0, 0)
    return w1, w0


def test_bradley_terry_derivatives_match_finite_differences(rng):
    """The gradient and Hessian fit_bradley_terry's Newton step uses, against its objective."""
    k = 7
    w1, w0 = _random_weights(rng, k)
    s = rng.normal(size=k)
    grad, neg_hess = bradley_terry_derivatives(s, w1, w0, 3.0)
    eps = 1e-6
    unit = np.eye(k)
    numeric = np.array(
        [(bradley_terry_objective(s + eps * unit[i], w1, w0, 3.0) - bradley_terry_objective(s - eps * unit[i], w1, w0, 3.0)) / (2 * eps) for i in range(k)]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)
    numeric_hess = np.array([
        (bradley_terry_derivatives(s + eps * unit[i], w1, w0, 3.0)[0]
         - bradley_terry_derivatives(s - eps * unit[i], w1, w0, 3.0)[0]) / (2 * eps)
        for i in range(k)
    ])
    np.testing.assert_allclose(-neg_hess, numeric_hess, rtol=1e-6, atol=1e-6)


def test_bradley_terry_newton_reaches_the_maximum(rng):
    k = 6
    w1, w0 = _random_weights(rng, k)
    s = fit_bradley_terry(w1, w0, 3.0)
    assert np.max(np.abs(bradley_terry_derivatives(s, w1, w0, 3.0)[0])) < 1e-6
    best = bradley_terry_objective(s, w1, w0, 3.0)
    for _ in range(20):
        assert bradley_terry_objective(s + 0.01 * rng.normal(size=k), w1, w0, 3.0) < best


def test_pair_weights_count_every_label(rng):
    n, k = 500, 4
    a = rng.integers(0, k, n).astype(np.int32)
    b = ((a + rng.integers(1, k, n)) % k).astype(np.int32)
    y = rng.integers(0, 2, n).astype(np.int8)
    problem = UsableLabels(user=np.zeros(n, np.int32), model_a=a, model_b=b, choice_a=y, n_users=1, n_models=k)
    w1, w0 = pair_weights(problem.cell(), None, k)
    assert w1.sum() == y.sum() and w0.sum() == n - y.sum()
    assert w1[a[0], b[0]] == np.sum((a == a[0]) & (b == b[0]) & (y == 1))


# --------------------------------------------------------------------------- identifiability


def test_uninformative_users_stay_at_prior_level():
    # users who only compared two equally strong models: no verdict on them
    rng = np.random.default_rng(7)
    n_inf, n_uninf = 300, 40
    users = np.concatenate([np.repeat(np.arange(n_inf), 20), np.repeat(np.arange(n_inf, n_inf + n_uninf), 20)])
    n = users.size
    a = np.where(users < n_inf, rng.integers(0, 2, n), 2)
    b = np.where(users < n_inf, 1 - a, 3)  # models 2 and 3 have equal strength
    strengths = np.array([1.5, -1.5, 0.0, 0.0])
    attentive = rng.random(n_inf + n_uninf) < 0.7
    p = np.where(attentive[users], expit(strengths[a] - strengths[b]), 0.5)
    y = rng.random(n) < p
    log = pd.DataFrame({
        "user": [f"u{i:04d}" for i in users], "model_a": [f"m{i}" for i in a], "model_b": [f"m{i}" for i in b],
        "winner": np.where(y, "model_a", "model_b"),
    })
    result = ba.fit(log, q=0.5)
    est = result.estimates
    assert not est.informative[n_inf:].any()
    assert est.informative[:n_inf].mean() > 0.95
    # no verdict: their quality is the population share
    np.testing.assert_allclose(est.quality[n_inf:], est.parameters["pi"])
    assert est.quality[:n_inf].std() > 0.2


def test_attentive_component_does_not_swap_with_casual():
    # mostly casual population: the attentive component still follows the strengths
    log = ba.simulate(n_users=1500, casual_share=0.8, labels_per_user=(10, 40), seed=31)
    result = ba.fit(log)
    users, truth = aligned(result, log)
    assert auc(users.quality, truth.true_attentive) > 0.9
    strengths = result.models.set_index("model").strength
    assert strengths["model_0"] > strengths["model_7"]


def test_continuous_grid_pass_equals_the_log_space_formulas(rng):
    """The block engine's continuous pass (probability space, cells) equals likelihood.py's log-space formulas
    summed over the grid node by node.

    Through the block's public pass and final step: per-user marginal log-likelihoods, the objective, the
    casual responsibilities summed (all labels, and those choosing ``model_a``) for the M-step of ``q``,
    the per-node sums for ``(m, tau)``, and each user's posterior mean of eta and P(eta >= 1/2).
    """
    from scipy.special import expit, logsumexp

    from bayes_annot.block_em import block_continuous_final, block_continuous_pass, make_block
    from bayes_annot.likelihood import (
        ETA_GRID,
        attentive_logprob,
        casual_logprob,
        continuous_label_loglik,
        continuous_label_responsibility,
    )

    n, n_users, q, m, tau = 2000, 60, 0.63, 0.4, 1.7
    choice = rng.integers(0, 2, n)
    logit_mu = rng.normal(0.0, 3.0, n)
    user = rng.integers(0, n_users, n)
    att, cas = attentive_logprob(choice, logit_mu), casual_logprob(choice, q)
    theta = ETA_GRID.theta(m, tau)
    per_node = np.stack([np.bincount(user, continuous_label_loglik(att, cas, t), minlength=n_users) for t in theta], 1)
    joint = per_node + ETA_GRID.log_weights
    user_ll = logsumexp(joint, axis=1)
    post = np.exp(joint - user_ll[:, None])
    resp = np.stack([continuous_label_responsibility(att, cas, t) for t in theta], 1)  # (n, G)
    label_post = post[user]
    assert 0.05 < (label_post * resp).sum() / n < 0.95  # both behaviours carry weight

    block = make_block(user, np.ones(n, bool), 2, choice=choice, known_logit=logit_mu, users=np.arange(n_users))
    stats = block_continuous_pass(block, m, tau, q, None)
    final = block_continuous_final(block, m, tau, q, None, None, 0.2)
    np.testing.assert_allclose(final["user_loglik"], user_ll, rtol=1e-12, atol=1e-12)
    assert stats["loglik"] == pytest.approx(user_ll.sum(), rel=1e-13)
    assert stats["casual"] == pytest.approx((label_post * (1.0 - resp)).sum(), rel=1e-12)
    assert stats["casual_a"] == pytest.approx(((label_post * (1.0 - resp)).sum(1) * choice).sum(), rel=1e-12)
    np.testing.assert_allclose(stats["eta_a"], (label_post * resp).sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["eta_b"], (label_post * (1.0 - resp)).sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final["quality"], post @ expit(theta), rtol=1e-12)
    np.testing.assert_allclose(final["p_good"], post @ ETA_GRID.above_half(m, tau), rtol=1e-12, atol=1e-15)


def test_population_step_reaches_the_maximum_of_its_objective(rng):
    """The (m, tau) M-step: its result has zero gradient (central differences) and beats nearby points."""
    from scipy.special import log_expit

    from bayes_annot.em import population_step
    from bayes_annot.likelihood import ETA_GRID, Priors, log_half_normal_pdf, log_normal_pdf

    priors = Priors()
    eta_a, eta_b = rng.uniform(0, 50, ETA_GRID.n), rng.uniform(0, 50, ETA_GRID.n)

    def q_value(m, tau):
        t = m + tau * ETA_GRID.z
        return (eta_a @ log_expit(t) + eta_b @ log_expit(-t) + log_normal_pdf(m, priors.eta_m_mu, priors.eta_m_sigma)
                + log_half_normal_pdf(tau, priors.eta_tau))

    m, tau = population_step(eta_a, eta_b, 0.0, 1.5, priors)
    h = 1e-5
    grad = [(q_value(m + h, tau) - q_value(m - h, tau)) / (2 * h), (q_value(m, tau + h) - q_value(m, tau - h)) / (2 * h)]
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    best = q_value(m, tau)
    for dm, dt in rng.normal(0, 0.05, (20, 2)):
        assert q_value(m + dm, max(tau + dt, 1e-3)) <= best + 1e-12


def test_continuous_p_eta_above_half_is_calibrated_on_data_from_the_fitted_model():
    """P(eta >= 1/2) of the continuous variant is calibrated (ECE <= 0.05) on a log simulated from the fitted model.

    Fit a continuous log, simulate a new log of 4,000 users from the fitted m, tau, q and strengths, fit it
    and compare each user's P(eta >= 1/2) with whether their true eta is at least 1/2. (With each user's
    eta at its joint MAP and a Laplace approximation, the engine of issue #14's start, ECE was 0.11-0.20.)
    """
    from scipy.special import expit

    from bayes_annot.metrics import expected_calibration_error

    first = ba.fit(ba.simulate(n_users=1000, n_models=8, variant="continuous", seed=3), variant="continuous")
    p = first.summary["parameters"]
    strengths = first.models.set_index("model").strength.reindex([f"model_{k}" for k in range(8)]).to_numpy()
    share = 1.0 - float(expit(p["m"]))
    log = ba.simulate(n_users=4000, n_models=8, variant="continuous", casual_share=share, eta_tau=p["tau"], q=p["q"],
                      strengths=strengths, seed=4)
    result = ba.fit(log, variant="continuous")
    users, truth = aligned(result, log)
    ece = expected_calibration_error(users.p_eta_above_half, truth.true_eta >= 0.5)
    assert ece <= 0.05, ece


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_warm_start_reaches_the_same_optimum_faster(variant):
    log = ba.simulate(n_users=800, casual_share=0.3, labels_per_user=(5, 30), quality=variant, seed=41)
    # plain EM for two-class; continuous needs SQUAREM (its default): plain EM creeps along (m, tau)
    accelerate = variant == "continuous"
    cold = ba.fit(log, variant=variant, tol=1e-13, accelerate=accelerate).estimates
    assert cold.converged
    start = {**cold.parameters, "strengths": cold.strengths}
    warm = ba.fit(log, variant=variant, tol=1e-13, accelerate=accelerate, start=start).estimates
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.quality, cold.quality, atol=1e-6)
    np.testing.assert_allclose(warm.strengths, cold.strengths, atol=1e-6)


def test_block_user_terms_equal_the_likelihood_formulas():
    """The E-step's two-call posterior / marginal log-likelihood equals likelihood.py, also far in the tails."""
    from bayes_annot.block_em import two_class_user_terms
    from bayes_annot.likelihood import two_class_posterior, two_class_user_loglik

    rng = np.random.default_rng(7)
    att = -np.abs(rng.normal(0, 300, 5000))
    cas = -np.abs(rng.normal(0, 300, 5000))
    att[:3], cas[:3] = [0.0, -1e-3, -800.0], [0.0, -1e-3, -1.0]
    for pi in (1e-6, 0.3, 0.7, 1 - 1e-6):
        p, ll = two_class_user_terms(att, cas, pi)
        np.testing.assert_allclose(p, two_class_posterior(att, cas, pi), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(ll, two_class_user_loglik(att, cas, pi), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
@pytest.mark.parametrize("setting", ["learned", "learned-q0.5", "p_a"])
def test_fit_equals_reference_em(variant, setting, small_log):
    """ba.fit (the block engine) against the textbook EM of tests/reference_em.py: the same iterates."""
    from bayes_annot.data import prepare
    from bayes_annot.problem import build_problem

    log = small_log if setting != "p_a" else ba.simulate(n_users=150, known_mu=0.7, labels_per_user=(2, 20), seed=5)
    q = 0.5 if setting == "learned-q0.5" else None
    problem, _ = build_problem(prepare(log))
    # plain EM; the continuous variant's creeps along (m, tau), so it runs a fixed number of steps
    steps = 5000 if variant == "two-class" else 40
    result = ba.fit(log, variant=variant, q=q, tol=1e-12, max_iter=steps, accelerate=False, ties="ignore")  # the paper's
    est = result.estimates
    assert (est.converged if variant == "two-class" else est.n_iter == steps) and est.n_iter > 3
    # as many EM steps as the package took (the stopping rule is the package's business)
    reference = reference_em(problem, variant=variant, q_fixed=q, tol=-1.0, max_iter=est.n_iter)  # never stops early
    np.testing.assert_allclose(est.quality, reference.quality, atol=1e-8)
    if reference.strengths is not None:
        np.testing.assert_allclose(est.strengths, reference.strengths, atol=1e-8)
    np.testing.assert_allclose(est.parameters["q"], reference.q, atol=1e-8)
    np.testing.assert_array_equal(est.informative, reference.informative)
    # continuous: each M-step's inner Newton on (m, tau) stops at its own tolerance, and where it stops follows
    # the CPU's last bits (an Intel Xeon: iterations 2-3 4e-10 relative apart, an AMD EPYC inside 1e-10)
    np.testing.assert_allclose(result.loglik_trace, reference.loglik_trace,
                               rtol=1e-10 if variant == "two-class" else 1e-8)
    np.testing.assert_array_equal(result.estimates.informative, reference.informative)


def test_stopping_rule_needs_both_objective_and_parameters():
    """em.has_converged (every engine's rule): a flat objective alone does not stop EM while a parameter moves."""
    from bayes_annot.em import has_converged, param_tolerance

    flat = [-1000.0, -1000.0 + 1e-9]
    assert not has_converged(flat, 1e-9, step=1e-5)  # objective flat, parameters still moving
    assert has_converged(flat, 1e-9, step=1e-8)
    assert not has_converged([-1000.0, -999.0], 1e-9, step=0.0)  # parameters still, objective moving
    assert param_tolerance(1e-9) == pytest.approx(1e-7) and param_tolerance(1e-16) == 1e-12
    assert not has_converged(flat, 1e-9, step=1e-8, param_tol=1e-9)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_fit_stops_with_small_parameter_steps(variant, small_log):
    """At the default tol, the last EM step moved no strength, q, pi (two-class) or user quality
    (continuous: sigmoid(theta_u), a parameter) by more than 1e-7; two-class quality, a function of
    (pi, q, strengths), moves by at most a few times that."""
    result = ba.fit(small_log, variant=variant, accelerate=False, max_iter=5000)
    previous = ba.fit(small_log, variant=variant, accelerate=False, max_iter=result.estimates.n_iter - 1, tol=0.0)
    assert result.summary["converged"]
    assert np.max(np.abs(result.estimates.strengths - previous.estimates.strengths)) <= 1e-7
    for name in ("pi", "q") if variant == "two-class" else ("q",):
        assert abs(result.summary["parameters"][name] - previous.summary["parameters"][name]) <= 1e-7
    quality_step = np.max(np.abs(result.estimates.quality - previous.estimates.quality))
    assert quality_step <= (1e-7 if variant == "continuous" else 1e-6)
