"""Linear evaluation of a frozen encoder: the paper's per-epoch protocol, the fast cached protocol, kNN.

paper  the released Ring code's protocol (ring.md section 3.1): frozen encoder in eval mode, pooled
       features, one nn.Linear, cross-entropy, SGD lr 0.01 momentum 0.9 weight decay 1e-5, batch
       256, 100 epochs, no schedule; every epoch re-augments the training images with the
       pretraining augmentation and runs them through the encoder; top-1 on the test split with
       the test transform.
fast   features extracted once without augmentation and cached; the same linear layer fitted on
       the cache by full-batch L-BFGS (standardised features, the same weight decay, at most
       100 iterations by default, closed-form gradient; on the GPU when there is one).
knn    weighted kNN on the same cached features (k 200, temperature 0.07, cosine).

Both linear protocols evaluate on the same cached test features, so per-image correctness lines
up image by image with every other checkpoint evaluated on the same test split.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ringbench_common.progress import progress_bar
from transfer.features import (
    FeatureCache,
    cache_key,
    device_images,
    extract_features,
    fast_format,
    pick_device,
)

PROTOCOLS = ("paper", "fast")
FEATURES_VERSION = "linear-eval-transform-v1"  # bump when the evaluation transform changes


@dataclass(frozen=True)
class PaperRecipe:
    """The released code's linear-evaluation hyperparameters (config/transfer.json)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    batch_size: int = 256
    epochs: int = 100


@dataclass(frozen=True)
class FastRecipe:
    """Full-batch L-BFGS on cached, standardised features."""

    weight_decay: float = 1e-5
    max_iter: int = 100  # on the digits the test accuracy is flat from ~100 iterations on
    tolerance_grad: float = 1e-7


@dataclass(frozen=True)
class KnnRecipe:
    k: int = 200
    temperature: float = 0.07


# ---------------------------------------------------------------------------------------------
# Transforms


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The project's evaluation transform (pretrain.data): resize and centre crop, 256/224 at 224 px."""
    from pretrain import data

    return data.eval_transform(image_size, list(mean), list(std))


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    config: dict[str, Any] | None = None) -> Callable:
    """The pretraining augmentation at the checkpoint's image size (pretrain.data: MoCo v2, or CMC's crop
    and flip): the released code trains its linear layer with the augmentation the encoder was pretrained
    with. `config` (the checkpoint's training config) supplies the pipeline, its crop scale and flip
    setting; configs older than the `augmentation` key were trained with MoCo v2's."""
    from pretrain import data

    config = config or {}

    def value(section: str, key: str, default: Any) -> Any:  # nested sections, or the flat keys of older files
        nested = config.get(section)
        if isinstance(nested, dict):
            return nested.get(key, default)
        return config.get(section if key == "name" else key, default)

    augmentation = data.augmentation_for(str(value("method", "name", "")), str(value("data", "augmentation", "mocov2")))
    return data.pretrain_transform(image_size, list(mean), list(std),
                                   crop_min_scale=float(value("data", "crop_min_scale", 0.2)),
                                   hflip=bool(value("data", "hflip", True)), augmentation=augmentation)


class TransformedPairs(Dataset):
    """(PIL image, label) items -> (tensor, label) through `transform`."""

    def __init__(self, images: Dataset, transform: Callable):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        return self.transform(image), int(label)


def default_workers() -> int:
    """Data-loading processes: $RINGBENCH_WORKERS, else the job's CPU allocation, at most 8."""
    for name in ("RINGBENCH_WORKERS", "SLURM_CPUS_PER_TASK"):
        if os.environ.get(name, "").isdigit():
            return min(8, int(os.environ[name]))
    return min(8, len(os.sched_getaffinity(0)))


def _loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )


def _image_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    for images, _ in loader:
        yield images


# ---------------------------------------------------------------------------------------------
# Features


def labels_of(dataset: Any) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """What identifies a dataset split for the feature cache besides its name: its size and labels."""
    labels = labels_of(dataset)
    return {
        "n": int(len(dataset)),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()[:16],
        "num_classes": int(getattr(dataset, "num_classes", int(labels.max()) + 1 if labels.size else 0)),
    }


def data_source(dataset_name: str, data_root: str | os.PathLike | None) -> str:
    """Where a dataset's files came from, for the cache key: the embedded digits or a resolved folder."""
    if dataset_name == "digits" or data_root is None:
        return "embedded"
    return str(Path(data_root).resolve())


def open_linear_split(dataset_name: str, data_root: str | os.PathLike | None, split: str, image_size: int | None = None):
    """A LabelledImages split through pretrain.data, the one reader of the on-disk formats; the
    embedded digits are rendered at the checkpoint's image size when it is given."""
    from pretrain.data import open_dataset

    if dataset_name == "digits":
        return open_dataset("digits", None, split, image_size=image_size)
    return open_dataset(dataset_name, data_root, split)


