"""EM fit time and peak memory as the number of models grows (issue 15, item 6); writes docs/benchmarks_many_models.md.

Each fit runs in a fresh interpreter (``subprocess``) so that its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the log is built in
that process (not timed; its memory is part of the peak). Logs: ``rows`` labels
of ``users`` users (uniform), each label a uniformly random pair of distinct
models among ``K`` (so with many models each model is seen a few times and most
pairs never), 70% attentive users (Bradley–Terry on Normal(0, 1) strengths), 30%
casual (coin flips). ``fit`` = ``bayes_annot.fit(log)`` (two-class EM, defaults:
validation, encoding, EM, tables).

Usage::

    python benchmarks/bench_many_models.py [--quick] [--out docs/benchmarks_many_models.md] [--json f.json]
    python benchmarks/bench_many_models.py --baseline /path/to/main/checkout   # + alternated runs of another tree
    python benchmarks/bench_many_models.py --root /path/to/other/checkout --cases 110000:1000 --timeout 300

Times are the fit's CPU seconds (``time.process_time``: on a shared machine wall time also counts the other
jobs) and its wall seconds; the 10 vs 10^4 ratio is of CPU seconds, fastest run of each case.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

NOTE = (
    "Session s23: the Newton direction's conjugate gradients take half the products. Their Jacobi preconditioner "
    "left one eigenvalue far below the rest, the strengths' common shift, held by the prior's ridge alone, which "
    "cost 7-8 products instead of 4 every other direction; a coarse correction for the all-ones vector over the "
    "compared models (exact, since the Hessian's rows sum to the ridge) removes it, and CG starts from zero (one "
    "product less). EM's one-step M-steps then stop CG at a relative residual of 3e-2 instead of 1e-3 (2 products "
    "a step): at 10^4 models, 10^6 rows, 21 EM iterations either way and 60 products instead of 125 (strengths "
    "6e-8 from main's fit, as between any two paths to the default tolerance); at 10^5 models 339 instead of 361 "
    "iterations and 1192 instead of 2618 products. "
    "Session s21: the compiled kernels without numba's start-up. Phase profile of the 10^4-model fit before it "
    "(fresh process, AMD EPYC, load ~2, CPU s): 1.98 in all, of which ~0.5 numba (its import 0.17 s, then its typing "
    "and lowering registries on the first call of a cached kernel, ~0.15 s, and more in the fit), ~0.12 lazy imports "
    "that the 10-model fit pays too, ~0.31 outside EM (reading and encoding the log 0.13 as with 10 models, the "
    "no-verdict floor 0.06, the pair table 0.03, the comparison graph 0.02, the EM block 0.03), EM's start 0.10-0.17 "
    "(4 Newton steps) and 22 EM evaluations of ~39 ms (attentive tables 36 x 10 ms, Newton directions 26 x ~14 ms "
    "of which conjugate gradients ~9 ms, E-step passes ~8 ms); the 10-model fit: 0.66, of which EM 0.42 (64 "
    "evaluations of 6.5 ms) and reading 0.12. Now numba compiles the kernels once (`numba.cfunc` over raw pointers) "
    "and llvmlite emits native code for this CPU, cached as an object file (loaded by llvmlite, ~0.04 s) and, on "
    "Linux with a C compiler, as a shared library linked from it (loaded by ctypes, ~1 ms): later processes never "
    "import numba. The table's Horner polynomials may fuse multiply-adds (7.0 -> 4.4 ms per 10^6 pairs, still "
    "within 4 ulp of numpy's cells and of `expit`), the no-verdict floor above 256 models takes one `exp`/`log1p` "
    "per label instead of two `log_expit` (60 -> 25 ms), and the kernels serve from 5 x 10^4 pairs (fresh-process "
    "fits of 10^4 models, compiled / numpy path: 3 x 10^4 labels 0.29 / 0.30 s, 10^5 labels 1.10 / 1.65 s). Tried "
    "and dropped: the table's three passes fused over L1-sized chunks (8.7 ms against 7.8: the passes are not "
    "memory-bound), Estrin's scheme for the polynomials (0.6 ms less per table, but `p` 5 ulp from `expit`), int32 "
    "indices for the E-step passes (2.0 ms both ways: the scatter-add's dependency, not memory, bounds them), a "
    "rougher EM start (`EM_START_TOL` 0.1: ~20 ms less, same 21 EM iterations, but the continuous variant's "
    "compiled and numpy fits at tol 1e-13 ended 1.7e-10 apart, beyond their test's 1e-10). What is left in the "
    "10^4-model fit (~1.3 s): EM's 22 evaluations (~0.75 s: per evaluation ~1.6 tables of 7 ms, a Newton direction "
    "of ~13 ms, two E-step passes of 2.6 ms and per-user terms of 2.3 ms, the objective's dot products), the start "
    "(~0.1 s), set-up outside EM (~0.25 s, ~0.1 s more than with 10 models) and the lazy imports. "
    "Session s20 (numba kernels, optional extra `fast`) took EM from ~80 to ~41 ms per evaluation: the table and "
    "each pair's `sigmoid(d)` in three passes whose `exp(-|d|)` (Cody-Waite reduction, degree-13 polynomial, "
    "`2^-k` from exponent bits) and `log1p` (`2 atanh(e / (2 + e))` series) the compiler vectorises, the "
    "direction's curvatures and four per-model sums in one pass, the E-step's two passes without gathered "
    "temporaries (`np.bincount`'s numbers bit for bit); the two paths reach the same fit (1e-10 at a tight "
    "tolerance: tested; 2e-15 apart at the default tolerance on the 10^6-row log), and a fit of at most 64 models "
    "never loads the kernels (tested). Tried and dropped then: the log-odds gather fused into the `exp` pass, the "
    "per-model sums accumulated per run of equal `model_a`, a numba product for conjugate gradients (3.7 ms against "
    "scipy's CSR + CSC 1.9 ms), numba's scalar libm `exp` / `log1p`, a numpy table in cache-sized chunks. Before "
    "(sessions s17-s19, from 236 ms per EM iteration): one Newton step per M-step above 64 models (ECM, "
    "`pairs.bt_newton_step`, same fixed points, tested), each point's table computed once (`pairs.AttentiveTables`), "
    "work arrays kept between evaluations, the E-step in cell order (`Block.entries_by_cell`), the pair keys' "
    "unique / inverse as one packed sort, EM's start through the cached tables stopping at a Newton step below "
    "1e-3. The 2 x 10^5-model fit converges in bounded memory (each model is seen ~10 times, so EM moves slowly; "
    "hundreds of evaluations, where the kernels pay most). The timed `ba.fit` includes its lazy imports (fit.py and "
    "the engines), so both trees need compiled bytecode: with PYTHONDONTWRITEBYTECODE=1 a fresh worktree compiles "
    "its source in every run (`python -m compileall bayes_annot` once removes it)."
)


SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np, pandas as pd
    import bayes_annot as ba

    def sparse_log(n_rows, n_models, n_users, seed=0):
        rng = np.random.default_rng(seed)
        strengths = rng.normal(0.0, 1.0, n_models)
        user = rng.integers(0, n_users, n_rows)
        a = rng.integers(0, n_models, n_rows)
        b = (a + rng.integers(1, n_models, n_rows)) % n_models
        attentive = rng.random(n_users) < 0.7
        p = np.where(attentive[user], 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b]))), 0.5)
        choice = rng.random(n_rows) < p
        return pd.DataFrame({{"user": user, "model_a": a, "model_b": b,
                             "winner": np.where(choice, "model_a", "model_b")}})

    log = sparse_log({rows}, {models}, {users})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    result = ba.fit(log)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_fit_mb": base, "iterations": result.estimates.n_iter,
                      "components": result.summary.get("comparison_graph_components"),
                      "numba": "numba" in sys.modules, "kernels": "bayes_annot.numba_kernels" in sys.modules}}))
""")


