"""Result folders that never lose anybody's data.

Guarantees (see ``docs/reliability.md``):

* **Ours only.** A folder is replaced only when it is empty or holds
  bayes_annot results and nothing else: every result folder carries a
  ``manifest.json`` listing the files the package wrote, and anything not on
  that list (a thesis, the input log, a sub-folder of parquet parts) makes the
  write refuse with a one-line :class:`~bayes_annot.errors.InputError`. A folder
  that contains an input, a symbolic link, a file, ``.``, ``""`` and an
  unwritable parent are refused too, all before any fitting.
* **All or nothing.** Everything (tables, summary, report, posterior, a DPO
  file inside the folder) is written into a staging folder beside the target
  and swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames
  where the file system lacks it). A crash leaves the previous results whole;
  the next write to the same folder removes or restores what a crash left:
  only folders whose record proves the package made them (their name and
  inode, see :func:`recover`); anything else named like a leftover is kept
  with a warning.
* **One writer at a time.** Writers take an exclusive ``flock`` on the output
  folder's parent for the whole job (an update reads, fits and writes under
  it), so two updates of one folder run one after the other and keep every row.
* **Readers see one fit.** :func:`pinned` opens the folder once and reads every
  file relative to that handle, so a reader never mixes files of two fits.
* **Permissions** follow the umask, as ``mkdir`` and plain file writes would.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from glob import escape as glob_escape
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

__all__ = ["MANIFEST", "check_target", "locked", "ResultWriter", "pinned", "read_manifest", "TempFile", "clean_temps", "is_temp",
           "max_parts", "compaction_start", "parts_fit_open"]

#: The marker every result folder carries: which files the package wrote, and how to read its tables.
MANIFEST = "manifest.json"
#: Files a result folder of an older version (before the manifest) may hold.
LEGACY_FILES = frozenset(
    {"users.csv", "models.csv", "rows.csv", "summary.json", "report.html", "posterior.nc", "dpo.jsonl", "dpo.parquet"}
)


# --------------------------------------------------------------------------- checks


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def apply_umask(path) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode a plain file write would give under the umask."""
    os.chmod(path, 0o666 & ~_umask())


def _entries(directory: Path) -> tuple[set[str], set[str]]:
    """Relative paths of the files and of the folders below ``directory``."""
    files, folders = set(), set()
    for root, dirs, names in os.walk(directory):
        rel = Path(root).relative_to(directory)
        for name in dirs:
            folders.add((rel / name).as_posix())
        for name in names:
            files.add((rel / name).as_posix())
    return files, folders


def read_manifest(directory: Path, dir_fd: int | None = None) -> dict | None:
    """The folder's manifest, or ``None`` when it has none (or an unreadable one)."""
    try:
        if dir_fd is not None:
            fd = os.open(MANIFEST, os.O_RDONLY, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as handle:
                manifest = json.loads(handle.read().decode("utf-8"))
        else:
            manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("bayes_annot_result") else None


#: A temporary file add_file writes beside one of the folder's files (``.report.html.tmp-k2j4x9``).
_OUR_TEMP = re.compile(r"\.(.+)\.tmp-[A-Za-z0-9_]+")


def foreign_entry(directory: Path) -> str | None:
    """The first entry of ``directory`` that bayes_annot did not write (``None``: empty or all ours)."""
    files, folders = _entries(directory)
    if STAGING_MARK in files and _record(directory, directory, any_name=True) is not None:
        files.discard(STAGING_MARK)  # the record a swap killed midway left in it (see _mark)
    if not files and not folders:
        return None
    manifest = read_manifest(directory)
    if manifest is not None:
        ours = set(manifest.get("files", [])) | {MANIFEST}
    else:
        try:
            summary = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        if not (isinstance(summary, dict) and "bayes_annot_version" in summary):
            return sorted(files | folders)[0]
        ours = set(LEGACY_FILES)
    implied = {p.as_posix() for f in ours for p in Path(f).parents if p.as_posix() != "."}
    ours |= {f for f in files if (m := _OUR_TEMP.fullmatch(f)) is not None and m.group(1) in ours}  # a killed add_file's
    foreign = sorted((files - ours) | (folders - implied))
    return foreign[0] if foreign else None


def check_target(out, inputs=()) -> Path:
    """Validate an output folder before any work; return its absolute path.

    Raises :class:`InputError` (one line) when ``out`` is empty, ``.`` or a
    folder holding the working directory, a symbolic link, an existing file, a
    folder holding anything bayes_annot did not write, a folder that holds one
    of ``inputs``, or when its parent cannot be created or written.
    """
    text = str(out)
    if not text.strip():
        raise InputError("--out is empty: name the output folder")
    path = Path(text)
    if path.is_symlink():
        raise InputError(f"output folder '{text}' is a symbolic link: give the folder it points to")
    target = Path(os.path.abspath(text))
    cwd = Path(os.getcwd())
    if target == cwd or target in cwd.parents or target == Path(target.anchor):
        raise InputError(f"output folder '{text}' is the current folder or holds it: name a new sub-folder")
    for item in inputs:
        if item is None:
            continue
        source = Path(os.path.abspath(str(item)))
        if source == target or target in source.parents:
            raise InputError(f"output folder '{text}' holds the input '{item}': choose another --out")
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise InputError(f"output path '{text}' exists and is not a folder")
        foreign = foreign_entry(target)
        if foreign is not None:
            raise InputError(
                f"output folder '{text}' holds '{foreign}', which bayes_annot did not write: it replaces only empty "
                "folders and its own result folders; choose another --out"
            )
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"output folder '{text}' is not writable")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot create output folder '{text}': '{ancestor}' is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder '{text}': '{ancestor}' is not writable")
    return target


