"""Taste classes on every engine (issue 13): one EM driver over in-memory blocks, Dask partitions
and an update's merged block.

* ``fit(dask_frame, tastes=2)`` equals ``fit(frame, tastes=2)`` (quality, class posteriors,
  strengths per class, shares, ``q``) to 1e-8;
* ``result.update(new_rows)`` of a fit with taste classes (warm start from its classes, the
  merged block) agrees with a refit on all rows to 1e-6 in quality, and so does the saved-folder
  update of the command line.
"""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.tastes import simulate_tastes

COLUMNS = ["user", "model_a", "model_b", "winner"]
TASTE_USER_COLUMNS = ["quality", "p_taste_1", "p_taste_2"]
TASTE_MODEL_COLUMNS = ["strength_taste_1", "strength_taste_2"]


@pytest.fixture(scope="module")
def log():
    log = simulate_tastes(n_users=400, n_models=6, casual_share=0.3, minority_share=0.2, seed=5)[COLUMNS].copy()
    for column in COLUMNS:
        log[column] = log[column].astype(str)
    log["question_id"] = np.arange(len(log))  # an id: identical votes of a user are distinct rows
    return log


def _max_diff(a, b, key, columns):
    a, b = a.set_index(key), b.set_index(key).loc[a.set_index(key).index]
    return float(np.max(np.abs(a[columns].to_numpy(float) - b[columns].to_numpy(float))))


def test_dask_frame_with_tastes_equals_in_memory(log):
    dd = pytest.importorskip("dask.dataframe")
    # default settings: several starts reach the same optimum, and both engines keep the first of them
    memory = ba.fit(log, tastes=2)
    dask = ba.fit(dd.from_pandas(log, npartitions=4), tastes=2)
    assert _max_diff(memory.users, dask.users, "user", TASTE_USER_COLUMNS) < 1e-8
    assert _max_diff(memory.models, dask.models, "model", TASTE_MODEL_COLUMNS + ["strength"]) < 1e-8
    for name in ("pi", "q", "share_taste_1", "share_taste_2"):
        assert abs(memory.summary["parameters"][name] - dask.summary["parameters"][name]) < 1e-8
    assert dask.summary["tastes"]["n_tastes"] == 2 and dask.summary["settings"]["tastes"] == 2
    np.testing.assert_array_equal(memory.users.set_index("user").taste,
                                  dask.users.set_index("user").loc[memory.users.user].taste)
    # the minority taste is kept on both engines: class 2 is the reversed ranking
    strengths = dask.models.set_index("model").loc[[f"model_{k}" for k in range(6)]]
    assert np.corrcoef(strengths.strength_taste_1, strengths.strength_taste_2)[0, 1] < -0.9


@pytest.fixture(scope="module")
def split(log):
    rng = np.random.default_rng(0)
    new = np.zeros(len(log), bool)
    new[rng.choice(len(log), size=len(log) // 20, replace=False)] = True
    return log[~new], log[new]


def test_update_with_tastes_agrees_with_a_refit(log, split):
    old, new = split
    previous = ba.fit(old, tastes=2)
    updated = previous.update(new)
    refit = ba.fit(pd.concat([old, new], ignore_index=True), tastes=2)
    assert updated.summary["counts"]["rows"] == len(log)
    assert updated.summary["tastes"]["n_tastes"] == 2
    assert updated.summary["tastes"]["n_starts"] == 1  # the previous classes are the only start
    assert _max_diff(refit.users, updated.users, "user", TASTE_USER_COLUMNS) < 1e-6
    assert _max_diff(refit.models, updated.models, "model", TASTE_MODEL_COLUMNS) < 1e-5
    # warm: fewer EM iterations than the refit's winning start
    assert updated.summary["iterations"] < refit.summary["iterations"]


def test_saved_folder_update_with_tastes(log, split, tmp_path):
    old, new = split
    ba.fit(old, tastes=2).save(tmp_path / "out")
    new.to_csv(tmp_path / "new.csv", index=False)
    done = subprocess.run(
        [sys.executable, "-m", "bayes_annot", "fit", str(tmp_path / "new.csv"), "--update", str(tmp_path / "out"),
         "--out", str(tmp_path / "out")], capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    users = pd.read_csv(tmp_path / "out" / "users.csv", dtype={"user": str})
    refit = ba.fit(pd.concat([old, new], ignore_index=True), tastes=2)
    assert {"taste", "p_taste_1", "p_taste_2"} <= set(users.columns)
    assert _max_diff(refit.users, users, "user", TASTE_USER_COLUMNS) < 1e-6
