"""Benchmark: ring negative selection vs the similarity matmul it follows (a benchmark, not a test).

    python -m benchmarks.ring_selection [--pool 65536] [--dim 128] [--batch 256] [--k 4096] [--repeats 7]

Times, on CPU by default, (a) the anchor x pool similarity matmul and (b) ring selection on its
result: K uniform draws per anchor inside the ring (`sample_band`, what the memory-bank sampler
runs), with the thresholds found two ways: exact (partial selection, never a full sort) and sampled
(quantiles of 1,024 random pool columns; `Ring.bank_indices(..., threshold_sample=1024)`). Target: (b) <= 1.5 x (a). Reports
medians of interleaved repeats (interleaving keeps load from other processes from favouring one side).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F


def _timed(function) -> float:
    started = time.process_time() if CPU_CLOCK else time.perf_counter()
    function()
    return (time.process_time() if CPU_CLOCK else time.perf_counter()) - started


CPU_CLOCK = False  # --cpu-clock: process CPU time, steadier than wall time on a shared machine


def benchmark(pool: int, dim: int, batch: int, k: int, repeats: int, bands, device: str = "cpu") -> dict:
    from pretrain.samplers import build_sampler, sample_band

    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    bank = F.normalize(torch.randn(pool, dim, generator=generator), dim=1).to(device)
    similarity = anchors @ bank.T
    draw = torch.Generator(device=device).manual_seed(1)

    def select(w_out, w_in):
        return sample_band(similarity, w_out, w_in, k, draw)

    def select_sampled(w_out, w_in):
        sampler = build_sampler("ring", w_out=w_out, w_in=w_in, anneal="constant")
        sampler._warned_small_band = True
        return sampler.bank_indices(anchors, bank, k, draw, similarity=similarity, threshold_sample=1024)

    def matmul():
        return anchors @ bank.T

    results = {"clock": "process CPU" if CPU_CLOCK else "wall", "pool": pool, "dim": dim, "batch": batch, "k": k, "repeats": repeats, "device": device,
               "threads": torch.get_num_threads(), "bands": []}
    for w_out, w_in in bands:
        select(w_out, w_in), select_sampled(w_out, w_in), matmul()  # warm-up
        matmul_times, exact_times, sampled_times = [], [], []
        for _ in range(repeats):
            matmul_times.append(_timed(matmul))
            exact_times.append(_timed(lambda w_out=w_out, w_in=w_in: select(w_out, w_in)))
            sampled_times.append(_timed(lambda w_out=w_out, w_in=w_in: select_sampled(w_out, w_in)))
        m = statistics.median(matmul_times)
        e, s = statistics.median(exact_times), statistics.median(sampled_times)
        results["bands"].append({"w_out": w_out, "w_in": w_in, "matmul_ms": round(1000 * m, 2),
                                 "exact_ms": round(1000 * e, 2), "exact_ratio": round(e / m, 3),
                                 "sampled_ms": round(1000 * s, 2), "sampled_ratio": round(s / m, 3)})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-clock", action="store_true", help="time with process CPU time instead of wall time")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    global CPU_CLOCK
    CPU_CLOCK = args.cpu_clock
    bands = [(0.1, 0.1), (0.5, 0.1), (1.0, 0.1)]  # released ring, mid-anneal, anneal start
    results = benchmark(args.pool, args.dim, args.batch, args.k, args.repeats, bands, args.device)
    for band in results["bands"]:
        print(f"w_out={band['w_out']:<4} w_in={band['w_in']:<4} matmul {band['matmul_ms']:8.2f} ms | "
              f"exact {band['exact_ms']:8.2f} ms ratio {band['exact_ratio']:.2f} | "
              f"sampled {band['sampled_ms']:8.2f} ms ratio {band['sampled_ratio']:.2f} (target <= 1.5)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
