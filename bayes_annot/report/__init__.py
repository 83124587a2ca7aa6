"""The diagnostics report: one self-contained HTML file per fit.

* :func:`build_report` writes the report of a :class:`~bayes_annot.fit.FitResult`
  (of :func:`bayes_annot.fit`, in memory or on Dask, or of :func:`bayes_annot.load`);
* :func:`render_report` returns the HTML text.

The report never fits: it shows what the result holds. Diagnostics that need
refits (the casual-group test, the comparison of EM fits by held-out
log-likelihood) are stored in the result by ``fit(..., taste_check=True)`` or
:func:`bayes_annot.evaluate.diagnose`; without them the report says how to get them.

Images are inline PNG (base64), there is no script and no external resource,
so the file opens from disk in any browser and can be handed on as is.
matplotlib is needed (``pip install 'bayes_annot[plot]'``).
"""

from __future__ import annotations

__all__ = ["build_report", "render_report", "SECTIONS"]

from .builder import SECTIONS  # noqa: E402  (the sections, in page order)


def render_report(result, *, comparison=None, title: str | None = None, n_rep: int = 200, seed: int = 0,
                  few_labels: int = 5) -> str:
    """HTML text of the diagnostics report (see :func:`build_report`)."""
    from ..plotting import check_result
    from .builder import render

    return render(check_result(result, "the report"), comparison=comparison, title=title, n_rep=n_rep, seed=seed,
                  few_labels=few_labels)


def build_report(result, path, *, comparison=None, title: str | None = None, n_rep: int = 200, seed: int = 0,
                 few_labels: int = 5):
    """Write the diagnostics report of a fit to ``path`` (one self-contained HTML file).

    Parameters
    ----------
    result : FitResult
        A fit (:func:`bayes_annot.fit`) or a saved one (:func:`bayes_annot.load`).
    path : str or Path
        The HTML file to write (parent folders are created). An existing file is
        replaced only when it is a report bayes_annot wrote; another file, or a
        folder, is an :class:`~bayes_annot.errors.InputError` before any work.
    comparison : pandas.DataFrame or dict, optional
        A model-comparison table (e.g. :func:`arviz.compare` output or
        :func:`bayes_annot.evaluate.compare_heldout`), or ``{name: FitResult |
        InferenceData}`` of sampled fits, compared by LOO. EM and MAP fits (a
        point estimate, nothing for LOO) are compared by held-out
        log-likelihood, which refits: the report does not, it says how
        (:func:`bayes_annot.evaluate.diagnose` stores the table in the
        result). Default: the comparison stored in ``result.summary``, if any.
    title : str, optional
    n_rep : int
        Replicated data sets for the posterior predictive check.
    seed : int
        Seed of the posterior predictive replication.
    few_labels : int
        Users with fewer labels than this are reported as too few to judge.

    Returns
    -------
    pathlib.Path
    """
    from pathlib import Path

    from ..outdir import TempFile, add_file, check_report_target, clean_temps_warning, is_temp, locked, read_manifest

    target = check_report_target(path)  # a folder, or a file that is not a report, before any work
    text = render_report(result, comparison=comparison, title=title, n_rep=n_rep, seed=seed, few_labels=few_labels)
    path = Path(path)
    if (read_manifest(target.parent) or {}).get("complete"):  # into a published result folder: listed in its
        with locked(target.parent):  # manifest (else the next fit --out there refuses the folder)
            add_file(target.parent, target.name, text.encode("utf-8"))
        return path
    if is_temp(target):  # a file staged for it already: written in place, its writer moves it
        target.write_text(text, encoding="utf-8")
        return path
    clean_temps_warning(target)  # what a killed write of this report left
    staged = TempFile(target)
    try:  # written beside its final name and renamed: a failure (disk full) or a kill leaves no partial report
        staged.path.write_text(text, encoding="utf-8")
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    return path
