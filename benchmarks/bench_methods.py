"""Our MAP and NUTS engines next to EM and the baselines, and every method's downstream reward model (issue #6).

Complements ``benchmarks/bench_accuracy.py`` (EM and the baselines; its helpers
and scenarios are reused here). Two sections, written as markdown to
``docs/benchmarks_methods.md``:

1. **Quality estimates on the simulated scenarios** (truth known): AUC, ECE of
   P(attentive) and the realised FDR / power of ``fdr:0.1`` for
   ``bayes_annot.fit(log, method="map")`` (both behaviour models) at the full
   size, next to EM and the in-package baselines on the same logs; and for
   ``method="nuts"`` (two-class, ``draws=500, tune=500, chains=2``) on a
   reduced size, next to EM on the same reduced logs.
2. **Downstream reward-model accuracy**: ``downstream_experiment.simulate_features``
   logs; a Bradley–Terry reward model (``downstream_experiment.fit_reward_model``)
   is trained on the labels each method keeps (ours: ``fdr:0.1``; baselines:
   their own ``kept``) and on all labels weighted by each method's ``quality``,
   plus the ``all`` and ``oracle`` arms; scored by held-out pair accuracy
   (``downstream_experiment.pair_accuracy``).

Usage::

    PYTENSOR_FLAGS=base_compiledir=.pytensor_cache python benchmarks/bench_methods.py [--quick] [--no-nuts]
"""

from __future__ import annotations

import os
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("PYTENSOR_FLAGS", f"base_compiledir={Path(__file__).resolve().parents[1] / '.pytensor_cache'}")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bayes_annot as ba  # noqa: E402
from bayes_annot.baselines import NoisyBradleyTerry, agreement_rate, arena_outlier  # noqa: E402
from bayes_annot.metrics import auc, expected_calibration_error  # noqa: E402

from downstream_experiment import fit_reward_model, pair_accuracy, simulate_features  # noqa: E402
from bench_accuracy import (  # noqa: E402
    NOISY_BT_VARIANTS,
    SCENARIOS,
    find_crowdkit_python,
    fmt,
    machine,
    realised_fdr,
    run_crowdkit,
    write_outputs,
)

FDR_RULE = "fdr:0.1"
NUTS_SETTINGS = dict(draws=500, tune=500, chains=2)


