"""Downstream experiment: simulator, reward model, arms, tables and the benchmark script on a small seed."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the experiment lives with the benchmarks

from downstream_experiment import (  # noqa: E402
    ARMS,
    fit_reward_model,
    gain_table,
    markdown_table,
    pair_accuracy,
    run_experiment,
    simulate_features,
    summarise,
)


@pytest.fixture(scope="module")
def small_runs():
    return run_experiment(casual_shares=(0.2, 0.5), qs=(0.5, 0.7), seeds=(0, 1), n_users=40, n_test=3000)


def test_simulator_shapes_and_truth():
    sim = simulate_features(n_users=30, dim=5, n_models=4, casual_share=0.4, labels_per_user=(2, 6), seed=1)
    n = len(sim.log)
    assert sim.x_a.shape == sim.x_b.shape == (n, 5)
    assert list(sim.log.columns[:4]) == ["user", "model_a", "model_b", "winner"]
    assert (sim.log["model_a"] != sim.log["model_b"]).all()
    np.testing.assert_allclose(sim.log["true_utility_a"], sim.x_a @ sim.w)
    np.testing.assert_allclose(np.linalg.norm(sim.w), 1.0)
    assert sim.log.groupby("user")["true_attentive"].nunique().eq(1).all()
    x_a, x_b = sim.fresh_pairs(100, seed=2)
    assert x_a.shape == (100, 5)
    np.testing.assert_allclose(sim.model_means @ sim.w, np.linspace(1.5, -1.5, 4))
    free = simulate_features(n_users=30, dim=5, n_models=4, strength_range=None, seed=1)
    assert not np.allclose(free.model_means @ free.w, np.linspace(1.5, -1.5, 4))


def test_attentive_users_follow_the_utility_and_casual_users_click_left():
    sim = simulate_features(n_users=400, casual_share=0.5, q=0.8, seed=2)
    log = sim.log
    a_won = log["winner"] == "model_a"
    better_a = log["true_utility_a"] > log["true_utility_b"]
    att = log["true_attentive"]
    assert (a_won[att] == better_a[att]).mean() > 0.75
    assert abs(a_won[~att].mean() - 0.8) < 0.03


def test_reward_model_matches_scipy_and_recovers_direction():
    sim = simulate_features(n_users=200, casual_share=0.0, seed=3)
    choice = (sim.log["winner"] == "model_a").to_numpy()
    weight = np.random.default_rng(0).random(len(choice))
    theta = fit_reward_model(sim.x_a, sim.x_b, choice, weight, l2=1.0)
    z = (sim.x_a - sim.x_b) * np.where(choice, 1.0, -1.0)[:, None]
    ref = minimize(lambda t: weight @ np.logaddexp(0, -(z @ t)) + 0.5 * t @ t, np.zeros(len(theta)), method="BFGS")
    np.testing.assert_allclose(theta, ref.x, atol=1e-4)
    cosine = theta @ sim.w / np.linalg.norm(theta)
    assert cosine > 0.95
    x_a, x_b = sim.fresh_pairs(5000, seed=4)
    assert pair_accuracy(theta, x_a, x_b, sim.w) > 0.9
    assert pair_accuracy(sim.w, x_a, x_b, sim.w) == 1.0
    np.testing.assert_array_equal(fit_reward_model(sim.x_a[:0], sim.x_b[:0], choice[:0]), np.zeros(8))
    assert pair_accuracy(np.zeros(8), x_a, x_b, sim.w) == 0.5


def test_every_arm_is_run_and_tabulated(small_runs):
    assert list(small_runs["arm"].cat.categories) == list(ARMS)
    assert small_runs.groupby(["q", "casual_share", "seed"]).size().eq(len(ARMS)).all()
    assert small_runs["accuracy"].between(0, 1).all()
    summary = summarise(small_runs)
    assert set(summary["arm"].astype(str)) == set(ARMS)
    assert len(summary) == 2 * 2 * len(ARMS)
    table, gains = markdown_table(summary), gain_table(summary)
    for arm in ARMS:
        assert f"`{arm}`" in table
        if arm != "all":
            assert f"`{arm}`" in gains
    assert len(table.splitlines()) == 2 + 4


def test_arm_bookkeeping(small_runs):
    by = small_runs.set_index(["q", "casual_share", "seed", "arm"])
    all_arm = by.xs("all", level="arm")
    np.testing.assert_array_equal(all_arm["n_labels"], all_arm["n_rows"])
    assert (by.xs("oracle", level="arm")["casual_label_share"] == 0).all()
    assert (by.xs("weighted", level="arm")["n_labels"] == all_arm["n_labels"]).all()
    summary = summarise(small_runs)
    assert np.allclose(summary.loc[summary.arm == "all", "gain_mean"], 0)


def test_benchmark_script_writes_table_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_downstream", ROOT / "benchmarks" / "downstream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(
        ["--seeds", "2", "--sizes", "30", "--shares", "0.3", "--qs", "0.5", "--n-test", "1000",
         "--no-random-means", "--out-dir", str(tmp_path), "--csv", str(tmp_path / "runs.csv")]
    )
    assert code == 0
    text = (tmp_path / "downstream.md").read_text(encoding="utf-8")
    for arm in ARMS:
        assert f"`{arm}`" in text
    assert (tmp_path / "downstream.png").stat().st_size > 1000
    assert (tmp_path / "runs.csv").exists()
