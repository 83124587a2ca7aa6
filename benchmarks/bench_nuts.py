"""NUTS wall time: PyMC's sampler vs nutpie, both behaviour models, 10k and 100k labels.

For each (labels, variant, sampler) the script builds the PyMC model of
:mod:`bayes_annot.pymc_model` on a simulated log (8 models, 20 labels per user,
30% casual users) and samples 2 chains x 1,000 draws after 1,000 tuning steps:

* ``pymc``: ``pm.sample`` (C backend, chains in parallel processes); the
  compile/set-up time is the total wall time minus PyMC's own
  ``sampling_time``;
* ``nutpie``: ``nutpie.compile_pymc_model`` (numba backend) timed separately
  from ``nutpie.sample``.

"total" includes compilation. The PyTensor C cache (``PYTENSOR_FLAGS``
``base_compiledir``) is warm after the first run of a graph; numba compiles
anew in every process. Output: a markdown table on stdout and in ``--out``.

Usage::

    python benchmarks/bench_nuts.py --out docs/benchmarks_nuts.md
    python benchmarks/bench_nuts.py --labels 10000 --samplers pymc --variants two-class
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYTENSOR_FLAGS", f"base_compiledir={Path(__file__).resolve().parents[1] / '.pytensor_cache'}")

import numpy as np  # noqa: E402

import bayes_annot as ba  # noqa: E402
from bayes_annot.data import prepare  # noqa: E402
from bayes_annot.problem import build_problem  # noqa: E402
from bayes_annot.pymc_model import build_model, nuts_diagnostics  # noqa: E402
from bayes_annot.spec import BehaviourSpec  # noqa: E402


def run_one(n_labels, variant, sampler, draws, tune, chains, seed=0):
    import pymc as pm

    per_user = 20
    log = ba.simulate(
        n_users=n_labels // per_user, n_models=8, casual_share=0.3, labels_per_user=per_user,
        variant=variant, seed=seed,
    )
    problem, _ = build_problem(prepare(log))
    model = build_model(problem, BehaviourSpec(variant), strength_prior="zerosum")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler == "pymc":
            with model:
                idata = pm.sample(
                    draws=draws, tune=tune, chains=chains, cores=chains, random_seed=seed, progressbar=False,
                    target_accept=0.9, compute_convergence_checks=False,
                )
            total = time.perf_counter() - start
            sampling = float(idata.sample_stats.attrs.get("sampling_time", np.nan))
            compile_s = total - sampling
        else:
            import nutpie

            compiled = nutpie.compile_pymc_model(model)
            compile_s = time.perf_counter() - start
            t0 = time.perf_counter()
            idata = nutpie.sample(
                compiled, draws=draws, tune=tune, chains=chains, cores=chains, seed=seed, progress_bar=False,
                target_accept=0.9,
            )
            sampling = time.perf_counter() - t0
            total = time.perf_counter() - start
    names = ["strength", "q"] + (["pi"] if variant == "two-class" else ["m", "tau", "eta"])
    diag = nuts_diagnostics(idata, names)
    return dict(
        labels=problem.n_labels, users=problem.n_users, variant=variant, sampler=sampler,
        compile=compile_s, sampling=sampling, total=total, **diag,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--variants", nargs="+", default=["two-class", "continuous"])
    parser.add_argument("--samplers", nargs="+", default=["pymc", "nutpie"])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--out", default="docs/benchmarks_nuts.md")
    args = parser.parse_args(argv)
    header = (
        "| labels | users | model | sampler | compile (s) | sampling (s) | total (s) | R-hat max | ESS bulk min | divergences |\n"
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    print(header, flush=True)
    for n in args.labels:
        for variant in args.variants:
            for sampler in args.samplers:
                try:
                    r = run_one(n, variant, sampler, args.draws, args.tune, args.chains)
                except ImportError as exc:
                    print(f"skipping {sampler}: {exc}", file=sys.stderr)
                    continue
                line = (
                    f"| {r['labels']:,} | {r['users']:,} | {variant} | {sampler} | {r['compile']:.1f} | "
                    f"{r['sampling']:.1f} | {r['total']:.1f} | {r['rhat_max']:.3f} | {r['ess_bulk_min']:.0f} | "
                    f"{r['divergences']} |"
                )
                rows.append(line)
                print(line, flush=True)
    import pymc

    versions = f"pymc {pymc.__version__}"
    try:
        import nutpie

        versions += f", nutpie {nutpie.__version__}"
    except ImportError:
        pass
    text = (
        "## NUTS wall time (PyMC sampler vs nutpie)\n\n"
        f"{args.chains} chains x {args.draws} draws after {args.tune} tuning steps, target_accept 0.9; simulated logs "
        f"with 8 models, 20 labels per user, 30% casual users. Machine: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {versions}. `compile` for PyMC = total - PyMC's sampling_time "
        "(C cache warm); for nutpie = `nutpie.compile_pymc_model` (numba, compiled in every process).\n\n"
        + header + "\n" + "\n".join(rows) + "\n"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
