"""End-to-end CLI benchmark: `bayes-annot fit LOG --out DIR` against an I/O floor (issue 15).

    python benchmarks/bench_cli.py --sizes 1e5,1e6[,1e7] --out docs/benchmarks_cli.md
    python benchmarks/bench_cli.py --sizes 1e6 --trees /path/before,/path/after   # alternate two source trees
    python benchmarks/bench_cli.py --sizes 1e7 --update-share 0.01 --formats parquet   # --update vs full refit

For each size and input format (CSV, parquet) a simulated log is written once, then timed, interleaved,
median of ``--repeat`` fresh processes:

* ``cli``: ``python -m bayes_annot fit LOG --out DIR --quiet`` end to end (start-up, read, validate, fit, write);
* ``read``, ``fit``, ``write``: the same three steps in one process (``read_table``, ``fit`` on the frame,
  ``FitResult.save``), so the CLI's time splits into its parts;
* ``floor``: pyarrow reading the input (every cell as text for CSV) + the in-memory ``fit`` + pyarrow writing the
  same three output tables, the least the job must do; ``ratio`` = cli / floor (target ≤ 1.5). The ``fit`` there
  is the process's first, so it includes importing the engines and SciPy (0.2-0.3 s); ``fit_warm`` is the same fit
  run again in that process (everything imported), ``warm floor`` = floor read + fit_warm + floor write and
  ``warm ratio`` = cli / warm floor: the floor without any import of the fit's own;
* ``cli_cpu``: user + system CPU seconds of the ``cli`` process (steadier than its wall time on a loaded machine).

``--trees A,B`` runs every cell with each source tree on ``PYTHONPATH`` in turn (before/after in the same run).
``--update-share S`` times instead ``fit NEW --update DIR --out DIR`` (a copy of a folder written from the
first ``1 - S`` of a shuffled log with text ids and a vote id, ``--row-id vote_id``) against the full refit
``fit ALL --out DIR2`` through the command line, both in the folder's format (target ≥ 5x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_STEPS = r"""
import json, sys, time
from pathlib import Path
import bayes_annot as ba
from bayes_annot.data import read_table
path, out = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter(); frame = read_table(path); t1 = time.perf_counter()
result = ba.fit(frame); t2 = time.perf_counter()
result.save(out); t3 = time.perf_counter()
import pyarrow as pa, pyarrow.csv as pa_csv, pyarrow.parquet as pq
t4 = time.perf_counter()
if path.endswith(".csv"):
    names = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 24)).schema.names
    pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 24),
                    convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}))
else:
    pq.read_table(path)
t5 = time.perf_counter()
floor_dir = out.parent / (out.name + "-floor"); floor_dir.mkdir()
for name, table in (("users", result.users), ("models", result.models), ("rows", result.rows)):
    pa_csv.write_csv(pa.Table.from_pandas(table, preserve_index=False), str(floor_dir / f"{name}.csv"))
t6 = time.perf_counter()
ba.fit(frame); t7 = time.perf_counter()
print(json.dumps({"read": t1 - t0, "fit": t2 - t1, "write": t3 - t2, "floor_read": t5 - t4, "floor_write": t6 - t5,
                  "fit_warm": t7 - t6}))
