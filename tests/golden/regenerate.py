"""Rewrite the golden fixtures of tests/test_golden.py from the current code.

    python tests/golden/regenerate.py            # every case (1-2 min, mostly PyMC compiling the MAP models)
    python tests/golden/regenerate.py em-two-class-learned-q_free tastes-auto   # only these

Regenerate ONLY when a number changes on purpose (a fix, a new prior, a
changed default), never to make a failing golden test pass after a refactor
that was meant to change nothing. Say in the commit message which cases moved
and why. The cases themselves are defined in tests/test_golden.py (CASES).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_golden import CASES, GOLDEN_DIR, snapshot, write_fixture


def main(argv: list[str]) -> int:
    wanted = argv or list(CASES)
    unknown = [name for name in wanted if name not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name in wanted:
        started = time.perf_counter()
        run, _ = CASES[name]
        path = write_fixture(name, snapshot(run()))
        print(f"{name:40s} {path.stat().st_size / 1024:6.1f} KB  {time.perf_counter() - started:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
