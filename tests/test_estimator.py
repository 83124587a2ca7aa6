"""UserQualityModel follows scikit-learn's estimator conventions (issue 13 item 7b)."""

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.likelihood import Priors


@pytest.fixture(scope="module")
def log():
    return ba.simulate(n_users=150, seed=4)


def _estimator():
    return ba.UserQualityModel(variant="continuous", q=0.5, filter="prob:0.6", priors=Priors(strength_sigma=2.0))


def test_get_params_round_trips_without_sklearn(log):
    est = _estimator()
    params = est.get_params()
    assert params == est.get_params(deep=True) == est.get_params(deep=False)
    assert params["variant"] == "continuous" and params["q"] == 0.5 and params["tol"] == 1e-9  # fit's default
    twin = type(est)(**params)
    assert twin.get_params() == params
    a, b = est.fit(log), twin.fit(log)
    pd.testing.assert_frame_equal(a.users_, b.users_)
    pd.testing.assert_frame_equal(a.models_, b.models_)


def test_set_params_changes_the_fit_and_rejects_unknown_names(log):
    est = _estimator()
    assert est.set_params(q=None, filter="none") is est
    assert est.get_params()["q"] is None and est.get_params()["variant"] == "continuous"
    assert est.fit(log).summary_["settings"]["q"] is None
    with pytest.raises(TypeError, match="unknown setting"):
        est.set_params(n_clusters=3)
    with pytest.raises(TypeError, match="unknown setting"):
        ba.UserQualityModel(tole=1e-3)


def test_sklearn_clone(log):
    base = pytest.importorskip("sklearn.base")
    est = _estimator().fit(log)
    copy = base.clone(est)
    assert copy is not est and not hasattr(copy, "result_")
    assert copy.get_params() == est.get_params()
    np.testing.assert_array_equal(copy.fit(log).users_.quality, est.users_.quality)
