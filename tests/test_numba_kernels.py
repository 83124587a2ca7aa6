"""The optional compiled path of many-models EM (``bayes_annot[fast]``: numba, :mod:`bayes_annot.numba_kernels`)
gives the numpy path's numbers: the kernels to a few ulp (or bit for bit where they add the same terms in the same
order), a whole fit to 1e-10. Skipped when numba is not installed (the test extra installs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

import bayes_annot as ba
from bayes_annot import pairs as pairs_mod
from bayes_annot.pairs import AttentiveTables, PairTable, _PairHessian, _fast_table

from .test_many_models import sparse_log

numba = pytest.importorskip("numba")
from bayes_annot import numba_kernels as nk  # noqa: E402  - after the skip

numba_pair_slopes = nk.pair_slopes  # the kernel itself, for a test that counts its calls


def compiled_table(s, a, b):
    n = a.shape[0]
    out, p = np.empty(2 * n), np.empty(n)
    nk.attentive_table(s, a, b, np.empty(n), np.empty(n), np.empty(n, dtype=np.int64), out, p)
    return out, p


def test_compiled_table_is_numpys_to_a_few_ulp():
    """The vectorised ``exp`` / ``log1p`` polynomials: every cell within 6 ulp of the numpy table (``log1p(exp(-|d|))``),
    each pair's ``p`` within 4 ulp of scipy's ``expit(d)``, over ``|d|`` from 0 to beyond the clamp;
    NaN strengths give NaN cells as numpy's."""
    rng = np.random.default_rng(0)
    k = 400
    s = np.concatenate([rng.normal(0, 1, 100), rng.normal(0, 30, 100), rng.uniform(-400, 400, 196),
                        [0.0, -0.0, 1e-300, 5e-17]])
    a, b = np.repeat(np.arange(k), 10), rng.integers(0, k, 10 * k)
    d = s[a] - s[b]
    expected = _fast_table(d, np.empty(d.shape[0]), None)
    got, p = compiled_table(s, a, b)
    big = np.abs(d) > nk.EXP_CLAMP  # exp(-|d|) below exp(-700): the cells move by less than 1e-300
    error = np.abs(got - expected).reshape(-1, 2)
    assert np.all(error[~big] <= 6 * np.spacing(np.abs(expected.reshape(-1, 2)[~big])))
    assert np.all(error[big] <= 1e-300)
    prob = expit(d)
    assert np.all(np.abs(p - prob)[~big] <= 4 * np.spacing(prob[~big]))
    assert np.all(np.abs(p - prob)[big] <= 1e-300) and big.any()
    s_nan = s.copy()
    s_nan[3] = np.nan
    got_nan = compiled_table(s_nan, a, b)[0]
    np.testing.assert_array_equal(np.isnan(got_nan), np.isnan(_fast_table(s_nan[a] - s_nan[b], np.empty(d.shape[0]),
                                                                          None)))


def test_compiled_sums_are_the_numpy_sums_bit_for_bit():
    """The E-step's passes are ``np.bincount``'s numbers and the direction's per-model sums the sparse products'
    (the same additions in the same order)."""
    rng = np.random.default_rng(1)
    k, n, n_users = 300, 20_000, 900
    pairs, index = PairTable.from_labels(rng.integers(0, k, n), rng.integers(0, k, n), k)
    cell = np.sort(2 * index + (rng.random(n) < 0.5))
    user = rng.integers(0, n_users, n)
    table, per_user = rng.normal(0, 3, 2 * pairs.n_pairs), rng.random(n_users)
    np.testing.assert_array_equal(nk.gather_add(user, cell, table, np.zeros(n_users)),
                                  np.bincount(user, weights=table[cell], minlength=n_users))
    np.testing.assert_array_equal(nk.gather_add(cell, user, per_user, np.zeros(2 * pairs.n_pairs)),
                                  np.bincount(cell, weights=per_user[user], minlength=2 * pairs.n_pairs))
    p, w1, w0 = rng.random(pairs.n_pairs), rng.random(pairs.n_pairs), rng.random(pairs.n_pairs)
    wsum = w1 + w0
    sums = [np.zeros(k) for _ in range(4)]
    c = np.empty(pairs.n_pairs)
    nk.pair_slopes(p, w1, w0, pairs.a, pairs.b, c, *sums)
    cw = wsum * p
    structure = _PairHessian(pairs.a, pairs.b, k)
    np.testing.assert_array_equal(c, cw * (1.0 - p))
    for got, expected in zip(sums, structure.sums(w1 - cw) + structure.sums(cw * (1.0 - p))):
        np.testing.assert_array_equal(got, expected)


