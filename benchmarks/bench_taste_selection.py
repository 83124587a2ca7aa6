"""tastes="auto" (select_tastes): chosen C, held-out gains over C = 1 (± the paired SE) and CPU time.

    python benchmarks/bench_taste_selection.py [--quick] [--out FILE.json]

Logs: simulate_tastes (truth C = 2; seeds 1-3, 600 users, 8 models), simulate (truth C = 1; seeds 1-2),
and the real sets ../shared/data/countrypop.csv (q = 0.5 fixed: its positions were a coin) and
cemschoice.csv (ties in the likelihood, as fit(tastes="auto") reads it). max_tastes = 4, seed 0.
CPU seconds are process time (the machine is shared: wall time is not a measure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # PYTHONPATH may name another tree (before/after runs)
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


def logs(quick: bool):
    import pandas as pd

    import bayes_annot as ba
    from bayes_annot.data import prepare
    from bayes_annot.problem import build_problem
    from bayes_annot.tastes import problem_from, simulate_tastes

    seeds = (1,) if quick else (1, 2, 3)
    for s in seeds:
        yield f"simulate_tastes seed {s} (C=2)", problem_from(simulate_tastes(n_users=600, n_models=8, seed=s)), None
    for s in seeds[:2]:
        yield f"simulate seed {s} (C=1)", problem_from(ba.simulate(n_users=600, n_models=8, seed=s)), None
    for name, q, ties in (("countrypop", 0.5, False), ("cemschoice", None, True)):
        path = DATA / f"{name}.csv"
        if path.exists():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            yield name, build_problem(prepare(frame), use_p_a=False, ties=ties)[0], q


def one(name: str, problem, q, seed: int, max_tastes: int, extra: dict) -> dict:
    """select_tastes on one log: chosen and best C, held-out log-likelihood per C, SE of each C's
    paired difference to the best, gain over C = 1, CPU seconds."""
    from bayes_annot.tastes import select_tastes

    t0 = time.process_time()
    sel = select_tastes(problem, max_tastes=max_tastes, seed=seed, q_fixed=q, **extra)
    cpu = time.process_time() - t0
    t = sel.table.set_index("n_tastes")
    row = dict(log=name, seed=seed, chosen=sel.chosen, best=int(t.heldout_loglik.idxmax()), cpu_s=round(cpu, 1),
               heldout={int(c): round(float(v), 2) for c, v in t.heldout_loglik.items()},
               se_to_best={int(c): round(float(v), 2) for c, v in t.heldout_se.items()},
               gain_over_1={int(c): round(float(t.heldout_loglik[c] - t.heldout_loglik[1]), 2) for c in t.index})
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-tastes", type=int, default=4)
    ap.add_argument("--fold-starts", type=int, default=None, help="select_tastes(fold_starts=); default its own")
    ap.add_argument("--only", help="logs whose name contains this")
    ap.add_argument("--seeds", default="0", help="select_tastes seeds (folds and starts), comma-separated")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    extra = {} if args.fold_starts is None else {"fold_starts": args.fold_starts}
    rows = [one(name, problem, q, seed, args.max_tastes, extra)
            for name, problem, q in logs(args.quick) if not args.only or args.only in name
            for seed in (int(v) for v in args.seeds.split(","))]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