def feature_cache_parts(encoder: Any, dataset: Any, dataset_name: str, split: str,
                        source: str | None = None) -> dict[str, Any]:
    """The feature-cache key: checkpoint content, dataset (name, origin, size, labels), preprocessing."""
    metadata = encoder.metadata
    return {
        "kind": "linear-features",
        "version": FEATURES_VERSION,
        "checkpoint_sha256": encoder.sha256,
        "dataset": dataset_name,
        "source": source,
        "split": split,
        "data": dataset_identity(dataset),
        "image_size": int(metadata["image_size"]),
        "mean": [float(v) for v in metadata["mean"]],
        "std": [float(v) for v in metadata["std"]],
        "views": encoder.view_info(),
    }


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Cells of the same checkpoint (seeds, protocols) run at once: one extracts, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compute_features(
    encoder: Any,  # a LoadedEncoder: `.model` applies the encoder's input view(s) to the RGB batches
    dataset: Dataset,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    desc: str = "features",
) -> np.ndarray:
    """Pooled features of every image in `dataset` under the evaluation transform."""
    from pretrain.data import eval_transform_uint8

    metadata = encoder.metadata
    transform = eval_transform_uint8(int(metadata["image_size"]))  # uint8 to the device, normalised there
    loader = _loader(TransformedPairs(dataset, transform), batch_size, workers)
    features = extract_features(encoder.model, _image_batches(loader), device, total=len(loader), desc=desc,
                                mean=metadata["mean"], std=metadata["std"])
    if len(dataset) == 0:
        return np.zeros((0, encoder.feature_dim), dtype=np.float32)
    return features


def cached_features(
    encoder: Any,
    dataset: Dataset,
    dataset_name: str,
    split: str,
    cache: FeatureCache,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    source: str | None = None,
) -> np.ndarray:
    """Evaluation-transform features from the cache, extracted on a miss (once, under a file lock).
    `source` (e.g. the data root) keeps equally named datasets from different folders apart."""
    parts = feature_cache_parts(encoder, dataset, dataset_name, split, source)
    key_path = cache.path(cache_key(**parts))
    with _file_lock(key_path.with_suffix(".lock")):
        return cache.get_or_compute(
            parts,
            lambda: compute_features(encoder, dataset, device, batch_size, workers, desc=f"{dataset_name}/{split}"),
        )


# ---------------------------------------------------------------------------------------------
# Linear heads


@dataclass
class LinearProbe:
    """A linear classifier over features: logits = ((x - shift) / scale) @ weight.T + bias."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    shift: torch.Tensor | None = None  # (D,)
    scale: torch.Tensor | None = None  # (D,)

    def logits(self, features: np.ndarray | torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
        x_all = torch.as_tensor(features)
        out = []
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start:start + batch_size].to(self.weight.device, torch.float32)
            if self.shift is not None:
                x = (x - self.shift) / self.scale
            out.append((x @ self.weight.T + self.bias).cpu())
        if not out:
            return torch.zeros((0, self.weight.shape[0]))
        return torch.cat(out)

    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.logits(features).argmax(dim=1).numpy()


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes - 1}]")


@torch.no_grad()
def softmax_regression_loss(
    x: torch.Tensor, onehot: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy + weight_decay/2 |W|^2 and its gradients in closed form (no autograd graph:
    L-BFGS evaluates this hundreds of times, and the graph bookkeeping costs more than the matmuls)."""
    log_probs = torch.addmm(bias, x, weight.T).log_softmax(dim=1)
    n = x.shape[0]
    loss = -(log_probs * onehot).sum() / n + 0.5 * weight_decay * weight.pow(2).sum()
    residual = (log_probs.exp() - onehot) / n
    return loss, residual.T @ x + weight_decay * weight, residual.sum(dim=0)


def fit_linear_lbfgs(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    recipe: FastRecipe = FastRecipe(),
    device: torch.device | str | None = None,
) -> tuple[LinearProbe, dict[str, Any]]:
    """Full-batch L-BFGS (strong Wolfe line search) on cross-entropy + weight_decay/2 * |W|^2.

    Features are standardised with the training mean and std first (a reparametrisation of the
    same linear layer that makes the problem well conditioned). Zero initialisation: the solution
    does not depend on a seed.
    """
    device = pick_device(str(device) if device is not None else None)
    check_labels(labels, num_classes, "training labels")
    x = torch.tensor(features, dtype=torch.float32, device=device)  # a copy: standardised in place below
    y = torch.as_tensor(labels, dtype=torch.int64, device=device)
    shift = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x.sub_(shift).div_(scale)
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    weight = torch.zeros(num_classes, x.shape[1], device=device)
    bias = torch.zeros(num_classes, device=device)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=recipe.max_iter,
        tolerance_grad=recipe.tolerance_grad,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        loss, weight.grad, bias.grad = softmax_regression_loss(x, onehot, weight, bias, recipe.weight_decay)
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final_loss = float(softmax_regression_loss(x, onehot, weight, bias, recipe.weight_decay)[0])
        train_top1 = float((torch.addmm(bias, x, weight.T).argmax(1) == y).float().mean() * 100)
    probe = LinearProbe(weight.detach(), bias.detach(), shift, scale)
    return probe, {"lbfgs_evaluations": evaluations, "train_loss": final_loss, "train_top1": train_top1}


