r"""Compiled kernels of the many-models EM path (optional: ``pip install bayes_annot[fast]``, numba).

Used only above :data:`~bayes_annot.pairs.DENSE_MAX_MODELS` models with many compared pairs, and only when
they can be loaded (:func:`bayes_annot.pairs.numba_kernels`), so nothing imports this module at start-up or for
a fit with few models. Every kernel has a pure-numpy twin in :mod:`bayes_annot.pairs` / :mod:`bayes_annot.block_em`,
and a fit through either path reaches the same optimum (tested to 1e-10).

* :func:`attentive_table`: the attentive table ``log P_att`` of every cell ``2 * pair + choice`` and each pair's
  ``p = sigmoid(d)`` (the Newton direction's input) from ``d = s_a - s_b``, in three passes, the two
  transcendentals (``exp(-|d|)`` and ``log1p`` of it) as polynomials that the compiler vectorises (numpy's
  ``exp`` / ``log1p`` are scalar libm calls on CPUs without AVX-512: ~5 ns per pair each). Within 4 ulp of
  numpy's ``-log1p(exp(-|d|))`` (tested); ``|d|`` above :data:`EXP_CLAMP` is taken as :data:`EXP_CLAMP` in the
  exponential (``exp(-700) ~ 1e-304``: the table and ``p`` move by less than ``1e-300``).
* :func:`pair_slopes`: each pair's curvature ``c = wsum p (1 - p)`` and, per model, the sums of the derivatives
  ``w1 - wsum p`` (``wsum = w1 + w0``) and curvatures over its pairs as ``model_a`` and as ``model_b`` (one pass; the same terms in
  the same order as the sparse products of :class:`~bayes_annot.pairs._PairHessian`).
* :func:`gather_add`: the E-step's two passes over the labels in cell order,
  ``np.bincount``'s numbers (the same additions in the same order) without the gathered temporary.

How they are built and loaded. Importing numba and letting it load its own cached kernels costs ~0.45 s of CPU per
process (its import, then its typing and lowering registries on the first call), as much as ~10 EM evaluations at
10^6 pairs. So numba compiles the kernels once (``numba.cfunc``: C functions over raw pointers, no numba runtime
calls) and llvmlite (numba's LLVM binding, installed with it) turns them into native code for this CPU, cached on
disk (:func:`cache_dirs`) twice: an object file, which llvmlite's MCJIT loads (~0.04 s: importing llvmlite), and,
on Linux on x86 with a C compiler (``cc``), a shared library, which :mod:`ctypes` loads (~2 ms: neither numba nor
llvmlite imported). The object file also holds position-independent code from which ``cc -shared`` links the
library (:func:`_cache_library`; loaded from the cache as the next process loads it, never from the compiler's
temporary folder, and removed when it does not load there): the
process that compiles the kernels links it, and so does a process that finds the object file but no library that
loads (deleted, damaged, or ``cc`` missing when the kernels were compiled and installed since: one link, ~15 ms of
the compiler's CPU, then ~2 ms per process). A link that fails (a broken compiler) leaves a marker
(``<library>.nolink``) that keeps it from being retried in that folder for a day; without ``cc`` on the ``PATH``
nothing is tried (``shutil.which``, ~0.07 ms). A process takes the first that is there and intact (SHA-256 in
their headers: a damaged file would crash LLVM or the loader), else compiles (numba) and writes both. Names hold a
hash of this module's source, the installed numba and llvmlite (:func:`_toolchain`) and the CPU (llvmlite's host
CPU name and features for the object file, the first processor's vendor, family, model and flags in
``/proc/cpuinfo`` for the library), so an edit, an upgrade or another machine compiles anew. A file that does not
load is skipped (the next folder, else compiled anew and rewritten); a freshly compiled file is loaded before it
is written.

Stale files are removed. A process marks the files it loads as in use (their modification time set to now when it is more
than a day old: :func:`_refresh`), and a process that writes kernels to a folder removes from it this module's
files (names ``numba_kernels-<20 hex digits>.native`` / ``.so`` / ``.json`` / ``.nolink`` and their temporary
files, nothing else; regular files of this user only, never through a symbolic link) unused for
:data:`STALE_DAYS` days (:func:`_remove_stale`): those of an older version, numba, llvmlite or CPU. Two installations
sharing a folder (two virtual environments, one ``NUMBA_CACHE_DIR``) thus keep each other's files while both are
used. A process loading a file as it is removed keeps it open (POSIX), or finds it missing and takes the next
(at worst compiles). Other cache folders are cleared only when kernels are written to them.

Machine code is run from these files, so only folders and files that this user alone can change are read or written
(owned by this user, writable neither by its group nor by others, files not symbolic links, opened relative to the
folder's descriptor; in a folder that others can write to, such as a shared ``NUMBA_CACHE_DIR``, a private
subfolder ``bayes_annot-<uid>``); a missing folder is created ``0o700`` (the package's ``__pycache__``: under the umask, as
Python's own), files ``0o600``. Other users of a shared installation therefore cache their own copy in
``~/.cache/bayes_annot``. When no cache folder serves, the kernels are compiled in memory each run (numba imported,
``cc`` not run). The wrappers check every float array's dtype and layout (the kernels read and write raw memory)
and convert index arrays of other integer types to int64.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["attentive_table", "pair_slopes", "gather_add", "EXP_CLAMP", "STALE_DAYS", "cache_dirs"]

EXP_CLAMP = 700.0
"""``|d|`` above this is taken as this in ``exp(-|d|)`` (a normal number, ``2^-k`` built from exponent bits)."""

_DAY = 86400.0

STALE_DAYS = 30
"""This package's cached kernel files that no process has used for this many days (another source, numba /
llvmlite or CPU: their modification time, which every process refreshes at most once a day on the files it loads)
are removed from a cache folder when kernels are written to it (:func:`_remove_stale`)."""

_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # Cody and Waite's split of log(2): k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10


# The kernels' source: loops over raw pointers (``x[i]`` of a ``float64*`` / ``int64*``), ``n`` the pairs or labels.
# Compiled by numba.cfunc (see _compile), never run as Python.

def _pair_log_odds(s, a, b, d, n):
    for i in range(n):
        d[i] = s[a[i]] - s[b[i]]


# The two polynomials are written out (Horner): a loop over a tuple of coefficients, even inlined, is not unrolled
# before LLVM's vectoriser, and the table then took 28-60 ms per 10^6 pairs instead of ~9 (measured).

def _exp_neg_abs(d, mantissa, bits, n):
    """``exp(-min(|d|, EXP_CLAMP)) = mantissa * 2^-k``: ``mantissa`` (``e^r``, ``|r| <= log(2) / 2``, a degree-13
    Taylor polynomial: error below 5e-18 relative) and ``bits`` (the int64 bit pattern of the float ``2^-k``)."""
    for i in range(n):
        t = min(abs(d[i]), EXP_CLAMP)
        k = np.floor(t * _INV_LN2 + 0.5)
        r = (k * _LN2_HI - t) + k * _LN2_LO
        q = 1.0 / 6227020800.0
        q = q * r + 1.0 / 479001600.0
        q = q * r + 1.0 / 39916800.0
        q = q * r + 1.0 / 3628800.0
        q = q * r + 1.0 / 362880.0
        q = q * r + 1.0 / 40320.0
        q = q * r + 1.0 / 5040.0
        q = q * r + 1.0 / 720.0
        q = q * r + 1.0 / 120.0
        q = q * r + 1.0 / 24.0
        q = q * r + 1.0 / 6.0
        q = q * r + 0.5
        q = q * r + 1.0
        q = q * r + 1.0
        mantissa[i] = q
        bits[i] = np.int64(1023 - np.int32(k)) << 52


def _table_tail(d, mantissa, scale, out, p, n):
    """From ``e = exp(-|d|)`` (``scale``: ``bits`` read as floats): ``log1p(e) = 2 atanh(z)``, ``z = e / (2 + e)
    <= 1/3``, as its series (17 terms: truncation below 2e-17 relative), the two cells of each pair and
    ``p = sigmoid(d)``."""
    for i in range(n):
        v = d[i]
        e = mantissa[i] * scale[i]
        z = e / (2.0 + e)
        w = z * z
        h = 1.0 / 33.0
        h = h * w + 1.0 / 31.0
        h = h * w + 1.0 / 29.0
        h = h * w + 1.0 / 27.0
        h = h * w + 1.0 / 25.0
        h = h * w + 1.0 / 23.0
        h = h * w + 1.0 / 21.0
        h = h * w + 1.0 / 19.0
        h = h * w + 1.0 / 17.0
        h = h * w + 1.0 / 15.0
        h = h * w + 1.0 / 13.0
        h = h * w + 1.0 / 11.0
        h = h * w + 1.0 / 9.0
        h = h * w + 1.0 / 7.0
        h = h * w + 1.0 / 5.0
        h = h * w + 1.0 / 3.0
        h = h * w + 1.0
        f = 2.0 * z * h  # log1p(e) = -log sigmoid(|d|)
        if v != v:  # NaN strengths stay NaN (as numpy's table)
            f = v
        out[2 * i] = -(max(v, 0.0) + f)
        out[2 * i + 1] = min(v, 0.0) - f
        u = 1.0 / (1.0 + e)
        p[i] = u if v >= 0.0 else e * u


def _pair_slopes(p, w1, w1_step, w0, w0_step, a, b, c, out_g, in_g, out_c, in_c, n):
    """``w1`` / ``w0`` every ``*_step`` elements (EM passes the cell table's two strided halves)."""
    for i in range(n):
        pi = p[i]
        x1 = w1[i * w1_step]
        cw = (x1 + w0[i * w0_step]) * pi
        g = x1 - cw
        ci = cw * (1.0 - pi)
        c[i] = ci
        out_g[a[i]] += g
        in_g[b[i]] += g
        out_c[a[i]] += ci
        in_c[b[i]] += ci


def _gather_add(into, source, values, out, n):
    for i in range(n):
        out[into[i]] += values[source[i]]


_KERNELS = {  # argument kinds (f a float64 pointer, i an int64 pointer, n an int64), FMA contraction
    "_pair_log_odds": (_pair_log_odds, "fiifn", False),
    "_exp_neg_abs": (_exp_neg_abs, "ffin", True),
    "_table_tail": (_table_tail, "fffffn", True),
    "_pair_slopes": (_pair_slopes, "ffnfniifffffn", False),
    "_gather_add": (_gather_add, "iiffn", False),
}
"""Each kernel, its arguments and whether its multiply-adds may fuse (``fastmath={"contract"}``, where the CPU has
FMA): the two polynomials' Horner steps then take one rounding instead of two and half the latency (table 7.0 ms ->
4.4 ms per 10^6 pairs, AMD EPYC; still within 4 ulp of numpy's cells and of ``expit``, tested). The sums of
:func:`pair_slopes` and :func:`gather_add` stay unfused: bit for bit the numpy path's."""


def cache_dirs() -> list[Path]:
    """Where the compiled kernels are looked for and written, in order: ``NUMBA_CACHE_DIR`` alone when set
    (as numba's own cache), else this package's ``__pycache__`` folder, then ``$XDG_CACHE_HOME/bayes_annot``
    (``~/.cache/bayes_annot``; left out when the home folder belongs to another user). Only folders that this user
    alone can change are used, else a subfolder ``bayes_annot-<uid>`` of theirs (:func:`_open_folder`)."""
    override = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if override:
        return [Path(override)]
    package = Path(__file__).resolve().parent / "__pycache__"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not xdg and hasattr(os, "getuid"):
        try:  # not under another user's home (root under sudo keeping HOME): that user could not use it
            if Path.home().stat().st_uid != os.getuid():
                return [package]
        except (OSError, RuntimeError):
            return [package]
    return [package, Path(xdg or Path.home() / ".cache") / "bayes_annot"]


def _private(status: os.stat_result) -> bool:
    """Whether a file or folder (its ``fstat``) can be changed by this user alone (and root): owned by this user,
    writable neither by its group nor by others."""
    return status.st_uid == os.getuid() and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_folder(folder: Path, create: bool = False) -> int | None:
    """:func:`_open_private_folder` of ``folder``, else of its subfolder ``bayes_annot-<uid>`` (a shared
    ``NUMBA_CACHE_DIR`` such as ``/tmp``: a sticky folder keeps another user from replacing this user's
    subfolder, and a subfolder that another user made first is refused)."""
    descriptor = _open_private_folder(folder, create)
    if descriptor is None and hasattr(os, "getuid"):
        descriptor = _open_private_folder(folder / f"bayes_annot-{os.getuid()}", create, private_mode=True)
    return descriptor


def _open_private_folder(folder: Path, create: bool = False, private_mode: bool = False) -> int | None:
    """A descriptor of ``folder`` (created when ``create``: ``0o700``, except this package's ``__pycache__``,
    which follows the umask as Python's own) when this user alone can change it, else ``None``. Machine code is
    loaded from these files, so a folder that another user could write to (a shared ``NUMBA_CACHE_DIR``, a
    group-writable install) is neither read nor written: the next folder serves. Every file is then opened
    relative to this descriptor, so a path changed meanwhile (a symbolic link pointed elsewhere) cannot swap
    the folder. ``None`` on systems without user ids (nothing cached there: compiled in memory each run)."""
    if not hasattr(os, "getuid") or os.open not in os.supports_dir_fd:
        return None
    try:
        if create:
            mode = 0o777 if folder.name == "__pycache__" and not private_mode else 0o700
            folder.mkdir(mode=mode, parents=not private_mode, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | (getattr(os, "O_NOFOLLOW", 0) if private_mode else 0))
    except OSError:
        return None
    status = os.fstat(descriptor)
    if stat.S_ISDIR(status.st_mode) and _private(status):
        return descriptor
    os.close(descriptor)
    return None


def _open_file(folder: int, name: str) -> int:
    """A read descriptor of the regular file ``name`` in the open folder ``folder``, not a symbolic link (nor a
    FIFO, which would block: opened non-blocking, then refused), that this user alone can change; OSError
    otherwise."""
    descriptor = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
    status = os.fstat(descriptor)
    if not (stat.S_ISREG(status.st_mode) and _private(status)):
        os.close(descriptor)
        raise PermissionError(f"{name}: not a regular file that only this user can change")
    return descriptor


def _read(folder: int, name: str) -> bytes:
    """The bytes of ``name`` in the open folder ``folder`` (:func:`_open_file`'s checks); OSError otherwise."""
    with os.fdopen(_open_file(folder, name), "rb") as handle:
        return handle.read()


def _write(folder: int, name: str, data: bytes) -> bool:
    """Write ``name`` into the open folder ``folder`` atomically (a temporary file, mode ``0o600``, renamed over
    it); whether it worked (nothing left behind when not)."""
    temporary = f".{name}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600,
                             dir_fd=folder)
    except OSError:
        return False
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        return True
    except BaseException as error:  # an interrupt too: no temporary file left behind
        try:
            os.unlink(temporary, dir_fd=folder)
        except OSError:
            pass
        if isinstance(error, OSError):
            return False
        raise


