"""Sections of the diagnostics report (HTML text; every piece of text is escaped).

Every section reads a :class:`~bayes_annot.fit.FitResult` (its tables, summary,
EM trace, posterior and, when it holds them, its rows): nothing here fits.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from html import escape

import numpy as np
import pandas as pd

from ..outdir import REPORT_MARKER


#: (anchor, heading) of every section, in page order.
SECTIONS = (
    ("warnings", "Warnings"),
    ("data", "Data"),
    ("strengths", "Model strengths"),
    ("quality", "User quality"),
    ("tastes", "Taste or noise?"),
    ("decision", "The decision: whom to keep"),
    ("convergence", "Convergence"),
    ("ppc", "Posterior predictive check"),
    ("comparison", "Model comparison"),
    ("settings", "Settings and provenance"),
)


RHAT_MAX = 1.01
ESS_MIN = 400

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1a202c;background:#f7fafc;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin:0 0 4px}h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px;margin-top:40px}
h3{font-size:1.05em;margin:20px 0 6px}
.sub{color:#4a5568;margin:0 0 16px}
nav{font-size:.9em;margin:12px 0 8px}nav a{margin-right:14px;color:#2b6cb0;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #e2e8f0;border-radius:6px;padding:8px 14px;min-width:110px;background:#f8fafc}
.card .v{font-size:1.35em;font-weight:600}.card .k{font-size:.8em;color:#4a5568}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em}
th,td{border:1px solid #e2e8f0;padding:3px 9px;text-align:right}th{background:#edf2f7}
td.t,th.t{text-align:left}table.kv td{text-align:left}
.warn{background:#fffaf0;border-left:4px solid #dd6b20;padding:6px 12px;margin:6px 0}
.note{background:#ebf8ff;border-left:4px solid #3182ce;padding:6px 12px;margin:6px 0}
.ok{background:#f0fff4;border-left:4px solid #38a169;padding:6px 12px;margin:6px 0}
.fig{margin:10px 0}.fig img{max-width:100%;height:auto;border:1px solid #edf2f7}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.row .fig{flex:1 1 420px}
.muted{color:#718096;font-size:.9em}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;font-size:.8em;overflow-x:auto}
code{background:#edf2f7;padding:0 3px;border-radius:3px}
"""

REASON_MEANING = {
    "ok": "kept: enters the likelihood and its user passed the filter",
    "tie": "the user declared a tie: never a DPO pair (in the likelihood unless ties are ignored)",
    "same_model": "both responses came from the same model; carries no information",
    "user_low_quality": "in the likelihood, but its user did not pass the filter",
    "no_verdict": "in the likelihood, but its labels cannot decide for or against its user "
    "(kept or dropped by the no_verdict policy)",
}


# --------------------------------------------------------------------------- html helpers


def p(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def box(text: str, cls: str) -> str:
    return f'<div class="{cls}">{escape(text)}</div>'


def table(frame: pd.DataFrame, index: bool = False, digits: int = 3) -> str:
    """An escaped HTML table; numeric columns right-aligned, text left-aligned."""
    if index:
        frame = frame.reset_index()

    def fmt(v):
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}" if abs(v) >= 1e5 or (abs(v) < 1e-3 and v != 0) else f"{v:.{digits}f}"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return str(v)

    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns]
    head = "".join(f'<th class="{"n" if n else "t"}">{escape(str(c))}</th>' for c, n in zip(frame.columns, numeric))
    body = []
    for row in frame.itertuples(index=False, name=None):
        cells = "".join(f'<td class="{"n" if n else "t"}">{escape(fmt(v))}</td>' for v, n in zip(row, numeric))
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def kv_table(pairs) -> str:
    body = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "—"
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def figure(draw, *, figsize=(6.4, 4.0), alt: str = "figure") -> str:
    """Run ``draw(ax)`` on a fresh figure and return an inline ``<img>`` (or a note if drawing fails)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the report needs matplotlib: pip install 'bayes_annot[plot]'") from exc
    try:
        fig = Figure(figsize=figsize, dpi=100)
        ax = fig.subplots()
        draw(ax)
        return _png(fig, alt)
    except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the report
        return box(f"This figure could not be drawn ({type(exc).__name__}: {exc}).", "warn")


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="fig"><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></div>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>\n{body}\n</section>'


# --------------------------------------------------------------------------- warnings


def _used_components(src) -> int:
    """Connected parts of the comparison graph among models that appear in the likelihood (0 if unknown)."""
    data = src.data
    if data is None:
        return 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    usable = data.usable
    if not usable.any():
        return 0
    k = data.n_models
    graph = coo_matrix((np.ones(int(usable.sum())), (data.model_a[usable], data.model_b[usable])), shape=(k, k))
    _, labels = connected_components(graph, directed=False)
    used = np.unique(np.concatenate([data.model_a[usable], data.model_b[usable]]))
    return int(len(np.unique(labels[used])))


def plain_warnings(src, few_labels: int = 5) -> tuple[list[str], list[str]]:
    """(warnings, notes) in plain words: the fit's own warnings plus checks of the report."""
    s = src.summary
    fit_warnings = [str(w) for w in s.get("warnings", []) or []]
    joined = " ".join(fit_warnings).lower()
    out = list(fit_warnings)
    notes = [str(n) for n in s.get("notes", []) or []]
    counts = s.get("counts", {}) or {}

    if s.get("converged") is False and "converge" not in joined and "r-hat" not in joined:
        out.append(
            f"The {s.get('engine', '')} fit did not converge: the numbers in this report may change if it is run longer."
        )
    rhat, ess, div = s.get("rhat_max"), s.get("ess_bulk_min"), s.get("divergences")
    if rhat is not None and rhat > RHAT_MAX and "r-hat" not in joined:
        out.append(f"The chains disagree (largest R-hat {rhat:.3f} > {RHAT_MAX}): the posterior is not reliable.")
    if ess is not None and ess < ESS_MIN and "ess" not in joined:
        out.append(f"Few effective draws (smallest bulk ESS {ess:.0f} < {ESS_MIN}): intervals are imprecise.")
    if div and "divergent" not in joined:
        out.append(f"{div} divergent transition(s): the sampler missed part of the posterior; results may be biased.")

    parts = _used_components(src)
    if parts > 1 and "disconnected" not in joined:
        out.append(
            f"The comparison graph has {parts} disconnected parts: models in different parts were never "
            "compared, so their strengths cannot be compared with each other."
        )

    users = src.users
    if "n_labels" in users and len(users):
        n = pd.to_numeric(users["n_labels"], errors="coerce").fillna(0).to_numpy()
        few = int(((n > 0) & (n < few_labels)).sum())
        active = int((n > 0).sum())
        if few:
            notes.append(
                f"{few} of {active} users ({few / max(active, 1):.0%}) have fewer than {few_labels} labels in the "
                "likelihood: too few to judge. Their quality stays close to the population average and "
                "keeping or dropping them is largely a guess."
            )
        none = int((n == 0).sum())
        if none:
            notes.append(
                f"{none} user(s) have no label in the likelihood (only ties or same-model pairs); "
                "no verdict is made on them."
            )
    kept_users = counts.get("kept_users", s.get("filter", {}).get("kept_users"))
    if kept_users == 0 and counts.get("users") and "no user passed" not in joined:
        out.append("No user passed the filter: the filtered data set is empty. Loosen the rule or check the fit.")
    if counts.get("models", 0) and counts.get("rows_in_likelihood", 0) == 0 and "no row enters" not in joined:
        out.append("No row enters the likelihood (all ties or same-model pairs): nothing can be estimated.")
    length = casual_length_warning(s)
    if length is not None:
        out.append(length)
    return out, notes