def test_compiled_cache_returns_tables_and_probs_of_each_point(monkeypatch):
    """``AttentiveTables`` on the compiled path: each point's table (and its ``p``) as a fresh cache computes it,
    evicted arrays reused only when nobody holds them; the all-zero start's ``p`` is 1/2."""
    monkeypatch.setattr(pairs_mod, "NUMBA_MIN_PAIRS", 0)
    rng = np.random.default_rng(3)
    k = 120
    pairs = PairTable.from_labels(rng.integers(0, k, 3000), rng.integers(0, k, 3000), k)[0]
    cache = AttentiveTables(pairs.a, pairs.b, size=2, fast=True, n_models=k)
    assert cache.kernels is nk
    held = cache.table(rng.normal(0, 2, k))
    kept = held.copy()
    for s in [np.zeros(k)] + [rng.normal(0, 2, k) for _ in range(5)]:
        table, p = cache.table(s), cache.probs(s)
        expected, expected_p = compiled_table(s, pairs.a, pairs.b)
        assert not table.flags.writeable and not p.flags.writeable
        np.testing.assert_allclose(table, expected, rtol=1e-15, atol=0)
        np.testing.assert_allclose(p, 0.5 if not s.any() else expected_p, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(held, kept)


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
def test_compiled_fit_equals_the_numpy_fit(monkeypatch, variant):
    """A whole EM fit above 64 models through the compiled kernels equals the numpy path's (strengths and user
    qualities to 1e-10 at a tight tolerance; the continuous variant to 1e-9, its own accuracy there: on main at
    f0b32c8 its two fits at tol 1e-13 were 8e-11 and 1.1e-10 from a fit at 1e-15, and paths that differ only in
    rounding, where the conjugate gradients' stopping step or a SQUAREM step's acceptance flips, end 3e-11 to 3e-10
    apart), and the compiled path is the one taken."""
    log = sparse_log(12_000, 300, 1_500, seed=4)
    monkeypatch.setattr(pairs_mod, "NUMBA_MIN_PAIRS", 0)
    calls = []
    monkeypatch.setattr(nk, "pair_slopes", lambda *args: calls.append(1) or numba_pair_slopes(*args))
    compiled = ba.fit(log, variant=variant, tol=1e-13, accelerate=True)
    assert calls
    monkeypatch.setenv(pairs_mod.NUMBA_ENV, "0")
    plain = ba.fit(log, variant=variant, tol=1e-13, accelerate=True)
    atol = 1e-10 if variant == "two-class" else 1e-9
    np.testing.assert_allclose(compiled.models["strength"], plain.models["strength"], rtol=0, atol=atol)
    np.testing.assert_allclose(compiled.users["quality"], plain.users["quality"], rtol=0, atol=atol)



def test_kernels_serve_only_many_models_and_many_pairs(monkeypatch):
    """The compiled path: above 64 models, from NUMBA_MIN_PAIRS pairs, unless switched off; without numba (an
    import error) every fit stays on the numpy path."""
    assert pairs_mod.numba_kernels(pairs_mod.DENSE_MAX_MODELS, 10**7) is None
    assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS - 1) is None
    assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS) is nk
    monkeypatch.setenv(pairs_mod.NUMBA_ENV, "0")
    assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS) is None
    monkeypatch.delenv(pairs_mod.NUMBA_ENV)
    with monkeypatch.context() as no_user_ids:  # as on Windows: nothing cached, so only where compiling pays
        no_user_ids.delattr(os, "getuid")
        assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS_UNCACHED - 1) is None
        assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS_UNCACHED) is nk
    monkeypatch.setattr(pairs_mod, "_NUMBA_MODULE", None)
    monkeypatch.delattr(ba, "numba_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "bayes_annot.numba_kernels", None)  # importing it fails (as without numba)
    assert pairs_mod.numba_kernels(1000, pairs_mod.NUMBA_MIN_PAIRS) is None


def _load_in_fresh_process(cache_dir, **environment) -> dict:
    """Import the kernels in a fresh interpreter with ``NUMBA_CACHE_DIR=cache_dir`` (and ``environment``): which of numba / llvmlite it
    imported, how it loaded them, the cache folder's files and one table's cells (a small fixed input)."""
    code = textwrap.dedent("""
        import json, os, sys
        import numpy as np
        from bayes_annot import numba_kernels as nk
        s = np.array([0.0, 1.5, -2.0]); a = np.array([0, 1, 2, 0]); b = np.array([1, 2, 0, 2])
        out, p = np.empty(8), np.empty(4)
        nk.attentive_table(s, a, b, np.empty(4), np.empty(4), np.empty(4, dtype=np.int64), out, p)
        print(json.dumps({"numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules,
                          "library": "library" in nk._NATIVE,
                          "files": sorted(os.listdir(os.environ["NUMBA_CACHE_DIR"])), "cells": out.tolist()}))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(Path(nk.__file__).resolve().parents[1]),
               **environment)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # a crash of LLVM or the loader is a negative return code
    return json.loads(done.stdout.strip().splitlines()[-1])


LINKABLE = sys.platform.startswith("linux") and shutil.which("cc") is not None
"""Whether the kernels are also cached as a shared library (Linux with a C compiler)."""


@pytest.fixture(scope="module")
def cached_kernels(tmp_path_factory):
    """A cache folder filled by a first process (which compiles the kernels) and that process's report."""
    folder = tmp_path_factory.mktemp("kernels")
    folder.chmod(0o700)
    return folder, _load_in_fresh_process(folder)


def _copy_cache(source, target, mode=0o700):
    shutil.copytree(source, target)
    target.chmod(mode)
    return target


def test_compiled_kernels_load_from_their_cached_files_without_numba(cached_kernels, tmp_path):
    """The first process compiles the kernels (numba) into an object file (and, on Linux with a C compiler, a
    shared library) in the cache folder, readable by this user only; the next loads them without numba (the
    library: without llvmlite too) and computes the same cells; a damaged library falls back to the object file
    (and is linked anew from it), a damaged object file is compiled anew (and both rewritten). No temporary file
    is left behind."""
    folder, first = cached_kernels
    assert first["numba"] and first["llvmlite"] and first["library"] == LINKABLE  # the library it cached
    native = [f for f in first["files"] if f.endswith(".native")]
    shared = [f for f in first["files"] if f.endswith(".so")]
    assert len(native) == 1 and len(shared) == int(LINKABLE)
    assert len(first["files"]) == 1 + 2 * int(LINKABLE)  # no leftover temporary file
    for name in first["files"]:
        assert (folder / name).stat().st_mode & 0o077 == 0
    work = _copy_cache(folder, tmp_path / "cache")
    second = _load_in_fresh_process(work)
    assert not second["numba"] and second["llvmlite"] != LINKABLE and second["library"] == LINKABLE
    assert second["files"] == first["files"] and second["cells"] == first["cells"]
    for name in shared:
        (work / name).write_bytes(b"not a shared library")
        damaged = _load_in_fresh_process(work)
        assert not damaged["numba"] and damaged["llvmlite"] and damaged["cells"] == first["cells"]
        assert damaged["files"] == first["files"] and (work / name).read_bytes() == (folder / name).read_bytes()
        (work / name).write_bytes(b"not a shared library")
    (work / native[0]).write_bytes(b'{"symbols": {}, "sha256": ""}\nnot an object file')
    damaged = _load_in_fresh_process(work)
    assert damaged["numba"] and damaged["cells"] == first["cells"] and damaged["files"] == first["files"]
    again = _load_in_fresh_process(work)
    assert not again["numba"] and again["library"] == LINKABLE and again["cells"] == first["cells"]


def test_an_object_file_that_fails_after_llvm_took_it_is_compiled_anew(cached_kernels, tmp_path):
    """An intact object file (its hash matches) whose header names a kernel it lacks fails after LLVM's engine
    has loaded it: the process compiles the kernels anew, with a target machine of its own (the failed engine
    freed the one it was given), instead of crashing, and rewrites the file."""
    folder, first = cached_kernels
    work = _copy_cache(folder, tmp_path / "cache")
    for name in first["files"]:
        if not name.endswith(".native"):
            (work / name).unlink()  # the object-file path
    native = next(work.glob("*.native"))
    header, _, code = native.read_bytes().partition(b"\n")
    header = json.loads(header)
    header["symbols"]["_gather_add"] = "no_such_kernel"
    native.write_bytes(json.dumps(header).encode() + b"\n" + code)
    rebuilt = _load_in_fresh_process(work)
    assert rebuilt["numba"] and rebuilt["cells"] == first["cells"]
    assert json.loads(native.read_bytes().partition(b"\n")[0])["symbols"]["_gather_add"] != "no_such_kernel"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="ownership of the cache folder is a POSIX notion")
def test_cached_machine_code_is_used_only_where_no_one_else_could_have_written_it(cached_kernels, tmp_path):
    """A cache folder that other users may write to (group- or world-writable, as a shared NUMBA_CACHE_DIR such as
    /tmp) is not loaded from: its files, though intact, are not run; the kernels are compiled and cached in a
    private subfolder ``bayes_annot-<uid>`` (0700), which the next process loads. A subfolder that is a symbolic
    link, or a group-writable file in a private folder, is not used either."""
    folder, first = cached_kernels
    own = f"bayes_annot-{os.getuid()}"
    shared_folder = _copy_cache(folder, tmp_path / "shared", mode=0o777)
    planted = _load_in_fresh_process(shared_folder)
    assert planted["numba"] and planted["cells"] == first["cells"]
    assert planted["files"] == sorted(first["files"] + [own])
    assert (shared_folder / own).stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(shared_folder / own)) == first["files"]
    again = _load_in_fresh_process(shared_folder)
    assert not again["numba"] and again["cells"] == first["cells"]
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    linked.chmod(0o770)
    (linked / own).symlink_to(_copy_cache(folder, tmp_path / "elsewhere"))
    run = _load_in_fresh_process(linked)
    assert run["numba"] and run["files"] == [own] and sorted(os.listdir(tmp_path / "elsewhere")) == first["files"]
    private = _copy_cache(folder, tmp_path / "private")
    for name in first["files"]:
        (private / name).chmod(0o660)
    loose = _load_in_fresh_process(private)
    assert loose["numba"] and loose["cells"] == first["cells"]


