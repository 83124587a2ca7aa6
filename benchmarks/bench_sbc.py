"""Simulation-based calibration (SBC) of the PyMC model that ``method="nuts"`` samples.

Talts et al. (2018): draw the global parameters from their priors, simulate a log
from them with :func:`bayes_annot.simulate`, fit it with NUTS, and record the rank
of each true value among ``L`` thinned posterior draws. If the sampler and the
model agree (and the simulator is the model's own generative process), every rank
is uniform on ``0..L``. This is the principle of PyPI's ``simuk``, written here
because ``simuk`` needs ``arviz_base`` (the ArviZ 1.x stack), which Python 3.11 with
ArviZ 0.23 cannot install.

Two scenarios (``--scenario``):

``plain`` (the first tables of docs/benchmarks_sbc.md): no covariates, no ties; the log is
simulated by :func:`bayes_annot.simulate`.

``full`` (issue #14 item 4): casual clicks that follow the log length ratio of the two responses
(fitted with ``casual_covariates="auto"`` and ``casual_bins=3``) and ties in the likelihood
(Davidson's ``nu`` for attentive labels, the casual tie rate ``t``), for both variants. The log is
simulated here, from exactly the model's generative process, because the casual side's bins are the
fit's: the response texts have lengths whose ``|log(L_a / L_b)|`` takes three values
(``log 1.2``, ``log 2``, ``log 4``) in fixed shares (44%, 33%, 23% of the rows, signs at random), so
the fit's quantile edges (terciles of the decided rows' ``|x|``) always put one value in each bin
(checked on every simulation: ``edges_ok``); the casual click on a decided row is then
``sigma(logit q + sign(x) g[bin(|x|)])`` with the per-bin effects ``g`` the model has.

Priors drawn (``bayes_annot.Priors`` defaults, the ones the NUTS model uses): ``pi, q ~ Beta(2, 2)``
(two-class), ``m ~ N(0, 2)``, ``tau ~ HalfNormal(1.5)`` (continuous; ``theta_u ~ N(m, tau)``,
``eta_u = sigma(theta_u)``, each label attentive with probability ``eta_u``), centred strengths
``~ ZeroSumNormal(3)`` (iid Normal(0, 3) then centred: what NUTS samples); ``full`` adds
``g_j ~ N(0, 2)`` (``casual_effect_sigma``), ``nu ~ LogNormal(0, 2)`` (``tie_nu_mu``,
``tie_nu_sigma``) and ``t ~ Beta(2, 2)`` (``tie_rate_alpha``, ``tie_rate_beta``). An attentive label
on the pair ``(a, b)`` is ``a``, ``b`` or a tie with Davidson's probabilities at ``d = s_a - s_b``; a
casual label is a tie with probability ``t``, else follows the casual click above. Each simulated
log has ``--users`` users with ``--labels`` labels each over ``--models`` models (pairs uniform over
ordered pairs of distinct models). Uniformity is tested per parameter with a chi-square test over
10 equal rank bins and summarised by the largest deviation of the rank ECDF from the uniform one;
with many parameters a few p-values below 0.05 are expected (one in twenty), so the page also
reports the smallest p-value against the Bonferroni threshold. ``q`` stands for ``beta_0 =
logit(q)`` (a monotone map: the same rank).

Every simulation's ranks are written to ``{--json}.{scenario}.{variant}.partial`` as it ends, so
an interrupted run keeps them; ``--resume`` continues such a run (the same prior draws are replayed
and the finished simulations kept), and ``--report`` builds the tables from those files without sampling.

Usage::

    python benchmarks/bench_sbc.py --scenario full --sims 100 --variants two-class --verbose
    python benchmarks/bench_sbc.py --scenario full --sims 3 --variants continuous   # smoke run
    python benchmarks/bench_sbc.py --scenario full --report --variants two-class,continuous
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
from _common import machine  # noqa: E402


ABS_LOG_RATIOS = np.log([1.2, 2.0, 4.0])
"""The three values of ``|log(L_a / L_b)|`` of the ``full`` scenario (one per casual bin)."""
RATIO_SHARES = (0.44, 0.33, 0.23)
"""Their shares of the rows: the terciles of the decided rows' ``|x|`` fall on the first two values (margin 0.1)."""
CASUAL_BINS = 3
BASE_LENGTH = 100  # characters of the shorter response


