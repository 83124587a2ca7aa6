"""Start-up stays light (issue 15): ``import bayes_annot`` and ``bayes-annot --help`` load none of the
heavy stacks (PyMC, PyTensor, ArviZ, matplotlib, Dask; nor numpy, pandas, SciPy, pyarrow), each checked in
a fresh interpreter. Timings are not asserted here: see ``benchmarks/bench_startup.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pymc", "pytensor", "arviz", "matplotlib", "dask", "distributed", "xarray", "scipy.stats", "numba", "llvmlite")
NUMERIC = ("numpy", "pandas", "scipy", "pyarrow", "tqdm")


def _modules_after(code: str, **environ: str) -> set[str]:
    """Every name in ``sys.modules`` after running ``code`` in a fresh interpreter (``environ`` added to its
    environment)."""
    probe = code + textwrap.dedent(
        """
        import json as _json, sys as _sys
        _sys.__stdout__.write('\\nLOADED=' + _json.dumps(sorted(_sys.modules)) + '\\n')
        """
    )
    env = dict(os.environ, **environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return set(json.loads(line[len("LOADED="):]))


def _loaded_after(code: str) -> set[str]:
    """Top-level names (and ``scipy.stats``) in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    modules = _modules_after(code)
    return {m.split(".")[0] for m in modules} | ({"scipy.stats"} & modules)


def test_import_loads_no_heavy_stack():
    loaded = _loaded_after("import bayes_annot")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not loaded & set(NUMERIC), f"import bayes_annot loads {sorted(loaded & set(NUMERIC))}"


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["simulate", "--help"], ["report", "--help"]])
def test_help_loads_no_heavy_stack(argv):
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ['bayes-annot', *{argv!r}]
        try:
            runpy.run_module('bayes_annot', run_name='__main__', alter_sys=True)
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        """
    )
    loaded = _loaded_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not loaded & set(NUMERIC), f"bayes-annot {' '.join(argv)} loads {sorted(loaded & set(NUMERIC))}"


def test_fit_import_defers_pymc_and_scipy_stats():
    loaded = _loaded_after("from bayes_annot import fit, simulate, load, compare")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("n_models", [64, 80])
def test_fit_with_few_models_does_not_import_numba(n_models, tmp_path):
    """The compiled kernels (``bayes_annot[fast]``) serve only fits above 64 models (with many pairs: that threshold
    is lifted here): a fit of 64 models never loads them (nor numba, nor llvmlite); one of 80 does when numba is
    installed, numba itself only in the first process (which compiles and caches them), and with a C compiler on
    Linux the next loads them without llvmlite either."""
    code = textwrap.dedent(
        f"""
        import bayes_annot as ba
        import bayes_annot.pairs
        bayes_annot.pairs.NUMBA_MIN_PAIRS = 0
        log = ba.simulate(n_users=200, n_models={n_models}, labels_per_user=(5, 15), seed=0)
        ba.fit(log)
        ba.fit(log, variant="continuous")
        """
    )
    cache = tmp_path / "kernels"
    cache.mkdir(mode=0o700)
    first = _modules_after(code, NUMBA_CACHE_DIR=str(cache))
    loaded = {m.split(".")[0] for m in first}
    if n_models <= 64:
        assert "numba" not in loaded and "llvmlite" not in loaded and "bayes_annot.numba_kernels" not in first
        return
    import importlib.util
    import shutil

    has_numba = importlib.util.find_spec("numba") is not None
    assert ("bayes_annot.numba_kernels" in first) == has_numba and ("numba" in loaded) == has_numba
    second = _modules_after(code, NUMBA_CACHE_DIR=str(cache))
    assert ("bayes_annot.numba_kernels" in second) == has_numba and "numba" not in second
    if has_numba and sys.platform.startswith("linux") and shutil.which("cc"):
        assert "llvmlite" not in second


def test_lazy_names_behave_like_eager_ones():
    import bayes_annot as ba
    import bayes_annot.compare  # noqa: F401  - binds nothing over the function of the same name
    import bayes_annot.fit  # noqa: F401
    import bayes_annot.simulate  # noqa: F401
    from bayes_annot import fit

    assert ba.fit is fit and callable(ba.compare) and callable(ba.simulate)
    assert ba.fit.__module__ == "bayes_annot.fit"
    assert set(ba.__all__) <= set(dir(ba))
    for name in ba.__all__:
        assert getattr(ba, name) is not None
    assert ba.metrics.__name__ == "bayes_annot.metrics"  # submodules load on attribute access too
    with pytest.raises(AttributeError):
        ba.no_such_name  # noqa: B018
    namespace: dict = {}
    exec("from bayes_annot import *", namespace)
    assert set(ba.__all__) <= set(namespace)


#: What a CSV fit through the command line does not use: ``scipy.special``'s package (its four ufuncs come from
#: its compiled module, bayes_annot.ufuncs), SciPy's optimisers, and the parquet writer (CSV in, CSV out).
FIT_UNUSED = ("scipy.special", "scipy.special._support_alternative_backends", "scipy.optimize", "scipy.stats",
              "pyarrow.parquet", "pyarrow.dataset")


def _cli_fit(tmp_path, setup: str = "", check: str = "") -> tuple[Path, str]:
    """The output folder and the code of ``bayes-annot fit LOG.csv --out OUT --quiet`` (through ``cli.main``) on
    a small simulated log, with ``setup`` run before and ``check`` after (each a dedented block)."""
    import bayes_annot as ba

    log = tmp_path / "log.csv"
    ba.simulate(n_users=40, n_models=4, labels_per_user=(5, 10), seed=1).to_csv(log, index=False)
    out = tmp_path / "out"
    run = f"from bayes_annot.cli import main\nassert main(['fit', {str(log)!r}, '--out', {str(out)!r}, '--quiet']) == 0\n"
    return out, "import warnings\nwarnings.simplefilter('ignore')\n" + textwrap.dedent(setup) + run + textwrap.dedent(check)


def test_cli_csv_fit_loads_only_what_it_uses(tmp_path):
    out, code = _cli_fit(tmp_path)
    loaded = _modules_after(code)
    assert (out / "users.csv").is_file()
    assert "scipy.special._special_ufuncs" in loaded and "bayes_annot.ufuncs" in loaded  # the fit ran its engines
    assert not loaded & set(FIT_UNUSED), f"bayes-annot fit LOG.csv loads {sorted(loaded & set(FIT_UNUSED))}"
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_cli_fit_reads_its_input_before_importing_pandas(tmp_path):
    """``bayes-annot fit LOG.csv`` starts the background read (``readahead.prefetch``) before pandas is
    imported, so the read overlaps pandas' import; the module itself loads neither numpy nor pandas."""
    loaded = _modules_after("import bayes_annot.readahead")
    assert not {m.split(".")[0] for m in loaded} & {"numpy", "pandas", "pyarrow"}, "readahead imports a numeric stack"
    out, code = _cli_fit(
        tmp_path,
        setup="""
        import sys
        import bayes_annot.readahead as readahead
        calls = []
        original = readahead.prefetch
        def prefetch(*args, **kwargs):
            calls.append("pandas" in sys.modules)
            return original(*args, **kwargs)
        readahead.prefetch = prefetch
        """,
        check="assert calls == [False], calls\n",
    )
    assert "pandas" in _modules_after(code)
    assert (out / "users.csv").is_file()
