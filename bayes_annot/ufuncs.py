"""SciPy's logistic and log-gamma ufuncs, without importing :mod:`scipy.special`.

``expit``, ``log_expit``, ``logit`` and ``gammaln`` here are the very ufunc objects that
``scipy.special`` exports (the same functions, so the same bits): SciPy defines them in its
compiled module ``scipy.special._special_ufuncs``, which this module loads on its own. Importing
``scipy.special`` itself runs the package's ``__init__``: several hundred ufuncs and their
documentation, ``logsumexp`` and the array-API dispatch of every function
(``scipy.special._support_alternative_backends``), which a fit does not use (about 0.1 s of CPU time
on the 2-core AMD EPYC, docs/benchmarks_startup.md).

When ``scipy.special`` is already imported, or its compiled module cannot be loaded on its own (a SciPy
that keeps these functions elsewhere), the public ``scipy.special`` is imported and its functions are
used: the same objects either way (``tests/test_ufuncs.py``). A later ``import scipy.special`` finds the
compiled module in ``sys.modules`` and exports the same objects. The loading happens once, while this module is
first imported (the engines import it at module level, before any thread of theirs starts).

Examples
--------
>>> from bayes_annot.ufuncs import expit, logit
>>> float(expit(0.0)), float(logit(0.5))
(0.5, 0.0)
"""

from __future__ import annotations

import sys

__all__ = ["expit", "log_expit", "logit", "gammaln"]

#: The compiled module of SciPy that defines the four ufuncs (``scipy.special`` re-exports them).
COMPILED = "scipy.special._special_ufuncs"


def _load_compiled():
    """``scipy.special._special_ufuncs`` loaded without running ``scipy/special/__init__.py``.

    Loaded the way the import system loads an extension module (its spec, then ``sys.modules``, then
    its code), only without importing its parent package first. Raises ImportError when the module is
    not where this SciPy would keep it.
    """
    import importlib.machinery
    import importlib.util
    import os

    import scipy  # the top-level package (its configuration, its shared libraries): cheap

    loaded = sys.modules.get(COMPILED)
    if loaded is not None:
        return loaded
    folder = os.path.join(os.path.dirname(scipy.__file__), "special")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "_special_ufuncs" + suffix)
        if os.path.isfile(path):
            break
    else:
        raise ImportError(f"no compiled {COMPILED} in {folder}")
    spec = importlib.util.spec_from_file_location(COMPILED, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[COMPILED] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(COMPILED, None)
        raise
    return module


def _source(load_compiled=_load_compiled):
    """The module to take the ufuncs from: ``scipy.special`` when it is imported, else its compiled
    module loaded on its own, else (that failed, or lacks a name) ``scipy.special`` imported."""
    public = sys.modules.get("scipy.special")
    if public is None:
        try:
            module = load_compiled()
        except Exception:  # another SciPy layout: the public module, same functions
            module = None
        if module is not None and all(hasattr(module, name) for name in __all__):
            return module
    import scipy.special

    return scipy.special


_module = _source()
expit = _module.expit
log_expit = _module.log_expit
logit = _module.logit
gammaln = _module.gammaln
del _module