def _cpu_signature() -> str | None:
    """This CPU as Linux's ``/proc/cpuinfo`` describes its first processor (vendor, family, model, flags: what
    compiled code may use), read without llvmlite; ``None`` elsewhere (no shared-library path)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            first = handle.read(1 << 16).split("\n\n", 1)[0]
    except OSError:
        return None
    keep = [line.strip() for line in first.splitlines()
            if line.split(":", 1)[0].strip() in ("vendor_id", "cpu family", "model", "flags")]
    return "\n".join(keep) if len(keep) == 4 else None


def _toolchain() -> str:
    """The installed numba and llvmlite as files (their packages' ``__init__.py`` paths, sizes and modification
    times, found without importing them): an upgrade of either gives new cache names."""
    import importlib.util

    parts = []
    for package in ("numba", "llvmlite"):
        try:
            origin = importlib.util.find_spec(package).origin
            status = os.stat(origin)
            parts.append(f"{origin}:{status.st_size}:{status.st_mtime_ns}")
        except (AttributeError, ImportError, OSError, TypeError, ValueError):
            parts.append(f"{package}:-")
    return "\0".join(parts)


def _library_name(signature: str) -> str:
    """The shared library's name (``.so``, its symbols and hash in the ``.json`` beside it): a hash of this
    module's source, the platform, :func:`_cpu_signature` (Linux on x86: the fields it needs; elsewhere there is no
    shared-library path, only the object file) and :func:`_toolchain`."""
    import platform
    import sys

    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update("\0".join([sys.platform, platform.machine(), signature, _toolchain()]).encode())
    return f"numba_kernels-{key.hexdigest()[:20]}"


_ARGUMENT_TYPES = {"f": ctypes.c_void_p, "i": ctypes.c_void_p, "n": ctypes.c_int64}


def _load_library(folder: int, name: str) -> dict:
    """The kernels of a cached shared library, loaded by ctypes (neither numba nor llvmlite imported); OSError,
    ValueError or KeyError when it is missing or not the file its ``.json`` describes. The library is loaded
    through the descriptor whose bytes were hashed (``/proc/self/fd``: Linux, as the library path itself), kept
    open with the library: the loader knows a loaded library by its path, and a closed descriptor's number (so its
    path) could name another file later."""
    header = json.loads(_read(folder, f"{name}.json"))
    descriptor = _open_file(folder, f"{name}.so")
    try:
        with open(descriptor, "rb", closefd=False) as handle:
            if hashlib.sha256(handle.read()).hexdigest() != header["sha256"]:
                raise ValueError("damaged shared library")
        library = ctypes.CDLL(f"/proc/self/fd/{descriptor}")
    except BaseException:
        os.close(descriptor)
        raise
    kernels = {"library": library, "descriptor": descriptor, "object": header.get("object")}
    for kernel, (_, args, _) in _KERNELS.items():
        function = ctypes.CFUNCTYPE(None, *[_ARGUMENT_TYPES[k] for k in args])
        kernels[kernel] = function((header["symbols"][kernel], library))
    return kernels


def _target_machine(llvm, **options):
    """A new llvmlite target machine for this CPU (its name and features: AVX2 where present). Each use gets
    its own: an MCJIT engine takes ownership of its machine and frees it with itself."""
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3, **options)


def _llvm():
    """llvmlite's binding, initialised for this CPU."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm


def _cache_name(llvm) -> str:
    """The object file's name: a hash of this module's source, llvmlite's version, :func:`_toolchain` and the
    target CPU."""
    import llvmlite

    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update("\0".join([llvmlite.__version__, _toolchain(), llvm.get_process_triple(), llvm.get_host_cpu_name(),
                          llvm.get_host_cpu_features().flatten()]).encode())
    return f"numba_kernels-{key.hexdigest()[:20]}.native"


def _compile(llvm, position_independent: bool) -> bytes:
    """Compile every kernel with ``numba.cfunc`` (imports numba) into one LLVM module; returns the object file's
    bytes: a JSON line (each kernel's symbol, the object code's size and SHA-256, and with
    ``position_independent`` the SHA-256 of a second, position-independent object code), then the object code that
    llvmlite loads, then the position-independent one (from which :func:`_cache_library` links the shared library
    without numba or LLVM, in this process or a later one)."""
    import warnings

    import numba
    from numba import types

    kinds = {"f": types.CPointer(types.float64), "i": types.CPointer(types.int64), "n": types.int64}
    module, symbols = None, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", numba.NumbaWarning)
        for name, (function, args, fuse) in _KERNELS.items():
            compiled = numba.cfunc(types.void(*[kinds[k] for k in args]), error_model="numpy",
                                   fastmath={"contract"} if fuse else False)(function)
            part = llvm.parse_assembly(compiled.inspect_llvm())  # numba's optimised (vectorised) IR
            symbols[name] = compiled.native_name
            if module is None:
                module = part
            else:
                module.link_in(part)
    module.verify()
    code = _target_machine(llvm, codemodel="jitdefault").emit_object(module)
    header = {"symbols": symbols, "sha256": hashlib.sha256(code).hexdigest(), "size": len(code)}
    shared = _target_machine(llvm, reloc="pic").emit_object(module) if position_independent else b""
    if shared:
        header["pic_sha256"] = hashlib.sha256(shared).hexdigest()
    return json.dumps(header).encode() + b"\n" + code + shared


