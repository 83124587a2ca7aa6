"""What a parquet result folder keeps so that ``fit NEW --update DIR`` encodes only the new rows.

A folder written with ``--format parquet`` from an in-memory EM fit holds, beside its tables,
``update-state.npz`` (:data:`STATE_FILE`, listed in the manifest under ``update_state``): the
integer-coded log (:class:`~bayes_annot.data.PreparedData`'s per-row arrays), the id vocabularies
in their text form, and the fit's EM state (:class:`~bayes_annot.block_em.EMState`: the block of
every user's labels and the pair table). :func:`bayes_annot.folder_update.update_saved` then
merges the new rows into them (:mod:`bayes_annot.incremental`) instead of re-reading,
re-validating and re-encoding every saved row.

The dataclasses are stored field by field, generically: every public field (a numpy array, a
number, text, ``None``, JSON-able lists and dicts, or a nested dataclass) is written under its
dotted name, so a field added to :class:`~bayes_annot.block_em.Block` later is stored without a
change here. The file records :data:`STATE_VERSION` and each class's field names; a file written
for other fields (an older or newer version), for another fit (its ``fit_id``), or one that
cannot be read raises :class:`StateMismatch`, and the update falls back to refitting the saved
rows: never a wrong result. Nothing is unpickled (``allow_pickle=False``).

Format version 2 keeps the per-row codes out of the side file, in files of their own
(``rows-codes-N.npz``, :func:`write_codes`), one per batch of rows, never rewritten: an update links the
saved ones into the new folder and writes one file for its new rows only. Their user and model codes are
*stable* numbers (a user keeps the number it got when it first appeared; new users get the next ones),
so the sorted vocabularies of later fits do not renumber them; the side file holds the map from the
stable numbers to the current codes. The same files give ``load()`` each row's user and reason when
``rows-outputs.parquet`` holds the outputs per user (:func:`user_codes`). Version 1 files (every
row's codes inside the side file) are still read.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from .block_em import Block, EMState
from .data import PreparedData
from .pairs import PairTable

__all__ = ["STATE_FILE", "STATE_VERSION", "StateMismatch", "write_state", "read_state", "StoredState", "write_codes",
           "read_codes", "user_codes"]

#: The side file's name inside a result folder.
STATE_FILE = "update-state.npz"
#: Bumped whenever what the file holds changes in a way the field names do not show.
STATE_VERSION = 2
#: The side file versions this version reads (1: every row's codes inside the side file).
_READS = (1, 2)
#: The per-row codes files' names (N: a number not yet used in the folder).
CODES_FILE = "rows-codes-{}.npz"
_CODES_NUMBER = re.compile(r"rows-codes-([0-9]+)\.npz")
#: The per-row fields of :class:`~bayes_annot.data.PreparedData` (kept in the codes files in version 2).
ROW_FIELDS = ("user", "model_a", "model_b", "choice_a", "p_a", "reason_code", "casual_x")

_CLASSES = {cls.__name__: cls for cls in (Block, EMState, PairTable)}
# PreparedData's fields that are not stored as such: the input rows (kept in the rows table), the
# vocabularies' label objects (the users / models tables hold them; their text is stored) and notes
_DATA_SKIP = ("frame", "user_labels", "model_labels", "notes")


class StateMismatch(ValueError):
    """The side file cannot serve this folder (another version or fit, unreadable, inconsistent)."""


class _Unsupported(TypeError):
    """A field whose type the side file does not store (the folder is then written without one)."""


def _json_safe(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _narrow(values: np.ndarray) -> np.ndarray:
    """A large integer array in the smallest integer type that holds its values (read back in its own type)."""
    if values.dtype.kind not in "iu" or values.size < 4096 or values.dtype.itemsize == 1:
        return values
    low, high = int(values.min()), int(values.max())
    for kind in (np.int8, np.int16, np.int32):
        info = np.iinfo(kind)
        if info.min <= low and high <= info.max:
            return values.astype(kind) if np.dtype(kind).itemsize < values.dtype.itemsize else values
    return values


def _flatten(obj, prefix: str, arrays: dict, meta: dict, seen: dict, skip=()) -> None:
    """Store every public field of the dataclass ``obj`` under ``prefix + name``."""
    narrow_codes = getattr(obj, "narrow_codes", None)  # a merged log: its codes stored without widening them first
    for f in dataclasses.fields(obj):
        if f.name.startswith("_") or f.name in skip:
            continue
        built = narrow_codes(f.name) if narrow_codes is not None else None
        if built is not None:
            arrays[prefix + f.name], meta[prefix + f.name] = built[0], {"kind": "array", "dtype": built[1].str}
            continue
        value, key = getattr(obj, f.name), prefix + f.name
        if value is None:
            meta[key] = {"kind": "none"}
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise _Unsupported(f"{key}: an object array")
            arrays[key], meta[key] = _narrow(value), {"kind": "array", "dtype": value.dtype.str}
        elif dataclasses.is_dataclass(value) and type(value).__name__ in _CLASSES:
            if id(value) in seen:  # the same object twice (a block's pairs are the state's pair counts)
                meta[key] = {"kind": "same", "as": seen[id(value)]}
                continue
            seen[id(value)] = key
            meta[key] = {"kind": "dataclass", "class": type(value).__name__,
                         "fields": [g.name for g in dataclasses.fields(value) if not g.name.startswith("_")]}
            _flatten(value, key + ".", arrays, meta, seen)
        elif isinstance(value, (bool, int, float, str, np.generic)) and _json_safe(np.asarray(value).item()):
            meta[key] = {"kind": "value", "value": np.asarray(value).item()}
        elif isinstance(value, (tuple, list, dict)) and _json_safe(value):
            meta[key] = {"kind": "tuple" if isinstance(value, tuple) else "json", "value": value}
        else:
            raise _Unsupported(f"{key}: {type(value).__name__}")


def _build(cls, prefix: str, arrays, meta: dict, built: dict, skip=(), narrow=frozenset()) -> dict:
    """The keyword arguments of ``cls`` stored under ``prefix`` (StateMismatch when its fields differ);
    the arrays whose keys are in ``narrow`` stay in the (narrower) integer type they were stored in."""
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name not in skip]
    stored = [k[len(prefix):] for k in meta if k.startswith(prefix) and "." not in k[len(prefix):]]
    if sorted(names) != sorted(stored):
        raise StateMismatch(f"it was written for other {cls.__name__} fields")
    out = {}
    for name in names:
        key = prefix + name
        entry = meta[key]
        kind = entry.get("kind")
        if kind == "none":
            out[name] = None
        elif kind == "array":
            out[name] = arrays[key] if key in narrow or "dtype" not in entry else \
                arrays[key].astype(np.dtype(entry["dtype"]), copy=False)
        elif kind == "value":
            out[name] = entry["value"]
        elif kind == "tuple":
            out[name] = tuple(entry["value"])
        elif kind == "json":
            out[name] = entry["value"]
        elif kind == "same":
            out[name] = built[entry["as"]]
        elif kind == "dataclass":
            inner = _CLASSES.get(entry.get("class"))
            if inner is None:
                raise StateMismatch(f"unknown class {entry.get('class')!r}")
            built[key] = inner(**_build(inner, key + ".", arrays, meta, built, narrow=narrow))
            out[name] = built[key]
        else:
            raise StateMismatch(f"unknown entry {kind!r} for {key}")
    return out


def _savez(handle, arrays: dict) -> None:
    """``numpy.savez`` (uncompressed ``.npz``, read back by ``numpy.load``) without copying each array into bytes
    first: the members are written from the arrays' memory."""
    import zipfile

    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            with archive.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, np.lib.format.header_data_from_array_1_0(value))
                if value.size:
                    member.write(memoryview(value.reshape(-1)).cast("B"))


