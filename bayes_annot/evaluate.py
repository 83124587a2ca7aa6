r"""Held-out predictive log-likelihood: judging behaviour models without ground truth.

Hide a share of each user's labels (seeded), fit on the rest, and score the
hidden labels with the fitted model's predictive distribution:

* ``two-class``: the user's type is shared by all their labels, so the hidden
  labels of user :math:`u` are scored jointly,
  :math:`\log\big(p_u \prod_r P_{att}(y_r) + (1 - p_u)\prod_r P_{cas}(y_r)\big)`
  with :math:`p_u` the user's posterior P(attentive) from the training labels
  (the population share for users with none);
* ``continuous``: per label, :math:`\log(\bar\eta_u P_{att} + (1 - \bar\eta_u) P_{cas})` with
  :math:`\bar\eta_u = E[\eta_u \mid \text{training labels}]` (the fit's quality): each hidden label's
  predictive probability exactly, since it is linear in :math:`\eta_u`; the hidden labels of a user are
  scored one by one, not jointly;
* ``bradley-terry``: no casual users, :math:`\log P_{att}(y_r)`.

Models never seen in training get strength 0.

**Ties.** When the log has ties (``tie``, ``tie (bothbad)``) they are held out and scored like any other
label (``with_ties``, the default unless ``ties="ignore"`` is passed): every model predicts the three
outcomes. A fit that models ties (``summary["ties"]["mode"] == "model"``) predicts them with Davidson's
attentive :math:`\nu` and the casual tie rate :math:`t` (:mod:`bayes_annot.ties`); a fit that ignores them,
and ``bradley-terry``, with the training labels' empirical tie rate :math:`\hat\tau`:
:math:`P(\text{tie}) = \hat\tau`, :math:`P(y) = (1 - \hat\tau) P(y \mid \text{decided})` (for
``bradley-terry`` this is the baseline "Bradley–Terry with an empirical tie rate").

:func:`compare_heldout` ranks fitted results this way, and :func:`diagnose`
stores in a result the diagnostics that refit (this comparison, the
casual-group test), so that its report (which never fits) shows them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .data import ColumnMap, prepare, read_table
from .errors import InputError, renamed_keyword
from .casual import casual_table, design_from_summary, effects_start, prepare_casual
from .likelihood import Priors, attentive_logprob, casual_logprob, two_class_user_loglik
from .problem import tie_rows
from .ties import davidson_logprobs

__all__ = ["holdout_mask", "heldout_loglik", "compare_heldout", "diagnose"]

VARIANTS = ("two-class", "continuous", "bradley-terry")
"""What :func:`heldout_loglik` scores: the two behaviour variants, and a plain Bradley–Terry fit (no casual users)."""


def holdout_mask(user: np.ndarray, usable: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Mark ``round(frac * n_u)`` randomly chosen usable labels of each user ``u`` as held out."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(usable)
    order = idx[rng.permutation(len(idx))]
    order = order[np.argsort(user[order], kind="stable")]  # grouped by user, random within user
    users_sorted = user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    n_hide = np.floor(frac * counts + 0.5).astype(int)
    mask = np.zeros(len(user), dtype=bool)
    mask[order[rank < np.repeat(n_hide, counts)]] = True
    return mask


@renamed_keyword("model", "variant")
def heldout_loglik(
    data,
    variant: str = "two-class",
    frac: float = 0.2,
    seed: int = 0,
    columns: ColumnMap | None = None,
    with_ties: bool | None = None,
    **fit_kwargs,
) -> dict:
    """Fit on all but ``frac`` of each user's labels and score the held-out ones.

    Parameters
    ----------
    data : DataFrame or path
    variant : {"two-class", "continuous", "bradley-terry"}
        The behaviour variant fitted, or a plain Bradley–Terry fit. ``model=`` is its deprecated
        alias (a :class:`FutureWarning`).
    frac : float
        Share of each user's labels to hide (rounded per user).
    seed : int
    columns : ColumnMap, optional
    with_ties : bool, optional
        Hold out and score the ties too (three outcomes; module docstring). Default: when the log has
        ties, unless ``ties="ignore"`` is among ``fit_kwargs``. Compare models with the same value.
    **fit_kwargs
        Passed to :func:`bayes_annot.fit` (e.g. ``q=0.5``). With ``tastes=C`` (an int
        > 1 or ``"auto"``, two-class) the training labels get the taste-class fit and
        the held-out ones are scored by the taste mixture,
        :func:`bayes_annot.tastes.heldout_user_scores` (the score
        :func:`~bayes_annot.tastes.select_tastes` uses); ``q``, ``priors``, ``tol``,
        ``max_iter`` and ``seed`` are the settings it takes. With casual covariates
        (``casual_covariates``, default ``"auto"``: the length ratio when the texts are
        present) each held-out label's casual probability follows its covariates,
        binned with the training fit's bins (taste classes too: the training labels' taste-class
        fit has the casual covariates, ``casual_bins`` bins of the training rows). With an attentive
        style term (``style_covariates``) every held-out attentive label gets the training fit's
        ``delta' x`` of its casual cell (taste classes too: one ``delta`` shared by the classes).

    Returns
    -------
    dict
        ``variant, seed, heldout_loglik`` (sum over users), ``n_heldout`` labels (ties included when
        scored), ``with_ties``,
        ``per_label`` (mean log-likelihood per held-out label) and
        ``per_user`` (a Series of each user's held-out log-likelihood).

    Examples
    --------
    >>> import bayes_annot as ba
    >>> from bayes_annot.evaluate import heldout_loglik
    >>> log = ba.simulate(n_users=300, seed=0)
    >>> a = heldout_loglik(log, "two-class"); b = heldout_loglik(log, "bradley-terry")
    >>> a["heldout_loglik"] > b["heldout_loglik"]
    True
    """
    from .fit import fit

    if variant not in VARIANTS:
        raise InputError(f"unknown variant '{variant}', expected one of {', '.join(VARIANTS)}")
    if not 0.0 < frac < 1.0:
        raise InputError(f"frac must lie in (0, 1), got {frac}")
    frame = read_table(data) if not isinstance(data, pd.DataFrame) else data
    columns = columns or ColumnMap()
    prepared = prepare(frame, columns)
    tie = tie_rows(prepared)
    if with_ties is None:
        with_ties = bool(tie.any()) and fit_kwargs.get("ties") != "ignore"
    with_ties = bool(with_ties) and bool(tie.any())
    hidden = holdout_mask(prepared.user, prepared.usable | tie if with_ties else prepared.usable, frac, seed)
    train_frame = prepared.frame.loc[~hidden]
    # the training labels' tie rate: the tie probability of every fit that does not model ties
    n_train_ties, n_train_decided = int((tie & ~hidden).sum()), int((prepared.usable & ~hidden).sum())
    tie_rate = (n_train_ties + 0.5) / (n_train_ties + n_train_decided + 1.0)
    test_ties = np.flatnonzero(hidden & tie)
    test = np.flatnonzero(hidden & prepared.usable)
    choice = prepared.choice_a[test].astype(float)
    users = prepared.user_labels[prepared.user[test]]
    tie_users = prepared.user_labels[prepared.user[test_ties]]
    col_kwargs = {k: v for k, v in vars(columns).items() if v is not None}
    n_scored = len(test) + len(test_ties)

    tastes = fit_kwargs.get("tastes", 1)
    if variant == "two-class" and tastes != 1:
        # ties are modelled (trained on and scored by Davidson's nu and the casual t) unless ties="ignore"
        model_ties = with_ties and fit_kwargs.get("ties") != "ignore"
        per_user = _taste_heldout(prepared, hidden, tastes, fit_kwargs, model_ties)
        if with_ties and not model_ties:  # a fit that ignores ties: the training tie rate for every type
            per_user = _add_rate_terms(per_user, users, tie_users, tie_rate)
        return _heldout_result(variant, seed, per_user, n_scored, with_ties)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "bradley-terry":
            from .baselines import BradleyTerry

            bt = BradleyTerry((fit_kwargs.get("priors") or Priors()).strength_sigma).fit(prepare(train_frame, columns))
            strength = dict(zip(bt.model_labels_, bt.strengths_))
            fitted = None
        else:
            fitted = fit(train_frame, variant=variant, filter="none", **col_kwargs, **fit_kwargs)
            strength = dict(zip(fitted.models.model, fitted.models.strength.fillna(0.0)))

    def log_odds(rows):
        s_a = np.array([strength.get(m, 0.0) for m in prepared.model_labels[prepared.model_a[rows]]])
        s_b = np.array([strength.get(m, 0.0) for m in prepared.model_labels[prepared.model_b[rows]]])
        if prepared.p_a is not None and fit_kwargs.get("use_p_a", True) and variant != "bradley-terry":
            return np.log(prepared.p_a[rows]) - np.log1p(-prepared.p_a[rows])
        return s_a - s_b

    logit_mu = log_odds(test)
    tie_offset = 0.0
    if fitted is not None and fitted.summary.get("style_effects"):  # the attentive style term: each label's offset
        from .style import cell_offsets_from_summary

        style_design_ = design_from_summary(fitted.summary)
        prepare_casual(prepared, design=style_design_)
        cell_offsets = cell_offsets_from_summary(fitted.summary)
        logit_mu = logit_mu + cell_offsets[style_design_.cells(prepared.casual_x[test])]
        tie_offset = cell_offsets[style_design_.cells(prepared.casual_x[test_ties])]
    log_att = attentive_logprob(choice, logit_mu)
    ties_fit = (fitted.summary.get("ties") or {}) if fitted is not None else {}
    modelled = with_ties and ties_fit.get("mode") == "model" and ties_fit.get("nu") is not None
    if with_ties and not modelled:  # the training tie rate: P(tie) for every type, decided labels scaled
        log_att = log_att + np.log1p(-tie_rate)
    if variant == "bradley-terry":
        per_label = log_att
        per_user = pd.Series(per_label).groupby(users).sum()
        if with_ties:
            per_user = _add_rate_terms(per_user, np.array([], dtype=object), tie_users, tie_rate)
    else:
        q = fitted.summary["parameters"]["q"]
        log_cas = casual_logprob(choice, q)
        design = design_from_summary(fitted.summary)
        if design is not None:  # casual clicks follow covariates: each held-out label's own casual probability
            prepare_casual(prepared, design=design)
            effects = fitted.summary["casual_effects"]
            table = casual_table(effects["beta0"], effects_start(fitted.summary), design.design())
            log_cas = table[2 * design.cells(prepared.casual_x[test]).astype(np.int64) + choice.astype(np.int64)]
        if with_ties and not modelled:
            log_cas = log_cas + np.log1p(-tie_rate)
        label_users = users
        if modelled:  # Davidson's attentive ties and the casual tie rate, as the fit modelled them
            nu, t = float(ties_fit["nu"]), float(ties_fit["t"])
            tie_d = log_odds(test_ties) + tie_offset
            decided_a, decided_b, _ = davidson_logprobs(logit_mu, nu)
            log_att = np.where(choice == 1, decided_a, decided_b)
            log_cas = log_cas + np.log1p(-t)
            log_att = np.concatenate([log_att, davidson_logprobs(tie_d, nu)[2]])
            log_cas = np.concatenate([log_cas, np.full(len(test_ties), np.log(t))])
            label_users = np.concatenate([users, tie_users])
        quality = fitted.users.set_index("user")["quality"]
        default = fitted.summary["parameters"].get("pi", fitted.summary["parameters"].get("mean_quality", 0.5))
        p_u = quality.reindex(label_users).fillna(default).to_numpy()
        p_u = np.clip(p_u, 1e-12, 1 - 1e-12)
        if variant == "continuous":  # each label a mixture with the user's quality as weight
            per_label = two_class_user_loglik(log_att, log_cas, p_u)
            per_user = pd.Series(per_label).groupby(label_users).sum()
        else:
            sums = pd.DataFrame({"user": label_users, "att": log_att, "cas": log_cas}).groupby("user").sum()
            p = quality.reindex(sums.index).fillna(default).clip(1e-12, 1 - 1e-12).to_numpy()
            per_user = pd.Series(two_class_user_loglik(sums["att"].to_numpy(), sums["cas"].to_numpy(), p), index=sums.index)
        if with_ties and not modelled:
            per_user = _add_rate_terms(per_user, np.array([], dtype=object), tie_users, tie_rate)
    return _heldout_result(variant, seed, per_user, n_scored, with_ties)


def _add_rate_terms(per_user: pd.Series, decided_users, tie_users, tie_rate: float) -> pd.Series:
    """``per_user`` plus ``log(1 - tie_rate)`` per decided label of ``decided_users`` and ``log tie_rate``
    per tie of ``tie_users`` (the empirical tie rate, the same for every user type)."""
    extra = pd.concat([
        pd.Series(np.log1p(-tie_rate), index=pd.Index(decided_users, dtype=object)),
        pd.Series(np.log(tie_rate), index=pd.Index(tie_users, dtype=object)),
    ]).groupby(level=0).sum()
    return per_user.astype(float).add(extra, fill_value=0.0)


def _heldout_result(variant: str, seed: int, per_user: pd.Series, n_heldout: int, with_ties: bool = False) -> dict:
    """What :func:`heldout_loglik` returns, from the per-user held-out log-likelihoods."""
    total = float(per_user.sum())
    return {
        "variant": variant,
        "seed": seed,
        "heldout_loglik": total,
        "n_heldout": int(n_heldout),
        "with_ties": bool(with_ties),
        "per_label": total / max(n_heldout, 1),
        "per_user": per_user,
    }


def _taste_heldout(prepared, hidden: np.ndarray, tastes, fit_kwargs: dict, model_ties: bool = False) -> pd.Series:
    """Held-out score of the taste-class model (``tastes`` an int > 1 or ``"auto"``): the
    training labels are fitted as :func:`bayes_annot.fit` fits them (with the casual covariates
    ``casual_covariates`` names, binned on the training rows, and the attentive style term
    ``style_covariates``, one ``delta`` shared by the classes), and the hidden ones scored
    by :func:`bayes_annot.tastes.heldout_user_scores` (the mixture over each user's types,
    casual and every taste class), the routine :func:`~bayes_annot.tastes.select_tastes` uses.
    ``hidden``: the held-out rows (decided, and ties when they are scored); ``model_ties``: ties enter the
    training fit (Davidson's ``nu``, the casual ``t``) and the held-out ties are scored by it."""
    from .casual import DEFAULT_BINS, casual_design
    from .data import casual_covariates, parse_casual_covariates
    from .fit import model_spec
    from .local_em import fit_taste_classes
    from .problem import build_problem
    from .tastes import heldout_user_scores, labelled_users, subproblem

    from .style import style_design

    unknown = set(fit_kwargs) - {"tastes", "q", "priors", "tol", "max_iter", "seed", "use_p_a", "casual_covariates",
                                 "casual_bins", "ties", "style_covariates"}
    if unknown:
        raise InputError(f"heldout_loglik with tastes does not take {', '.join(sorted(unknown))}")
    # the casual covariates as fit() reads them from the training rows: binned on those rows alone
    names, x = casual_covariates(prepared, parse_casual_covariates(fit_kwargs.get("casual_covariates", "auto")))
    design = None if x is None else casual_design(names, x[prepared.usable & ~hidden],
                                                  fit_kwargs.get("casual_bins", DEFAULT_BINS))
    prepared.casual_names, prepared.casual_x = (names, x) if design is not None else ((), None)
    # the attentive style term as fit() builds it: its cells' representative values from the training rows
    style = style_design(fit_kwargs.get("style_covariates", "none"), design,
                         None if design is None else x[prepared.usable & ~hidden],
                         columns=[str(c) for c in prepared.frame.columns])
    problem, _ = build_problem(prepared, use_p_a=False, casual=design, ties=model_ties, style=style is not None)
    held = hidden[prepared.usable]
    if model_ties:  # the decided labels, then the ties (subproblem's order)
        held = np.concatenate([held, hidden[tie_rows(prepared)]])
    train, test = subproblem(problem, ~held), subproblem(problem, held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = model_spec(tastes=tastes, q=fit_kwargs.get("q"), priors=fit_kwargs.get("priors")).with_casual(design)
        spec = spec if style is None else spec.with_style(style)
        res, _ = fit_taste_classes(
            train, spec, tol=fit_kwargs.get("tol", 1e-9), max_iter=fit_kwargs.get("max_iter", 1000),
            seed=fit_kwargs.get("seed", 0), max_tastes=4 if tastes == "auto" else None,
        )
    scores = heldout_user_scores(train, test, res)
    has_test = labelled_users(test)
    return pd.Series(scores[has_test], index=pd.Index(prepared.user_labels[has_test]))


def compare_heldout(fits: dict, frac: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Rank fitted results by held-out log-likelihood (:func:`heldout_loglik`).

    LOO needs the log-likelihood of every label over posterior draws; an EM or
    MAP fit has one point estimate, so each fit is refitted with its own
    settings on all but ``frac`` of every user's labels (the same hidden labels
    for every fit) and scored on the rest.

    Parameters
    ----------
    fits : dict
        ``{name: FitResult}`` of in-memory or loaded results (a Dask fit's rows
        stay on the workers: it cannot be refitted here).
    frac : float
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``rank, fit, variant, engine, heldout_loglik, n_heldout, per_label,
        difference_per_label`` (per held-out label, against the best), best first. When the
        log has ties every fit is scored on the ties too (three outcomes; a fit that ignores
        ties predicts them with the training tie rate).
    """
    records = []
    for name, result in fits.items():
        data = getattr(result, "data", None)
        summary = getattr(result, "summary", None)
        if data is None or not isinstance(summary, dict):
            raise InputError(f"'{name}': the held-out comparison refits each fit and needs its input rows "
                             "(a FitResult of fit() in memory, or load() of a folder with its rows table)")
        settings = summary.get("settings", {})
        cols = settings.get("columns", {})
        columns = ColumnMap(
            user=cols.get("user"), model_a=cols.get("model_a", "model_a"), model_b=cols.get("model_b", "model_b"),
            winner=cols.get("winner", "winner"), p_a=cols.get("p_a") or False, winner_values=settings.get("winner_values"),
        )
        kwargs = {"use_p_a": settings.get("use_p_a", True)}
        for key in ("casual_covariates", "casual_bins", "style_covariates"):  # refitted as they were fitted
            if settings.get(key) is not None:
                kwargs[key] = settings[key]
        if settings.get("q") is not None:
            kwargs["q"] = settings["q"]
        if settings.get("ties") in ("model", "ignore"):
            kwargs["ties"] = settings["ties"]
        if settings.get("tastes", 1) not in (1, None):
            kwargs["tastes"] = settings["tastes"]
        elif settings.get("mu") is not None:
            kwargs.update(mu=settings["mu"], strong_model=settings.get("strong_model"))
        frame = data.frame[np.asarray(data.reason_code) < 3]  # rows dropped as invalid are not refitted
        # every fit scores the same held-out labels: the ties too when the log has them
        scored = heldout_loglik(frame, variant=summary.get("variant", "two-class"), frac=frac, seed=seed, columns=columns,
                                with_ties=bool((np.asarray(data.reason_code) == 1).any()), **kwargs)
        records.append({"fit": str(name), "variant": summary.get("variant"), "engine": summary.get("engine"),
                        "heldout_loglik": scored["heldout_loglik"], "n_heldout": scored["n_heldout"],
                        "per_label": scored["per_label"]})
    table = pd.DataFrame(records).sort_values("heldout_loglik", ascending=False, kind="stable")
    table["difference_per_label"] = table["per_label"] - table["per_label"].iloc[0]
    table.insert(0, "rank", range(len(table)))
    return table.reset_index(drop=True)


def diagnose(result, *, taste_check: bool = False, compare: dict | None = None, frac: float = 0.2, seed: int = 0):
    """Compute the diagnostics that need refits and store them in ``result.summary`` (and so in ``summary.json``).

    The report never fits: it shows what the result holds. ``fit(...,
    taste_check=True)`` (``--taste-check``) stores the casual-group test;
    this function adds it, or a comparison, to a result afterwards (also to a
    loaded folder: ``save`` it again to keep them).

    Parameters
    ----------
    result : FitResult
    taste_check : bool
        Run the casual-group test (:func:`bayes_annot.fit.taste_diagnostic`) as
        ``fit(taste_check=True)`` does: ``summary["taste_diagnostic"]``. A fit with casual
        covariates is refitted with the same covariates and bins (``summary["casual_effects"]``).
    compare : dict, optional
        ``{name: FitResult}`` (include ``result`` itself to rank it among
        them): :func:`compare_heldout` stored as ``summary["comparison"]``,
        which the report's model-comparison section shows.
    frac, seed : float, int
        Of the held-out comparison; ``seed`` also seeds the casual-group test.

    Returns
    -------
    FitResult
        ``result``, with the entries added.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> log = ba.simulate(n_users=150, n_models=4, seed=3)
    >>> two = ba.fit(log)
    >>> two = ba.diagnose(two, compare={"two-class": two, "continuous": ba.fit(log, variant="continuous")})
    >>> list(two.summary["comparison"]["table"][0])[:3]
    ['rank', 'fit', 'variant']
    """
    from .errors import FitWarning, user_stacklevel
    from .local_em import taste_diagnostic
    from .problem import build_problem
    from .style import style_from_summary

    entries = {}
    if taste_check:
        settings = result.summary.get("settings") or {}
        if result.data is None:
            raise InputError("the casual-group test refits on the input rows, which this result does not hold "
                             "(a Dask fit: fit a sample in memory with taste_check=True)")
        design = design_from_summary(result.summary)  # the fit's casual covariates and bins: refitted with them
        if design is not None and tuple(result.data.casual_names) != design.names:
            prepare_casual(result.data, design=design)
        style = style_from_summary(result.summary)  # the fit's attentive style term (its cells' values)
        problem, _ = build_problem(result.data, mu=settings.get("mu"), strong_model=settings.get("strong_model"),
                                   use_p_a=settings.get("use_p_a", True), casual=design, style=style is not None)
        if result.summary.get("variant") != "two-class" or not problem.learned:
            raise InputError("taste_check needs variant='two-class' and learned strengths (no p_a column, no mu)")
        priors = Priors(**settings["priors"]) if isinstance(settings.get("priors"), dict) else None
        entries["taste_diagnostic"] = taste_diagnostic(problem, None, priors=priors, q_fixed=settings.get("q"), seed=seed,
                                                       casual=design, style=style)
    if compare:
        table = compare_heldout(compare, frac=frac, seed=seed)
        entries["comparison"] = {"method": "heldout_loglik", "frac": frac, "seed": seed,
                                 "table": table.replace({np.nan: None}).to_dict(orient="records")}
    check = entries.get("taste_diagnostic")
    message = check["message"] if check and check["verdict"] == "taste group" else None
    n_tastes = (result.summary.get("tastes") or {}).get("n_tastes", 1)
    base = getattr(result, "_summary_base", None)
    for summary in {id(s): s for s in (base, result.summary) if s is not None}.values():
        summary.update(entries)
        if message and n_tastes == 1 and message not in summary.setdefault("warnings", []):
            summary["warnings"].append(message)
    if message and n_tastes == 1:
        warnings.warn(message, FitWarning, stacklevel=user_stacklevel())
    return result
