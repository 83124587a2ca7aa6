"""Incremental update vs full refit on a 1% update (issue #8); writes docs/benchmarks_update.md.

A simulated log (20 models, 5-40 labels per user, 30% casual users) is
shuffled; the first 99% is fitted once (``previous``), then the last 1%
arrives. Timed, interleaved, ``--repeat`` times each (median and min):

* ``full``: ``bayes_annot.fit(old + new)`` on the in-memory frame (validate,
  encode, EM from the default start, tables): what a nightly job would do
  without incremental updates;
* ``update``: ``previous.update(new)`` (encode only the new rows, merge them
  into the previous fit's EM block, warm-started EM, tables);
* ``update, block rebuilt``: the same update from a result that kept no EM
  block (the block is rebuilt from the merged rows): how much of the gain
  is keeping the block.

Ids are given two ways: as text (what ``read_table`` returns for csv / json,
pandas' ``str`` dtype) and as pandas categoricals (the cheapest input to
encode, so the hardest case for the ratio). At ``--tight-tol`` the update and
the full refit are compared with each other and with the optimum (a cold
SQUAREM fit at tol 1e-17).

Usage::

    python benchmarks/bench_update.py [--sizes 45000,450000] [--repeat 5] [--out docs/benchmarks_update.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_logs(variant: str, n_users: int, seed: int, share: float, ids: str = "category"):
    """Old (first 99%) and new (last 1%) rows of a shuffled simulated log; ``ids``: "category" or "text"."""
    import bayes_annot as ba

    log = ba.simulate(n_users=n_users, n_models=20, labels_per_user=(5, 40), variant=variant,
                      strengths=np.linspace(2, -2, 20), seed=seed)[["user", "model_a", "model_b", "winner"]]
    log = log.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    # a vote id, as real comparison-mode logs have: updates find re-sent rows by it (``row_id``), so two
    # identical votes of one user stay two rows and the update equals the refit of the same rows
    log.insert(0, "vote_id", np.arange(len(log), dtype=np.int64))
    cut = int(round(len(log) * (1 - share)))
    # a fifth of the new rows come from users never seen before (5 labels each), so an update inserts users
    newcomers = np.arange(cut, cut + (len(log) - cut) // 5)
    user = log["user"].astype(str).to_numpy(dtype=object)
    user[newcomers] = [f"new{(i - cut) // 5:06d}" for i in newcomers]
    log["user"] = pd.Categorical(user)
    if ids == "text":
        log = log.astype("str")
    return log.iloc[:cut].reset_index(drop=True), log.iloc[cut:].reset_index(drop=True)


def _without_block(result):
    clone = result.filter(str(result.rule))
    clone._state = None
    return clone


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(variant: str, n_users: int, ids: str, repeat: int, seed: int = 1, share: float = 0.01) -> dict:
    import bayes_annot as ba

    old, new = make_logs(variant, n_users, seed, share, ids)
    full_log = pd.concat([old, new], ignore_index=True)
    previous = ba.fit(old, variant=variant)
    no_block = _without_block(previous)
    arms = {
        "full": lambda: ba.fit(full_log, variant=variant),
        "update": lambda: previous.update(new, row_id="vote_id"),
        "update_rebuilt": lambda: no_block.update(new, row_id="vote_id"),
    }
    times = {name: [] for name in arms}
    iterations = {}
    for _ in range(repeat):
        for name, fn in arms.items():
            seconds, res = timed(fn)
            times[name].append(seconds)
            iterations[name] = res.estimates.n_iter
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "variant": variant, "ids": ids, "rows": len(full_log), "rows_new": len(new), "users": int(full_log.user.nunique()),
        "new_users": int(len(set(new.user.astype(str)) - set(old.user.astype(str)))),
        "seconds_median": {k: round(v, 4) for k, v in median.items()},
        "seconds_min": {k: round(min(v), 4) for k, v in times.items()},
        "iterations": iterations,
        "speedup": round(median["full"] / median["update"], 2),
        "speedup_min": round(min(times["full"]) / min(times["update"]), 2),
        "speedup_rebuilt": round(median["full"] / median["update_rebuilt"], 2),
    }


def agreement(variant: str, n_users: int, tight_tol: float, seed: int = 1, share: float = 0.01) -> dict:
    """Largest differences between the update and the full refit (and each to the optimum) at a tight tol."""
    import bayes_annot as ba
    from bayes_annot.data import prepare
    from bayes_annot.fit import fit_prepared

    old, new = make_logs(variant, n_users, seed, share)
    full_log = pd.concat([old, new], ignore_index=True)
    up = ba.fit(old, variant=variant, tol=tight_tol).update(new, tol=tight_tol, max_iter=3000, row_id="vote_id")
    ref = ba.fit(full_log, variant=variant, tol=tight_tol, max_iter=3000)
    best = fit_prepared(prepare(full_log), variant=variant, tol=1e-17, max_iter=1000, accelerate=True)

    def gap(a, b, column, table):
        return float(np.abs(getattr(a, table)[column].to_numpy() - getattr(b, table)[column].to_numpy()).max())

    return {
        "variant": variant, "tight_tol": tight_tol,
        "update_vs_full_quality": gap(up, ref, "quality", "users"),
        "update_vs_full_strength": gap(up, ref, "strength", "models"),
        "update_to_optimum_quality": gap(up, best, "quality", "users"),
        "full_to_optimum_quality": gap(ref, best, "quality", "users"),
        "iterations": {"update": up.estimates.n_iter, "full": ref.estimates.n_iter},
    }


def markdown(results: list[dict], agreements: list[dict], machine: str, repeat: int) -> str:
    lines = [
        "## Incremental update vs full refit (1% new rows)",
        "",
        f"Generated by `benchmarks/bench_update.py` on {machine}.",
        "",
        "A simulated log (20 models, 5–40 labels per user), shuffled; the first 99% is fitted once, then the "
        "last 1% arrives, a fifth of it from new users (5 labels each; the `new users` column). `full` = `bayes_annot.fit(old + new)` on the in-memory frame; `update` = "
        "`previous.update(new)` (the new labels merged into the previous fit's EM block, warm-started EM); "
        "`block rebuilt` = the same update from a result that kept no block. Ids as text (pandas `str`, what "
        "`read_table` returns for csv/json) or as categoricals (the cheapest input to encode). "
        f"Median of {repeat} interleaved runs (speed-up of the minima in brackets). Target (issue #8): "
        "the update at least 5x faster than the full refit.",
        "",
        "| model | rows | users | new users | ids | full refit (s) | update (s) | speed-up | update, block rebuilt (s) | "
        "EM iterations full / update |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["seconds_median"]
        lines.append(
            f"| {r['variant']} | {r['rows']:,} | {r['users']:,} | {r['new_users']:,} | {r['ids']} | {s['full']:.3f} | "
            f"{s['update']:.3f} | "
            f"**{r['speedup']:.2f}x** ({r['speedup_min']:.2f}x) | {s['update_rebuilt']:.3f} | "
            f"{r['iterations']['full']} / {r['iterations']['update']} |"
        )
    lines += [
        "",
        "Why the continuous model gains less: its EM converges linearly and slowly (about 30 passes over all "
        "labels from scratch); a warm start saves about two thirds of the passes (about 11 left, with SQUAREM), but "
        "every pass still touches every label, so the update is bounded near the ratio of passes plus the "
        "encoding it skips. The two-class model needs 8 passes from scratch and 2 after a warm start.",
        "",
        "Agreement with the full refit (issue #8: within 1e-6 on quality and strengths), both run to a tight "
        "tolerance, and each one's distance to the optimum (a cold SQUAREM fit at tol 1e-17):",
        "",
        "| model | tol | max abs diff quality | max abs diff strength | update to optimum | full refit to optimum | "
        "iterations full / update |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a in agreements:
        lines.append(
            f"| {a['variant']} | {a['tight_tol']:.0e} | {a['update_vs_full_quality']:.1e} | "
            f"{a['update_vs_full_strength']:.1e} | {a['update_to_optimum_quality']:.1e} | "
            f"{a['full_to_optimum_quality']:.1e} | {a['iterations']['full']} / {a['iterations']['update']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="45000,450000", help="users per log (about 22 rows each)")
    parser.add_argument("--variants", default="two-class,continuous")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tight-tol", type=float, default=1e-15)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks_update.md"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", default=None, help="only rewrite the markdown from a --json file of a previous run")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        Path(args.out).write_text(markdown(saved["results"], saved["agreement"], saved["machine"], saved["repeat"]))
        print(f"wrote {args.out}")
        return
    from _common import machine

    load = os.getloadavg()[0]
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    results, agreements = [], []
    for variant in args.variants.split(","):
        for n_users in sizes:
            if variant == "continuous" and n_users > sizes[0]:
                continue  # continuous: the smallest size only (its full refit is ~10x slower)
            for ids in ("text", "category"):
                result = run(variant, n_users, ids, args.repeat)
                results.append(result)
                print(json.dumps(result), flush=True)
        agreements.append(agreement(variant, sizes[0], args.tight_tol))
        print(json.dumps(agreements[-1]), flush=True)
    where = f"{machine()}; 1-minute load average {load:.1f} at the start"
    Path(args.out).write_text(markdown(results, agreements, where, args.repeat))
    print(f"wrote {args.out}")
    if args.json:
        saved = {"results": results, "agreement": agreements, "machine": where, "repeat": args.repeat}
        Path(args.json).write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
