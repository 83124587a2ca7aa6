"""Build (and execute) the example notebooks from their cell sources.

    python notebooks/build_notebooks.py [--execute]

The notebooks are committed with their outputs; the test suite re-executes
them with nbmake so they never rot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

NOTEBOOKS = {}

NOTEBOOKS["01-quickstart.ipynb"] = [
    new_markdown_cell(
        "# Quickstart: from a comparison-mode log to a filtered DPO data set\n\n"
        "Simulate a log where 30% of users click at random, fit the behaviour model with EM, "
        "look at the users and models, filter with Bayesian FDR control, export for DPO and "
        "write the diagnostics report."
    ),
    new_code_cell(
        "import bayes_annot as ba\n"
        "from bayes_annot.metrics import auc, expected_calibration_error\n"
        "from bayes_annot import plotting\n\n"
        "log = ba.simulate(n_users=2000, n_models=8, casual_share=0.3, q=0.6, labels_per_user=(5, 40),\n"
        "                  tie_rate=0.05, with_text=True, seed=1)\n"
        "log.head()"
    ),
    new_code_cell("result = ba.fit(log)  # EM, two-class variant, filter prob:0.5\nresult"),
    new_code_cell("result.users.head()"),
    new_code_cell("result.models.sort_values('strength', ascending=False)"),
    new_markdown_cell("Against the simulated truth: AUC and calibration of P(attentive)."),
    new_code_cell(
        "truth = ba.truth_users(log)\n"
        "users = result.users.set_index('user').loc[truth.index]\n"
        "print(f\"AUC = {auc(users.quality, truth.true_attentive):.3f}, \"\n"
        "      f\"ECE = {expected_calibration_error(users.quality, truth.true_attentive):.3f}, \"\n"
        "      f\"estimated pi = {result.summary['parameters']['pi']:.3f} (true {truth.true_attentive.mean():.3f})\")\n"
        "plotting.plot_reliability(result, truth.true_attentive);"
    ),
    new_code_cell("plotting.plot_quality_caterpillar(result, max_users=40);"),
    new_markdown_cell(
        "Filter with Bayesian FDR control: keep the largest set of users whose expected share of casual users is at most 10%."
    ),
    new_code_cell(
        "strict = result.filter('fdr:0.1')\n"
        "kept = users.index[strict.users.set_index('user').loc[truth.index, 'kept']]\n"
        "print(strict.summary['filter'])\n"
        "print('realised casual share among kept users:', round(1 - truth.loc[kept, 'true_attentive'].mean(), 3))"
    ),
    new_code_cell("dpo = strict.to_dpo()\ndpo.head()"),
    new_code_cell(
        "import tempfile, pathlib\n"
        "out = pathlib.Path(tempfile.mkdtemp()) / 'quickstart'\n"
        "strict.save(out)\n"
        "strict.report(out / 'report.html')\n"
        "sorted(p.name for p in out.iterdir())"
    ),
]

NOTEBOOKS["02-real-data.ipynb"] = [
    new_markdown_cell(
        "# Real data: CEMSChoice\n\n"
        "303 students compared 6 European universities in pairs (Dittrich, Hatzinger & Katzenbeisser 1998; "
        "R package psychotree, GPL-2). There is no ground truth on judge quality, so the behaviour models are "
        "compared by held-out predictive log-likelihood: hide 20% of each user's labels, fit on the rest, score "
        "the hidden labels."
    ),
    new_code_cell(
        "import numpy as np, pandas as pd\n"
        "import bayes_annot as ba\n"
        "from bayes_annot.datasets import load_real\n"
        "from bayes_annot.evaluate import heldout_loglik\n\n"
        "cems = load_real('cemschoice')\n"
        "cems.winner.value_counts()"
    ),
    new_code_cell(
        "two = ba.fit(cems)\n"
        "cont = ba.fit(cems, variant='continuous')\n"
        "two.models.sort_values('strength', ascending=False)"
    ),
    new_code_cell(
        "table = pd.DataFrame([heldout_loglik(cems, variant=m, seed=s) for m in ('two-class', 'continuous') for s in range(3)])\n"
        "table.groupby('variant')[['heldout_loglik', 'per_label']].mean()"
    ),
    new_markdown_cell(
        "London comes first, as in the original analysis. Taste classes (see `docs/tastes.md`) test whether the "
        "users called casual are really random or follow another ranking:"
    ),
    new_code_cell(
        "tastes = ba.fit(cems, tastes=2)\n"
        "print('casual share, one ranking:', round(1 - two.summary['parameters']['pi'], 3))\n"
        "print('casual share, two tastes :', round(1 - tastes.summary['parameters']['pi'], 3))\n"
        "tastes.models[['model', 'strength_taste_1', 'strength_taste_2']]"
    ),
]

NOTEBOOKS["03-paper-setting.ipynb"] = [
    new_markdown_cell(
        "# The paper's setting: two models with known mu\n\n"
        "An attentive user prefers the stronger model with probability mu; a casual user flips a fair coin. "
        "How well can each user be identified, as a function of mu and of labels per user? The Chernoff "
        "information between Bernoulli(mu) and Bernoulli(0.5) predicts about 140 labels at mu = 0.7 and 27 "
        "at mu = 0.9 for an error of e^-3."
    ),
    new_code_cell(
        "import numpy as np, pandas as pd\n"
        "import matplotlib.pyplot as plt\n"
        "import bayes_annot as ba\n"
        "from bayes_annot.metrics import auc\n\n"
        "rows = []\n"
        "for mu in (0.6, 0.7, 0.8, 0.9):\n"
        "    for n in (5, 10, 20, 40, 80):\n"
        "        log = ba.simulate(n_users=600, known_mu=mu, labels_per_user=n, casual_share=0.3, seed=n)\n"
        "        result = ba.fit(log, q=0.5)\n"
        "        truth = ba.truth_users(log)\n"
        "        users = result.users.set_index('user').loc[truth.index]\n"
        "        rows.append(dict(mu=mu, labels=n, auc=auc(users.quality, truth.true_attentive)))\n"
        "curve = pd.DataFrame(rows).pivot(index='labels', columns='mu', values='auc')\n"
        "ax = curve.plot(marker='o', logx=True, ylabel='AUC of quality vs true type', title='Identification vs labels per user')\n"
        "ax.minorticks_off()  # a log axis over ~1 decade labels its minor ticks too, and they overlap\n"
        "ax.set_xticks(curve.index, labels=[str(n) for n in curve.index])\n"
        "curve.round(3)"
    ),
    new_markdown_cell(
        "The downstream effect (the paper's claim at CPU scale): a Bradley–Terry reward model trained on all, "
        "filtered, weighted or oracle labels, scored on held-out pairs against the true utility. "
        "`benchmarks/downstream.py` runs the full grid; here one small setting."
    ),
    new_code_cell(
        "import sys; sys.path.insert(0, '../benchmarks')  # the experiment lives with the benchmarks\n"
        "import downstream_experiment as downstream\n\n"
        "runs = downstream.run_experiment(casual_shares=(0.3, 0.5), qs=(0.5,), seeds=range(5), n_users=50)\n"
        "runs.groupby(['casual_share', 'arm'], observed=True)['accuracy'].mean().unstack().round(4)"
    ),
]

NOTEBOOKS["04-full-posterior.ipynb"] = [
    new_markdown_cell(
        "# Full posterior with NUTS\n\n"
        "The two-class variant with user types summed out: the sampler sees only pi, q and the strengths; each "
        "user's P(attentive) is computed per draw in closed form. Intervals let the filter act on uncertainty."
    ),
    new_code_cell(
        "import warnings\n"
        "# a note about the machine's BLAS (with its install path), not about the model\n"
        "warnings.filterwarnings('ignore', message='PyTensor could not link to a BLAS')\n"
        "import os\n"
        "import arviz as az\n"
        "import bayes_annot as ba\n\n"
        "log = ba.simulate(n_users=200, n_models=5, casual_share=0.3, labels_per_user=(5, 30), seed=4)\n"
        "# the test suite sets BAYES_ANNOT_NOTEBOOK_QUICK=1: a short run that only checks that every cell runs\n"
        "draws = 100 if os.environ.get('BAYES_ANNOT_NOTEBOOK_QUICK') else 500\n"
        "post = ba.fit(log, method='nuts', draws=draws, tune=draws, chains=2, seed=4)\n"
        "{k: post.summary[k] for k in ('rhat_max', 'ess_bulk_min', 'divergences')}"
    ),
    new_code_cell("az.summary(post.idata, var_names=['pi', 'q', 'strength'])"),
    new_code_cell("az.plot_trace(post.idata, var_names=['pi', 'q']);"),
    new_code_cell(
        "from bayes_annot import plotting\n"
        "plotting.plot_quality_caterpillar(post, max_users=40);"
    ),
    new_markdown_cell("Thresholding with uncertainty: keep users whose lower 94% credible bound of quality is at least 0.5."),
    new_code_cell(
        "credible = post.filter('credible:0.5')\n"
        "em = ba.fit(log)\n"
        "print('kept by credible:0.5 :', credible.summary['counts']['kept_users'])\n"
        "print('kept by prob:0.5 (EM):', em.summary['counts']['kept_users'])"
    ),
    new_markdown_cell(
        "An EM fit is one point estimate (its `idata` holds 1 chain x 1 draw), so `az.summary` of it has only "
        "NaN spreads and R-hat. `summary_table()` gives every fit a table that makes sense: for NUTS the "
        "`az.summary` above, for EM and MAP each parameter's estimate and each model's strength with its labels."
    ),
    new_code_cell("em.summary_table()"),
]


NOTEBOOKS["05-nightly-updates.ipynb"] = [
    new_markdown_cell(
        "# Nightly updates: add today's votes without refitting from scratch\n\n"
        "`result.update(new_rows)` returns the fit of old + new rows. It encodes only the new rows, merges "
        "their labels into the previous fit's EM block and starts EM at the previous estimates, so the "
        "answer is a full refit's while the work outside the EM passes is proportional to the new rows."
    ),
    new_code_cell(
        "import time\n"
        "import numpy as np, pandas as pd\n"
        "import bayes_annot as ba\n\n"
        "log = ba.simulate(n_users=20_000, n_models=12, casual_share=0.3, labels_per_user=(5, 40), seed=7)\n"
        "log = log[['user', 'model_a', 'model_b', 'winner']].astype(str).sample(frac=1.0, random_state=7)\n"
        "days = np.array_split(np.arange(len(log)), [int(0.98 * len(log)), int(0.99 * len(log))])\n"
        "yesterday, today, tomorrow = (log.iloc[d].reset_index(drop=True) for d in days)\n"
        "print(len(log), 'rows;', len(today), 'new rows a day')"
    ),
    new_code_cell(
        "result = ba.fit(yesterday)\n"
        "t0 = time.perf_counter()\n"
        "result = result.update(today)          # day 2\n"
        "result = result.update(tomorrow)       # day 3: updates chain\n"
        "t_update = (time.perf_counter() - t0) / 2\n"
        "t0 = time.perf_counter()\n"
        "full = ba.fit(log)\n"
        "t_full = time.perf_counter() - t0\n"
        "print(f'update {t_update:.3f} s per day, full refit {t_full:.3f} s; EM iterations {result.estimates.n_iter} vs {full.estimates.n_iter}')"
    ),
    new_markdown_cell(
        "The same answer as the full refit, to the EM tolerance (at the default `tol=1e-9` about 1e-4; "
        "pass `tol=1e-15` when they must agree to 1e-6), and every input row is accounted for:"
    ),
    new_code_cell(
        "same_users = result.users.user.equals(full.users.user)\n"
        "print('same users, in the same order:', same_users)\n"
        "print('max |quality difference|  :', float(np.abs(result.users.quality - full.users.quality).max()))\n"
        "print('max |strength difference| :', float(np.abs(result.models.strength - full.models.strength).max()))\n"
        "print('rows:', len(result.rows), 'of', len(log))"
    ),
    new_markdown_cell(
        "From the command line, a nightly job updates a saved folder in place: the old rows come from its "
        "`rows.csv`, its settings are reused, EM starts from its estimates.\n\n"
        "```bash\n"
        "bayes-annot fit yesterday.csv --filter fdr:0.1 --out results/\n"
        "bayes-annot fit today.csv --update results/ --out results/ --dpo results/dpo.jsonl\n"
        "```"
    ),
    new_code_cell(
        "import tempfile, pathlib\n"
        "from bayes_annot.cli import main\n"
        "work = pathlib.Path(tempfile.mkdtemp())\n"
        "yesterday.to_csv(work / 'yesterday.csv', index=False)\n"
        "today.to_csv(work / 'today.csv', index=False)\n"
        "main(['fit', str(work / 'yesterday.csv'), '--filter', 'fdr:0.1', '--out', str(work / 'results'), '--quiet'])\n"
        "main(['fit', str(work / 'today.csv'), '--update', str(work / 'results'), '--out', str(work / 'results'), '--quiet'])\n"
        "saved = ba.load(work / 'results')\n"
        "print(saved.summary['counts']['rows'], 'rows; filter', saved.summary['filter']['rule'],\n"
        "      '; warm-started:', saved.summary['settings']['warm_start'])"
    ),
]


NOTEBOOKS["06-length-and-ties.ipynb"] = [
    new_markdown_cell(
        "# When casual clicks follow length, and ties as evidence\n\n"
        "In comparison mode a user without time to read often picks the *longer* answer. Stronger models also "
        "tend to write longer answers, so such a user agrees with the strength ranking and looks attentive to the "
        "paper's model, whose casual clicks are coins. This notebook simulates exactly that, shows the paper's "
        "model being fooled, and fits the default model, whose casual clicks follow the length ratio of the two "
        "responses (docs/model.md, \"Casual covariates\"). The second part adds ties: attentive users tie on close "
        "pairs, casual ones at a rate of their own, and the default model reads both (docs/model.md, \"Ties\")."
    ),
    new_code_cell(
        "import bayes_annot as ba\n"
        "from bayes_annot.metrics import auc, expected_calibration_error\n\n"
        "# 30% casual users; a casual click picks the longer response 85% of the time;\n"
        "# log response length grows with model strength, plus noise\n"
        "log = ba.simulate(n_users=1000, n_models=8, casual_share=0.3, length_bias=0.85, seed=1)\n"
        "truth = ba.truth_users(log)\n"
        "log[['user', 'model_a', 'model_b', 'winner']].assign(\n"
        "    len_a=log.response_a.str.len(), len_b=log.response_b.str.len()).head()"
    ),
    new_markdown_cell("The paper's model (casual clicks are coins with a position bias) against the default, which reads the response texts:"),
    new_code_cell(
        "def score(result):\n"
        "    users = result.users.set_index('user').loc[truth.index]\n"
        "    return (f\"AUC {auc(users.quality, truth.true_attentive):.3f}, \"\n"
        "            f\"ECE {expected_calibration_error(users.quality, truth.true_attentive):.3f}\")\n\n"
        "paper = ba.fit(log, casual_covariates='none')\n"
        "default = ba.fit(log)  # casual_covariates='auto': the log length ratio, as texts are present\n"
        "print('paper\\'s model:', score(paper))\n"
        "print('default      :', score(default))"
    ),
    new_markdown_cell(
        "The fitted casual behaviour: the position bias `beta0` (q = sigmoid(beta0) at equal length) and, per bin of "
        "|log length ratio|, the effect `g` of the longer side (the truth is logit(0.85) = 1.73 in every bin)."
    ),
    new_code_cell("effects = default.casual_effects_\neffects['beta0'], effects['covariates'][0]"),
    new_markdown_cell(
        "Without ground truth, choose by held-out log-likelihood: hide 20% of each user's labels, refit each "
        "model on the rest, score the hidden labels."
    ),
    new_code_cell("from bayes_annot.evaluate import compare_heldout\n\ncompare_heldout({'paper': paper, 'length-aware default': default})"),
    new_markdown_cell(
        "The report's posterior predictive check by length-ratio bin (also without ground truth): per bin of the "
        "log length ratio, oriented so that the stronger model's response comes first, the share of labels "
        "picking the stronger model among the users each fit calls casual and attentive (points), against data "
        "replicated from the fit (bars). The paper's model cannot reproduce how choices follow length."
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from bayes_annot import plotting\n\n"
        "fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)\n"
        "for ax, (name, result) in zip(axes, [('paper', paper), ('default', default)]):\n"
        "    plotting.plot_ppc_length_bins(result, n_rep=100, seed=0, ax=ax)\n"
        "    ax.set_title(name + ': ' + ax.get_title(), fontsize=9)"
    ),
    new_markdown_cell(
        "## Ties as evidence\n\n"
        "Arena-style logs have 20-35% ties. An attentive user ties more often when the two models are close "
        "(Davidson's model, a learned `nu`); a casual user ties at a rate `t` of their own, whatever the pair. "
        "The same length-biased log, now with ties: the default fit models them (`ties='model'` when the log has "
        "ties), `ties='ignore'` is the paper's treatment (counted, left out). Tie rows are never exported as DPO pairs."
    ),
    new_code_cell(
        "tied = ba.simulate(n_users=1000, n_models=8, casual_share=0.3, length_bias=0.85,\n"
        "                   tie_nu=0.6, casual_tie_rate=0.25, seed=2)\n"
        "truth = ba.truth_users(tied)\n"
        "print(f\"{tied.winner.astype(str).str.startswith('tie').mean():.0%} of the labels are ties\")\n\n"
        "ties_modelled = ba.fit(tied)\n"
        "ties_ignored = ba.fit(tied, ties='ignore')\n"
        "print('ties ignored :', score(ties_ignored))\n"
        "print('ties modelled:', score(ties_modelled))\n"
        "ties_modelled.ties_  # truth: nu = 0.6, t = 0.25"
    ),
    new_markdown_cell(
        "Held-out log-likelihood now predicts three outcomes (model_a, model_b, tie). A fit that ignores ties, and "
        "plain Bradley-Terry, predict a tie with the training labels' tie rate; the ties model with `nu` and `t`."
    ),
    new_code_cell(
        "from bayes_annot.evaluate import heldout_loglik\n\n"
        "table = compare_heldout({'ties ignored': ties_ignored, 'ties modelled': ties_modelled})\n"
        "baseline = heldout_loglik(tied, 'bradley-terry')\n"
        "print(f\"Bradley-Terry + tie rate: {baseline['per_label']:.4f} nats per held-out label\")\n"
        "table[['fit', 'per_label', 'n_heldout', 'difference_per_label']]"
    ),
]


def build(execute: bool, only=None) -> None:
    for name, cells in NOTEBOOKS.items():
        if only and not any(o in name for o in only):
            continue
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        if execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, HERE / name)
        print("wrote", name)


if __name__ == "__main__":
    build("--execute" in sys.argv, [a for a in sys.argv[1:] if not a.startswith("--")])
