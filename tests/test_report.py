"""The diagnostics report (one self-contained HTML file) and the plot functions."""

import base64
import dataclasses
import re
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_annot as ba

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bayes_annot import plotting  # noqa: E402
from bayes_annot.metrics import reliability_table  # noqa: E402
from bayes_annot.report import SECTIONS, build_report, render_report  # noqa: E402
from bayes_annot.report.builder import global_var_names, plain_warnings  # noqa: E402


def altered(result, estimates=None, **attributes):
    """A copy of a fit with some attributes (tables, summary) or estimates replaced (no refit)."""
    clone = result.filter(str(result.rule))
    if estimates:
        clone.estimates = dataclasses.replace(result.estimates, **estimates)
    for name, value in attributes.items():
        setattr(clone, name, value)
    return clone

HEADINGS = [
    "Warnings",
    "Data",
    "Model strengths",
    "User quality",
    "Taste or noise?",
    "The decision: whom to keep",
    "Convergence",
    "Posterior predictive check",
    "Model comparison",
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def log():
    return ba.simulate(n_users=150, n_models=5, labels_per_user=(2, 25), tie_rate=0.05, seed=21)


@pytest.fixture(scope="module")
def em_fit(log):
    return ba.fit(log, filter="fdr:0.1")


@pytest.fixture(scope="module")
def em_cont_fit(log):
    return ba.fit(log, variant="continuous")


@pytest.fixture(scope="module")
def disconnected_fit():
    a = ba.simulate(n_users=40, n_models=3, labels_per_user=(5, 15), seed=1)
    b = ba.simulate(n_users=40, n_models=3, labels_per_user=(5, 15), seed=2)
    cols = {"user": str, "model_a": str, "model_b": str, "winner": str}
    a, b = a[list(cols)].astype(cols), b[list(cols)].astype(cols)
    b["user"] = "b_" + b["user"]
    b["model_a"] = "other_" + b["model_a"]
    b["model_b"] = "other_" + b["model_b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ba.fit(pd.concat([a, b], ignore_index=True))


def check_page(text: str, min_images: int = 6) -> None:
    """A complete, self-contained report page."""
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in text, heading
    assert [t for _, t in SECTIONS][: len(HEADINGS)] == HEADINGS
    # no network: no external src/href, no scripts or stylesheets to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, flags=re.I)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) >= min_images
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    # every in-page link points to a section that exists
    for anchor in re.findall(r'href="#([^"]+)"', text):
        assert f'id="{anchor}"' in text


def warnings_block(text: str) -> str:
    start = text.index('<section id="warnings">')
    return text[start : text.index("</section>", start)]


# --------------------------------------------------------------------------- report


def test_em_two_class_report_is_one_self_contained_file(em_fit, tmp_path):
    path = build_report(em_fit, tmp_path / "sub" / "report.html")
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    text = path.read_text(encoding="utf-8")
    check_page(text)
    assert "could not" not in text  # no section or figure fell back to an error box
    assert "fdr:0.1" in text
    assert "EM raises the penalised log-likelihood" in text
    assert "No comparison was requested" in text
    # the decision numbers are those of the fit
    c = em_fit.summary["counts"]
    assert f"{c['kept_users']:,} of {c['users_in_likelihood']:,} users" in text
    # users with fewer than 5 labels are flagged in plain words
    n_few = int(((em_fit.users.n_labels > 0) & (em_fit.users.n_labels < 5)).sum())
    assert n_few > 0
    assert f"{n_few} of " in warnings_block(text) and "too few to judge" in warnings_block(text)


def test_em_continuous_report_with_a_comparison_table(em_cont_fit):
    table = pd.DataFrame({"elpd_loo": [-10.0, -12.5], "se": [1.0, 1.1]}, index=["two-class", "continuous"])
    text = render_report(em_cont_fit, n_rep=50, comparison=table)
    check_page(text)
    assert "could not" not in text
    assert "share of their labels that are attentive" in text
    assert "tau" in text
    block = text[text.index('<section id="comparison">') :]
    assert "elpd_loo" in block and "continuous" in block and "No comparison was requested" not in block


def test_report_warns_about_a_disconnected_graph(disconnected_fit, tmp_path):
    assert disconnected_fit.summary["comparison_graph_components"] == 2
    text = build_report(disconnected_fit, tmp_path / "r.html").read_text(encoding="utf-8")
    check_page(text)
    block = warnings_block(text)
    assert "disconnected" in block
    assert 'class="ok"' not in block  # not "no warnings"
    # the report finds the split from the rows even when the summary does not mention it
    bare = altered(disconnected_fit, summary=dict(disconnected_fit.summary, warnings=[]))
    found, _ = plain_warnings(bare)
    assert any("2 disconnected parts" in w for w in found)


def test_report_from_saved_directory(em_fit, tmp_path):
    out = em_fit.save(tmp_path / "fit")
    path = ba.load(out).report(out / "report.html")
    assert path == out / "report.html"
    text = path.read_text(encoding="utf-8")
    check_page(text, min_images=5)  # all but the two EM-trace panels
    assert "rebuilt from saved outputs" in text
    assert "EM trace is not kept in saved outputs" in text
    # rows, comparison matrix and the predictive check are rebuilt from rows.csv
    assert "needs the rows" not in text and "could not" not in text


def test_the_report_and_the_plots_never_fit(tmp_path, monkeypatch):
    """Issue 13 item 4: every entry point that fits raises while the report and the plots are drawn, from a
    fit and from a loaded folder, with the refitting diagnostics stored (fit, diagnose) and without them."""
    import importlib
    from html import escape

    log = ba.simulate(n_users=120, n_models=4, seed=5)
    stored = ba.fit(log, taste_check=True)
    ba.diagnose(stored, compare={"two-class": stored, "continuous": ba.fit(log, variant="continuous")})
    plain = ba.fit(log)
    results = [stored, ba.load(stored.save(tmp_path / "stored")), plain, ba.load(plain.save(tmp_path / "plain"))]

    def refit(*args, **kwargs):
        raise AssertionError("the report fitted")

    for module, name in (("block_em", "run_em"), ("fit", "run_em"), ("fit", "fit"), ("fit", "run_block_em"),
                         ("tastes", "casual_group_test"), ("tastes", "fit_tastes"), ("tastes", "select_tastes"),
                         ("evaluate", "heldout_loglik"), ("evaluate", "compare_heldout"), ("evaluate", "diagnose")):
        monkeypatch.setattr(importlib.import_module(f"bayes_annot.{module}"), name, refit, raising=False)
    monkeypatch.setattr(ba, "fit", refit)
    for i, result in enumerate(results):
        comparison = {"two-class": plain, "continuous": stored} if i == 2 else None
        text = build_report(result, tmp_path / f"r{i}.html", n_rep=10, comparison=comparison).read_text(encoding="utf-8")
        check_page(text)
        assert "the report fitted" not in text and "could not" not in text
        tastes = text[text.index('<section id="tastes">'):]
        comparison_block = text[text.index('<section id="comparison">'):]
        if i < 2:  # the verdict and the comparison stored in the result (and in summary.json)
            assert escape(stored.summary["taste_diagnostic"]["message"]) in tastes.split("</section>")[0]
            assert "heldout_loglik" in comparison_block.split("</section>")[0]
        else:  # how to compute them, not a fit
            assert "--taste-check" in tastes.split("</section>")[0]
            assert "bayes_annot.diagnose" in comparison_block.split("</section>")[0]
        for draw in (plotting.plot_ppc_agreement, plotting.plot_comparison_matrix, plotting.plot_loglik_trace):
            draw(result)
    plt.close("all")


def test_text_is_escaped_and_a_clean_fit_has_no_warnings():
    log = ba.simulate(n_users=40, n_models=3, labels_per_user=(5, 10), seed=4)
    for col in ("model_a", "model_b"):
        log[col] = log[col].astype(str).str.replace("model_0", "<b>evil</b>&model", regex=False)
    text = render_report(ba.fit(log), n_rep=10, title="A & <B>")
    assert "<b>evil</b>" not in text
    assert "&lt;b&gt;evil&lt;/b&gt;&amp;model" in text
    assert "<title>A &amp; &lt;B&gt;</title>" in text
    assert "No warnings" in warnings_block(text)


def fake_posterior(result, chains=2, draws=60, seed=0):
    """A fit with a sampled-looking posterior around the EM estimates (no NUTS needed)."""
    import arviz as az

    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    s = result.models.strength.to_numpy()
    qual = result.users.quality.to_numpy()
    posterior = {
        "pi": result.summary["parameters"]["pi"] + 0.02 * rng.standard_normal(shape),
        "q": result.summary["parameters"]["q"] + 0.02 * rng.standard_normal(shape),
        "strength": s + 0.1 * rng.standard_normal(shape + s.shape),
        "quality": np.clip(qual + 0.05 * rng.standard_normal(shape + qual.shape), 0, 1),
    }
    idata = az.from_dict(
        posterior=posterior,
        coords={"model": result.models.model.astype(str).tolist(), "user": result.users.user.astype(str).tolist()},
        dims={"strength": ["model"], "quality": ["user"]},
        sample_stats={"diverging": np.zeros(shape, dtype=bool)},
    )
    summary = dict(result.summary, engine="nuts", rhat_max=1.002, ess_bulk_min=110.0, divergences=0)
    return altered(result, estimates={"idata": idata, "loglik_trace": []}, summary=summary)


def test_sampled_run_has_diagnostics_table_and_rank_plots(em_fit):
    src = fake_posterior(em_fit)
    assert src.sampled and global_var_names(src.idata) == ["pi", "q", "strength"]
    text = render_report(src, n_rep=30)
    check_page(text, min_images=7)
    conv = text[text.index('<section id="convergence">') :]
    conv = conv[: conv.index("</section>")]
    assert "r_hat" in conv and "ess_bulk" in conv and "strength[" in conv
    assert "Rank plots" in conv and "data:image/png" in conv
    assert "could not" not in conv
    # the summary's low ESS becomes a plain-language warning
    assert "effective draws" in warnings_block(text)


# --------------------------------------------------------------------------- plots


def bar_total(ax) -> float:
    return float(sum(p.get_height() for p in ax.patches))


def test_plot_functions_draw_one_mark_per_item(em_fit, log):
    users, models = em_fit.users, em_fit.models
    n_active = int((users.n_labels > 0).sum())

    ax = plotting.plot_quality_distribution(em_fit)
    assert isinstance(ax, matplotlib.axes.Axes) and bar_total(ax) == n_active

    ax = plotting.plot_quality_caterpillar(em_fit, max_users=1000)
    assert len(ax.collections[-1].get_offsets()) == n_active
    ax = plotting.plot_quality_caterpillar(em_fit, max_users=20)
    pts = ax.collections[-1].get_offsets()
    assert len(pts) == 20
    # the users the decision is least sure about: the 20 nearest the filter's threshold, not the extremes
    shown_q = np.sort(np.asarray(pts)[:, 0])
    active_q = users.quality[users.n_labels > 0].to_numpy()
    nearest = np.sort(active_q[np.argsort(np.abs(active_q - 0.5), kind="mergesort")[:20]])
    assert np.allclose(shown_q, nearest)

    ax = plotting.plot_strengths(em_fit)
    pts = np.asarray(ax.collections[-1].get_offsets())
    assert len(pts) == len(models)
    assert np.allclose(np.sort(pts[:, 0]), np.sort(models.strength.to_numpy()))

    ax = plotting.plot_labels_per_user(em_fit)
    assert bar_total(ax) == n_active

    ax = plotting.plot_comparison_matrix(em_fit)
    image = ax.images[0].get_array()
    assert image.shape == (len(models), len(models))
    counts = em_fit.summary["counts"]  # labels in the likelihood per pair: ties too when they are modelled
    assert np.nansum(image) == 2 * (counts["rows_in_likelihood"] + counts.get("ties_in_likelihood", 0))

    ax = plotting.plot_loglik_trace(em_fit)
    assert len(ax.lines[0].get_xdata()) == len(em_fit.loglik_trace) > 1

    truth = ba.truth_users(log)
    ax = plotting.plot_reliability(em_fit, truth)
    active = users[users.n_labels > 0]
    n_bins = len(reliability_table(active.quality, truth.loc[active.user, "true_attentive"]))
    assert len(ax.collections[-1].get_offsets()) == n_bins
    assert "ECE" in ax.get_title()

    ax = plotting.plot_ppc_agreement(em_fit, n_rep=30)
    assert bar_total(ax) == n_active
    assert len(ax.lines[0].get_xdata()) == 20  # one replicated median per bin


def test_plots_accept_an_existing_axes_and_saved_outputs(em_fit, tmp_path):
    fig, axes = plt.subplots(1, 2)
    assert plotting.plot_strengths(em_fit, ax=axes[1]) is axes[1]
    out = em_fit.save(tmp_path / "fit")
    for source in (ba.load(out),):
        ax = plotting.plot_quality_caterpillar(source, max_users=1000)
        assert len(ax.collections[-1].get_offsets()) == int((em_fit.users.n_labels > 0).sum())
        ax = plotting.plot_comparison_matrix(source)
        assert np.nansum(ax.images[0].get_array()) == 2 * em_fit.summary["counts"]["rows_in_likelihood"]
    ax = plotting.plot_loglik_trace(ba.load(out))  # no trace saved: a note, not a failure
    assert not ax.lines and "no EM trace" in ax.texts[0].get_text()


def test_ppc_reproduces_well_specified_data(em_fit):
    ppc = plotting.ppc_agreement(em_fit, n_rep=100, seed=1)
    assert ppc["replicated"].shape == (100, ppc["n_users"])
    lo, hi = np.percentile(ppc["low_share_replicated"], [1, 99])
    assert lo <= ppc["low_share_observed"] <= hi
    assert abs(ppc["observed"].mean() - ppc["replicated"].mean()) < 0.03


def test_ppc_detects_a_misfit(log):
    # every user fitted as fully attentive: replicated agreement is far too high
    result = ba.fit(log)
    ppc = plotting.ppc_agreement(altered(result, users=result.users.assign(quality=1.0)), n_rep=50)
    assert ppc["low_share_observed"] > np.percentile(ppc["low_share_replicated"], 99)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'bayes_annot\[plot\]'"):
        plotting.plot_strengths(ba.fit(ba.simulate(n_users=30, n_models=3, seed=0)))


def test_report_explains_taste_choice_and_flags_a_taste_group(tmp_path):
    from bayes_annot.tastes import simulate_tastes

    log = simulate_tastes(n_users=300, n_models=6, casual_share=0.3, minority_share=0.2, seed=2)
    one = ba.fit(log, taste_check=True)  # the report shows the verdict the fit stored; it runs no test itself
    html = one.report(tmp_path / "one.html").read_text()
    section = html[html.index('<section id="tastes">'):]
    section = section[: section.index("</section>")]
    assert "taste group" in section and 'class="warn"' in section
    auto = ba.fit(log, tastes="auto", max_tastes=3)  # the default 4 adds the C = 4 folds, not another section
    assert auto.summary["taste_selection"]["chosen"] == 2 and not auto.summary["taste_selection"]["at_limit"]
    html = auto.report(tmp_path / "auto.html").read_text()
    section = html[html.index('<section id="tastes">'):]
    section = section[: section.index("</section>")]
    assert "C = 2" in section and "data:image/png;base64" in section and "strength_taste_2" in section


def test_caterpillar_shows_the_unsure_users_with_their_intervals():
    """Under NUTS the best and worst users sit at 0 / 1 with no visible interval; the plot shows the
    users around the threshold instead, and their intervals are drawn (issue 17, item 8b)."""
    users = pd.DataFrame({
        "user": [f"u{i}" for i in range(200)],
        "n_labels": 5,
        "quality": np.r_[np.full(90, 0.999), np.linspace(0.3, 0.7, 20), np.full(90, 0.001)],
    })
    users["quality_low"] = np.clip(users["quality"] - 0.2, 0, 1)
    users["quality_high"] = np.clip(users["quality"] + 0.2, 0, 1)
    users["kept"] = users["quality"] >= 0.5
    source = ba.FitResult.from_tables(users, pd.DataFrame({"model": ["a", "b"], "strength": [0.5, -0.5]}), None,
                                      {"variant": "two-class", "filter": {"rule": "prob:0.5"}})
    ax = plotting.plot_quality_caterpillar(source, max_users=20)
    shown = np.asarray(ax.collections[-1].get_offsets())[:, 0]
    assert len(shown) == 20 and np.all((shown > 0.25) & (shown < 0.75))
    segments = ax.collections[0].get_segments()
    widths = [seg[1][0] - seg[0][0] for seg in segments]
    assert len(segments) == 20 and min(widths) > 0.3
    assert any(abs(line.get_xdata()[0] - 0.5) < 1e-12 for line in ax.lines)  # the threshold is drawn
