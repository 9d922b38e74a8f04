"""Benchmark: one full IR training step with `ring` vs `nce` negatives (a benchmark, not a test).

    python -m benchmarks.train_step [--batch 128] [--bank 50000] [--image-size 32] [--repeats 5]

The step is what the training loop does: forward through ResNet-18 (CIFAR stem at 32 px), negative
selection from a 50,000-entry memory bank (K = 4096), the loss, backward, the SGD step and the
bank update. Steps alternate between the two samplers so that outside load hits both alike.
Target: median ring step <= 1.10 x median nce step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(sampler: str, bank: int, w_out: float):
    from pretrain.methods import MethodSettings, build_method
    from pretrain.samplers import build_sampler_from

    settings = MethodSettings(arch="resnet18", stem="cifar", num_negatives=4096)
    negatives = build_sampler_from(sampler, {"w_out": w_out, "w_in": 0.1, "anneal": "constant"})
    method = build_method("ir", settings, negatives, bank)
    optimizer = torch.optim.SGD(method.encoder.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    return method, optimizer


def step(method, optimizer, images, index, generator) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step; CPU time is steadier on a shared machine."""
    started, started_cpu = time.perf_counter(), time.process_time()
    loss = method.loss([images], index, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step()
    return time.perf_counter() - started, time.process_time() - started_cpu


def benchmark(batch: int, bank: int, image_size: int, repeats: int, w_out: float) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    runs = {name: build(name, bank, w_out) for name in ("nce", "ring")}
    times = {name: [] for name in runs}
    cpu_times = {name: [] for name in runs}
    for repeat in range(repeats + 1):
        images = torch.randn(batch, 3, image_size, image_size)
        index = torch.randperm(bank)[:batch]
        for name, (method, optimizer) in runs.items():
            elapsed, cpu = step(method, optimizer, images, index, generator)
            if repeat > 0:  # the first step warms up allocators and kernels
                times[name].append(elapsed)
                cpu_times[name].append(cpu)
    nce, ring = statistics.median(times["nce"]), statistics.median(times["ring"])
    nce_cpu, ring_cpu = statistics.median(cpu_times["nce"]), statistics.median(cpu_times["ring"])
    return {"batch": batch, "bank": bank, "image_size": image_size, "repeats": repeats, "w_out": w_out,
            "threads": torch.get_num_threads(), "nce_step_s": round(nce, 3), "ring_step_s": round(ring, 3),
            "ratio": round(ring / nce, 3), "nce_step_cpu_s": round(nce_cpu, 3), "ring_step_cpu_s": round(ring_cpu, 3),
            "cpu_ratio": round(ring_cpu / nce_cpu, 3), "nce_all_s": [round(t, 3) for t in times["nce"]],
            "ring_all_s": [round(t, 3) for t in times["ring"]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bank", type=int, default=50000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--w-out", type=float, default=0.1, help="ring outer cut (0.1 = released ring; 1.0 = anneal start)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = benchmark(args.batch, args.bank, args.image_size, args.repeats, args.w_out)
    print(f"wall: nce step {results['nce_step_s']:.3f} s, ring step {results['ring_step_s']:.3f} s, "
          f"ratio {results['ratio']:.3f} | CPU: nce {results['nce_step_cpu_s']:.3f} s, ring "
          f"{results['ring_step_cpu_s']:.3f} s, ratio {results['cpu_ratio']:.3f} (target <= 1.10)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