#: A casual effect of the length covariate beyond this (log-odds, in its largest bin) is reported as a warning.
LENGTH_EFFECT_WARN = 0.5


def casual_length_warning(summary: dict) -> str | None:
    """The warning when casual clicks follow length: the length covariate's effect in its largest bin
    beyond :data:`LENGTH_EFFECT_WARN` (``None`` otherwise, or without the covariate)."""
    effects = summary.get("casual_effects") or {}
    for cov in effects.get("covariates", []):
        if cov.get("name") != "log_length_ratio" or not cov.get("g"):
            continue
        g = float(cov["g"][-1])
        if abs(g) <= LENGTH_EFFECT_WARN:
            return None
        edge = cov["edges"][-1] if cov.get("edges") else 0.0
        which = "longer" if g > 0 else "shorter"
        return (
            f"Casual clicks follow length: when one response is more than {np.exp(edge):.2f} times as long as the "
            f"other, a casual user picks the {which} one with probability {1.0 / (1.0 + np.exp(-abs(g))):.2f} "
            "(at no position bias). The fit models this (casual covariate log_length_ratio); without it "
            "(--casual-covariates none), users who click the longer answer look attentive whenever stronger "
            "models write longer answers."
        )
    return None


def style_effects_text(summary: dict) -> str | None:
    """One sentence on the attentive style effects (``summary["style_effects"]``), to read next to the casual
    effects: reading-based preference (``delta``) versus click-based (the casual ``g``); ``None`` without a style term."""
    effects = (summary or {}).get("style_effects") or {}
    covs = effects.get("covariates") or []
    if not covs:
        return None
    parts = []
    for c in covs:
        delta = float(c["delta"])
        parts.append(f"{c['name']}: delta = {delta:+.3f} (an attentive user's odds of picking model_a are multiplied "
                     f"by {np.exp(delta):.2f} per unit of {c['name']})")
    return ("Attentive style term (style control: attentive log-odds s_a - s_b + delta·x, x at each casual bin's "
            "mean): " + "; ".join(parts) + ". This is preference after reading; the casual effects above are "
            "clicks without reading.")


def casual_effects_table(summary: dict) -> pd.DataFrame | None:
    """One row per bin of each casual covariate: the bin of ``|x|``, the effect ``g`` and the chance a casual
    click picks the side with the larger value at no position bias (``sigmoid(g)``); ``None`` without covariates."""
    effects = summary.get("casual_effects") or {}
    rows = []
    for cov in effects.get("covariates", []):
        edges = [0.0] + [float(e) for e in cov.get("edges", [])] + [np.inf]
        length = cov.get("name") == "log_length_ratio"
        for j, g in enumerate(cov.get("g", [])):
            lo, hi = edges[j], edges[j + 1]
            if length:
                span = f"{np.exp(lo):.2f}–{np.exp(hi):.2f}" if np.isfinite(hi) else f"> {np.exp(lo):.2f}"
                label = f"length ratio {span}"
            else:
                label = f"|x| {lo:.3g}–{hi:.3g}" if np.isfinite(hi) else f"|x| > {lo:.3g}"
            rows.append({"covariate": cov.get("name"), "bin": label, "effect g": float(g),
                         "P(casual picks the larger side)": float(1.0 / (1.0 + np.exp(-float(g))))})
    return pd.DataFrame(rows) if rows else None