def prior_draw(variant: str, n_models: int, rng: np.random.Generator, priors: ba.Priors,
               scenario: str = "plain") -> dict:
    """One draw of the global parameters from the priors the NUTS model uses."""
    strengths = rng.normal(0.0, priors.strength_sigma, n_models)
    truth = {"q": rng.beta(priors.q_alpha, priors.q_beta), "strength": strengths - strengths.mean()}
    if variant == "two-class":
        truth["pi"] = rng.beta(priors.pi_alpha, priors.pi_beta)
    else:
        truth["m"] = rng.normal(priors.eta_m_mu, priors.eta_m_sigma)
        truth["tau"] = abs(rng.normal(0.0, priors.eta_tau))
    if scenario == "full":
        truth["casual_effect"] = rng.normal(0.0, priors.casual_effect_sigma, CASUAL_BINS)
        truth["tie_nu"] = float(np.exp(rng.normal(priors.tie_nu_mu, priors.tie_nu_sigma)))
        truth["casual_tie_rate"] = rng.beta(priors.tie_rate_alpha, priors.tie_rate_beta)
    return truth


def simulate_from(truth: dict, variant: str, args, seed: int):
    """A log simulated from ``truth`` by :func:`bayes_annot.simulate` (the model's generative process)."""
    share = 1.0 - (truth["pi"] if variant == "two-class" else float(expit(truth["m"])))
    return ba.simulate(
        n_users=args.users, n_models=args.models, casual_share=share, q=truth["q"], strengths=truth["strength"],
        labels_per_user=args.labels, variant=variant, eta_tau=truth.get("tau", 1.5), seed=seed,
    )


def simulate_full(truth: dict, variant: str, args, seed: int):
    """A log with casual covariates and ties simulated from ``truth`` by the model's generative process
    (module docstring): texts whose length ratios fall one per casual bin, per-bin casual effects ``g``,
    Davidson ties for attentive labels and the rate ``t`` for casual ones."""
    import pandas as pd

    from bayes_annot.ties import davidson_logprobs

    rng = np.random.default_rng(seed)
    n_users, n_models, n_labels = args.users, args.models, args.labels
    n = n_users * n_labels
    user = np.repeat(np.arange(n_users), n_labels)
    model_a = rng.integers(0, n_models, n)
    model_b = (model_a + rng.integers(1, n_models, n)) % n_models  # uniform over the other models
    # |x| in fixed shares (exact counts, random order) and a random sign
    counts = np.round(np.array(RATIO_SHARES) * n).astype(int)
    counts[-1] = n - counts[:-1].sum()
    level = rng.permutation(np.repeat(np.arange(CASUAL_BINS), counts))
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    long_len = np.round(BASE_LENGTH * np.exp(ABS_LOG_RATIOS)).astype(int)[level]
    len_a = np.where(sign > 0, long_len, BASE_LENGTH)
    len_b = np.where(sign > 0, BASE_LENGTH, long_len)
    # user types: attentive per user (two-class) or per label with probability eta_u (continuous)
    if variant == "two-class":
        attentive = (rng.random(n_users) < truth["pi"])[user]
    else:
        eta = expit(truth["m"] + truth["tau"] * rng.standard_normal(n_users))
        attentive = rng.random(n) < eta[user]
    d = truth["strength"][model_a] - truth["strength"][model_b]
    log_pa, _, log_tie = davidson_logprobs(d, truth["tie_nu"])
    p_tie = np.where(attentive, np.exp(log_tie), truth["casual_tie_rate"])
    p_a_given_decided = np.where(
        attentive, np.exp(log_pa) / (1.0 - np.exp(log_tie)),
        expit(np.log(truth["q"] / (1.0 - truth["q"])) + sign * truth["casual_effect"][level]),
    )
    u_tie, u_choice = rng.random(n), rng.random(n)
    winner = np.where(u_tie < p_tie, "tie", np.where(u_choice < p_a_given_decided, "model_a", "model_b"))
    names = np.array([f"model_{k}" for k in range(n_models)], dtype=object)
    return pd.DataFrame({
        "user": [f"u{u:03d}" for u in user], "model_a": names[model_a], "model_b": names[model_b], "winner": winner,
        "response_a": ["x" * k for k in len_a], "response_b": ["x" * k for k in len_b],
    })