DPO_SUFFIXES = (".jsonl", ".parquet")
#: Table files a result folder may hold (a DPO file of that name would replace the table).
_TABLE_FILE = re.compile(r"(users|models|rows|rows-outputs|rows-part-[0-9]+)\.(csv|parquet)", re.IGNORECASE)


def check_dpo_target(path, out: Path | None, dpo_columns, inputs=()) -> Path:
    """Validate a ``--dpo`` file before any work (suffix, not a folder, not an input, not somebody else's file).

    An existing file outside ``out`` is replaced only when it holds exactly ``dpo_columns``.
    """
    target = Path(os.path.abspath(str(path)))
    if target.suffix.lower() not in DPO_SUFFIXES:
        raise InputError(f"--dpo '{path}': expected a .jsonl or .parquet file")
    if target.is_dir():
        raise InputError(f"--dpo '{path}' is a folder: name a .jsonl or .parquet file")
    for item in inputs:
        if item is not None and Path(os.path.abspath(str(item))) == target:
            raise InputError(f"--dpo '{path}' is the input file: choose another name")
    inside = out is not None and (target == out or out in target.parents)
    if inside and target.parent == out and _TABLE_FILE.fullmatch(target.name):
        raise InputError(f"--dpo '{path}' is a table of the output folder: name the DPO file otherwise (e.g. dpo.jsonl)")
    if target.exists() and not inside and not _looks_like_dpo(target, dpo_columns):
        raise InputError(f"--dpo '{path}' exists and is not a DPO file written by bayes_annot: choose another name")
    return target


#: The tag every report carries in its ``<head>``: an existing file is replaced by a report only when it has it.
REPORT_MARKER = '<meta name="generator" content="bayes_annot">'
_OLD_REPORT_TITLE = "<title>bayes_annot diagnostics report</title>"  # reports written before the tag


def check_report_target(path) -> Path:
    """Validate a report file before it is written: not a folder, and an existing file only when it is a
    report bayes_annot wrote (a log, a table or a thesis given to ``report --out`` is never overwritten)."""
    target = Path(os.path.abspath(str(path)))
    if target.is_dir():
        raise InputError(f"report path '{path}' is a folder: name an .html file")
    if target.exists() and not _looks_like_report(target):
        raise InputError(f"report path '{path}' exists and is not a report written by bayes_annot: choose another name")
    return target


def _looks_like_report(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8192).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head == "" or REPORT_MARKER in head or _OLD_REPORT_TITLE in head


def _looks_like_dpo(path: Path, dpo_columns) -> bool:
    try:
        if path.stat().st_size == 0:  # nothing to lose (and the staged file save() writes into)
            return True
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as handle:
                first = handle.readline()
            return first == "" or set(json.loads(first)) == set(dpo_columns)
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names) == set(dpo_columns)
    except Exception:  # unreadable, not JSON, not parquet: not ours
        return False


# --------------------------------------------------------------------------- the lock

_held: dict[tuple[int, int], list] = {}
_held_guard = threading.Lock()