def _link(code: bytes) -> bytes | None:
    """The kernels as a shared library linked by the system's ``cc -shared`` from their position-independent object
    code, or ``None`` when there is no C compiler or it fails: the llvmlite path then serves. Not loaded here: only
    from the cache folder (:func:`_cache_library`), never from the temporary folder (``TMPDIR``: another user's
    folder, or mounted ``noexec``)."""
    import subprocess

    try:  # (its one caller, :func:`_cache_library`, has looked for ``cc`` on the PATH)
        with tempfile.TemporaryDirectory(prefix="bayes-annot-kernels-") as folder:
            (Path(folder) / "kernels.o").write_bytes(code)
            subprocess.run(["cc", "-shared", "-o", "kernels.so", "kernels.o"], cwd=folder, check=True,
                           capture_output=True, timeout=120)
            return (Path(folder) / "kernels.so").read_bytes()
    except Exception:  # no usable compiler here: the object file alone
        return None


def _cache_library(folder: int, library: str, name: str, data: bytes) -> dict | None:
    """Link the shared library ``library`` from the position-independent code in the object file ``name``'s bytes
    ``data`` (:func:`_compile`; numba and LLVM not needed), cache it in the open folder ``folder`` (its ``.so``,
    then its ``.json``) and return its kernels loaded from there, as the next process loads them. ``None`` when
    there is no C compiler or no such code, the folder cannot be written, or the library cannot be linked or does
    not load from there. A marker ``<library>.nolink`` written before ``cc`` runs and removed once the library
    loads keeps a link that failed (a broken compiler, a folder mounted ``noexec``) from being tried again in that
    folder for a day: at most one ``cc`` run per day there, not one per process."""
    import shutil

    if shutil.which("cc") is None:  # ~0.07 ms: a machine without a compiler tries nothing more
        return None
    try:
        header, _, rest = data.partition(b"\n")
        header = json.loads(header)
        code, symbols = rest[header["size"]:], header["symbols"]
        if hashlib.sha256(code).hexdigest() != header["pic_sha256"]:
            return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    marker = f"{library}.nolink"
    with contextlib.suppress(OSError):
        if 0 <= time.time() - os.stat(marker, dir_fd=folder, follow_symlinks=False).st_mtime < _DAY:
            return None
    if not _write(folder, marker, b""):  # a folder this process cannot write to: nothing linked for it
        return None
    shared = _link(code)
    description = {"symbols": symbols, "sha256": hashlib.sha256(shared or b"").hexdigest(), "object": name}
    if (shared is None or not _write(folder, f"{library}.so", shared)
            or not _write(folder, f"{library}.json", json.dumps(description).encode())):
        return None
    try:
        kernels = _load_library(folder, library)
    except Exception:  # it does not load from this folder: removed (not retried by every process), the marker stays
        for suffix in (".so", ".json"):
            with contextlib.suppress(OSError):
                os.unlink(f"{library}{suffix}", dir_fd=folder)
        return None
    with contextlib.suppress(OSError):
        os.unlink(marker, dir_fd=folder)
    return kernels


