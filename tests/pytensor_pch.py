"""Write a precompiled header for PyTensor's C modules (``make test`` runs this before pytest).

Usage: ``python tests/pytensor_pch.py HEADER``. Writes ``HEADER`` (the headers every module PyTensor
generates starts with: Python, NumPy, the C++ standard ones) and ``HEADER.gch``, the same compiled by
g++ with the flags PyTensor compiles its modules with. ``make test`` then adds ``-include HEADER`` to
PyTensor's ``gcc__cxxflags``: g++ reads the compiled header instead of parsing Python's and NumPy's
headers again for each module, which was about half of each module's compile time (16 modules of the
suite: 16.0 s -> 7.4 s of CPU) and a cold cache compiles some 400 of them. The shared libraries are
byte for byte the ones compiled without it (checked on 6 modules), so no number changes.

Where the compiled header does not fit a compile (other flags: PyTensor's own ``cutils_ext`` and
``lazylinker_ext``), g++ includes ``HEADER`` as text, the same headers the module includes next
(include guards make the second inclusion empty). If the compile fails, only ``HEADER`` is written and
the suite runs as it did without it. The compiled header is rebuilt on every run: g++ does not check
it against the headers it was made from, so a NumPy or Python upgrade must not find an old one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = """\
/* Written by tests/pytensor_pch.py: the first headers of every C module PyTensor generates. Nothing where
   Python's headers are not on the include path: PyTensor's test programs (the -march detection) compile
   with gcc__cxxflags too, and a failed detection would leave every module without its -march flags. */
#if __has_include(<Python.h>)
#include <Python.h>
#if __has_include("pytensor_mod_helper.h")
#include "pytensor_mod_helper.h"
#endif
#include <math.h>
#if __has_include(<numpy/arrayobject.h>)
#include <numpy/arrayobject.h>
#include <numpy/arrayscalars.h>
#include <numpy/npy_math.h>
#endif
#include <vector>
#include <algorithm>
#endif
"""


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` at once (a run compiling with it meanwhile sees the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_command(header: Path, out: Path) -> list[str]:
    """g++ with the flags of PyTensor's module compiles (``CLinker.compile_args`` and
    ``GCC_compiler.compile_str``), minus any ``-include``, compiling ``header`` to ``out``."""
    from pytensor import config
    from pytensor.link.c.cmodule import GCC_compiler, std_include_dirs

    args, skip = [], False
    for arg in GCC_compiler.compile_args():
        if skip or arg == "-include":
            skip = not skip
            continue
        args.append(arg)
    return [config.cxx, "-x", "c++-header", "-g", "-O3", "-fno-math-errno", "-Wno-unused-label",
            "-Wno-unused-variable", "-Wno-write-strings", *args, *(f"-I{d}" for d in std_include_dirs()),
            "-fvisibility=hidden", "-o", str(out), str(header)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/pytensor_pch.py HEADER", file=sys.stderr)
        return 2
    header = Path(argv[0]).resolve()
    header.parent.mkdir(parents=True, exist_ok=True)
    _write(header, HEADER.encode())
    gch = header.with_name(header.name + ".gch")
    gch.unlink(missing_ok=True)  # never an old one beside a new header
    fd, tmp = tempfile.mkstemp(dir=header.parent, prefix=f".{gch.name}.")
    os.close(fd)
    try:
        proc = subprocess.run(compile_command(header, Path(tmp)), capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, gch)
        else:
            print(f"pytensor_pch: no precompiled header (g++ failed: {proc.stderr.strip()[:300]})", file=sys.stderr)
    except Exception as err:  # no compiler, no PyTensor: the header alone is harmless
        print(f"pytensor_pch: no precompiled header ({err})", file=sys.stderr)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