def _linear_layer(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layer = nn.Linear(feature_dim, num_classes)
    torch.random.set_rng_state(generator_state)
    return layer


@dataclass
class PaperTrainingLog:
    epochs_run: int = 0
    resumed_from_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    seconds_data: float = 0.0  # waiting for augmented batches
    seconds_forward: float = 0.0  # frozen encoder forward passes
    seconds_linear: float = 0.0  # linear layer forward, backward and SGD step


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from pretrain.checkpoint import atomic_torch_save

    atomic_torch_save(obj, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_linear_paper(
    encoder: Any,
    train_images: Dataset,
    num_classes: int,
    recipe: PaperRecipe = PaperRecipe(),
    seed: int = 0,
    device: torch.device | str | None = None,
    workers: int = 0,
    state_path: Path | None = None,
) -> tuple[LinearProbe, PaperTrainingLog]:
    """The paper's protocol: every epoch augments the training images afresh and runs the frozen
    encoder on them; only the linear layer learns. `state_path` keeps the layer, the optimiser and
    the epoch after every epoch so a preempted job resumes where it stopped (the data order and
    the augmentations of epoch e depend only on (seed, e), so a resumed run matches a straight one).
    """
    device = pick_device(str(device) if device is not None else None)
    metadata = encoder.metadata
    labels = labels_of(train_images)
    check_labels(labels, num_classes, "training labels")
    model = fast_format(encoder.model.to(device).eval(), device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layer = _linear_layer(encoder.feature_dim, num_classes, seed).to(device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    log = PaperTrainingLog()
    # epochs is left out: with no LR schedule, a longer run continues a shorter one exactly
    recipe_id = {k: v for k, v in asdict(recipe).items() if k != "epochs"} | {"seed": seed, "checkpoint_sha256": encoder.sha256, "n_train": len(train_images)}
    start_epoch = 0
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state.get("recipe") == recipe_id and int(state["epoch"]) <= recipe.epochs:
            layer.load_state_dict(state["layer"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            log.epoch_losses = list(state["epoch_losses"])
            log.resumed_from_epoch = start_epoch
    augment = train_transform(int(metadata["image_size"]), metadata["mean"], metadata["std"], metadata.get("config"))
    dataset = TransformedPairs(train_images, augment)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    progress = progress_bar(range(start_epoch, recipe.epochs), desc="linear (paper)", unit="epoch", leave=False,
                    disable=None, initial=start_epoch, total=recipe.epochs)
    for epoch in progress:
        torch.manual_seed(seed * 1_000_003 + epoch)  # augmentations in the main process (workers=0)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # order and worker seeds
        loader = _loader(dataset, recipe.batch_size, workers, shuffle=True, generator=generator)
        total_loss, seen = 0.0, 0
        tick = time.perf_counter()
        for images, targets in loader:
            images = device_images(images, device)
            targets = targets.to(device, non_blocking=True)
            _sync(device)
            fetched = time.perf_counter()
            with torch.no_grad(), autocast:
                features = model(images).float()
            _sync(device)
            forwarded = time.perf_counter()
            loss = F.cross_entropy(layer(features), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(targets)
            seen += len(targets)
            _sync(device)
            stepped = time.perf_counter()
            log.seconds_data += fetched - tick
            log.seconds_forward += forwarded - fetched
            log.seconds_linear += stepped - forwarded
            tick = time.perf_counter()
        epoch_loss = total_loss / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"linear evaluation diverged: loss {epoch_loss} in epoch {epoch + 1}")
        log.epoch_losses.append(epoch_loss)
        log.epochs_run += 1
        progress.set_postfix(loss=f"{epoch_loss:.3f}")
        if state_path is not None:
            _atomic_torch_save(
                {"recipe": recipe_id, "epoch": epoch + 1, "layer": layer.state_dict(),
                 "optimizer": optimizer.state_dict(), "epoch_losses": log.epoch_losses},
                state_path,
            )
    probe = LinearProbe(layer.weight.detach().float(), layer.bias.detach().float())
    return probe, log


# ---------------------------------------------------------------------------------------------
# kNN


def knn_predictions(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    num_classes: int,
    recipe: KnnRecipe = KnnRecipe(),
) -> np.ndarray:
    """Predicted class per test image of the temperature-weighted cosine kNN (pretrain.knn, the
    same classifier as the pretraining monitor), so correctness can be paired image by image."""
    from pretrain.knn import knn_predict

    predictions = knn_predict(train_features, train_labels, test_features, k=recipe.k,
                              temperature=recipe.temperature, num_classes=num_classes)
    return predictions.cpu().numpy().astype(np.int64)
