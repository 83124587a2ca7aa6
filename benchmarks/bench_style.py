"""EM per iteration with the attentive style term (issue #14 item 1, ``style_covariates``) against without.

One simulated log (``simulate(length_bias=0.85, style_bias=0.8)``, texts in ``response_a`` / ``response_b``,
20 models, 30% casual users), fitted in one process by the block engine both ways on the same block: the
length covariate on the casual side only (today's default), and with the style term on the attentive side
too. With the term the attentive table is per (pair, casual cell) (the joint counts the casual side already
uses: no new pass over the labels) and the strengths' M-step is a joint Newton of ``(s, delta)`` over
``P x 13`` cells. Per iteration: median time between EM iterations; floor: two ``np.bincount`` passes
over the rows in the likelihood. ``--ties`` adds ties in the likelihood (``tie_nu=0.6, casual_tie_rate=0.2``).

Usage: python benchmarks/bench_style.py [--rows 1e6] [--users 1e5] [--variant two-class] [--ties] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def per_iteration(run) -> tuple[float, int]:
    stamps = []
    result = run(lambda it, value: stamps.append(time.perf_counter()))
    return float(np.median(np.diff(stamps))), int(result.n_iter)


def main(argv=None) -> None:
    import bayes_annot as ba
    from bayes_annot.block_em import LocalRunner, run_em
    from bayes_annot.casual import prepare_casual
    from bayes_annot.data import prepare
    from bayes_annot.local_em import problem_block
    from bayes_annot.problem import build_problem
    from bayes_annot.spec import BehaviourSpec
    from bayes_annot.style import style_design

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e6)
    parser.add_argument("--users", type=float, default=1e5)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--variant", default="two-class", choices=["two-class", "continuous"])
    parser.add_argument("--ties", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    n_rows, n_users = int(args.rows), int(args.users)
    mean = n_rows / n_users
    t0 = time.perf_counter()
    log = ba.simulate(n_users=n_users, n_models=args.models, casual_share=0.3, labels_per_user=(1, int(2 * mean - 1)),
                      length_bias=0.85, style_bias=0.8, seed=0,
                      **(dict(tie_nu=0.6, casual_tie_rate=0.2) if args.ties else {}))
    log = log[["user", "model_a", "model_b", "winner", "response_a", "response_b"]]
    t_sim = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(log)
    casual = prepare_casual(prepared, "auto")
    style = style_design("auto", casual, prepared.casual_x[prepared.usable])
    problem, _ = build_problem(prepared, casual=casual, ties=args.ties, style=True)
    plain_problem, _ = build_problem(prepared, casual=casual, ties=args.ties)
    blocks = {"casual only": problem_block(prepared, plain_problem, n_casual=casual.n_cells),
              "casual + style": problem_block(prepared, problem, n_casual=casual.n_cells)}
    specs = {"casual only": BehaviourSpec(args.variant, casual=casual),
             "casual + style": BehaviourSpec(args.variant, casual=casual, style=style)}
    n_like = problem.n_labels + problem.n_ties
    user = np.concatenate([problem.user, problem.tie_user]) if args.ties else problem.user
    pair = np.concatenate([problem.model_a * args.models + problem.model_b,
                           problem.tie_model_a * args.models + problem.tie_model_b]) if args.ties else \
        problem.model_a * args.models + problem.model_b
    weights = np.random.default_rng(0).random(n_like)
    floors = []
    for _ in range(5):
        t = time.perf_counter()
        np.bincount(user, weights=weights, minlength=prepared.n_users)
        np.bincount(pair, weights=weights, minlength=args.models**2)
        floors.append(time.perf_counter() - t)
    floor = float(np.median(floors))
    print(f"# {len(log)} rows ({n_like} in the likelihood, {problem.n_ties} ties), {n_users} users, {args.models} models, "
          f"{args.variant}; simulate {t_sim:.1f} s; load {os.getloadavg()[0]:.1f}; floor {floor:.4f} s")
    print("| run | fit | iterations | per iteration (s) | floor (s) | ratio | delta |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for repeat in range(args.repeats):
        for name in ("casual only", "casual + style"):
            def run(callback, name=name):
                return run_em(LocalRunner([blocks[name]], prepared.n_users), problem.n_models, specs[name],
                              callback=callback, accelerate=args.variant == "continuous")
            start = time.perf_counter()
            stamps: list = []
            em = run(lambda it, value: stamps.append(time.perf_counter()))
            blocks[name].release_pass_caches()
            step = float(np.median(np.diff(stamps)))
            delta = "" if em.style_delta is None else f"{float(em.style_delta[0]):.3f}"
            print(f"| {repeat + 1} | {name} | {em.n_iter} | {step:.4f} | {floor:.4f} | {step / floor:.2f} | {delta} |"
                  f"  <!-- {time.perf_counter() - start:.1f} s, load {os.getloadavg()[0]:.1f} -->", flush=True)


if __name__ == "__main__":
    main()
