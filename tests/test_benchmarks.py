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
