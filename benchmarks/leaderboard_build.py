"""Benchmark: build the leaderboard from 10,000 stored cells (target: < 3 s).

    python -m benchmarks.leaderboard_build [--cells 10000] [--samples 600] [--results /tmp/rb_perf_lb]

Writes synthetic but schema-valid result.json files (20 NCE/Ring twin checkpoints x 50 tasks x
10 seeds, `--samples` per-episode values each, as a Meta-Dataset cell stores), then times
`write_all` (scan, validate, aggregate, rank, paired statistics, CSV/MD/PNG): wall time, this process's
CPU time, and the CPU time of the figure worker it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def synthesise(root: Path, cells: int, samples: int) -> None:
    from bench.store import SCHEMA_VERSION

    rng = np.random.default_rng(0)
    n_checkpoints, n_tasks = 20, 50
    seeds = max(cells // (n_checkpoints * n_tasks), 1)
    count = 0
    folder = root / "perf" / "cells"
    folder.mkdir(parents=True)
    for c in range(n_checkpoints):
        sampler = "ring" if c % 2 else "nce"
        checkpoint = {"path": f"/ckpt/{c}.pt", "sha256": f"{c:064x}", "method": ["ir", "cmc", "moco", "simclr"][c // 2 % 4],
                      "sampler": sampler, "sampler_params": {}, "arch": "resnet50", "pretrain_dataset": "imagenet",
                      "epochs": 200, "seed": c // 8}
        for t in range(n_tasks):
            for seed in range(seeds):
                if count >= cells:
                    return
                values = np.clip(rng.normal(60 + (c % 2), 15, samples), 0, 100).round(2)
                ids = [f"e{i}" for i in range(samples)]
                metric = {"mean": float(values.mean()), "std": float(values.std()), "n": samples,
                          "ci95": float(1.96 * values.std() / np.sqrt(samples)), "samples": values.tolist(),
                          "sample_ids": ids, "higher_is_better": True}
                cid = f"{count:020x}"
                result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "perf", "protocol_version": "1",
                          "task": {"name": f"task{t:02d}", "params": {"source": f"task{t:02d}", "mode": "episodic"}},
                          "seed": seed, "options": {"episodes": samples, "probes": "ncc,logreg"},
                          "dataset": {"name": f"task{t:02d}", "sha256": f"{t:064x}", "files": 1,
                                      "label": f"task{t:02d}:{t:08x}"},
                          "metrics": {"acc": metric},
                          "checkpoint": checkpoint, "info": {}, "engine": "synthetic", "code_version": "perf"}
                (folder / cid).mkdir()
                (folder / cid / "result.json").write_text(json.dumps(result))
                count += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--results", type=Path, default=Path("/tmp/rb_perf_lb"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.results, ignore_errors=True)
    started = time.perf_counter()
    synthesise(args.results, args.cells, args.samples)
    synth = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    children_started = resource.getrusage(resource.RUSAGE_CHILDREN)
    from bench.leaderboard import write_all  # imports (pandas, matplotlib) count too

    written = write_all(args.results, ["perf"])
    build, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the figure worker, waited for by write_all
    worker_cpu = (children.ru_utime + children.ru_stime) - (children_started.ru_utime + children_started.ru_stime)
    print(json.dumps({"cells": args.cells, "samples_per_cell": args.samples, "synthesis_s": round(synth, 2),
                      "leaderboard_s": round(build, 2),
                      "leaderboard_cpu_s": round(cpu, 2), "figure_worker_cpu_s": round(worker_cpu, 2), "files": [str(p) for p in written],
                      "load_avg_1min": os.getloadavg()[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