def test_a_cache_file_that_is_not_a_regular_file_does_not_hang_the_import(cached_kernels, tmp_path):
    """A FIFO where the library's description should be (opening it for reading would block) is refused: the
    object file serves, and the library is linked anew (its description a regular file again)."""
    folder, first = cached_kernels
    if not hasattr(os, "mkfifo") or not LINKABLE:
        pytest.skip("needs FIFOs and the shared-library path")
    work = _copy_cache(folder, tmp_path / "cache")
    description = next(work.glob("*.json"))
    description.unlink()
    os.mkfifo(description, 0o600)
    run = _load_in_fresh_process(work)  # the subprocess's timeout fails the test if it hangs
    assert not run["numba"] and run["llvmlite"] and run["library"] and run["cells"] == first["cells"]
    assert description.is_file()


def _without_library(folder, first, tmp_path):
    """A copy of the cache folder holding the object file alone (the shared library deleted, or never linked)."""
    work = _copy_cache(folder, tmp_path / "cache")
    for name in first["files"]:
        if not name.endswith(".native"):
            (work / name).unlink()
    return work


def _fake_compiler(tmp_path, works: bool):
    """A folder holding a ``cc`` that counts its runs in ``runs`` and fails (``works=False``) or runs the real one."""
    tools = tmp_path / "tools"
    tools.mkdir()
    real = shutil.which("cc")
    (tools / "cc").write_text(f'#!/bin/sh\necho run >> "{tools / "runs"}"\n' + (f'exec {real} "$@"\n' if works else "exit 1\n"))
    (tools / "cc").chmod(0o755)
    return tools