# --------------------------------------------------------------------------- sections


def _header(src, title: str | None) -> str:
    s = src.summary
    c = s.get("counts", {}) or {}
    f = s.get("filter", {}) or {}
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    inp = _input_text(s.get("input"))
    sub = (
        f"{s.get('variant', '?')} variant, {s.get('engine', '?')} engine, bayes_annot {s.get('bayes_annot_version', '?')}"
        f"; report written {when}" + (f"; input {inp}" if inp else "")
        + ("; rebuilt from saved outputs" if src.backend == "folder" else "")
    )
    cards = [
        ("rows", c.get("rows")),
        ("users", c.get("users")),
        ("models", c.get("models")),
        ("kept users", c.get("kept_users")),
        ("kept rows", c.get("kept_rows")),
        ("expected casual share among kept", f.get("expected_casual_share")),
        ("runtime (s)", s.get("runtime_seconds")),
    ]
    cards_html = "".join(
        f'<div class="card"><div class="v">{escape(_fmt(v))}</div><div class="k">{escape(k)}</div></div>' for k, v in cards
    )
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in SECTIONS)
    intro = (
        "Each user picked one of two responses that came from two different models. An attentive user picks "
        "the stronger model's response more often than chance; a casual user clicks without reading. This report "
        "shows how the fitted model separates the two, how sure it is, and which labels it keeps."
    )
    return (
        f"<h1>{escape(title or 'bayes_annot diagnostics report')}</h1>"
        f'<p class="sub">{escape(sub)}</p>{p(intro)}<div class="cards">{cards_html}</div><nav>{nav}</nav>'
    )


def _warnings_section(src, few_labels: int) -> str:
    warns, notes = plain_warnings(src, few_labels)
    body = "".join(box(w, "warn") for w in warns) or box("No warnings: nothing in the fit or the data calls for caution.", "ok")
    body += "".join(box(n, "note") for n in notes)
    return body


def _data_section(src) -> str:
    from ..plotting import plot_comparison_matrix, plot_labels_per_user

    s = src.summary
    c = s.get("counts", {}) or {}
    pairs = [
        ("input rows", c.get("rows")),
        ("rows in the likelihood", c.get("rows_in_likelihood")),
        ("ties", c.get("ties")),
        ("same-model pairs", c.get("same_model")),
        ("users", c.get("users")),
        ("users with labels in the likelihood", c.get("users_in_likelihood")),
        ("uninformative users", c.get("uninformative_users")),
        ("models", c.get("models")),
        ("connected parts of the comparison graph", s.get("comparison_graph_components")),
        ("attentive probabilities", s.get("strengths")),
    ]
    body = kv_table(pairs)
    body += "<h3>Rows dropped and why</h3>"
    if src.backend != "dask" and src.rows is not None and "reason" in src.rows:  # Dask: rows on the workers
        vc = src.rows["reason"].astype(str).value_counts()
        reasons = pd.DataFrame({"reason": vc.index, "rows": vc.to_numpy()})
    else:
        in_lik = c.get("rows_in_likelihood", 0) or 0
        kept = c.get("kept_rows", 0) or 0
        reasons = pd.DataFrame(
            {
                "reason": ["ok", "tie", "same_model", "user_low_quality"],
                "rows": [kept, c.get("ties", 0) or 0, c.get("same_model", 0) or 0, in_lik - kept],
            }
        )
    reasons = reasons[reasons["rows"] > 0]
    total = max(int(reasons["rows"].sum()), 1)
    reasons["share"] = reasons["rows"] / total
    reasons["meaning"] = [REASON_MEANING.get(r, "dropped (see the rows table)") for r in reasons["reason"]]
    body += table(reasons)
    body += p(
        "Every input row appears in rows.csv with its reason; rows marked 'ok' are the filtered data set, and every "
        "row carries a weight (its user's quality) for weighted training.",
        "muted",
    )
    k = int(c.get("models", 0) or 0)
    size = min(9.0, max(4.5, 0.42 * k + 2.5))
    body += '<div class="row">'
    body += figure(lambda ax: plot_labels_per_user(src, ax=ax), figsize=(5.6, 4.0), alt="labels per user")
    body += figure(lambda ax: plot_comparison_matrix(src, ax=ax), figsize=(size + 1.2, size), alt="comparison matrix")
    body += "</div>"
    return body


def _strengths_section(src) -> str:
    from ..plotting import plot_strengths

    models = src.models
    k = len(models)
    body = p(
        "Bradley–Terry strengths of the models as learned from the attentive labels (log-odds; the strengths sum to "
        "zero). An attentive user prefers a model with strength s1 over one with s2 with probability "
        "1 / (1 + exp(s2 − s1)). Intervals are shown when the posterior was sampled."
    )
    body += figure(lambda ax: plot_strengths(src, ax=ax), figsize=(6.4, max(2.6, 0.32 * k + 1.2)), alt="strengths")
    if k and "strength" in models:
        shown = models.sort_values("strength", ascending=False)
        cols = [c for c in ("model", "strength", "strength_low", "strength_high", "n_labels") if c in shown]
        body += table(shown[cols].head(60))
        if k > 60:
            body += p(f"{k - 60} more models in models.csv.", "muted")
    return body


