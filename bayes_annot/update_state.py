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
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from .block_em import Block, EMState
from .data import PreparedData
from .pairs import PairTable

__all__ = ["STATE_FILE", "STATE_VERSION", "StateMismatch", "write_state", "read_state", "StoredState"]

#: The side file's name inside a result folder.
STATE_FILE = "update-state.npz"
#: Bumped whenever what the file holds changes in a way the field names do not show.
STATE_VERSION = 1

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


def write_state(path, *, fit_id: str, data: PreparedData, state: EMState) -> bool:
    """Write the side file of a fit; ``False`` (nothing written) when a field cannot be stored.

    Parameters
    ----------
    path : path
        Where to write (a file inside the staging folder of a result).
    fit_id : str
        The folder's ``fit_id`` (its manifest's): the file serves only that folder.
    data : PreparedData
        The fit's integer-coded log.
    state : EMState
        The fit's EM state, over every user of ``data``.
    """
    arrays: dict = {}
    meta: dict = {}
    try:
        _flatten(state, "state.", arrays, meta, {})
        _flatten(data, "data.", arrays, meta, {}, skip=_DATA_SKIP)
    except _Unsupported:
        return False
    arrays["vocab.user"] = np.asarray(data.label_text("user"))
    arrays["vocab.model"] = np.asarray(data.label_text("model"))
    if arrays["vocab.user"].dtype.hasobject or arrays["vocab.model"].dtype.hasobject:
        return False
    header = {"version": STATE_VERSION, "fit_id": fit_id, "n_rows": int(data.n_rows), "n_users": int(data.n_users),
              "n_models": int(data.n_models), "entries": meta}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return True


@dataclasses.dataclass
class StoredState:
    """A side file read back: the coded log's arrays, the vocabularies' text and the EM state."""

    data: dict  # PreparedData keyword arguments (without frame, labels, notes)
    user_text: np.ndarray
    model_text: np.ndarray
    state: EMState
    n_rows: int
    narrowed: dict = dataclasses.field(default_factory=dict)  # key -> in-memory type of the arrays left narrow

    def widen(self) -> None:
        """Give the arrays of ``read_state(mapped=True)`` the types they had when written, in memory of their own
        (writable; the mapped ones are read-only views of the file)."""
        def own(value, key):
            if not isinstance(value, np.ndarray):
                return value
            dtype = self.narrowed.get(key, value.dtype)
            return value.astype(dtype, copy=not value.flags.writeable or value.dtype != dtype)

        self.data = {name: own(value, f"data.{name}") for name, value in self.data.items()}
        for obj, prefix in ((self.state.block, "state.block."), (self.state.block.pairs, None),
                            (self.state.pair_counts, None)):
            if obj is None:
                continue
            for f in dataclasses.fields(obj):
                if not f.name.startswith("_"):
                    setattr(obj, f.name, own(getattr(obj, f.name), f"{prefix}{f.name}" if prefix else ""))
        self.narrowed = {}


#: The arrays with one entry per row or label (the large ones) that ``read_state(mapped=True)`` leaves narrow.
_PER_ROW = ("data.user", "data.model_a", "data.model_b", "data.choice_a", "data.reason_code", "state.block.cell")


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


def read_state(handle, *, fit_id: str, n_rows: int, n_users: int, n_models: int, mapped: bool = False) -> StoredState:
    """Read a side file written by :func:`write_state` for the folder ``fit_id`` (else :class:`StateMismatch`).

    ``n_rows``, ``n_users``, ``n_models`` are the folder's (its tables'); every code is checked
    against them, so a damaged file is refused rather than used. ``mapped=True`` gives the arrays as
    read-only views of the file mapped in memory (no copy), the per-row codes and the block's label
    cells in the narrow integer types they are stored in (merging new rows copies and widens them in
    one pass); :meth:`StoredState.widen` gives every array its own memory and type.
    """
    try:
        arrays = _mapped_arrays(handle) if mapped else None
        if arrays is None:
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        header = json.loads(arrays.pop("__header__").tobytes().decode("utf-8"))
    except StateMismatch:
        raise
    except Exception as exc:  # a damaged zip, a bad CRC, missing header: unusable
        raise StateMismatch(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("version") != STATE_VERSION:
        raise StateMismatch(f"it has format version {header.get('version') if isinstance(header, dict) else None}, "
                            f"this version reads {STATE_VERSION}")
    if header.get("fit_id") != fit_id:
        raise StateMismatch("it belongs to another fit than the folder's tables")
    if (header.get("n_rows"), header.get("n_users"), header.get("n_models")) != (n_rows, n_users, n_models):
        raise StateMismatch("its row, user or model counts differ from the folder's tables")
    meta = header["entries"]
    try:
        built: dict = {}
        narrow = frozenset(key for key in _PER_ROW if meta.get(key, {}).get("dtype")) if mapped else frozenset()
        state = EMState(**_build(EMState, "state.", arrays, meta, built, narrow=narrow))
        data = _build(PreparedData, "data.", arrays, meta, {}, skip=_DATA_SKIP, narrow=narrow)
        user_text, model_text = arrays["vocab.user"], arrays["vocab.model"]
    except KeyError as exc:
        raise StateMismatch(f"it lacks {exc}") from None
    _check(data, state, user_text, model_text, n_rows, n_users, n_models)
    return StoredState(data=data, user_text=user_text, model_text=model_text, state=state, n_rows=n_rows,
                       narrowed={key: np.dtype(meta[key]["dtype"]) for key in narrow})


def _check(data: dict, state: EMState, user_text, model_text, n_rows: int, n_users: int, n_models: int) -> None:
    """Every code within its vocabulary and every per-row array of the folder's length (else StateMismatch)."""
    def within(values, high, what):
        values = np.asarray(values)
        if values.shape[0] and (int(values.min()) < 0 or int(values.max()) >= high):
            raise StateMismatch(f"its {what} are out of range")

    if user_text.shape[0] != n_users or model_text.shape[0] != n_models:
        raise StateMismatch("its vocabularies differ from the folder's tables")
    for name, value in data.items():
        if isinstance(value, np.ndarray) and value.shape[:1] != (n_rows,):
            raise StateMismatch(f"its {name} codes do not cover the folder's rows")
    within(data["user"], n_users, "user codes")
    within(data["model_a"], n_models, "model codes")
    within(data["model_b"], n_models, "model codes")
    block = state.block
    if block.users.shape[0] != n_users or block.indptr.shape[0] != n_users + 1 or block.n_models != n_models:
        raise StateMismatch("its EM block does not cover the folder's users")
    if int(block.indptr[-1]) != block.n_entries:
        raise StateMismatch("its EM block is inconsistent")
    if block.cell is not None:
        within(block.cell, block.n_cells, "label cells")
    if state.pair_counts.n_models != n_models:
        raise StateMismatch("its pair table does not cover the folder's models")
