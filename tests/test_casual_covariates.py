"""Casual clicks that follow covariates (issue #14 item 1; docs/model.md, "Casual covariates").

The issue's scenario: 30% casual users whose clicks pick the longer response 85% of the time,
log response length growing with model strength plus noise, texts in ``response_a``/``response_b``
(``simulate(length_bias=0.85)``). Today's model (``casual_covariates="none"``) takes the
length-clickers for attentive users; the default (the log length ratio, binned, odd) separates them.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit

import bayes_annot as ba
from bayes_annot.casual import CasualDesign, casual_design, casual_objective, casual_table, fit_casual
from bayes_annot.likelihood import Priors
from bayes_annot.metrics import auc, expected_calibration_error
from bayes_annot.simulate import truth_users

LENGTH_BIAS = 0.85


@pytest.fixture(scope="module")
def length_log():
    """The issue's scenario (seed 1): 1000 users, 8 models, 30% casual, casual clicks pick the longer response 85%."""
    return ba.simulate(n_users=1000, n_models=8, casual_share=0.3, length_bias=LENGTH_BIAS, seed=1)


def _fit(log, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ba.fit(log, **kwargs)


def _scores(result, log):
    truth = truth_users(log)
    users = result.users.set_index("user").loc[truth.index]
    return auc(users["quality"], truth["true_attentive"]), expected_calibration_error(users["quality"], truth["true_attentive"])


@pytest.fixture(scope="module")
def fits(length_log):
    return {"none": _fit(length_log, casual_covariates="none"), "auto": _fit(length_log)}


def test_length_bias_scenario_auc_and_ece(fits, length_log):
    """(a) the default separates length-clickers: AUC >= 0.93 and ECE <= 0.05 (today's model: ~0.67 / ~0.28)."""
    auc_none, ece_none = _scores(fits["none"], length_log)
    auc_new, ece_new = _scores(fits["auto"], length_log)
    print(f"today's model: AUC {auc_none:.3f} ECE {ece_none:.3f}; with the length covariate: AUC {auc_new:.3f} ECE {ece_new:.3f}")
    assert auc_new >= 0.93 and ece_new <= 0.05
    assert auc_none < 0.8 and ece_none > 0.15  # the failure the covariate fixes is real on this log
    assert fits["none"].casual_effects_ is None


def test_casual_effect_and_position_bias_recovered(fits):
    """(b) g of every bin near logit(0.85) (the truth is a step: the same in every bin); beta_0 near 0 (q = 0.5)."""
    effects = fits["auto"].casual_effects_
    (cov,) = effects["covariates"]
    assert cov["name"] == "log_length_ratio" and len(cov["edges"]) == 5
    g = np.asarray(cov["g"])
    assert np.all(np.abs(g - logit(LENGTH_BIAS)) < 0.4), g
    assert abs(g[-2:].mean() - logit(LENGTH_BIAS)) < 0.3
    assert abs(effects["beta0"]) < 0.2
    assert effects["q"] == pytest.approx(fits["auto"].summary["parameters"]["q"])


def test_position_bias_recovered_with_length():
    log = ba.simulate(n_users=1500, n_models=6, casual_share=0.4, q=0.7, length_bias=LENGTH_BIAS, seed=5)
    effects = _fit(log).casual_effects_
    assert effects["beta0"] == pytest.approx(logit(0.7), abs=0.2)
    assert np.mean(effects["covariates"][0]["g"]) == pytest.approx(logit(LENGTH_BIAS), abs=0.3)


@pytest.fixture(scope="module")
def small_log():
    return ba.simulate(n_users=300, n_models=5, casual_share=0.3, length_bias=LENGTH_BIAS, seed=4)


@pytest.mark.parametrize("kwargs", [{}, {"variant": "continuous"}, {"tastes": 2, "max_iter": 60}, {"q": 0.5},
                                    {"variant": "continuous", "q": 0.4}])
def test_objective_never_decreases(small_log, kwargs):
    """(c) EM with covariates: the penalised log-likelihood never decreases (plain EM, and with SQUAREM)."""
    for accelerate in (False, True) if "tastes" not in kwargs else (False,):
        result = _fit(small_log, accelerate=accelerate, **kwargs)
        trace = np.asarray(result.loglik_trace)
        assert len(trace) > 3
        assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])), np.diff(trace).min()
        assert result.summary["converged"] or "tastes" in kwargs
        assert result.casual_effects_ is not None


