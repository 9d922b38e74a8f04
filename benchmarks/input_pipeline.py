"""Benchmark: two-view MoCo v2 input pipelines per CPU core (a benchmark, not a test).

    python -m benchmarks.input_pipeline [--images 2000] [--measure 300] [--folder DIR] [--json FILE]

Builds (once, then reuses) a synthetic ImageNet-like JPEG folder: `--images` pictures of about
500 x 375 (sizes vary like ImageNet's), quality 90, smooth colour fields with edges and texture.
Then, in one process on one thread, alternating chunks of images so that outside load hits every
pipeline alike, it measures process CPU seconds per image for:
  standard   torchvision's PIL pipeline (`pretrain.data.pretrain_transform`: decode, RandomResizedCrop,
             ColorJitter p 0.8, RandomGrayscale p 0.2, GaussianBlur p 0.5, flip, ToTensor, Normalize), x2 views
  cpu_stage  RingBench's CPU path as it runs when a GPU holds the colour step: decode (JPEG draft when
             the crops allow), crop, resize and flip on uint8 (`pretrain.augment.crop_flip_views`), x2 views
  cpu_all    the same plus the colour step batched on the CPU (what a GPU-less machine would run)
and reports images/s per core (1 / CPU seconds per image) with each ratio to `standard`.
On a CUDA machine it also runs the GPU path (DataLoader workers reading bytes, nvJPEG decode and
batched augmentation on the device) and reports its images/s and the CPU cores it kept busy.
Target: cpu_stage >= 2 x standard per core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_LIKE_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (450, 350), (500, 500))


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like picture: smooth colour gradients, a few hard-edged shapes and fine texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., channel] = 127 + 80 * np.sin(fx * x / width * 6.3 + phase) * np.cos(fy * y / height * 6.3)
    for _ in range(6):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 120)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def build_folder(folder: Path, count: int, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """`count` JPEGs (quality 90) in folder/train/synthetic/, made once and reused; `scale` shrinks
    the sizes (tests)."""
    target = folder / "train" / "synthetic"
    files = sorted(target.glob("*.JPEG")) if target.is_dir() else []
    if len(files) >= count:
        return files[:count]
    target.mkdir(parents=True, exist_ok=True)
    jobs = [(target, number, seed, scale) for number in range(count)]
    processes = min(16, len(os.sched_getaffinity(0)))
    if processes > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            pool.map(_write_image, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_image(job)
    return sorted(target.glob("*.JPEG"))[:count]


def _write_image(job) -> None:
    target, number, seed, scale = job
    rng = np.random.default_rng([seed, number])
    width, height = IMAGENET_LIKE_SIZES[number % len(IMAGENET_LIKE_SIZES)]
    width, height = max(8, int(width * scale)), max(8, int(height * scale))
    synthetic_image(rng, width, height).save(target / f"img_{number:05d}.JPEG", quality=90)


def cpu_pipelines(files: list[Path], size: int = 224):
    """name -> function(list of files) running that pipeline's CPU work for two views of each."""
    from pretrain.augment import AugmentLaws, BatchColourAugment, crop_flip_views
    from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, pretrain_transform

    standard = pretrain_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    laws = AugmentLaws.recipe(size)
    colour = BatchColourAugment(laws, IMAGENET_MEAN, IMAGENET_STD)

    def run_standard(chunk):
        for path in chunk:
            with open(path, "rb") as handle:
                image = Image.open(handle).convert("RGB")
            standard(image), standard(image)

    def stage(chunk):
        return torch.cat([crop_flip_views(Image.open(path), laws, 2) for path in chunk])

    def run_all(chunk):
        colour(stage(chunk))

    return {"standard": run_standard, "cpu_stage": stage, "cpu_all": run_all}


def measure_cpu(files: list[Path], measure: int, chunk: int = 25) -> dict:
    pipelines = cpu_pipelines(files)
    seconds = {name: [] for name in pipelines}
    for function in pipelines.values():  # warm-up
        function(files[:4])
    for start in range(0, measure, chunk):
        part = files[start:start + chunk]
        for name, function in pipelines.items():
            began = time.process_time()
            function(part)
            seconds[name].append((time.process_time() - began) / len(part))
    per_core = {name: 1.0 / statistics.median(values) for name, values in seconds.items()}
    return {name: {"images_per_s_per_core": round(rate, 1), "over_standard": round(rate / per_core["standard"], 2)}
            for name, rate in per_core.items()}


def measure_gpu(folder: Path, batch: int, workers: int, batches: int, device: torch.device | str = "cuda",
                size: int = 224) -> dict:
    """The GPU path end to end: DataLoader workers read file bytes, `device` decodes and augments two
    views per image. Returns two-view images/s (wall) and the CPU cores kept busy (this process and its
    workers, CPU seconds over wall seconds)."""
    from torch.utils.data import DataLoader

    from pretrain.augment import AugmentLaws, DeviceViewPipeline
    from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, EncodedImages, collate_encoded, open_dataset

    device = torch.device(device)
    images = open_dataset("imagenet", folder, "train")
    pipeline = DeviceViewPipeline(AugmentLaws.recipe(size), IMAGENET_MEAN, IMAGENET_STD)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loader = DataLoader(EncodedImages(images), batch_size=batch, shuffle=True, num_workers=workers,
                        collate_fn=collate_encoded, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0)  # a small folder is read several times: no restarts
    for items, _ in loader:  # warm-up: decoder handles, kernels
        pipeline(items, device)
        break
    sync()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    began, done = time.perf_counter(), 0
    while done < batches * batch:
        for items, _ in loader:
            pipeline(items, device)
            done += len(items)
            if done >= batches * batch:
                break
    sync()
    wall = time.perf_counter() - began
    del loader  # workers exit, so their CPU time is counted
    own_after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, field) - getattr(before, field)
              for before, after in ((own, own_after), (children, children_after)) for field in ("ru_utime", "ru_stime"))
    return {"images_per_s": round(done / wall, 1), "cpu_cores_used": round(cpu / wall, 2), "batch": batch,
            "workers": workers, "images": done, "device": str(device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images in the synthetic folder")
    parser.add_argument("--measure", type=int, default=300, help="images timed per CPU pipeline")
    parser.add_argument("--folder", type=Path, help="where the synthetic folder lives (default: a cache folder)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-workers", type=int, default=min(8, len(os.sched_getaffinity(0))))
    parser.add_argument("--gpu-batches", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("RINGBENCH_CACHE", Path(tempfile.gettempdir()) / "ringbench"))
    folder = args.folder or cache / "bench_input_pipeline" / "imagenet"
    started = time.perf_counter()
    files = build_folder(folder, args.images)
    results = {"folder": str(folder), "images": len(files), "folder_seconds": round(time.perf_counter() - started, 1),
               "clock": "process CPU time, one thread", "measured_images": min(args.measure, len(files))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results["cpu"] = measure_cpu(files, min(args.measure, len(files)))
    finally:
        torch.set_num_threads(threads)
    for name, row in results["cpu"].items():
        print(f"{name:10s} {row['images_per_s_per_core']:7.1f} two-view images/s per core "
              f"({row['over_standard']:.2f}x standard)")
    if torch.cuda.is_available():
        results["gpu"] = measure_gpu(folder, args.gpu_batch, args.gpu_workers, args.gpu_batches, "cuda")
        gpu = results["gpu"]
        print(f"gpu path   {gpu['images_per_s']:7.1f} two-view images/s with {gpu['cpu_cores_used']:.2f} CPU cores "
              f"busy ({gpu['workers']} loader workers, batch {gpu['batch']})")
    else:
        print("gpu path   skipped: no CUDA device")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
