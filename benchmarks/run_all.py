"""Run the benchmarks and rewrite docs/benchmarks.md (dated, machine stated).

    python benchmarks/run_all.py --out docs/benchmarks.md [--quick]

Sections: EM speed and memory (bench_em.py); NUTS timings (bench_nuts.py, if
present, its table is included from docs/benchmarks_nuts.md when --skip-nuts);
the downstream experiment (downstream.py, table included from docs/downstream.md);
start-up time of ``import bayes_annot`` and ``--help`` (bench_startup.py, docs/benchmarks_startup.md); many models
(bench_many_models.py, linked: docs/benchmarks_many_models.md); quality against real raters
(bench_real_raters.py, linked: docs/benchmarks_real_raters.md; needs the real data sets in ../shared/data,
kept out of the package by their licences, and is skipped without them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def machine() -> str:
    import numpy
    from _common import machine as base

    return (
        f"{base()}, numpy {numpy.__version__}; 1-minute load average at the start: {os.getloadavg()[0]:.1f} "
        "(other jobs running make times pessimistic)"
    )


def em_section(quick: bool, full: bool) -> str:
    import bench_em

    results = bench_em.main(["--sizes", "1e6:1e5" if quick else "1e6:1e5,1e7:1e6", "--variants", "two-class"])
    results += bench_em.main(["--sizes", "1e6:1e5,1e7:1e6" if full else "1e6:1e5", "--variants", "continuous"])
    lines = [
        "## EM engine: time and memory",
        "",
        "Simulated logs, 20 models, 30% casual users, labels per user uniform on 1..2n-1 (mean n = rows/users), "
        "ids categorical. `fit` = `bayes_annot.fit` on the frame (validation, encoding, EM, tables); "
        "`EM` = the block engine `fit` runs, alone: building the users x cells block, then plain EM passes (`fit` accelerates the continuous variant with SQUAREM, hence fewer seconds there); peak = growth of the process's peak RSS during `fit`. "
        "Targets (issue #2): ≤ 2 s at 10^6 rows, ≤ 20 s and ≤ 3 GB at 10^7 rows.",
        "",
        "Per iteration: median time between EM iterations; floor: two full `np.bincount` passes over the rows "
        "(per-user and per-pair sums), the least an iteration must do (issue #6 target: within 3x).",
        "",
        "| variant | rows | users | fit (s) | EM (s) | iterations | per iteration (s) | floor (s) | ratio | peak during fit (MB) | AUC vs truth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['rows']:,} | {r['users']:,} | {r['fit_seconds']:.2f} | {r['em_seconds']:.2f} | "
            f"{r['iterations']} | {r['em_per_iteration']:.3f} | {r['bincount_floor']:.3f} | "
            f"{r['em_per_iteration'] / r['bincount_floor']:.2f} | {r['peak_fit_mb']:.0f} | {r['auc']:.3f} |"
        )
    return "\n".join(lines)


def tastes_section() -> str:
    """Casual share and held-out log-likelihood by number of taste classes (simulation and real data)."""
    from bayes_annot.datasets import load_real
    from bayes_annot.tastes import select_tastes, simulate_tastes

    lines = [
        "## Taste classes (issue #9)",
        "",
        "`select_tastes(max_tastes=3)`: held-out log-likelihood (5-fold CV over each user's labels) and the "
        "fitted casual share for C = 1..3; see docs/tastes.md.",
        "",
        "| data | C | held-out log-lik | casual share | chosen |",
        "|---|---:|---:|---:|---|",
    ]
    cases = {
        "simulation (18% reversed minority)": simulate_tastes(n_users=600, n_models=8, seed=1),
        "Topmodel2007": load_real("topmodel2007"),
        "CEMSChoice": load_real("cemschoice"),
    }
    for name, frame in cases.items():
        sel = select_tastes(frame, max_tastes=3, seed=0)
        for row in sel.table.itertuples():
            lines.append(
                f"| {name} | {row.n_tastes} | {row.heldout_loglik:.1f} | {row.casual_share:.3f} | "
                f"{'yes' if row.n_tastes == sel.chosen else ''} |"
            )
    return "\n".join(lines)


def include(path: Path, title: str) -> str:
    if path.exists():
        return path.read_text().strip()
    return f"## {title}\n\nNot run yet (see `benchmarks/`)."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="only the 10^6-row EM size")
    parser.add_argument("--skip-nuts", action="store_true")
    parser.add_argument("--skip-downstream", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="skip the Dask / update benchmarks (slow: writes 10^8 rows)")
    parser.add_argument("--skip-startup", action="store_true", help="skip the start-up timings (import, --help)")
    parser.add_argument("--full", action="store_true", help="also the continuous EM at 10^7 rows")
    parser.add_argument("--skip-real-raters", action="store_true",
                        help="skip the real-rater benchmark (held-out log-likelihood, countrypop truth; ~1 h on 2 cores)")
    args = parser.parse_args(argv)
    sections = [em_section(args.quick, args.full), tastes_section()]
    if not args.skip_speed and (HERE / "bench_speed.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_speed.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_speed.md", "Speed and memory against crowd-kit"))
    if not args.skip_nuts and (HERE / "bench_nuts.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_nuts.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_nuts.md", "NUTS timings"))
    if not args.skip_downstream and (HERE / "downstream.py").exists():
        subprocess.run([sys.executable, str(HERE / "downstream.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "downstream.md", "Downstream reward-model experiment"))
    if not args.skip_accuracy and (HERE / "bench_accuracy.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_accuracy.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_accuracy.md", "Accuracy against the baselines"))
    if (HERE / "bench_methods.py").exists() and not args.skip_accuracy:
        subprocess.run([sys.executable, str(HERE / "bench_methods.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_methods.md", "MAP / NUTS and downstream accuracy per method"))
    if not args.skip_scale and (HERE / "bench_update.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_update.py")], check=True, cwd=ROOT)
        subprocess.run([sys.executable, str(HERE / "bench_dask.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_update.md", "Incremental update vs full refit"))
    sections.append(include(ROOT / "docs" / "benchmarks_scale.md", "Dask EM at scale"))
    if not args.skip_startup and (HERE / "bench_startup.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_startup.py")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_startup.md", "Start-up time"))
    if not args.skip_scale and (HERE / "bench_many_models.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_many_models.py")] + (["--quick"] if args.quick else []),
                       check=True, cwd=ROOT)
    sections.append(
        "## Many models\n\nSee [benchmarks_many_models.md](benchmarks_many_models.md) (`benchmarks/bench_many_models.py`): "
        "EM fit time with 10 vs 10^4 models at 10^6 rows, growth from 200 to 2 x 10^5 models, peak memory."
    )
    real_data = ROOT.parent / "shared" / "data"
    if not args.skip_real_raters and (HERE / "bench_real_raters.py").exists() and (real_data / "countrypop.csv").exists():
        subprocess.run([sys.executable, str(HERE / "bench_real_raters.py"), "--data", str(real_data)]
                       + (["--quick"] if args.quick else ["--seeds", "3", "--refit-boot", "200"]), check=True, cwd=ROOT)
    sections.append(
        "## Quality against real raters\n\nSee [benchmarks_real_raters.md](benchmarks_real_raters.md) "
        "(`benchmarks/bench_real_raters.py`): candidate behaviour models judged by held-out log-likelihood on four "
        "real data sets and by countrypop's true worker accuracy, against the agreement-rate baseline."
    )
    if not args.skip_accuracy and (HERE / "bench_ties.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_ties.py")], check=True, cwd=ROOT)
    sections.append(
        "## Ties as evidence\n\nSee [benchmarks_ties.md](benchmarks_ties.md) (`benchmarks/bench_ties.py`): held-out "
        "log-likelihood of the three outcomes (ties included) on cemschoice and a simulated log, the ties model "
        "against Bradley–Terry with an empirical tie rate."
    )
    if not args.skip_startup and (HERE / "bench_cli.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_cli.py"), "--sizes", "1e5,1e6" if args.quick else "1e5,1e6,1e7",
                        "--out", str(ROOT / "docs" / "benchmarks_cli.md"),
                        "--json", str(HERE / "results_cli.json")], check=True, cwd=ROOT)
    sections.append(include(ROOT / "docs" / "benchmarks_cli.md", "Command line end to end"))
    header = (
        "# Benchmarks\n\n"
        f"Generated by `make bench` (`benchmarks/run_all.py`) on {dt.date.today().isoformat()}.\n\n"
        f"Machine: {machine()}.\n"
    )
    Path(args.out).write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