def test_no_covariates_is_todays_model(length_log):
    """(d) without texts (or with casual_covariates='none') the fit is today's, number for number."""
    without_text = length_log.drop(columns=["prompt", "response_a", "response_b"])
    a = _fit(without_text)
    b = _fit(length_log, casual_covariates="none")
    assert a.casual_effects_ is None and b.casual_effects_ is None
    np.testing.assert_array_equal(a.users["quality"].to_numpy(), b.users["quality"].to_numpy())
    assert a.summary["parameters"] == b.summary["parameters"]
    assert a.loglik_trace == b.loglik_trace


def test_named_numeric_covariate_equals_length_ratio(length_log):
    """A named contrast column holding the same numbers is the same model as the default."""
    a_len = length_log["response_a"].str.len().to_numpy(dtype=float)
    b_len = length_log["response_b"].str.len().to_numpy(dtype=float)
    log = length_log.drop(columns=["response_a", "response_b"]).assign(len_ratio=np.log(a_len / b_len))
    named = _fit(log, casual_covariates=["len_ratio"])
    default = _fit(length_log)
    np.testing.assert_allclose(named.users["quality"], default.users["quality"], rtol=0, atol=1e-12)
    assert named.casual_effects_["covariates"][0]["name"] == "len_ratio"


def test_arena_conversations_give_the_length_ratio(length_log):
    small = length_log.iloc[:3000].copy()
    conv = lambda text: [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]  # noqa: E731
    arena = small.drop(columns=["response_a", "response_b"]).assign(
        conversation_a=[conv(t) for t in small["response_a"]], conversation_b=[conv(t) for t in small["response_b"]])
    a, b = _fit(arena), _fit(small)
    assert a.casual_effects_ == b.casual_effects_
    np.testing.assert_array_equal(a.users["quality"].to_numpy(), b.users["quality"].to_numpy())


def test_design_is_odd_and_cells_compress():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    x[:20] = 0.0
    design = casual_design(("u", "v"), x, 3)
    assert design.n_bins == (3, 3) and design.n_cells == 49 and design.n_effects == 6
    d = design.design()
    cells, mirrored = design.cells(x), design.cells(-x)
    np.testing.assert_array_equal(d[cells], -d[mirrored])  # f(-x) = -f(x)
    np.testing.assert_array_equal(d[design.cells(np.zeros((1, 2)))], 0.0)  # f(0) = 0
    g, beta0 = rng.normal(size=6), 0.3
    table = casual_table(beta0, g, d)
    # P(a | x) under (beta0, g) is P(b | -x) under (-beta0, g)
    mirror = casual_table(-beta0, g, d)
    np.testing.assert_allclose(table[2 * cells + 1], mirror[2 * mirrored])
    assert CasualDesign.from_dict(design.to_dict()) == design


def test_too_many_cells_is_refused():
    x = np.random.default_rng(0).normal(size=(200, 5))
    with pytest.raises(ba.InputError, match="casual cells"):
        casual_design(tuple("abcde"), x, 6)


def test_casual_m_step_is_the_optimum():
    """fit_casual's Newton solution: finite-difference gradient of the objective is zero, and it beats neighbours."""
    rng = np.random.default_rng(3)
    design = casual_design(("x",), rng.normal(size=300), 4)
    d = design.design()
    counts = rng.integers(0, 50, size=2 * design.n_cells).astype(float)
    priors = Priors()
    for q_free in (True, False):
        beta0, g = fit_casual(counts, d, 0.2, np.zeros(design.n_effects), priors, q_free)
        if not q_free:
            assert beta0 == 0.2
        x0 = np.concatenate([[beta0], g])

        def obj(x):
            return casual_objective(x[0], x[1:], counts, d, priors, q_free)

        eps = 1e-6
        for i in range(int(not q_free), x0.shape[0]):
            step = np.zeros_like(x0)
            step[i] = eps
            assert (obj(x0 + step) - obj(x0 - step)) / (2 * eps) == pytest.approx(0.0, abs=1e-4)
            assert obj(x0) >= obj(x0 + 1e-3 * np.sign(rng.normal()) * (step / eps))