def _refresh(folder: int, names) -> None:
    """Mark the kernel files ``names`` (of the open folder ``folder``, just loaded) as in use: each one's
    modification time set to now when it is more than a day old (a few microseconds a process; one write per file
    per day), so that :func:`_remove_stale` in another installation's process sharing the folder keeps them."""
    if os.utime not in os.supports_fd:
        return
    now = time.time()
    for name in names:
        if not isinstance(name, str) or "/" in name or not name.startswith("numba_kernels-"):
            continue
        try:
            descriptor = _open_file(folder, name)
        except (OSError, ValueError):  # ValueError: a damaged description's name (a NUL)
            continue
        try:
            if now - os.fstat(descriptor).st_mtime > _DAY:
                os.utime(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)


_OWN_FILE = (r"numba_kernels-[0-9a-f]{20}\.(?:native|so|json|nolink)"
             r"|\.numba_kernels-[0-9a-f]{20}\.(?:native|so|json|nolink)-[0-9]+-[0-9a-f]{8}")
"""The names of this module's cache files (:func:`_cache_name`, :func:`_library_name`, the marker of
:func:`_cache_library`) and of :func:`_write`'s temporary files for them (left behind by a killed process)."""


def _remove_stale(folder: int, keep) -> None:
    """Remove from the open folder ``folder`` this module's cache files (names matching :data:`_OWN_FILE` exactly,
    except ``keep``: this process's own) that are regular files (not symbolic links, which are left alone and not
    followed) owned by this user and unused for :data:`STALE_DAYS` days (modification time, refreshed by
    :func:`_refresh`): the files of an older version, numba / llvmlite or CPU. A process still using one of them
    refreshed it within the last day, so two installations sharing a folder keep each other's files; one loading a
    file as it is removed keeps it open (POSIX), or finds it missing and loads the next (or compiles)."""
    import re

    if os.unlink not in os.supports_dir_fd or os.listdir not in os.supports_fd:
        return
    cutoff = time.time() - STALE_DAYS * _DAY
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name in keep or not re.fullmatch(_OWN_FILE, name):
            continue
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if stat.S_ISREG(status.st_mode) and status.st_uid == os.getuid() and status.st_mtime < cutoff:
                os.unlink(name, dir_fd=folder)
        except OSError:
            continue


