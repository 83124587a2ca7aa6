"""Issue 17: verdicts that mislead, warnings that reach the user.

Users without a verdict (item 1), one taste verdict (item 2), degenerate fits
(item 3), every warning on stderr and in summary.json (item 7), FitWarnings
pointing at the user's call.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba
from bayes_annot.cli import main
from bayes_annot.data import REASONS
from bayes_annot.errors import FitWarning, InputError

def _quiet_fit(data, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ba.fit(data, **settings)


@pytest.fixture(scope="module")
def mu_log():
    # the paper's setting: only pairs with model_0 say anything about a user's quality
    return ba.simulate(n_users=600, n_models=8, labels_per_user=(1, 6), seed=7)


@pytest.fixture(scope="module")
def cems_log():
    from bayes_annot.datasets import load_real

    return load_real("cemschoice")


@pytest.fixture(scope="module")
def cems_taste_checked(cems_log):
    """One ``taste_check=True`` fit of the CEMS log (the casual-group test refits ~100 times), shared:
    the tests below read it and its report, none changes it."""
    return _quiet_fit(cems_log, taste_check=True)


# --------------------------------------------------------------------------- item 1


def test_users_without_a_verdict_get_their_own_reason_and_a_warning(mu_log):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ba.fit(mu_log, mu=0.75, strong_model="model_0", q=0.5)
    users = result.users.set_index("user")
    no_verdict = users.index[(users.n_labels > 0) & users.uninformative]
    assert len(no_verdict) > 0
    rows = result.rows
    assert "no_verdict" in REASONS
    assert set(rows["reason"].astype(str)) <= set(REASONS)
    theirs = rows[rows["user"].isin(no_verdict) & rows["reason"].astype(str).isin(["ok", "no_verdict", "user_low_quality"])]
    assert (theirs["reason"] == "no_verdict").all()
    assert theirs["kept"].all()  # default policy: keep
    counts = result.summary["counts"]
    assert counts["no_verdict_users"] >= len(no_verdict)
    assert result.summary["filter"]["no_verdict"] == "keep"
    message = [w for w in result.summary["warnings"] if "no verdict" in w]
    assert len(message) == 1 and f"{counts['no_verdict_users']} of" in message[0] and "% of the rows" in message[0]
    assert any("no verdict" in str(w.message) for w in caught if issubclass(w.category, FitWarning))
    assert "notes" not in result.summary  # the uninformative users are a warning now, not a note

    dropped = _quiet_fit(mu_log, mu=0.75, strong_model="model_0", q=0.5, no_verdict="drop")
    d_rows = dropped.rows
    nv = d_rows["reason"] == "no_verdict"
    assert nv.sum() == counts["no_verdict_rows"] and not d_rows.loc[nv, "kept"].any()
    assert dropped.summary["counts"]["kept_users"] == counts["kept_users"] - counts["no_verdict_users"]
    assert result.filter("prob:0.5", no_verdict="drop").summary["counts"]["kept_rows"] == dropped.summary["counts"]["kept_rows"]
    with pytest.raises(InputError):
        ba.fit(mu_log, no_verdict="maybe")


def test_dpo_export_follows_the_no_verdict_policy(mu_log):
    log = mu_log.assign(prompt="p", response_a="a", response_b="b")
    keep = _quiet_fit(log, mu=0.75, strong_model="model_0", q=0.5)
    drop = keep.filter("prob:0.5", no_verdict="drop")
    n_nv = int((keep.rows["reason"] == "no_verdict").sum())
    assert n_nv > 0
    assert len(keep.to_dpo()) == int(keep.rows["kept"].sum())
    assert len(keep.to_dpo()) - len(drop.to_dpo()) == n_nv


def test_single_label_users_kept_whatever_they_clicked_have_no_verdict():
    # Arena-like: many close models, one or two labels per user: one label cannot move a user below 0.5
    log = ba.simulate(n_users=800, n_models=12, labels_per_user=(1, 2), seed=3,
                      strengths=np.linspace(0.6, -0.6, 12))
    result = _quiet_fit(log)
    users = result.users
    floor = result.estimates.quality_floor
    kept_anyway = (users.n_labels > 0) & users.kept & (floor >= 0.5)
    assert kept_anyway.sum() > 0
    reasons = result.rows.groupby("user", observed=True)["reason"].agg(lambda r: set(r.astype(str)))
    for user in users.user[kept_anyway]:
        assert reasons[user] <= {"no_verdict", "tie", "same_model"}


def test_cli_warns_about_rows_without_a_verdict(mu_log, tmp_path, capsys):
    path = tmp_path / "sim.csv"
    mu_log.to_csv(path, index=False)
    assert main(["fit", str(path), "--mu", "0.75", "--strong-model", "model_0", "--q", "0.5",
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "bayes-annot: warning:" in err and "no verdict" in err and "% of the rows" in err
    assert any("no verdict" in w for w in summary["warnings"])
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert (rows["reason"] == "no_verdict").sum() == summary["counts"]["no_verdict_rows"] > 0
    assert main(["fit", str(path), "--mu", "0.75", "--strong-model", "model_0", "--q", "0.5", "--no-verdict", "drop",
                 "--out", str(tmp_path / "out2"), "--quiet"]) == 0
    rows2 = pd.read_csv(tmp_path / "out2" / "rows.csv")
    assert not rows2.loc[rows2["reason"] == "no_verdict", "kept"].any()


# --------------------------------------------------------------------------- item 2


def test_one_taste_verdict_stored_by_the_fit_and_shown_by_the_report(cems_log, cems_taste_checked, tmp_path,
                                                                     monkeypatch):
    result = cems_taste_checked
    check = result.summary["taste_diagnostic"]
    assert check["verdict"] in ("taste group", "noise", "too few")
    # tastes='auto' computes the same verdict (one function, same settings)
    from bayes_annot import tastes

    calls = []
    real = tastes.casual_group_test
    monkeypatch.setattr(tastes, "casual_group_test", lambda *a, **k: calls.append(1) or real(*a, **k))
    html = result.report(tmp_path / "report.html").read_text()
    assert not calls, "the report must not run the casual-group test"
    from html import escape

    assert escape(check["message"]) in html
    if check["verdict"] == "taste group":
        assert check["message"] in result.summary["warnings"]
    # a fit without the check: the report says how to run it, and computes nothing
    plain = _quiet_fit(cems_log)
    html = plain.report(tmp_path / "plain.html").read_text()
    assert not calls and "--taste-check" in html and "taste_diagnostic" not in plain.summary


def test_tastes_auto_at_its_limit_warns_and_max_tastes_is_exposed(cems_log, cems_taste_checked, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ba.fit(cems_log, tastes="auto", max_tastes=2)
    selection = result.summary["taste_selection"]
    assert selection["max_tastes"] == 2 and len(selection["table"]) == 2
    assert selection["chosen"] == 2 and selection["at_limit"]
    assert any("largest number of taste classes" in w for w in result.summary["warnings"])
    assert any("max_tastes" in str(w.message) for w in caught)
    # the test the report shows is the one tastes='auto' stored, equal to taste_check's
    direct = cems_taste_checked.summary["taste_diagnostic"]
    assert result.summary["taste_diagnostic"]["verdict"] == direct["verdict"]
    assert result.summary["taste_diagnostic"]["statistic"] == pytest.approx(direct["statistic"], rel=1e-6)
    path = tmp_path / "c.csv"
    cems_log.to_csv(path, index=False)
    assert main(["fit", str(path), "--tastes", "auto", "--max-tastes", "2", "--out", str(tmp_path / "o")]) == 0
    assert "largest number of taste classes" in capsys.readouterr().err
    with pytest.raises(InputError):
        ba.fit(cems_log, tastes="auto", max_tastes=0)


# --------------------------------------------------------------------------- item 3


def test_continuous_fit_of_cemschoice_is_no_longer_degenerate(cems_log):
    """With each user's eta maximised jointly with m (before issue #14), the continuous fit of cemschoice put
    q at 0.01 (a degenerate fit, warned); with the users summed out q is an ordinary 0.39."""
    result = _quiet_fit(cems_log, variant="continuous")
    assert 0.03 < result.summary["parameters"]["q"] < 0.97
    assert not any("degenerate fit" in w for w in result.summary["warnings"])


def test_degenerate_fit_warns_in_summary_and_report(tmp_path):
    """Casual users who always click the left response put the estimated q at the edge: warned, and shown."""
    log = ba.simulate(n_users=300, n_models=4, casual_share=0.5, q=0.999, seed=2)
    result = _quiet_fit(log)
    assert result.summary["parameters"]["q"] > 0.97
    assert any("degenerate fit: q =" in w for w in result.summary["warnings"])
    html = result.report(tmp_path / "r.html").read_text()
    assert "No warnings" not in html and "degenerate fit" in html


def test_degenerate_checks_cover_pi_tau_and_runaway_strengths():
    from bayes_annot.fit import degenerate_fit_warnings
    from bayes_annot.problem import Estimates
    from bayes_annot.likelihood import Priors

    def est(**params):
        return Estimates(engine="nuts", variant="continuous", quality=np.zeros(1), p_good=np.zeros(1),
                         n_labels_user=np.ones(1), informative=np.ones(1, bool),
                         strengths=np.array(params.pop("s", [0.5, -0.5])), parameters=params)

    assert degenerate_fit_warnings(est(pi=0.6, q=0.5), {"q": None}, Priors(), True) == []
    assert "pi = 0.990" in degenerate_fit_warnings(est(pi=0.99, q=0.5), {"q": None}, Priors(), True)[0]
    assert degenerate_fit_warnings(est(pi=0.6, q=0.01), {"q": 0.01}, Priors(), True) == []  # q fixed by the user
    assert "tau = 0.010" in degenerate_fit_warnings(est(m=0.0, tau=0.01, q=0.5), {"q": None}, Priors(), True)[0]
    runaway = degenerate_fit_warnings(est(pi=0.6, q=0.5, s=[5.0, -5.0]), {"q": None}, Priors(), True)
    assert len(runaway) == 1 and "strengths run away" in runaway[0]


def test_healthy_fit_has_no_degenerate_warning(standard_fit):
    assert not any("degenerate" in w for w in standard_fit.summary["warnings"])


# --------------------------------------------------------------------------- item 7


def test_strongest_models_ranked_within_the_largest_part(tmp_path, capsys):
    log = ba.simulate(n_users=300, n_models=6, seed=2)
    part = log.model_a.str[-1].astype(int).lt(2)
    log = log[part == log.model_b.str[-1].astype(int).lt(2)]  # {model_0, model_1} never meet the others
    path = tmp_path / "d.csv"
    log.to_csv(path, index=False)
    assert main(["fit", str(path), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    line = next(text for text in captured.out.splitlines() if "strongest models" in text)
    assert "largest of 2 disconnected parts" in line
    assert "model_0" not in line and "model_1" not in line
    assert "disconnected parts" in captured.err


def test_fit_warnings_point_at_the_users_call(mu_log):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ba.fit(mu_log, mu=0.75, strong_model="model_0", q=0.5)
    fit_warnings = [w for w in caught if issubclass(w.category, FitWarning)]
    assert fit_warnings
    assert all(w.filename == __file__ for w in fit_warnings), [w.filename for w in fit_warnings]
