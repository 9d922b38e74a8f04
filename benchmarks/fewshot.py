"""Benchmark: Meta-Dataset few-shot evaluation with cached features vs per-episode re-embedding.

    python -m benchmarks.fewshot [--episodes 600] [--reembed-episodes 10] [--checkpoint PATH]

On the embedded digits source (TEST split, variable way/shot), it times
  1. one feature-extraction pass over the images the episodes use (records read, decoded, embedded),
  2. the probes over all episodes on those cached features (NCC, logistic regression), per episode,
  3. per-episode re-embedding (read, decode and embed each episode's support and query, as
     per-episode pipelines do) on a few episodes, extrapolated to all of them.
Targets: (extraction + probes) <= 1.3 x extraction; re-embedding >= 10x slower than that;
NCC < 5 ms and logistic regression < 50 ms per episode on a 2-core CPU.
The checkpoint defaults to the cached embedded NCE encoder, else a random ResNet-18 (same cost).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def pick_checkpoint(path: str | None, scratch: Path) -> Path:
    if path:
        return Path(path)
    from pretrain.embedded import cached_encoders

    cached = cached_encoders()
    if cached:
        return cached[0]
    import torch

    from pretrain.backbones import build_backbone
    from pretrain.checkpoint import save_encoder, untrained_metadata

    torch.manual_seed(0)
    metadata = untrained_metadata(arch="resnet18", stem="imagenet", image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                                  sampler="nce")
    return save_encoder(scratch / "random.pt", build_backbone("resnet18", "imagenet"), metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--reembed-episodes", type=int, default=10)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from pretrain.checkpoint import load_encoder
    from transfer.features import FeatureCache, extract_features
    from transfer.meta_dataset.embedded import EMBEDDED_SOURCE, embedded_records
    from transfer.meta_dataset.episodes import draw_episodes
    from transfer.meta_dataset.evaluate import episode_rows, image_batches, source_features
    from transfer.meta_dataset.probes import evaluate_probes
    from transfer.meta_dataset.spec import load_spec

    scratch = Path(tempfile.mkdtemp(prefix="rb_perf_fewshot_"))
    spec = load_spec(embedded_records() / EMBEDDED_SOURCE)
    encoder = load_encoder(pick_checkpoint(args.checkpoint, scratch))
    size = int(encoder.metadata["image_size"])
    episodes = draw_episodes(spec, "TEST", "variable", args.episodes, seed=0)
    images = episodes.used_images()
    print(f"checkpoint {encoder.path} ({encoder.metadata['arch']}, {size} px), {args.episodes} episodes, "
          f"{len(images)} distinct images, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    source_features(encoder, spec, images[:8], size, FeatureCache(scratch / "warm"), "cpu")  # TF/torch warm-up
    cache = FeatureCache(scratch / "cache")
    start = time.perf_counter()
    table = source_features(encoder, spec, images, size, cache, "cpu", args.batch_size)
    extract_s = time.perf_counter() - start

    start = time.perf_counter()
    table = source_features(encoder, spec, images, size, cache, "cpu", args.batch_size)
    load_s = time.perf_counter() - start
    assert table.cached
    rows = episode_rows(episodes, table)
    timings = {}
    for probe in ("ncc", "logreg"):
        start = time.perf_counter()
        accuracy = evaluate_probes(table.features, rows, (probe,))[probe]
        timings[probe] = time.perf_counter() - start
        print(f"{probe:7s} {timings[probe]:7.2f} s for {len(rows)} episodes = {1000 * timings[probe] / len(rows):6.2f} ms/episode"
              f"  (accuracy {100 * accuracy.mean():.2f}%)")
    cached_total = load_s + timings["ncc"] + timings["logreg"]

    # per-episode pipelines: read, decode and embed every support and query image of each episode
    count = min(args.reembed_episodes, len(episodes.episodes))
    start = time.perf_counter()
    for episode in episodes.episodes[:count]:
        pairs = sorted((c, r) for c, s, q in zip(episode.classes, episode.support, episode.query) for r in s + q)
        meta = encoder.metadata
        batches = image_batches(spec, pairs, size, meta["mean"], meta["std"], args.batch_size)
        extract_features(encoder.model, batches, "cpu", desc="episode")
    reembed_s = (time.perf_counter() - start) / count * len(episodes.episodes)

    print(f"feature extraction pass ({len(images)} images): {extract_s:.2f} s")
    print(f"cached: load {load_s:.2f} s + NCC {timings['ncc']:.2f} s + logreg {timings['logreg']:.2f} s = {cached_total:.2f} s")
    print(f"600 episodes on cached features (load + NCC + logreg) = {cached_total / extract_s:.2f} x the pass (target <= 1.3 x)")
    print(f"one pass + all probes = {extract_s + cached_total:.2f} s = {(extract_s + cached_total) / extract_s:.2f} x the pass "
          f"(NCC only: {(extract_s + load_s + timings['ncc']) / extract_s:.2f} x)")
    print(f"re-embedding every episode: {reembed_s:.1f} s (extrapolated from {count} episodes) = "
          f"{reembed_s / (extract_s + cached_total):.1f} x slower than one pass + probes (target >= 10 x)")
    print(f"per episode: NCC {1000 * timings['ncc'] / len(rows):.2f} ms (target < 5), "
          f"logreg {1000 * timings['logreg'] / len(rows):.2f} ms (target < 50)")
    np.save(scratch / "features.npy", table.features)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