_OBJECT_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\x64\x86")
"""How an object file of this platform begins: ELF, 64-bit Mach-O, x86-64 COFF."""


def _load(llvm, data: bytes) -> dict:
    """The kernels of an object file (:func:`_compile`'s bytes) loaded by llvmlite's MCJIT (in an engine with its
    own target machine), as ctypes functions; ValueError (before LLVM reads it) when the object code is not the
    one its header's hash describes, ImportError when a kernel is missing from it."""
    header, _, code = data.partition(b"\n")
    header = json.loads(header)
    code = code[:header["size"]]
    if hashlib.sha256(code).hexdigest() != header["sha256"]:  # LLVM would crash on a damaged object file
        raise ValueError("damaged object file")
    symbols = header["symbols"]
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine(llvm, codemodel="jitdefault"))
    if not code.startswith(_OBJECT_MAGIC):  # LLVM would crash on it (a truncated object still would: the hash)
        raise ValueError("not an object file")
    objectfile = llvm.ObjectFileRef.from_data(code)
    if not getattr(objectfile, "_ptr", True):
        raise ValueError("not an object file LLVM reads")
    engine.add_object_file(objectfile)
    engine.finalize_object()
    kernels = {"engine": engine}  # the engine owns the code: kept as long as the kernels
    for name, (_, args, _) in _KERNELS.items():
        address = engine.get_function_address(symbols[name])
        if not address:
            raise ImportError(f"compiled kernel {name} missing from its object file")
        kernels[name] = ctypes.CFUNCTYPE(None, *[_ARGUMENT_TYPES[k] for k in args])(address)
    return kernels


