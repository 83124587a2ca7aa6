"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def machine() -> str:
    """Cores, CPU model, memory, OS and Python of this machine, in one line."""
    cpu = "unknown CPU"
    mem = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as fh:
            total = next((int(line.split()[1]) for line in fh if line.startswith("MemTotal")), None)
        mem = f", {total / 1024**2:.0f} GiB RAM" if total else ""
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def find_crowdkit_python(explicit: str | None) -> str | None:
    """An interpreter with crowd-kit: the one given, $CROWDKIT_PYTHON, or this one if it has crowdkit."""
    for candidate in (explicit, os.environ.get("CROWDKIT_PYTHON")):
        if candidate and Path(candidate).exists():
            return candidate
    try:
        import crowdkit  # noqa: F401

        return sys.executable
    except ImportError:
        return None


def write_outputs(markdown: str, raw, out: str, json_path: str | None) -> None:
    """Write a benchmark's markdown page (and its raw figures as JSON), then print the page."""
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(markdown + "\n", encoding="utf-8")
    if json_path:
        Path(json_path).write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    print(markdown)
