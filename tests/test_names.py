"""One word per idea (issue 13, item 7): ``variant`` is the behaviour variant, ``model`` an LLM.

``variant=`` / ``--variant`` is the name everywhere; the old spellings (``model=``, ``--model``,
``simulate(quality=)``) still work: in Python with a :class:`FutureWarning` naming the new one and
the identical result, both at once is a :class:`TypeError`. Folders written before the rename
(``summary.json`` with ``model``) still load, warm-start and update.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.evaluate import heldout_loglik
from bayes_annot.folder_update import update_saved


@pytest.fixture(scope="module")
def log():
    return ba.simulate(n_users=150, n_models=4, casual_share=0.3, seed=11)


def _same(a, b):
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.models, b.models)


def _strict(call, *args, **kwargs):
    """``call`` with every FutureWarning an error: the new spelling warns about nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("ignore", ba.FitWarning)
        return call(*args, **kwargs)


def _deprecated(call, *args, **kwargs):
    with pytest.warns(FutureWarning, match="variant=") as record:
        out = call(*args, **kwargs)
    assert all(w.filename == __file__ for w in record if issubclass(w.category, FutureWarning))  # the user's line
    return out


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_fit_variant_and_its_deprecated_alias_give_the_same_fit(log, variant):
    new = _strict(ba.fit, log, variant=variant)
    assert new.summary["variant"] == new.summary["settings"]["variant"] == variant
    assert "model" not in new.summary and "model" not in new.summary["settings"]
    old = _deprecated(ba.fit, log, model=variant)
    _same(new, old)
    assert old.summary["variant"] == variant


def test_both_spellings_at_once_are_refused(log):
    with pytest.raises(TypeError, match="variant=.*model="):
        ba.fit(log, variant="continuous", model="continuous")
    with pytest.raises(TypeError, match="variant=.*model="):
        heldout_loglik(log, variant="two-class", model="two-class")
    with pytest.raises(TypeError, match="variant=.*model="):
        ba.UserQualityModel(variant="continuous", model="continuous")
    with pytest.raises(TypeError, match="variant=.*quality="):
        ba.simulate(n_users=10, variant="continuous", quality="continuous")
    with pytest.raises(ba.InputError, match="unknown variant 'three-class'"):
        heldout_loglik(log, variant="three-class")


def test_estimator_lists_variant_and_accepts_the_alias(log):
    est = _strict(ba.UserQualityModel, variant="continuous", q=0.5)
    params = est.get_params()
    assert params["variant"] == "continuous" and "model" not in params
    twin = _deprecated(ba.UserQualityModel, model="continuous", q=0.5)
    assert twin.get_params() == params
    clone = type(est)(**est.get_params())  # what sklearn.base.clone does
    assert clone.get_params() == params
    _deprecated(clone.set_params, model="two-class")
    assert clone.get_params()["variant"] == "two-class"
    a, b = _strict(est.fit, log), _strict(twin.fit, log)
    _same(a.result_, b.result_)


def test_heldout_loglik_alias(log):
    new = _strict(heldout_loglik, log, variant="continuous", seed=2)
    old = _deprecated(heldout_loglik, log, model="continuous", seed=2)
    assert new["variant"] == old["variant"] == "continuous"
    assert new["heldout_loglik"] == old["heldout_loglik"]
    pd.testing.assert_series_equal(new["per_user"], old["per_user"])


def test_compare_heldout_table_names_the_variant(log):
    fits = {"two": _strict(ba.fit, log), "cont": _strict(ba.fit, log, variant="continuous")}
    table = ba.diagnose(fits["two"], compare=fits).summary["comparison"]["table"]
    assert {row["fit"]: row["variant"] for row in table} == {"two": "two-class", "cont": "continuous"}


def test_update_alias(log):
    old_rows, new_rows = log.iloc[:-200], log.iloc[-200:]
    first = _strict(ba.fit, old_rows)
    new = _strict(first.update, new_rows, variant="continuous")
    old = _deprecated(first.update, new_rows, model="continuous")
    assert new.summary["variant"] == old.summary["variant"] == "continuous"
    _same(new, old)


def test_simulate_variant_and_its_deprecated_alias(log):
    new = _strict(ba.simulate, n_users=80, n_models=4, variant="continuous", seed=5)
    old = _deprecated(ba.simulate, n_users=80, n_models=4, quality="continuous", seed=5)
    pd.testing.assert_frame_equal(new, old)
    assert new["true_eta"].between(0, 1).all() and new["true_eta"].nunique() > 2  # continuous: one eta per user


def test_cli_variant_and_its_alias_write_the_same_folder(log, tmp_path, capsys):
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    assert main(["fit", str(path), "--variant", "continuous", "--out", str(tmp_path / "new"), "--quiet"]) == 0
    assert main(["fit", str(path), "--model", "continuous", "--out", str(tmp_path / "old"), "--quiet"]) == 0
    for table in ("users.csv", "models.csv", "rows.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "new" / table), pd.read_csv(tmp_path / "old" / table))
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    assert summary["variant"] == summary["settings"]["variant"] == "continuous" and "model" not in summary
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = capsys.readouterr().out
    assert "--variant {two-class,continuous}, --model {two-class,continuous}" in help_text
    sim = tmp_path / "sim.csv"
    assert main(["simulate", "--out", str(sim), "--users", "60", "--variant", "continuous", "--seed", "1"]) == 0
    assert main(["simulate", "--out", str(tmp_path / "sim_old.csv"), "--users", "60", "--quality", "continuous",
                 "--seed", "1"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sim), pd.read_csv(tmp_path / "sim_old.csv"))


def _as_written_before_the_rename(folder):
    """Rewrite a results folder's summary.json as bayes_annot 0.1.0 wrote it before the rename."""
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    summary = {("model" if key == "variant" else key): value for key, value in summary.items()}
    summary["settings"] = {("model" if key == "variant" else key): value for key, value in summary["settings"].items()}
    path.write_text(json.dumps(summary))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_folders_written_before_the_rename_load_warm_start_and_update(log, tmp_path, fmt):
    old_rows, new_rows = log.iloc[:-200], log.iloc[-200:]
    fitted = _strict(ba.fit, old_rows, variant="continuous")
    fitted.save(tmp_path / "today", format=fmt)
    fitted.save(tmp_path / "before", format=fmt)
    _as_written_before_the_rename(tmp_path / "before")
    loaded = _strict(ba.load, tmp_path / "before")
    assert loaded.summary["variant"] == loaded.summary["settings"]["variant"] == "continuous"
    assert "model" not in loaded.summary and "model" not in loaded.summary["settings"]
    _same(loaded, _strict(ba.load, tmp_path / "today"))
    # a warm start and an update read the variant and settings from the old key
    _same(_strict(ba.fit, log, variant="continuous", start=tmp_path / "before"),
          _strict(ba.fit, log, variant="continuous", start=tmp_path / "today"))
    updated_before = _strict(update_saved, tmp_path / "before", new_rows)
    updated_today = _strict(update_saved, tmp_path / "today", new_rows)
    assert updated_before.summary["variant"] == "continuous"
    _same(updated_before, updated_today)
    np.testing.assert_array_equal(updated_before.rows["kept"], updated_today.rows["kept"])
