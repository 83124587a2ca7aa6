"""tests/pytensor_pch.py (make test's precompiled header for PyTensor's modules): the flags it compiles with
and a header that PyTensor's -march detection, which compiles without Python's include path, still passes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytensor_pch  # noqa: E402


def test_compile_command_has_pytensors_flags_without_the_include(tmp_path, monkeypatch):
    from pytensor import config

    monkeypatch.setattr(config, "gcc__cxxflags", f"-g0 -include {tmp_path / 'old.h'}")
    cmd = pytensor_pch.compile_command(tmp_path / "h.h", tmp_path / "h.h.gch")
    assert "-include" not in cmd and str(tmp_path / "old.h") not in cmd
    assert {"-O3", "-g0", "-fno-math-errno", "-fvisibility=hidden"} <= set(cmd)
    assert cmd[-3:] == ["-o", str(tmp_path / "h.h.gch"), str(tmp_path / "h.h")]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_header_is_empty_without_pythons_include_path(tmp_path):
    """A header that needs Python.h made PyTensor's -march detection fail: every module lost its -march flags."""
    import sysconfig

    header = tmp_path / "pch.h"
    header.write_text(pytensor_pch.HEADER)
    source = tmp_path / "probe.cpp"
    source.write_text("int main() { return 0; }\n")
    plain = subprocess.run(["g++", "-fsyntax-only", "-include", str(header), str(source)], capture_output=True)
    assert plain.returncode == 0, plain.stderr
    source.write_text("static PyObject *unused;\nint main() { return 0; }\n")  # Python's headers are included
    with_python = subprocess.run(["g++", "-fsyntax-only", f"-I{sysconfig.get_paths()['include']}", "-include",
                                  str(header), str(source)], capture_output=True)
    assert with_python.returncode == 0, with_python.stderr
