"""Simulation-based calibration (SBC) of the PyMC model that ``method="nuts"`` samples.

Talts et al. (2018): draw the global parameters from their priors, simulate a log
from them with :func:`bayes_annot.simulate`, fit it with NUTS, and record the rank
of each true value among ``L`` thinned posterior draws. If the sampler and the
model agree (and the simulator is the model's own generative process), every rank
is uniform on ``0..L``. This is the principle of PyPI's ``simuk``, written here
because ``simuk`` needs ``arviz_base`` (the ArviZ 1.x stack), which Python 3.11 with
ArviZ 0.23 cannot install.

Priors drawn (``bayes_annot.Priors`` defaults): ``pi, q ~ Beta(2, 2)`` (two-class),
``m ~ N(0, 2)``, ``tau ~ HalfNormal(1.5)`` (continuous), centred strengths
``~ ZeroSumNormal(3)`` (iid Normal(0, 3) then centred: what NUTS samples). Each
simulated log has ``--users`` users with ``--labels`` labels each over ``--models``
models. Uniformity is tested per parameter with a chi-square test over 10 equal
rank bins and summarised by the largest deviation of the rank ECDF from the
uniform one; with many parameters a few p-values below 0.05 are expected
(one in twenty), so the page also reports the smallest p-value against the
Bonferroni threshold.

Usage::

    python benchmarks/bench_sbc.py --sims 100 --out docs/benchmarks_sbc.md
    python benchmarks/bench_sbc.py --sims 5 --variants two-class   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYTENSOR_FLAGS", f"base_compiledir={Path(__file__).resolve().parents[1] / '.pytensor_cache'}")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from scipy.special import expit  # noqa: E402

import bayes_annot as ba  # noqa: E402
from _common import machine, write_outputs  # noqa: E402


def prior_draw(variant: str, n_models: int, rng: np.random.Generator, priors: ba.Priors) -> dict:
    """One draw of the global parameters from the priors the NUTS model uses."""
    strengths = rng.normal(0.0, priors.strength_sigma, n_models)
    truth = {"q": rng.beta(priors.q_alpha, priors.q_beta), "strength": strengths - strengths.mean()}
    if variant == "two-class":
        truth["pi"] = rng.beta(priors.pi_alpha, priors.pi_beta)
    else:
        truth["m"] = rng.normal(priors.eta_m_mu, priors.eta_m_sigma)
        truth["tau"] = abs(rng.normal(0.0, priors.eta_tau))
    return truth


def simulate_from(truth: dict, variant: str, args, seed: int):
    """A log simulated from ``truth`` by :func:`bayes_annot.simulate` (the model's generative process)."""
    share = 1.0 - (truth["pi"] if variant == "two-class" else float(expit(truth["m"])))
    return ba.simulate(
        n_users=args.users, n_models=args.models, casual_share=share, q=truth["q"], strengths=truth["strength"],
        labels_per_user=args.labels, quality=variant, eta_tau=truth.get("tau", 1.5), seed=seed,
    )


def ranks_of(truth: dict, posterior, n_thin: int) -> dict:
    """Rank of each true global value among ``n_thin`` evenly thinned posterior draws (0..n_thin)."""
    out = {}
    for name, value in truth.items():
        draws = posterior[name].values.reshape(-1, *posterior[name].shape[2:])
        keep = np.linspace(0, draws.shape[0] - 1, n_thin).round().astype(int)
        draws = draws[keep]
        if name == "strength":
            draws = draws - draws.mean(axis=1, keepdims=True)
            for k, v in enumerate(np.atleast_1d(value)):
                out[f"strength[{k}]"] = int((draws[:, k] < v).sum())
        else:
            out[name] = int((draws < value).sum())
    return out


def uniformity(ranks: np.ndarray, n_thin: int, bins: int = 10) -> tuple[float, float]:
    """Chi-square p-value over ``bins`` equal rank bins, and the largest |ECDF - uniform| of the scaled ranks."""
    from scipy.stats import chisquare

    scaled = (ranks + 0.5) / (n_thin + 1)
    counts = np.bincount(np.minimum((scaled * bins).astype(int), bins - 1), minlength=bins)
    p_value = float(chisquare(counts).pvalue)
    grid = np.sort(scaled)
    ecdf = np.arange(1, len(grid) + 1) / len(grid)
    return p_value, float(np.max(np.abs(ecdf - grid)))


def run(variant: str, args) -> dict:
    rng = np.random.default_rng(args.seed)
    priors = ba.Priors()
    rows, diverging, started = [], 0, time.perf_counter()
    for i in range(args.sims):
        truth = prior_draw(variant, args.models, rng, priors)
        log = simulate_from(truth, variant, args, seed=args.seed * 100003 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ba.fit(log, model=variant, method="nuts", draws=args.draws, tune=args.tune, chains=2,
                            seed=i, progress=False, filter="prob:0.5")
        diverging += int(result.summary.get("divergences") or 0)
        rows.append(ranks_of(truth, result.idata.posterior, args.thin))
        if args.json:  # ranks so far, so that an interrupted run keeps its simulations
            import json

            Path(f"{args.json}.{variant}.partial").write_text(json.dumps(rows), encoding="utf-8")
        if args.verbose:
            print(f"{variant} {i + 1}/{args.sims}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    names = list(rows[0])
    table = {name: uniformity(np.array([r[name] for r in rows]), args.thin) for name in names}
    return {"variant": variant, "sims": args.sims, "table": table, "divergences": diverging,
            "seconds": time.perf_counter() - started, "ranks": rows}


def markdown(results: list[dict], args) -> str:
    lines = [
        "# Simulation-based calibration of the NUTS model",
        "",
        f"Generated {time.strftime('%Y-%m-%d')} by `benchmarks/bench_sbc.py --sims {args.sims}` on {machine()}.",
        "",
        f"Each simulation: global parameters drawn from the priors, a log of {args.users} users x {args.labels} labels "
        f"over {args.models} models simulated from them (`bayes_annot.simulate`), NUTS with 2 chains x {args.draws} "
        f"draws ({args.tune} tuning), and the rank of each true value among {args.thin} thinned draws. Uniform "
        "ranks = the sampler recovers the model's posterior. p: chi-square test over 10 rank bins; D: largest "
        "|ECDF - uniform| of the scaled ranks (for 100 simulations, D above ~0.136 is unusual at the 5% level).",
        "",
    ]
    for res in results:
        ps = [p for p, _ in res["table"].values()]
        threshold = 0.05 / len(ps)
        lines += [
            f"## {res['variant']} ({res['sims']} simulations, {res['seconds'] / 60:.1f} min, "
            f"{res['divergences']} divergent transitions in all)",
            "",
            "| parameter | chi-square p | D |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {p:.3f} | {d:.3f} |" for name, (p, d) in res["table"].items()]
        verdict = "no parameter" if min(ps) >= threshold else "some parameter"
        lines += ["", f"Smallest p = {min(ps):.3f} against the Bonferroni threshold 0.05 / {len(ps)} = "
                      f"{threshold:.4f}: {verdict} rejects uniformity.", ""]
    lines += [
        "Not yet covered: casual covariates (in the PyMC model since issue #14 item 1; `bench_sbc.py` does not "
        "draw them yet) and ties (item 2, not in the model yet).",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=100)
    parser.add_argument("--variants", default="two-class,continuous")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--labels", type=int, default=12)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--thin", type=int, default=99)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--out", default="docs/benchmarks_sbc.md")
    parser.add_argument("--json", default="benchmarks/results_sbc.json")
    args = parser.parse_args(argv)
    results = [run(v.strip(), args) for v in args.variants.split(",")]
    write_outputs(markdown(results, args), results, args.out, args.json)
    return results


if __name__ == "__main__":
    main()