def _runs(tools) -> int:
    return len((tools / "runs").read_text().splitlines()) if (tools / "runs").exists() else 0


@pytest.mark.skipif(not LINKABLE, reason="the shared library is linked on Linux with a C compiler")
def test_a_missing_shared_library_is_linked_from_the_object_file_once(cached_kernels, tmp_path):
    """Only the object file cached (the library deleted, or ``cc`` missing when the kernels were compiled): the
    process that loads it (llvmlite, no numba) links the library once from the position-independent code stored in
    it and caches it, so the next process loads the library (no llvmlite) and computes the same cells; nothing but
    the cache's own files is left in the folder."""
    folder, first = cached_kernels
    work = _without_library(folder, first, tmp_path)
    tools = _fake_compiler(tmp_path, works=True)
    path = f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"
    relinked = _load_in_fresh_process(work, PATH=path)
    assert not relinked["numba"] and relinked["llvmlite"] and relinked["cells"] == first["cells"]
    assert relinked["files"] == first["files"] and _runs(tools) == 1
    later = _load_in_fresh_process(work, PATH=path)
    assert not later["llvmlite"] and later["library"] and later["cells"] == first["cells"] and _runs(tools) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared library is linked on Linux")
def test_a_compiler_that_fails_is_not_run_again_by_every_process(cached_kernels, tmp_path):
    """Without ``cc`` on the PATH the object file serves and nothing is written; with a ``cc`` that fails, the first
    process that loads the object file runs it once and leaves a marker, so the next ones do not run it again
    (that day: a marker a day old is retried)."""
    folder, first = cached_kernels
    work = _without_library(folder, first, tmp_path)
    native = [name for name in first["files"] if name.endswith(".native")]
    plain = _load_in_fresh_process(work, PATH=str(tmp_path / "no-such-folder"))
    assert not plain["numba"] and plain["llvmlite"] and plain["files"] == native and plain["cells"] == first["cells"]
    tools = _fake_compiler(tmp_path, works=False)
    for _ in range(2):
        failed = _load_in_fresh_process(work, PATH=str(tools))
        assert not failed["numba"] and failed["llvmlite"] and not failed["library"]
        assert failed["cells"] == first["cells"] and _runs(tools) == 1
    markers = [name for name in failed["files"] if name not in native]
    assert len(markers) == 1 and markers[0].endswith(".nolink")
    day_old = time.time() - 1.5 * 86400
    os.utime(work / markers[0], (day_old, day_old))
    _load_in_fresh_process(work, PATH=str(tools))
    assert _runs(tools) == 2


