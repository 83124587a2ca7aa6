"""Issue 17 items 5 and 9 (g, i, j): comparing EM fits, the PPC range, the notebook display and summary table."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import bayes_annot as ba


@pytest.fixture(scope="module")
def log():
    return ba.simulate(n_users=150, n_models=4, seed=3)


@pytest.fixture(scope="module")
def em_fits(log):
    return ba.fit(log), ba.fit(log, variant="continuous")


def _plain(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_report_shows_the_heldout_comparison_that_diagnose_stored(em_fits, log, tmp_path):
    from bayes_annot.evaluate import heldout_loglik

    two, cont = ba.fit(log), em_fits[1]
    # the report never fits: given EM fits to compare, it says how to compare them
    path = two.report(tmp_path / "r0.html", comparison={"two-class": two, "continuous": cont}, n_rep=20)
    text = _plain(path.read_text(encoding="utf-8"))
    assert "the report never fits" in text and "bayes_annot.diagnose" in text
    ba.diagnose(two, compare={"two-class": two, "continuous": cont})
    expected = heldout_loglik(log, variant="continuous", frac=0.2, seed=0)["heldout_loglik"]
    stored = {row["fit"]: row for row in two.summary["comparison"]["table"]}
    assert stored["continuous"]["heldout_loglik"] == pytest.approx(expected, rel=1e-12)
    for result in (two, ba.load(two.save(tmp_path / "out"))):  # kept in summary.json: the loaded folder shows it
        text = _plain(result.report(tmp_path / "r.html", n_rep=20).read_text(encoding="utf-8"))
        assert "could not be computed" not in text
        assert "compared by held-out log-likelihood" in text
        assert f"{expected:.3f}" in text


def test_ppc_figure_and_text_give_the_same_range(em_fits, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from bayes_annot import plotting

    two, _ = em_fits
    ax = plotting.plot_ppc_agreement(two, n_rep=20)
    label = ax.get_legend().get_texts()[1].get_text()
    plt.close("all")
    text = _plain(two.report(tmp_path / "r.html", n_rep=20).read_text(encoding="utf-8"))
    shown = set(re.findall(r"(\d+)% range", label))
    said = set(re.findall(r"(\d+)% range", text))
    assert shown == {"95"} and said == {"95"}, (label, said)


def test_repr_html_shows_convergence(em_fits):
    two, _ = em_fits
    html = _plain(two._repr_html_())
    assert f"em: converged in {two.summary['iterations']} iterations" in html


def test_repr_html_shows_nuts_diagnostics(em_fits):
    two, _ = em_fits
    fake = two.filter("prob:0.5")
    fake.summary = dict(fake.summary, engine="nuts", iterations=None, converged=None, rhat_max=1.0042,
                        ess_bulk_min=812.3, divergences=0)
    html = _plain(fake._repr_html_())
    assert "R-hat max 1.004, ESS bulk min 812, divergences 0" in html


def test_em_summary_table_has_no_nan_and_no_warnings(em_fits):
    two, cont = em_fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = two.summary_table()
        table_c = cont.summary_table()
    assert {"pi", "q"} <= set(table.index) and {"m", "tau", "q"} <= set(table_c.index)
    assert np.isfinite(table["estimate"]).all()
    strengths = table[table["kind"] == "strength"]
    assert list(strengths.index) == [f"strength[{m}]" for m in two.models.model]
    np.testing.assert_allclose(strengths["estimate"], two.models.strength)