def edges_ok(result) -> bool:
    """Whether the fit's casual bins put one of the simulated ``|x|`` values in each bin (the model's bins)."""
    effects = result.summary.get("casual_effects") or {}
    covs = effects.get("covariates") or []
    return len(covs) == 1 and _edges_match(covs[0]["edges"])


def edges_match(design) -> bool:
    """:func:`edges_ok` for a :class:`bayes_annot.casual.CasualDesign`."""
    return design is not None and len(design.edges) == 1 and _edges_match(design.edges[0])


def _edges_match(edges) -> bool:
    if len(edges) != CASUAL_BINS - 1:
        return False
    edges = np.asarray(edges, float)
    values = ABS_LOG_RATIOS
    # each value v_j lies in bin j: e_{j-1} < v_j <= e_j (a tolerance for the text lengths' rounding)
    rounded = np.log(np.round(BASE_LENGTH * np.exp(values)) / BASE_LENGTH)
    bins = np.searchsorted(edges, rounded - 1e-12, side="left")
    return bool(np.array_equal(bins, np.arange(CASUAL_BINS)))


class CompiledNuts:
    """NUTS on :func:`bayes_annot.pymc_model.build_model` (the model ``method="nuts"`` samples: zero-sum
    strengths, ``target_accept=0.9``), compiled once per variant and fed each simulated log's data.

    Compiling the log density and its gradient (PyTensor's graph rewrites) costs more than sampling such
    a small log; ``bayes_annot.fit`` compiles once per fit. Here the first log's model is compiled with
    its NUTS step, and every later log's ``pm.Data`` (cells, pairs, ties, per-user counts: the users and
    models are as many in every log, the casual design has the same bins) replace the first's
    (``pm.set_data``), and each chain starts at that log's EM fit (:func:`em_start`, as ``fit``'s; no
    jitter). The first ``check`` logs compare the compiled log density with a
    freshly built model's at that log's initial point (to 1e-8).
    """

    def __init__(self, variant: str, check: int = 3):
        self.variant, self.check, self.model, self.step, self.logp, self.checked = variant, check, None, None, None, []

    def problem(self, log):
        from bayes_annot.casual import prepare_casual
        from bayes_annot.data import prepare
        from bayes_annot.problem import build_problem

        prepared = prepare(log)
        design = prepare_casual(prepared, "auto", CASUAL_BINS)
        return build_problem(prepared, casual=design, ties=True)[0], design

    def sample(self, log, draws: int, tune: int, seed: int):
        import pymc as pm

        from bayes_annot.pymc_model import build_model
        from bayes_annot.spec import BehaviourSpec

        problem, design = self.problem(log)
        self.last_design = design
        fresh = build_model(problem, BehaviourSpec(self.variant, casual=design), strength_prior="zerosum")
        if self.model is None:
            self.model, self.design = fresh, design
            self.step = pm.NUTS(model=fresh, target_accept=0.9)
            self.logp = fresh.compile_logp()
        else:
            if design.n_bins != self.design.n_bins:
                raise RuntimeError(f"casual bins {design.n_bins} differ from the compiled model's {self.design.n_bins}")
            pm.set_data({v.name: v.get_value() for v in fresh.data_vars}, model=self.model,
                        coords={d: fresh.coords[d] for d in ("cell", "pair")})
            if len(self.checked) < self.check:
                point = fresh.initial_point()
                self.checked.append(abs(float(self.logp(point)) - float(fresh.compile_logp()(point))))
                if self.checked[-1] > 1e-8:
                    raise RuntimeError(f"compiled log density off by {self.checked[-1]:.2e} after set_data")
        initvals = {rv.name: np.asarray(v) for rv, v in fresh.rvs_to_initial_values.items() if v is not None}
        initvals.update(em_start(log, self.variant))  # as fit(method="nuts"): the chains start at the EM fit
        with self.model, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pm.sample(draws=draws, tune=tune, chains=2, cores=1, step=self.step, initvals=initvals,
                             random_seed=seed, progressbar=False, compute_convergence_checks=False)


