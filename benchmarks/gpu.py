"""The checks only a GPU shows, each next to its anchor from the same run (a benchmark script, not a test).

    python -m benchmarks.gpu [--out DIR] [--only pretrain,ir,ring,features,input,end_to_end,detection] [--no-compile]
    python -m benchmarks.gpu --smoke          # tiny sizes on whatever device there is: checks the script

Each check prints one JSON line (collected in DIR/gpu_checks.json), its figures beside their anchors:
- pretrain: MoCo v2 ResNet-50 step at 224 px, batch 256, queue 65,536, NCE and Ring, bf16 autocast,
  channels_last (what the training loop runs), eager and (unless --no-compile) torch.compiled, vs the
  anchor: a plain channels_last bf16 ResNet-50 cross-entropy train step, eager. Target <= 1.15x.
- ir: IR step against a 1,281,167-entry bank, NCE vs Ring (target ring/nce <= 1.05).
- ring: ring selection over that bank (batch 256, K 4,096), exact and threshold_sample=4,096, vs the
  similarity matmul (target exact <= 1.5x), the official code's way (topk of the outer ball) and a full sort.
- features: `extract_features` from uint8 CPU batches vs the anchor: plain channels_last bf16 inference on
  tensors already on the GPU (target >= 0.9x).
- input: the GPU input path (loader=gpu: workers read bytes, nvJPEG decode, batched augmentation) on a
  synthetic 500 x 375 JPEG folder: two-view images/s and CPU cores used (target >= 10,000 with <= 8 cores).
- end_to_end: MoCo v2 training steps fed from that JPEG folder through the training loop's gpu loader vs the
  same steps fed from tensors already on the GPU (target >= 0.9x).
- detection: a few hundred torchvision Mask R-CNN iterations from a converted ResNet-50 encoder.
Times are medians of CUDA-synchronised repeats after warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

IMAGENET_SIZE = 1_281_167
CHECKS = ("pretrain", "ir", "ring", "features", "input", "end_to_end", "detection")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(function, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _fast(device: torch.device) -> bool:
    return device.type == "cuda"


def _images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    images = torch.randn(batch, 3, size, size, device=device)
    return images.contiguous(memory_format=torch.channels_last) if _fast(device) else images


def plain_train_step(device: torch.device, arch: str, size: int, batch: int, repeats: int) -> dict:
    """The anchor: a torchvision ResNet cross-entropy train step, channels_last, bf16 autocast (on CUDA)."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None).to(device)
    if _fast(device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images, labels = _images(batch, size, device), torch.randint(0, 1000, (batch,), device=device)

    def step():
        with _autocast(device):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _median_seconds(step, device, repeats)
    return {"step_s": round(seconds, 4), "images_per_s": round(batch / seconds, 1)}


def _method_step(method_name: str, sampler: str, device: torch.device, arch: str, size: int, batch: int,
                 pool: int, compile_encoders: bool = False, stem: str = "imagenet"):
    """(step function, its views, warm-up seconds) of a RingBench method as the training loop runs it."""
    from pretrain.methods import MethodSettings, build_method
    from pretrain.samplers import build_sampler_from

    settings = MethodSettings(arch=arch, stem=stem, queue_size=pool)
    negatives = build_sampler_from(sampler, {"w_out": 0.1, "w_in": 0.1, "anneal": "constant"})
    method = build_method(method_name, settings, negatives, pool).to(device)
    if _fast(device):
        method.to(memory_format=torch.channels_last)
    if compile_encoders:
        method.compile_encoders(torch.compile)
    parameters = [p for name in method.trainable_encoders() for p in getattr(method, name).parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.03, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(pool, device=device)[:batch]

    def step(views):
        with _autocast(device):
            loss = method.loss(views, index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step()

    views = [_images(batch, size, device) for _ in range(method.num_views)]
    began = time.perf_counter()
    step(views)
    _sync(device)
    return step, views, time.perf_counter() - began


def pretraining_throughput(device: torch.device, arch: str, size: int, batch: int, queue: int, repeats: int,
                           compile_too: bool) -> dict:
    result = {"check": "pretrain_step", "method": "moco", "arch": arch, "image_size": size, "batch": batch,
              "queue": queue, "precision": "bf16" if _fast(device) else "fp32", "channels_last": _fast(device)}
    anchor = plain_train_step(device, arch, size, batch, repeats)
    result["anchor_plain_step_s"], result["anchor_plain_images_per_s"] = anchor["step_s"], anchor["images_per_s"]
    variants = [("nce", False), ("ring", False)] + ([("ring", True)] if compile_too else [])
    for sampler, compiled in variants:
        label = f"{sampler}_compiled" if compiled else sampler
        step, views, warmup = _method_step("moco", sampler, device, arch, size, batch, queue, compiled)
        seconds = _median_seconds(lambda step=step, views=views: step(views), device, repeats)
        result[f"{label}_step_s"] = round(seconds, 4)
        result[f"{label}_images_per_s"] = round(batch / seconds, 1)
        result[f"{label}_over_plain_step"] = round(seconds / anchor["step_s"], 3)
        if compiled:
            result[f"{label}_warmup_s"] = round(warmup, 1)
        del step, views
    result["ring_over_nce_step"] = round(result["ring_step_s"] / result["nce_step_s"], 3)
    result["target"] = "moco step <= 1.15x the plain step"
    return result


def ir_throughput(device: torch.device, arch: str, size: int, batch: int, bank: int, repeats: int) -> dict:
    result = {"check": "ir_step", "arch": arch, "image_size": size, "batch": batch, "bank": bank}
    for sampler in ("nce", "ring"):
        step, views, _ = _method_step("ir", sampler, device, arch, size, batch, bank)
        seconds = _median_seconds(lambda step=step, views=views: step(views), device, repeats)
        result[f"{sampler}_step_s"] = round(seconds, 4)
        result[f"{sampler}_images_per_s"] = round(batch / seconds, 1)
        del step, views
    result["ring_over_nce_step"] = round(result["ring_step_s"] / result["nce_step_s"], 3)
    result["target"] = "ring/nce <= 1.05"
    return result


def official_topk_band(similarity: torch.Tensor, w_out: float, w_in: float, k: int,
                       generator: torch.Generator | None) -> torch.Tensor:
    """The released code's selection: a sorted topk of the outer ball, its inner part dropped, K drawn."""
    pool = similarity.shape[1]
    upper = math.floor(w_out * pool)
    lower = math.floor(w_in * upper)
    columns = similarity.topk(upper, dim=1, sorted=True).indices[:, lower:]
    draws = torch.randint(0, upper - lower, (similarity.shape[0], k), device=similarity.device, generator=generator)
    return torch.gather(columns, 1, draws)


def ring_selection(device: torch.device, bank_size: int, batch: int, k: int, repeats: int) -> dict:
    from pretrain.samplers import sample_band

    generator = torch.Generator(device=device).manual_seed(0)
    anchors = F.normalize(torch.randn(batch, 128, device=device, generator=generator), dim=1)
    bank = F.normalize(torch.randn(bank_size, 128, device=device, generator=generator), dim=1)
    similarity = anchors @ bank.T
    result = {"check": "ring_selection", "bank": bank_size, "batch": batch, "k": k, "w_out": 0.1, "w_in": 0.1}
    matmul = _median_seconds(lambda: anchors @ bank.T, device, repeats)
    result["anchor_matmul_ms"] = round(1000 * matmul, 3)
    timed = {
        "exact": lambda: sample_band(similarity, 0.1, 0.1, k, generator),
        "threshold_sample_4096": lambda: sample_band(similarity, 0.1, 0.1, k, generator, threshold_sample=4096),
        "anchor_official_topk": lambda: official_topk_band(similarity, 0.1, 0.1, k, generator),
        "anchor_full_sort": lambda: similarity.sort(dim=1, descending=True),
    }
    for label, function in timed.items():
        seconds = _median_seconds(function, device, repeats)
        result[f"{label}_ms"] = round(1000 * seconds, 3)
        result[f"{label}_over_matmul"] = round(seconds / matmul, 3)
    result["target"] = "exact <= 1.5x matmul; threshold_sample < exact"
    return result


def feature_throughput(device: torch.device, arch: str, size: int, images: int, batch: int) -> dict:
    from pretrain.backbones import build_backbone
    from transfer.features import extract_features

    model = build_backbone(arch, "imagenet").to(device).eval()
    if _fast(device):
        model = model.to(memory_format=torch.channels_last)
    on_device = [_images(batch, size, device) for _ in range(max(1, images // batch))]
    pixels = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8) for _ in range(len(on_device))]
    if _fast(device):
        pixels = [chunk.pin_memory() for chunk in pixels]
    count = batch * len(on_device)

    @torch.inference_mode()
    def plain():
        with _autocast(device):
            for chunk in on_device:
                model(chunk)

    plain_s = _median_seconds(plain, device, repeats=3, warmup=1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    extract_s = _median_seconds(lambda: extract_features(model, pixels, device=device, mean=mean, std=std, compile=False),
                                device, repeats=3, warmup=1)
    return {"check": "feature_extraction", "arch": arch, "image_size": size, "images": count, "batch": batch,
            "anchor_plain_inference_images_per_s": round(count / plain_s, 1),
            "extract_features_uint8_images_per_s": round(count / extract_s, 1),
            "extraction_over_plain_throughput": round(plain_s / extract_s, 3), "target": ">= 0.9x plain"}


def input_throughput(device: torch.device, folder: Path, batch: int, workers: int, batches: int, size: int) -> dict:
    from benchmarks.input_pipeline import measure_gpu

    result = measure_gpu(folder, batch, workers, batches, device, size)
    return {"check": "input_pipeline_gpu", **result, "target": ">= 10,000 two-view images/s with <= 8 CPU cores"}


def end_to_end(device: torch.device, folder: Path, arch: str, size: int, batch: int, queue: int, steps: int,
               workers: int, scratch: Path) -> dict:
    """Training steps through the training loop's own loader (loader=gpu from the JPEG folder) vs the
    same step on views already on the device."""
    from pretrain.config import TrainConfig, apply_overrides
    from pretrain.train import Trainer

    config = apply_overrides(TrainConfig(), {
        "method.name": "moco", "sampler.name": "ring", "sampler.w_out": 0.1, "sampler.w_in": 0.1,
        "sampler.anneal": "constant", "method.arch": arch, "method.stem": "imagenet", "method.queue_size": queue,
        "data.name": "imagenet", "data.root": str(folder), "data.image_size": size, "data.workers": workers,
        "optim.batch_size": batch, "optim.epochs": 1, "knn_every": 0, "loader": "gpu", "compile": "off"},
        notice=False).validate()
    trainer = Trainer(config, scratch / "end_to_end", show_progress=False, allow_distributed=False)
    method, optimizer, generator = trainer.method, trainer.optimizer, trainer.generator
    method.train()

    def step(views, index):
        with trainer._autocast():
            loss = method.loss(views, index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step()

    def from_folder(count: int) -> float:
        """Seconds per step in steady state: each pass over the (small) folder restarts the loader's
        workers, so its first two steps are left out, as in an ImageNet epoch of 5,000 steps."""
        timed, seconds = 0, 0.0
        while timed < count:
            for position, batch_items in enumerate(trainer.loader):
                if position == 2:
                    _sync(device)
                    began = time.perf_counter()
                views, index = trainer.batch_views(batch_items)
                step(views, index)
                if position >= 2:
                    timed += 1
                if timed >= count:
                    break
            if len(trainer.loader) > 2:
                _sync(device)
                seconds += time.perf_counter() - began
            elif timed == 0:
                raise ValueError(f"{folder}: too few images for {batch}-image batches past the warm-up")
        return seconds / timed

    folder_s = from_folder(steps)
    views = [_images(batch // trainer.world, size, device) for _ in range(method.num_views)]
    index = torch.arange(views[0].shape[0], device=device)
    tensors_s = _median_seconds(lambda: step(views, index), device, repeats=steps)
    return {"check": "end_to_end", "arch": arch, "image_size": size, "batch": batch, "workers": workers,
            "from_jpeg_folder_step_s": round(folder_s, 4), "anchor_from_gpu_tensors_step_s": round(tensors_s, 4),
            "folder_over_tensors_throughput": round(tensors_s / folder_s, 3), "target": ">= 0.9x"}


def mask_rcnn_iterations(iterations: int, scratch: Path) -> dict:
    from bench.suite import Cell, Task
    from bench.suites.coco_det import CocoDetSuite
    from pretrain.backbones import build_backbone
    from pretrain.checkpoint import save_encoder, untrained_metadata

    torch.manual_seed(0)
    encoder = save_encoder(scratch / "resnet50_random.pt", build_backbone("resnet50", "imagenet"), untrained_metadata(
        arch="resnet50", stem="imagenet", image_size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    suite = CocoDetSuite()
    options = dict(suite.options) | {"tasks": "mask_rcnn", "max_iter": iterations}
    settings = suite.parse_options(options)
    suite.check(settings, None, [encoder])
    shared = scratch / "shared"
    suite.prepare(settings, None, shared)
    task = suite.tasks(settings, None)[0]
    cell = Cell(suite.name, Task(task.name, task.params, task.profile), encoder, 0, options, None, shared, settings)
    started = time.perf_counter()
    output = suite.run(cell, scratch / "cell")
    info = output.info
    return {"check": "mask_rcnn_iterations", "arch": "resnet50", "iterations": info.get("iterations"),
            "wall_s": round(time.perf_counter() - started, 1), "train_s": info.get("train_seconds"),
            "s_per_iteration": round(info["train_seconds"] / max(1, info["iterations"]), 4),
            "engine": info.get("engine"), "metrics": {k: round(v.mean, 2) for k, v in output.metrics.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for gpu_checks.json")
    parser.add_argument("--only", default=",".join(CHECKS), help="comma list of checks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the GPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (its warm-up is minutes)")
    parser.add_argument("--folder", type=Path, help="synthetic JPEG folder for input / end_to_end (default: a cache folder)")
    parser.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))),
                        help="loader workers for input / end_to_end")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA device: these checks need a GPU (use --smoke to exercise the script on CPU)")
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - set(CHECKS)
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; valid: {', '.join(CHECKS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    small = args.smoke
    arch, size = ("resnet18", 32) if small else ("resnet50", 224)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "smoke": small, "checks": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def record(result: dict) -> None:
        results["checks"].append(result)
        print(json.dumps(result), flush=True)
        (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))  # kept if a later check dies

    folder = None
    if chosen & {"input", "end_to_end"}:
        from benchmarks.input_pipeline import build_folder

        cache = Path(os.environ.get("RINGBENCH_CACHE", Path(tempfile.gettempdir()) / "ringbench"))
        folder = args.folder or cache / ("bench_input_pipeline_smoke" if small else "bench_input_pipeline") / "imagenet"
        build_folder(folder, 24 if small else 2000, scale=0.15 if small else 1.0)
    workers = 0 if small else args.workers
    if "pretrain" in chosen:
        record(pretraining_throughput(device, arch, size, 8 if small else 256, 64 if small else 65_536,
                                      2 if small else 10, compile_too=not args.no_compile and not small))
    if "ir" in chosen:
        record(ir_throughput(device, arch, size, 8 if small else 256, 4096 if small else IMAGENET_SIZE, 2 if small else 10))
    if "ring" in chosen:
        record(ring_selection(device, 4096 if small else IMAGENET_SIZE, 8 if small else 256, 64 if small else 4096,
                              2 if small else 10))
    if "features" in chosen:
        record(feature_throughput(device, arch, size, 16 if small else 8192, 8 if small else 512))
    if "input" in chosen:
        record(input_throughput(device, folder, 8 if small else 256, workers, 2 if small else 20, size))
    if "end_to_end" in chosen:
        with tempfile.TemporaryDirectory(prefix="rb_gpu_e2e_") as scratch:
            record(end_to_end(device, folder, arch, size, 8 if small else 256, 64 if small else 65_536,
                              2 if small else 20, workers, Path(scratch)))
    if "detection" in chosen:
        with tempfile.TemporaryDirectory(prefix="rb_gpu_det_") as scratch:
            record(mask_rcnn_iterations(2 if small else 300, Path(scratch)))
    (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