def _quality_section(src) -> str:
    from ..plotting import plot_quality_caterpillar, plot_quality_distribution

    s = src.summary
    params = s.get("parameters", {}) or {}
    names = {
        "pi": "pi — share of attentive users",
        "q": "q — a casual user's chance of picking the left (first) response",
        "m": "m — mean of logit(quality)",
        "tau": "tau — spread of logit(quality) between users",
        "mean_quality": "mean quality of users with labels",
        "tie_nu": "nu — attentive users' tie parameter (Davidson: ties on even pairs nu / (2 + nu))",
        "casual_tie_rate": "t — a casual user's chance of declaring a tie",
    }
    body = kv_table([(names.get(k, k), v) for k, v in params.items()])
    ties = s.get("ties") or {}
    if ties.get("n_ties"):
        body += p(f"{ties['n_ties']} ties in the log: " + (
            "in the likelihood (attentive ties follow Davidson's model, more ties on close pairs; casual ties "
            "the rate t); they are never kept for export." if ties.get("mode") == "model" else
            "counted and left out of the likelihood (ties='ignore')."))
    effects = casual_effects_table(s)
    if effects is not None:
        body += p(
            "Casual clicks follow covariates: the casual log-odds of picking model_a are beta_0 + the effect g of "
            "the bin, signed by which side has the larger value (beta_0 = logit(q) is the position bias at equal "
            f"values; beta_0 = {float(s['casual_effects']['beta0']):.3f})."
        )
        body += table(effects)
    style = style_effects_text(s)
    if style is not None:
        body += p(style)
    if s.get("variant") == "two-class":
        body += p(
            "Quality of a user = the posterior probability that they are attentive (all their labels attentive) "
            "rather than casual (all their labels random clicks)."
        )
    else:
        body += p(
            "Quality of a user = the share of their labels that are attentive (eta); the rest are random clicks."
        )
    n_active = int((pd.to_numeric(src.users.get("n_labels", pd.Series(dtype=float)), errors="coerce") > 0).sum())
    n_show = min(n_active, 60)
    body += '<div class="row">'
    body += figure(lambda ax: plot_quality_distribution(src, ax=ax), figsize=(5.6, 4.0), alt="quality distribution")
    body += figure(
        lambda ax: plot_quality_caterpillar(src, max_users=60, ax=ax),
        figsize=(6.2, max(3.0, 0.12 * n_show + 1.2)),
        alt="quality caterpillar",
    )
    body += "</div>"
    return body


RULE_TEXT = {
    "prob": "keep users whose quality (posterior probability of being attentive) is at least {v}",
    "fdr": "keep the largest set of best users whose expected share of casual users is at most {v} "
    "(Bayesian false-discovery control)",
    "credible": "keep users whose lower credible bound of quality is at least {v}",
    "none": "keep every user (no filter; use the weights)",
}


def _tastes_section(src) -> str:
    s = src.summary
    body = ""
    selection = s.get("taste_selection")
    if selection:
        frame = pd.DataFrame(selection["table"])
        body += box(selection["message"], "note")
        keep = [c for c in ("n_tastes", "heldout_loglik", "heldout_se", "bic", "casual_share", "starts_agreed", "chosen") if c in frame]
        body += table(frame[keep])

        def draw(ax):
            ax.errorbar(frame["n_tastes"], frame["heldout_loglik"], yerr=frame.get("heldout_se"), marker="o", capsize=3)
            chosen = frame.loc[frame["n_tastes"] == selection["chosen"]]
            ax.plot(chosen["n_tastes"], chosen["heldout_loglik"], "o", ms=12, mfc="none", mec="C3", label="chosen")
            ax.set_xlabel("taste classes C")
            ax.set_ylabel("held-out log-likelihood")
            ax.set_xticks(frame["n_tastes"])
            ax.legend()

        body += figure(draw, figsize=(5.5, 3.4), alt="held-out log-likelihood by number of taste classes")
    if "tastes" in s:
        t = s["tastes"]
        body += p(
            f"This fit uses {t['n_tastes']} taste classes ({t['ordering']}); {t['starts_agreed']} of {t['n_starts']} "
            "seeded starts reached the best optimum. Quality is the probability that a user is not casual, whatever their taste."
        )
        cols = [c for c in src.models.columns if c.startswith("strength_taste_")]
        if cols:
            body += table(src.models[["model", *cols]])
    # the verdict the fit stored (fit(taste_check=True) / --taste-check, or tastes='auto'): never recomputed here
    check = s.get("taste_diagnostic")
    if check:
        text = check["message"]
        body += box(text, "warn" if check["verdict"] == "taste group" else "note")
    if not body:
        body = p(
            "One ranking is assumed for all attentive users, and the casual-group test was not run. Fit with "
            "--taste-check (taste_check=True) to test whether the users flagged casual follow a coherent alternative "
            "ranking instead of clicking at random, or with --tastes auto to also choose a number of taste classes.",
            "muted",
        )
    return body


