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
    python benchmarks/bench_many_models.py --root /path/to/other/checkout --cases 110000:1000 --timeout 300
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

NOTE = (
    'Open (issue 15, item 6): at 10^6 rows and 2 x 10^5 models the fit is memory-bounded (no `K x K` array) but slow: each Bradley–Terry M-step runs ~4 Newton steps of ~0.9 s each (Jacobi-preconditioned CG, ~90 matrix-vector products over ~10^6 pairs), and EM needs well over 100 iterations when each model is seen ~10 times. Next steps: inexact Newton (loose CG tolerance far from the optimum), a stronger preconditioner, and fewer M-step Newton steps per EM iteration. The 10 vs 10^4 target (2x) is likewise not met: the M-step over ~10^6 distinct pairs costs ~0.7 s per EM iteration against ~0.015 s for the whole iteration with 10 models.'
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
    t = time.perf_counter()
    result = ba.fit(log)
    seconds = time.perf_counter() - t
    fit = result.summary.get("fit", {{}})
    print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_fit_mb": base, "iterations": result.estimates.n_iter,
                      "components": result.summary.get("comparison_graph_components")}}))
""")


def run_case(rows: int, models: int, users: int, root: Path, timeout: float) -> dict:
    """One fit in a fresh interpreter: seconds, peak RSS (MB), EM iterations; ``status`` on failure."""
    script = SCRIPT.format(root=str(root), rows=rows, models=models, users=users)
    env = dict(os.environ, PYTHONPATH=str(root))
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
        return f"| {r['rows']:,} | {r['models']:,} | {r['users']:,} | {r['status']} | | | |"
    return (f"| {r['rows']:,} | {r['models']:,} | {r['users']:,} | {r['seconds']:.2f} | {r['iterations']} | "
            f"{r['peak_rss_mb']:.0f} | {r['components']} |")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout whose bayes_annot is benchmarked")
    parser.add_argument("--cases", default=None, help="ROWS:MODELS,... (default: the page's cases)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (the fastest is reported)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="10^5 rows instead of 10^6 in the 10 vs 10^4 comparison")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_many_models.md"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    root = Path(args.root)
    load = os.getloadavg()[0]
    if args.cases:
        results = []
        for rows, models in parse_cases(args.cases):
            results.append(min((run_case(rows, models, max(rows // 10, 1), root, args.timeout) for _ in range(args.repeat)),
                               key=lambda r: r.get("seconds", float("inf"))))
            print(fmt(results[-1]), flush=True)
        return results
    big = 10**5 if args.quick else 10**6
    sections = {
        "ratio": [(big, 10), (big, 10**4)],
        "growth": [(110_000, 200), (110_000, 1000), (110_000, 5000), (110_000, 10**4), (110_000, 200_000)],
        "huge": [(10**6, 200_000)],
    }
    results = {}
    for name, cases in sections.items():
        results[name] = []
        for rows, models in cases:
            runs = [run_case(rows, models, max(rows // 10, 1), root, args.timeout) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r.get("seconds", float("inf")))
            best["all_seconds"] = [r.get("seconds") for r in runs]
            results[name].append(best)
            print(fmt(best), flush=True)
    from _common import machine, write_outputs

    ratio = results["ratio"]
    ok = all(r["status"] == "ok" for r in ratio)
    factor = ratio[1]["seconds"] / ratio[0]["seconds"] if ok else float("nan")
    head = "| rows | models | users | fit (s) | EM iterations | peak RSS (MB) | graph components |\n|---:|---:|---:|---:|---:|---:|---:|"
    lines = [
        "# Many models: sparse pair statistics",
        "",
        f"Generated {dt.date.today().isoformat()} by `benchmarks/bench_many_models.py` on {machine()}; "
        f"1-minute load average at the start: {load:.1f} (2 shared cores, other jobs running: times are pessimistic). "
        f"Fastest of {args.repeat} runs per case, each in a fresh interpreter.",
        "",
        "The pair statistics are sparse (`bayes_annot.pairs.PairTable`: only the compared model pairs), every "
        "cell table of the EM engine has `2 P` entries (`P` compared pairs, at most the number of labels), and the "
        "Bradley–Terry Newton step solves the sparse Hessian (weighted graph Laplacian + ridge) by Jacobi-"
        "preconditioned conjugate gradients above 64 models (dense solve up to 64, same optimum: tested to 1e-10). "
        "Logs: uniformly random pairs of distinct models, 10 labels per user on average, 70% attentive users. "
        "Peak RSS includes the interpreter, the imported libraries and the log itself.",
        "",
        f"## 10 vs 10^4 models at {big:,} rows",
        "",
        f"Target: the 10^4-model fit takes at most 2x the 10-model one. Observed: **{factor:.2f}x**.",
        "",
        head,
        *[fmt(r) for r in ratio],
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
        "Each model is seen about 10 times; the comparison graph is one component plus isolated models.",
        "",
        head,
        *[fmt(r) for r in results["huge"]],
        "",
        NOTE,
        "",
        "## Reproduce",
        "",
        "```bash",
        "python benchmarks/bench_many_models.py                # this page",
        "python benchmarks/bench_many_models.py --root /path/to/older/checkout --cases 110000:1000 --timeout 300",
        "```",
    ]
    write_outputs("\n".join(lines), results, args.out, args.json)
    return results


if __name__ == "__main__":
    main()