def _build() -> dict:
    """The kernels: from the first cache folder holding this source's shared library for this CPU (ctypes alone),
    else the first holding its object file (llvmlite; the shared library then linked from it and cached there,
    :func:`_cache_library`), else compiled (numba) and cached in the first folder where the object file can be
    written (the shared library too). A file that does not load (damaged, foreign) is skipped, and rewritten when
    the kernels are compiled. The files loaded are marked as in use (:func:`_refresh`); a folder written to loses
    this module's stale files (:func:`_remove_stale`). ImportError when llvmlite (or, to compile, numba) is
    missing."""
    with contextlib.ExitStack() as opened:
        def folders(create: bool = False):
            for path in cache_dirs():
                descriptor = _open_folder(path, create)
                if descriptor is not None:
                    opened.callback(os.close, descriptor)
                    yield descriptor

        signature = _cpu_signature()
        library = None if signature is None else _library_name(signature)
        for folder in folders() if library else ():
            try:
                kernels = _load_library(folder, library)
            except Exception:  # missing, damaged or foreign
                continue
            _refresh(folder, [f"{library}.so", f"{library}.json", kernels["object"]])
            return kernels
        llvm = _llvm()
        name = _cache_name(llvm)
        current = {name, f"{library}.so", f"{library}.json"}
        for folder in folders():
            try:
                data = _read(folder, name)
            except OSError:
                continue
            try:
                kernels = _load(llvm, data)
            except Exception:  # a damaged or foreign file: the next folder, else compiled anew below
                continue
            _refresh(folder, [name])
            linked = _cache_library(folder, library, name, data) if library else None  # none loaded: missing
            if linked is not None:
                _remove_stale(folder, current)
            return linked or kernels
        try:
            data = _compile(llvm, position_independent=library is not None)
        except ImportError:
            raise
        except Exception as error:  # numba or LLVM refused: the fit takes the numpy path (pairs.numba_kernels)
            raise ImportError(f"the compiled kernels could not be built: {error}") from error
        kernels = _load(llvm, data)  # before caching: a file that does not load is never written
        for folder in folders(create=True):
            if not _write(folder, name, data):
                continue
            linked = _cache_library(folder, library, name, data) if library else None  # cc runs where kept
            _remove_stale(folder, current)
            return linked or kernels
        return kernels


try:
    _NATIVE = _build()
except ImportError:
    raise
except Exception as error:  # whatever else fails, the optional path must not break a fit: the numpy path serves
    raise ImportError(f"the compiled kernels could not be loaded: {error}") from error