def _quiet():
    for name in ("pymc", "pymc.sampling", "pymc.sampling.mcmc", "pymc.stats.convergence", "pytensor"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- section 1: quality estimates


def _our_fits(engines, log, nuts_settings, seed):
    """(label, users table, P(attentive), seconds) for each of our (method, model) engines."""
    out = []
    for method, model in engines:
        kwargs = dict(method=method, variant=model, filter=FDR_RULE, seed=seed)
        if method == "nuts":
            kwargs.update(nuts_settings, progress=False)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ba.fit(log, **kwargs)
        seconds = time.perf_counter() - t0
        users = result.users
        prob = users["p_eta_above_half"] if model == "continuous" else users["quality"]
        out.append((f"{method.upper()} {model}", users, prob.to_numpy(dtype=float), seconds))
    return out


def _noisy_bt(reg):
    return lambda log: NoisyBradleyTerry(regularization=reg).fit(log).users_


#: The in-package baselines: label -> log -> users table (``quality`` and ``kept``).
BASELINES = {
    "agreement rate": lambda log: agreement_rate(log).users,
    "Arena e-value rule": lambda log: arena_outlier(log).users,
    **{label: _noisy_bt(reg) for label, reg in NOISY_BT_VARIANTS},
}


def _baseline_fits(log, names=None):
    """(label, users table, seconds) for the in-package baselines (all, or those named)."""
    out = []
    for label, fit_users in BASELINES.items():
        if names is not None and label not in names:
            continue
        t0 = time.perf_counter()
        users = fit_users(log)
        out.append((label, users, time.perf_counter() - t0))
    return out


def evaluate_quality(name, seed, n_users, engines, baselines=None, nuts_settings=NUTS_SETTINGS, size="full"):
    """One simulated scenario log: a record per engine / baseline (``baselines``: names, None = all, () = none)."""
    settings = dict(SCENARIOS[name][1])
    factor = settings.pop("users_factor", 1)
    log = ba.simulate(n_users=n_users * factor, n_models=8, casual_share=0.3, seed=seed, **settings)
    truth_table = ba.truth_users(log)
    truth = truth_table["true_attentive"].to_numpy(dtype=bool)
    records = []

    def add(method, users, seconds, prob=None):
        aligned = users.set_index("user").loc[truth_table.index]
        kept = aligned["kept"].to_numpy(dtype=bool)
        rec = dict(size=size, scenario=name, seed=seed, method=method, seconds=seconds, n_users=len(truth),
                   auc=auc(aligned["quality"].to_numpy(dtype=float), truth), fdr=realised_fdr(kept, truth),
                   power=float(kept[truth].mean()) if truth.any() else float("nan"), kept_share=float(kept.mean()))
        if prob is not None:
            p = pd.Series(prob, index=users["user"].to_numpy()).loc[truth_table.index].to_numpy()
            rec["ece"] = expected_calibration_error(p, truth)
        records.append(rec)

    for label, users, prob, seconds in _our_fits(engines, log, nuts_settings, seed):
        add(label, users, seconds, prob)
    for label, users, seconds in _baseline_fits(log, baselines):
        add(label, users, seconds)
    return records


# --------------------------------------------------------------------------- section 2: downstream


def _row_values(users: pd.DataFrame, log: pd.DataFrame, column: str, fill=0.0) -> np.ndarray:
    """A users-table column spread over the log's rows (users missing from the table get ``fill``)."""
    series = users.set_index(users["user"].astype(str))[column]
    return series.reindex(log["user"].astype(str).to_numpy()).fillna(fill).to_numpy(dtype=float)


def downstream_once(casual_share, q, seed, *, n_users, engines, baselines=None, crowdkit_python=None,
                    nuts_settings=NUTS_SETTINGS, n_test=20000, l2=1.0):
    """One feature log; every method's kept / weighted arms; one record per arm."""
    sim = simulate_features(n_users=n_users, casual_share=casual_share, q=q, seed=seed)
    full = sim.log
    log = full[["user", "model_a", "model_b", "winner"]]
    choice_a = (full["winner"] == "model_a").to_numpy()
    casual = ~full["true_attentive"].to_numpy()
    # arm -> (method, kind, row weights, fit seconds)
    arms: list[tuple[str, str, np.ndarray, float]] = [
        ("all labels", "all", np.ones(len(log)), 0.0),
        ("oracle (attentive users only)", "oracle", (~casual).astype(float), 0.0),
    ]
    for label, users, _prob, seconds in _our_fits(engines, log, nuts_settings, seed):
        arms.append((label, "kept", _row_values(users, log, "kept"), seconds))
        arms.append((label, "weighted", _row_values(users, log, "quality"), seconds))
    for label, users, seconds in _baseline_fits(log, baselines):
        arms.append((label, "kept", _row_values(users, log, "kept"), seconds))
        arms.append((label, "weighted", _row_values(users, log, "quality"), seconds))
    if crowdkit_python:
        for label, res in run_crowdkit(crowdkit_python, log).items():
            if "error" in res:
                continue
            scores = pd.Series(res["scores"], dtype=float)
            scores.index = scores.index.astype(str)
            v = scores.reindex(log["user"].astype(str).to_numpy()).fillna(scores.mean()).to_numpy()
            arms.append((label, "weighted", v, res["seconds"]))
    x_test_a, x_test_b = sim.fresh_pairs(n_test, seed=10_000 + seed)
    records = []
    for method, kind, v, seconds in arms:
        theta = fit_reward_model(sim.x_a, sim.x_b, choice_a, v, l2=l2)
        total = float(v.sum())
        records.append(dict(
            q=q, casual_share=casual_share, seed=seed, method=method, arm=kind, seconds=seconds,
            accuracy=pair_accuracy(theta, x_test_a, x_test_b, sim.w), n_rows=len(log),
            label_share=float((v > 0).mean()), weight_share=total / len(log),
            casual_label_share=float(v @ casual / total) if total > 0 else np.nan,
        ))
    return records


# --------------------------------------------------------------------------- report


def quality_markdown(frame: pd.DataFrame, scenarios, size: str) -> list[str]:
    lines = []
    sub = frame[frame["size"] == size]
    methods = list(dict.fromkeys(sub["method"]))
    lines += ["| method | " + " | ".join(scenarios) + " |", "|" + "---|" * (len(scenarios) + 1)]
    for method in methods:
        cells = [fmt(sub[(sub.method == method) & (sub.scenario == s)]["auc"]) for s in scenarios]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for scen in scenarios:
        s = sub[sub.scenario == scen]
        if not len(s):
            continue
        n = int(s["n_users"].iloc[0])
        lines += [f"#### {scen} ({n} users): {SCENARIOS[scen][0]}", "",
                  "| method | AUC | ECE | FDR | power | kept users | seconds |", "|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(s["method"]):
            m = s[s.method == method]
            get = lambda col, d=3: fmt(m[col], d) if col in m and m[col].notna().any() else "—"  # noqa: E731
            lines.append(f"| {method} | {get('auc')} | {get('ece')} | {get('fdr')} | {get('power')} | "
                         f"{get('kept_share')} | {get('seconds', 2)} |")
        lines.append("")
    return lines


def agreement_lines(frame: pd.DataFrame, size: str, engine: str, model: str = "two-class") -> list[str]:
    """How far ``engine`` is from EM on the same logs: largest |difference| of the per-run metrics."""
    sub = frame[frame["size"] == size].set_index(["scenario", "seed", "method"])
    try:
        ours = sub.xs(f"{engine} {model}", level="method")
        em = sub.xs(f"EM {model}", level="method").reindex(ours.index)
    except KeyError:
        return []
    diffs = {col: float(np.nanmax(np.abs(ours[col] - em[col]))) for col in ("auc", "ece", "fdr", "kept_share")}
    return [f"{engine} {model} vs EM {model} on the same logs, largest absolute difference over all "
            f"{len(ours)} runs: AUC {diffs['auc']:.4f}, ECE {diffs['ece']:.4f}, realised FDR {diffs['fdr']:.4f}, "
            f"kept share {diffs['kept_share']:.4f}. Mean fit time: EM {em['seconds'].mean():.2f} s, "
            f"{engine} {ours['seconds'].mean():.2f} s.", ""]


def downstream_table(frame: pd.DataFrame) -> list[str]:
    keys = sorted(set(zip(frame["q"], frame["casual_share"])))
    header = "| method | labels used | " + " | ".join(f"casual {s:.0%}, q = {q:g}" for q, s in keys) + " |"
    lines = [header, "|" + "---|" * (2 + len(keys))]
    kind_label = {"all": "all, unweighted", "oracle": "attentive users'", "kept": "kept users'",
                  "weighted": "all, weighted by quality"}
    for method, kind in dict.fromkeys(zip(frame["method"], frame["arm"])):
        cells = []
        for q, s in keys:
            m = frame[(frame.method == method) & (frame.arm == kind) & (frame.q == q) & (frame.casual_share == s)]
            acc = fmt(100 * m["accuracy"], 2)
            if len(m) and kind != "oracle" and kind != "all":
                acc += f" ({m['label_share'].mean():.0%} / {m['casual_label_share'].mean():.0%})"
            cells.append(acc)
        lines.append(f"| {method} | {kind_label[kind]} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def gain_lines(frame: pd.DataFrame) -> list[str]:
    """Paired gain over `all labels` in points (mean ± sd over seeds) for each arm."""
    base = frame[frame.arm == "all"].set_index(["q", "casual_share", "seed"])["accuracy"]
    frame = frame.copy()
    frame["gain"] = frame["accuracy"].to_numpy() - base.reindex(
        pd.MultiIndex.from_frame(frame[["q", "casual_share", "seed"]])).to_numpy()
    keys = sorted(set(zip(frame["q"], frame["casual_share"])))
    lines = ["| method | labels used | " + " | ".join(f"casual {s:.0%}, q = {q:g}" for q, s in keys) + " |",
             "|" + "---|" * (2 + len(keys))]
    for method, kind in dict.fromkeys(zip(frame["method"], frame["arm"])):
        if kind == "all":
            continue
        cells = []
        for q, s in keys:
            m = frame[(frame.method == method) & (frame.arm == kind) & (frame.q == q) & (frame.casual_share == s)]
            vals = 100 * m["gain"].to_numpy()
            cells.append(f"{vals.mean():+.2f} ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else
                         (f"{vals[0]:+.2f}" if len(vals) else "—"))
        lines.append(f"| {method} | {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def run(*, n_users=1000, seeds=(0, 1, 2), nuts_users=300, nuts_seeds=(0, 1, 2), scenarios=None,
        engines=("em", "map", "nuts"), baselines=None, ds_users=200, ds_shares=(0.3, 0.5), ds_qs=(0.5,),
        ds_seeds=(0, 1, 2, 3, 4), crowdkit_python=None, n_test=20000, progress=print) -> tuple[str, dict]:
    """Both sections; returns (markdown, raw records).

    ``engines``: which of our engines run ("em" is always included; "nuts" adds the reduced-size section and
    the NUTS downstream arms); ``baselines``: names from :data:`BASELINES` (None = all).
    """
    _quiet()
    engines = ("em", *[e for e in engines if e != "em"])
    nuts = ds_nuts = "nuts" in engines
    start = time.perf_counter()
    scenarios = list(scenarios or SCENARIOS)
    timings = {}
    quality: list[dict] = []
    t_sec = time.perf_counter()
    full_engines = [("em", "two-class"), ("em", "continuous")]
    if "map" in engines:
        full_engines += [("map", "two-class"), ("map", "continuous")]
    for name in scenarios:
        for seed in seeds:
            t0 = time.perf_counter()
            quality += evaluate_quality(name, seed, n_users, full_engines, baselines=baselines, size="full")
            progress(f"  full {name} seed {seed}: {time.perf_counter() - t0:.1f} s")
    timings["quality, full size (EM, MAP, baselines)"] = time.perf_counter() - t_sec
    if nuts:
        t_sec = time.perf_counter()
        for name in scenarios:
            for seed in nuts_seeds:
                t0 = time.perf_counter()
                reduced = [(e, "two-class") for e in engines]
                quality += evaluate_quality(name, seed, nuts_users, reduced, baselines=(), size="reduced")
                progress(f"  reduced {name} seed {seed}: {time.perf_counter() - t0:.1f} s")
        timings["quality, reduced size (EM, MAP, NUTS)"] = time.perf_counter() - t_sec
    t_sec = time.perf_counter()
    ds_engines = [(e, "two-class") for e in engines]
    downstream: list[dict] = []
    for q in ds_qs:
        for share in ds_shares:
            for seed in ds_seeds:
                t0 = time.perf_counter()
                downstream += downstream_once(share, q, seed, n_users=ds_users, engines=ds_engines, baselines=baselines,
                                              crowdkit_python=crowdkit_python, n_test=n_test)
                progress(f"  downstream casual {share} q {q} seed {seed}: {time.perf_counter() - t0:.1f} s")
    timings["downstream"] = time.perf_counter() - t_sec
    elapsed = time.perf_counter() - start
    qf, df = pd.DataFrame(quality), pd.DataFrame(downstream)
    md = markdown(qf, df, scenarios=scenarios, n_users=n_users, seeds=seeds, nuts=nuts, nuts_users=nuts_users,
                  nuts_seeds=nuts_seeds, ds_users=ds_users, ds_seeds=ds_seeds, ds_nuts=ds_nuts,
                  crowdkit_python=crowdkit_python, elapsed=elapsed, timings=timings, n_test=n_test)
    return md, {"quality": quality, "downstream": downstream, "timings": timings, "elapsed": elapsed}


def markdown(qf, df, *, scenarios, n_users, seeds, nuts, nuts_users, nuts_seeds, ds_users, ds_seeds, ds_nuts,
             crowdkit_python, elapsed, timings, n_test=20000) -> str:
    nuts_desc = ", ".join(f"{k}={v}" for k, v in NUTS_SETTINGS.items())
    lines = [
        "# Accuracy benchmarks: MAP, NUTS and downstream reward models",
        "",
        f"Generated {dt.date.today().isoformat()} by `benchmarks/bench_methods.py` on {machine()}, "
        f"with other jobs loading the machine; total run time {elapsed:.0f} s ("
        + "; ".join(f"{k}: {v:.0f} s" for k, v in timings.items()) + "). "
        "Companion of [the EM-vs-baselines benchmarks](benchmarks_accuracy.md) (issue #6), whose scenarios and "
        "metric definitions are reused.",
        "",
        "## Quality estimates: our three engines",
        "",
        "AUC: quality score vs `true_attentive` (adversarial and casual users count as not attentive). "
        "ECE: expected calibration error (10 bins) of our P(attentive) (two-class: `quality`; continuous: "
        "P(eta ≥ 0.5)). FDR: realised share of not-attentive users among those kept — ours under `fdr:0.1` "
        "(target 0.10), the baselines under their own keep rule (which controls nothing). Power: share of "
        "attentive users kept. Mean ± sd over seeds; seconds are wall time of one fit.",
        "",
        f"### Full size: EM and MAP ({n_users} users per scenario, 3x for arena-like; seeds "
        f"{', '.join(map(str, seeds))})",
        "",
        "MAP = `bayes_annot.fit(log, method=\"map\")` (PyMC `find_MAP`). The baselines are fitted on the same logs; "
        "crowd-kit's rows are in [benchmarks_accuracy.md](benchmarks_accuracy.md).",
        "",
    ]
    lines += agreement_lines(qf, "full", "MAP") + agreement_lines(qf, "full", "MAP", "continuous")
    lines += ["AUC by scenario:", ""]
    lines += quality_markdown(qf, scenarios, "full")
    if nuts:
        lines += [
            f"### Reduced size: NUTS ({nuts_users} users per scenario, 3x for arena-like; seeds "
            f"{', '.join(map(str, nuts_seeds))})",
            "",
            f"NUTS is expensive, so it runs on a **reduced size**: `method=\"nuts\"`, {nuts_desc} (PyMC sampler), "
            "two-class model only (the continuous model samples about 10x slower per label, see "
            "[the NUTS timings](benchmarks_nuts.md)). EM and MAP are refitted on the same reduced logs for a like-"
            "for-like comparison; quality is the posterior mean of P(attentive), the `fdr:0.1` rule uses it as for "
            "EM. Convergence diagnostics are not checked per fit here.",
            "",
        ]
        lines += agreement_lines(qf, "reduced", "NUTS") + agreement_lines(qf, "reduced", "MAP")
        lines += ["AUC by scenario:", ""]
        lines += quality_markdown(qf, scenarios, "reduced")
    shares = sorted(df["casual_share"].unique())
    ck = ("crowd-kit `NoisyBradleyTerry` (skill) and `MACE` (P(not spamming)) weight the labels too; they have no "
          "keep rule of their own, so no kept arm." if crowdkit_python else
          "crowd-kit rows skipped: no interpreter with `crowd-kit` found.")
    lines += [
        "## Downstream: reward-model accuracy per method",
        "",
        f"`benchmarks/downstream_experiment.py` (`simulate_features`) logs: {ds_users} users with 5-40 labels each, 8 models, "
        f"8 features, casual users clicking `model_a` with probability q; casual shares "
        f"{', '.join(f'{s:.0%}' for s in shares)}; seeds {', '.join(map(str, ds_seeds))}. Each method sees only "
        "`user, model_a, model_b, winner`. A Bradley–Terry reward model (logistic regression on x_a − x_b, "
        "L2 = 1) is trained on (a) the labels of the users the method keeps — ours under `fdr:0.1`, the "
        "baselines under their own rule (agreement rate ≥ 0.5; not flagged by the Arena rule; NoisyBT skill ≥ 0.5) "
        "— and (b) every label weighted by the method's `quality` (ours: P(attentive); agreement rate: "
        "posterior mean agreement; Arena: 1 / (1 + e-value), at most 0.5; NoisyBT: skill). `all labels` and "
        "`oracle` are the unfiltered and the truth-filtered references. Accuracy: share of "
        f"{n_test:,} fresh pairs ordered as the true utility orders them, in %, mean ± sd over seeds; in brackets the share of labels "
        "used (non-zero weight) and the weighted share of training labels that come from casual users.",
        "",
        "Our engines (two-class): " + ", ".join(sorted({m.split()[0] for m in df["method"]} & {"EM", "MAP", "NUTS"},
                                                       key=["EM", "MAP", "NUTS"].index))
        + (f"; NUTS with {nuts_desc}." if ds_nuts else "."),
        ck,
        "",
    ]
    lines += downstream_table(df)
    lines += ["Paired gain over `all labels` (accuracy points, mean ± sd over seeds, same simulated data):", ""]
    lines += gain_lines(df)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_methods.md"))
    parser.add_argument("--json", default=None, help="also write the raw records here")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nuts-users", type=int, default=300)
    parser.add_argument("--nuts-seeds", type=int, default=3)
    parser.add_argument("--no-nuts", action="store_true")
    parser.add_argument("--ds-users", type=int, default=200)
    parser.add_argument("--ds-seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, no NUTS")
    parser.add_argument("--crowdkit-python", default=None)
    parser.add_argument("--no-crowdkit", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.seeds, args.ds_users, args.ds_seeds, args.no_nuts = 200, 2, 60, 3, True
    python = None if args.no_crowdkit else find_crowdkit_python(args.crowdkit_python)
    engines = ("em", "map") if args.no_nuts else ("em", "map", "nuts")
    md, raw = run(n_users=args.users, seeds=tuple(range(args.seeds)), nuts_users=args.nuts_users,
                  nuts_seeds=tuple(range(args.nuts_seeds)), engines=engines, ds_users=args.ds_users,
                  ds_seeds=tuple(range(args.ds_seeds)), crowdkit_python=python)
    write_outputs(md, raw, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
