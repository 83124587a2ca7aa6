"""Held-out scoring of ties (three outcomes): the ties model against the issue's baseline."""

import numpy as np
import pytest

import bayes_annot as ba
from bayes_annot.evaluate import compare_heldout, heldout_loglik


@pytest.fixture(scope="module")
def tie_log():
    return ba.simulate(n_users=500, n_models=8, casual_share=0.3, tie_nu=0.8, casual_tie_rate=0.3, seed=4)


def test_modelled_ties_beat_bradley_terry_with_an_empirical_tie_rate(tie_log):
    n_ties = int(tie_log.winner.astype(str).str.startswith("tie").sum())
    scores = {name: heldout_loglik(tie_log, model, seed=1, **kw) for name, (model, kw) in {
        "baseline": ("bradley-terry", {}),
        "ignored": ("two-class", {"ties": "ignore", "with_ties": True}),
        "modelled": ("two-class", {}),
    }.items()}
    # every fit scored the same labels, ties included (the default when the log has ties)
    assert {s["n_heldout"] for s in scores.values()} == {scores["baseline"]["n_heldout"]}
    assert all(s["with_ties"] for s in scores.values())
    assert scores["baseline"]["n_heldout"] > 0.2 * len(tie_log) * 0.9  # about 20% of all rows, ties among them
    assert n_ties > 0.15 * len(tie_log)
    per_label = {k: v["per_label"] for k, v in scores.items()}
    assert per_label["modelled"] > per_label["ignored"] > per_label["baseline"], per_label


def test_ties_ignored_scores_decided_labels_only(tie_log):
    ignored = heldout_loglik(tie_log, "two-class", seed=1, ties="ignore")
    scored = heldout_loglik(tie_log, "two-class", seed=1, ties="ignore", with_ties=True)
    assert not ignored["with_ties"] and scored["with_ties"]
    decided = (~tie_log.winner.astype(str).str.startswith("tie")).to_numpy()
    assert ignored["n_heldout"] < scored["n_heldout"]
    assert abs(ignored["n_heldout"] - 0.2 * decided.sum()) < 0.02 * decided.sum()
    # without ties in the log the flag changes nothing
    plain = tie_log[decided]
    a = heldout_loglik(plain, "two-class", seed=1)
    b = heldout_loglik(plain, "two-class", seed=1, with_ties=True)
    assert not a["with_ties"] and not b["with_ties"]
    assert a["heldout_loglik"] == b["heldout_loglik"]


def test_compare_heldout_scores_every_fit_on_the_ties(tie_log):
    fits = {"modelled": ba.fit(tie_log), "ignored": ba.fit(tie_log, ties="ignore")}
    table = compare_heldout(fits, seed=2)
    assert table.n_heldout.nunique() == 1
    assert table.iloc[0].fit == "modelled"
    assert np.isfinite(table.heldout_loglik).all()


def test_tie_rate_check_passes_the_ties_model_and_flags_ignored_ties():
    from bayes_annot.plotting import ppc_range_percentiles, ppc_tie_rates

    log = ba.simulate(n_users=800, n_models=8, casual_share=0.3, tie_nu=0.6, casual_tie_rate=0.45, seed=3)

    def outside(result):
        ppc = ppc_tie_rates(result, n_rep=200, seed=0)
        assert ppc["n_users"] == 800 and ppc["observed"].shape == (800,)
        lo, hi = np.percentile(ppc["replicated_counts"], ppc_range_percentiles(), axis=0)
        return int(((ppc["observed_counts"] < lo) | (ppc["observed_counts"] > hi)).sum()), ppc["modelled"]

    assert outside(ba.fit(log)) == (0, True)
    n_out, modelled = outside(ba.fit(log, ties="ignore"))
    assert not modelled and n_out >= 3
    assert ppc_tie_rates(ba.fit(log[~log.winner.astype(str).str.startswith("tie")])) is None


def test_report_shows_the_tie_rate_check(tmp_path, tie_log):
    ba.fit(tie_log).report(tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "Tie rate per user" in html
    assert "reproduces the users" in html and "tie rates." in html