def em_start(log, variant: str) -> dict:
    """The EM fit of ``log`` (same variant, covariates and ties) by the NUTS model's variable names: where
    ``fit(method="nuts")`` starts its chains (:func:`bayes_annot.pymc_model.start_point`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = ba.fit(log, variant=variant, casual_covariates="auto", casual_bins=CASUAL_BINS, ties="model")
    params = em.summary["parameters"]
    strengths = em.models.strength.to_numpy(float)
    point = {"strength": strengths - strengths.mean(), "q": params["q"],
             "casual_effect": np.asarray(em.casual_effects_["covariates"][0]["g"], float),
             "tie_nu": em.ties_["nu"], "casual_tie_rate": em.ties_["t"]}
    point.update({k: params[k] for k in ("pi", "m", "tau") if k in params})
    return {k: np.asarray(v, float) for k, v in point.items()}


def ranks_of(truth: dict, posterior, n_thin: int) -> dict:
    """Rank of each true global value among ``n_thin`` evenly thinned posterior draws (0..n_thin)."""
    out = {}
    for name, value in truth.items():
        draws = posterior[name].values.reshape(-1, *posterior[name].shape[2:])
        keep = np.linspace(0, draws.shape[0] - 1, n_thin).round().astype(int)
        draws = draws[keep]
        if name == "strength":
            draws = draws - draws.mean(axis=1, keepdims=True)
        if draws.ndim == 2:
            for k, v in enumerate(np.atleast_1d(value)):
                out[f"{name}[{k}]"] = int((draws[:, k] < v).sum())
        else:
            out[name] = int((draws < value).sum())
    return out


def mixing(posterior, names: list[str]) -> dict:
    """Largest R-hat and smallest bulk ESS over the global parameters ``names`` (chains stuck in different
    modes show here: ranks from such a posterior are not uniform)."""
    import arviz as az

    rhat = az.rhat(posterior, var_names=names).to_array().values
    ess = az.ess(posterior, var_names=names, method="bulk").to_array().values
    return {"rhat_max": float(np.nanmax(rhat)), "ess_bulk_min": float(np.nanmin(ess))}


def uniformity(ranks: np.ndarray, n_thin: int, bins: int = 10) -> tuple[float, float]:
    """Chi-square p-value over ``bins`` equal rank bins, and the largest |ECDF - uniform| of the scaled ranks."""
    from scipy.stats import chisquare

    scaled = (ranks + 0.5) / (n_thin + 1)
    counts = np.bincount(np.minimum((scaled * bins).astype(int), bins - 1), minlength=bins)
    p_value = float(chisquare(counts).pvalue)
    grid = np.sort(scaled)
    ecdf = np.arange(1, len(grid) + 1) / len(grid)
    return p_value, float(np.max(np.abs(ecdf - grid)))


def _partial_path(args, variant: str) -> Path:
    return Path(f"{args.json}.{args.scenario}.{variant}.partial")


def run(variant: str, args) -> dict:
    import json

    rng = np.random.default_rng(args.seed)
    priors = ba.Priors()
    sims, started = [], time.perf_counter()
    if args.resume and _partial_path(args, variant).exists():  # the same prior draws: replay the first ones
        sims = json.loads(_partial_path(args, variant).read_text(encoding="utf-8"))
    full = args.scenario == "full"
    compiled = CompiledNuts(variant) if args.compiled else None
    for i in range(args.sims):
        truth = prior_draw(variant, args.models, rng, priors, args.scenario)
        if i < len(sims):
            continue
        seed = args.seed * 100003 + i
        log = simulate_full(truth, variant, args, seed) if full else simulate_from(truth, variant, args, seed)
        t0 = time.perf_counter()
        if compiled is not None:
            idata = compiled.sample(log, args.draws, args.tune, seed=i)
            posterior, divergences = idata.posterior, int(idata.sample_stats["diverging"].values.sum())
            bins_ok = full and edges_match(compiled.last_design)
        else:
            options = dict(casual_covariates="auto", casual_bins=CASUAL_BINS, ties="model") if full else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = ba.fit(log, variant=variant, method="nuts", draws=args.draws, tune=args.tune, chains=2,
                                seed=i, progress=False, filter="prob:0.5", **options)
            posterior, divergences = result.idata.posterior, int(result.summary.get("divergences") or 0)
            bins_ok = full and edges_ok(result)
        sim = {"ranks": ranks_of(truth, posterior, args.thin), **mixing(posterior, list(truth)),
               "divergences": divergences,
               "seconds": time.perf_counter() - t0,
               "truth": {k: np.asarray(v).round(6).tolist() for k, v in truth.items()}}
        if full:
            sim["edges_ok"] = bins_ok
            sim["tie_share"] = float((log.winner == "tie").mean())
        if compiled is not None and compiled.checked:
            sim["logp_check"] = compiled.checked[-1]
        sims.append(sim)
        # every simulation so far, so that an interrupted run keeps them
        _partial_path(args, variant).write_text(json.dumps(sims), encoding="utf-8")
        if args.verbose:
            print(f"{variant} {i + 1}/{args.sims}: {time.perf_counter() - started:.0f} s "
                  f"(this one {sim['seconds']:.0f} s, {sim['divergences']} divergent)", file=sys.stderr, flush=True)
    return summarise(variant, sims, args, sum(s["seconds"] for s in sims))


def summarise(variant: str, sims: list[dict], args, seconds: float) -> dict:
    """The table of one variant from its simulations' records."""
    rows = [s["ranks"] for s in sims]
    names = list(rows[0])
    table = {name: uniformity(np.array([r[name] for r in rows]), args.thin) for name in names}
    out = {"scenario": args.scenario, "variant": variant, "sims": len(sims), "table": table,
           "divergences": int(sum(s.get("divergences", 0) for s in sims)),
           "sims_with_divergences": int(sum(s.get("divergences", 0) > 0 for s in sims)),
           "seconds": seconds, "settings": {k: getattr(args, k) for k in
                                            ("users", "models", "labels", "draws", "tune", "thin", "seed", "cores",
                                             "compiled")},
           "machine": machine(), "load": args.load, "ranks": rows, "simulations": sims}
    if args.scenario == "full":
        out["edges_ok"] = int(sum(bool(s.get("edges_ok")) for s in sims))
        out["tie_share"] = [float(min(s["tie_share"] for s in sims)), float(np.median([s["tie_share"] for s in sims])),
                            float(max(s["tie_share"] for s in sims))]
    return out