def test_bad_covariate_column_is_one_line_error(length_log):
    log = length_log.iloc[:200].assign(score="1.5")
    log.loc[log.index[6], "score"] = "abc"
    with pytest.raises(ba.InputError, match=r"casual covariate column 'score' has a non-numeric value 'abc' at input row 7"):
        ba.fit(log, casual_covariates=["score"])
    with pytest.raises(ba.InputError, match="missing value at input row 3"):
        ba.fit(log.assign(score=np.where(np.arange(200) == 2, np.nan, 1.0)), casual_covariates="score")
    with pytest.raises(ba.InputError, match="is not in the input"):
        ba.fit(log, casual_covariates="nope")


def test_cli_bad_covariate_exit_2(tmp_path, length_log):
    """(g) the CLI: a bad covariate column is one line on stderr and exit code 2."""
    log = length_log.iloc[:300].assign(score="2")
    log.loc[log.index[4], "score"] = "x"
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-m", "bayes_annot", "fit", str(path), "--out", str(tmp_path / "o"),
                          "--casual-covariates", "score"], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "casual covariate column 'score'" in lines[0] and "row 5" in lines[0]


def test_cli_writes_casual_effects(tmp_path, length_log):
    path = tmp_path / "log.csv"
    length_log.iloc[:1500].to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-m", "bayes_annot", "fit", str(path), "--out", str(tmp_path / "o"),
                          "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = ba.load(tmp_path / "o")
    assert loaded.casual_effects_["covariates"][0]["name"] == "log_length_ratio"
    none = subprocess.run([sys.executable, "-m", "bayes_annot", "fit", str(path), "--out", str(tmp_path / "n"),
                           "--quiet", "--casual-covariates", "none"], capture_output=True, text=True)
    assert none.returncode == 0, none.stderr
    assert ba.load(tmp_path / "n").casual_effects_ is None


def test_texts_missing_on_some_rows_mean_no_contrast(length_log):
    log = length_log.iloc[:2000].copy()
    log.loc[log.index[:50], "response_a"] = None
    result = _fit(log)
    assert result.casual_effects_ is not None
    pd.testing.assert_index_equal(result.users.index, result.users.index)


# --------------------------------------------------------------------------- engines: Dask, update


@pytest.fixture(scope="module")
def text_log():
    log = ba.simulate(n_users=400, n_models=6, casual_share=0.3, length_bias=LENGTH_BIAS, seed=3)
    return log.astype({"user": str, "model_a": str, "model_b": str, "winner": str})


# Both engines run to a tight tolerance: at the default tol=1e-9 a fit stops up to ~1e-7 (100 * tol) short of the
# optimum, and where it stops follows the rounding of the partition sums (continuous: SQUAREM in both engines, whose
# extrapolations follow those bits too); at tol=1e-12 / 1e-13 both land within 1e-8 of each other on any machine
@pytest.mark.parametrize("kwargs", [{"tol": 1e-12},
                                    pytest.param({"variant": "continuous", "tol": 1e-13}, marks=pytest.mark.slow),
                                    pytest.param({"tastes": 2, "max_iter": 100}, marks=pytest.mark.slow)])
