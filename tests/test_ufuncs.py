"""bayes_annot.ufuncs: SciPy's ``expit``, ``log_expit``, ``logit`` and ``gammaln`` without importing
``scipy.special`` are the very objects ``scipy.special`` exports (so every number is the same), and the
public module stands in whenever the compiled one cannot be loaded on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import bayes_annot.ufuncs as ufuncs

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("expit", "log_expit", "logit", "gammaln")


def _run(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_loaded_alone_then_the_same_objects_and_bits_as_scipy_special():
    out = _run(
        """
        import sys
        import numpy as np
        from bayes_annot import ufuncs
        assert "scipy.special" not in sys.modules, "bayes_annot.ufuncs imported scipy.special"
        x = np.concatenate([np.linspace(-800, 800, 4001), [0.0, -0.0, 1e-300, -1e-300, np.inf, -np.inf, np.nan]])
        p = np.concatenate([np.linspace(0, 1, 4001), [1e-300, 1 - 1e-16, -0.5, 1.5, np.nan]])
        g = np.concatenate([np.linspace(-50.5, 300.5, 4001), [0.0, 1.0, 2.0, 1e-300, 1e300, np.inf, np.nan]])
        ours = {"expit": ufuncs.expit(x), "log_expit": ufuncs.log_expit(x), "logit": ufuncs.logit(p),
                "gammaln": ufuncs.gammaln(g)}
        import scipy.special
        for name in ufuncs.__all__:
            assert getattr(ufuncs, name) is getattr(scipy.special, name), name
        theirs = {"expit": scipy.special.expit(x), "log_expit": scipy.special.log_expit(x),
                  "logit": scipy.special.logit(p), "gammaln": scipy.special.gammaln(g)}
        for name in ours:
            assert ours[name].view(np.int64).tolist() == theirs[name].view(np.int64).tolist(), name
        print("OK")
        """
    )
    assert out.strip().endswith("OK")


def test_the_same_objects_as_scipy_special_in_this_process():
    import scipy.special

    for name in NAMES:
        assert getattr(ufuncs, name) is getattr(scipy.special, name), name
        assert isinstance(getattr(ufuncs, name), np.ufunc)


@pytest.mark.parametrize("loader", ["fails", "lacks a name"])
def test_the_public_module_stands_in(loader):
    """A SciPy whose compiled module is not found (or lacks a function) gives scipy.special's own functions."""
    out = _run(
        f"""
        import types
        from bayes_annot import ufuncs
        def fails():
            raise ImportError("moved")
        source = ufuncs._source(fails if {loader!r} == "fails" else (lambda: types.SimpleNamespace(expit=None)))
        import scipy.special
        assert source is scipy.special
        print("OK")
        """
    )
    assert out.strip().endswith("OK")


def test_already_imported_scipy_special_is_used_as_is():
    calls = []
    source = ufuncs._source(lambda: calls.append(1) or types.SimpleNamespace())
    import scipy.special

    assert source is scipy.special and not calls
