"""The EM benchmark script runs at a tiny size and reports every field its table needs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_em  # noqa: E402


def test_bench_em_tiny():
    (result,) = bench_em.main(["--sizes", "2e4:2e3", "--variants", "two-class"])
    for key in ("fit_seconds", "em_seconds", "em_per_iteration", "bincount_floor", "iterations", "peak_fit_mb", "auc"):
        assert key in result
    assert result["converged"] and result["auc"] > 0.8
    assert 0 < result["bincount_floor"] and 0 < result["em_per_iteration"]


def test_bench_update_tiny(tmp_path):
    import bench_update

    out = tmp_path / "update.md"
    bench_update.main(["--sizes", "400", "--variants", "two-class", "--repeat", "1", "--out", str(out)])
    text = out.read_text()
    assert "| two-class |" in text and "speed-up" in text
    rows = [line for line in text.splitlines() if line.startswith("| two-class | ")]
    assert len(rows) == 3  # text ids, categorical ids, agreement
    diff = float(rows[-1].split("|")[3])
    assert diff < 1e-6  # update and full refit agree at the tight tolerance


def test_bench_startup_page():
    import bench_startup

    fake = {label: [0.2, 0.1, 0.3, 0.2, 0.2, 0.25, 0.15] for label, _, _ in bench_startup.CASES}
    slow = dict(fake, **{"`bayes-annot --help`": [0.9] * 7})
    text = bench_startup.render(fake, slow, "the old tree", 7, (1.0, 1.0))
    assert text.startswith("## Start-up time")
    assert "| `import bayes_annot` | 0.200 | 0.100 | 0.300 | 0.200 | met |" in text
    assert "| `bayes-annot --help` | 0.200 | 0.100 | 0.300 | 0.900 | met |" in text
    assert "`import bayes_annot`: bayes_annot\n" in text  # nothing third-party at start-up


def test_bench_real_raters_prototypes_on_a_simulated_log():
    """The real-rater benchmark's prototype family: analytic gradients match finite differences, and its
    two-class member reproduces ``bayes_annot.fit`` (quality and pi) on the same log."""
    import numpy as np

    import bayes_annot as ba
    import bench_real_raters as brr

    log = ba.simulate(n_users=80, n_models=5, labels_per_user=(4, 12), seed=3)
    labels, _ = brr.load_labels(log)
    A = labels.user_matrix()
    rng = np.random.default_rng(0)
    for make in (brr.grid_two_class, brr.grid_continuous, brr.grid_sharp_two_class, brr.grid_two_class_tastes,
                 brr.grid_continuous_tastes, brr.grid_reversed):
        model = brr.Model(make())
        n = model.grid.n_classes * labels.n_items + 1 + len(model.grid.theta0)
        x = rng.normal(0, 0.5, n)
        _, grad = model.objective(x, labels, A)
        h = 1e-6
        num = np.array([(model.objective(x + h * e, labels, A)[0] - model.objective(x - h * e, labels, A)[0]) / (2 * h)
                        for e in np.eye(n)])
        assert np.max(np.abs(num - grad)) < 1e-5 * (1 + np.max(np.abs(grad))), model.grid.name

    fitted = brr.Model(brr.grid_two_class()).fit(labels)
    ref = ba.fit(log, filter="none", tol=1e-12)
    quality = ref.users.set_index("user")["quality"].reindex(labels.user_labels).to_numpy()
    assert abs(brr.expit(fitted.theta[0]) - ref.summary["parameters"]["pi"]) < 1e-4
    assert np.max(np.abs(brr.attentive_share(fitted) - quality)) < 1e-3


def test_bench_real_raters_package_candidates_leave_ties_out():
    """The package candidates run (``variant=``) and, like the prototypes, keep ties out of the held-out score:
    their per-user held-out scores on a log with ties equal those on the same log without its tie rows.
    ``pkg-tastes`` runs with ``tastes=2`` instead of ``"auto"``: the ties are left out when the frame is prepared
    (its ``ties="ignore"``), before any number of classes is chosen, and the auto choice's ~150 fits took 22 of
    this test's 23 CPU seconds (the choice itself: tests/test_tastes.py)."""
    import dataclasses

    import numpy as np

    import bayes_annot as ba
    import bench_real_raters as brr

    log = ba.simulate(n_users=60, n_models=5, labels_per_user=(6, 12), tie_rate=0.15, seed=4)
    assert (log["winner"] == "tie").sum() > 20
    decided = log[log["winner"] != "tie"].reset_index(drop=True)
    cands = {c.key: c for c in brr.candidates()}
    assert cands["pkg-tastes"].fit_kwargs["tastes"] == "auto"
    cands["pkg-tastes"] = dataclasses.replace(cands["pkg-tastes"], fit_kwargs=dict(cands["pkg-tastes"].fit_kwargs,
                                                                                   tastes=2))
    for key in ("pkg-continuous", "pkg-tastes", "two-class"):
        scores = []
        for frame in (log, decided):
            labels, prepared = brr.load_labels(frame)
            scores.append(brr.heldout_scores(cands[key], frame, labels, prepared, None, seed=1, frac=0.2))
        assert np.isfinite(scores[0]).sum() > 40, key
        np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-8, equal_nan=True, err_msg=key)


