"""One command, several source trees in turn: CPU and wall time of each fresh process.

    python benchmarks/cpu_alternate.py --trees /work/main,. --repeat 16 -- python -c "import bayes_annot.fit"
    python benchmarks/cpu_alternate.py --trees A,B --repeat 10 -- python -m bayes_annot fit LOG --out OUT --quiet

Each round runs the command once per tree (``PYTHONPATH`` = the tree; the order reverses every other round, so
a burst of load from other jobs hits the trees alike) and records the process's user + system CPU seconds
(``os.times`` of the ended children) and its wall seconds. On a machine shared with other jobs the CPU time is
the steadier of the two. An ``--out`` folder named in the command (``OUT``) is removed before every run.
Prints one line per tree (median, mean, min) and the range of the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time


def measure(command: list[str], trees: list[str], repeat: int, scratch: str | None = None) -> dict:
    """``{tree: {"cpu": [...], "wall": [...]}}`` over ``repeat`` rounds, and the loads seen (``"load"``)."""
    out = {tree: {"cpu": [], "wall": []} for tree in trees}
    loads = []
    for round_ in range(repeat):
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            env = dict(os.environ, PYTHONPATH=tree)
            before, start = os.times(), time.perf_counter()
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall, after = time.perf_counter() - start, os.times()
            out[tree]["cpu"].append(after.children_user - before.children_user
                                    + after.children_system - before.children_system)
            out[tree]["wall"].append(wall)
        loads.append(os.getloadavg()[0])
    return {"trees": out, "load": loads}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="comma-separated source trees (PYTHONPATH)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the raw times here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    scratch = command[command.index("--out") + 1] if "--out" in command[:-1] else None
    result = measure(command, args.trees.split(","), args.repeat, scratch)
    for tree, times in result["trees"].items():
        cpu, wall = times["cpu"], times["wall"]
        print(f"{tree}: CPU median {statistics.median(cpu):.3f} s, mean {statistics.mean(cpu):.3f}, min {min(cpu):.3f}"
              f" | wall median {statistics.median(wall):.3f} s, min {min(wall):.3f} (n={len(cpu)})")
    print(f"load {min(result['load']):.1f}-{max(result['load']):.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle)
    return result


if __name__ == "__main__":
    main()