@dataclasses.dataclass
class WrittenCodes:
    """The codes files of a folder (:func:`write_codes`): their entries, in row order, and the maps from the
    stable user and model numbers they hold to the fit's codes (``None``: the same numbers)."""

    entries: list
    user_map: np.ndarray | None
    model_map: np.ndarray | None

    def stable_order(self, n: int) -> np.ndarray:
        """The fit's code of each stable user number (length ``n``)."""
        return np.arange(n) if self.user_map is None else self.user_map


def _parts_of(data: PreparedData) -> list:
    """``data`` as (part, user map, model map) triples: the parts of a merged log, else the log itself."""
    parts = getattr(data, "_parts", None)
    return list(parts) if parts is not None else [(data, None, None)]


def _stable_maps(mapping, n: int):
    """The stable -> current map that starts with ``mapping`` (the first part's; ``None``: identity) and numbers
    the codes it does not reach after it, in code order; and its inverse (current -> stable)."""
    if mapping is None:
        return None, None
    mapping = np.asarray(mapping, dtype=np.int64)
    missing = np.ones(n, dtype=bool)
    missing[mapping] = False
    full = np.concatenate([mapping, np.flatnonzero(missing)])
    if np.array_equal(full, np.arange(n)):
        return None, None
    inverse = np.empty(n, dtype=np.int64)
    inverse[full] = np.arange(n)
    return full, inverse