def markdown(results: list[dict], args) -> str:
    full = args.scenario == "full"
    what = ("casual covariates and ties" if full else "no covariates, no ties")
    lines = [
        f"## Scenario `{args.scenario}`: {what}",
        "",
        f"Generated {time.strftime('%Y-%m-%d')} by `benchmarks/bench_sbc.py --scenario {args.scenario} "
        f"--sims {args.sims} --draws {args.draws} --tune {args.tune}{' --compiled' if args.compiled else ''}` "
        f"(one process per variant) on {machine()}.",
        "",
        f"Each simulation: global parameters drawn from the priors, a log of {args.users} users x {args.labels} labels "
        f"over {args.models} models simulated from them, NUTS with 2 chains x {args.draws} "
        f"draws ({args.tune} tuning), and the rank of each true value among {args.thin} thinned draws. Uniform "
        "ranks = the sampler recovers the model's posterior. p: chi-square test over 10 rank bins; D: largest "
        "|ECDF - uniform| of the scaled ranks (for n simulations, D above ~1.36 / sqrt(n) is unusual at the 5% level).",
        "",
    ]
    for res in results:
        ps = [p for p, _ in res["table"].values()]
        threshold = 0.05 / len(ps)
        lines += [
            f"### {res['variant']} ({res['sims']} simulations, {res['seconds'] / 60:.1f} min, "
            f"{res['divergences']} divergent transitions in all, in {res['sims_with_divergences']} simulations)",
            "",
            "| parameter | chi-square p | D |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {p:.3f} | {d:.3f} |" for name, (p, d) in res["table"].items()]
        verdict = "no parameter" if min(ps) >= threshold else "some parameter"
        lines += ["", f"Smallest p = {min(ps):.3f} against the Bonferroni threshold 0.05 / {len(ps)} = "
                      f"{threshold:.4f}: {verdict} rejects uniformity. Largest D = "
                      f"{max(d for _, d in res['table'].values()):.3f} (5% level for {res['sims']} simulations: "
                      f"{1.36 / np.sqrt(res['sims']):.3f})."]
        rhat = [x["rhat_max"] for x in res.get("simulations", []) if "rhat_max" in x]
        if rhat:
            lines += [f"Simulations with a global R-hat above 1.05 (chains in different modes): "
                      f"{sum(r > 1.05 for r in rhat)} of {len(rhat)}."]
        if full:
            lo, med, hi = res["tie_share"]
            lines += [f"Tie share of the simulated logs: {lo:.2f} - {hi:.2f} (median {med:.2f}); the fit's casual "
                      f"bins matched the simulated ones in {res['edges_ok']} of {res['sims']} simulations."]
        if res.get("load"):
            lines += [f"Load average at the end: {res['load']}."]
        lines += [""]
    return "\n".join(lines)