def _decision_section(src) -> str:
    s = src.summary
    f = s.get("filter", {}) or {}
    c = s.get("counts", {}) or {}
    rule = str(f.get("rule", "?"))
    kind, _, value = rule.partition(":")
    text = RULE_TEXT.get(kind, "rule {v}").format(v=value or rule)
    users, kept_u = c.get("users_in_likelihood") or c.get("users"), f.get("kept_users", c.get("kept_users"))
    rows, kept_r = c.get("rows_in_likelihood") or c.get("rows"), f.get("kept_rows", c.get("kept_rows"))
    pairs = [
        ("rule", rule),
        ("in words", text),
        ("kept users", f"{_fmt(kept_u)} of {_fmt(users)} users with labels"
         + (f" ({kept_u / users:.1%})" if users and kept_u is not None else "")),
        ("kept rows", f"{_fmt(kept_r)} of {_fmt(rows)} rows in the likelihood"
         + (f" ({kept_r / rows:.1%})" if rows and kept_r is not None else "")),
        ("expected share of casual users among the kept", f.get("expected_casual_share")),
    ]
    for key, value in f.items():
        if key not in ("rule", "kept_users", "kept_rows", "expected_casual_share"):
            pairs.append((key, value))
    body = kv_table(pairs)
    body += p(
        "The expected casual share is the average of (1 − quality) over the kept users: the share of kept users the "
        "model expects to be casual after all. Soft weights (each row's weight = its user's quality) are an "
        "alternative to a hard cut-off.",
        "muted",
    )
    return body


#: Posterior variables never treated as global parameters in diagnostics.
GLOBAL_EXCLUDE = ("z", "theta", "eta", "quality", "p_attentive", "p_good", "logit_eta", "y_user")


def global_var_names(idata) -> list[str]:
    """Posterior variables without a ``user`` dimension (``pi``, ``q``, ``strength``, ...), in display order."""
    if idata is None or not hasattr(idata, "posterior"):
        return []
    out = []
    for name, var in idata.posterior.data_vars.items():
        dims = [str(d) for d in var.dims if d not in ("chain", "draw")]
        if name in GLOBAL_EXCLUDE or any(d.startswith(("user", "cell")) for d in dims):
            continue
        if var.size // max(int(var.sizes.get("chain", 1)) * int(var.sizes.get("draw", 1)), 1) > 200:
            continue
        if np.issubdtype(var.dtype, np.number):
            out.append(str(name))
    order = {"pi": 0, "m": 1, "tau": 2, "q": 3, "strength": 4}
    return sorted(out, key=lambda n: (order.get(n, 10), n))


def _global_summary(src, var_names) -> pd.DataFrame | None:
    import arviz as az

    try:
        summary = az.summary(src.idata, var_names=var_names, round_to="none")
    except Exception:  # noqa: BLE001
        return None
    summary.index.name = "parameter"
    for col in ("ess_bulk", "ess_tail"):
        if col in summary:
            summary[col] = summary[col].round().astype("Int64")
    return summary.reset_index()


def _convergence_section(src) -> str:
    from ..plotting import plot_loglik_trace

    s = src.summary
    body = ""
    if src.sampled:
        post = src.idata.posterior
        pairs = [
            ("chains × draws", f"{post.sizes.get('chain', 1)} × {post.sizes.get('draw', 1)}"),
            ("largest R-hat (want ≤ 1.01)", s.get("rhat_max")),
            ("smallest bulk ESS (want ≥ 400)", s.get("ess_bulk_min")),
            ("divergent transitions (want 0)", s.get("divergences")),
            ("converged", s.get("converged")),
        ]
        body += kv_table(pairs)
        names = global_var_names(src.idata)
        if names:
            frame = _global_summary(src, names)
            if frame is not None:
                body += "<h3>Global parameters (az.summary)</h3>" + table(frame.head(80))
            body += "<h3>Rank plots of the global parameters</h3>"
            body += p(
                "Each panel shows, per chain, where its draws rank among all draws. Well-mixed chains give flat, "
                "overlapping bars; a chain stuck in one region stands out.",
                "muted",
            )
            body += _rank_plots(src, names)
        else:
            body += box("No global parameter found in the posterior to plot.", "note")
        return body
    body += kv_table(
        [
            ("engine", s.get("engine")),
            ("iterations", s.get("iterations")),
            ("converged", s.get("converged")),
            ("final penalised log-likelihood" if src.loglik_trace else "log-likelihood", s.get("loglik")),
        ]
    )
    if src.loglik_trace:
        trace = np.asarray(src.loglik_trace, dtype=float)
        body += p(
            "EM raises the penalised log-likelihood at every iteration (left); the right panel shows the distance to "
            "the final value on a log scale, which should fall steadily to the tolerance.",
            "muted",
        )

        def gap(ax):
            g = trace.max() - trace
            it = np.arange(len(trace))
            ok = g > 0
            if ok.any():
                ax.semilogy(it[ok], g[ok], marker="o", markersize=3, color="#2b6cb0")
            ax.set_xlabel("EM iteration")
            ax.set_ylabel("final − current log-likelihood")
            ax.set_title("Distance to the final value")
            ax.grid(alpha=0.3)

        body += '<div class="row">'
        body += figure(lambda ax: plot_loglik_trace(src, ax=ax), figsize=(5.2, 3.6), alt="EM trace")
        body += figure(gap, figsize=(5.2, 3.6), alt="EM gap")
        body += "</div>"
    elif src.backend == "folder" and s.get("engine") == "em":
        body += box("The per-iteration EM trace is not kept in saved outputs; the table above is what was saved.", "note")
    elif s.get("engine") == "map":
        body += box("MAP is an optimisation: there is no chain to diagnose. Sample with method='nuts' for intervals.", "note")
    return body