def _same_map(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and (a is b or np.array_equal(a, b)))


def write_codes(data: PreparedData, *, path_of, link, limit: int | None = None) -> WrittenCodes | None:
    """Write the per-row codes of ``data`` into codes files, linking those of a saved folder unchanged.

    Parameters
    ----------
    data : PreparedData
        The fit's coded log; the parts of a merged log that came from a saved folder's codes files
        (:func:`read_state`) are linked, the others written (one file each).
    path_of : callable
        ``path_of(name)``: where to write the folder's file ``name``.
    link : callable
        ``link(name, handle, dir_fd)``: put the saved file ``name`` (open as ``handle``, in the folder open
        as ``dir_fd``) into the folder.
    limit : int, optional
        At most this many codes files: past it, trailing parts are written as one file instead
        (:func:`bayes_annot.outdir.compaction_start`; ``None``: one file per part).

    Returns
    -------
    WrittenCodes or None
        ``None`` (nothing written) when a per-row field cannot be stored (object arrays, covariates).
    """
    from .outdir import compaction_start

    parts = _parts_of(data)
    if getattr(data, "casual_x", None) is not None or any(p.casual_x is not None for p, _, _ in parts):
        return None
    _, user0, model0 = parts[0]
    user_map, user_inverse = _stable_maps(user0, data.n_users)
    model_map, model_inverse = _stable_maps(model0, data.n_models)

    def stable_fields(index: int) -> dict:
        """The per-row fields of part ``index`` with its user and model codes as stable numbers."""
        part, umap, mmap = parts[index]
        if index == 0:  # the stable numbers are the first part's codes
            stable = {"user": part.user, "model_a": part.model_a, "model_b": part.model_b}
        else:  # the part's codes, then current, then stable
            stable = {"user": _to_stable(part.user, umap, user_inverse),
                      "model_a": _to_stable(part.model_a, mmap, model_inverse),
                      "model_b": _to_stable(part.model_b, mmap, model_inverse)}
        return {name: stable.get(name, getattr(part, name)) for name in ROW_FIELDS}

    start = compaction_start([p.n_rows for p, _, _ in parts], limit)
    merged = None if start is None else _merged_fields([stable_fields(i) for i in range(start, len(parts))],
                                                       [getattr(p, "_codes_source", None) for p, _, _ in parts[start:]])
    if merged is None:
        start = None
    used = {getattr(p, "_codes_source", {}).get("entry", {}).get("file") for p, _, _ in parts}
    # new files after every number the saved ones use (a merged file too)
    number = 1 + max([-1, *(int(m.group(1)) for name in used if name and (m := _CODES_NUMBER.fullmatch(name)))])
    entries = []
    for index, (part, umap, mmap) in enumerate(parts):
        if start is not None and index >= start:
            fields = merged
        else:
            source = getattr(part, "_codes_source", None)
            if source is not None and _same_map(umap, user0) and _same_map(mmap, model0):
                entry = source["entry"]
                link(entry["file"], source["handle"], source.get("dir_fd"))
                entries.append(dict(entry))
                continue
            fields = stable_fields(index)
        while CODES_FILE.format(number) in used:
            number += 1
        name = CODES_FILE.format(number)
        used.add(name)
        entry = _write_codes_file(path_of(name), name, fields)
        if entry is None:
            return None
        entries.append(entry)
        if start is not None and index >= start:
            break
    return WrittenCodes(entries, user_map, model_map)