def write_json(results: list[dict], path: str) -> None:
    """Merge ``results`` into the JSON file: earlier entries of other (scenario, variant) pairs are kept
    (entries written before scenarios existed are ``plain``)."""
    import json

    target = Path(path)
    old = json.loads(target.read_text(encoding="utf-8")) if target.exists() else []
    keys = {(r["scenario"], r["variant"]) for r in results}
    kept = [dict(r, scenario=r.get("scenario", "plain")) for r in old
            if (r.get("scenario", "plain"), r["variant"]) not in keys]
    target.write_text(json.dumps(kept + results, indent=1, default=str), encoding="utf-8")


def main(argv=None):
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("plain", "full"), default="full")
    parser.add_argument("--sims", type=int, default=100)
    parser.add_argument("--variants", default="two-class,continuous")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--labels", type=int, default=12)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--thin", type=int, default=99)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="keep the simulations of the .partial file (same settings and seed) and run the rest")
    parser.add_argument("--report", action="store_true", help="tables from the .partial files, no sampling")
    parser.add_argument("--out", default=None, help="markdown output (default: print only)")
    parser.add_argument("--json", default="benchmarks/results_sbc.json")
    parser.add_argument("--compiled", action="store_true",
                        help="the full scenario's model compiled once per variant (CompiledNuts), not bayes_annot.fit")
    parser.add_argument("--cores", type=int, default=None,
                        help="processes per fit (1: the two chains one after the other, no worker processes)")
    args = parser.parse_args(argv)
    args.load = None
    if args.cores:  # bayes_annot.fit has no cores setting: the benchmark overrides pm.sample's
        import pymc

        sample = pymc.sample

        def sample_on(*a, **k):
            return sample(*a, **dict(k, cores=args.cores))

        pymc.sample = sample_on
    results = []
    for variant in (v.strip() for v in args.variants.split(",")):
        if args.report:
            sims = json.loads(_partial_path(args, variant).read_text(encoding="utf-8"))
            results.append(summarise(variant, sims, args, sum(s["seconds"] for s in sims)))
        else:
            res = run(variant, args)
            res["load"] = args.load = " ".join(f"{v:.1f}" for v in os.getloadavg())
            results.append(res)
    text = markdown(results, args)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.json:
        write_json(results, args.json)
    print(text)
    return results


if __name__ == "__main__":
    main()
