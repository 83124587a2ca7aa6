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
