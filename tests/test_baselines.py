"""Baselines: agreement rate, Chatbot Arena's e-value rule, a correct Noisy Bradley–Terry."""

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.baselines import (
    BradleyTerry,
    NoisyBradleyTerry,
    agreement_rate,
    arena_outlier,
    load_prepared,
    noisy_bt_objective,
)
from bayes_annot.metrics import auc

USER_COLUMNS = ["user", "n_labels", "quality", "quality_low", "quality_high", "kept", "uninformative", "n_rows"]


def _votes(spec):
    """Frame from [(user, model_a, model_b, winner), ...]."""
    return pd.DataFrame(spec, columns=["user", "model_a", "model_b", "winner"])


def _reference(wins_x, wins_y, ties=0):
    """Other users' votes on the pair (X, Y): one vote each, so none of them is checked."""
    rows = [(f"r{i}", "X", "Y", "model_a") for i in range(wins_x)]
    rows += [(f"s{i}", "X", "Y", "model_b") for i in range(wins_y)]
    rows += [(f"t{i}", "X", "Y", "tie") for i in range(ties)]
    return rows


@pytest.fixture(scope="module")
def sim_log():
    """1,000 users, 8 models, 30% casual fair-coin users, 5-40 labels each."""
    return ba.simulate(n_users=1000, n_models=8, casual_share=0.3, labels_per_user=(5, 40), seed=7)


def _aligned(users, log):
    truth = ba.truth_users(log)
    return users.set_index("user").loc[truth.index], truth


# --------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("method", ["agreement", "arena", "noisy_bt"])
def test_users_table_has_the_fit_result_shape(method, small_log):
    if method == "agreement":
        users = agreement_rate(small_log).users
    elif method == "arena":
        users = arena_outlier(small_log).users
    else:
        users = NoisyBradleyTerry().fit(small_log).users_
    fitted = ba.fit(small_log).users
    assert list(users.columns[: len(USER_COLUMNS)]) == USER_COLUMNS
    assert users["user"].tolist() == fitted["user"].tolist()
    assert (users["n_labels"].to_numpy() == fitted["n_labels"].to_numpy()).all()
    assert (users["n_rows"].to_numpy() == fitted["n_rows"].to_numpy()).all()
    q = users["quality"].to_numpy()
    assert np.isfinite(q).all() and (q > 0).all() and (q < 1).all()
    assert users["kept"].dtype == bool


def test_input_contract_path_and_column_names(tmp_path):
    log = _votes([("u1", "A", "B", "model_a"), ("u1", "B", "C", "model_a"), ("u2", "A", "C", "model_b")])
    renamed = log.rename(columns={"user": "judge", "model_a": "left", "model_b": "right", "winner": "w"})
    path = tmp_path / "log.csv"
    renamed.to_csv(path, index=False)
    for data in (renamed, path, str(path)):
        out = agreement_rate(data, model_a="left", model_b="right", winner="w")
        assert out.users["user"].tolist() == ["u1", "u2"]
        est = NoisyBradleyTerry(model_a="left", model_b="right", winner="w").fit(data)
        assert est.users_.shape[0] == 2


# --------------------------------------------------------------------------- agreement rate


def test_agreement_rate_hand_case():
    # Consensus: A > B > C (A beats B 2-1 and C 1-0, B beats C 2-0).
    log = _votes(
        [
            ("u1", "A", "B", "model_a"),
            ("u1", "B", "C", "model_a"),
            ("u2", "A", "C", "model_a"),
            ("u2", "B", "C", "model_a"),
            ("u2", "A", "B", "model_a"),
            ("u3", "A", "B", "model_b"),  # disagrees
            ("u4", "A", "B", "tie"),  # no usable label
        ]
    )
    out = agreement_rate(log)
    users = out.users.set_index("user")
    assert users.loc["u1", "agreements"] == 2 and users.loc["u1", "quality"] == pytest.approx(3 / 4)
    assert users.loc["u2", "agreements"] == 3 and users.loc["u2", "quality"] == pytest.approx(4 / 5)
    assert users.loc["u3", "agreements"] == 0 and users.loc["u3", "quality"] == pytest.approx(1 / 3)
    assert users.loc["u4", "n_labels"] == 0 and users.loc["u4", "quality"] == pytest.approx(0.5)
    assert bool(users.loc["u4", "uninformative"]) and not bool(users.loc["u4", "kept"])
    assert users["kept"].tolist() == [True, True, False, False]
    strengths = out.models.set_index("model")["strength"]
    assert strengths["A"] > strengths["B"] > strengths["C"]


