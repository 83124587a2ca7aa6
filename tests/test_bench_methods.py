"""Smoke test of benchmarks/bench_methods.py: tiny sizes, EM and one baseline, every downstream arm in the table."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # bench_methods imports bench_accuracy's helpers
    spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "benchmarks" / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_methods_tiny_run_has_every_arm(monkeypatch):
    bench = _load_bench(monkeypatch)
    md, raw = bench.run(
        n_users=60, seeds=(0,), scenarios=["standard"], engines=("em",), baselines=["agreement rate"],
        ds_users=40, ds_shares=(0.3, 0.5), ds_seeds=(0, 1, 2), crowdkit_python=None, n_test=2000,
        progress=lambda *_: None,
    )
    # Quality section: EM rows and the baseline, with finite metrics; NUTS section absent.
    methods = {r["method"] for r in raw["quality"]}
    assert methods == {"EM two-class", "EM continuous", "agreement rate"}
    assert all(0.0 <= r["auc"] <= 1.0 for r in raw["quality"])
    assert "Reduced size: NUTS" not in md
    # Downstream: every (method, arm) on every setting and seed, accuracies in [0, 1].
    runs = {(r["method"], r["arm"], r["casual_share"], r["seed"]): r["accuracy"] for r in raw["downstream"]}
    expected_arms = [
        ("all labels", "all"),
        ("oracle (attentive users only)", "oracle"),
        ("EM two-class", "kept"),
        ("EM two-class", "weighted"),
        ("agreement rate", "kept"),
        ("agreement rate", "weighted"),
    ]
    for method, arm in expected_arms:
        for share in (0.3, 0.5):
            for seed in (0, 1, 2):
                assert 0.0 <= runs[(method, arm, share, seed)] <= 1.0
    assert len(runs) == len(expected_arms) * 2 * 3
    # The markdown table has one row per arm with a mean ± sd cell for each casual share.
    table = md.split("## Downstream")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "±" in line]
    labels = {"all": "all, unweighted", "oracle": "attentive users'", "kept": "kept users'",
              "weighted": "all, weighted by quality"}
    for method, arm in expected_arms:
        hits = [r for r in rows if r.startswith(f"| {method} | {labels[arm]} |")]
        assert len(hits) == 1, (method, arm)
        assert hits[0].count("±") == 2
    # Filtering with EM should not do worse than no filtering on average (a weak sanity check).
    acc = {k: np.mean([v for (m, a, _, _), v in runs.items() if (m, a) == k]) for k in expected_arms}
    assert acc[("EM two-class", "kept")] >= acc[("all labels", "all")] - 0.01