def _plant(path: Path, days_old: float, content: bytes = b"x") -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    when = time.time() - days_old * 86400
    os.utime(path, (when, when))
    return path


@pytest.mark.parametrize("written_by", ["compiling", "linking"])
def test_stale_kernel_files_are_removed_where_kernels_are_written(cached_kernels, tmp_path, written_by):
    """A process that writes the kernels to a folder (compiling them, or linking the missing library) removes this
    module's files there that no process has used for ``STALE_DAYS`` days (another source, toolchain or CPU; also
    leftover temporary files), and only those: not another version's recent files, not a name that merely looks
    alike, nor a symbolic link (or its target), a folder, or (as root) another user's file of such a name. A
    process that only loads the kernels removes nothing."""
    if written_by == "linking" and not LINKABLE:
        pytest.skip("needs the shared-library path")
    folder, first = cached_kernels
    work = _copy_cache(folder, tmp_path / "cache")
    old = 2 * nk.STALE_DAYS
    stale = [_plant(work / f"numba_kernels-{'0' * 20}{suffix}", old) for suffix in (".native", ".so", ".json", ".nolink")]
    stale.append(_plant(work / f".numba_kernels-{'1' * 20}.so-4242-0123abcd", old))
    kept = [_plant(work / f"numba_kernels-{'2' * 20}.native", nk.STALE_DAYS - 1)]
    kept += [_plant(work / name, old) for name in (
        "numba_kernels.cpython-312.pyc", f"numba_kernels-{'3' * 19}.native", f"numba_kernels-{'3' * 20}.native.bak",
        f"numba_kernels-{'3' * 20}.o", f"numba_kernels-{'A' * 20}.so", "other.so", f"x-numba_kernels-{'3' * 20}.so")]
    target = _plant(tmp_path / f"numba_kernels-{'4' * 20}.so", old)
    link = work / target.name
    link.symlink_to(target)
    os.utime(link, (time.time() - old * 86400,) * 2, follow_symlinks=False)
    (work / f"numba_kernels-{'5' * 20}.json").mkdir()
    kept += [link, target, work / f"numba_kernels-{'5' * 20}.json"]
    if os.getuid() == 0:
        foreign = _plant(work / f"numba_kernels-{'6' * 20}.native", old)
        os.chown(foreign, 12345, 12345)
        os.utime(foreign, (time.time() - old * 86400,) * 2)
        kept.append(foreign)
    loaded = _load_in_fresh_process(work)
    assert not loaded["numba"] and all(path.exists() for path in stale)
    for name in first["files"]:
        if written_by == "compiling" or not name.endswith(".native"):
            (work / name).unlink()
    written = _load_in_fresh_process(work)
    assert written["numba"] == (written_by == "compiling") and written["cells"] == first["cells"]
    assert not any(os.path.lexists(path) for path in stale)
    assert all(os.path.lexists(path) for path in kept) and link.is_symlink()
    assert sorted(set(written["files"]) - {path.name for path in kept}) == first["files"]


