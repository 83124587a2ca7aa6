"""Export the kept labels as a preference data set a DPO / reward-model trainer reads.

One record per kept row that has a winner: ``prompt``, ``chosen``, ``rejected``
(the text of the picked and of the other response), ``weight`` (the user's
quality, for weighted training), ``user``, ``chosen_model``,
``rejected_model``. ``prompt`` / ``chosen`` / ``rejected`` are the column names
TRL's ``DPOTrainer`` (and ``RewardTrainer``) read from a data set; the others
ride along for weighting and auditing.

Text comes from three columns (``prompt``, ``response_a``, ``response_b`` by
default), or, for Chatbot Arena style records that lack them, from
``conversation_a`` / ``conversation_b``: lists of ``{"role", "content"}``
messages, where the prompt is the first user message and each response is the
last assistant message.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .data import CONVERSATIONS as _CONVERSATIONS
from .data import first_message as _first_message
from .data import last_message as _last_message
from .errors import InputError
from .outdir import TempFile, apply_umask, check_dpo_target, clean_temps_warning, is_temp
from .saved import bool_column

__all__ = ["DPO_COLUMNS", "to_dpo", "dpo_from_rows", "stage_dpo", "write_dpo"]

#: Columns of the exported data set, in order.
DPO_COLUMNS = ("prompt", "chosen", "rejected", "weight", "user", "chosen_model", "rejected_model")

_SUFFIXES = (".jsonl", ".parquet")


def to_dpo(
    result,
    path=None,
    *,
    prompt: str = "prompt",
    response_a: str = "response_a",
    response_b: str = "response_b",
) -> pd.DataFrame:
    """Kept, decided labels as ``prompt, chosen, rejected, weight, ...`` records.

    Parameters
    ----------
    result : FitResult
        A fitted result; its current filter decides which rows are kept
        (``result.filter("fdr:0.1")`` to change it first).
    path : str or Path, optional
        Also write the records to ``.jsonl`` (one JSON object per line, UTF-8)
        or ``.parquet``, chosen by the suffix. The file is written to a
        temporary file beside ``path`` and moved into place when complete. An
        existing file is replaced only when it holds DPO records (these columns).
    prompt, response_a, response_b : str
        Columns holding the prompt and the text of the response of
        ``model_a`` and of ``model_b``. When a column is absent and the input
        has Chatbot Arena's ``conversation_a`` / ``conversation_b``, the text is
        taken from the conversations instead.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`DPO_COLUMNS`, one row per kept input row (``kept``:
        kept user, two different models, a winner: ties and same-model pairs
        are never exported). Rows of users the filter has no verdict on
        (``reason = "no_verdict"``) follow the ``no_verdict`` policy: exported
        under ``keep`` (the default), not under ``drop``. The index is the row's position
        in the input. ``chosen_model`` / ``rejected_model`` and ``user`` are
        the ids as text.

    Raises
    ------
    InputError
        Text columns are missing (the message names them), a kept row has no
        text, ``path`` has a suffix other than ``.jsonl`` / ``.parquet``, is a
        folder, or is an existing file that does not hold DPO records.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> from bayes_annot.export import to_dpo
    >>> log = ba.simulate(n_users=100, n_models=4, with_text=True, seed=2)
    >>> dpo = to_dpo(ba.fit(log, filter="fdr:0.1"))
    >>> list(dpo.columns)
    ['prompt', 'chosen', 'rejected', 'weight', 'user', 'chosen_model', 'rejected_model']
    >>> bool((dpo.chosen != dpo.rejected).all())
    True
    """
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in _SUFFIXES:
            raise InputError(
                f"DPO export path '{path}' must end in .jsonl or .parquet (got '{path.suffix or 'no suffix'}')"
            )
        check_dpo_target(path, None, DPO_COLUMNS)  # an existing file that is not DPO records is never replaced
    data = result._data
    frame = data.frame
    rows = result.rows
    selected = np.flatnonzero(bool_column(rows["kept"]))  # a legacy CSV's text column too
    texts = _texts(frame, selected, prompt, response_a, response_b)

    out = _dpo_frame(
        texts,
        choice_a=data.choice_a[selected] == 1,
        model_a=data.model_labels[data.model_a[selected]],
        model_b=data.model_labels[data.model_b[selected]],
        weight=rows["weight"].to_numpy(dtype=float)[selected],
        user=data.user_labels[data.user[selected]],
        index=selected,
    )
    if path is not None:
        _write_atomic(out, path)
    return out


def _dpo_frame(texts: dict, *, choice_a, model_a, model_b, weight, user, index) -> pd.DataFrame:
    """The DPO records of the selected rows (``choice_a``: the row's ``model_a`` was picked)."""
    text_a, text_b = texts["response_a"], texts["response_b"]
    out = pd.DataFrame(
        {
            "prompt": texts["prompt"],
            "chosen": np.where(choice_a, text_a, text_b),
            "rejected": np.where(choice_a, text_b, text_a),
            "weight": np.asarray(weight, dtype=float),
            "user": user,
            "chosen_model": np.where(choice_a, model_a, model_b),
            "rejected_model": np.where(choice_a, model_b, model_a),
        },
        index=pd.Index(np.asarray(index, dtype=np.int64), name="row"),
    )
    for column in ("prompt", "chosen", "rejected", "user", "chosen_model", "rejected_model"):
        out[column] = out[column].astype(object)
    return out


def dpo_from_rows(
    rows: pd.DataFrame,
    columns: dict,
    *,
    offset: int = 0,
    prompt: str = "prompt",
    response_a: str = "response_a",
    response_b: str = "response_b",
) -> pd.DataFrame:
    """DPO records of a piece of a result's ``rows`` table (input columns + ``kept, reason, weight``).

    The engine of :meth:`bayes_annot.fit.FitResult.to_dpo` for Dask and loaded results, applied
    to each partition: ids are normalised as :func:`bayes_annot.data.prepare`
    does (text, surrounding whitespace trimmed), the winner is read from the
    input column, and the index is ``offset`` + the position in ``rows`` (the
    input row number when ``offset`` is the partition's first row). Same
    records as :func:`to_dpo` on the in-memory fit (a tested property).

    Parameters
    ----------
    rows : pandas.DataFrame
    columns : dict
        Role -> input column name (``summary["settings"]["columns"]``).
    offset : int
    prompt, response_a, response_b : str
        As in :func:`to_dpo`.
    """
    from .data import _encode_winner, _uniques_as_text

    def column(role):
        name = columns[role]
        return name if name in rows.columns or f"input_{name}" not in rows.columns else f"input_{name}"

    selected = np.flatnonzero(bool_column(rows["kept"]))  # a legacy CSV's text column too
    texts = _texts(rows, selected, prompt, response_a, response_b)
    picked = rows.iloc[selected]

    def ids(role):
        codes, uniques = pd.factorize(picked[column(role)])
        return _uniques_as_text(uniques)[0].astype(object)[codes]

    return _dpo_frame(
        texts,
        choice_a=_encode_winner(picked[column("winner")], column("winner")) == 1,
        model_a=ids("model_a"),
        model_b=ids("model_b"),
        weight=picked["weight"].to_numpy(dtype=float),
        user=ids("user"),
        index=offset + selected,
    )


# --------------------------------------------------------------------------- text


def _texts(frame: pd.DataFrame, selected: np.ndarray, prompt: str, response_a: str, response_b: str) -> dict:
    """Text of the selected rows per role: from the named columns, else from Arena conversations."""
    wanted = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    missing = {role: col for role, col in wanted.items() if col not in frame.columns}
    have_conversations = all(c in frame.columns for c in _CONVERSATIONS)
    if missing and not have_conversations:
        raise InputError(
            "DPO export needs the prompt and response text: missing column(s) "
            + ", ".join(f"'{col}'" for col in missing.values())
            + " (name them with --prompt/--response-a/--response-b, in Python prompt=/response_a=/response_b=, or give Chatbot Arena's "
            "'conversation_a' and 'conversation_b')"
        )
    out: dict[str, np.ndarray] = {}
    for role, col in wanted.items():
        if role in missing:
            continue
        values = frame[col].to_numpy(dtype=object)[selected]
        out[role] = np.array([_clean_text(v, col, int(i)) for v, i in zip(values, selected)], dtype=object)
    if missing:
        conv = {c: frame[c].to_numpy(dtype=object)[selected] for c in _CONVERSATIONS}
        if "prompt" in missing:
            out["prompt"] = np.array(
                [_first_message(v, "user", "conversation_a", int(i)) for v, i in zip(conv["conversation_a"], selected)],
                dtype=object,
            )
        for role, conv_col in (("response_a", "conversation_a"), ("response_b", "conversation_b")):
            if role in missing:
                out[role] = np.array(
                    [_last_message(v, "assistant", conv_col, int(i)) for v, i in zip(conv[conv_col], selected)],
                    dtype=object,
                )
    return out


def _clean_text(value, column: str, row: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        raise InputError(f"column '{column}' is empty in row {row}, which is kept: cannot export it")
    return value if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- writing


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    write_dpo([frame], path)


def write_dpo(frames, path) -> int:
    """Write DPO record frames (an iterable: one pass, bounded memory) to ``path`` atomically; returns the
    number of records.

    The records go to a temporary file beside ``path`` (:class:`bayes_annot.outdir.TempFile`,
    ``.NAME.tmp-...``), renamed into place at the end; what a killed earlier write of ``path`` left is
    removed first. A ``path`` that is itself such a file (``save(dpo=...)`` stages the DPO file with the
    folder) is written in place: its writer moves it.
    """
    path = Path(path)
    _check_suffix(path)
    if is_temp(path):
        return _write_records(frames, path)
    clean_temps_warning(path)
    staged = TempFile(path)
    try:
        n_records = _write_records(frames, staged.path, path.suffix)
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    return n_records


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _SUFFIXES:
        raise InputError(f"DPO export path '{path}' must end in .jsonl or .parquet (got '{path.suffix or 'no suffix'}')")


def _write_records(frames, target: Path, suffix: str | None = None) -> int:
    """The records of ``frames`` written into the file ``target`` (JSON lines or parquet by ``suffix``)."""
    n_records = 0
    if (suffix or target.suffix).lower() == ".jsonl":
        with open(target, "w", encoding="utf-8", newline="\n") as out:
            for frame in frames:
                n_records += len(frame)
                for record in frame.to_dict(orient="records"):
                    record["weight"] = float(record["weight"])
                    out.write(json.dumps(record, ensure_ascii=False, allow_nan=False))
                    out.write("\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(c, pa.float64() if c == "weight" else pa.string()) for c in DPO_COLUMNS])
        with pq.ParquetWriter(target, schema) as writer:
            for frame in frames:
                n_records += len(frame)
                writer.write_table(pa.Table.from_pandas(frame.reset_index(drop=True), schema=schema, preserve_index=False))
    return n_records


def stage_dpo(frames, path: Path, staging_dir: Path | None = None) -> tuple[Path, int]:
    """Write DPO record frames (an iterable: one pass, bounded memory) to a temporary file.

    The file is created in ``staging_dir`` (default: beside ``path``; give a
    folder on the same file system when ``path``'s folder is about to be
    replaced, e.g. a DPO file inside the output folder). Returns the temporary
    file and the number of records; the caller moves the file into place with
    ``os.replace`` once everything else succeeded. On any error the temporary
    file is removed and nothing is left behind.
    """
    path = Path(path)
    _check_suffix(path)
    parent = Path(staging_dir) if staging_dir is not None else path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    try:
        os.close(handle)
        apply_umask(tmp)
        return Path(tmp), _write_records(frames, Path(tmp), path.suffix)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
