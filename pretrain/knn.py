"""Weighted k-nearest-neighbour accuracy: the instance-discrimination monitor (Wu et al. 2018).

Each test feature votes with its k most cosine-similar training features; a neighbour of class c
adds exp(similarity / temperature) to class c's score; the top-scoring class is the prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def _as_tensor(values, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()  # stays on its device: ImageNet-sized kNN runs where the features are
    else:
        tensor = torch.from_numpy(np.asarray(values))
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    return tensor.to(dtype)


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted labels (N_test,), on the CPU, by the exp(sim / t)-weighted vote of the k nearest training
    points; computed on the training features' device."""
    train = F.normalize(_as_tensor(train_features, "train_features", torch.float32), dim=1)
    test = F.normalize(_as_tensor(test_features, "test_features", torch.float32), dim=1)
    test = test.to(train.device)
    labels = _as_tensor(train_labels, "train_labels", torch.int64).reshape(-1).to(train.device)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"features must be 2-d with equal widths; got {tuple(train.shape)} and {tuple(test.shape)}")
    if labels.shape[0] != train.shape[0]:
        raise ValueError(f"{labels.shape[0]} train labels for {train.shape[0]} train features")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, train.shape[0])
    num_classes = int(num_classes if num_classes is not None else labels.max().item() + 1)
    predictions = []
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start : start + chunk_size] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).cpu()


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 200,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier; numpy arrays or torch tensors."""
    truth = _as_tensor(test_labels, "test_labels", torch.int64).reshape(-1).cpu()
    train_truth = _as_tensor(train_labels, "train_labels", torch.int64).reshape(-1)
    num_classes = int(max(train_truth.max().item(), truth.max().item()) + 1)
    predicted = knn_predict(train_features, train_truth, test_features, k, temperature, num_classes)
    if predicted.shape[0] != truth.shape[0]:
        raise ValueError(f"{truth.shape[0]} test labels for {predicted.shape[0]} test features")
    return float((predicted == truth).float().mean().item())
