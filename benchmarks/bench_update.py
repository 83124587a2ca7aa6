"""Incremental update vs full refit at 10^6 rows (issue #8).

A simulated log of about 10^6 rows (45,000 users, 20 models, 5-40 labels per
user) is shuffled; the first 99% is fitted once (``previous``), then the last
1% arrives. Timed, interleaved, ``--repeat`` times each (median reported):

* ``full``: ``bayes_annot.fit(old + new)`` (read nothing from disk; prepare,
  plain EM from the default start, tables);
* ``update``: ``incremental.update(previous, new)`` (encode only the new rows,
  warm start, block E-step, SQUAREM);
* ``update_plain``: the same without SQUAREM;
* ``cold_block``: ``incremental.fit_prepared`` on the merged prepared log
  without a warm start (with SQUAREM): how much of the gain is the engine
  rather than the warm start.

Then, at ``--tight-tol``, the largest differences in quality and strengths
between ``update`` and ``full``.

Usage: python benchmarks/bench_update.py [--variants two-class,continuous] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd


def make_logs(variant: str, n_users: int, seed: int, share: float):
    import bayes_annot as ba

    log = ba.simulate(n_users=n_users, n_models=20, labels_per_user=(5, 40), quality=variant,
                      strengths=np.linspace(2, -2, 20), seed=seed)[["user", "model_a", "model_b", "winner"]]
    log = log.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(round(len(log) * (1 - share)))
    return log.iloc[:cut].reset_index(drop=True), log.iloc[cut:].reset_index(drop=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(variant: str, n_users: int, repeat: int, tight_tol: float, seed: int = 1, share: float = 0.01) -> dict:
    import bayes_annot as ba
    from bayes_annot.data import prepare
    from bayes_annot.incremental import fit_prepared, merge_prepared, update

    old, new = make_logs(variant, n_users, seed, share)
    full_log = pd.concat([old, new], ignore_index=True)
    previous = ba.fit(old, model=variant)
    merged = merge_prepared(previous._data, prepare(new))
    times = {"full": [], "update": [], "update_plain": [], "cold_block": []}
    info = {}
    for r in range(repeat):
        for name in times:
            if name == "full" and variant == "continuous" and r > 0:
                continue  # ~30 s per run: once is enough
            if name == "full":
                seconds, res = timed(lambda: ba.fit(full_log, model=variant))
            elif name == "update":
                seconds, res = timed(lambda: update(previous, new))
            elif name == "update_plain":
                seconds, res = timed(lambda: update(previous, new, accelerate=False))
            else:
                seconds, res = timed(lambda: fit_prepared(merged, model=variant, accelerate=True))
            times[name].append(seconds)
            info[name] = {"iterations": res.estimates.n_iter, "loglik": res.estimates.loglik}
    medians = {k: statistics.median(v) for k, v in times.items()}
    prev_t = previous._data
    out = {
        "variant": variant, "rows_old": len(old), "rows_new": len(new), "rows": len(full_log),
        "new_users": int(len(set(new.user.astype(str)) - set(old.user.astype(str)))),
        "seconds_median": {k: round(v, 3) for k, v in medians.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "iterations": {k: v["iterations"] for k, v in info.items()},
        "speedup_update_vs_full": round(medians["full"] / medians["update"], 2),
        "speedup_update_plain_vs_full": round(medians["full"] / medians["update_plain"], 2),
        "speedup_update_vs_cold_block": round(medians["cold_block"] / medians["update"], 2),
        "users": int(prev_t.n_users),
    }
    # agreement at a tight tolerance
    prev_tight = ba.fit(old, model=variant, tol=tight_tol)
    ref = ba.fit(full_log, model=variant, tol=tight_tol, max_iter=3000)
    up = update(prev_tight, new, tol=tight_tol, max_iter=3000)
    out["tight_tol"] = tight_tol
    out["max_abs_diff_quality"] = float(np.abs(up.users.quality.to_numpy() - ref.users.quality.to_numpy()).max())
    out["max_abs_diff_strength"] = float(np.abs(up.models.strength.to_numpy() - ref.models.strength.to_numpy()).max())
    out["tight_iterations"] = {"full": ref.estimates.n_iter, "update": up.estimates.n_iter}
    # both against the optimum itself (SQUAREM, cold, far tighter tolerance)
    best = fit_prepared(prepare(full_log), model=variant, tol=1e-17, max_iter=1000, accelerate=True)
    out["optimum_iterations"] = best.estimates.n_iter
    for name, res in (("update", up), ("full", ref)):
        out[f"{name}_to_optimum_quality"] = float(np.abs(res.users.quality.to_numpy() - best.users.quality.to_numpy()).max())
        out[f"{name}_to_optimum_strength"] = float(np.abs(res.models.strength.to_numpy() - best.models.strength.to_numpy()).max())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="two-class,continuous")
    parser.add_argument("--users", type=int, default=45_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tight-tol", type=float, default=1e-15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = []
    for variant in args.variants.split(","):
        result = run(variant, args.users, args.repeat, args.tight_tol)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
