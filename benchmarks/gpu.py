"""The checks only a GPU shows, in one run (a benchmark script, not a test).

    python -m benchmarks.gpu [--out DIR] [--only pretrain,ring,features,detection]
    python -m benchmarks.gpu --smoke          # tiny sizes on whatever device there is: checks the script

In this order, each printed as one JSON line and collected in DIR/gpu_checks.json:
1. pretraining images/s, MoCo v2 ResNet-50 at 224 px under bf16 autocast (queue 65,536), NCE vs Ring;
2. ring selection against a 1,281,167-entry bank (ImageNet's size) vs the similarity matmul it follows;
3. feature extraction images/s (transfer.features.extract_features) vs the encoder's plain bf16 inference;
4. a few hundred torchvision Mask R-CNN iterations from a converted ResNet-50 encoder, on the embedded
   digits COCO set (speed and a sanity AP, not a benchmark number).
Times are medians of CUDA-synchronised repeats after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

IMAGENET_SIZE = 1_281_167


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


def pretraining_throughput(device: torch.device, arch: str, size: int, batch: int, queue: int, repeats: int) -> dict:
    from pretrain.methods import MethodSettings, build_method
    from pretrain.samplers import build_sampler

    result = {"check": "pretrain_images_per_s", "method": "moco", "arch": arch, "image_size": size, "batch": batch,
              "queue": queue, "precision": "bf16" if device.type == "cuda" else "fp32"}
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
    index = torch.arange(batch, device=device)
    samplers = {"nce": build_sampler("nce"), "ring": build_sampler("ring", w_out=0.1, w_in=0.1, anneal="constant")}
    for sampler, negatives in samplers.items():
        settings = MethodSettings(arch=arch, stem="imagenet", queue_size=queue)
        method = build_method("moco", settings, negatives, batch).to(device)
        parameters = [p for name in method.trainable_encoders() for p in getattr(method, name).parameters()]
        optimizer = torch.optim.SGD(parameters, lr=0.03, momentum=0.9, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(0)

        def step(method=method, optimizer=optimizer, generator=generator):
            with _autocast(device):
                loss = method.loss(views, index, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step()

        seconds = _median_seconds(step, device, repeats)
        result[f"{sampler}_step_s"] = round(seconds, 4)
        result[f"{sampler}_images_per_s"] = round(batch / seconds, 1)
        del method, optimizer
    result["ring_over_nce_step"] = round(result["ring_step_s"] / result["nce_step_s"], 3)
    return result


def ring_selection(device: torch.device, bank_size: int, batch: int, k: int, repeats: int) -> dict:
    from pretrain.samplers import sample_band

    generator = torch.Generator(device=device).manual_seed(0)
    anchors = F.normalize(torch.randn(batch, 128, device=device, generator=generator), dim=1)
    bank = F.normalize(torch.randn(bank_size, 128, device=device, generator=generator), dim=1)
    similarity = anchors @ bank.T
    result = {"check": "ring_selection", "bank": bank_size, "batch": batch, "k": k}
    result["matmul_ms"] = round(1000 * _median_seconds(lambda: anchors @ bank.T, device, repeats), 3)
    for label, sample in (("exact", 0), ("sampled_4096", 4096)):
        seconds = _median_seconds(
            lambda sample=sample: sample_band(similarity, 0.1, 0.1, k, generator, threshold_sample=sample), device, repeats)
        result[f"{label}_ms"] = round(1000 * seconds, 3)
        result[f"{label}_over_matmul"] = round(1000 * seconds / result["matmul_ms"], 3)
    return result


def feature_throughput(device: torch.device, arch: str, size: int, images: int, batch: int) -> dict:
    from pretrain.backbones import build_backbone
    from transfer.features import extract_features

    model = build_backbone(arch, "imagenet").to(device).eval()
    data = torch.randn(images, 3, size, size)
    batches = list(data.split(batch))

    @torch.inference_mode()
    def plain():
        with _autocast(device):
            for chunk in batches:
                model(chunk.to(device, non_blocking=True))

    plain_s = _median_seconds(plain, device, repeats=3, warmup=1)
    extract_s = _median_seconds(lambda: extract_features(model, batches, device=device), device, repeats=3, warmup=1)
    return {"check": "feature_extraction", "arch": arch, "image_size": size, "images": images, "batch": batch,
            "plain_inference_images_per_s": round(images / plain_s, 1),
            "extract_features_images_per_s": round(images / extract_s, 1),
            "extraction_over_plain_time": round(extract_s / plain_s, 3)}


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
    suite.check(options, None, [encoder])
    shared = scratch / "shared"
    suite.prepare(options, None, shared)
    task = suite.tasks(options, None)[0]
    cell = Cell(suite.name, Task(task.name, task.params, task.profile), encoder, 0, options, None, shared)
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
    parser.add_argument("--only", default="pretrain,ring,features,detection", help="comma list of checks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the GPU")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA device: these checks need a GPU (use --smoke to exercise the script on CPU)")
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - {"pretrain", "ring", "features", "detection"}
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; valid: pretrain, ring, features, detection")
    small = args.smoke
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "checks": []}

    def record(result: dict) -> None:
        results["checks"].append(result)
        print(json.dumps(result), flush=True)

    if "pretrain" in chosen:
        record(pretraining_throughput(device, "resnet18" if small else "resnet50", 32 if small else 224,
                                      8 if small else 256, 64 if small else 65_536, 2 if small else 10))
    if "ring" in chosen:
        record(ring_selection(device, 4096 if small else IMAGENET_SIZE, 8 if small else 256, 64 if small else 4096,
                              2 if small else 10))
    if "features" in chosen:
        record(feature_throughput(device, "resnet18" if small else "resnet50", 32 if small else 224,
                                  16 if small else 8192, 8 if small else 512))
    if "detection" in chosen:
        with tempfile.TemporaryDirectory(prefix="rb_gpu_det_") as scratch:
            record(mask_rcnn_iterations(2 if small else 300, Path(scratch)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
