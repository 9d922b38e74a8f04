"""Benchmark: the dataset fingerprint of a 100,000-file ImageFolder, cold and from the cache.

    python -m benchmarks.fingerprint [--files 100000] [--classes 1000] [--folder /tmp/rb_perf_fingerprint]

Writes an ImageFolder (<folder>/imagenet/{train,val}/<class>/<image>, 90% train, 10% val, small
files of varied size), then times in this process: the cold fingerprint (every file listed and
stat'ed, nothing in the fingerprint cache; the file system's own metadata cache is warm from the
synthesis) and the cached one as a new planning process sees it (the cache file in
$RINGBENCH_CACHE read, one stat per folder). Wall and process CPU seconds are both reported; on
a loaded machine trust the CPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def synthesise(root: Path, files: int, classes: int) -> Path:
    folder = root / "imagenet"
    for index in range(files):
        split = "val" if index % 10 == 9 else "train"
        class_dir = folder / split / f"n{index % classes:08d}"
        if index < classes * 2:
            class_dir.mkdir(parents=True, exist_ok=True)
        (class_dir / f"img{index:07d}.JPEG").write_bytes(b"\xff" * (index % 97))
    return folder


def timed(call) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fingerprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/rb_perf_fingerprint"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.folder, ignore_errors=True)
    started = time.perf_counter()
    folder = synthesise(args.folder, args.files, args.classes)
    synth = time.perf_counter() - started
    os.environ["RINGBENCH_CACHE"] = tempfile.mkdtemp(prefix="rb_perf_fingerprint_cache_")
    import bench.fingerprint as fingerprint

    cold_wall, cold_cpu, cold = timed(lambda: fingerprint.image_folder_fingerprint("imagenet", folder))
    fingerprint._MEMORY.clear()  # as a new planning process: only the cache file is known
    cached_wall, cached_cpu, cached = timed(lambda: fingerprint.image_folder_fingerprint("imagenet", folder))
    assert cached == cold, (cached, cold)
    print(json.dumps({"files": cold.files, "classes": args.classes, "synthesis_s": round(synth, 2),
                      "cold_s": round(cold_wall, 3), "cold_cpu_s": round(cold_cpu, 3),
                      "cached_s": round(cached_wall, 4), "cached_cpu_s": round(cached_cpu, 4),
                      "fingerprint": cold.label, "load_avg_1min": os.getloadavg()[0]}, indent=1))
    shutil.rmtree(os.environ["RINGBENCH_CACHE"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
