"""Speed and memory at 10^4 ... 10^7 rows: our EM / MAP / NUTS against crowd-kit (issue #6).

For each size one log is simulated (``bayes_annot.simulate(n_users=rows/10,
n_models=20, labels_per_user=(1, 19), strengths=np.linspace(2, -2, 20),
seed=1)``, ids categorical) and written to a parquet file; every
(method, size) pair then runs in its own child process that reads the file,
builds the method's input, runs one untimed warm-up fit with the same method
and options on the log's first 2,000 rows (``--warmup-rows``; NUTS with 20
tuning steps and draws), then times the fit alone. The warm-up keeps the
one-off costs of a fresh process (the modules the first fit imports lazily,
PyTensor compilation) out of the figure; ``--warmup-rows 0`` times the first
fit instead. crowd-kit gets the same warm-up.

* ``EM two-class``: ``bayes_annot.fit(frame)`` (the default; includes
  validation, encoding and the output tables);
* ``EM continuous``: ``bayes_annot.fit(frame, variant="continuous")``;
* ``MAP``: ``bayes_annot.fit(frame, method="map")`` (PyMC ``find_MAP``);
* ``NUTS``: ``bayes_annot.fit(frame, method="nuts")``, 2 chains x 1,000 draws
  after 1,000 tuning steps; only up to 10^5 rows (beyond that the posterior of
  10^5+ per-user parameters by NUTS is not the tool: use EM or MAP);
* ``crowd-kit NoisyBT`` / ``crowd-kit MACE``: ``NoisyBradleyTerry().fit`` and
  ``MACE(n_restarts=1).fit`` in a separate interpreter that has crowd-kit
  (``--crowdkit-python`` or ``$CROWDKIT_PYTHON``; crowd-kit 1.4 needs
  pandas < 3), formulated as in ``bench_accuracy.py`` (MACE: task = the
  unordered model pair, label = the winning model). The conversion of the log
  into crowd-kit's frames is not timed.

Peak memory: the child resets its peak RSS (``echo 5 > /proc/self/clear_refs``)
right before the fit and reports the growth of VmHWM over the RSS at that
point; the memory of child processes (NUTS's chain workers) is reported
separately: the largest sum of their RSS, sampled every 0.25 s during the fit.

Each fit gets 10 minutes (an alarm in the child; the parent kills the child's
process group as a safety net). A (method, size) is skipped without running
when the next smaller size did not finish, or when a linear extrapolation
(10 x the smaller size's fit time) predicts more than 10 minutes.

The load average of the machine (``os.getloadavg()``) is read right before
each run and shown in the table: the timings are only comparable at a similar
load.

Usage::

    python benchmarks/bench_speed.py [--sizes 1e4,1e5,1e6,1e7] [--methods ...] \
        [--out docs/benchmarks_speed.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _common import find_crowdkit_python, machine  # noqa: E402
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("PYTENSOR_FLAGS", f"base_compiledir={ROOT / '.pytensor_cache'}")

TIMEOUT = 600.0  # seconds per fit
WARMUP_ROWS = 2_000  # rows of the untimed warm-up fit (same options) before the timed one
NUTS_MAX_ROWS = 100_000
WARMUP_NUTS_DRAWS = 20  # tuning steps and draws of NUTS's warm-up fit (the child's COMMON has the same)

#: method label -> (runner, options)
METHODS: dict[str, tuple[str, dict]] = {
    "EM two-class": ("ours", {}),
    "EM continuous": ("ours", {"variant": "continuous"}),
    "MAP": ("ours", {"method": "map"}),
    "NUTS": (
        "ours",
        {"method": "nuts", "chains": 2, "draws": 1000, "tune": 1000, "progress": False},
    ),
    "crowd-kit NoisyBT": ("crowdkit", {"which": "NoisyBT"}),
    "crowd-kit MACE": ("crowdkit", {"which": "MACE"}),
}

MAKE_DATA = r"""
import sys
import numpy as np
import bayes_annot as ba
rows, path = int(sys.argv[1]), sys.argv[2]
log = ba.simulate(n_users=rows // 10, n_models=20, labels_per_user=(1, 19), strengths=np.linspace(2, -2, 20), seed=1)
log[["user", "model_a", "model_b", "winner"]].to_parquet(path)
print(len(log))
"""

# Shared by both children: peak-memory helpers and the alarm.
COMMON = r"""
import json, os, signal, sys, time, warnings
warnings.filterwarnings("ignore")

def status_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])

# Rows of the warm-up fit run before the timed one (0: time the first fit of the process).
WARMUP_ROWS = int(sys.argv[4]) if len(sys.argv) > 4 else 0
WARMUP_NUTS_DRAWS = 20

class FitTimeout(Exception):
    pass