@contextmanager
def locked(target: Path, on_wait=None):
    """Hold an exclusive lock for writing ``target`` (a ``flock`` on its parent folder; re-entrant).

    ``on_wait(message)`` is called once when another process holds the lock;
    the call then waits for it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): one writer is the caller's business
        yield
        return
    parent = Path(target).parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        os.close(fd)
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(f"another bayes-annot run is writing beside '{target}': waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        entry = [fd, 1]
        with _held_guard:
            _held[key] = entry
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
                done = entry[1] == 0
                if done:
                    del _held[key]
            if done:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if key not in _held:
            os.close(fd)


# --------------------------------------------------------------------------- staging and swapping


_MKDTEMP = re.compile(r"[a-z0-9_]{8}")  # the random part of a tempfile.mkdtemp name
#: The record a folder the package puts beside a target holds (see :func:`_mark`): its role (``staging``: new
#: results being written; ``aside``: the previous results a swap sets aside), its own name and inode, and the
#: target's name. Recovery removes or restores a folder beside the target only when its record proves the
#: package made it: a copy (another inode) or a renamed folder (another name) of one is never touched.
STAGING_MARK = ".bayes_annot-staging.json"


def _inode(path: Path) -> int | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info.st_ino if stat.S_ISDIR(info.st_mode) else None


def _mark(folder: Path, target: Path, role: str, name: str | None = None) -> None:
    """Write (atomically) ``folder``'s record: ``role``, the name it has or will have (``name``), its inode
    (kept by a rename) and ``target``'s name."""
    record = {"bayes_annot_staging": 1, "role": role, "target": target.name, "name": name or folder.name,
              "inode": _inode(folder)}
    tmp = folder / (STAGING_MARK + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)  # a link there is not followed
    with os.fdopen(os.open(tmp, flags, 0o666), "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(tmp, folder / STAGING_MARK)


def _record(folder: Path, target: Path, *, any_name: bool = False) -> dict | None:
    """``folder``'s record when it was written in this very folder (same inode) for ``target`` and names the
    folder's name (unless ``any_name``: a record left inside ``target`` itself)."""
    try:
        record = json.loads((folder / STAGING_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    inode = _inode(folder)
    if not (isinstance(record, dict) and record.get("bayes_annot_staging") == 1 and record.get("target") == target.name
            and record.get("role") in ("staging", "aside") and inode is not None and record.get("inode") == inode
            and (any_name or record.get("name") == folder.name)):
        return None
    return record


def _remove_ours(folder: Path) -> None:
    """Remove a folder the package made, its staging record last (a kill half-way leaves it provably ours)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for entry in folder.iterdir():
        if entry.name == STAGING_MARK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (folder / STAGING_MARK).unlink(missing_ok=True)
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _candidates(target: Path) -> list[Path]:
    """Folders beside ``target`` named as the package names its staging and set-aside folders."""
    parent = target.parent
    if not parent.is_dir():
        return []
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefixes) and _MKDTEMP.fullmatch(p.name[-8:])
                  and len(p.name) == len(prefixes[0]) + 8 and p.is_dir() and not p.is_symlink())


def recover(target: Path) -> list[str]:
    """Restore or remove what an interrupted write to ``target`` left (call under :func:`locked`).

    Only folders whose record (:func:`_mark`) proves the package made them
    are touched: staging folders are removed, and so are previous results a
    swap set aside, unless ``target`` is missing (a crash between two renames):
    then they are put back. A folder that only looks like a leftover (the
    name, but no record: a user's copy, or what a version before the records
    left) is kept and reported. Returns what was done, one line each.
    """
    done = []
    found = _candidates(target)
    records = {p.name: r for p in found if (r := _record(p, target)) is not None}
    if not (target.exists() or target.is_symlink()):  # stopped between two renames: the previous results go back
        aside = next((name for name, r in records.items() if r["role"] == "aside"), None)
        if aside is not None:
            os.replace(target.parent / aside, target)
            del records[aside]
            done.append(f"restored '{target}' from '{aside}' (a previous run stopped between two renames)")
    for leftover in found:
        if leftover.name in records:
            _remove_ours(leftover)
            done.append(f"removed '{leftover.name}' left by an interrupted run")
        elif leftover.exists():
            done.append(
                f"kept '{leftover}': named like what an interrupted run leaves, but not provably written by this "
                "bayes_annot version (a copy, or left by an older one): remove it yourself if you do not need it"
                + ("" if target.exists() else f", or rename it to '{target.name}' if it holds the previous results")
            )
    if target.is_dir() and not target.is_symlink() and _record(target, target, any_name=True) is not None:
        (target / STAGING_MARK).unlink(missing_ok=True)  # a record a swap left in the folder: no longer needed
    return done


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); ``False`` where unsupported."""
    global _libc
    if not sys.platform.startswith("linux") or os.environ.get("BAYES_ANNOT_NO_RENAME_EXCHANGE"):
        return False  # the variable forces the two-rename path (file systems without RENAME_EXCHANGE; tests)
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - raises AttributeError on an old libc
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    at_fdcwd = -100
    result = _libc.renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fault(point: str) -> None:
    """Test hook: ``BAYES_ANNOT_FAULT=point`` kills the process there (fault-injection tests)."""
    if os.environ.get("BAYES_ANNOT_FAULT") == point:
        os._exit(91)


def _fresh_name(parent: Path, prefix: str) -> Path:
    """A name ``prefix`` + 8 random characters (as ``mkdtemp`` makes them) that nothing in ``parent`` has yet."""
    while True:
        candidate = parent / (prefix + uuid.uuid4().hex[:8])
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate


def publish(staging: Path, target: Path) -> None:
    """Put a complete staging folder in ``target``'s place in one step; remove the previous results.

    Before the swap, the previous results get the record of the folder they are set aside as
    (:func:`_mark`), so from then on a crash leaves them provably the package's; removing them removes the
    record last. The published folder loses its staging record right after the swap.
    """
    _fault("before-publish")
    if target.exists():
        _mark(target, target, "aside", name=staging.name)
        if _exchange(staging, target):
            _fault("after-exchange")
            (target / STAGING_MARK).unlink(missing_ok=True)
            _remove_ours(staging)  # now holding the previous results
            return
        old = _fresh_name(target.parent, f".{target.name}.old-")  # no folder made: a kill here leaves nothing
        _fault("old-named")
        _mark(target, target, "aside", name=old.name)
        os.replace(target, old)
        _fault("between-renames")
        try:
            os.replace(staging, target)
        except BaseException:  # the previous results go back at once (not only at the next run's recovery)
            os.replace(old, target)
            (target / STAGING_MARK).unlink(missing_ok=True)
            raise
        _fault("after-renames")
        (target / STAGING_MARK).unlink(missing_ok=True)
        _remove_ours(old)
    else:
        os.replace(staging, target)
        (target / STAGING_MARK).unlink(missing_ok=True)


class ResultWriter:
    """Write one result folder all or nothing (see the module docstring).

    Use as a context manager: files go to :attr:`staging`; on a clean exit the
    manifest is written and the folder swapped in; on any error nothing of the
    target changes, staging is removed, and an ``OSError`` (disk full, a
    read-only folder) becomes an :class:`InputError` naming the folder.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> out = tempfile.mkdtemp() + "/res"
    >>> with ResultWriter(out) as w:
    ...     w.table("users", pd.DataFrame({"user": ["a"], "quality": [0.9]}))
    'users.csv'
    >>> sorted(p.name for p in Path(out).iterdir())
    ['manifest.json', 'users.csv']
    """

    def __init__(self, directory, *, inputs=(), fmt: str = "csv", safe_csv: bool = False, on_wait=None,
                 expect_fit_id: str | None = None):
        from .tables import table_file_name

        table_file_name("users", fmt)  # validates fmt
        self.target = check_target(directory, inputs)
        self.inputs, self.fmt, self.safe_csv, self.on_wait = tuple(inputs), fmt, safe_csv, on_wait
        self.expect_fit_id = expect_fit_id  # the fit an update read from this folder: it must still be there
        self.files: list[str] = []
        self.tables: dict[str, dict] = {}
        self.outside: list[TempFile] = []  # files staged beside their destination outside the folder
        self.staging: Path | None = None
        self.notes: list[str] = []
        self.manifest_extra: dict = {}  # further manifest entries (e.g. ``update_state``: the side file of an update)
        self.linked: set[str] = set()  # files hard-linked from a previous result: their mode is that result's too

    def __enter__(self) -> "ResultWriter":
        self._lock = locked(self.target, self.on_wait)
        self._lock.__enter__()
        try:
            self.notes = recover(self.target)
            for note in self.notes:
                warnings.warn(note, UserWarning, stacklevel=2)
            check_target(self.target, self.inputs)  # again, under the lock
            if self.expect_fit_id is not None:
                found = (read_manifest(self.target) or {}).get("fit_id")
                if found != self.expect_fit_id:
                    raise InputError(
                        f"'{self.target}' was replaced after this update read it (another run wrote it): saving "
                        "would drop that run's rows; update the folder again (the CLI's --update holds a lock for this)"
                    )
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
            _mark(self.staging, self.target, "staging")  # first: from now on a kill leaves it provably the package's
            os.chmod(self.staging, 0o777 & ~_umask())
            self._write_manifest(complete=False)
        except BaseException:
            self._abort()
            raise
        return self

    # -- writing
    def path(self, relative: str) -> Path:
        """A file's path in the staging folder (parent folders created); recorded in the manifest."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts:
            raise InputError(f"'{relative}' is not a path inside the output folder")
        full = self.staging / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() not in self.files:
            self.files.append(rel.as_posix())
        return full

    def table(self, name: str, frame, *, checked: bool = False, **extra) -> str:
        """Write a pandas table as ``name.csv`` / ``name.parquet``; returns the file name (``checked``: the
        frame passed :func:`bayes_annot.tables.check_storable`)."""
        from .tables import table_file_name, write_table

        file_name = table_file_name(name, self.fmt)
        with open(self.path(file_name), "wb") as handle:
            meta = write_table(frame, handle, self.fmt, safe_csv=self.safe_csv, checked=checked)
        meta.update(file=file_name, **extra)
        self.tables[name] = meta
        return file_name

    def stream_table(self, name: str, parts, **extra) -> str:
        """Write a table from an iterable of pandas frames (bounded memory)."""
        from .tables import CsvStreamWriter, table_file_name

        file_name = table_file_name(name, self.fmt)
        with open(self.path(file_name), "wb") as handle:
            writer = CsvStreamWriter(handle, self.fmt, safe_csv=self.safe_csv)
            try:
                for part in parts:
                    writer.write(part)
            except BaseException:
                writer.discard()
                raise
            meta = writer.close()
        meta.update(file=file_name, **extra)
        self.tables[name] = meta
        return file_name

    def link_file(self, relative: str, source, *, name: str | None = None, dir_fd: int | None = None) -> None:
        """Put an existing, never rewritten file of a previous result (``source``, open for reading) into the
        folder as ``relative``: a hard link to ``name`` in the folder ``dir_fd`` when that is still the open
        file and the file system allows it, else a copy of ``source``."""
        target = self.path(relative)
        if name is not None and dir_fd is not None:
            try:
                os.link(name, target, src_dir_fd=dir_fd, follow_symlinks=False)
                linked, opened = os.stat(target), os.fstat(source.fileno())
                if (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
                    self.linked.add(Path(relative).as_posix())
                    return
                target.unlink()  # the name now holds another file: copy the one that was read
            except OSError:
                pass
        source.seek(0)
        with open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 22)

    def json(self, name: str, payload) -> None:
        """Write ``payload`` as ``name`` (indented JSON; NaN is refused, so the file is valid JSON)."""
        with open(self.path(name), "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, allow_nan=False)
            handle.write("\n")

    def extra_file(self, destination, write) -> object:
        """Write a file with ``write(path)``: inside the folder it is staged with it; elsewhere it is
        staged beside ``destination`` and moved into place right after the folder. Returns ``write``'s value.
        """
        dest = Path(os.path.abspath(str(destination)))
        if dest == self.target or self.target in dest.parents:
            relative = dest.relative_to(self.target).as_posix()
            if relative in self.files or relative == MANIFEST:  # never over a file of the folder itself
                raise InputError(f"'{destination}' is a file of the output folder itself: choose another name")
            return write(self.path(relative))
        clean_temps_warning(dest)  # what a killed write of this file left
        staged = TempFile(dest, suffix=dest.suffix)  # the writer may go by the suffix (.jsonl / .parquet)
        self.outside.append(staged)
        return write(staged.path)

    # -- finishing
    def _write_manifest(self, complete: bool) -> None:
        from .version import __version__

        manifest = {
            "bayes_annot_result": 1,
            "complete": complete,
            "bayes_annot_version": __version__,
            "fit_id": getattr(self, "fit_id", None) or uuid.uuid4().hex,
            "format": self.fmt,
            "files": sorted(self.files),
            "tables": self.tables,
            **self.manifest_extra,
        }
        self.fit_id = manifest["fit_id"]
        with open(self.staging / MANIFEST, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.write("\n")

    def _abort(self) -> None:
        if self.staging is not None:
            _remove_ours(self.staging)
        for staged in self.outside:
            staged.discard()
        self._lock.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._write_manifest(complete=True)
                mode = 0o666 & ~_umask()
                for root, dirs, names in os.walk(self.staging):
                    for name in dirs:
                        os.chmod(os.path.join(root, name), 0o777 & ~_umask())
                    for name in names:
                        path = os.path.join(root, name)
                        if Path(path).relative_to(self.staging).as_posix() not in self.linked:  # (shared inode)
                            os.chmod(path, mode)
                publish(self.staging, self.target)
                self.staging = None
                for staged in self.outside:
                    staged.commit()
                self.outside = []
            except BaseException as failure:
                self._abort()
                if isinstance(failure, OSError):
                    raise InputError(f"cannot write '{self.target}': {failure.strerror or failure}") from failure
                raise
            self._lock.__exit__(None, None, None)
            return False
        self._abort()
        if isinstance(exc, OSError) and not isinstance(exc, InputError):
            raise InputError(f"cannot write '{self.target}': {exc.strerror or exc}") from exc
        return False


def add_file(directory, name: str, payload: bytes) -> Path:
    """Add (or replace) one file of a published result folder, e.g. a rebuilt ``report.html`` (call under :func:`locked`).

    The manifest is rewritten first (beside its final name, then renamed) to
    list the file, so the folder stays ours whenever the process stops; then
    the file is written beside its final name and renamed into place. What a
    killed earlier call left (``.NAME.tmp-*``) is removed first.
    """
    directory = Path(directory)
    final = directory / name
    tmp = None
    try:
        for stale in directory.glob(f".{glob_escape(final.name)}.tmp-*"):
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
        manifest = read_manifest(directory)
        if manifest is not None and name not in manifest.get("files", []):
            manifest["files"] = sorted([*manifest.get("files", []), name])
            handle, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.tmp-", dir=directory)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(manifest, out, indent=1)
                out.write("\n")
            apply_umask(tmp)
            os.replace(tmp, directory / MANIFEST)
        _fault("add-file-listed")
        handle, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=directory)
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        apply_umask(tmp)
        _fault("add-file-staged")
        os.replace(tmp, final)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write '{final}': {exc.strerror or exc}") from exc
    return final


# --------------------------------------------------------------------------- compaction of an update's parts

#: A folder's rows parts (and codes files) an update keeps before it merges some (see :func:`compaction_start`).
MAX_PARTS = 32
#: Parts of one size class an update merges into one (see :func:`compaction_start`).
MERGE_FANOUT = 4
#: Past :func:`max_parts`, the parts an update merges hold at most ``1 / COMPACT_RATIO`` of the rows it keeps.
COMPACT_RATIO = 4
#: Open files a fast update holds per part: the rows part, its codes file and the codes file's memory map.
FDS_PER_PART = 3
#: Open files kept free for everything else (the interpreter, the side file, the tables, pyarrow), at most half the
#: process's open-file limit.
FD_RESERVE = 64
#: The environment variable that sets :data:`MAX_PARTS` (``0``: never merge).
MAX_PARTS_VARIABLE = "BAYES_ANNOT_MAX_PARTS"


def open_file_limit() -> int | None:
    """The process's open-file limit (the soft ``RLIMIT_NOFILE``); ``None`` when unlimited or unknown."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module (Windows)
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def parts_fit_open(n_parts: int) -> bool:
    """Whether a fast update may hold ``n_parts`` parts open within the open-file limit.

    Parameters
    ----------
    n_parts : int
        The parts (rows parts or codes files, whichever are more) of the folder to update.

    Returns
    -------
    bool
        ``n_parts * FDS_PER_PART`` files fit under the limit with :data:`FD_RESERVE` (at most half the limit)
        kept free; always true without a limit.
    """
    soft = open_file_limit()
    return soft is None or n_parts <= _parts_open_at_most(soft)


def _parts_open_at_most(soft: int) -> int:
    """The parts whose ``FDS_PER_PART`` files each fit under the open-file limit ``soft`` with :data:`FD_RESERVE`
    (at most half the limit) kept free."""
    return (soft - min(FD_RESERVE, soft // 2)) // FDS_PER_PART


def max_parts() -> int | None:
    """How many parts a folder's ``rows`` (and its codes files) may have after an update.

    Returns
    -------
    int or None
        :data:`MAX_PARTS`, or the environment variable ``BAYES_ANNOT_MAX_PARTS`` (a whole number), lowered so
        that the next update can hold every part open within the process's open-file limit
        (:func:`parts_fit_open`; never below 1); ``None`` when the variable is ``0`` (never merge).

    Raises
    ------
    InputError
        ``BAYES_ANNOT_MAX_PARTS`` is not a whole number (one line).
    """
    text = os.environ.get(MAX_PARTS_VARIABLE)
    limit = MAX_PARTS
    if text is not None and text.strip():
        try:
            limit = int(text.strip())
        except ValueError:
            limit = -1
        if limit < 0:
            raise InputError(f"{MAX_PARTS_VARIABLE} must be a whole number (0: never merge parts), got {text!r}")
        if limit == 0:
            return None
    soft = open_file_limit()
    if soft is not None:
        limit = min(limit, _parts_open_at_most(soft))
    return max(1, limit)


def _size_class(rows: int) -> int:
    """A part's size class: ``floor(log_F(rows))`` for :data:`MERGE_FANOUT` ``F`` (parts of one class differ in
    size by less than that factor)."""
    rows, size = max(int(rows), 1), 0
    while rows >= MERGE_FANOUT:
        rows //= MERGE_FANOUT
        size += 1
    return size


def compaction_start(rows, limit: int | None) -> int | None:
    """Which trailing parts of a ``rows`` table an update merges into one.

    Parameters
    ----------
    rows : sequence of int
        Each part's row count, in row order (the first fit's rows first, the update's new rows last).
    limit : int or None
        :func:`max_parts` (``None``: never merge).

    Returns
    -------
    int or None
        ``None``: no merge (the folder keeps its ``len(rows)`` parts); else the index ``s`` of the first merged
        part (parts ``s:``, at least two, become one; ``0``: all of them).

    Notes
    -----
    Parts are merged by size class, as a log-structured store merges its runs: when the last part and the parts
    just before it of its size class or smaller number :data:`MERGE_FANOUT`, they become one part (of a larger
    class, which may in turn complete a run before it).
    So a part is rewritten about once per class it climbs (``log_F`` of the log's size over an update's), and
    a folder keeps about ``F - 1`` parts per class. Should that exceed ``limit``, the trailing parts are merged
    that hold at most ``1 / COMPACT_RATIO`` of the rows before them (the first fit's large table is not rewritten
    for a few new rows), keeping at most ``max(limit // 2 - 1, 1)`` parts (``limit >= 2``), else every part.
    """
    rows = [int(n) for n in rows]
    n = len(rows)
    if limit is None or n < 2:
        return None
    limit = max(1, limit)
    start, size = n - 1, rows[-1]
    while True:  # the run of the last part's class, merged, and again while that completes a run of its class
        size_class, first = _size_class(size), start
        while first > 0 and _size_class(rows[first - 1]) <= size_class:
            first -= 1
        if start - first + 1 < MERGE_FANOUT:
            break
        size += sum(rows[first:start])
        start = first
    merge = start if start < n - 1 else None
    if (n if merge is None else merge + 1) <= limit:
        return merge
    # at least the first part and one merged tail (below 4 the half would keep none: the first fit's whole table
    # rewritten every few updates)
    total, keep_at_most = sum(rows), max(limit // 2 - 1, 1 if limit >= 2 else 0)
    after = sum(rows[1:])
    for first in range(1, min(n - 1, keep_at_most + 1)):
        if after * COMPACT_RATIO <= total - after:
            return first
        after -= rows[first]
    return 0


# --------------------------------------------------------------------------- single files outside a result folder


def _temp_name(name: str, inode: int, suffix: str = "") -> str:
    """The name of the package's temporary file for ``name`` held in inode ``inode``: ``.NAME.tmp-INODE-HASH``.

    The name proves the file is the package's: a copy (another inode) or a file named by hand does not match.
    """
    import hashlib

    digest = hashlib.sha256(f"bayes_annot-temp\0{name}\0{inode}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f".{name}.tmp-{inode:x}-{digest}{suffix}"


class TempFile:
    """A temporary file beside ``dest``, named by :func:`_temp_name` and locked (``flock``) while it is written.

    ``commit()`` renames it over ``dest``; ``discard()`` removes it. A process killed meanwhile leaves it
    behind, provably the package's and no longer locked: :func:`clean_temps` of the next write to ``dest``
    removes it (and never a file a live writer still holds, nor anything else).
    """

    def __init__(self, dest, suffix: str = ""):
        self.dest = Path(os.path.abspath(str(dest)))
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, random_name = tempfile.mkstemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent)
        try:
            _flock(fd, blocking=True)
            self.path = self.dest.parent / _temp_name(self.dest.name, os.fstat(fd).st_ino, suffix)
            os.rename(random_name, self.path)  # no other file can hold this name: it names this file's inode
        except BaseException:
            os.close(fd)
            Path(random_name).unlink(missing_ok=True)
            raise
        self.fd = fd
        apply_umask(self.path)

    def commit(self) -> Path:
        """Move the written file into place (atomically)."""
        try:
            _fault("temp-written")
            os.replace(self.path, self.dest)
        finally:
            self._close()
        return self.dest

    def discard(self) -> None:
        """Remove the file (a failed write)."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._close()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _flock(fd: int, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def clean_temps(dest) -> list[str]:
    """Remove the temporary files a killed write to the file ``dest`` left beside it; returns what was done.

    Only files named as :class:`TempFile` names them for their own inode and that no live writer holds are
    removed; a file that only looks like one (a user's, or what a version before these names left) is kept
    and reported.
    """
    dest = Path(os.path.abspath(str(dest)))
    done = []
    try:
        found = sorted(dest.parent.glob(f".{glob_escape(dest.name)}.tmp-*"))
    except OSError:
        return done
    for path in found:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue  # a symbolic link, gone meanwhile, unreadable: not touched
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                continue
            ours = path.name in {_temp_name(dest.name, info.st_ino, suffix) for suffix in ("", dest.suffix)}
            if not _flock(fd, blocking=False):
                continue  # a live writer's
            if ours:
                path.unlink()
                done.append(f"removed '{path}' left by an interrupted write of '{dest.name}'")
            elif _MKDTEMP.fullmatch(path.name[-8:]) or _MKDTEMP.fullmatch(path.stem[-8:]):
                done.append(f"kept '{path}': named like what an interrupted write leaves, but not provably written "
                            "by this bayes_annot version: remove it yourself if you do not need it")
        except OSError:
            continue
        finally:
            os.close(fd)
    return done


def clean_temps_warning(dest) -> None:
    """:func:`clean_temps`, each line a ``UserWarning`` (the CLI prints them)."""
    for note in clean_temps(dest):
        warnings.warn(note, UserWarning, stacklevel=3)


_TEMP_NAME = re.compile(r"\.(.+)\.tmp-([0-9a-f]+)-[0-9a-f]{12}(\.[^.]*)?")


def is_temp(path) -> bool:
    """Whether ``path`` is a :class:`TempFile`'s file (its name names its inode)."""
    path = Path(path)
    match = _TEMP_NAME.fullmatch(path.name)
    if match is None:
        return False
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and path.name == _temp_name(match.group(1), info.st_ino, match.group(3) or "")


# --------------------------------------------------------------------------- reading


def _fd_path(fd: int) -> str | None:
    """Where the open folder ``fd`` is now (Linux ``/proc``), or ``None``."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") else path


def open_inside(dir_fd: int, name: str, folder) -> int:
    """``name`` of the open folder ``dir_fd`` opened for reading; a symbolic link that resolves outside the
    folder (``rows.csv`` -> a file elsewhere) is refused with one line naming ``folder`` and ``name``, as a
    manifest naming ``../x`` is, so a result folder never makes the package read another file."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        check_inside(dir_fd, name, folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_inside(dir_fd: int, name: str, folder) -> None:
    """Raise :class:`InputError` when ``name`` in the open folder ``dir_fd`` is (or goes through) a symbolic link
    that resolves outside it (see :func:`open_inside`)."""
    try:
        linked = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return  # gone meanwhile: its open fails or failed by itself
    if not linked and "/" not in name:
        return
    home = _fd_path(dir_fd) or os.path.realpath(str(folder))
    real = os.path.realpath(os.path.join(home, name))
    if not real.startswith(home.rstrip(os.sep) + os.sep):
        raise InputError(f"results folder '{folder}' holds '{name}', a symbolic link to '{real}' outside the folder: "
                         "not read (put the file itself in the folder)")


class PinnedFolder:
    """A result folder opened once: every file is read relative to the same folder handle."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path
        self.manifest = read_manifest(path, dir_fd=fd)

    def _inside(self, name: str) -> str:
        """``name`` when it is a path inside the folder; a damaged or crafted manifest naming ``../x`` or ``/x``
        is refused (one line), so nothing outside the folder is ever read."""
        rel = Path(name) if isinstance(name, str) else None
        if rel is None or not name or "\0" in name or rel.is_absolute() or ".." in rel.parts:
            raise InputError(f"results folder '{self.path}' is damaged: its manifest names {name!r}, which is not a "
                             "file inside the folder")
        return name

    def exists(self, name: str) -> bool:
        """Whether the folder holds ``name``."""
        try:
            os.stat(self._inside(name), dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    def open(self, name: str):
        """``name`` opened for reading (binary), relative to the pinned folder."""
        return os.fdopen(open_inside(self.fd, self._inside(name), self.path), "rb")

    def os_path(self, name: str) -> str:
        """A path to ``name`` that stays in this folder even if it is replaced (Linux ``/proc``), for libraries that need a path."""
        pinned_path = f"/proc/self/fd/{self.fd}/{self._inside(name)}"
        check_inside(self.fd, name, self.path)
        return pinned_path if os.path.exists(pinned_path) else str(self.path / name)

    def read_text(self, name: str) -> str:
        """``name`` as UTF-8 text."""
        with self.open(name) as handle:
            return handle.read().decode("utf-8")


@contextmanager
def pinned(directory):
    """Open a result folder for reading (see :class:`PinnedFolder`)."""
    path = Path(directory)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        raise InputError(f"'{directory}' does not exist") from None
    except NotADirectoryError:
        raise InputError(f"'{directory}' is not a folder of bayes_annot results") from None
    try:
        yield PinnedFolder(fd, path)
    finally:
        os.close(fd)


def read_consistently(directory, read, attempts: int = 5):
    """``read(PinnedFolder)``, retried when the folder was replaced while it was being read."""
    for attempt in range(attempts):
        with pinned(directory) as folder:
            try:
                return read(folder)
            except FileNotFoundError as exc:
                if attempt == attempts - 1:
                    missing = Path(exc.filename).name if exc.filename else "a file"
                    raise InputError(f"'{directory}' is not a complete bayes_annot result folder ('{missing}' missing)") from None
    return None  # pragma: no cover
