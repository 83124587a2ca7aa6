r"""EM on logs larger than memory: map-reduce over the partitions of a Dask DataFrame.

The engine is the block EM of :mod:`bayes_annot.block_em` (the one every
in-memory fit runs on a single block) with one block per partition; the driver only ever holds arrays of
length ``n_models`` and of the number of compared model pairs (and, once at the end, the per-user results).

1. **Scan** (one pass over the input): per partition, the text form of every id
   (the normalisation of :mod:`bayes_annot.data`), validation of ``winner`` and
   ``p_a``, and the row count. The sorted user and model vocabularies are
   built by a tree of ``np.union1d`` on the workers, so the driver receives each
   id once.
2. **Encode and shuffle by user** (one pass): ids become codes against the
   global vocabularies (``np.searchsorted`` per partition); rows are then
   shuffled with Dask's own shuffle so that all rows of a user sit in one
   partition. The compared model pairs and their counts (a sparse
   :class:`~bayes_annot.pairs.PairTable`, the pair vocabulary) are reduced by a
   tree on the workers, and each partition becomes a compact *block* (``int32``
   pair cell per label, sorted by user) that is ``persist()``-ed on the workers.
3. **EM iterations**: because a user lives in exactly one block, every
   per-user quantity (sums of attentive log-probabilities, posteriors over
   types or over the continuous variant's grid) is computed *inside* its block; a
   pass returns only sufficient statistics: the block's share of the
   objective, of the ``pi`` / ``q`` / ``m`` updates and the ``2 P`` table
   of weighted win counts per compared pair for the Bradley–Terry M-step (solved on the driver
   with :func:`bayes_annot.pairs.fit_bradley_terry_pairs`). Nothing of length ``U`` is
   broadcast per iteration, and no per-user state is kept between passes.
4. **Finalise**: one pass gathers the per-user results (quality, labels,
   informativeness, ...) into arrays over all users, in vocabulary order.

The objective, M-steps and stopping rule are those of the in-memory fit
(:func:`bayes_annot.block_em.run_em`), so the tables agree with it to
rounding (sums are taken in another order). The blocks, their passes and the
driver loop live in :mod:`bayes_annot.block_em`, which also runs every
in-memory EM fit (one block, :class:`~bayes_annot.block_em.LocalRunner`); this
module adds the Dask scan, encoding and shuffle, and :class:`DaskRunner` (which
:func:`bayes_annot.tastes.fit_tastes` also drives: ``spec.n_tastes > 1``).

Dask is an optional dependency (``pip install 'bayes_annot[dask]'``); this
module imports it only inside the functions that need it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from .ufuncs import logit

from .local_em import default_accelerate
from .block_em import (
    Block,
    _sum_stats,
    block_cell_counts,
    block_continuous_final,
    block_continuous_pass,
    block_class_final,
    block_class_pass,
    block_user_cells,
    make_block,
    run_em,
    with_known_values,
)
from .casual import DEFAULT_BINS, casual_design
from .data import REASONS, ColumnMap, casual_input_columns, covariate_values, _encode_p_a, _encode_winner, _factorize, _resolve_columns, _uniques_as_text
from .em import INFORMATIVE_TOL, EMResult
from .errors import InputError
from .spec import BehaviourSpec
from .style import StyleDesign, parse_style_covariates, style_design
from .ties import resolve_ties
from .problem import strong_model_code
from .progress import dask_tasks, em_callback, resolve as resolve_progress
from .pairs import PairTable
from .tables import input_renames

__all__ = ["DaskFit", "fit_dask", "to_rows", "DaskRunner"]

REASON_CATEGORIES = list(REASONS)  # as FitResult.rows


class DaskRunner:
    """Runs the block passes on persisted Dask blocks (any scheduler; distributed when a Client is active)."""

    def __init__(self, blocks: list, n_users: int, pairs: PairTable | None = None, tie_counts=None, known_values=None):
        self.blocks = blocks  # list of persisted Delayed
        self.n_users = n_users
        self.pairs = pairs  # the blocks' pair vocabulary
        self.known_values = known_values  # known strengths with ties: the blocks' one vocabulary of known log-odds
        self.ties = tie_counts is not None  # the blocks' ties enter the likelihood (bayes_annot.ties)
        self._tie_counts = tie_counts

    def tie_counts(self) -> tuple[float, float]:
        """Ties and decided labels in the likelihood (ties modelled)."""
        return self._tie_counts

    def _compute(self, tasks):
        import dask

        return list(dask.compute(*tasks))

    def cell_counts(self):
        """The unweighted pair table summed over the blocks (computed on the workers)."""
        from dask import delayed

        return _sum_stats(self._compute([delayed(block_cell_counts)(b) for b in self.blocks]))["cells"]

    def user_cells(self, weights):
        """The cell table of per-user weights (``(U,)`` or ``(U, C)``, sent to the workers once), summed over the blocks."""
        from dask import delayed

        weights = _broadcast(np.asarray(weights, dtype=float))
        return _sum_stats(self._compute([delayed(block_user_cells)(b, weights) for b in self.blocks]))["cells"]

    def class_pass(self, shares, q, tables, ties=None):
        """One E-step over the blocks (casual + ``C`` classes): summed objective and statistics."""
        from dask import delayed

        return _sum_stats(self._compute([delayed(block_class_pass)(b, shares, q, tables, ties=ties)
                                         for b in self.blocks]))

    def class_final(self, shares, q, tables, differs_cell, informative_tol, ties=None):
        """Per-block final results (quality, type posteriors, log-likelihood, informative)."""
        from dask import delayed

        return self._compute(
            [delayed(block_class_final)(b, shares, q, tables, differs_cell, informative_tol, ties=ties)
             for b in self.blocks]
        )

    def continuous_pass(self, m, tau, q, att_prob_table, ties=None):
        """One continuous E-step over the blocks: summed objective and statistics."""
        from dask import delayed

        return _sum_stats(self._compute(
            [delayed(block_continuous_pass)(b, m, tau, q, att_prob_table, ties=ties) for b in self.blocks]
        ))

    def continuous_final(self, m, tau, q, att_prob_table, differs_cell, informative_tol, ties=None):
        """Per-block final continuous results."""
        from dask import delayed

        return self._compute(
            [delayed(block_continuous_final)(b, m, tau, q, att_prob_table, differs_cell, informative_tol, ties=ties)
             for b in self.blocks]
        )


# --------------------------------------------------------------------------- Dask: scan, encode, shuffle


_ROW_RE = re.compile(r"input row (\d+)")


def _partition_texts(frame: pd.DataFrame, columns: dict, check: bool):
    """Text ids (per unique value) of one partition, with factorize codes; validates when ``check``."""
    out = {}
    for role in ("user", "model_a", "model_b"):
        name = columns[role]
        codes, uniques = _factorize(frame[name], name)
        text, missing = _uniques_as_text(uniques)
        if check:
            bad = codes < 0
            if missing.any():
                bad |= missing[np.where(codes < 0, 0, codes)] & (codes >= 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"column '{name}' has {int(bad.sum())} missing value(s), first at input row {row + 1}")
        out[role] = (codes, text.astype(str))
    return out


def _scan_partition(frame: pd.DataFrame, columns: dict, casual_names=()) -> dict:
    """Row count, unique text ids and the first validation error of one partition."""
    try:
        texts = _partition_texts(frame, columns, check=True)
        choice = _encode_winner(frame[columns["winner"]], columns["winner"])
        if len(casual_names):
            ca, ta = texts["model_a"]
            cb, tb = texts["model_b"]
            covariate_values(frame.reset_index(drop=True), casual_names, (choice >= 0) & (ta[ca] != tb[cb]))
        if columns.get("p_a") is not None:
            ca, ta = texts["model_a"]
            cb, tb = texts["model_b"]
            same = ta[ca] == tb[cb]
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _encode_p_a(frame[columns["p_a"]].reset_index(drop=True), columns["p_a"], (choice >= 0) & ~same)
        error = None
    except InputError as exc:
        return {"n": len(frame), "users": np.zeros(0, str), "models": np.zeros(0, str), "error": str(exc)}
    users = np.sort(texts["user"][1])
    if users.shape[0] > 1 and (users[1:] == users[:-1]).any():
        users = np.unique(users)
    models = np.unique(np.concatenate([texts["model_a"][1], texts["model_b"][1]]))
    return {"n": len(frame), "users": users, "models": models, "error": error}


def _header(scan: dict):
    return scan["n"], scan["error"]


def _pick(scan: dict, key: str):
    return scan[key]


def _union(*arrays):
    return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, str)


def _tree_union(items: list, split_every: int = 8):
    """Tree reduction of sorted unique arrays with np.union1d on the workers."""
    from dask import delayed

    level = list(items)
    while len(level) > 1:
        level = [delayed(_union)(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


def _encode_partition(frame: pd.DataFrame, columns: dict, user_vocab, model_vocab, strong_code, mu, use_p_a,
                      casual_names=()) -> pd.DataFrame:
    """Codes of one partition against the global vocabularies: user, dense cell code
    ``(a K + b) 2 + choice`` (int64; -1 unusable), reason, known, and the casual covariates ``cx0, ...``."""
    texts = _partition_texts(frame, columns, check=False)
    cu, tu = texts["user"]
    user = np.searchsorted(user_vocab, tu)[cu].astype(np.int32)
    ca, ta = texts["model_a"]
    cb, tb = texts["model_b"]
    a = np.searchsorted(model_vocab, ta)[ca].astype(np.int64)
    b = np.searchsorted(model_vocab, tb)[cb].astype(np.int64)
    choice = _encode_winner(frame[columns["winner"]], columns["winner"])
    reason = np.where(a == b, 2, np.where(choice < 0, 1, 0)).astype(np.int8)
    k = model_vocab.shape[0]
    usable = reason == 0
    # tie rows keep their pair (cell (a K + b) 2; their reason says tie), for ties in the likelihood
    cell = np.where(usable | (reason == 1), (a * k + b) * 2 + np.maximum(choice, 0), -1).astype(np.int64)
    out = {"user": user, "cell": cell, "reason": reason}
    if mu is not None:
        out["known"] = np.where(a == strong_code, logit(mu), np.where(b == strong_code, -logit(mu), 0.0))
    elif use_p_a and columns.get("p_a") is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = _encode_p_a(frame[columns["p_a"]].reset_index(drop=True), columns["p_a"], usable)
        out["known"] = logit(p)
    if len(casual_names):
        x = covariate_values(frame.reset_index(drop=True), casual_names, usable)
        for j in range(x.shape[1]):
            out[f"cx{j}"] = x[:, j]
    return pd.DataFrame(out)


def _usable_covariates(frame: pd.DataFrame, m: int) -> np.ndarray:
    """The casual covariates ``(n_usable, m)`` of a partition's usable rows (for the global bin edges)."""
    usable = frame["reason"].to_numpy() == 0
    return np.column_stack([frame[f"cx{j}"].to_numpy()[usable] for j in range(m)])


