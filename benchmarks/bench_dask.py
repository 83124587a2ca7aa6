"""Dask EM on a large synthetic parquet log: wall time and peak memory (issue #8).

1. Writes a synthetic two-class log to ``--dir`` as parquet files of
   ``--rows-per-file`` rows (strings for user and model ids, as a real export
   would have them). Files come in groups of ``--files-per-group``; each group
   has its own ``--users-per-group`` users, so a log made of the first N groups
   keeps the same labels per user whatever its size.
2. For each size (a number of groups) starts a fresh
   ``distributed.LocalCluster`` (``--workers`` processes, 1 thread each), reads
   that many files with ``dask.dataframe.read_parquet`` and runs
   :func:`bayes_annot.dask_em.fit_dask`; records wall time (and its split into
   scan / encode+shuffle / EM), iterations, each worker's peak RSS (VmHWM of the
   worker process, read at the end) and the driver's peak RSS growth.

Usage:
    python benchmarks/bench_dask.py --dir /work/bench_data --groups 1,3,10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def worker_peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def write_log(directory: Path, n_groups: int, files_per_group: int, rows_per_file: int, users_per_group: int,
              n_models: int = 20, casual_share: float = 0.3, q: float = 0.5, seed: int = 0) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    strengths = np.linspace(2.0, -2.0, n_models)
    model_names = np.array([f"model_{k:02d}" for k in range(n_models)], dtype=object)
    paths = []
    for g in range(n_groups):
        rng_g = np.random.default_rng([seed, g])
        casual = rng_g.random(users_per_group) < casual_share
        names = np.array([f"u{g:03d}_{i:07d}" for i in range(users_per_group)], dtype=object)
        for f in range(files_per_group):
            path = directory / f"part-{g:03d}-{f:03d}.parquet"
            paths.append(path)
            if path.exists():
                continue
            rng = np.random.default_rng([seed, g, f])
            user = rng.integers(0, users_per_group, rows_per_file)
            a = rng.integers(0, n_models, rows_per_file)
            b = (a + rng.integers(1, n_models, rows_per_file)) % n_models
            p_att = 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b])))
            p = np.where(casual[user], q, p_att)
            choose_a = rng.random(rows_per_file) < p
            winner = np.where(choose_a, "model_a", "model_b").astype(object)
            table = pa.table({
                "user": pa.array(names[user], type=pa.string()),
                "model_a": pa.array(model_names[a], type=pa.string()),
                "model_b": pa.array(model_names[b], type=pa.string()),
                "winner": pa.array(winner, type=pa.string()),
            })
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)
    return paths


def run_one(paths: list[Path], workers: int, memory_limit: str, variant: str) -> dict:
    import dask.dataframe as dd
    import distributed

    from bayes_annot.dask_em import fit_dask
    from bayes_annot.spec import BehaviourSpec

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit=memory_limit)
    client = distributed.Client(cluster)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        driver_base = _status_kb("VmRSS") / 1024
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    samples.append(client.run(lambda: __import__("psutil").Process().memory_info().rss / 2**20))
                except Exception:  # pragma: no cover - cluster shutting down
                    pass
                stop.wait(1.0)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        ddf = dd.read_parquet([str(p) for p in paths])
        fit = fit_dask(ddf, spec=BehaviourSpec(variant))
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        peaks = client.run(worker_peak_mb)
        sampled = {}
        for s in samples:
            for k, v in s.items():
                sampled[k] = max(sampled.get(k, 0.0), v)
        return dict(
            rows=fit.counts["rows"], users=fit.counts["users"], models=fit.counts["models"], files=len(paths),
            variant=variant, workers=workers, wall_seconds=round(wall, 1),
            timings={k: round(v, 1) for k, v in fit.timings.items()}, iterations=fit.em.n_iter,
            converged=fit.em.converged, pi=fit.em.pi, q=fit.em.q,
            worker_peak_rss_mb=sorted(round(v) for v in peaks.values()),
            worker_sampled_max_rss_mb=sorted(round(v) for v in sampled.values()),
            driver_peak_rss_mb=round(_status_kb("VmHWM") / 1024), driver_rss_before_mb=round(driver_base),
        )
    finally:
        client.close()
        cluster.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/work/bench_data/dask_log")
    parser.add_argument("--groups", default="1,3,10", help="sizes to fit, in groups of files")
    parser.add_argument("--files-per-group", type=int, default=10)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--users-per-group", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--variant", default="two-class", choices=["two-class", "continuous"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sizes = [int(g) for g in args.groups.split(",")]
    t0 = time.perf_counter()
    paths = write_log(Path(args.dir), max(sizes), args.files_per_group, args.rows_per_file, args.users_per_group)
    print(json.dumps({"generated_files": len(paths), "seconds": round(time.perf_counter() - t0, 1),
                      "bytes_on_disk": sum(p.stat().st_size for p in paths)}), flush=True)
    results = []
    for groups in sizes:
        chosen = paths[: groups * args.files_per_group]
        result = run_one(chosen, args.workers, args.memory_limit, args.variant)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
