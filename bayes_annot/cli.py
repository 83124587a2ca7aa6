"""Command-line interface: ``bayes-annot fit | simulate | demo``.

Bad input prints one line ``bayes-annot: error: ...`` to stderr and exits with
code 2, leaving no output behind; warnings print as ``bayes-annot: warning: ...``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings
from pathlib import Path

from .errors import InputError

# Only the standard library is imported at start-up: `bayes-annot --help` and argument errors answer
# without loading numpy, pandas or SciPy; each command imports what it needs (tests/test_startup.py).

_REAL_DATASETS = ("cemschoice", "topmodel2007", "germanparties2009")  # bayes_annot.datasets.REAL_DATASETS (not imported at start-up)

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _labels_spec(text: str):
    text = text.strip().lower()
    if text == "arena":
        return "arena"
    if ":" in text:
        low, _, high = text.partition(":")
        return (int(low), int(high))
    return int(text)


def _tastes_spec(text: str):
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got '{text}'")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument error is one line, ``bayes-annot: error: ...`` (exit 2), as every other bad input;
    argparse's own prints the whole usage block first, which buries the line that matters."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"bayes-annot: error: {message} (see '{self.prog} --help')\n")


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends every option with ``(default: X)``, unless the default is None/False or the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``bayes-annot`` command-line parser (:func:`main` parses with it).

    Its ``fit``, ``simulate``, ``report`` and ``demo`` sub-commands and their
    ``--help`` texts (with defaults) are the command line's contract, which
    docs/cli.md describes.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(
        prog="bayes-annot",
        description="Estimate each user's annotation quality from comparison-mode preference logs, "
        "then filter or weight the labels.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser(
        "fit", help="fit the behaviour model to a log and write users/models/rows/summary",
        formatter_class=_DefaultsHelpFormatter,
    )
    fit.add_argument(
        "input", nargs="?", default=None,
        help="comparison log: .csv, .parquet, .json (Arena battles) or .jsonl; a folder or glob of parquet files is "
        "fitted with Dask (or give --dataset instead)",
    )
    fit.add_argument("--dataset", default=None, choices=list(_REAL_DATASETS),
                     help="fit an embedded real data set instead of INPUT (see bayes_annot.datasets)")
    fit.add_argument("--out", required=True,
                     help="output folder: created, or replaced all at once when empty or holding bayes_annot results only")
    cols = fit.add_argument_group("columns")
    cols.add_argument("--user", default=None,
                      help="user column (default: the first of 'user', 'judge', 'worker', 'annotator' present)")
    cols.add_argument("--model-a", default="model_a", help="column of the model shown first")
    cols.add_argument("--model-b", default="model_b", help="column of the model shown second")
    cols.add_argument("--winner", default="winner", help="winner column (model_a/model_b/tie/tie (bothbad)/a/b/left/right)")
    cols.add_argument("--winner-values", default=None, metavar="VALUE=MEANING,...",
                      help="further winner values, e.g. 'A=model_a,B=model_b,Same=tie' (meanings: model_a, model_b, tie)")
    cols.add_argument("--on-bad-row", default="error", choices=["error", "drop"],
                      help="a row with a missing/unknown winner or an invalid p_a: stop (error), or keep it out of the "
                      "fit with reason invalid_winner / invalid_p_a in rows.csv and a warning (drop)")
    cols.add_argument("--p-a", default=None, help="column of known attentive P(model_a chosen) (default: 'p_a' if present)")
    cols.add_argument("--no-p-a", action="store_true", help="ignore a p_a column and learn strengths")
    cols.add_argument("--prompt", default="prompt", help="prompt text column (for --dpo)")
    cols.add_argument("--response-a", default="response_a", help="column of model_a's response text (for --dpo)")
    cols.add_argument("--response-b", default="response_b", help="column of model_b's response text (for --dpo)")
    model = fit.add_argument_group("model")
    model.add_argument("--variant", "--model", dest="variant", default="two-class", choices=["two-class", "continuous"],
                       help="behaviour variant: how a user mixes attentive and casual labels (--model: an alias)")
    model.add_argument("--mu", type=float, default=None, help="known P(attentive user prefers --strong-model)")
    model.add_argument("--strong-model", default=None, help="the stronger model for --mu")
    model.add_argument("--q", type=float, default=None, help="fix the casual position bias (0.5 = fair coin; default: estimated)")
    model.add_argument("--casual-covariates", default="auto", metavar="auto|none|COL,...",
                       help="what casual clicks may follow besides position: auto (default: the log length ratio "
                            "of response_a/response_b, or Arena's conversation_a/conversation_b, when present), "
                            "none (a position coin, the paper's model), or numeric a-vs-b contrast columns "
                            "(log_length_ratio names the length ratio)")
    model.add_argument("--casual-bins", type=int, default=6,
                       help="bins of |covariate| per casual covariate (default 6, edges at quantiles)")
    model.add_argument("--style-covariates", default="none", metavar="COL,...|auto|none",
                       help="attentive style term, as Chatbot Arena's style control: attentive log-odds s_a - s_b + "
                            "delta'x, so reading-based length preference (delta) is reported apart from casual "
                            "clicks that follow length; none (default), auto (every casual covariate) or casual "
                            "covariate names (any engine, ties modelled too; --tastes N classes share one delta; not --tastes auto)")
    model.add_argument("--ties", default=None, metavar="model|ignore",
                       help="ties (tie, tie (bothbad)) in the likelihood: model (default when the log has ties and "
                            "the fit supports it: Davidson's nu for attentive users, a tie rate t for casual ones) or "
                            "ignore (counted and left out, the paper's model)")
    model.add_argument(
        "--tastes", type=_tastes_spec, default=1,
        help="taste classes: N rankings attentive users may follow, or 'auto' (chooses 1..--max-tastes; two-class variant, any --method)",
    )
    model.add_argument("--max-tastes", type=int, default=4,
                       help="largest number of taste classes --tastes auto tries (default 4; a warning says when it wins)")
    model.add_argument("--taste-check", action="store_true",
                       help="run the casual-group test (are the users flagged casual a taste group?) and store its "
                       "verdict in summary.json and the report (always on with --tastes auto)")
    engine = fit.add_argument_group("engine")
    engine.add_argument("--method", default="em", choices=["em", "map", "nuts"], help="inference engine")
    engine.add_argument("--sampler", default="pymc", choices=["pymc", "nutpie"], help="NUTS implementation")
    engine.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain")
    engine.add_argument("--tune", type=int, default=1000, help="NUTS tuning steps per chain")
    engine.add_argument("--chains", type=int, default=2, help="NUTS chains")
    engine.add_argument("--max-iter", type=int, default=1000, help="EM iteration cap")
    engine.add_argument("--tol", type=float, default=1e-9, help="EM relative tolerance")
    engine.add_argument("--seed", type=int, default=0, help="random seed")
    fit.add_argument("--filter", default="prob:0.5", help="prob:T, fdr:ALPHA, credible:T or none")
    fit.add_argument("--no-verdict", default="keep", choices=["keep", "drop"],
                     help="users the filter has no verdict on (uninformative pairs only, or kept whatever they "
                     "clicked): keep (default) or drop them; their rows have reason no_verdict, a warning counts them")
    fit.add_argument("--warm-start", default=None, metavar="DIR",
                     help="start EM from a previous fit's folder (INPUT is the whole old + new log)")
    fit.add_argument("--update", default=None, metavar="DIR",
                     help="INPUT holds only new rows: refit DIR's rows (rows.csv) plus INPUT, warm-started from DIR, "
                     "with DIR's settings (options given here override them; column options name INPUT's columns)")
    fit.add_argument("--on-duplicate", default=None, choices=["skip", "error", "keep"],
                     help="with --update: new rows already in DIR's rows are skipped with a warning (default: skip), "
                     "refused (exit 2, nothing written) or appended again")
    fit.add_argument("--row-id", default=None, metavar="COL[,COL...]",
                     help="with --update: column(s) identifying a row, to find rows already in DIR "
                     "(default: question_id,tstamp when present, else the whole row); ids win over content")
    fit.add_argument("--record-paths", action="store_true",
                     help="record the input's absolute path in summary.json and the report (default: file name and SHA-256)")
    fit.add_argument("--report", action="store_true", help="also write DIR/report.html (diagnostics report)")
    fit.add_argument("--dpo", default=None, help="also export kept labels for DPO training (.jsonl or .parquet)")
    fit.add_argument("--format", default=None, choices=["csv", "parquet"],
                     help="file format of the users/models/rows tables (default: csv; with --update, DIR's format); "
                     "both read back equal")
    fit.add_argument("--safe-csv", action="store_true",
                     help="prefix ' to text cells starting with = + - @ (spreadsheet formula injection); load() undoes it")
    fit.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bars either)")
    _add_progress(fit)

    sim = sub.add_parser("simulate", help="write a synthetic comparison log with truth columns")
    sim.add_argument("--out", required=True, help="output file (.csv, .parquet, .json, .jsonl)")
    sim.add_argument("--users", type=int, default=1000)
    sim.add_argument("--models", type=int, default=8)
    sim.add_argument("--casual-share", type=float, default=0.3)
    sim.add_argument("--q", type=float, default=0.5, help="casual users' P(left)")
    sim.add_argument("--labels-per-user", type=_labels_spec, default=(5, 40), help="N, LOW:HIGH or arena (default 5:40)")
    sim.add_argument("--variant", "--quality", dest="variant", default="two-class", choices=["two-class", "continuous"],
                     help="behaviour variant that generates the labels (--quality: an alias)")
    sim.add_argument("--known-mu", type=float, default=None, help="paper setting: two models, known mu, adds p_a")
    sim.add_argument("--adversarial-share", type=float, default=0.0)
    sim.add_argument("--tie-rate", type=float, default=0.0)
    sim.add_argument("--tie-nu", type=float, default=None, help="attentive ties as Davidson's model with this nu")
    sim.add_argument("--casual-tie-rate", type=float, default=None, help="casual users' tie rate t")
    sim.add_argument("--with-text", action="store_true", help="add prompt/response text columns")
    sim.add_argument("--length-bias", type=float, default=None,
                     help="casual clicks pick the longer response with this probability (adds response texts whose "
                          "length grows with model strength)")
    sim.add_argument("--length-confound", type=float, default=0.5, help="slope of log response length on strength")
    sim.add_argument("--style-bias", type=float, default=None,
                     help="attentive users prefer the longer answer after reading: this many log-odds per unit of "
                          "log length ratio (adds response texts)")
    sim.add_argument("--seed", type=int, default=0)

    report = sub.add_parser("report", help="rebuild the HTML diagnostics report from a saved output folder")
    report.add_argument("directory", help="a folder written by 'bayes-annot fit'")
    report.add_argument("--out", default=None, help="report file (default DIRECTORY/report.html)")
    report.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bars either)")
    _add_progress(report)

    demo = sub.add_parser("demo", help="run the main job on the embedded demo log")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--seed", type=int, default=0)
    _add_progress(demo)
    return parser


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bars on stderr for work longer than ~2 s: EM iterations, Dask partitions, NUTS, report "
        "sections (default: on when stderr is a terminal; --quiet turns them off)",
    )


def _progress_setting(args):
    """The progress bars a command shows: off with --quiet, else --progress/--no-progress, else on a terminal."""
    from .progress import Progress

    if getattr(args, "quiet", False):
        return False
    wanted = getattr(args, "progress", None)
    if wanted is None:
        wanted = sys.stderr.isatty()
    return Progress() if wanted else False


def _write_frame(frame, path: Path) -> None:
    """Write a frame by suffix, atomically (temporary file, then rename)."""
    from .outdir import TempFile, clean_temps_warning

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".json", ".jsonl"):
        raise InputError(f"output '{path}': unknown file type '{suffix}', expected .csv, .parquet, .json or .jsonl")
    clean_temps_warning(path)  # what a killed write of this file left
    staged = TempFile(path)
    tmp = staged.path
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix == ".json":
            frame.to_json(tmp, orient="records", force_ascii=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    except BaseException:
        staged.discard()
        raise
    staged.commit()


def _print_summary(result, out: Path) -> None:
    s = result.summary
    c = s["counts"]
    params = ", ".join(f"{k}={v:.3f}" for k, v in s["parameters"].items() if isinstance(v, float))
    print(f"{s['variant']} variant via {s['engine']}: {c['rows']} rows, {c['users']} users, {c['models']} models ({params})")
    if s.get("iterations") is not None:
        print(f"  iterations: {s['iterations']}, converged: {s['converged']}, runtime: {s['runtime_seconds']:.2f} s")
    if "rhat_max" in s:
        print(f"  rhat_max={s['rhat_max']:.4f} ess_bulk_min={s['ess_bulk_min']:.0f} divergences={s['divergences']}")
    style = s.get("style_effects")
    if style:
        print("  attentive style effects (log-odds per unit): "
              + ", ".join(f"{c['name']} delta={c['delta']:+.3f}" for c in style["covariates"]))
    f = s["filter"]
    print(
        f"  filter {f['rule']}: kept {c['kept_users']} users, {c['kept_rows']} rows "
        f"(expected casual share among kept {f['expected_casual_share']:.3f})"
    )
    top, where = _rankable_models(result)
    if top["strength"].notna().any():
        ranked = top.sort_values("strength", ascending=False)
        print(f"  strongest models{where}: "
              + ", ".join(f"{m} ({v:+.2f})" for m, v in zip(ranked.model[:5], ranked.strength[:5])))
    fmt = s["settings"].get("format", "csv") if isinstance(s.get("settings"), dict) else "csv"
    print(f"wrote {out}/users.{fmt}, models.{fmt}, rows.{fmt}, summary.json")


def _rankable_models(result):
    """The models whose strengths can be ranked together: all of them, or, when the comparison graph
    falls apart, those of its largest part (most labels), with the words saying so."""
    import numpy as np

    models = result.models
    if int(result.summary.get("comparison_graph_components") or 1) <= 1 or not hasattr(result, "comparison_parts"):
        return models, ""
    parts = np.asarray(result.comparison_parts())
    labels = models["n_labels"].to_numpy() if "n_labels" in models else np.ones(len(models))
    used = labels > 0
    if len(parts) != len(models) or not used.any():
        return models, ""
    sizes = np.bincount(parts[used], weights=labels[used], minlength=parts.max() + 1)
    largest = int(np.argmax(sizes))
    n_parts = len(np.unique(parts[used]))
    mask = parts == largest
    return models[mask], f" (largest of {n_parts} disconnected parts, {int(mask.sum())} of {len(models)} models)"


def _given_options(argv) -> set[str]:
    """Destinations of the options actually written on the command line (defaults suppressed)."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for option in sub._actions:
                    if option.option_strings and option.dest not in ("help", "out"):
                        option.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _update_overrides(args) -> tuple[dict, dict]:
    """Settings and column names given explicitly with ``fit --update`` (the rest come from DIR)."""
    given = getattr(args, "given", set())
    settings = {key: getattr(args, key)
                for key in ("variant", "filter", "mu", "strong_model", "q", "tol", "max_iter", "no_verdict", "ties")
                if key in given}
    if "no_p_a" in given:
        settings["use_p_a"] = False
    if "winner_values" in given:
        from .data import parse_winner_values

        settings["winner_values"] = parse_winner_values(args.winner_values)
    if "on_bad_row" in given:
        settings["on_bad_row"] = args.on_bad_row
    columns = {role: getattr(args, role) for role in ("user", "model_a", "model_b", "winner", "p_a") if role in given}
    return settings, columns