def _pointer(array: np.ndarray, dtype, n: int, strided: bool = False):
    """The data pointer of a 1-d array of ``dtype`` with at least ``n`` elements, contiguous (``strided``: any
    positive stride of whole elements, returned as ``(pointer, stride in elements)``); ValueError for anything
    else (the kernels read and write raw memory)."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1 or array.shape[0] < n:
        raise ValueError(f"a compiled kernel needs 1-d {np.dtype(dtype)} arrays of at least {n} elements")
    if strided:
        stride = array.strides[0] if array.shape[0] > 1 else array.itemsize
        if stride <= 0 or stride % array.itemsize:
            raise ValueError("a compiled kernel needs arrays with a positive stride of whole elements")
        return array.ctypes.data, stride // array.itemsize
    if not array.flags.c_contiguous:
        raise ValueError("a compiled kernel needs contiguous arrays")
    return array.ctypes.data


def _writable(array: np.ndarray, dtype, n: int):
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        raise ValueError("a compiled kernel's output array is read-only")
    return _pointer(array, dtype, n)


_F, _I = np.dtype(np.float64), np.dtype(np.int64)


def _indices(array):
    """An index array as the kernels read it (int64): other integer arrays are converted (``intp`` is 32 bits on
    32-bit platforms), anything else is left for :func:`_pointer` to refuse."""
    if isinstance(array, np.ndarray) and array.dtype.kind in "iu" and array.dtype != _I:
        return array.astype(_I)
    return array


def attentive_table(s, a, b, d, mantissa, bits, out, p):
    """The attentive table of the strengths ``s`` over the pairs ``(a, b)`` into ``out`` (``2 P``) and each pair's
    ``sigmoid(s_a - s_b)`` into ``p``; ``d``, ``mantissa`` (float) and ``bits`` (int64) are ``P``-long work arrays.
    Returns ``out``. ``a`` and ``b`` index ``s`` (not checked)."""
    n = a.shape[0]
    a, b = _indices(a), _indices(b)
    ps, pa, pb = _pointer(s, _F, 0), _pointer(a, _I, n), _pointer(b, _I, n)
    pd, pm, pbits = _writable(d, _F, n), _writable(mantissa, _F, n), _writable(bits, _I, n)
    pout, pp = _writable(out, _F, 2 * n), _writable(p, _F, n)
    _NATIVE["_pair_log_odds"](ps, pa, pb, pd, n)
    _NATIVE["_exp_neg_abs"](pd, pm, pbits, n)
    _NATIVE["_table_tail"](pd, pm, pbits, pout, pp, n)
    return out


def pair_slopes(p, w1, w0, a, b, c, out_g, in_g, out_c, in_c):
    """Each pair's curvature ``c = wsum p (1 - p)`` (into ``c``; ``wsum = w1 + w0``) and the per-model sums, over
    the pairs where the model is ``a`` (``out_*``) and ``b`` (``in_*``), of the derivatives ``w1 - wsum p`` and the
    curvatures (into the zeroed ``(K,)`` arrays). ``w1`` and ``w0`` may be strided (the halves of a cell table)."""
    n = p.shape[0]
    a, b = _indices(a), _indices(b)
    (p1, s1), (p0, s0) = _pointer(w1, _F, n, strided=True), _pointer(w0, _F, n, strided=True)
    sums = [_writable(x, _F, 0) for x in (out_g, in_g, out_c, in_c)]
    _NATIVE["_pair_slopes"](_pointer(p, _F, n), p1, s1, p0, s0, _pointer(a, _I, n), _pointer(b, _I, n),
                            _writable(c, _F, n), *sums, n)


def gather_add(into, source, values, out):
    """``out[into[i]] += values[source[i]]`` over ``i`` in order (``out`` zeroed): ``np.bincount(into,
    weights=values[source])``. The E-step's passes over the labels in cell order: per-user sums of a cell table
    (``into`` the users, ``source`` the cells) and the cell table of per-user weights (the other way round).
    Returns ``out``."""
    n = into.shape[0]
    into, source = _indices(into), _indices(source)
    _NATIVE["_gather_add"](_pointer(into, _I, n), _pointer(source, _I, n), _pointer(values, _F, 0),
                           _writable(out, _F, 0), n)
    return out