"""


def make_log(rows: int, fmt: str, folder: Path) -> Path:
    import bayes_annot as ba

    n_users = max(rows // 25, 10)
    log = ba.simulate(n_users=n_users, n_models=20, labels_per_user=(5, 45), seed=1)
    log = log[["user", "model_a", "model_b", "winner"]]
    path = folder / f"log-{rows}.{fmt}"
    if fmt == "csv":
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(pa.Table.from_pandas(log, preserve_index=False), str(path))
    else:
        log.to_parquet(path, index=False)
    return path


def run(cmd: list[str], tree: str | None = None) -> tuple[float, str]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start, proc.stdout


def make_update_logs(rows: int, fmt: str, folder: Path, share: float) -> tuple[Path, Path, Path]:
    """Old (first ``1 - share``), new and all rows of a shuffled simulated log: text ids and a vote id."""
    import numpy as np
    import pandas as pd

    import bayes_annot as ba

    log = ba.simulate(n_users=max(rows // 25, 10), n_models=20, labels_per_user=(5, 45), seed=1)
    log = log[["user", "model_a", "model_b", "winner"]].astype(str).sample(frac=1.0, random_state=1)
    log.insert(0, "vote_id", np.arange(len(log), dtype=np.int64))
    log = log.reset_index(drop=True)
    cut = int(round(len(log) * (1 - share)))
    paths = tuple(folder / f"{name}-{rows}.{fmt}" for name in ("old", "new", "all"))
    for part, path in zip((log.iloc[:cut], log.iloc[cut:], log), paths):
        if fmt == "csv":
            part.to_csv(path, index=False)
        else:
            pd.DataFrame(part).to_parquet(path, index=False)
    return paths


def _child_cpu(before) -> float:
    """User + system CPU seconds of the child processes that ended since ``before`` (``os.times()``)."""
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def bench_update(args, trees, tmp: Path) -> list[dict]:
    import shutil

    results = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for fmt in args.formats.split(","):
            old, new, full = make_update_logs(size, fmt, tmp, args.update_share)
            day1 = {}
            for number, tree in enumerate(trees):  # each tree's own folder (its format, its side file)
                day1[tree] = tmp / f"day1-{size}-{fmt}-{number}"
                run([sys.executable, "-m", "bayes_annot", "fit", str(old), "--out", str(day1[tree]), "--format", fmt,
                     "--quiet"], tree)
            times = {tree: {"full": [], "update": []} for tree in trees}
            cpu = {tree: {"full": [], "update": []} for tree in trees}
            for i in range(args.repeat):
                for tree in trees:
                    out = tmp / f"full-{i}"
                    before = os.times()
                    seconds, _ = run([sys.executable, "-m", "bayes_annot", "fit", str(full), "--out", str(out),
                                      "--format", fmt, "--quiet"], tree)
                    times[tree]["full"].append(seconds)
                    cpu[tree]["full"].append(_child_cpu(before))
                    shutil.rmtree(out)
                    copy = tmp / f"upd-{i}"
                    shutil.copytree(day1[tree], copy)
                    before = os.times()
                    seconds, _ = run([sys.executable, "-m", "bayes_annot", "fit", str(new), "--update", str(copy),
                                      "--out", str(copy), "--row-id", "vote_id", "--quiet"], tree)
                    times[tree]["update"].append(seconds)
                    cpu[tree]["update"].append(_child_cpu(before))
                    shutil.rmtree(copy)
            for tree in trees:
                full_s, upd_s = (statistics.median(times[tree][k]) for k in ("full", "update"))
                full_c, upd_c = (statistics.median(cpu[tree][k]) for k in ("full", "update"))
                row = {"tree": tree or "", "rows": size, "format": fmt, "share": args.update_share, "full": full_s,
                       "update": upd_s, "speedup": full_s / upd_s, "full_cpu": full_c, "update_cpu": upd_c,
                       "speedup_cpu": full_c / upd_c, "runs": times[tree], "cpu_runs": cpu[tree],
                       "load": os.getloadavg()[0]}
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6")
    parser.add_argument("--formats", default="csv,parquet")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="markdown page to write")
    parser.add_argument("--json", default=None)
    parser.add_argument("--trees", default=None, help="comma-separated source trees to alternate (PYTHONPATH)")
    parser.add_argument("--update-share", type=float, default=None, help="time --update with this share of new rows")
    args = parser.parse_args(argv)
    from _common import machine, write_outputs

    trees = args.trees.split(",") if args.trees else [None]
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.update_share is not None:
            results = bench_update(args, trees, tmp)
            return _update_page(args, results, load_start) if args.out else results
        for size in (int(float(s)) for s in args.sizes.split(",")):
            for fmt in args.formats.split(","):
                log = make_log(size, fmt, tmp)
                cli, steps, cli_cpu = {t: [] for t in trees}, {t: [] for t in trees}, {t: [] for t in trees}
                for i in range(args.repeat):
                    for tree in trees:
                        out = tmp / f"cli-{size}-{fmt}-{i}"
                        before = os.times()
                        seconds, _ = run([sys.executable, "-m", "bayes_annot", "fit", str(log), "--out", str(out),
                                          "--quiet"], tree)
                        cli[tree].append(seconds)
                        cli_cpu[tree].append(_child_cpu(before))
                        steps_out = tmp / f"steps-{size}-{fmt}-{i}"
                        _, text = run([sys.executable, "-c", _STEPS, str(log), str(steps_out)], tree)
                        steps[tree].append(json.loads(text))
                        for folder in (out, steps_out, steps_out.parent / (steps_out.name + "-floor")):
                            subprocess.run(["rm", "-rf", str(folder)], check=True)
                for tree in trees:
                    median = {k: statistics.median(s[k] for s in steps[tree]) for k in steps[tree][0]}
                    floor = median["floor_read"] + median["fit"] + median["floor_write"]
                    warm = median["floor_read"] + median["fit_warm"] + median["floor_write"]
                    cli_s = statistics.median(cli[tree])
                    row = {"tree": tree or "", "rows": size, "format": fmt, "cli": cli_s,
                           "cli_cpu": statistics.median(cli_cpu[tree]), **median, "floor": floor,
                           "ratio": cli_s / floor, "warm_floor": warm, "warm_ratio": cli_s / warm,
                           "size_mb": log.stat().st_size / 1e6, "load": os.getloadavg()[0]}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    lines = [
        "# Command line end to end",
        "",
        f"Machine: {machine()}; 1-minute load average at the start: {load_start:.1f}. "
        f"Median of {args.repeat} fresh processes per cell, interleaved.",
        "",
        "`cli`: `bayes-annot fit LOG --out DIR --quiet`, the whole process (start-up included). `read`, `fit`, "
        "`write`: its steps timed in one process (`read_table`, `fit`, `FitResult.save`, which writes the three "
        "tables, summary and manifest into a staging folder and swaps it in). `floor`: pyarrow reading the input + "
        "the in-memory fit + pyarrow writing the same three tables as CSV. Target (issue 15): `cli` ≤ 1.5 × floor. "
        "`fit` is the process's first fit (it imports the engines and SciPy); `warm fit`: the same fit again, "
        "`warm floor` = floor read + warm fit + floor write. `cli CPU`: the CLI process's user + system time.",
        "",
        "| tree | rows | input | MB | cli (s) | cli CPU (s) | read (s) | fit (s) | warm fit (s) | write (s) | floor (s) | "
        "cli / floor | warm floor (s) | cli / warm floor | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['tree']} | {r['rows']:,} | {r['format']} | {r['size_mb']:.0f} | {r['cli']:.2f} | {r['cli_cpu']:.2f} | "
            f"{r['read']:.2f} | {r['fit']:.2f} | {r['fit_warm']:.2f} | {r['write']:.2f} | {r['floor']:.2f} | "
            f"{r['ratio']:.2f} | {r['warm_floor']:.2f} | {r['warm_ratio']:.2f} | {r['load']:.1f} |"
        )
    if args.out:
        write_outputs("\n".join(lines), results, args.out, args.json)
    return results


def _update_page(args, results, load_start) -> list[dict]:
    from _common import machine, write_outputs

    lines = [
        "# Command line: `--update` against a full refit",
        "",
        f"Machine: {machine()}; 1-minute load average at the start: {load_start:.1f}. Median of {args.repeat} "
        "fresh processes per cell, trees and commands interleaved.",
        "",
        f"`update`: `bayes-annot fit NEW --update DIR --out DIR --row-id vote_id --quiet` on a copy of a folder "
        f"fitted on the first {1 - args.update_share:.0%} of a shuffled log (text ids, a vote id); `full`: "
        "`bayes-annot fit ALL --out DIR2 --quiet` on all rows; both write the folder's format. Target (issue 15): "
        "update ≥ 5x faster.",
        "",
        "| tree | rows | format | full, wall (s) | update, wall (s) | speed-up, wall | full, CPU (s) | "
        "update, CPU (s) | speed-up, CPU | load at the end |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['tree']} | {r['rows']:,} | {r['format']} | {r['full']:.2f} | {r['update']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['full_cpu']:.2f} | {r['update_cpu']:.2f} | {r['speedup_cpu']:.2f}x | "
                     f"{r['load']:.1f} |")
    write_outputs("\n".join(lines), results, args.out, args.json)
    return results


if __name__ == "__main__":
    main()