def _broadcast(value):
    """Send a (possibly large) array to every worker once: a scattered future under
    distributed, else a Delayed (the local schedulers share memory)."""
    from dask import delayed

    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return delayed(value)
    return client.scatter(value, broadcast=True, hash=False)


def _partition_pairs(frame: pd.DataFrame, ties: bool = False):
    """Sorted unique pair keys ``a K + b`` of a partition's usable rows (and ties, when modelled), with their counts."""
    cell = frame["cell"].to_numpy()
    reason = frame["reason"].to_numpy()
    keys, counts = np.unique(cell[(reason == 0) | ((reason == 1) if ties else False)] >> 1, return_counts=True)
    return keys, counts.astype(np.int64)


def _merge_pairs(*items):
    """Union of (keys, counts) items, counts summed."""
    keys = np.concatenate([i[0] for i in items])
    counts = np.concatenate([i[1] for i in items])
    merged, inverse = np.unique(keys, return_inverse=True)
    return merged, np.bincount(inverse.reshape(-1), weights=counts, minlength=merged.shape[0]).astype(np.int64)


def _tree_merge_pairs(items: list, split_every: int = 8):
    from dask import delayed

    level = list(items)
    while len(level) > 1:
        level = [delayed(_merge_pairs)(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


def _block_from_frame(frame: pd.DataFrame, n_models: int, known: bool, pairs: PairTable | None = None,
                      casual=None, ties: bool = False, style: bool = False) -> Block:
    user = frame["user"].to_numpy()
    reason = frame["reason"].to_numpy()
    usable = reason == 0
    cell = frame["cell"].to_numpy()[usable]
    extra = {}
    if casual is not None:  # casual cells with the global bin edges
        x = np.column_stack([frame[f"cx{j}"].to_numpy()[usable] for j in range(len(casual.names))])
        extra = {"casual_cell": casual.cells(x), "n_casual": casual.n_cells}
    if not known:
        if pairs is None:
            pairs = PairTable.from_keys(np.unique(cell >> 1), n_models)
        index = np.searchsorted(pairs.keys, cell >> 1)
        if ties:  # the ties' pairs (in the vocabulary: ``_partition_pairs`` counted them)
            tie = reason == 1
            tie_pair = np.searchsorted(pairs.keys, frame["cell"].to_numpy()[tie] >> 1)
            if style:  # an attentive style term: ties by (pair, casual cell) (bayes_annot.style)
                x_tie = np.column_stack([frame[f"cx{j}"].to_numpy()[tie] for j in range(len(casual.names))])
                tie_pair = tie_pair.astype(np.int64) * casual.n_cells + casual.cells(x_tie)
                extra["n_tie_casual"] = casual.n_cells
            extra.update(tie=tie, tie_pair=tie_pair)
        block = make_block(user, usable, n_models, cell=(2 * index + (cell & 1)).astype(np.int32), pairs=pairs, **extra)
    else:
        if ties:  # each tie's known log-odds (the blocks share one vocabulary later: with_known_values)
            tie = reason == 1
            extra.update(tie=tie, tie_logit=frame["known"].to_numpy()[tie])
        block = make_block(user, usable, n_models, choice=(cell & 1).astype(np.int8),
                           known_logit=frame["known"].to_numpy()[usable], **extra)
    block.ties = int((reason == 1).sum())
    block.same_model = int((reason == 2).sum())
    return block


@dataclass
class DaskFit:
    """What :func:`fit_dask` hands back: the EM result over all users and models, plus bookkeeping.

    Attributes
    ----------
    em : bayes_annot.em.EMResult
        Arrays over all users (``user_labels`` order) and models (``None`` with taste classes).
    user_labels, model_labels : numpy.ndarray of str (object)
        Sorted vocabularies, as :func:`bayes_annot.data.prepare` builds them.
    n_rows_user : int64 array
        Input rows per user (ties and same-model pairs included).
    n_labels_model : int64 array
        Usable labels per model (as ``model_a`` or ``model_b``).
    pair_counts : bayes_annot.pairs.PairTable
        Usable labels per compared (model_a, model_b) (the comparison graph; sparse,
        ``.toarray()`` is the ``K x K`` table).
    counts : dict
        ``rows, rows_in_likelihood, ties, same_model, users, models``.
    columns : dict
        Resolved role -> column name.
    strength_mode : str
        ``"learned"`` or ``"known (...)"``, as :func:`bayes_annot.problem.build_problem` says.
    strengths : array
        The learned strengths, or the implied ones for a known ``mu``.
    n_partitions : int
        Blocks after the shuffle by user.
    partition_rows : int64 array
        Rows of each input partition (input row numbers of :func:`to_rows` partitions).
    timings : dict
        Seconds spent in scan, encode+shuffle+persist, EM.
    tastes : bayes_annot.tastes.TasteResult or None
        The fit with taste classes (``tastes > 1``).
    """

    em: EMResult
    user_labels: np.ndarray
    model_labels: np.ndarray
    n_rows_user: np.ndarray
    n_labels_model: np.ndarray
    pair_counts: PairTable
    counts: dict
    columns: dict
    strength_mode: str
    strengths: np.ndarray | None
    n_partitions: int
    timings: dict = field(default_factory=dict)
    partition_rows: np.ndarray | None = None
    tastes: object = None  # the TasteResult of a fit with taste classes (``em`` is then None)
    casual: object = None  # the casual covariates' design (bayes_annot.casual.CasualDesign), if any
    style: object = None  # the attentive style term's design (bayes_annot.style.StyleDesign), if any
    ties_mode: str = "ignore"  # whether ties entered the likelihood ("model") or not (bayes_annot.ties)
    taste_extra: dict = field(default_factory=dict)  # tastes="auto": summary["taste_selection"], ["taste_diagnostic"]

    parameters = property(lambda self: self.to_estimates().parameters, doc="Global parameters (as the summary's).")

    def to_estimates(self):
        """The engine-neutral :class:`bayes_annot.problem.Estimates` of this fit."""
        from .local_em import em_estimates, taste_estimates

        return taste_estimates(self.tastes, self.taste_extra) if self.tastes is not None else em_estimates(
            self.em, self.em.variant, self.strengths, self.casual, style=self.style)

    def components(self) -> np.ndarray:
        """Connected component of each model in the comparison graph (as ``problem.graph_components``)."""
        return self.pair_counts.components()


def fit_dask(
    ddf,
    *,
    spec: BehaviourSpec | None = None,
    user: str | None = None,
    model_a: str = "model_a",
    model_b: str = "model_b",
    winner: str = "winner",
    p_a: str | None = None,
    use_p_a: bool = True,
    mu: float | None = None,
    strong_model: str | None = None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    informative_tol: float = INFORMATIVE_TOL,
    start: dict | None = None,
    npartitions: int | None = None,
    callback=None,
    progress=None,
    seed: int = 0,
    casual_covariates="auto",
    casual_bins: int = DEFAULT_BINS,
    casual=None,
    ties: str | None = None,
    max_tastes: int | None = None,
    style_covariates="none",
) -> DaskFit:
    """Fit the behaviour model by EM on a Dask DataFrame (map-reduce over partitions).

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        One row per annotation (columns as for :func:`bayes_annot.fit`).
    spec : BehaviourSpec, optional
        The model (default: ``BehaviourSpec()``, two-class with one ranking);
        its strengths are set from the data (a ``p_a`` column or ``mu``: known,
        :meth:`~bayes_annot.spec.BehaviourSpec.with_strengths`). With
        ``spec.n_tastes > 1`` the taste classes are fitted by
        :func:`bayes_annot.tastes.fit_tastes` over the partitions' blocks
        (:class:`DaskRunner`), with its starts (seeded by ``seed``); a ``start``
        with a ``"tastes"`` entry is then the only start.
    user, model_a, model_b, winner, p_a, use_p_a, mu, strong_model, tol, max_iter
        As in :func:`bayes_annot.fit`.
    informative_tol : float
        As :data:`bayes_annot.em.INFORMATIVE_TOL`.
    start : dict, optional
        Warm start (``pi``, ``q``, ``strengths``, ``theta`` (n_users, NaN = new), ``m``)
        in this data's vocabularies.
    npartitions : int, optional
        Number of blocks after the shuffle by user (default: the input's).
    callback : callable(iteration, loglik), optional
    progress : bool or bayes_annot.progress.Progress, optional
        Bars on stderr after ~2 s of work: the passes over the partitions
        (local schedulers) and the EM iterations with the objective
        (see :mod:`bayes_annot.progress`; default: none).
    seed : int
        Seed of the taste-class starts.
    casual_covariates, casual_bins
        As in :func:`bayes_annot.fit`. The bin edges are the quantiles of the covariates of all
        usable rows (gathered once on the driver, ``8 m`` bytes per row), so the design is the
        in-memory fit's.
    casual : CasualDesign, optional
        A previous fit's casual design (bins) to use instead of new edges.
    ties : {"model", "ignore"}, optional
        As in :func:`bayes_annot.fit` (:func:`bayes_annot.ties.resolve_ties`; the mode fitted is
        ``DaskFit.ties_mode``).
    max_tastes : int, optional
        ``tastes="auto"``: choose the number of taste classes among ``1..max_tastes`` as an in-memory fit
        does (:func:`bayes_annot.local_em.fit_taste_classes`, the held-out folds over each user's labels). The
        cross-validation needs every label, so the integer-coded labels (user, pair, choice, ties and casual
        cells; about 13 bytes per row, in input row order) are gathered on the driver, where the choice and
        the chosen fit run (the in-memory fit's, number for number).
    style_covariates : "none", "auto", list of str or StyleDesign
        The attentive style term (:mod:`bayes_annot.style`), as in :func:`bayes_annot.fit`: the cells'
        representative values are the means over every usable row (a ``StyleDesign``: a previous fit's).

    Returns
    -------
    DaskFit

    Raises
    ------
    InputError
        As :func:`bayes_annot.data.prepare` (missing columns or ids, unknown
        winners, bad ``p_a``); row numbers count from the start of the log.

    Notes
    -----
    Runs on whatever scheduler Dask is configured with: a ``distributed.Client``
    when one is active, else the local threaded scheduler.
    """
    import dask
    from dask import delayed

    timings = {}
    t0 = time.perf_counter()
    spec = BehaviourSpec() if spec is None else spec
    priors, q_fixed, tastes = spec.priors, spec.q_fixed, spec.n_tastes
    meta = ddf._meta
    if meta.columns.duplicated().any():
        raise InputError(f"column '{meta.columns[meta.columns.duplicated()][0]}' appears more than once")
    columns = _resolve_columns(meta, ColumnMap(user=user, model_a=model_a, model_b=model_b, winner=winner, p_a=p_a))
    wanted = [columns[r] for r in ("user", "model_a", "model_b", "winner")] + ([columns["p_a"]] if columns.get("p_a") else [])
    casual_names, casual_columns = casual_input_columns(meta.columns,
                                                        casual_covariates if casual is None else casual.names)
    narrow = ddf[list(dict.fromkeys(wanted + casual_columns))]
    parts = narrow.to_delayed()
    scans = [delayed(_scan_partition)(p, columns, casual_names) for p in parts]
    settings = resolve_progress(progress)
    with dask_tasks(settings, f"Dask: reading {len(parts)} partitions"):
        headers, user_vocab, model_vocab = dask.compute(
            [delayed(_header)(s) for s in scans],
            _tree_union([delayed(_pick)(s, "users") for s in scans]),
            _tree_union([delayed(_pick)(s, "models") for s in scans]),
        )
    lengths = np.array([h[0] for h in headers], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, (_, error) in enumerate(headers):
        if error is not None:
            raise InputError(_ROW_RE.sub(lambda mt: f"input row {int(mt.group(1)) + offsets[i]}", error))
    if offsets[-1] == 0:
        raise InputError("input is empty: no rows")
    if len(model_vocab) < 2:
        raise InputError(
            f"only one model ('{model_vocab[0]}') in columns '{columns['model_a']}'/'{columns['model_b']}': nothing to compare"
        )
    timings["scan"] = time.perf_counter() - t0
    k = int(model_vocab.shape[0])
    strength_mode, strong_code = "learned", strong_model_code(mu, strong_model, model_vocab)
    if strong_code is not None:
        strength_mode = f"known (mu={mu:g} for '{model_vocab[strong_code]}')"
    elif use_p_a and columns.get("p_a") is not None:
        strength_mode = f"known (column '{columns['p_a']}')"
    known = strength_mode != "learned"
    spec = spec.with_strengths(not known)  # known strengths refuse taste classes
    # ties are read into the blocks unless they cannot be modelled (the log's count decides below)
    tie_blocks = resolve_ties(ties, 1) == "model"

    t1 = time.perf_counter()
    uv, mv = _broadcast(user_vocab), _broadcast(model_vocab)
    meta_enc = {"user": np.int32, "cell": np.int64, "reason": np.int8}
    if known:
        meta_enc["known"] = float
    for j in range(len(casual_names)):
        meta_enc[f"cx{j}"] = float
    meta_frame = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in meta_enc.items()})
    encoded = narrow.map_partitions(
        _encode_partition, columns, uv, mv, strong_code, mu, use_p_a, casual_names, meta=meta_frame
    )
    nparts = npartitions or narrow.npartitions
    shuffled = encoded.shuffle("user", npartitions=nparts).persist()
    frames = shuffled.to_delayed()
    # the compared pairs (sparse: never a K x K array), reduced on the workers
    pair_keys, pair_n = dask.compute(_tree_merge_pairs([delayed(_partition_pairs)(p, tie_blocks) for p in frames]))[0]
    pair_counts = PairTable.from_keys(pair_keys, k, pair_n)
    pairs_vocab = _broadcast(pair_counts) if not known else None
    if len(casual_names) and casual is None:  # the bin edges: quantiles over every usable row
        xs = dask.compute(*[delayed(_usable_covariates)(p, len(casual_names)) for p in frames])
        casual = casual_design(casual_names, np.concatenate(xs, axis=0), casual_bins)
    elif not len(casual_names):
        casual = None
    spec = spec.with_casual(casual)
    style = style_covariates if isinstance(style_covariates, StyleDesign) else None
    if style is None and parse_style_covariates(style_covariates) != "none":
        xs_style = None
        if casual is not None:  # the cells' representative values: means over every usable row
            xs_style = np.concatenate(dask.compute(*[delayed(_usable_covariates)(p, len(casual.names)) for p in frames]))
        style = style_design(style_covariates, casual, xs_style, columns=[str(c) for c in meta.columns])
    if style is not None:
        if known:
            raise InputError("style covariates need learned strengths (no p_a column, no mu): use "
                             "style_covariates='none' (--style-covariates none)")
        spec = spec.with_style(style)
    blocks = [delayed(_block_from_frame)(p, k, known, pairs_vocab, casual, tie_blocks, style is not None)
              for p in frames]
    with dask_tasks(settings, f"Dask: encoding and shuffling {len(parts)} partitions"):
        blocks = list(dask.persist(*blocks))
        summaries = dask.compute(*[delayed(_block_counts)(b) for b in blocks])
    del shuffled, frames
    timings["encode_shuffle"] = time.perf_counter() - t1
    n_users = int(user_vocab.shape[0])
    counts_all = np.sum([s["tally"] for s in summaries], axis=0)  # rows, usable
    n_labels_model = pair_counts.model_counts().astype(np.int64)
    n_rows_user = np.zeros(n_users, dtype=np.int64)
    for s in summaries:
        n_rows_user[s["users"]] = s["n_rows"]
    counts = {
        "rows": int(offsets[-1]),
        "rows_in_likelihood": int(counts_all[1]),
        "ties": int(np.sum([s["ties"] for s in summaries])),
        "same_model": int(np.sum([s["same_model"] for s in summaries])),
        "users": n_users,
        "models": k,
    }
    ties_mode = resolve_ties(ties, counts["ties"])
    known_values = None
    if known and tie_blocks:  # one vocabulary of known log-odds over the blocks, so that their tables agree
        known_values = dask.compute(_tree_union([delayed(_pick_known)(b) for b in blocks]))[0]
        shared = _broadcast(known_values)
        blocks = list(dask.persist(*[delayed(with_known_values)(b, shared) for b in blocks]))
    t2 = time.perf_counter()
    runner = DaskRunner(blocks, n_users, pairs=None if known else pair_counts,
                        tie_counts=(float(counts["ties"]), float(counts["rows_in_likelihood"])) if ties_mode == "model"
                        else None, known_values=known_values)
    taste_fit, taste_extra = None, {}
    if max_tastes is not None:  # tastes="auto": the choice on the driver's coded labels, then the partitions' fit
        from .local_em import fit_taste_classes

        coded = dask.compute(*[delayed(_coded_rows)(p, len(casual_names)) for p in encoded.to_delayed()])
        problem = _coded_problem(coded, k, n_users, casual, ties_mode == "model", style=spec.style is not None)
        taste_fit, taste_extra = fit_taste_classes(problem, spec, tol=tol, max_iter=max_iter, seed=seed,
                                                   max_tastes=max_tastes)
        del coded, problem
    with em_callback(settings, callback, desc=f"EM over {nparts} blocks") as each_iteration:
        if taste_fit is not None:
            em = None
        elif tastes != 1:
            from .tastes import fit_tastes

            warm = (start or {}).get("tastes")
            taste_fit = fit_tastes(runner, int(tastes), priors=priors, q_fixed=q_fixed, tol=tol, max_iter=max_iter, seed=seed,
                                   informative_tol=informative_tol, casual=casual, style=style,
                                   **({"n_starts": 0, "init": [warm]} if warm else {}))
            em = None
        else:
            em = run_em(
                runner, k, spec, tol=tol, max_iter=max_iter, informative_tol=informative_tol, start=start, callback=each_iteration,
                accelerate=default_accelerate(None, spec.variant, k),
            )
    timings["em"] = time.perf_counter() - t2
    strengths = em.strengths if em is not None else taste_fit.strengths[0]
    if strengths is None and mu is not None:
        strengths = np.full(k, -logit(mu) / k)
        strengths[strong_code] = logit(mu) * (k - 1) / k
    del blocks, runner
    return DaskFit(
        em=em, user_labels=np.asarray(user_vocab, dtype=object), model_labels=np.asarray(model_vocab, dtype=object),
        n_rows_user=n_rows_user, n_labels_model=n_labels_model, pair_counts=pair_counts, counts=counts, columns=columns,
        strength_mode=strength_mode, strengths=strengths, n_partitions=nparts, timings=timings,
        partition_rows=lengths, tastes=taste_fit, casual=casual, style=style, ties_mode=ties_mode, taste_extra=taste_extra,
    )


def _coded_rows(frame: pd.DataFrame, n_covariates: int) -> dict:
    """One encoded partition's ``user``, ``cell``, ``reason`` (and covariates ``x``) arrays, in row order."""
    out = {key: frame[key].to_numpy() for key in ("user", "cell", "reason")}
    if n_covariates:
        out["x"] = np.column_stack([frame[f"cx{j}"].to_numpy() for j in range(n_covariates)])
    return out


def _coded_problem(coded, n_models: int, n_users: int, casual, ties: bool, style: bool = False):
    """The :class:`~bayes_annot.em.UsableLabels` of the gathered coded rows (input row order, as
    :func:`bayes_annot.problem.build_problem` of the same log in memory; learned strengths; ``style``: an
    attentive style term, the ties keep their casual cells too)."""
    from .em import UsableLabels

    user = np.concatenate([c["user"] for c in coded]).astype(np.int64)
    cell = np.concatenate([c["cell"] for c in coded])
    reason = np.concatenate([c["reason"] for c in coded])
    usable, pair = reason == 0, cell >> 1
    problem = UsableLabels(user=user[usable], model_a=pair[usable] // n_models, model_b=pair[usable] % n_models,
                           choice_a=(cell[usable] & 1).astype(np.int8), n_users=n_users, n_models=n_models)
    x = np.concatenate([c["x"] for c in coded], axis=0) if casual is not None else None
    if casual is not None:
        problem.casual_cell = casual.cells(x[usable])
        problem.n_casual = casual.n_cells
    if ties:
        tie = reason == 1
        problem.tie_user, problem.tie_model_a, problem.tie_model_b = user[tie], pair[tie] // n_models, pair[tie] % n_models
        if style and casual is not None:
            problem.tie_casual_cell = casual.cells(x[tie])
    return problem


def _pick_known(block: Block) -> np.ndarray:
    return block.known_values


def _block_counts(block: Block) -> dict:
    return {
        "users": block.users, "n_rows": block.n_rows,
        "tally": np.array([int(block.n_rows.sum()), int(block.n_user.sum())]),
        "ties": block.ties, "same_model": block.same_model,
    }


# --------------------------------------------------------------------------- rows accounting


def _rows_partition(frame, columns, user_vocab, model_vocab, quality, keep, out_columns, no_verdict=None):
    texts = _partition_texts(frame, columns, check=False)
    cu, tu = texts["user"]
    user = np.searchsorted(user_vocab, tu)[cu]
    ca, ta = texts["model_a"]
    cb, tb = texts["model_b"]
    same = (ta[ca] == tb[cb])
    choice = _encode_winner(frame[columns["winner"]], columns["winner"])
    usable = ~same & (choice >= 0)
    kept = usable & keep[user]
    decided = np.where(kept, 0, 3) if no_verdict is None else np.where(no_verdict[user], 4, np.where(kept, 0, 3))
    code = np.where(usable, decided, np.where(same, 2, 1)).astype(np.int8)
    out = frame.copy()
    out.columns = out_columns
    out["kept"] = kept
    out["reason"] = pd.Categorical.from_codes(code, categories=REASON_CATEGORIES)
    out["weight"] = quality[user]
    return out


def to_rows(ddf, fit: DaskFit, keep: np.ndarray, quality: np.ndarray | None = None, no_verdict: np.ndarray | None = None):
    """Every input row with ``kept``, ``reason`` and ``weight``, as a lazy Dask DataFrame.

    Computed partition by partition from the input (same order as the input);
    only the vocabulary and the per-user ``quality``/``keep`` arrays are sent to
    the workers. Write it with ``.to_csv(path, single_file=True, index=False)``
    or ``.to_parquet(dir)``. Input columns named ``kept``, ``reason`` or
    ``weight`` are renamed ``input_<name>`` as in ``FitResult.rows``.
    """
    quality = fit.em.quality if quality is None else quality
    renames = input_renames(ddf.columns)
    out_columns = [renames.get(c, c) for c in ddf.columns]
    meta = ddf._meta.copy()
    meta.columns = out_columns
    meta["kept"] = pd.Series([], dtype=bool)
    meta["reason"] = pd.Categorical([], categories=REASON_CATEGORIES)
    meta["weight"] = pd.Series([], dtype=float)
    uv = _broadcast(np.asarray(fit.user_labels).astype(str))
    mv = _broadcast(np.asarray(fit.model_labels).astype(str))
    return ddf.map_partitions(
        _rows_partition, fit.columns, uv, mv, _broadcast(np.asarray(quality, dtype=float)),
        _broadcast(np.asarray(keep, dtype=bool)), out_columns,
        None if no_verdict is None else _broadcast(np.asarray(no_verdict, dtype=bool)), meta=meta,
    )