def _merged_fields(pieces: list, sources: list) -> dict | None:
    """The per-row fields of consecutive parts (``pieces``, as :func:`write_codes` stores them) as one part, each
    field in the type its parts have in memory (a saved part's: the type its codes file records); ``None``
    when they cannot be one part (a field stored for some parts only)."""
    declared = [_declared_types(source) for source in sources]
    out = {}
    for name in ROW_FIELDS:
        values = [piece[name] for piece in pieces]
        if all(v is None for v in values):
            out[name] = None
            continue
        if any(not isinstance(v, np.ndarray) or v.dtype.hasobject for v in values):
            return None
        kinds = [recorded.get(name, v.dtype) for recorded, v in zip(declared, values)]
        out[name] = np.concatenate(values, dtype=np.result_type(*kinds), casting="same_kind")
    return out


def _declared_types(source: dict | None) -> dict:
    """The in-memory types a saved codes file records for its fields (its arrays may be stored narrower)."""
    if source is None:
        return {}
    handle = source["handle"]
    try:
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as npz:  # its header member only
            header = json.loads(npz["__header__"].tobytes().decode("utf-8"))
        meta = header.get("entries") or {}
        return {name: np.dtype(meta[f"data.{name}"]["dtype"]) for name in ROW_FIELDS
                if meta.get(f"data.{name}", {}).get("kind") == "array"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_codes_file(path, name: str, fields: dict) -> dict | None:
    """Write one codes file of ``fields`` (the per-row fields of its rows); its entry, or ``None`` when a field
    cannot be stored."""
    import uuid

    arrays, meta, n_rows = {}, {}, None
    for field in ROW_FIELDS:
        value = fields[field]
        if value is None:
            meta[f"data.{field}"] = {"kind": "none"}
        elif isinstance(value, np.ndarray) and not value.dtype.hasobject:
            arrays[f"data.{field}"] = _narrow(value)
            meta[f"data.{field}"] = {"kind": "array", "dtype": value.dtype.str}
            n_rows = int(value.shape[0]) if n_rows is None else n_rows
        else:
            return None
    entry = {"file": name, "rows": int(n_rows or 0), "id": uuid.uuid4().hex}
    header = {"codes_version": 1, "id": entry["id"], "rows": entry["rows"], "entries": meta}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        _savez(handle, arrays)
    return entry


def _to_stable(codes: np.ndarray, mapping, inverse) -> np.ndarray:
    current = codes if mapping is None else np.asarray(mapping)[codes]
    return current if inverse is None else inverse[current]


def write_state(path, *, fit_id: str, data: PreparedData, state: EMState, codes: WrittenCodes) -> bool:
    """Write the side file of a fit; ``False`` (nothing written) when a field cannot be stored.

    Parameters
    ----------
    path : path
        Where to write (a file inside the staging folder of a result).
    fit_id : str
        The folder's ``fit_id`` (its manifest's): the file serves only that folder.
    data : PreparedData
        The fit's integer-coded log (its per-row codes are in ``codes``' files).
    state : EMState
        The fit's EM state, over every user of ``data``.
    codes : WrittenCodes
        The folder's codes files (:func:`write_codes`).
    """
    arrays: dict = {}
    meta: dict = {}
    try:
        _flatten(state, "state.", arrays, meta, {})
        _flatten(data, "data.", arrays, meta, {}, skip=_DATA_SKIP + ROW_FIELDS)
    except _Unsupported:
        return False
    arrays["vocab.user"] = np.asarray(data.label_text("user"))
    arrays["vocab.model"] = np.asarray(data.label_text("model"))
    if arrays["vocab.user"].dtype.hasobject or arrays["vocab.model"].dtype.hasobject:
        return False
    for kind, mapping in (("user", codes.user_map), ("model", codes.model_map)):
        if mapping is not None:
            arrays[f"codes.{kind}_map"] = _narrow(np.asarray(mapping, dtype=np.int64))
    header = {"version": STATE_VERSION, "fit_id": fit_id, "n_rows": int(data.n_rows), "n_users": int(data.n_users),
              "n_models": int(data.n_models), "entries": meta, "codes": codes.entries}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        _savez(handle, arrays)
    return True


@dataclasses.dataclass
class StoredState:
    """A side file read back: the coded log's arrays (by codes file), the vocabularies' text and the EM state."""

    data: dict  # PreparedData keyword arguments that are not per row (columns, casual_names)
    parts: list  # per codes file, in row order: (its per-row PreparedData keyword arguments, its entry or None,
    #              the file, open, or None)
    user_text: np.ndarray
    model_text: np.ndarray
    state: EMState
    n_rows: int
    user_map: np.ndarray | None = None  # stable user number -> code (None: the same)
    model_map: np.ndarray | None = None
    narrowed: dict = dataclasses.field(default_factory=dict)  # key -> in-memory type of the arrays left narrow

    def widen(self) -> None:
        """Give the arrays of ``read_state(mapped=True)`` the types they had when written, in memory of their own
        (writable; the mapped ones are read-only views of the file)."""
        def own(value, key):
            if not isinstance(value, np.ndarray):
                return value
            dtype = self.narrowed.get(key, value.dtype)
            return value.astype(dtype, copy=not value.flags.writeable or value.dtype != dtype)

        self.parts = [({name: own(value, f"data.{name}") for name, value in rows.items()}, entry, handle)
                      for rows, entry, handle in self.parts]
        for obj, prefix in ((self.state.block, "state.block."), (self.state.block.pairs, None),
                            (self.state.pair_counts, None)):
            if obj is None:
                continue
            for f in dataclasses.fields(obj):
                if not f.name.startswith("_"):
                    setattr(obj, f.name, own(getattr(obj, f.name), f"{prefix}{f.name}" if prefix else ""))
        self.narrowed = {}


#: The arrays with one entry per row or label (the large ones) that ``read_state(mapped=True)`` leaves narrow.
_PER_ROW = tuple(f"data.{name}" for name in ROW_FIELDS) + ("state.block.cell",)


def _read_arrays(handle, mapped: bool) -> tuple[dict, dict]:
    """The arrays of a ``.npz`` file written here (mapped read-only when asked and possible) and its header."""
    arrays = _mapped_arrays(handle) if mapped else None
    if arrays is None:
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return arrays, header


def _mapped_arrays(handle) -> dict | None:
    """The arrays of an uncompressed ``.npz`` file as read-only views of its memory map (each member's CRC
    checked, as ``np.load`` does); ``None`` when the file cannot be mapped (then it is read)."""
    import io
    import mmap
    import struct
    import zipfile
    import zlib

    try:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    view = memoryview(buffer)
    arrays = {}
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not a stored .npy array")
            local = bytes(view[info.header_offset:info.header_offset + 30])
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename!r} has no local header")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_length + extra_length
            member = view[start:start + info.file_size]
            if len(member) != info.file_size or zlib.crc32(member) != info.CRC:
                raise ValueError(f"bad CRC-32 for member {info.filename!r}")
            head = io.BytesIO(member[:min(len(member), 1 << 16)])
            version = np.lib.format.read_magic(head)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(head) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(head))
            if dtype.hasobject:
                raise ValueError(f"member {info.filename!r} holds objects")
            count = int(np.prod(shape, dtype=np.int64))
            array = np.frombuffer(member, dtype=dtype, count=count, offset=head.tell())
            arrays[info.filename[:-4]] = array.reshape(shape, order="F" if fortran else "C")
    return arrays


