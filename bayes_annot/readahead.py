"""Reading the input file ahead: the command line's background read, encoding and hash of its input.

:func:`prefetch` starts reading a CSV log with pyarrow, dictionary-encoding its id columns and hashing the
file (the SHA-256 recorded in ``summary.json``) in background threads; :func:`bayes_annot.data.read_table`,
:func:`bayes_annot.data.prepare` and :func:`file_sha256` then take the results (if the file is unchanged),
else they do the work themselves. This module imports only the standard library (and pyarrow, which imports
numpy, when a read starts), not pandas: the command line calls it before it imports pandas, so that on a
machine with a free core the file is read and encoded while pandas, SciPy and the engines are imported.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from .errors import InputError

_PREFETCHED: dict = {}  # file identity -> {"sha256": (done event, result box), "csv": ...}: see prefetch

#: A CSV file up to this size is read on one core and then hashed, in one background thread: a 10^6-row log
#: (40 MB) is read in about the time pandas takes to import on the other core. A larger file is read on every
#: core (the start-up cannot hide it) and hashed in a thread of its own.
ONE_CORE_BYTES = 64 << 20


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def prefetch(path: str | Path, columns=()) -> None:
    """Start hashing an input file (and reading it, for a ``.csv``) in background threads.

    The command line calls this first, before it imports pandas, so that the file is read while pandas and the
    engines are imported; :func:`~bayes_annot.data.read_table` and :func:`file_sha256` then take the results
    (if the file is unchanged: same size and modification time), else they do the work themselves. Nothing is
    raised here: a file that cannot be read fails later, with the usual message.

    Parameters
    ----------
    path : str or Path
        The input file (a folder or a missing file is ignored).
    columns : sequence of str, optional
        Id columns of a CSV file to dictionary-encode once read (the command line's ``--user``, ``--model-a``,
        ``--model-b`` and ``--winner``); :func:`bayes_annot.data.prepare` then takes their codes instead of
        factorizing them. A name the file does not have is skipped.
    """
    import threading

    path = Path(path)
    try:
        if not path.is_file():
            return
        key = _file_key(path)
    except OSError:
        return
    jobs = [("sha256", lambda: _sha256_of(path))]
    one_core = True
    if path.suffix.lower() == ".csv":
        import pyarrow.compute  # noqa: F401  (imported here, the threads import nothing: the encoding's kernels)
        import pyarrow.csv  # noqa: F401

        one_core = key[3] <= ONE_CORE_BYTES
        columns = [name for name in dict.fromkeys(columns) if name]

        def read():
            table = _arrow_csv_with_header(path, use_threads=not one_core)
            return table, _dictionary_codes(table, columns)

        jobs.insert(0, ("csv", read))
    slots = {name: (threading.Event(), {}) for name, _ in jobs}  # per job: set when done, and its result
    _PREFETCHED.setdefault(key, {}).update(slots)

    def run(names):
        for name, job in jobs:
            if name in names:
                done, box = slots[name]
                try:
                    box["value"] = job()
                except BaseException:  # left to the caller, which redoes the work and raises its own error
                    pass
                finally:
                    done.set()

    groups = [[name for name, _ in jobs]] if one_core else [[name] for name, _ in jobs]
    for names in groups:
        threading.Thread(target=run, args=(names,), name=f"bayes_annot-prefetch-{'-'.join(names)}").start()


def _dictionary_codes(table, columns) -> dict:
    """``{name: (codes, dictionary)}`` of the string columns named: Arrow's dictionary encoding, the one
    :func:`pandas.factorize` runs on an Arrow-backed column (codes in order of first appearance; a missing
    value's code is -1)."""
    import pyarrow as pa

    out = {}
    for name in columns:
        if name not in table.column_names or table.num_rows == 0 or table.schema.field(name).type != pa.string():
            continue
        encoded = table.column(name).dictionary_encode().combine_chunks()
        codes = encoded.indices
        out[name] = (codes.fill_null(-1) if codes.null_count else codes, encoded.dictionary)
    return out


def _prefetched(path: Path, name: str, pop: bool = False):
    """The result of a :func:`prefetch` job for ``path`` (waiting for it), or ``None``."""
    if not _PREFETCHED:
        return None
    try:
        key = _file_key(path)
    except OSError:
        return None
    for stale in [k for k in _PREFETCHED if k[0] == key[0] and k != key]:  # the file changed since: drop its copy
        del _PREFETCHED[stale]
    entry = _PREFETCHED.get(key, {})
    job = entry.pop(name, None) if pop else entry.get(name)
    if job is None:
        return None
    job[0].wait()
    return job[1].get("value")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (recorded in ``summary.json``)."""
    done = _prefetched(Path(path), "sha256")
    return done if done is not None else _sha256_of(path)


def _sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_glob(text) -> bool:
    """Whether an input names a glob of parquet files: it has ``*``, ``?`` or ``[`` and is not itself an
    existing file or folder (``votes[1].csv`` is a file name)."""
    text = str(text)
    return any(ch in text for ch in "*?[") and not Path(text).exists()


def _check_csv_header(path: Path) -> list[str] | None:
    """The CSV header's names; a name given twice is an error (never silently renamed ``winner.1``)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), None)
    except csv.Error:  # left to the parser, whose message names the problem
        return None
    seen = set()
    for name in header or ():
        if name in seen and name.strip():
            raise InputError(f"column '{name}' appears more than once in the header of '{path}'")
        seen.add(name)
    return header


def _arrow_csv_with_header(path: Path, use_threads: bool = True):
    """:func:`bayes_annot.data._read_csv`'s Arrow table (header row dropped), or an error (:func:`prefetch`'s job)."""
    header = _check_csv_header(path)
    if not header:
        raise InputError(f"input '{path}' is empty")
    names = [name if name != "" else f"Unnamed: {i}" for i, name in enumerate(header)]
    return _arrow_csv(path, names, use_threads).slice(1)


def _arrow_csv(path: Path, names: list[str], use_threads: bool = True):
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    return pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=0, block_size=1 << 24, use_threads=use_threads),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names}, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
