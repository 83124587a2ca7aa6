"""A chain of ``bayes-annot fit NEW --update DIR --out DIR`` on a parquet folder, in several trees, interleaved.

Each tree runs in a process of its own (its ``PYTHONPATH``), which fits the first rows into a parquet folder and
then, on each request, runs one update in-process (``bayes_annot.cli.main``), reporting its CPU time
(``time.process_time``), the files the folder holds and whether the update fell back to refitting the saved
rows. The trees take turns update by update, so a change of machine load hits them alike.

    python benchmarks/bench_update_chain.py --trees main=/work/main,branch=. --rows 200000 --updates 70
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_WORKER = r"""
import contextlib, io, json, os, resource, sys, time
import numpy as np
from pathlib import Path
from bayes_annot.cli import main
import bayes_annot as ba

out, rows, share, limit = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
step = max(1, int(rows * share))
log = ba.simulate(n_users=max(50, rows // 22), n_models=20, labels_per_user=(5, 40), seed=1)
log = log[["user", "model_a", "model_b", "winner"]].astype(str)
log.insert(0, "vote_id", np.arange(len(log), dtype=np.int64))
log.iloc[:rows].to_parquet(out.parent / "first.parquet", index=False)
assert main(["fit", str(out.parent / "first.parquet"), "--out", str(out), "--format", "parquet", "--quiet"]) == 0
rng = np.random.default_rng(2)
print("ready", flush=True)
for i, line in enumerate(sys.stdin):
    new = log.iloc[rng.integers(0, len(log), step)].copy()
    new["vote_id"] = np.arange(len(log) + i * step, len(log) + (i + 1) * step)
    path = out.parent / "new.parquet"
    new.to_parquet(path, index=False)
    err = io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stderr(err):
        code = main(["fit", str(path), "--update", str(out), "--out", str(out), "--row-id", "vote_id", "--quiet"])
    seconds = time.process_time() - start
    manifest = json.loads((out / "manifest.json").read_text())
    print(json.dumps({"code": code, "cpu": seconds, "files": len(os.listdir(out)),
                      "parts": len(manifest["tables"]["rows"].get("parts", [0])),
                      "fallback": "updating from the saved rows instead" in err.getvalue(),
                      "error": err.getvalue().strip()[-300:] if code else ""}), flush=True)
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=f"this={Path(__file__).resolve().parents[1]}",
                        help="NAME=PATH,...: the trees to compare (each on its own PYTHONPATH)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the first fit")
    parser.add_argument("--share", type=float, default=0.01, help="rows of each update, as a share of --rows")
    parser.add_argument("--updates", type=int, default=70)
    parser.add_argument("--nofile", type=int, default=0, help="the workers' open-file limit (0: as inherited)")
    parser.add_argument("--out", default=None, help="write the per-update figures here (JSON)")
    args = parser.parse_args(argv)
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-update-chain-"))
    workers = {}
    for name, path in trees.items():
        (work / name).mkdir()
        env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
        workers[name] = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(work / name / "out"), str(args.rows), str(args.share),
             str(args.nofile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=work)
        assert workers[name].stdout.readline().strip() == "ready", f"{name}: the first fit failed"
    figures = {name: [] for name in trees}
    for i in range(args.updates):
        for name, worker in workers.items():
            if figures[name] and figures[name][-1]["code"]:
                continue  # that tree's chain stopped
            worker.stdin.write("go\n")
            worker.stdin.flush()
            figures[name].append(json.loads(worker.stdout.readline()))
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    summary = {}
    for name, runs in figures.items():
        cpu = [r["cpu"] for r in runs]
        merged = [i for i in range(1, len(runs)) if runs[i]["parts"] < runs[i - 1]["parts"] and not runs[i]["fallback"]]
        plain = [cpu[i] for i in range(len(runs)) if i not in merged and not runs[i]["fallback"]]
        summary[name] = {
            "updates": len(runs), "failed": [i + 1 for i, r in enumerate(runs) if r["code"]],
            "fallbacks": [i + 1 for i, r in enumerate(runs) if r["fallback"]],
            "merges": [i + 1 for i in merged], "files_after": [runs[k - 1]["files"] for k in (10, 30, 50, len(runs))
                                                                 if k <= len(runs)],
            "median_cpu": statistics.median(plain) if plain else None,
            "cpu_first10": statistics.median(cpu[:10]), "cpu_last10": statistics.median(cpu[-10:]),
            "merge_cpu": [round(cpu[i], 3) for i in merged],
        }
        summary[name]["fallback_cpu"] = [round(cpu[i - 1], 3) for i in summary[name]["fallbacks"]]
        print(name, json.dumps(summary[name]))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "figures": figures}, indent=1))
    return summary


if __name__ == "__main__":
    main()