def _rank_plots(src, names) -> str:
    try:
        import arviz as az
        import matplotlib.pyplot as plt

        post = src.idata.posterior
        coords = {}
        if "model" in post.dims and post.sizes["model"] > 10:
            labels = list(post["model"].values)
            coords["model"] = labels[:5] + labels[-5:]
        n_panels = 0
        for n in names:
            dims = [d for d in post[n].dims if d not in ("chain", "draw")]
            n_panels += int(np.prod([len(coords[d]) if d in coords else post[n].sizes[d] for d in dims] or [1]))
        rows = (n_panels + 2) // 3
        axes = az.plot_rank(src.idata, var_names=names, coords=coords or None, kind="bars",
                            figsize=(10, 2.2 * rows), show=False)
        fig = np.ravel(axes)[0].figure
        for a in np.ravel(axes):
            a.set_title(a.get_title().replace("\n", " "), fontsize=9)
            a.xaxis.label.set_fontsize(8)
            a.yaxis.label.set_fontsize(8)
            a.tick_params(labelsize=7)
        fig.tight_layout()
        try:
            return _png(fig, "rank plots")
        finally:
            plt.close(fig)
    except Exception as exc:  # noqa: BLE001
        return box(f"Rank plots could not be drawn ({type(exc).__name__}: {exc}).", "warn")


def _ppc_ties_part(src, n_rep: int, seed: int) -> str:
    """The ties' check: per-user tie rates, observed against replicated (empty when the log has no ties)."""
    from ..plotting import PPC_RANGE, plot_ppc_tie_rates, ppc_range_percentiles, ppc_tie_rates

    try:
        ppc = ppc_tie_rates(src, n_rep=n_rep, seed=seed)
    except Exception as exc:  # noqa: BLE001
        return box(f"The tie-rate check could not be run ({type(exc).__name__}: {exc}).", "warn")
    if ppc is None:
        return ""
    body = "<h3>Tie rate per user</h3>" + p(
        "For every user with at least 5 labels, the share of their labels that are ties. Bars: observed. Points: "
        "data sets simulated from the fitted model — "
        + ("attentive labels tie with Davidson's probability on the pair's fitted strengths, casual ones at the "
           "casual tie rate t. One t for the casual class: if some users spam the tie button and others never "
           "tie, the bars at the extremes leave the whiskers."
           if ppc["modelled"] else
           "ties were ignored by this fit, so every label is replicated with the log's overall tie rate.")
    )
    body += figure(lambda ax: plot_ppc_tie_rates(src, n_rep=n_rep, seed=seed, ax=ax), figsize=(7.6, 4.2),
                   alt="tie rate per user check")
    r_lo, r_hi = np.percentile(ppc["replicated_counts"], ppc_range_percentiles(), axis=0)
    outside = int(((ppc["observed_counts"] < r_lo) | (ppc["observed_counts"] > r_hi)).sum())
    lo, hi = np.percentile(ppc["high_share_replicated"], ppc_range_percentiles())
    obs = ppc["high_share_observed"]
    text = (f"Users tying at least half the time: observed {obs:.1%}, replicated {PPC_RANGE}% range {lo:.1%}–{hi:.1%}; "
            f"{outside} of {len(r_lo)} bins outside the replicated range.")
    if outside == 0 and lo <= obs <= hi:
        return body + box(text + " The fitted tie behaviour reproduces the users' tie rates.", "ok")
    advice = ("" if ppc["modelled"] else " Fit with ties modelled (--ties model).")
    return body + box(text + " The tie rates vary between users more (or less) than the fit explains." + advice, "warn")


def _ppc_section(src, n_rep: int, seed: int) -> str:
    from ..plotting import PPC_RANGE, plot_ppc_agreement, ppc_agreement, ppc_range_percentiles

    body = p(
        "For every user, the share of their labels that picked the stronger of the two models (by the fitted "
        "strengths). Bars: what was observed. Points: the same histogram over data sets simulated from the fitted "
        "model — each user's type (or each label's attentiveness) drawn from their fitted quality, attentive "
        "labels following the strengths, casual ones clicking left with probability q. If the model fits, the bars "
        "sit within the whiskers."
    )
    try:
        ppc = ppc_agreement(src, n_rep=n_rep, seed=seed)
    except Exception as exc:  # noqa: BLE001
        return body + box(f"The check could not be run ({type(exc).__name__}: {exc}).", "warn")
    if ppc is None:
        return body + box("The check needs the rows of the fit and the fitted strengths, which are not available here.", "note")
    if ppc.get("n_tastes", 1) > 1:
        body += p(
            f"With {ppc['n_tastes']} taste classes, a label counts for each class with the user's posterior class "
            "weight, the stronger model being that class's, and each replicated user is casual or attentive under "
            "one class, drawn from their posterior."
        )
    if ppc["sampled"]:
        body += p("Each replicated data set uses one posterior draw of every parameter.", "muted")
    body += figure(lambda ax: plot_ppc_agreement(src, n_rep=n_rep, seed=seed, ax=ax), figsize=(7.6, 4.2),
                   alt="posterior predictive check")
    span = PPC_RANGE  # the figure's whiskers and this text give one range
    lo, hi = np.percentile(ppc["low_share_replicated"], ppc_range_percentiles())
    obs = ppc["low_share_observed"]
    rep = ppc["replicated_counts"]
    r_lo, r_hi = np.percentile(rep, ppc_range_percentiles(), axis=0)
    outside = int(((ppc["observed_counts"] < r_lo) | (ppc["observed_counts"] > r_hi)).sum())
    if lo <= obs <= hi:
        body += box(
            f"Users agreeing with the stronger model at most half the time: observed {obs:.1%}, "
            f"replicated {span}% range {lo:.1%}–{hi:.1%}. The model reproduces this feature of the data.",
            "ok",
        )
    else:
        body += box(
            f"Users agreeing with the stronger model at most half the time: observed {obs:.1%}, but the fitted "
            f"model produces {lo:.1%}–{hi:.1%} ({span}% range). The model does not reproduce the data here; "
            "consider the other variant or more taste classes.",
            "warn",
        )
    body += p(
        f"{outside} of {len(r_lo)} histogram bins fall outside the replicated {span}% range"
        + ("" if ppc["sampled"] else " (replicated from point estimates: parameter uncertainty is not included)")
        + ".",
        "muted",
    )
    body += _ppc_covariate_part(src, n_rep, seed)
    return body


