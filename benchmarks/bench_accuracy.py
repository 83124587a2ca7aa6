"""Accuracy of user-quality estimates: our EM against the baselines (issue #6).

Two sections, written as markdown to ``docs/benchmarks_accuracy.md``:

1. **Simulated scenarios with truth** (several seeds, mean ± sd): AUC of each
   method's quality score against ``true_attentive``; for our EM also the
   expected calibration error of P(attentive) and the realised false-discovery
   rate of ``fdr:0.1``; for the baselines the realised FDR of their own
   keep rule (their scores are not probabilities, so no calibration error).
2. **Real data** (cemschoice, topmodel2007, germanparties2009): held-out
   predictive log-likelihood — hide 20% of each user's labels (seeded), fit on
   the rest, score the hidden labels — for every method that predicts labels.

crowd-kit (``NoisyBradleyTerry``, ``MACE``) runs in a separate interpreter when
one with ``crowd-kit`` installed is given (``--crowdkit-python`` or the
``CROWDKIT_PYTHON`` environment variable; crowd-kit 1.4 needs pandas < 3 for
MACE); otherwise those rows are skipped with a note.

Usage::

    python benchmarks/bench_accuracy.py [--seeds 3] [--quick] [--out docs/benchmarks_accuracy.md]
"""

from __future__ import annotations

import os

# Small vector operations (L-BFGS) only lose from BLAS threading; fix it before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import find_crowdkit_python, machine, write_outputs  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import expit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bayes_annot as ba  # noqa: E402
from bayes_annot.baselines import BradleyTerry, NoisyBradleyTerry, agreement_rate, arena_outlier  # noqa: E402
from bayes_annot.datasets import REAL_DATASETS, load_real  # noqa: E402
from bayes_annot.metrics import auc, expected_calibration_error  # noqa: E402

#: Simulated scenarios: name -> (description, simulate() settings).
SCENARIOS: dict[str, tuple[str, dict]] = {
    "standard": ("8 models, 30% casual fair-coin users, 5-40 labels per user", dict(labels_per_user=(5, 40))),
    "arena-like": (
        "heavy-tailed labels per user (Zipf(2): ~61% of users label once), 3x the users",
        dict(labels_per_user="arena", users_factor=3),
    ),
    "position-bias": ("casual users pick the left response 80% of the time (q = 0.8)", dict(q=0.8)),
    "adversarial": ("5% of users pick the weaker model (counted as not attentive)", dict(adversarial_share=0.05)),
    "continuous": (
        "continuous quality: eta_u = sigmoid(N(logit 0.7, 1.5^2)), truth = eta_u >= 0.5",
        dict(variant="continuous"),
    ),
    "known-mu": (
        "the paper's setting: two models, mu = 0.75 known (p_a column), 40 labels per user",
        dict(known_mu=0.75, labels_per_user=40),
    ),
}

#: Our correct Noisy Bradley–Terry at its default ridge and at a strong one (per-user skill and
#: bias are estimated from a handful of labels each, so the ridge matters for prediction).
NOISY_BT_VARIANTS = (("Noisy BT (ours, ridge 0.01)", 0.01), ("Noisy BT (ours, ridge 1)", 1.0))

CROWDKIT_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, pandas as pd
from crowdkit.aggregation import MACE, NoisyBradleyTerry
log = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
out = {}
pairwise = pd.DataFrame({"worker": log.user, "left": log.model_a, "right": log.model_b,
                         "label": np.where(log.winner == "model_a", log.model_a, log.model_b)})
t0 = time.perf_counter()
try:
    est = NoisyBradleyTerry(random_state=0).fit(pairwise)
    out["crowd-kit NoisyBT"] = {"scores": est.skills_.astype(float).to_dict(), "seconds": time.perf_counter() - t0}
except Exception as exc:  # report, do not stop
    out["crowd-kit NoisyBT"] = {"error": f"{type(exc).__name__}: {exc}"}
