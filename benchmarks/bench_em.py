"""EM fit time and peak memory at 10^6 and 10^7 rows (issue #2 targets).

Each size runs in its own process: simulate the log (categorical ids, as a
parquet/Arena loader would deliver them), then time ``bayes_annot.fit`` (data
validation + encoding + EM + tables) and the EM engine alone (the block
engine ``fit`` runs: building the users x cells block, then plain EM passes),
and record the
peak memory of the fit: the process's peak RSS growth over the RSS right
before the fit (read from /proc/self/status VmHWM after resetting it).
Per-iteration time and the floor are recorded as wall time and as the process's CPU time
(``*_cpu``): on a shared machine the CPU-time ratio is the steadier one (EM runs on one thread,
BLAS included).

``--casual length`` runs the issue #14 case instead: casual clicks that follow length
(``simulate(length_bias=0.85)``, texts in ``response_a`` / ``response_b``) fitted with the
default length covariate (6 bins, 13 casual cells): one extra sparse mat-vec per E-step
and a small Newton M-step.

``--ties model`` adds ties in the likelihood (issue #14 item 2): ``simulate(tie_nu=0.6,
casual_tie_rate=0.2)`` (about 20% ties), fitted with Davidson's attentive ties and the casual tie
rate: a users x pairs tie matrix, one more sparse mat-vec each way per E-step, and the Davidson
Newton and ``nu`` steps in the M-step. The floor then counts every row in the likelihood (ties too).

Usage: python benchmarks/bench_em.py [--sizes 1e6:1e5,1e7:1e6] [--variants two-class,continuous] [--casual none|length] [--ties none|model] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
import numpy as np
import bayes_annot as ba
from bayes_annot.data import prepare
from bayes_annot.block_em import LocalRunner, run_em
from bayes_annot.local_em import problem_block
from bayes_annot.problem import build_problem
from bayes_annot.spec import BehaviourSpec
from bayes_annot.metrics import auc
from bayes_annot.casual import prepare_casual

n_rows, n_users, n_models, variant = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
casual = sys.argv[5]
ties = sys.argv[6] == "model"

def rss_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])

mean_labels = n_rows / n_users
log = ba.simulate(n_users=n_users, n_models=n_models, casual_share=0.3, labels_per_user=(1, int(2 * mean_labels - 1)),
                  variant=variant, strengths=np.linspace(2, -2, n_models), seed=1,
                  length_bias=0.85 if casual == "length" else None,
                  **(dict(tie_nu=0.6, casual_tie_rate=0.2) if ties else {}))
truth = log.groupby("user", observed=True)["true_attentive"].first().to_numpy()
log = log[["user", "model_a", "model_b", "winner"] + (["response_a", "response_b"] if casual == "length" else [])].copy()
base = rss_kb('VmRSS')
with open('/proc/self/clear_refs', 'w') as fh:
    fh.write('5')  # reset VmHWM to the current RSS
t0 = time.perf_counter()
result = ba.fit(log, variant=variant, ties="model" if ties else "ignore")
t_fit = time.perf_counter() - t0
peak = rss_kb('VmHWM')
prepared = prepare(log)
design = prepare_casual(prepared, "auto")
problem, _ = build_problem(prepared, casual=design, ties=ties)
ticks = []
t0 = time.perf_counter()
block = problem_block(prepared, problem, n_casual=0 if design is None else design.n_cells)  # the engine ba.fit runs
em = run_em(LocalRunner([block], prepared.n_users), problem.n_models, BehaviourSpec(variant, casual=design),
            callback=lambda i, v: ticks.append((time.perf_counter(), time.process_time())))
t_em = time.perf_counter() - t0
ticks = np.array(ticks).reshape(-1, 2)
per_iter = float(np.median(np.diff(ticks[:, 0]))) if len(ticks) > 2 else float("nan")
per_iter_cpu = float(np.median(np.diff(ticks[:, 1]))) if len(ticks) > 2 else float("nan")
# the floor: two full np.bincount passes over the rows (per-user sums and per-pair sums)
cell = problem.cell()
user = problem.user
if ties:  # every row in the likelihood, ties too (a tie's cell: its pair, as choice 0)
    user = np.concatenate([user, problem.tie_user])
    cell = np.concatenate([cell, (problem.tie_model_a.astype(np.int64) * problem.n_models + problem.tie_model_b) * 2])
w = np.random.default_rng(0).random(user.shape[0])
floor, floor_cpu = [], []
for _ in range(5):
    t1, c1 = time.perf_counter(), time.process_time()
    np.bincount(user, weights=w, minlength=problem.n_users)
    np.bincount(cell, weights=w, minlength=2 * problem.n_models ** 2)
    floor.append(time.perf_counter() - t1)
    floor_cpu.append(time.process_time() - c1)
order = np.argsort(np.array([int(u[1:]) for u in result.users.user]))
out = dict(rows=len(log), users=n_users, models=n_models, variant=variant, casual=casual, ties=sys.argv[6],
           n_ties=problem.n_ties, nu=em.nu, t=em.tie_rate, fit_seconds=t_fit, em_seconds=t_em,
           em_per_iteration=per_iter, bincount_floor=min(floor),
           em_per_iteration_cpu=per_iter_cpu, bincount_floor_cpu=min(floor_cpu),
           iterations=em.n_iter, converged=bool(em.converged), peak_fit_mb=(peak - base) / 1024,
           peak_rss_mb=peak / 1024, auc=auc(result.users.quality.to_numpy()[order], truth))
print(json.dumps(out))
"""


def run_size(n_rows: int, n_users: int, n_models: int, variant: str, casual: str = "none", ties: str = "none") -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(n_rows), str(n_users), str(n_models), variant, casual, ties],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e6:1e5,1e7:1e6", help="rows:users pairs")
    parser.add_argument("--variants", default="two-class,continuous")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--casual", default="none", choices=["none", "length"],
                        help="length: casual clicks that follow length, fitted with the length covariate")
    parser.add_argument("--ties", default="none", choices=["none", "model"],
                        help="model: about 20%% ties (Davidson nu = 0.6, casual t = 0.2) fitted in the likelihood")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = []
    for variant in args.variants.split(","):
        for spec in args.sizes.split(","):
            rows, users = (int(float(x)) for x in spec.split(":"))
            t = time.time()
            res = run_size(rows, users, args.models, variant, args.casual, args.ties)
            print(json.dumps(res), f"(wall {time.time() - t:.0f} s incl. simulation)", flush=True)
            results.append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