def ppc_verdict_ok(n_outside: int, n_checked: int) -> bool:
    """The covariate-bin check passes when at most one bin in ten (and at least one) falls outside the
    replicated 95% range: one in twenty does by chance when the model fits."""
    return n_outside <= max(1, int(np.ceil(0.1 * n_checked)))


def _ppc_covariate_part(src, n_rep: int, seed: int) -> str:
    """The posterior predictive check by casual-covariate bin (:func:`bayes_annot.plotting.ppc_length_bins`)."""
    from ..plotting import PPC_RANGE, plot_ppc_length_bins, ppc_length_bins

    head = "<h3>By length-ratio bin (casual covariates)</h3>"
    try:
        frame = ppc_length_bins(src, n_rep=n_rep, seed=seed)
    except Exception as exc:  # noqa: BLE001
        return head + box(f"The check by covariate bin could not be run ({type(exc).__name__}: {exc}).", "warn")
    if frame is None:
        return head + p("The check by length-ratio bin is omitted: this fit has no casual covariates and no "
                        "response texts in its rows (or the result does not hold its rows or fitted strengths).",
                        "muted")
    names = list(dict.fromkeys(frame["covariate"]))
    fitted = frame.attrs.get("fitted", True)
    body = head + p(
        "Each label on a pair of models with different fitted strengths, oriented so that the stronger model comes "
        f"first, falls in a bin of {', '.join(names)} (right: the stronger model's response is the longer; left: "
        "the shorter). Points: the observed share of labels that picked the stronger model, for the users the fit "
        "calls casual and those it calls attentive (quality at least 0.5); bars: the same share in data sets "
        "replicated from the fitted model, users grouped by the same rule. Casual clicks that follow length make "
        "the casual users' share climb from left to right; a model whose casual side ignores length cannot "
        "replicate that."
    )
    if not fitted:
        body += p("This fit's casual clicks follow position only (no casual covariates): the bins are those a fit "
                  "with the default covariates would use.", "muted")
    for name in names:
        body += figure(lambda ax, name=name: plot_ppc_length_bins(src, table=frame, covariate=name, ax=ax),
                       figsize=(7.6, 4.2), alt=f"posterior predictive check by {name} bin")
    n_out, n_checked = int(frame["outside"].sum()), int(frame["checked"].sum())
    verdict = f"{n_out} of {n_checked} bins fall outside the replicated {PPC_RANGE}% range"
    if ppc_verdict_ok(n_out, n_checked):
        body += box(verdict + ": the model reproduces how choices vary with "
                    + ", ".join(names) + ".", "ok")
    else:
        advice = ("fit with casual_covariates='auto' (--casual-covariates auto) so casual clicks may follow length"
                  if not fitted else "the casual effects or the strengths miss part of how choices vary with it; "
                  "consider more bins (casual_bins) or taste classes")
        body += box(verdict + f": the model does not reproduce how choices vary with {', '.join(names)}; "
                    + advice + ".", "warn")
    subset = frame.attrs.get("n_users", 0) < frame.attrs.get("n_users_all", 0)
    notes = []
    if subset:
        notes.append(f"checked on a random {frame.attrs['n_users']:,} of {frame.attrs['n_users_all']:,} users")
    if not frame.attrs.get("sampled", False):
        notes.append("replicated from point estimates: parameter uncertainty is not included")
    if notes:
        body += p("(" + "; ".join(notes) + ".)", "muted")
    return body


HOW_TO_COMPARE = (
    "Fit both variants (two-class and continuous) and compare them on predictive grounds: "
    "bayes_annot.diagnose(result, compare={'two-class': two, 'continuous': cont}) refits each on 80% of every "
    "user's labels, scores the rest (held-out log-likelihood) and stores the table in the result (and so in "
    "summary.json), where this section shows it; or pass comparison= (an arviz.compare table of NUTS fits, "
    "bayes_annot.evaluate.compare_heldout(...), or {name: result} of sampled fits)."
)


