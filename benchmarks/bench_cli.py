"""End-to-end CLI benchmark: `bayes-annot fit LOG --out DIR` against an I/O floor (issue 15).

    python benchmarks/bench_cli.py --sizes 1e5,1e6[,1e7] --out docs/benchmarks_cli.md

For each size and input format (CSV, parquet) a simulated log is written once, then timed, interleaved,
median of ``--repeat`` fresh processes:

* ``cli``: ``python -m bayes_annot fit LOG --out DIR --quiet`` end to end (start-up, read, validate, fit, write);
* ``read``, ``fit``, ``write``: the same three steps in one process (``read_table``, ``fit`` on the frame,
  ``FitResult.save``), so the CLI's time splits into its parts;
* ``floor``: pyarrow reading the input (every cell as text for CSV) + the in-memory ``fit`` + pyarrow writing the
  same three output tables, the least the job must do; ``ratio`` = cli / floor (target ≤ 1.5).
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
print(json.dumps({"read": t1 - t0, "fit": t2 - t1, "write": t3 - t2, "floor_read": t5 - t4, "floor_write": t6 - t5}))
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


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6")
    parser.add_argument("--formats", default="csv,parquet")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="markdown page to write")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from _common import machine, write_outputs

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in (int(float(s)) for s in args.sizes.split(",")):
            for fmt in args.formats.split(","):
                log = make_log(size, fmt, tmp)
                cli, steps = [], []
                for i in range(args.repeat):
                    out = tmp / f"cli-{size}-{fmt}-{i}"
                    seconds, _ = run([sys.executable, "-m", "bayes_annot", "fit", str(log), "--out", str(out), "--quiet"])
                    cli.append(seconds)
                    _, text = run([sys.executable, "-c", _STEPS, str(log), str(tmp / f"steps-{size}-{fmt}-{i}")])
                    steps.append(json.loads(text))
                median = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
                floor = median["floor_read"] + median["fit"] + median["floor_write"]
                row = {"rows": size, "format": fmt, "cli": statistics.median(cli), **median, "floor": floor,
                       "ratio": statistics.median(cli) / floor, "size_mb": log.stat().st_size / 1e6}
                results.append(row)
                print(json.dumps(row), flush=True)
    lines = [
        "# Command line end to end",
        "",
        f"Machine: {machine()}; 1-minute load average at the start: {os.getloadavg()[0]:.1f}. "
        f"Median of {args.repeat} fresh processes per cell, interleaved.",
        "",
        "`cli`: `bayes-annot fit LOG --out DIR --quiet`, the whole process (start-up included). `read`, `fit`, "
        "`write`: its steps timed in one process (`read_table`, `fit`, `FitResult.save`, which writes the three "
        "tables, summary and manifest into a staging folder and swaps it in). `floor`: pyarrow reading the input + "
        "the in-memory fit + pyarrow writing the same three tables as CSV. Target (issue 15): `cli` ≤ 1.5 × floor.",
        "",
        "| rows | input | MB | cli (s) | read (s) | fit (s) | write (s) | floor (s) | cli / floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['format']} | {r['size_mb']:.0f} | {r['cli']:.2f} | {r['read']:.2f} | {r['fit']:.2f} | "
            f"{r['write']:.2f} | {r['floor']:.2f} | {r['ratio']:.2f} |"
        )
    if args.out:
        write_outputs("\n".join(lines), results, args.out, args.json)
    return results


if __name__ == "__main__":
    main()
