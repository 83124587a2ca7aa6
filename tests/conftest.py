"""Shared fixtures: seeded simulated logs (session scope) and a project-local PyTensor cache."""

import os
from pathlib import Path

os.environ.setdefault("PYTENSOR_FLAGS", f"base_compiledir={Path(__file__).resolve().parents[1] / '.pytensor_cache'}")
os.environ.setdefault("MPLBACKEND", "Agg")
# The notebooks (run by nbmake, in kernels that inherit this environment) read it to run NUTS shorter:
# the suite checks that every cell runs; the stored outputs, and a user's run, are the full ones.
os.environ.setdefault("BAYES_ANNOT_NOTEBOOK_QUICK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bayes_annot as ba  # noqa: E402


def aligned(result, log):
    """Users table of a fit aligned with the simulated truth, by user id."""
    truth = ba.truth_users(log)
    users = result.users.set_index("user").loc[truth.index]
    return users, truth


@pytest.fixture(scope="session")
def standard_log():
    """3,000 users, 8 models, 30% casual (q = 0.5), 5-40 labels per user."""
    return ba.simulate(n_users=3000, n_models=8, casual_share=0.3, q=0.5, labels_per_user=(5, 40), seed=11)


@pytest.fixture(scope="session")
def standard_fit(standard_log):
    return ba.fit(standard_log)


@pytest.fixture(scope="session")
def small_log():
    return ba.simulate(n_users=200, n_models=5, casual_share=0.3, labels_per_user=(3, 15), tie_rate=0.1, seed=5)


@pytest.fixture(scope="session")
def log_csv(tmp_path_factory):
    """A small CSV log with ties and text columns (the output-safety tests; a module may define its own)."""
    path = tmp_path_factory.mktemp("log") / "log.csv"
    ba.simulate(n_users=150, n_models=4, labels_per_user=(3, 12), tie_rate=0.05, with_text=True, seed=21).to_csv(path, index=False)
    return path


@pytest.fixture
def result_dir(tmp_path, log_csv):
    """``log_csv`` fitted into ``tmp_path / "res"`` by the CLI."""
    from bayes_annot.cli import main

    out = tmp_path / "res"
    assert main(["fit", str(log_csv), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_collection_modifyitems(config, items):
    """Run the `slow` tests (NUTS sampling, large simulations) and the notebooks first, in their usual order.

    With ``pytest -n 2 --dist worksteal`` (``make test``) the longest tests start at once and
    the short ones fill in around them, so both workers finish together instead of one worker
    starting a multi-minute NUTS test near the end. Order only: every test still runs.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None and item.path.suffix != ".ipynb")
