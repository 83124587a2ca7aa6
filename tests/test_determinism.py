"""Same seed, same output for every engine; more of the same data never weakens a verdict."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit

import bayes_annot as ba


@pytest.fixture(scope="module")
def log():
    return ba.simulate(n_users=120, n_models=4, casual_share=0.3, labels_per_user=(5, 25), seed=17)


def test_map_same_seed_byte_identical(tmp_path, log):
    for name in ("a", "b"):
        ba.fit(log, method="map", seed=5).save(tmp_path / name)
    for table in ("users.csv", "models.csv"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes()


@pytest.mark.slow
def test_nuts_same_seed_identical_draws(log):
    a = ba.fit(log, method="nuts", draws=200, tune=200, chains=2, seed=9)
    b = ba.fit(log, method="nuts", draws=200, tune=200, chains=2, seed=9)
    for var in ("pi", "q", "strength"):
        np.testing.assert_array_equal(a.idata.posterior[var].values, b.idata.posterior[var].values)
    pd.testing.assert_frame_equal(a.users, b.users)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_duplicating_the_log_never_weakens_a_verdict(log, variant):
    once = ba.fit(log, model=variant)
    twice = ba.fit(pd.concat([log, log], ignore_index=True), model=variant)
    q1 = once.users.set_index("user").quality
    q2 = twice.users.set_index("user").loc[q1.index].quality
    if variant == "two-class":
        centre1, centre2 = once.summary["parameters"]["pi"], twice.summary["parameters"]["pi"]
    else:  # the prior centre of logit(eta): shrinkage towards it must not grow with more data
        from scipy.special import expit

        centre1, centre2 = expit(once.summary["parameters"]["m"]), expit(twice.summary["parameters"]["m"])
    # evidence = distance of the user's log-odds from the population level; doubling the data doubles
    # each user's log Bayes factor, so no verdict may move back towards the centre (small slack for
    # the re-estimated global parameters)
    e1 = np.abs(logit(q1.clip(1e-12, 1 - 1e-12)) - logit(centre1))
    e2 = np.abs(logit(q2.clip(1e-12, 1 - 1e-12)) - logit(centre2))
    informative = ~once.users.set_index("user").uninformative
    assert np.all(e2[informative] >= e1[informative] - 0.05)
    assert np.median(e2[informative] - e1[informative]) > 0
