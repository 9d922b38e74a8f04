"""Benchmark: plan and submit a 1,000-cell suite to SLURM as job arrays (target: < 10 s of runner time).

    python -m slurm.local_cluster start
    python -m benchmarks.runner_submit [--cells 1000] [--results /tmp/rb_perf_submit]

Runs `python -m bench.run --suite selftest --executor slurm --no-wait n_tasks=N` as a user would,
times the whole command (interpreter start included), then cancels the submitted arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slurm.jobs import cancel_jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner_submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=Path("/tmp/rb_perf_submit"))
    parser.add_argument("--keep", action="store_true", help="do not cancel the submitted jobs")
    args = parser.parse_args(argv)
    shutil.rmtree(args.results, ignore_errors=True)
    command = [sys.executable, "-m", "bench.run", "--suite", "selftest", "--executor", "slurm", "--no-wait",
               "--no-progress", "--no-leaderboard", "--results", str(args.results), f"n_tasks={args.cells}"]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    match = re.search(r"planning ([\d.]+)s, submission ([\d.]+)s", out.stderr)
    cells = list((args.results / "selftest" / "cells").iterdir())
    job_ids = sorted({json.loads((c / "submitted.json").read_text())["job_id"].split("_")[0] for c in cells})
    report = {"cells": args.cells, "submitted_cells": len(cells), "arrays": job_ids, "runner_wall_s": round(wall, 2), "runner_cpu_s": round(cpu, 2),
              "planning_s": float(match.group(1)) if match else None,
              "submission_s": float(match.group(2)) if match else None, "cpus": os.cpu_count(),
              "load_avg_1min": os.getloadavg()[0]}
    print(json.dumps(report, indent=1))
    if not args.keep:
        cancel_jobs(job_ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