def test_loaded_kernel_files_are_marked_as_in_use_at_most_once_a_day(cached_kernels, tmp_path):
    """A process that loads the kernels sets the modification time of their files (the library's, its description
    and the object file: the ones it would rewrite) to now when it is more than a day old, so that another
    installation sharing the folder does not take them for stale; a file used within the day is not written."""
    folder, first = cached_kernels
    work = _copy_cache(folder, tmp_path / "cache")
    for days_old, refreshed in ((2.0, True), (0.5, False)):
        when = time.time() - days_old * 86400
        for name in first["files"]:
            os.utime(work / name, (when, when))
        start = time.time()
        run = _load_in_fresh_process(work)
        assert not run["numba"] and run["cells"] == first["cells"]
        for name in first["files"]:
            mtime = (work / name).stat().st_mtime
            assert (mtime >= start - 1) if refreshed else mtime == pytest.approx(when, abs=1e-3), (name, days_old)


@pytest.mark.skipif(not LINKABLE, reason="needs the shared-library path")
def test_a_library_removed_while_it_is_being_loaded_still_loads(cached_kernels, monkeypatch, tmp_path):
    """A concurrent process may remove a stale file just as this one opens it: the library (and its description)
    unlinked right after being opened still load from their open descriptors and compute the same cells."""
    folder, first = cached_kernels
    library = next(name for name in first["files"] if name.endswith(".so"))[:-3]
    work = _copy_cache(folder, tmp_path / "cache")
    opened = nk._open_private_folder(work)
    opening = nk._open_file

    def opened_then_removed(folder_descriptor, name):
        descriptor = opening(folder_descriptor, name)
        os.unlink(name, dir_fd=folder_descriptor)
        return descriptor

    monkeypatch.setattr(nk, "_open_file", opened_then_removed)
    try:
        kernels = nk._load_library(opened, library)
    finally:
        os.close(opened)
    assert not any(name.startswith(library) for name in os.listdir(work))
    s, a, b = np.array([0.0, 1.5, -2.0]), np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2])
    out, p = np.empty(8), np.empty(4)
    monkeypatch.setattr(nk, "_NATIVE", kernels)
    nk.attentive_table(s, a, b, np.empty(4), np.empty(4), np.empty(4, dtype=np.int64), out, p)
    assert out.tolist() == first["cells"]


