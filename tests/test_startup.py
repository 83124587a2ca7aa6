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
HEAVY = ("pymc", "pytensor", "arviz", "matplotlib", "dask", "distributed", "xarray", "scipy.stats")
NUMERIC = ("numpy", "pandas", "scipy", "pyarrow", "tqdm")


def _loaded_after(code: str) -> set[str]:
    """Top-level names (and ``scipy.stats``) in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + textwrap.dedent(
        """
        import json as _json, sys as _sys
        _names = {m.split('.')[0] for m in _sys.modules} | ({'scipy.stats'} & set(_sys.modules))
        _sys.__stdout__.write('\\nLOADED=' + _json.dumps(sorted(_names)) + '\\n')
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return set(json.loads(line[len("LOADED="):]))


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