def _input_paths(text: str) -> list[Path]:
    """The files (or folder) INPUT names: a file, a folder of parquet files, or a glob."""
    from .readahead import is_glob

    if is_glob(text):
        return [Path(p) for p in sorted(glob.glob(text))]
    return [Path(text)]


def _saved_format(directory) -> tuple[str, bool]:
    """The table format of a result folder (``csv`` when there is none or it predates manifests) and whether
    its tables were written with ``--safe-csv`` (an update keeps both, as it keeps DIR's other settings)."""
    from .outdir import read_manifest

    manifest = read_manifest(Path(directory)) if directory is not None else None
    tables = (manifest or {}).get("tables") or {}
    safe = any(isinstance(meta, dict) and meta.get("safe_csv") for meta in tables.values())
    return (manifest or {}).get("format", "csv"), safe


def _waiting(args):
    return None if args.quiet else (lambda message: print(f"bayes-annot: {message}", file=sys.stderr))


def _cmd_fit(args) -> int:
    from .readahead import is_glob, prefetch  # the standard library only: pandas is not imported yet

    if args.input is not None and not is_glob(args.input):
        # read, its id columns encoded, and hashed in the background while pandas and the engines are imported
        prefetch(args.input, columns=(args.user or "user", args.model_a, args.model_b, args.winner))
    from .export import DPO_COLUMNS
    from .fit import fit, model_spec
    from .outdir import check_dpo_target, check_target, locked, recover
    from .validation import check_fit_settings

    _imports_done()
    # every numeric option and the model they specify are checked before the input is read (one line, exit 2)
    check_fit_settings(
        tol=args.tol, max_iter=args.max_iter, draws=args.draws, tune=args.tune, chains=args.chains, seed=args.seed,
        mu=args.mu, tastes=args.tastes,
    )
    model_spec(variant=args.variant, tastes=args.tastes, q=args.q, mu=args.mu)
    from .ties import resolve_ties

    resolve_ties(None if args.ties == "model" else args.ties, 0)  # an unknown --ties, before reading
    from .outdir import max_parts

    max_parts()  # a bad BAYES_ANNOT_MAX_PARTS, before the fit (whatever the format: one line, exit 2)
    if args.update is not None:
        if args.warm_start is not None:
            raise InputError("--update and --warm-start exclude each other (--update already starts from DIR)")
        if args.method != "em" or args.tastes != 1:
            raise InputError("--update refits by EM with DIR's taste classes: drop --method/--tastes")
    elif args.on_duplicate is not None or args.row_id is not None:
        raise InputError("--on-duplicate and --row-id apply to --update (rows already in DIR)")
    if (args.input is None) == (args.dataset is None):
        raise InputError("give an input file (INPUT) or --dataset NAME, not both" if args.input else
                         "give an input file (INPUT) or --dataset NAME (one of " + ", ".join(_REAL_DATASETS) + ")")
    if args.dataset is not None:
        from .datasets import real_data_path

        args.input = str(real_data_path(args.dataset))
    winner_values = None
    if args.winner_values is not None:
        from .data import parse_winner_values

        winner_values = parse_winner_values(args.winner_values)
    dpo_columns = {"prompt": args.prompt, "response_a": args.response_a, "response_b": args.response_b}
    # every output-path problem is found before any fitting
    inputs = _input_paths(args.input)
    target = check_target(args.out, inputs)
    if args.dpo:
        check_dpo_target(args.dpo, target, DPO_COLUMNS, inputs)
    with locked(target, _waiting(args)):  # one writer per folder: an update reads, fits and writes under the lock
        for note in recover(target):  # what an interrupted run left, before anything reads the folder
            warnings.warn(note, UserWarning, stacklevel=1)
        if args.update is not None:
            from .folder_update import update_saved

            settings, columns = _update_overrides(args)
            result = update_saved(
                args.update, args.input, columns=columns, on_duplicate=args.on_duplicate or "skip",
                row_id=args.row_id, record_paths=args.record_paths, **settings,
            )
        else:
            result = fit(
                args.input,
                variant=args.variant,
                method=args.method,
                filter=args.filter,
                user=args.user,
                model_a=args.model_a,
                model_b=args.model_b,
                winner=args.winner,
                p_a=args.p_a,
                use_p_a=not args.no_p_a,
                mu=args.mu,
                strong_model=args.strong_model,
                q=args.q,
                tastes=args.tastes,
                max_tastes=args.max_tastes,
                taste_check=args.taste_check,
                no_verdict=args.no_verdict,
                tol=args.tol,
                max_iter=args.max_iter,
                draws=args.draws,
                tune=args.tune,
                chains=args.chains,
                sampler=args.sampler,
                progress=args.progress_setting,
                seed=args.seed,
                start=args.warm_start,
                record_paths=args.record_paths,
                winner_values=winner_values,
                on_bad_row=args.on_bad_row,
                casual_covariates=args.casual_covariates,
                casual_bins=args.casual_bins,
                ties=args.ties,
                style_covariates=args.style_covariates,
            )
        saved_format, saved_safe = _saved_format(args.update)
        fmt = args.format or saved_format
        result.summary.setdefault("settings", {})["format"] = fmt
        result.save(target, report=args.report, dpo=args.dpo, format=fmt, safe_csv=args.safe_csv or saved_safe,
                    inputs=inputs, on_wait=_waiting(args), dpo_columns=dpo_columns)
        source = getattr(result, "_rows_source", None)
        if source is not None:  # a fast update's open files of DIR (its rows parts, its side file)
            source["folder"].close()
    if not args.quiet:
        _print_summary(result, Path(args.out))
        if args.report:
            print(f"wrote {Path(args.out) / 'report.html'}")
        if args.dpo:
            print(f"wrote {result.summary['counts']['kept_rows']} preference pairs to {args.dpo}")
    return 0