def read_state(handle, *, fit_id: str, n_rows: int, n_users: int, n_models: int, mapped: bool = False,
               open_codes=None) -> StoredState:
    """Read a side file written by :func:`write_state` for the folder ``fit_id`` (else :class:`StateMismatch`).

    ``n_rows``, ``n_users``, ``n_models`` are the folder's (its tables'); every code is checked
    against them, so a damaged file is refused rather than used. ``mapped=True`` gives the arrays as
    read-only views of the file mapped in memory (no copy), the per-row codes and the block's label
    cells in the narrow integer types they are stored in (merging new rows copies and widens them in
    one pass); :meth:`StoredState.widen` gives every array its own memory and type. ``open_codes(name)``
    opens the folder's codes file ``name`` (format version 2: the per-row codes are there).
    """
    try:
        arrays, header = _read_arrays(handle, mapped)
    except Exception as exc:  # a damaged zip, a bad CRC, missing header: unusable
        raise StateMismatch(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    if header.get("version") not in _READS:
        raise StateMismatch(f"it has format version {header.get('version')}, this version reads "
                            f"{' and '.join(map(str, _READS))}")
    if header.get("fit_id") != fit_id:
        raise StateMismatch("it belongs to another fit than the folder's tables")
    if (header.get("n_rows"), header.get("n_users"), header.get("n_models")) != (n_rows, n_users, n_models):
        raise StateMismatch("its row, user or model counts differ from the folder's tables")
    meta = header["entries"]
    row_keys = [f"data.{name}" for name in ROW_FIELDS]
    try:
        built: dict = {}
        narrow = frozenset(key for key in _PER_ROW if meta.get(key, {}).get("dtype")) if mapped else frozenset()
        state = EMState(**_build(EMState, "state.", arrays, meta, built, narrow=narrow))
        narrowed = {key: np.dtype(meta[key]["dtype"]) for key in narrow}
        if header["version"] == 1:  # every row's codes in this file
            data = _build(PreparedData, "data.", arrays, meta, {}, skip=_DATA_SKIP, narrow=narrow)
            parts = [({name: data.pop(name) for name in ROW_FIELDS}, None, None)]
            user_map = model_map = None
        else:
            data = _build(PreparedData, "data.", arrays, meta, {}, skip=_DATA_SKIP + ROW_FIELDS)
            parts = []
            for entry in header.get("codes") or []:
                rows, part_meta, opened = _read_codes(open_codes, entry, mapped)
                narrow_part = frozenset(k for k in row_keys if mapped and part_meta.get(k, {}).get("dtype"))
                parts.append((_build_rows(rows, part_meta, narrow_part), entry, opened))
                narrowed.update({k: np.dtype(part_meta[k]["dtype"]) for k in narrow_part})
            user_map, model_map = (arrays.get(f"codes.{kind}_map") for kind in ("user", "model"))
        user_text, model_text = arrays["vocab.user"], arrays["vocab.model"]
    except KeyError as exc:
        raise StateMismatch(f"it lacks {exc}") from None
    _check(parts, state, user_text, model_text, n_rows, n_users, n_models, user_map, model_map)
    return StoredState(data=data, parts=parts, user_text=user_text, model_text=model_text, state=state, n_rows=n_rows,
                       user_map=user_map, model_map=model_map, narrowed=narrowed)


def _read_codes(open_codes, entry: dict, mapped: bool) -> tuple[dict, dict, object]:
    """The arrays and entries of the codes file ``entry`` names (StateMismatch when it is not that file), and the
    file, open (its owner, ``open_codes``' caller, closes it)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or open_codes is None:
        raise StateMismatch("its list of codes files is damaged")
    try:
        handle = open_codes(entry["file"])
    except OSError as exc:
        raise StateMismatch(f"its codes file {entry['file']} cannot be opened ({exc.strerror})") from None
    try:
        arrays, header = _read_arrays(handle, mapped)
    except Exception as exc:
        raise StateMismatch(f"its codes file {entry['file']} cannot be read ({type(exc).__name__}: {exc})") from None
    if header.get("id") != entry.get("id") or header.get("rows") != entry.get("rows"):
        raise StateMismatch(f"its codes file {entry['file']} belongs to other rows")
    return arrays, header.get("entries") or {}, handle


def _build_rows(arrays: dict, meta: dict, narrow) -> dict:
    """The per-row fields stored in a codes file (StateMismatch when they are not :data:`ROW_FIELDS`)."""
    if sorted(meta) != sorted(f"data.{name}" for name in ROW_FIELDS):
        raise StateMismatch("a codes file was written for other fields")
    out = {}
    for name in ROW_FIELDS:
        key, entry = f"data.{name}", meta[f"data.{name}"]
        if entry.get("kind") == "none":
            out[name] = None
        elif entry.get("kind") == "array":
            out[name] = arrays[key] if key in narrow else arrays[key].astype(np.dtype(entry["dtype"]), copy=False)
        else:
            raise StateMismatch(f"unknown entry for {key}")
    return out


def read_codes(handle, fields=("user", "reason_code")) -> dict:
    """Some per-row fields of one codes file (for ``load()``: each row's stable user number and reason);
    ``ValueError`` when it cannot be read."""
    handle.seek(0)
    with np.load(handle, allow_pickle=False) as npz:  # only the members asked for are read (and CRC-checked)
        header = json.loads(npz["__header__"].tobytes().decode("utf-8"))
        meta = header.get("entries") or {} if isinstance(header, dict) else {}
        return {name: npz[f"data.{name}"] for name in fields if meta.get(f"data.{name}", {}).get("kind") == "array"}


def user_codes(user: np.ndarray, reason_code: np.ndarray, by_user: np.ndarray, weight: np.ndarray):
    """``kept, reason codes, weight`` of rows from their user (an index into ``by_user`` and ``weight``) and their
    own reason code: ``by_user`` is 3 (not kept), 4 (no verdict) or 0 (kept), + 8 when the user is kept."""
    usable = reason_code == 0
    code = by_user[user]
    kept = usable & (code >= 8)
    np.bitwise_and(code, np.int8(7), out=code)
    np.copyto(code, reason_code, where=~usable)  # rows outside the likelihood: their own reason
    return kept, code, weight[user]


def _check(parts: list, state: EMState, user_text, model_text, n_rows: int, n_users: int, n_models: int,
           user_map=None, model_map=None) -> None:
    """Every code within its vocabulary and the per-row arrays covering the folder's rows (else StateMismatch)."""
    def within(values, high, what):
        values = np.asarray(values)
        if values.shape[0] and (int(values.min()) < 0 or int(values.max()) >= high):
            raise StateMismatch(f"its {what} are out of range")

    if user_text.shape[0] != n_users or model_text.shape[0] != n_models:
        raise StateMismatch("its vocabularies differ from the folder's tables")
    for mapping, n, what in ((user_map, n_users, "user"), (model_map, n_models, "model")):
        if mapping is None:
            continue
        if mapping.shape != (n,):
            raise StateMismatch(f"its {what} numbering is damaged")
        within(mapping, n, f"{what} numbers")
        if n and np.bincount(mapping, minlength=n).max() != 1:
            raise StateMismatch(f"its {what} numbering is damaged")
    if sum(int(np.shape(rows["user"])[0]) for rows, _, _ in parts) != n_rows:
        raise StateMismatch("its codes do not cover the folder's rows")
    for rows, _, _ in parts:
        n = int(np.shape(rows["user"])[0])
        for name, value in rows.items():
            if isinstance(value, np.ndarray) and value.shape[:1] != (n,):
                raise StateMismatch(f"its {name} codes do not cover the folder's rows")
        within(rows["user"], n_users, "user codes")
        within(rows["model_a"], n_models, "model codes")
        within(rows["model_b"], n_models, "model codes")
    block = state.block
    if block.users.shape[0] != n_users or block.indptr.shape[0] != n_users + 1 or block.n_models != n_models:
        raise StateMismatch("its EM block does not cover the folder's users")
    if int(block.indptr[-1]) != block.n_entries:
        raise StateMismatch("its EM block is inconsistent")
    if block.cell is not None:
        within(block.cell, block.n_cells, "label cells")
    if state.pair_counts.n_models != n_models:
        raise StateMismatch("its pair table does not cover the folder's models")