def test_agreement_rate_prior_and_range(sim_log):
    users = agreement_rate(sim_log, prior=(2.0, 2.0)).users
    q = users["quality"].to_numpy()
    assert ((q > 0) & (q < 1)).all()
    raw = users["agreement_raw"].to_numpy()
    n = users["n_labels"].to_numpy()
    np.testing.assert_allclose(q, (raw * n + 2) / (n + 4))
    aligned, truth = _aligned(users, sim_log)
    assert auc(aligned["quality"], truth["true_attentive"]) > 0.85


# --------------------------------------------------------------------------- Arena e-value rule


def test_arena_p_values_and_e_value_by_hand():
    # Reference on (X, Y) from other users: X won 3, Y won 1, plus a tie (left out).
    # User t votes Y five times: each vote v = 0, p_up = P(R <= 0) = 1/4 -> factor 2.
    log = _votes(_reference(3, 1, ties=1) + [("t", "X", "Y", "model_b")] * 5)
    users = arena_outlier(log).users.set_index("user")
    assert users.loc["t", "e_value"] == pytest.approx(2.0**5)
    assert bool(users.loc["t", "flagged"]) and not bool(users.loc["t", "kept"])
    assert users.loc["t", "votes_at_flag"] == 5  # 2^4 = 16 < 20 < 2^5 = 32
    assert users.loc["t", "quality"] == pytest.approx(1 / 33)
    # Order of presentation does not matter: X shown second.
    flipped = _votes(_reference(3, 1, ties=1) + [("t", "Y", "X", "model_a")] * 5)
    assert arena_outlier(flipped).users.set_index("user").loc["t", "e_value"] == pytest.approx(32.0)
    # Everyone else has one vote: not checked, never flagged, score 1/2.
    others = users.drop(index="t")
    assert not others["checked"].any() and others["kept"].all()
    np.testing.assert_allclose(others["quality"], 0.5)
    assert others["uninformative"].all()


def test_arena_popular_votes_give_small_e_value():
    # v = 1 against 3 wins / 1 loss: p_up = 1 (factor 1/2), p_down = 3/4 (factor 2/3).
    log = _votes(_reference(3, 1) + [("t", "X", "Y", "model_a")] * 5)
    users = arena_outlier(log).users.set_index("user")
    assert users.loc["t", "e_value"] == pytest.approx(2 / 3)  # largest running value: after one vote
    assert users.loc["t", "quality"] == pytest.approx(1 / (1 + 2 / 3))
    assert not bool(users.loc["t", "flagged"])


def test_arena_tie_counts_one_half():
    # Reference: X won 1, Y won 3. A tie v = 1/2: p_up = P(R <= 1/2) = 3/4, p_down = P(R >= 1/2) = 1/4.
    log = _votes(_reference(1, 3) + [("t", "X", "Y", "tie")] * 5)
    users = arena_outlier(log).users.set_index("user")
    assert users.loc["t", "e_value"] == pytest.approx(2.0**5)  # the lower side: (1 / (2 * 1/4))^5
    assert bool(users.loc["t", "flagged"])
    assert users.loc["t", "n_labels"] == 0 and users.loc["t", "votes_checked"] == 5


def test_arena_min_and_max_votes():
    log = _votes(_reference(3, 1) + [("t", "X", "Y", "model_b")] * 5)
    unchecked = arena_outlier(log, min_votes=6).users.set_index("user").loc["t"]
    assert not unchecked["checked"] and not unchecked["flagged"] and unchecked["e_value"] == 1.0
    assert unchecked["quality"] == pytest.approx(0.5)
    capped = arena_outlier(log, max_votes=4).users.set_index("user").loc["t"]
    assert capped["votes_checked"] == 4 and capped["e_value"] == pytest.approx(16.0) and not capped["flagged"]
    assert arena_outlier(log, alpha=1 / 15, max_votes=4).users.set_index("user").loc["t", "flagged"]


def test_arena_reference_excludes_own_votes_unless_asked():
    log = _votes(_reference(3, 1) + [("t", "X", "Y", "model_b")] * 5)
    # FastChat's variant counts the user's own votes too: X 3, Y 6 -> p_up = 6/9 -> factor 3/4.
    own = arena_outlier(log, exclude_own=False).users.set_index("user").loc["t"]
    assert own["e_value"] == pytest.approx(max(0.75, 0.5))
    assert not own["flagged"]


def test_arena_vote_without_reference_is_skipped():
    log = _votes(_reference(3, 1) + [("t", "X", "Z", "model_b")] * 5)  # nobody else saw (X, Z)
    t = arena_outlier(log).users.set_index("user").loc["t"]
    assert t["checked"] and t["e_value"] == 1.0 and not t["flagged"]