def _check_simulate_target(path: Path) -> None:
    """``simulate --out``: a folder, or an existing file that is not a simulated log (its truth column
    ``true_attentive``), is refused before anything is written: a mistyped name never replaces a real log."""
    if path.is_dir():
        raise InputError(f"output '{path}' is a folder: name a .csv, .parquet, .json or .jsonl file")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            simulated = "true_attentive" in pq.read_schema(path).names
        else:
            with open(path, encoding="utf-8", errors="replace") as handle:
                head = handle.read(1 << 16)
            first = head.splitlines()[0] if head else ""
            simulated = "true_attentive" in (head if path.suffix.lower() == ".json" else first)
    except Exception:  # unreadable: not a log simulate wrote
        simulated = False
    if not simulated:
        raise InputError(f"output '{path}' exists and is not a log written by 'bayes-annot simulate': choose another name")


def _cmd_simulate(args) -> int:
    from .simulate import simulate

    _imports_done()

    _check_simulate_target(Path(args.out))
    try:
        frame = simulate(
            n_users=args.users,
            n_models=args.models,
            casual_share=args.casual_share,
            q=args.q,
            labels_per_user=args.labels_per_user,
            variant=args.variant,
            known_mu=args.known_mu,
            adversarial_share=args.adversarial_share,
            tie_rate=args.tie_rate,
            tie_nu=args.tie_nu,
            casual_tie_rate=args.casual_tie_rate,
            with_text=args.with_text,
            length_bias=args.length_bias,
            length_confound=args.length_confound,
            style_bias=args.style_bias,
            seed=args.seed,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    out = Path(args.out)
    _write_frame(frame, out)
    print(f"wrote {len(frame)} rows, {args.users} users to {out}")
    return 0


def _cmd_report(args) -> int:
    from .outdir import add_file, check_report_target, locked
    from .fit import load
    from .report import build_report, render_report

    _imports_done()

    directory = Path(args.directory)
    if not (directory / "summary.json").exists():
        raise InputError(f"'{directory}' holds no bayes_annot results (summary.json missing)")
    if args.out is not None:
        check_report_target(args.out)  # before loading anything
        path = build_report(load(directory), args.out)  # into a result folder: listed in its manifest
    else:
        with locked(Path(os.path.abspath(directory)), _waiting(args)):
            text = render_report(load(directory))
            add_file(directory, "report.html", text.encode("utf-8"))
        path = directory / "report.html"
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _cmd_demo(args) -> int:
    from .datasets import DEMO_SETTINGS, load_demo
    from .fit import fit

    from .outdir import check_target

    _imports_done()
    out = Path(args.out)
    check_target(out)  # a folder that is not ours, before the fit (as fit --out)
    log = load_demo()
    print(
        f"demo log: {len(log)} rows from {DEMO_SETTINGS['n_users']} simulated users, {DEMO_SETTINGS['n_models']} models, "
        f"{DEMO_SETTINGS['casual_share']:.0%} casual (seed {DEMO_SETTINGS['seed']})"
    )
    result = fit(log, filter="fdr:0.1", seed=args.seed, progress=args.progress_setting)
    result.save(out, report=True, dpo=out / "dpo.jsonl")
    _print_summary(result, out)
    print(f"wrote {out}/report.html and {out}/dpo.jsonl")
    from .metrics import auc
    from .simulate import truth_users

    truth = truth_users(log)
    users = result.users.set_index("user").loc[truth.index]
    print(f"  check against the simulated truth: AUC of quality vs true type = {auc(users.quality, truth.true_attentive):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fit" and args.update is not None:
        args.given = _given_options(sys.argv[1:] if argv is None else argv)
    handlers = {"fit": _cmd_fit, "simulate": _cmd_simulate, "report": _cmd_report, "demo": _cmd_demo}
    from .progress import showing

    args.progress_setting = _progress_setting(args)
    with warnings.catch_warnings(record=True) as caught, showing(args.progress_setting):
        warnings.simplefilter("always")
        try:
            code = handlers[args.command](args)
        except InputError as exc:
            print(f"bayes-annot: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("bayes-annot: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # an unexpected failure: one line, traceback only with --debug
            if args.debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"bayes-annot: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)", file=sys.stderr)
            return EXIT_INTERNAL
        finally:
            seen = set()
            for item in caught:
                if issubclass(item.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
                    continue
                text = str(item.message).strip().splitlines()[0] if str(item.message).strip() else ""
                if text and text not in seen:
                    seen.add(text)
                    print(f"bayes-annot: warning: {text}", file=sys.stderr)
    return code


_GC_PAUSED = False  # set by run(): the cyclic collector waits for the end of the command's imports


def _imports_done() -> None:
    """A command has imported its libraries: resume the cyclic garbage collector that :func:`run` paused,
    with everything imported so far (modules, classes, functions: kept to the end) moved out of its reach
    (:func:`gc.freeze`), so no later collection walks them again."""
    global _GC_PAUSED
    if _GC_PAUSED:
        import gc

        gc.freeze()
        gc.enable()
        _GC_PAUSED = False


def run() -> None:
    """The ``bayes-annot`` command: :func:`main`, then exit without the interpreter's teardown.

    By the time :func:`main` returns, every output is written, closed and renamed into place (the result
    writer's staging is all or nothing), so nothing is left for the teardown but freeing the fit's arrays and
    unloading modules one by one: 0.1-0.3 s at 10^6 rows, a tenth of a whole run. The streams are flushed
    first; the operating system closes the rest. Library callers use :func:`main`, which returns the code.
    """
    global _GC_PAUSED
    import gc

    # pandas, numpy, pyarrow and SciPy create some 10^5 objects as they import, none of them garbage: the
    # collector would walk them again and again (about 3% of a 10^6-row CLI fit); see _imports_done
    gc.disable()
    _GC_PAUSED = True
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a closed reader or stream: nothing more can be said
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