def on_alarm(signum, frame):
    raise FitTimeout()

def descendants_rss_kb(root):
    # Sum of VmRSS over all live descendants of `root` (chain workers, compilers).
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as fh:
                    parents[int(entry)] = int(fh.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += kids
        frontier = kids
    total = 0
    for pid in found:
        try:
            for line in open(f'/proc/{pid}/status'):
                if line.startswith('VmRSS'):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total

def timed(fn, timeout):
    import threading
    children_peak = [0]
    done = threading.Event()
    def poll():
        while not done.wait(0.25):
            children_peak[0] = max(children_peak[0], descendants_rss_kb(os.getpid()))
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    base = status_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')  # reset VmHWM to the current RSS
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(timeout))
    t0 = time.perf_counter()
    try:
        fn()
    except FitTimeout:
        print(json.dumps({"timeout": True, "seconds": time.perf_counter() - t0}))
        sys.stdout.flush()
        os._exit(0)
    seconds = time.perf_counter() - t0
    signal.alarm(0)
    peak = status_kb('VmHWM')
    done.set()
    poller.join()
    return dict(seconds=seconds, peak_mb=(peak - base) / 1024, base_mb=base / 1024, peak_rss_mb=peak / 1024,
                children_peak_mb=children_peak[0] / 1024)
"""

OURS_CHILD = (
    COMMON
    + r"""
import pandas as pd
import bayes_annot as ba
path, options, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
log = pd.read_parquet(path)
warmup = None
if WARMUP_ROWS:
    # Warm-up: one small fit with the same options pays the one-off costs of a fresh
    # process (lazy module imports, PyTensor compilation) before the timed fit.
    small = dict(options)
    if small.get("method") == "nuts":
        small.update(draws=WARMUP_NUTS_DRAWS, tune=WARMUP_NUTS_DRAWS)
    t0 = time.perf_counter()
    ba.fit(log.iloc[:WARMUP_ROWS], **small)
    warmup = time.perf_counter() - t0
box = {}
def run():
    box["result"] = ba.fit(log, **options)
out = timed(run, timeout)
summary = box["result"].summary
out.update(rows=len(log), iterations=summary.get("iterations"), converged=summary.get("converged"),
           warmup_seconds=warmup)
print(json.dumps(out))
"""
)

CROWDKIT_CHILD = (
    COMMON
    + r"""
import numpy as np
import pandas as pd
from crowdkit.aggregation import MACE, NoisyBradleyTerry
path, options, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
log = pd.read_parquet(path)
log = log[log.winner.astype(str).isin(["model_a", "model_b"]) & (log.model_a.astype(str) != log.model_b.astype(str))]
user, a, b = (log[c].astype(str).to_numpy() for c in ("user", "model_a", "model_b"))
label = np.where(log.winner.astype(str).to_numpy() == "model_a", a, b)
del log
if options["which"] == "NoisyBT":
    frame = pd.DataFrame({"worker": user, "left": a, "right": b, "label": label})
    estimator = NoisyBradleyTerry(random_state=0)
else:
    pair = np.where(a < b, np.char.add(np.char.add(a.astype("U"), "|"), b.astype("U")),
                    np.char.add(np.char.add(b.astype("U"), "|"), a.astype("U"))).astype(object)
    frame = pd.DataFrame({"task": pair, "worker": user, "label": label})
    estimator = MACE(n_restarts=1, random_state=0)
del user, a, b, label
warmup = None
if WARMUP_ROWS:
    # The same warm-up as ours: one small fit before the timed one.
    t0 = time.perf_counter()
    estimator.fit(frame.iloc[:WARMUP_ROWS])
    warmup = time.perf_counter() - t0