def test_kernels_are_cached_in_the_next_folder_when_the_first_cannot_serve(monkeypatch, tmp_path):
    """The cache folders are tried in order: a first one that cannot be a folder (a file is in the way) leaves the
    kernels to the second; damaged files in the first do not hide intact ones in the second."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a file where the first cache folder would be")
    monkeypatch.setattr(nk, "cache_dirs", lambda: [first, second])
    built = nk._build()
    written = sorted(os.listdir(second))
    assert len(written) == 1 + 2 * int(LINKABLE) and not any(name.startswith(".") for name in written)
    first.unlink()
    first.mkdir(mode=0o700)
    for name in written:
        (first / name).write_bytes(b'{"symbols": {}, "sha256": ""}\ndamaged')
    loaded = nk._build()
    assert ("library" in loaded) == LINKABLE and sorted(os.listdir(second)) == written
    s, a, b = np.array([0.0, 2.0, -1.0]), np.array([0, 1, 2]), np.array([1, 2, 0])
    cells = []
    for kernels in (built, loaded):
        out, p = np.empty(6), np.empty(3)
        monkeypatch.setattr(nk, "_NATIVE", kernels)
        nk.attentive_table(s, a, b, np.empty(3), np.empty(3), np.empty(3, dtype=np.int64), out, p)
        cells.append(out.tolist())
    assert cells[0] == cells[1]


def test_compiled_kernels_refuse_arrays_they_would_misread():
    """The kernels read raw memory: a wrong float dtype, a non-contiguous work array or a short output is a
    ValueError, not a silent misread; index arrays of another integer type (``intp`` on 32-bit platforms) are
    converted and give the same numbers."""
    s, a, b = np.array([0.0, 1.0, -3.0]), np.array([0, 1]), np.array([1, 2])
    work = [np.empty(2), np.empty(2), np.empty(2, dtype=np.int64), np.empty(4), np.empty(2)]
    expected = nk.attentive_table(s, a, b, *work).copy()
    narrow = nk.attentive_table(s, a.astype(np.int32), b.astype(np.uint32), *work)
    np.testing.assert_array_equal(narrow, expected)
    with pytest.raises(ValueError):
        nk.attentive_table(s, a.astype(float), b, *work)
    with pytest.raises(ValueError):
        nk.attentive_table(s, a, b, np.empty(4)[::2], *work[1:])
    with pytest.raises(ValueError):
        nk.attentive_table(s, a, b, *work[:3], np.empty(3), work[4])
    with pytest.raises(ValueError):
        nk.gather_add(a, b, np.zeros(3, dtype=np.float32), np.zeros(3))
    np.testing.assert_array_equal(nk.gather_add(a.astype(np.int32), b, np.array([1.0, 2.0, 4.0]), np.zeros(2)),
                                  [2.0, 4.0])


@pytest.mark.skipif(not LINKABLE, reason="needs the shared-library path")
def test_a_linked_library_is_loaded_only_from_the_cache_folder(cached_kernels, tmp_path):
    """``cc``'s output is loaded only from the cache folder, through the descriptor whose bytes were hashed, never
    from the temporary folder it is linked in (``TMPDIR``: another user's folder, or mounted ``noexec`` as on
    hardened machines, where the library then could never be cached)."""
    folder, first = cached_kernels
    work = _without_library(folder, first, tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = textwrap.dedent("""
        import json
        import bayes_annot.numba_kernels as nk
        mapped = sorted({line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps") if len(line.split()) > 5})
        print(json.dumps({"library": "library" in nk._NATIVE, "mapped": mapped}))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(work), TMPDIR=str(scratch),
               PYTHONPATH=str(Path(nk.__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["library"] and not [path for path in report["mapped"] if path.startswith(str(scratch))]
