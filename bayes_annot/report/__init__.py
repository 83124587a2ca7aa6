"""The diagnostics report: one self-contained HTML file per fit.

* :func:`build_report` writes the report of a :class:`~bayes_annot.fit.FitResult`
  (of :func:`bayes_annot.fit`, in memory or on Dask, or of :func:`bayes_annot.load`);
* :func:`build_report_from_dir` rebuilds it from a saved folder (the tables,
  ``summary.json`` and ``posterior.nc`` if present);
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

__all__ = ["build_report", "build_report_from_dir", "render_report", "SECTIONS"]

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


def render_report(result, *, comparison=None, title: str | None = None, n_rep: int = 200, seed: int = 0,
                  few_labels: int = 5) -> str:
    """HTML text of the diagnostics report (see :func:`build_report`)."""
    from ..fit import FitResult
    from .builder import render

    if not isinstance(result, FitResult):
        raise TypeError(f"the report reads a FitResult (of bayes_annot.fit or bayes_annot.load(folder)), "
                        f"got {type(result).__name__}")
    return render(result, comparison=comparison, title=title, n_rep=n_rep, seed=seed, few_labels=few_labels)


def build_report(result, path, *, comparison=None, title: str | None = None, n_rep: int = 200, seed: int = 0,
                 few_labels: int = 5):
    """Write the diagnostics report of a fit to ``path`` (one self-contained HTML file).

    Parameters
    ----------
    result : FitResult
        A fit (:func:`bayes_annot.fit`) or a saved one (:func:`bayes_annot.load`).
    path : str or Path
        The HTML file to write (parent folders are created).
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
    import os
    import tempfile
    from pathlib import Path

    from ..outdir import apply_umask

    text = render_report(result, comparison=comparison, title=title, n_rep=n_rep, seed=seed, few_labels=few_labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:  # written beside its final name and renamed: a failure (disk full) leaves no partial file behind
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_report_from_dir(directory, path=None, **kwargs):
    """Rebuild the report from saved outputs; writes ``DIRECTORY/report.html`` unless ``path`` is given.

    Sections that need the live fit (the EM log-likelihood trace) say so
    instead of failing; everything else is rebuilt from the saved tables and
    ``posterior.nc``. Keyword arguments are those of :func:`build_report`.
    """
    from pathlib import Path

    from ..fit import load

    directory = Path(directory)
    return build_report(load(directory), directory / "report.html" if path is None else path, **kwargs)