# MACE is a classification model: task = the unordered model pair, label = the winning model.
pair = np.where(log.model_a < log.model_b, log.model_a + "|" + log.model_b, log.model_b + "|" + log.model_a)
classes = pd.DataFrame({"task": pair, "worker": log.user.values, "label": pairwise.label.values})
t0 = time.perf_counter()
try:
    mace = MACE(n_restarts=1, random_state=0).fit(classes)
    spam = np.asarray(mace.spamming_, dtype=float)
    competence = spam[:, 1] / spam.sum(axis=1)
    workers = pd.factorize(classes["worker"])[1]
    out["crowd-kit MACE"] = {"scores": dict(zip(map(str, workers), map(float, competence))),
                             "seconds": time.perf_counter() - t0}
except Exception as exc:
    out["crowd-kit MACE"] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- helpers


def run_crowdkit(python: str, log: pd.DataFrame) -> dict:
    usable = log[log["winner"].astype(str).isin(["model_a", "model_b"]) & (log["model_a"].astype(str) != log["model_b"].astype(str))]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ck-"))
    try:
        path = tmp / "log.csv"
        usable[["user", "model_a", "model_b", "winner"]].astype(str).to_csv(path, index=False)
        proc = subprocess.run([python, "-c", CROWDKIT_CHILD, str(path)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            return {"crowd-kit": {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def realised_fdr(kept: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(~truth[kept])) if kept.any() else float("nan")


def fmt(values, digits: int = 3) -> str:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


# --------------------------------------------------------------------------- simulated scenarios


def evaluate_scenario(name: str, settings: dict, seed: int, n_users: int, crowdkit_python: str | None) -> list[dict]:
    settings = dict(settings)
    factor = settings.pop("users_factor", 1)
    log = ba.simulate(n_users=n_users * factor, n_models=8, casual_share=0.3, seed=seed, **settings)
    truth_table = ba.truth_users(log)
    truth = truth_table["true_attentive"].to_numpy(dtype=bool)
    records: list[dict] = []

    def add(method, users, seconds, prob=None, kept=None, extra=None):
        aligned = users.set_index("user").loc[truth_table.index]
        record = dict(scenario=name, seed=seed, method=method, seconds=seconds,
                      auc=auc(aligned["quality"].to_numpy(), truth))
        if prob is not None:
            p = pd.Series(prob, index=users["user"]).loc[truth_table.index].to_numpy()
            record["ece"] = expected_calibration_error(p, truth)
        if kept is None:
            kept = aligned["kept"].to_numpy(dtype=bool)
        else:
            kept = pd.Series(kept, index=users["user"]).loc[truth_table.index].to_numpy(dtype=bool)
        record["fdr"] = realised_fdr(kept, truth)
        record["kept_share"] = float(kept.mean())
        record["power"] = float(kept[truth].mean()) if truth.any() else float("nan")
        record.update(extra or {})
        records.append(record)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = [("EM two-class", dict(variant="two-class")), ("EM continuous", dict(variant="continuous"))]
        if "known_mu" in settings:
            variants.append(("EM two-class, strengths learned", dict(variant="two-class", use_p_a=False)))
        for label, kwargs in variants:
            t0 = time.perf_counter()
            result = ba.fit(log, filter="fdr:0.1", **kwargs)
            seconds = time.perf_counter() - t0
            users = result.users
            prob = users["p_eta_above_half"] if kwargs["variant"] == "continuous" else users["quality"]
            add(label, users, seconds, prob=prob.to_numpy())

    t0 = time.perf_counter()
    out = agreement_rate(log)
    add("agreement rate", out.users, time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = arena_outlier(log)
    seconds = time.perf_counter() - t0
    aligned = out.users.set_index("user").loc[truth_table.index]
    add("Arena e-value rule", out.users, seconds,
        extra={"flagged_casual": float(aligned["flagged"].to_numpy()[~truth].mean())})
    for label, reg in NOISY_BT_VARIANTS:
        t0 = time.perf_counter()
        est = NoisyBradleyTerry(regularization=reg).fit(log)
        add(label, est.users_, time.perf_counter() - t0)

    if crowdkit_python:
        results = run_crowdkit(crowdkit_python, log)
        for method, res in results.items():
            if "error" in res:
                records.append(dict(scenario=name, seed=seed, method=method, error=res["error"]))
                continue
            scores = pd.Series(res["scores"], dtype=float)
            scores.index = scores.index.astype(str)
            score = scores.reindex(truth_table.index).fillna(scores.mean()).to_numpy()
            records.append(dict(scenario=name, seed=seed, method=method, seconds=res["seconds"], auc=auc(score, truth),
                                constant=bool(np.ptp(score) < 1e-9)))
    return records


# --------------------------------------------------------------------------- real data: held-out likelihood


def split_per_user(frame: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: ``round(share * n)`` of each user's usable labels
    (at least 1 when the user has 2 or more, never all of them)."""
    prepared = ba.prepare(frame)
    rng = np.random.default_rng(seed)
    usable_idx = np.flatnonzero(prepared.usable)
    user = prepared.user[usable_idx]
    order = np.lexsort((rng.random(len(usable_idx)), user))  # random order within each user
    user_sorted = user[order]
    counts = np.bincount(user, minlength=prepared.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[user_sorted]
    n_hide = np.where(counts >= 2, np.clip(np.round(share * counts), 1, counts - 1), 0)
    hidden = np.zeros(len(frame), dtype=bool)
    hidden[usable_idx[order[rank < n_hide[user_sorted]]]] = True
    return hidden


def predict_behaviour(result, test: pd.DataFrame, variant: str) -> np.ndarray:
    """Held-out log-probability under a fitted behaviour model (global parameters at their
    estimates, each user's type / eta from the training labels):
    two-class P(y) = p_u P_att(y) + (1 - p_u) P_cas(y); continuous the same with eta_u."""
    strengths = result.models.set_index("model")["strength"]
    users = result.users.set_index("user")
    q = result.summary["parameters"]["q"]
    prepared = ba.prepare(test)
    usable = prepared.usable
    s = strengths.reindex(prepared.model_labels).fillna(0.0).to_numpy()
    weight = users["quality"].reindex(prepared.user_labels).fillna(users["quality"].mean()).to_numpy()
    y = prepared.choice_a[usable].astype(float)
    d = s[prepared.model_a[usable]] - s[prepared.model_b[usable]]
    p_att = expit((2 * y - 1) * d)
    p_cas = np.where(y == 1, q, 1 - q)
    w = weight[prepared.user[usable]]
    out = np.full(len(test), np.nan)
    out[usable] = np.log(w * p_att + (1 - w) * p_cas)
    return out


def heldout_section(splits: int, share: float = 0.2, datasets=REAL_DATASETS) -> list[dict]:
    records = []
    for name in datasets:
        frame = load_real(name)
        prepared = ba.prepare(frame)
        user_codes = prepared.user
        for split in range(splits):
            hidden = split_per_user(frame, share, seed=1000 + split)
            train, test = frame[~hidden].reset_index(drop=True), frame[hidden].reset_index(drop=True)
            test_user = user_codes[hidden]
            methods = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                two = ba.fit(train, variant="two-class")
                methods["EM two-class"] = (predict_behaviour(two, test, "two-class"), time.perf_counter() - t0)
                t0 = time.perf_counter()
                cont = ba.fit(train, variant="continuous")
                methods["EM continuous"] = (predict_behaviour(cont, test, "continuous"), time.perf_counter() - t0)
            t0 = time.perf_counter()
            bt = BradleyTerry().fit(train)
            methods["plain Bradley–Terry"] = (bt.predict_logproba(test), time.perf_counter() - t0)
            for label, reg in NOISY_BT_VARIANTS:
                t0 = time.perf_counter()
                nbt = NoisyBradleyTerry(regularization=reg).fit(train)
                methods[label] = (nbt.predict_logproba(test), time.perf_counter() - t0)
            for method, (logp, seconds) in methods.items():
                ok = np.isfinite(logp)
                per_user = np.bincount(test_user[ok], weights=logp[ok], minlength=prepared.n_users)
                has = np.bincount(test_user[ok], minlength=prepared.n_users) > 0
                records.append(dict(
                    dataset=name, split=split, method=method, seconds=seconds,
                    per_label=float(logp[ok].mean()), per_user=float(per_user[has].mean()),
                    n_test=int(ok.sum()), n_users=int(has.sum()),
                    extra=dict(pi=two.summary["parameters"].get("pi"), q=two.summary["parameters"].get("q"))
                    if method == "EM two-class" else {},
                ))
    return records


# --------------------------------------------------------------------------- report


def simulated_markdown(records: list[dict], n_users: int, seeds: list[int], crowdkit_note: str) -> str:
    frame = pd.DataFrame(records)
    lines = [
        "## Simulated scenarios (truth known)",
        "",
        f"{n_users} users per scenario (3x for arena-like), 8 models, 30% casual users unless stated; "
        f"seeds {', '.join(map(str, seeds))}; mean ± sd over seeds. "
        "AUC: quality score vs `true_attentive` (adversarial and casual users count as not attentive). "
        "ECE: expected calibration error (10 bins) of our P(attentive) "
        "(two-class: quality; continuous: P(eta >= 0.5)) — only ours: the baselines' scores are rankings, "
        "not probabilities. FDR: realised share of not-attentive users among those kept — ours under "
        "`fdr:0.1` (target 0.10), the baselines under their own keep rule (agreement rate ≥ 0.5; not "
        "flagged by the Arena rule; NoisyBT skill ≥ 0.5), which controls nothing. Power: share of attentive users kept.",
        "",
        crowdkit_note,
        "",
    ]
    methods = list(dict.fromkeys(frame["method"]))
    # Summary AUC table
    lines += ["### AUC of the quality score (mean ± sd over seeds)", ""]
    header = "| method | " + " | ".join(SCENARIOS) + " |"
    lines += [header, "|" + "---|" * (len(SCENARIOS) + 1)]
    for method in methods:
        cells = []
        for scen in SCENARIOS:
            sub = frame[(frame.method == method) & (frame.scenario == scen)]
            if len(sub) == 0:
                cells.append("")
            elif "auc" in sub and sub["auc"].notna().any():
                cells.append(fmt(sub["auc"]))
            else:
                cells.append("error")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    if "constant" in frame:
        for method in dict.fromkeys(frame.loc[frame["constant"].fillna(False).astype(bool), "method"]):
            m = frame[frame.method == method]
            n_const = int(m["constant"].fillna(False).astype(bool).sum())
            lines += [f"{method} gave every user the same score in {n_const} of {len(m)} runs (AUC 0.5 by "
                      "construction): its fit collapsed to one competence for all workers.", ""]
    best = []
    for scen in SCENARIOS:
        sub = frame[frame.scenario == scen].groupby("method")["auc"].mean().dropna()
        if len(sub):
            ours = sub.get("EM two-class", np.nan)
            others = sub.drop([m for m in sub.index if m.startswith("EM ")], errors="ignore")
            if len(others):
                best.append(f"{scen}: EM two-class {ours:.3f} vs best baseline {others.idxmax()} {others.max():.3f}")
    lines += ["Our default (EM two-class) against the best baseline, mean AUC: " + "; ".join(best) + ".", ""]
    for scen, (description, _) in SCENARIOS.items():
        sub = frame[frame.scenario == scen]
        if len(sub) == 0:
            continue
        lines += [f"### {scen}: {description}", "",
                  "| method | AUC | ECE | FDR | power | kept users | casual flagged | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(sub["method"]):
            m = sub[sub.method == method]
            if "auc" not in m or m["auc"].isna().all():
                err = m["error"].dropna().iloc[0] if "error" in m and m["error"].notna().any() else "failed"
                lines.append(f"| {method} | error: {err} | | | | | | |")
                continue
            get = lambda col, d=3: fmt(m[col], d) if col in m and m[col].notna().any() else "—"  # noqa: E731
            lines.append(
                f"| {method} | {get('auc')} | {get('ece')} | {get('fdr')} | {get('power')} | {get('kept_share')} | "
                f"{get('flagged_casual')} | {get('seconds', 2)} |"
            )
        lines.append("")
    return "\n".join(lines)


def heldout_markdown(records: list[dict], splits: int) -> str:
    frame = pd.DataFrame(records)
    datasets = list(dict.fromkeys(frame["dataset"]))
    lines = [
        "## Real data: held-out predictive log-likelihood",
        "",
        f"For each data set and each of {splits} seeded splits, 20% of every user's usable labels "
        "(rounded, at least one, never all) are hidden; each method is fitted on the rest and scores the "
        "hidden labels (ties are not labels). Our EM predicts with its fitted strengths, casual bias q and "
        "each user's posterior from the training labels: two-class P(y) = p_u·P_att(y) + (1 − p_u)·P_cas(y), "
        "continuous the same with eta_u. Mean ± sd over splits; higher is better; a fair coin scores "
        f"log 0.5 = {np.log(0.5):.3f} per label.",
        "",
        "| data set | method | per label | per user (sum over the user's held-out labels) | fit seconds |",
        "|---|---|---|---|---|",
    ]
    for name in datasets:
        sub = frame[frame.dataset == name]
        for method in dict.fromkeys(sub["method"]):
            m = sub[sub.method == method]
            lines.append(f"| {name} | {method} | {fmt(m['per_label'], 4)} | {fmt(m['per_user'], 3)} | {fmt(m['seconds'], 2)} |")
    lines.append("")
    info = []
    for name in datasets:
        sub = frame[(frame.dataset == name) & (frame.method == "EM two-class")]
        if len(sub):
            pis = [r["pi"] for r in sub["extra"]]
            qs = [r["q"] for r in sub["extra"]]
            info.append(f"{name}: pi = {np.mean(pis):.2f}, q = {np.mean(qs):.2f}, "
                        f"{int(sub['n_users'].iloc[0])} users, {int(sub['n_test'].iloc[0])} held-out labels")
        best = frame[frame.dataset == name].groupby("method")["per_label"].mean()
        if len(best):
            info[-1] += f" — best: {best.idxmax()}"
    lines += ["Fitted two-class parameters (training part, mean over splits) and the winner per data set: "
              + "; ".join(info) + ".", ""]
    return "\n".join(lines)


def run(n_users: int = 1000, seeds=(0, 1, 2), splits: int = 5, crowdkit_python: str | None = None,
        scenarios=None, datasets=REAL_DATASETS, progress=print) -> tuple[str, dict]:
    """Run both sections; returns (markdown, raw records)."""
    start = time.perf_counter()
    scenarios = list(scenarios or SCENARIOS)
    sim_records: list[dict] = []
    for name in scenarios:
        for seed in seeds:
            t0 = time.perf_counter()
            sim_records += evaluate_scenario(name, SCENARIOS[name][1], seed, n_users, crowdkit_python)
            progress(f"  {name} seed {seed}: {time.perf_counter() - t0:.1f} s")
    if crowdkit_python:
        import importlib.metadata as md  # noqa: F401

        version = subprocess.run([crowdkit_python, "-c", "import importlib.metadata as m; print(m.version('crowd-kit'))"],
                                 capture_output=True, text=True).stdout.strip()
        crowdkit_note = (
            f"crowd-kit {version} ran in a separate interpreter: `NoisyBradleyTerry` (default settings) and "
            "`MACE` (1 restart; task = the unordered model pair, label = the winning model; score = "
            "P(not spamming)). Users with no usable label get the mean score."
        )
    else:
        crowdkit_note = (
            "crowd-kit rows skipped: no interpreter with `crowd-kit` found (pass `--crowdkit-python` or set "
            "`CROWDKIT_PYTHON`; it is kept out of the package's dependencies because it pulls in "
            "transformers and nltk)."
        )
    progress("  real data ...")
    held = heldout_section(splits, datasets=datasets)
    elapsed = time.perf_counter() - start
    md = "\n".join([
        "# Accuracy benchmarks: our EM vs the baselines",
        "",
        f"Generated {dt.date.today().isoformat()} by `benchmarks/bench_accuracy.py` on {machine()}; "
        f"total run time {elapsed:.0f} s.",
        "",
        simulated_markdown(sim_records, n_users, list(seeds), crowdkit_note),
        heldout_markdown(held, splits),
    ])
    return md, {"simulated": sim_records, "heldout": held}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_accuracy.md"))
    parser.add_argument("--json", default=None, help="also write the raw records here")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="300 users, 2 seeds, 2 splits")
    parser.add_argument("--crowdkit-python", default=None)
    parser.add_argument("--no-crowdkit", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.seeds, args.splits = 300, 2, 2
    python = None if args.no_crowdkit else find_crowdkit_python(args.crowdkit_python)
    md, raw = run(n_users=args.users, seeds=tuple(range(args.seeds)), splits=args.splits, crowdkit_python=python)
    write_outputs(md, raw, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
