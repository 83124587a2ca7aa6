"""Numerical extremes: tiny and lopsided logs never give NaN/inf or false verdicts."""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba

from .conftest import aligned

pytestmark = pytest.mark.filterwarnings("ignore::bayes_annot.errors.FitWarning")


def _finite(result):
    numeric = [result.users.quality, result.rows.weight, result.models.strength.dropna()]
    assert all(np.isfinite(col).all() for col in numeric)
    assert np.isfinite(result.summary["loglik"])
    json_text = pd.io.json.ujson_dumps(result.summary) if hasattr(pd.io.json, "ujson_dumps") else str(result.summary)
    assert "NaN" not in json_text and "Infinity" not in json_text


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_one_user(variant):
    log = ba.simulate(n_users=1, n_models=4, labels_per_user=30, casual_share=0.0, seed=1)
    result = ba.fit(log, variant=variant)
    _finite(result)
    assert result.users.shape[0] == 1


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_every_user_has_one_label(variant):
    log = ba.simulate(n_users=500, n_models=5, labels_per_user=1, seed=2)
    result = ba.fit(log, variant=variant)
    _finite(result)
    assert result.users.quality.between(0.05, 0.95).all()


def test_one_user_with_a_hundred_thousand_labels():
    big = ba.simulate(n_users=1, n_models=6, labels_per_user=100_000, casual_share=0.0, seed=3)
    rest = ba.simulate(n_users=300, n_models=6, labels_per_user=(5, 20), seed=4)
    rest["user"] = rest["user"].astype(str) + "_r"
    log = pd.concat([big.astype({"user": str}), rest.astype({"user": str})], ignore_index=True)
    result = ba.fit(log)
    _finite(result)
    assert result.users.set_index("user").loc["u0", "quality"] > 0.999


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_everyone_casual_gives_no_verdict(variant):
    # Coin-flip users make every learned strength ~0: attentive and casual labels
    # look alike, so nobody can be judged. Expect a warning and prior-level quality.
    log = ba.simulate(n_users=400, n_models=6, casual_share=1.0, labels_per_user=(10, 30), seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ba.fit(log, variant=variant, filter="fdr:0.1")
    _finite(result)
    assert any("uninformative" in str(w.message) for w in caught)
    assert result.users.uninformative.all()
    np.testing.assert_allclose(result.users.quality, 0.5)
    # no verdict on anybody: every usable row says so, and the no_verdict policy decides (default keep)
    usable = result.rows["reason"].astype(str).isin(["ok", "user_low_quality", "no_verdict"])
    assert (result.rows.loc[usable, "reason"] == "no_verdict").all()
    assert result.users.kept.all()
    assert any("400 of 400 users" in w and "no verdict" in w for w in result.summary["warnings"])
    assert not result.filter("fdr:0.1", no_verdict="drop").users.kept.any()


def test_everyone_attentive():
    log = ba.simulate(n_users=400, n_models=6, casual_share=0.0, labels_per_user=(10, 30), seed=5)
    result = ba.fit(log)
    _finite(result)
    assert result.summary["parameters"]["pi"] > 0.9 and result.users.quality.median() > 0.9


def test_strengths_far_apart_near_deterministic_choices():
    log = ba.simulate(n_users=400, n_models=4, strengths=[8.0, 3.0, -3.0, -8.0], labels_per_user=(5, 30), seed=6)
    result = ba.fit(log)
    _finite(result)
    users, truth = aligned(result, log)
    from bayes_annot.metrics import auc

    assert auc(users.quality, truth.true_attentive) > 0.97


def test_two_models_only():
    log = ba.simulate(n_users=300, n_models=2, strengths=[1.0, -1.0], labels_per_user=(10, 40), seed=7)
    result = ba.fit(log)
    _finite(result)
    assert result.models.set_index("model").strength["model_0"] > 0


def test_p_a_of_exactly_zero_and_one_is_clipped():
    log = ba.simulate(n_users=200, known_mu=0.8, labels_per_user=20, seed=8)
    log["p_a"] = np.where(log["p_a"] > 0.5, 1.0, 0.0)
    with pytest.warns(UserWarning, match="clipped"):
        result = ba.fit(log)
    _finite(result)


def test_disconnected_comparison_graph_warns_and_centres_each_part():
    a = ba.simulate(n_users=200, n_models=3, labels_per_user=(5, 20), seed=9)
    b = ba.simulate(n_users=200, n_models=3, labels_per_user=(5, 20), seed=10)
    for col in ("model_a", "model_b"):
        b[col] = "other_" + b[col].astype(str)
    b["user"] = "b_" + b["user"].astype(str)
    log = pd.concat([a.astype(str), b.astype(str)], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ba.fit(log)
    assert any("disconnected" in str(w.message) for w in caught)
    assert result.summary["comparison_graph_components"] == 2
    assert any("disconnected" in w for w in result.summary["warnings"])
    strengths = result.models.set_index("model").strength
    assert abs(strengths[[m for m in strengths.index if m.startswith("other_")]].sum()) < 1e-6
    assert abs(strengths[[m for m in strengths.index if not m.startswith("other_")]].sum()) < 1e-6
    _finite(result)