def test_arena_rule_has_low_power_against_random_clickers(sim_log):
    users, truth = _aligned(arena_outlier(sim_log).users, sim_log)
    casual = ~truth["true_attentive"].to_numpy()
    flagged = users["flagged"].to_numpy()
    # ANCHORS: it flagged 0-13% of random clickers; it targets rigging, not carelessness.
    assert flagged[casual].mean() < 0.25
    assert flagged[~casual].mean() < 0.02
    assert auc(users["quality"], truth["true_attentive"]) > 0.6  # its score still ranks somewhat


# --------------------------------------------------------------------------- Noisy Bradley–Terry


def _random_problem(seed, n_users=30, n_models=5, n=400):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    a = rng.integers(0, n_models, n)
    b = (a + rng.integers(1, n_models, n)) % n_models
    sign = np.where(rng.random(n) < 0.6, 1.0, -1.0)
    params = rng.normal(0.0, 1.5, n_models + 2 * n_users)
    return params, (user, a, b, sign, n_users, n_models, 0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_bt_gradient_matches_finite_differences(seed):
    params, args = _random_problem(seed)
    _, grad = noisy_bt_objective(params, *args)
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(len(params)):
        step = np.zeros_like(params)
        step[i] = eps
        numeric[i] = (noisy_bt_objective(params + step, *args)[0] - noisy_bt_objective(params - step, *args)[0]) / (
            2 * eps
        )
    assert np.max(np.abs(grad - numeric)) < 1e-5


def test_noisy_bt_objective_is_the_mixture_likelihood():
    params, (user, a, b, sign, n_users, n_models, reg) = _random_problem(3, n=50)
    value, _ = noisy_bt_objective(params, user, a, b, sign, n_users, n_models, 0.0)
    s, gamma, q = params[:n_models], params[n_models : n_models + n_users], params[n_models + n_users :]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    expected = 0.0
    for u, i, j, y in zip(user, a, b, sign):
        expected -= np.log(sig(gamma[u]) * sig(y * (s[i] - s[j])) + (1 - sig(gamma[u])) * sig(y * q[u]))
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def noisy_bt(sim_log):
    return NoisyBradleyTerry().fit(sim_log)


def test_noisy_bt_recovers_attentive_users(noisy_bt, sim_log):
    users, truth = _aligned(noisy_bt.users_, sim_log)
    # crowd-kit's NoisyBT (wrong gradient) scores 0.48 here; the same likelihood fitted correctly:
    assert auc(users["quality"], truth["true_attentive"]) >= 0.9
    assert noisy_bt.converged_
    history = np.array(noisy_bt.loss_history_)
    assert history[-1] < history[0] and np.all(np.diff(history) <= 1e-8 * abs(history[0]))
    strengths = noisy_bt.models_.set_index("model")["strength"]
    true = ba.truth_models(sim_log).loc[strengths.index]
    assert ba.metrics.spearman(strengths, true) > 0.95
    assert np.allclose(noisy_bt.skills_, noisy_bt.users_["quality"])
    assert ((noisy_bt.biases_ > 0) & (noisy_bt.biases_ < 1)).all()


def test_noisy_bt_predicts_held_out_labels(noisy_bt, sim_log):
    held = sim_log.iloc[::7, :4].astype(str)
    held.loc[held.index[:3], "winner"] = "tie"
    logp = noisy_bt.predict_logproba(held)
    assert logp.shape == (len(held),)
    assert np.isnan(logp[:3]).all() and np.isfinite(logp[3:]).all() and (logp[3:] < 0).all()
    plain = BradleyTerry().fit(sim_log).predict_logproba(held)
    assert np.isnan(plain[:3]).all() and (plain[3:] < 0).all()
    # Unseen users and models still get a prediction.
    new = _votes([("someone_new", "model_0", "model_7", "model_a"), ("u0001", "model_0", "new_model", "model_b")])
    assert np.isfinite(noisy_bt.predict_logproba(new)).all()


def test_load_prepared_passes_prepared_data_through(small_log):
    prepared = load_prepared(small_log)
    assert load_prepared(prepared) is prepared


# --------------------------------------------------------------------------- benchmark script, tiny size


def test_accuracy_benchmark_runs_at_tiny_size():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md, raw = bench.run(
        n_users=80, seeds=(0,), splits=1, crowdkit_python=None, scenarios=["standard", "known-mu"],
        datasets=("topmodel2007",), progress=lambda *_: None,
    )
    assert "## Simulated scenarios" in md and "## Real data" in md
    methods = {r["method"] for r in raw["simulated"]}
    assert {"EM two-class", "agreement rate", "Arena e-value rule"} <= methods
    assert all(np.isfinite(r["per_label"]) and r["per_label"] < 0 for r in raw["heldout"])