def _comparison_section(src, comparison) -> str:
    if comparison is None and isinstance(src.summary.get("comparison"), dict):
        stored = src.summary["comparison"]
        return p("Stored in the result by bayes_annot.diagnose.", "muted") + _comparison_table(
            pd.DataFrame(stored.get("table") or []), stored.get("frac", 0.2), stored.get("seed", 0))
    if comparison is None:
        return p("No comparison was requested. " + HOW_TO_COMPARE, "muted")
    if isinstance(comparison, pd.DataFrame):
        frame = comparison
    elif isinstance(comparison, dict):
        if any(_is_point_estimate(v) for v in comparison.values()):
            return box(
                "EM and MAP fits have one point estimate, nothing for LOO; comparing them by held-out "
                "log-likelihood refits each one, and the report never fits. " + HOW_TO_COMPARE, "note",
            )
        import arviz as az

        try:
            idatas = {str(k): getattr(v, "idata", v) for k, v in comparison.items()}
            frame = az.compare(idatas, ic="loo")
        except Exception as exc:  # noqa: BLE001
            return box(f"LOO comparison could not be computed ({type(exc).__name__}: {exc}).", "warn")
    else:
        return box(f"Unrecognised comparison argument of type {type(comparison).__name__}.", "warn")
    return _comparison_table(frame)


def _comparison_table(frame: pd.DataFrame, frac=None, seed=None) -> str:
    """A comparison table with what it means: LOO (arviz.compare) or held-out log-likelihood."""
    frame = frame.copy()
    if not isinstance(frame.index, pd.RangeIndex):
        index_name = frame.index.name or "model"
        frame = frame.reset_index().rename(columns={"index": index_name})
    body = table(frame)
    if "heldout_loglik" in frame:
        hidden = "a share" if frac is None else f"{frac:.0%}"
        body = p(
            "LOO needs the log-likelihood of every label over posterior draws; an EM or MAP fit has one point "
            f"estimate, so the fits are compared by held-out log-likelihood: {hidden} of each user's labels (the "
            "same labels for every fit" + ("" if seed is None else f", seed {seed}") + ") are hidden, each fit is "
            "refitted on the rest with its own settings, and the hidden labels are scored with its predictive "
            "distribution (bayes_annot.evaluate.compare_heldout). Higher is better; the difference per held-out "
            "label is the average gain in log predictive probability.",
            "muted",
        ) + body
    elif "elpd_loo" in frame or "rank" in frame:
        body += p(
            "Higher elpd (expected log predictive density) is better; rank 0 is preferred. A difference smaller "
            "than about twice its standard error (dse) does not distinguish the variants.",
            "muted",
        )
    return body


def _is_point_estimate(value) -> bool:
    """A fit by EM or MAP (one point estimate: no draws for LOO)."""
    summary = getattr(value, "summary", None)
    return isinstance(summary, dict) and summary.get("engine") in ("em", "map")


def _input_text(info) -> str | None:
    """The input as the header names it: the recorded path, else the file name, with a short SHA-256."""
    if not isinstance(info, dict):
        return None
    name = info.get("path") or info.get("file")
    if not name:
        return None
    return name + (f" (sha256 {info['sha256'][:12]})" if info.get("sha256") else "")


def _provenance_table(entries) -> str:
    columns = ["time", "file", "sha256", "rows_read", "rows_added", "rows_skipped", "duplicate_key"]
    frame = pd.DataFrame([{c: e.get(c) for c in columns} for e in entries if isinstance(e, dict)], columns=columns)
    if frame["sha256"].notna().any():
        frame["sha256"] = [v[:12] if isinstance(v, str) else v for v in frame["sha256"]]
    if any(isinstance(e, dict) and e.get("path") for e in entries):
        frame.insert(2, "path", [e.get("path") if isinstance(e, dict) else None for e in entries])
    return (
        p("The inputs of this fit and of every update since, oldest first (rows_skipped: rows already in the log; "
          "sha256 shortened to 12 characters, in full in summary.json).", "muted")
        + table(frame)
    )


def _settings_section(src) -> str:
    s = src.summary
    keep = {k: s.get(k) for k in ("settings", "input", "bayes_annot_version", "sampler") if k in s}
    text = json.dumps(keep, indent=2, default=str)
    out = p("The settings of the fit, as saved in summary.json.", "muted") + f"<pre>{escape(text)}</pre>"
    entries = s.get("provenance")
    if isinstance(entries, list) and entries:
        out += _provenance_table(entries)
    return out


def render(src, *, comparison=None, title=None, n_rep: int = 200, seed: int = 0, few_labels: int = 5) -> str:
    """The whole report as HTML text."""
    builders = {
        "warnings": lambda: _warnings_section(src, few_labels),
        "data": lambda: _data_section(src),
        "strengths": lambda: _strengths_section(src),
        "quality": lambda: _quality_section(src),
        "tastes": lambda: _tastes_section(src),
        "decision": lambda: _decision_section(src),
        "convergence": lambda: _convergence_section(src),
        "ppc": lambda: _ppc_section(src, n_rep, seed) + _ppc_ties_part(src, n_rep, seed),
        "comparison": lambda: _comparison_section(src, comparison),
        "settings": lambda: _settings_section(src),
    }
    from ..progress import iterate, resolve

    parts = []  # a bar inside a bayes_annot.progress.showing() block (the CLI's), after ~2 s
    for anchor, heading in iterate(resolve(None), SECTIONS, desc="report", unit="section", total=len(SECTIONS)):
        try:
            body = builders[anchor]()
        except Exception as exc:  # noqa: BLE001 - a section that fails says so; the rest still renders
            body = box(f"This section could not be built ({type(exc).__name__}: {exc}).", "warn")
        parts.append(section(anchor, heading, body))
    page_title = escape(title or "bayes_annot diagnostics report")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"{REPORT_MARKER}<title>{page_title}</title><style>{CSS}</style></head><body><main>"
        + _header(src, title)
        + "\n".join(parts)
        + "</main></body></html>\n"
    )