out = timed(lambda: estimator.fit(frame), timeout)
out.update(rows=len(frame), warmup_seconds=warmup)
print(json.dumps(out))
"""
)


# --------------------------------------------------------------------------- helpers


def crowdkit_version(python: str) -> str:
    proc = subprocess.run(
        [
            python,
            "-c",
            "import crowdkit, pandas; print(crowdkit.__version__, pandas.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or len(proc.stdout.split()) != 2:
        return "(version unknown)"
    crowdkit, pandas = proc.stdout.split()
    return f"{crowdkit} (pandas {pandas})"


def run_child(python: str, code: str, args: list[str], timeout: float) -> dict:
    """Run a child in its own process group; kill the group if it overruns."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    proc = subprocess.Popen(
        [python, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"timeout": True}
    finally:
        # NUTS worker processes live in the same group; make sure none is left behind.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = stderr.strip().splitlines()
        return {"error": err[-1] if err else f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


def fmt_rows(n: int) -> str:
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"


# --------------------------------------------------------------------------- report


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "## Speed and memory",
        "",
        (
            f"Generated by `benchmarks/bench_speed.py` on {meta['date']}. Machine: {meta['machine']}. "
            "The machine was shared with other sessions while this ran: the 1-minute load average read right "
            "before each run is in the table (2 means both cores already busy), and times taken under load "
            "are longer than on an idle machine."
        ),
        "",
        (
            "Data: `bayes_annot.simulate(n_users=rows/10, n_models=20, labels_per_user=(1, 19), "
            "strengths=np.linspace(2, -2, 20), seed=1)` (30% casual users, ids categorical), the same log for "
            "every method at a size. Each (method, size) runs in a fresh process; **time** is the fit alone "
            "(ours: `bayes_annot.fit(frame, ...)` including validation, encoding and output tables; crowd-kit: "
            "`.fit` on frames prepared beforehand). "
            + (
                f"Before the timed fit each process runs one untimed warm-up fit with the same method and "
                f"options on the log's first {meta['warmup_rows']:,} rows (NUTS: {WARMUP_NUTS_DRAWS} tuning steps "
                "and draws), so the time excludes one-off costs of a fresh process (the lazy imports the first "
                "fit pays, PyTensor compilation); the warm-up's own time is in the notes. The peak is measured after the "
                "warm-up too, so memory the warm-up left with the allocator is not counted (it matters only at "
                "10^4 rows). "
                if meta.get("warmup_rows")
                else "The time is that of the first fit in the process, one-off import costs included. "
            )
            + "**peak** is the growth of the process's peak RSS "
            "(VmHWM, reset right before the fit) over its RSS at that point. Memory of child processes (NUTS runs its 2 chains "
            "in worker processes) is not in that column: the largest sum of their RSS, sampled every 0.25 s "
            "during the fit, is given in the notes. "
            f"Every fit has {meta.get('timeout', TIMEOUT) / 60:.0f} minutes. "
            f"crowd-kit {meta.get('crowdkit', 'not available')} in a separate interpreter; "
            "NoisyBT with default settings, MACE with 1 restart (task = the unordered model pair, label = the "
            "winning model), as in the accuracy benchmark."
        ),
        "",
        "| method | rows | time (s) | peak (MB) | load avg | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in records:
        time_s = (
            f"{r['seconds']:.2f}" if "seconds" in r and not r.get("timeout") else "—"
        )
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "—"
        load = f"{r['load']:.1f}" if "load" in r else "—"
        notes = []
        if r.get("note"):
            notes.append(r["note"])
        if r.get("timeout"):
            notes.append(
                f"did not finish in {meta.get('timeout', TIMEOUT) / 60:.0f} min"
            )
        if r.get("error"):
            notes.append(f"error: {r['error']}")
        if r.get("warmup_seconds") is not None:
            notes.append(f"warm-up {r['warmup_seconds']:.2f} s")
        if r.get("iterations") is not None and r["method"].startswith("EM"):
            notes.append(
                f"{r['iterations']} iterations"
                + ("" if r.get("converged", True) else ", not converged")
            )
        if r.get("children_peak_mb", 0) >= 1:
            notes.append(
                f"+ {r['children_peak_mb']:.0f} MB in child processes"
                + (" (the 2 chain workers)" if r["method"] == "NUTS" else "")
            )
        lines.append(
            f"| {r['method']} | {fmt_rows(r['rows'])} | {time_s} | {peak} | {load} | {'; '.join(notes)} |"
        )
    lines.append("")
    by = {
        (r["method"], r["rows"]): r
        for r in records
        if "seconds" in r and not r.get("timeout")
    }
    ratios = []
    for rows in sorted({r["rows"] for r in records}):
        em = by.get(("EM two-class", rows))
        if not em:
            continue
        for other in ("crowd-kit NoisyBT", "crowd-kit MACE", "MAP", "NUTS"):
            o = by.get((other, rows))
            if o:
                ratios.append(
                    f"{other} / EM two-class at {fmt_rows(rows)}: {o['seconds'] / em['seconds']:.0f}x"
                )
    if ratios:
        lines += ["Time ratios (same load caveat): " + "; ".join(ratios) + ".", ""]
    nuts = by.get(("NUTS", NUTS_MAX_ROWS))
    per_array_gb = 2 * 1000 * (10 * NUTS_MAX_ROWS // 10) * 8 / 1e9
    lines += [
        (
            f"NUTS is run only up to {fmt_rows(NUTS_MAX_ROWS)} rows; beyond that it is not the tool. Time: every "
            "gradient evaluation passes over all the log's distinct (user, pair, choice) cells, so the sampling "
            "time grows about linearly with the rows"
            + (
                f" ({nuts['seconds']:.0f} s at {fmt_rows(NUTS_MAX_ROWS)} rows → ≈ {nuts['seconds'] * 10 / 60:.0f} min "
                f"at {fmt_rows(10 * NUTS_MAX_ROWS)} by linear extrapolation)"
                if nuts
                else ""
            )
            + ". Memory: the result keeps per-user arrays for every draw (quality and pointwise "
            f"log-likelihood; 2 chains x 1,000 draws x users x 8 bytes = {per_array_gb:.1f} GB per array at "
            f"{fmt_rows(10 * NUTS_MAX_ROWS)} rows, {10 * per_array_gb:.0f} GB at {fmt_rows(100 * NUTS_MAX_ROWS)}). "
            "And with 10^5 users or more the few global parameters the two-class sampler explores (strengths, "
            "q, pi) are pinned down so tightly that their posterior adds little to EM's point estimates."
        ),
        "",
        f"Total wall time of the benchmark, including data simulation: {meta.get('wall', '?')}.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--crowdkit-python", default=None)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument(
        "--warmup-rows",
        type=int,
        default=WARMUP_ROWS,
        help="rows of an untimed warm-up fit run first in each child (0: time the first fit of a fresh process)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_speed.md"))
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="keep the simulated parquet files here (default: temporary)",
    )
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    ck_python = find_crowdkit_python(args.crowdkit_python)
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "timeout": args.timeout,
        "warmup_rows": args.warmup_rows,
    }
    if ck_python:
        meta["crowdkit"] = crowdkit_version(ck_python)
    start = time.time()
    tmp = (
        Path(args.data_dir)
        if args.data_dir
        else Path(tempfile.mkdtemp(prefix="bench-speed-"))
    )
    tmp.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    last: dict[str, dict] = {}  # method -> record at the previous size

    def write():
        meta["wall"] = f"{(time.time() - start) / 60:.1f} min"
        if args.out:
            Path(args.out).write_text(markdown(records, meta))
        if args.json:
            Path(args.json).write_text(
                json.dumps({"meta": meta, "records": records}, indent=2)
            )

    try:
        for rows in sizes:
            path = tmp / f"log_{rows}.parquet"
            if not path.exists():
                t0 = time.time()
                subprocess.run(
                    [sys.executable, "-c", MAKE_DATA, str(rows), str(path)],
                    check=True,
                    cwd=ROOT,
                )
                print(
                    f"simulated {rows:,} rows in {time.time() - t0:.0f} s", flush=True
                )
            for method in methods:
                runner, options = METHODS[method]
                record = {"method": method, "rows": rows}
                prev = last.get(method)
                if method == "NUTS" and rows > NUTS_MAX_ROWS:
                    record["note"] = (
                        f"not run: NUTS only up to {NUTS_MAX_ROWS:,} rows (see below)"
                    )
                elif runner == "crowdkit" and not ck_python:
                    record["note"] = (
                        "not run: no interpreter with crowd-kit (set CROWDKIT_PYTHON)"
                    )
                elif prev is not None and (prev.get("timeout") or prev.get("skipped")):
                    why = (
                        "did not finish"
                        if prev.get("timeout")
                        else "was not run either"
                    )
                    record.update(
                        skipped=True,
                        note=f"not run: {fmt_rows(prev['rows'])} rows {why} "
                        f"(> {args.timeout / 60:.0f} min)",
                    )
                elif (
                    prev is not None
                    and "seconds" in prev
                    and prev["seconds"] * rows / prev["rows"] > args.timeout
                ):
                    predicted = prev["seconds"] * rows / prev["rows"]
                    record.update(
                        skipped=True,
                        note=(
                            f"not run: predicted ≥ {predicted / 60:.0f} min (linear extrapolation of "
                            f"{prev['seconds']:.0f} s at {fmt_rows(prev['rows'])} rows) > {args.timeout / 60:.0f} min"
                        ),
                    )
                else:
                    python = sys.executable if runner == "ours" else ck_python
                    code = OURS_CHILD if runner == "ours" else CROWDKIT_CHILD
                    record["load"] = os.getloadavg()[0]
                    t0 = time.time()
                    out = run_child(
                        python,
                        code,
                        [str(path), json.dumps(options), str(args.timeout), str(args.warmup_rows)],
                        timeout=args.timeout + 300,
                    )
                    if "rows" in out:
                        out["actual_rows"] = out.pop("rows")
                    record.update(out)
                    record["wall"] = time.time() - t0
                print(json.dumps(record), flush=True)
                records.append(record)
                last[method] = record
                write()
            path.unlink(missing_ok=True) if not args.data_dir else None
    finally:
        if not args.data_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    write()
    print(f"wrote {args.out}; total {meta['wall']}")
    return records


if __name__ == "__main__":
    main()