NUMBA_CACHE = tempfile.mkdtemp(prefix="bench-many-numba-")
"""The compiled kernels' cache of this run (``NUMBA_CACHE_DIR``): empty at first, so the first fit that uses them
compiles them (cold), and every later one loads them (warm)."""


def run_case(rows: int, models: int, users: int, root: Path, timeout: float, env: dict | None = None) -> dict:
    """One fit in a fresh interpreter: seconds, peak RSS (MB), EM iterations; ``status`` on failure. ``env``:
    extra environment variables (the numba cache folder, ``BAYES_ANNOT_NUMBA=0`` for the numpy path)."""
    script = SCRIPT.format(root=str(root), rows=rows, models=models, users=users)
    env = dict(os.environ, PYTHONPATH=str(root), NUMBA_CACHE_DIR=NUMBA_CACHE, **(env or {}))
    out = {"rows": rows, "models": models, "users": users}
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(out, status=f"did not finish in {timeout:.0f} s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(out, status=f"failed: {last[:160]}")
    return dict(out, status="ok", **json.loads(proc.stdout.strip().splitlines()[-1]))


def parse_cases(text: str) -> list[tuple[int, int]]:
    return [(int(float(r)), int(float(k))) for r, k in (c.split(":") for c in text.split(","))]


def fmt(r: dict) -> str:
    if r.get("status") != "ok":
        return f"| {r['rows']:,} | {r['models']:,} | {r['users']:,} | {r['status']} | | | | |"
    return (f"| {r['rows']:,} | {r['models']:,} | {r['users']:,} | {r['cpu_seconds']:.2f} | {r['seconds']:.2f} | "
            f"{r['iterations']} | {r['peak_rss_mb']:.0f} | {r['components']} |")


def best(runs: list[dict]) -> dict:
    """The run with the least CPU time (all runs' CPU and wall seconds attached)."""
    out = dict(min(runs, key=lambda r: r.get("cpu_seconds", float("inf"))))
    out["all_cpu_seconds"] = [r.get("cpu_seconds") for r in runs]
    out["all_seconds"] = [r.get("seconds") for r in runs]
    return out


def alternated(cases, roots: dict, repeat: int, timeout: float) -> dict:
    """Each case run ``repeat`` times per tree, the trees alternating run by run; the best run per (tree, case).
    ``roots``: name -> tree, or ``(tree, extra environment)``."""
    runs = {(name, case): [] for name in roots for case in cases}
    for _ in range(repeat):
        for case in cases:
            for name, root in roots.items():
                root, env = root if isinstance(root, tuple) else (root, None)
                runs[(name, case)].append(run_case(case[0], case[1], max(case[0] // 10, 1), root, timeout, env))
                print(name, fmt(runs[(name, case)][-1]), flush=True)
    return {key: best(value) for key, value in runs.items()}


def numba_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def cpu_list(r: dict) -> str:
    return ", ".join("-" if x is None else f"{x:.2f}" for x in r["all_cpu_seconds"])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout whose bayes_annot is benchmarked")
    parser.add_argument("--cases", default=None, help="ROWS:MODELS,... (default: the page's cases)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (the fastest is reported)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="10^5 rows instead of 10^6 in the 10 vs 10^4 comparison")
    parser.add_argument("--baseline", default=None,
                        help="another checkout (e.g. main) whose 10 vs 10^4 fits run alternately with --root's")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_many_models.md"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    root = Path(args.root)
    load = os.getloadavg()[0]
    if args.cases:
        results = []
        for rows, models in parse_cases(args.cases):
            results.append(best([run_case(rows, models, max(rows // 10, 1), root, args.timeout)
                                 for _ in range(args.repeat)]))
            print(fmt(results[-1]), flush=True)
        return results
    big = 10**5 if args.quick else 10**6
    ratio_cases = [(big, 10), (big, 10**4)]
    # the compiled kernels' first use in a fresh cache (numba's compile included), before the alternated (warm) runs
    cold = run_case(big, 10**4, big // 10, root, args.timeout) if numba_installed() else None
    if cold is not None:
        print("this tree, cold numba cache", fmt(cold), flush=True)
    roots = {"this tree": root} if args.baseline is None else {"baseline": Path(args.baseline), "this tree": root}
    if numba_installed():
        roots["this tree, numpy path"] = (root, {"BAYES_ANNOT_NUMBA": "0"})
    pairs_run = alternated(ratio_cases, roots, args.repeat, args.timeout)
    results = {"ratio": [pairs_run[("this tree", case)] for case in ratio_cases], "cold": cold}
    if args.baseline is not None:
        results["baseline"] = [pairs_run[("baseline", case)] for case in ratio_cases]
    if numba_installed():
        results["numpy_path"] = [pairs_run[("this tree, numpy path", case)] for case in ratio_cases]
    sections = {
        "growth": [(110_000, 200), (110_000, 1000), (110_000, 5000), (110_000, 10**4), (110_000, 200_000)],
        "huge": [(10**6, 200_000)],
    }
    for name, cases in sections.items():
        results[name] = []
        for rows, models in cases:
            repeat = 1 if name == "huge" else args.repeat  # minutes per run on a loaded machine
            results[name].append(best([run_case(rows, models, max(rows // 10, 1), root, args.timeout)
                                       for _ in range(repeat)]))
            print(fmt(results[name][-1]), flush=True)
    from _common import machine, write_outputs

    def factor(pair):
        ok = all(r["status"] == "ok" for r in pair)
        return pair[1]["cpu_seconds"] / pair[0]["cpu_seconds"] if ok else float("nan")

    ratio = results["ratio"]
    end_load = os.getloadavg()[0]
    head = ("| rows | models | users | fit CPU (s) | fit wall (s) | EM iterations | peak RSS (MB) | graph components |"
            "\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    compare = []
    rows_of = [("this tree" + (" (compiled kernels, warm cache)" if ratio[1].get("kernels") else ""), ratio)]
    if results.get("numpy_path"):
        rows_of.append(("this tree, numpy path (`BAYES_ANNOT_NUMBA=0`)", results["numpy_path"]))
    if args.baseline is not None:
        rows_of.insert(0, ("baseline", results["baseline"]))
    if len(rows_of) > 1:
        compare = [
            "",
            "Alternated run by run (" + ", ".join(name.split(" (")[0] for name, _ in rows_of) + "; 10 models, then "
            f"10^4, repeated){'' if args.baseline is None else f'; baseline: the tree `{args.baseline}`'}, CPU "
            "seconds of every run:",
            "",
            "| tree | 10 models, CPU (s) | 10^4 models, CPU (s) | ratio (fastest runs) | EM iterations (10 / 10^4) |",
            "|---|---|---|---:|---|",
            *[f"| {name} | {cpu_list(pair[0])} | {cpu_list(pair[1])} | {factor(pair):.2f}x | "
              f"{pair[0].get('iterations')} / {pair[1].get('iterations')} |" for name, pair in rows_of],
        ]
    cold = results.get("cold")
    if cold is not None and cold.get("status") == "ok":
        compare += [
            "",
            f"The compiled kernels' first use, with an empty cache (`NUMBA_CACHE_DIR`; numba's compile included), one "
            f"run: 10^4 models {cold['cpu_seconds']:.2f} CPU s ({cold['cpu_seconds'] / ratio[0]['cpu_seconds']:.2f}x "
            f"the 10-model fit) against {ratio[1]['cpu_seconds']:.2f} s warm (fastest warm run above): the compile "
            f"costs ~{cold['cpu_seconds'] - ratio[1]['cpu_seconds']:.1f} s once per machine, source and llvmlite "
            "version.",
        ]
    lines = [
        "# Many models: sparse pair statistics",
        "",
        f"Generated {dt.date.today().isoformat()} by `benchmarks/bench_many_models.py` on {machine()}; "
        f"1-minute load average {load:.1f} at the start and {end_load:.1f} at the end (2 shared cores, other jobs "
        "running: wall times are pessimistic, CPU times less so). "
        f"Fastest (least CPU) of {args.repeat} runs per case, each in a fresh interpreter.",
        "",
        "The pair statistics are sparse (`bayes_annot.pairs.PairTable`: only the compared model pairs), every "
        "cell table of the EM engine has `2 P` entries (`P` compared pairs, at most the number of labels), and the "
        "Bradley–Terry Newton step solves the sparse Hessian (weighted graph Laplacian + ridge) by conjugate "
        "gradients (Jacobi plus a coarse correction for the common shift) above 64 models (dense solve up to 64, same optimum: tested to 1e-10); "
        "above 64 models EM takes one such Newton step per M-step (ECM; the fit is within 1e-6 of one with fully "
        "solved M-steps at a tight tolerance: tested). "
        "Logs: uniformly random pairs of distinct models, 10 labels per user on average, 70% attentive users. "
        "Peak RSS includes the interpreter, the imported libraries and the log itself.",
        "",
        f"## 10 vs 10^4 models at {big:,} rows",
        "",
        f"Target: the 10^4-model fit takes at most 2x the 10-model one. Observed: **{factor(ratio):.2f}x** "
        "(CPU seconds, fastest runs" + (", the 10^4-model fit through the compiled kernels, warm cache; without "
        f"them (`BAYES_ANNOT_NUMBA=0`, or numba not installed): {factor(results['numpy_path']):.2f}x"
        if results.get("numpy_path") and ratio[1].get("kernels") else "") + ").",
        "",
        head,
        *[fmt(r) for r in ratio],
        *compare,
        "",
        "## Growth with the number of models (~110k rows)",
        "",
        "The issue's measurements before this change (dense `K x K` tables and Newton step): 200 models 2.7 s; "
        "1,000 models 7.8 s; 5,000 models did not finish in 300 s; 200,000 models `MemoryError: Unable to "
        "allocate 287 GiB` in `pair_counts`.",
        "",
        head,
        *[fmt(r) for r in results["growth"]],
        "",
        "## 2 x 10^5 models, 10^6 rows",
        "",
        "Each model is seen about 10 times (graph components: last column). One run.",
        "",
        head,
        *[fmt(r) for r in results["huge"]],
        "",
        NOTE,
        "",
        "## Reproduce",
        "",
        "```bash",
        "pip install -e '.[fast]'   # numba: the page then also shows the numpy path and a cold-cache run",
        "python benchmarks/bench_many_models.py --baseline /path/to/main --repeat 3   # this page",
        "python benchmarks/bench_many_models.py --root /path/to/older/checkout --cases 110000:1000 --timeout 300",
        "```",
    ]
    write_outputs("\n".join(lines), results, args.out, args.json)
    return results


if __name__ == "__main__":
    main()
