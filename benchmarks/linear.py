"""Benchmark of the linear suite's protocols on the embedded digits (a benchmark, not a test).

    python -m benchmarks.linear                       # the embedded NCE/Ring pair, paper protocol 100 epochs
    python -m benchmarks.linear --paper-epochs 20 --checkpoints a.pt,b.pt --json out.json

Per checkpoint it measures
  - one feature-extraction pass: train + test split through the frozen encoder, no cache;
  - the fast protocol from an empty cache (extraction + L-BFGS + kNN) and its ratio to that pass
    (target <= 1.3);
  - the paper protocol: time per epoch split into waiting for augmented batches, encoder forward
    passes and the linear step, and the forward share of the epoch;
  - top-1 of both protocols and kNN, and the paired Ring-vs-NCE difference (McNemar, bootstrap).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def benchmark_checkpoint(path: Path, paper_epochs: int, device: str | None, workers: int, repeats: int) -> dict:
    import numpy as np

    from pretrain.checkpoint import load_encoder
    from transfer.features import FeatureCache
    from transfer.linear.evaluate import evaluate_encoder
    from transfer.linear.protocol import PaperRecipe, compute_features, open_linear_split

    encoder = load_encoder(path)
    size = int(encoder.metadata["image_size"])
    train = open_linear_split("digits", None, "train", size)
    test = open_linear_split("digits", None, "test", size)
    common = dict(dataset_name="digits", num_classes=10, device=device, workers=workers, source="embedded")
    compute_features(encoder, test, device, workers=workers)  # warm-up (first-call allocations)

    # alternate the two measurements so load changes on a shared machine hit both alike
    # CPU seconds of this process too: on a shared machine they move less than wall time
    extraction, fast_total, extraction_cpu, fast_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as cache_dir:
        for repeat in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            compute_features(encoder, train, device, workers=workers)
            compute_features(encoder, test, device, workers=workers)
            extraction.append(time.perf_counter() - start)
            extraction_cpu.append(time.process_time() - start_cpu)
            start, start_cpu = time.perf_counter(), time.process_time()
            fast = evaluate_encoder(encoder, train, test, cache=FeatureCache(Path(cache_dir) / str(repeat)),
                                    protocol="fast", **common)
            fast_total.append(time.perf_counter() - start)
            fast_cpu.append(time.process_time() - start_cpu)
        paper = None
        if paper_epochs > 0:  # reads the test features from the cache the fast run filled
            start = time.perf_counter()
            paper = evaluate_encoder(encoder, train, test, cache=FeatureCache(Path(cache_dir) / "0"),
                                     protocol="paper", paper=PaperRecipe(epochs=paper_epochs), knn=None, **common)
            paper_total_s = time.perf_counter() - start
    ratios = np.array(fast_total) / np.array(extraction)
    row = {
        "checkpoint": str(path),
        "method": encoder.metadata["method"],
        "sampler": encoder.metadata["sampler"],
        "arch": encoder.metadata["arch"],
        "stem": encoder.metadata["stem"],
        "image_size": size,
        "n_train": len(train),
        "n_test": len(test),
        "repeats": repeats,
        "extraction_pass_s": float(np.median(extraction)),
        "extraction_images_per_s": (len(train) + len(test)) / float(np.median(extraction)),
        "fast_total_s": float(np.median(fast_total)),
        "fast_over_extraction": float(np.median(ratios)),
        "fast_over_extraction_all": [round(float(r), 3) for r in ratios],
        "fast_over_extraction_cpu": float(np.median(np.array(fast_cpu) / np.array(extraction_cpu))),
        "fast_timings": fast.info["timings"],
        "lbfgs_evaluations": fast.info["fast"]["lbfgs_evaluations"],
        "top1_fast": fast.linear_top1,
        "top1_knn": fast.knn_top1,
        "_correct": {"fast": fast.linear_correct, "knn": fast.knn_correct},
    }
    if paper is not None:
        timings = paper.info["timings"]
        epoch_s = (timings["paper_data_s"] + timings["paper_forward_s"] + timings["paper_linear_s"]) / paper_epochs
        row |= {
            "paper_epochs": paper_epochs,
            "paper_total_s": paper_total_s,
            "paper_epoch_s": epoch_s,
            "paper_epoch_over_train_pass": epoch_s / fast.info["timings"]["features_train_s"],
            "paper_share_forward": timings["paper_forward_s"] / (epoch_s * paper_epochs),
            "paper_share_data": timings["paper_data_s"] / (epoch_s * paper_epochs),
            "paper_share_linear": timings["paper_linear_s"] / (epoch_s * paper_epochs),
            "top1_paper": paper.linear_top1,
            "paper_minus_fast": paper.linear_top1 - fast.linear_top1,
        }
        row["_correct"]["paper"] = paper.linear_correct
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.linear", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="", help="comma list (default: the embedded NCE and Ring pair)")
    parser.add_argument("--paper-epochs", type=int, default=100, help="paper protocol epochs (the paper: 100; 0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="fast-protocol and extraction timings (median)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from transfer.linear.paired import paired_difference

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoints:
        paths = [Path(p) for p in args.checkpoints.split(",") if p]
    else:
        from pretrain.embedded import default_encoders

        paths = [Path(p) for p in default_encoders()]
    rows = []
    for path in paths:
        row = benchmark_checkpoint(path, args.paper_epochs, args.device, args.workers, args.repeats)
        rows.append(row)
        line = (f"{row['sampler']:>5} {row['method']}: extraction pass {row['extraction_pass_s']:.2f}s "
                f"({row['extraction_images_per_s']:.0f} img/s), fast total {row['fast_total_s']:.2f}s "
                f"(x{row['fast_over_extraction']:.2f} median of {row['fast_over_extraction_all']}; "
                f"CPU time x{row['fast_over_extraction_cpu']:.2f}); "
                f"top-1 fast {row['top1_fast']:.2f}, kNN {row['top1_knn']:.2f}")
        if "paper_epochs" in row:
            line += (f"; paper {row['paper_epochs']} ep {row['paper_total_s']:.1f}s, epoch {row['paper_epoch_s']:.2f}s = "
                     f"x{row['paper_epoch_over_train_pass']:.2f} of a train pass, forward {row['paper_share_forward']:.0%}"
                     f" / data {row['paper_share_data']:.0%} / linear {row['paper_share_linear']:.1%}; top-1 paper "
                     f"{row['top1_paper']:.2f} (paper-fast {row['paper_minus_fast']:+.2f})")
        print(line, flush=True)
    comparisons = {}
    by_sampler = {row["sampler"]: row for row in rows}
    if "ring" in by_sampler and "nce" in by_sampler:
        for metric in by_sampler["ring"]["_correct"]:
            diff = paired_difference(by_sampler["ring"]["_correct"][metric], by_sampler["nce"]["_correct"][metric])
            comparisons[metric] = diff.__dict__
            print(f"ring - nce ({metric}): {diff.delta:+.2f} points, 95% CI [{diff.ci95_low:+.2f}, "
                  f"{diff.ci95_high:+.2f}], discordant {diff.only_a_right}/{diff.only_b_right}, McNemar p {diff.p_value:.3g}")
    report = {"threads": torch.get_num_threads(), "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
              "rows": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
              "ring_minus_nce": comparisons}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
