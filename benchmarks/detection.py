"""Benchmark of the coco_det suite on the embedded digits (a benchmark, not a test).

    python -m benchmarks.detection                        # embedded NCE, Ring and the random control, both tasks
    python -m benchmarks.detection --schedule-scale 0.5 --tasks mask_rcnn --json out.json
    python -m benchmarks.detection --checkpoints a.pt,b.pt

Per checkpoint and task it runs the suite's own cell code (torchvision engine, embedded protocol) and
reports wall and CPU seconds (training, evaluation), seconds per iteration and the COCO APs; then the
one-time costs (embedded pretraining when not cached, building the digits COCO set) and the total.
CPU seconds matter on shared machines, where wall times are inflated by other processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="", help="comma list of encoder files (default: embedded pair + random control)")
    parser.add_argument("--tasks", default="mask_rcnn,keypoint_rcnn")
    parser.add_argument("--schedule-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from bench.suite import Cell, Task
    from bench.suites.coco_det import CocoDetSuite

    suite = CocoDetSuite()
    started = time.perf_counter()
    cpu_started = time.process_time()
    if args.checkpoints:
        checkpoints = [Path(p) for p in args.checkpoints.split(",") if p.strip()]
    else:
        checkpoints = suite.default_checkpoints()  # trains the embedded pair once if not cached
    setup_seconds = time.perf_counter() - started
    options = dict(suite.options) | {"tasks": args.tasks, "schedule_scale": args.schedule_scale}
    settings = suite.parse_options(options)
    suite.check(settings, None, checkpoints)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rb_perf_det_") as scratch:
        shared = Path(scratch) / "shared"
        build_started = time.perf_counter()
        suite.prepare(settings, None, shared)
        build_seconds = time.perf_counter() - build_started
        for task in suite.tasks(settings, None):
            for checkpoint in checkpoints:
                cell = Cell(suite.name, Task(task.name, task.params, task.profile), checkpoint, args.seed, options, None, shared,
                            settings)
                workdir = Path(scratch) / f"{checkpoint.stem}_{task.params['task']}"
                cell_started = time.perf_counter()
                output = suite.run(cell, workdir)
                info = output.info
                row = {
                    "checkpoint": str(checkpoint),
                    "method": info["checkpoint_method"],
                    "sampler": info["checkpoint_sampler"],
                    "task": task.name,
                    "wall_s": round(time.perf_counter() - cell_started, 1),
                    "train_s": info["train_seconds"],
                    "eval_s": info["eval_seconds"],
                    "train_cpu_s": info["train_cpu_seconds"],
                    "total_cpu_s": info["total_cpu_seconds"],
                    "iterations": info["iterations"],
                    "s_per_iter": round(info["train_seconds"] / max(1, info["iterations"]), 3),
                    "cpu_s_per_iter": round(info["train_cpu_seconds"] / max(1, info["iterations"]), 3),
                    "metrics": {name: round(metric.mean, 2) for name, metric in output.metrics.items()},
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    total = {
        "embedded_encoders_s": round(setup_seconds, 1),
        "build_digits_coco_s": round(build_seconds, 1),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "total_cpu_s_main_process": round(time.process_time() - cpu_started, 1),
    }
    print(json.dumps(total))
    print("\n| model | task | wall s | cpu s | s/iter | bbox AP | segm AP | keypoints AP |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        metric = row["metrics"]
        print(f"| {row['method']}/{row['sampler']} | {row['task']} | {row['wall_s']} | {row['total_cpu_s']} | {row['s_per_iter']} | "
              f"{metric.get('bbox/AP', '-')} | {metric.get('segm/AP', '-')} | {metric.get('keypoints/AP', '-')} |")
    if args.json:
        args.json.write_text(json.dumps({"cells": rows, "total": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
