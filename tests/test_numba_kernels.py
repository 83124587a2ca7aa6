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


def _load_in_fresh_process(cache_dir) -> dict:
    """Import the kernels in a fresh interpreter with ``NUMBA_CACHE_DIR=cache_dir``: which of numba / llvmlite it
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
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(Path(nk.__file__).resolve().parents[1]))
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
    library: without llvmlite too) and computes the same cells; a damaged library falls back to the object file,
    a damaged object file is compiled anew (and both rewritten). No temporary file is left behind."""
    folder, first = cached_kernels
    assert first["numba"] and first["llvmlite"] and not first["library"]
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
    object file serves."""
    folder, first = cached_kernels
    if not hasattr(os, "mkfifo") or not LINKABLE:
        pytest.skip("needs FIFOs and the shared-library path")
    work = _copy_cache(folder, tmp_path / "cache")
    description = next(work.glob("*.json"))
    description.unlink()
    os.mkfifo(description, 0o600)
    run = _load_in_fresh_process(work)  # the subprocess's timeout fails the test if it hangs
    assert not run["numba"] and run["llvmlite"] and not run["library"] and run["cells"] == first["cells"]


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