def test_dask_fit_equals_in_memory_fit(text_log, kwargs):
    """(e) the Dask engine computes the casual cells with the global bin edges: the same fit to 1e-8."""
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    with dask.config.set(scheduler="synchronous"):
        dask_fit = _fit(dd.from_pandas(text_log, npartitions=3), **kwargs)
        dask_users = dask_fit.users
        dask_users = dask_users.compute() if hasattr(dask_users, "compute") else dask_users
    memory = _fit(text_log, **kwargs)
    a, b = memory.casual_effects_, dask_fit.casual_effects_
    assert a["covariates"][0]["edges"] == b["covariates"][0]["edges"]
    np.testing.assert_allclose(b["covariates"][0]["g"], a["covariates"][0]["g"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(dask_users.set_index("user").sort_index()["quality"],
                               memory.users.set_index("user").sort_index()["quality"], rtol=0, atol=1e-8)


@pytest.mark.parametrize("kwargs", [{}, {"variant": "continuous"}])
def test_update_equals_refit_with_the_same_bins(text_log, kwargs):
    """(f) update() keeps the previous fit's bins and equals a refit of all rows with those bins."""
    from bayes_annot.casual import design_from_summary

    old, new = text_log.iloc[:-1500], text_log.iloc[-1500:]
    previous = _fit(old, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        updated = previous.update(new)
    design = design_from_summary(previous.summary)
    assert design_from_summary(updated.summary) == design
    refit = _fit(text_log, casual_covariates=design, **kwargs)
    np.testing.assert_allclose(updated.users["quality"], refit.users["quality"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(updated.casual_effects_["covariates"][0]["g"], refit.casual_effects_["covariates"][0]["g"],
                               rtol=0, atol=1e-5)


def test_folder_update_keeps_the_bins(tmp_path, text_log):
    from bayes_annot.casual import design_from_summary
    from bayes_annot.folder_update import update_saved

    old, new = text_log.iloc[:-1500], text_log.iloc[-1500:]
    previous = _fit(old)
    previous.save(tmp_path / "o")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        updated = update_saved(tmp_path / "o", new)
    refit = _fit(text_log, casual_covariates=design_from_summary(previous.summary))
    assert design_from_summary(updated.summary) == design_from_summary(previous.summary)
    np.testing.assert_allclose(updated.users["quality"], refit.users["quality"], rtol=0, atol=1e-6)


def test_report_warns_when_casual_clicks_follow_length(fits):
    from bayes_annot.report.builder import casual_effects_table, casual_length_warning

    message = casual_length_warning(fits["auto"].summary)
    assert message is not None and "picks the longer one" in message
    assert casual_length_warning(fits["none"].summary) is None
    table = casual_effects_table(fits["auto"].summary)
    assert len(table) == 6 and (table["P(casual picks the larger side)"] > 0.75).all()
    assert casual_effects_table(fits["none"].summary) is None


def test_heldout_loglik_prefers_the_length_covariate(length_log):
    """Held-out log-likelihood (the model choice a user without truth makes) picks the covariate model."""
    from bayes_annot.evaluate import heldout_loglik

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = heldout_loglik(length_log, "two-class", seed=1)
        old = heldout_loglik(length_log, "two-class", seed=1, casual_covariates="none")
    assert new["n_heldout"] == old["n_heldout"]
    assert new["heldout_loglik"] > old["heldout_loglik"] + 50, (new["heldout_loglik"], old["heldout_loglik"])


def test_casual_m_step_survives_a_flat_q_direction():
    """No casual labels left and beta0 far out (a SQUAREM extrapolation on a log where every user came out
    attentive): q's curvature underflows to 0 and the Hessian is singular. The M-step still returns finite
    effects and never lowers its objective (it raised LinAlgError in a continuous fit of 60 users)."""
    design = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    counts = np.zeros(2 * len(design))
    priors = Priors()
    g0 = np.array([0.3, -0.2, 0.1])
    beta0, g = fit_casual(counts, design, 1003.5, g0, priors, q_free=True)
    assert np.isfinite(beta0) and np.all(np.isfinite(g))
    assert casual_objective(beta0, g, counts, design, priors, True) >= casual_objective(1003.5, g0, counts, design,
                                                                                        priors, True)
    assert np.all(np.abs(g) <= np.abs(g0))  # the Normal prior pulls the effects towards 0