def test_bench_real_raters_merge_keeps_other_rows():
    """--merge takes the rerun candidates' rows (and the package taste-fit truth rows) from the new run and
    keeps every other row of the earlier run; the page names both commands and the chosen number of tastes."""
    import bench_real_raters as brr

    def run(value, n_tastes):
        cell = dict(per_label=value, diff=value, se=0.01, seconds_per_fit=1.0)
        truth = dict(spearman=value, auc=value, ranking_vs_true=value,
                     boot={m: dict(lo=0.0, hi=0.1, p_not_better=0.5, sd=0.1) for m in ("spearman", "auc")})
        return {"heldout": {"countrypop": {"two-class": dict(cell), "pkg-tastes": dict(cell), "ds": dict(cell),
                                           "_n_test": 10, "_n_users": 5, "_n_labels": 50}},
                "truth": {"agreement": dict(truth), "two-class": dict(truth), "pkg-tastes": dict(truth),
                          "ds": dict(truth), "agree-pkg-tastes-auto": dict(truth, n_tastes=n_tastes),
                          "_n_workers": 5, "_n_bad": 1},
                "settings": dict(seeds=[0, 1], frac=0.2, n_boot=10, command="python old", date="2026-01-01"),
                "candidates": {k: dict(label=f"({k})", quality="q") for k in ("two-class", "pkg-tastes", "ds")}}

    base, new = run(0.25, 3), run(0.5, 2)
    del new["heldout"]["countrypop"]["ds"], new["truth"]["ds"]
    merged = brr.merge_rows(base, new, ["pkg-tastes"], "python new --only pkg-tastes")
    assert merged["heldout"]["countrypop"]["pkg-tastes"]["per_label"] == 0.5
    assert merged["heldout"]["countrypop"]["ds"]["per_label"] == 0.25
    assert merged["heldout"]["countrypop"]["two-class"]["per_label"] == 0.25
    assert merged["truth"]["pkg-tastes"]["spearman"] == 0.5 and merged["truth"]["ds"]["spearman"] == 0.25
    assert merged["truth"]["agree-pkg-tastes-auto"]["n_tastes"] == 2
    page = brr.markdown(merged, "unused")
    assert "`python old` on 2026-01-01" in page and "`python new --only pkg-tastes`" in page
    assert "(2 tastes; taste 1)" in page
    new["settings"]["n_boot"] = 20
    try:
        brr.merge_rows(base, new, ["pkg-tastes"], "python new")
    except SystemExit as err:
        assert "n_boot" in str(err)
    else:
        raise AssertionError("a merge across different bootstrap settings must fail")


def test_cpu_alternate_times_every_tree_in_every_round(tmp_path, capsys):
    import cpu_alternate

    trees = [str(tmp_path / "a"), str(tmp_path / "b")]
    out = tmp_path / "scratch"
    out.mkdir()
    result = cpu_alternate.main(["--trees", ",".join(trees), "--repeat", "3", "--", sys.executable, "-c",
                                 "import os, sys; assert not os.path.exists(sys.argv[2]); os.mkdir(sys.argv[2])",
                                 "--out", str(out)])
    assert set(result["trees"]) == set(trees) and len(result["load"]) == 3
    for times in result["trees"].values():
        assert len(times["cpu"]) == len(times["wall"]) == 3 and min(times["wall"]) > 0 and min(times["cpu"]) >= 0
    assert capsys.readouterr().out.count("CPU median") == 2
