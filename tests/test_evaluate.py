"""Held-out predictive log-likelihood."""

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.evaluate import heldout_loglik, holdout_mask


def test_holdout_mask_hides_the_share_of_each_users_labels():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(50), rng.integers(1, 30, 50))
    usable = rng.random(len(user)) > 0.1
    mask = holdout_mask(user, usable, 0.2, seed=3)
    assert not (mask & ~usable).any()
    for u in range(50):
        n = usable[user == u].sum()
        assert mask[user == u].sum() == int(np.floor(0.2 * n + 0.5))
    np.testing.assert_array_equal(mask, holdout_mask(user, usable, 0.2, seed=3))


def test_behaviour_model_beats_plain_bradley_terry_when_users_are_casual():
    log = ba.simulate(n_users=600, casual_share=0.4, labels_per_user=(10, 30), seed=9)
    two = heldout_loglik(log, "two-class", seed=1)
    bt = heldout_loglik(log, "bradley-terry", seed=1)
    assert two["n_heldout"] == bt["n_heldout"] > 0
    assert two["heldout_loglik"] > bt["heldout_loglik"] + 20
    assert two["per_user"].index.nunique() == len(two["per_user"])


def test_no_casual_users_gives_no_advantage_to_the_mixture():
    log = ba.simulate(n_users=400, casual_share=0.0, labels_per_user=(10, 30), seed=10)
    two = heldout_loglik(log, "two-class", seed=1)
    bt = heldout_loglik(log, "bradley-terry", seed=1)
    assert abs(two["heldout_loglik"] - bt["heldout_loglik"]) < 0.02 * abs(bt["heldout_loglik"])


def test_bad_arguments():
    log = ba.simulate(n_users=20, seed=0)
    with pytest.raises(ba.InputError):
        heldout_loglik(log, "three-class")
    with pytest.raises(ba.InputError):
        heldout_loglik(log, frac=1.5)
