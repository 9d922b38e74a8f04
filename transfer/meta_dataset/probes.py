"""Probes on frozen features, batched over many episodes (padded tensors, one device pass per chunk).

- `ncc`: nearest centroid. Prototype = mean raw support feature per class. Cosine similarity
  between query and prototype by default (URL/TSA's `cos`); `euclidean` = negative squared distance
  (Meta-Dataset's ProtoNet).
- `logreg`: multinomial logistic regression fit on the support features, centred on the support
  mean and L2-normalised (query features get the same transform), L-BFGS,
  fixed L2 penalty in scikit-learn's convention `C * sum(CE) + 0.5 * ||W||^2` with C = 10 and an
  unpenalised bias. All episodes of a chunk are solved jointly: the objective is a sum of
  independent per-episode problems (each scaled by 1 / support size), so the joint minimiser is
  every episode's own minimiser.
- `sgd`: the "Closer Look" baseline head: a linear layer on the same centred features scaled to
  length 10 (raw pooled features are too large for its learning rate), SGD lr 0.01,
  momentum 0.9, dampening 0.9, weight decay 1e-3, mini-batch 4, 100 epochs.
Plus `train_linear`, the Ring paper's non-episodic linear classifier over all classes of a source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

PROBES = ("ncc", "logreg", "sgd")
LOGREG_C = 10.0
LOGREG_WARM_START = 5.0  # times the class means of the centred, unit-length support features
LOGREG_MAX_ITER = 20  # with the warm start, 99.5% of query predictions equal the converged fit (digits)
SGD_FEATURE_SCALE = 10.0
NEG = -1e9  # logit for padded (absent) classes


@dataclass
class EpisodeRows:
    """One episode as rows of a feature matrix: support/query row indices and episode labels 0..N-1."""

    support_rows: np.ndarray
    support_labels: np.ndarray
    query_rows: np.ndarray
    query_labels: np.ndarray

    @property
    def way(self) -> int:
        return int(self.support_labels.max()) + 1


@dataclass
class PaddedEpisodes:
    support: torch.Tensor  # (E, S, D)
    support_labels: torch.Tensor  # (E, S) long, 0 where padded
    support_mask: torch.Tensor  # (E, S) float
    query: torch.Tensor  # (E, Q, D)
    query_labels: torch.Tensor  # (E, Q)
    query_mask: torch.Tensor  # (E, Q)
    class_mask: torch.Tensor  # (E, N) float, 1 for the episode's classes


def pad_episodes(features: torch.Tensor, episodes: Sequence[EpisodeRows]) -> PaddedEpisodes:
    count = len(episodes)
    s_max = max(len(e.support_rows) for e in episodes)
    q_max = max(len(e.query_rows) for e in episodes)
    n_max = max(e.way for e in episodes)
    device = features.device

    def gather(rows_list, labels_list, width):
        rows = np.zeros((count, width), dtype=np.int64)
        labels = np.zeros((count, width), dtype=np.int64)
        mask = np.zeros((count, width), dtype=np.float32)
        for i, (r, y) in enumerate(zip(rows_list, labels_list)):
            rows[i, : len(r)], labels[i, : len(r)], mask[i, : len(r)] = r, y, 1.0
        rows_t = torch.from_numpy(rows).to(device)
        return features[rows_t], torch.from_numpy(labels).to(device), torch.from_numpy(mask).to(device)

    support, s_labels, s_mask = gather([e.support_rows for e in episodes], [e.support_labels for e in episodes], s_max)
    query, q_labels, q_mask = gather([e.query_rows for e in episodes], [e.query_labels for e in episodes], q_max)
    class_mask = torch.zeros(count, n_max, device=device)
    for i, e in enumerate(episodes):
        class_mask[i, : e.way] = 1.0
    return PaddedEpisodes(support, s_labels, s_mask * 1, query, q_labels, q_mask, class_mask)


def _accuracy(logits: torch.Tensor, batch: PaddedEpisodes) -> np.ndarray:
    logits = logits.masked_fill(batch.class_mask[:, None, :] == 0, NEG)
    correct = (logits.argmax(-1) == batch.query_labels).float() * batch.query_mask
    return (correct.sum(1) / batch.query_mask.sum(1)).cpu().numpy().astype(np.float64)


def _one_hot(batch: PaddedEpisodes) -> torch.Tensor:
    n_max = batch.class_mask.shape[1]
    return F.one_hot(batch.support_labels, n_max).float() * batch.support_mask[..., None]  # (E, S, N)


def ncc_logits(batch: PaddedEpisodes, distance: str = "cosine") -> torch.Tensor:
    onehot = _one_hot(batch)
    counts = onehot.sum(1).clamp_min(1.0)  # (E, N)
    centroids = torch.einsum("esn,esd->end", onehot, batch.support) / counts[..., None]
    if distance == "cosine":
        return torch.einsum("eqd,end->eqn", F.normalize(batch.query, dim=-1), F.normalize(centroids, dim=-1))
    if distance == "euclidean":
        return 2 * torch.einsum("eqd,end->eqn", batch.query, centroids) - (centroids**2).sum(-1)[:, None, :]
    raise ValueError(f"unknown NCC distance {distance!r}; valid: cosine, euclidean")


def centred_unit_features(batch: PaddedEpisodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract each episode's support mean, then L2-normalise (support and query alike).

    Pooled ResNet features share a large common direction (a random encoder's have cosine ~0.99);
    without centring, a fixed L2 penalty swamps the small class differences left after normalising.
    """
    mask = batch.support_mask[..., None]
    mean = (batch.support * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
    support = F.normalize(batch.support - mean, dim=-1) * mask
    return support.contiguous(), F.normalize(batch.query - mean, dim=-1)


def logreg_logits(batch: PaddedEpisodes, c: float = LOGREG_C, max_iter: int = LOGREG_MAX_ITER) -> torch.Tensor:
    support, query = centred_unit_features(batch)
    count, _, dim = support.shape
    n_max = batch.class_mask.shape[1]
    sizes = batch.support_mask.sum(1)  # (E,)
    scale = (batch.support_mask / sizes[:, None])[..., None]  # (E, S, 1): 1/S for real rows, 0 for padding
    targets = F.one_hot(batch.support_labels, n_max).float()
    absent = (batch.class_mask == 0)[:, None, :]
    reg = (1.0 / (c * sizes))[:, None, None]  # per episode: (C * sum CE + 0.5 ||W||^2) / (C * S)
    # (E, N, D) so the products are x @ w^T: several times faster than (E, D, N) for a small N
    # warm start: the nearest-centroid classifier (weights along the class means) is close to the fit
    counts = targets.mul(batch.support_mask[..., None]).sum(1).clamp_min(1.0)  # (E, N)
    centroids = torch.bmm(targets.mul(batch.support_mask[..., None]).transpose(1, 2), support) / counts[..., None]
    weight = (LOGREG_WARM_START * centroids).contiguous()
    bias = torch.zeros(count, n_max, device=support.device)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-5, tolerance_change=1e-9,
    )

    def objective() -> torch.Tensor:
        # hand-written gradient: autograd's backward picks slow batched-matmul layouts on CPU
        logits = torch.baddbmm(bias[:, None, :], support, weight.transpose(1, 2)).masked_fill(absent, NEG)
        log_probs = logits.log_softmax(-1)
        loss = -(log_probs * targets * scale).sum() + 0.5 * (reg * weight**2).sum()
        residual = (log_probs.exp() - targets) * scale  # (E, S, N)
        weight.grad = torch.bmm(residual.transpose(1, 2).contiguous(), support) + reg * weight
        bias.grad = residual.sum(1)
        return loss

    optimizer.step(objective)
    return torch.baddbmm(bias[:, None, :], query, weight.transpose(1, 2))


def sgd_logits(
    batch: PaddedEpisodes, seed: int = 0, epochs: int = 100, batch_size: int = 4, lr: float = 0.01,
    momentum: float = 0.9, dampening: float = 0.9, weight_decay: float = 1e-3,
) -> torch.Tensor:
    count, s_max, dim = batch.support.shape
    n_max = batch.class_mask.shape[1]
    device = batch.support.device
    support, query = centred_unit_features(batch)
    # length 10, as cosine heads scale logits by 10: raw pooled features are too large for lr 0.01
    # (it diverges), unit-length ones too small for 100 epochs of a 1-shot support set
    support, query = support * SGD_FEATURE_SCALE, query * SGD_FEATURE_SCALE
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / dim**0.5  # nn.Linear's default initialisation
    weight = ((torch.rand(count, dim, n_max, generator=generator) * 2 - 1) * bound).to(device).requires_grad_()
    bias = ((torch.rand(count, n_max, generator=generator) * 2 - 1) * bound).to(device).requires_grad_()
    buffers = [torch.zeros_like(weight), torch.zeros_like(bias)]
    sizes = batch.support_mask.sum(1).long()
    steps = (sizes + batch_size - 1) // batch_size  # per episode, per epoch
    absent = (batch.class_mask == 0)[:, None, :]
    arange = torch.arange(s_max, device=device)
    started = torch.zeros(count, dtype=torch.bool, device=device)
    with torch.enable_grad():
        for _ in range(epochs):
            keys = torch.rand(count, s_max, generator=generator).to(device)
            keys = keys.masked_fill(batch.support_mask == 0, 2.0)  # padding sorts last
            order = keys.argsort(1)
            for step in range(int(steps.max())):
                cols = arange[step * batch_size : (step + 1) * batch_size]
                if cols.numel() == 0:
                    break
                rows = order[:, cols]  # (E, b)
                valid = (cols[None, :] < sizes[:, None]).float()
                active = (step < steps).float()
                x = torch.gather(support, 1, rows[..., None].expand(-1, -1, dim))
                y = torch.gather(batch.support_labels, 1, rows)
                logits = (torch.einsum("ebd,edn->ebn", x, weight) + bias[:, None, :]).masked_fill(absent, NEG)
                ce = F.cross_entropy(logits.reshape(-1, n_max), y.reshape(-1), reduction="none").view(count, -1)
                loss = ((ce * valid).sum(1) / valid.sum(1).clamp_min(1.0)).sum()
                grads = torch.autograd.grad(loss, [weight, bias])
                with torch.no_grad():
                    shape = [(count, 1, 1), (count, 1)]
                    for param, grad, buf, view in zip((weight, bias), grads, buffers, shape):
                        grad = grad + weight_decay * param
                        mask = active.view(view)
                        first = (~started).float().view(view)
                        # torch.optim.SGD: the first step stores the gradient undamped
                        new_buf = first * grad + (1 - first) * (momentum * buf + (1 - dampening) * grad)
                        buf.copy_(mask * new_buf + (1 - mask) * buf)
                        param.sub_(lr * mask * buf)
                    started |= active.bool()
    with torch.no_grad():
        return torch.einsum("eqd,edn->eqn", query, weight) + bias[:, None, :]


def evaluate_probes(
    features: np.ndarray | torch.Tensor,
    episodes: Sequence[EpisodeRows],
    probes: Sequence[str] = ("ncc", "logreg"),
    distance: str = "cosine",
    device: str | torch.device = "cpu",
    chunk: int = 64,
    seed: int = 0,
    cpu_threads: int | None = 1,
) -> dict[str, np.ndarray]:
    """Per-episode query accuracy for each probe, processing `chunk` episodes at a time.

    On CPU the probes run with `cpu_threads` torch threads (None: leave as is). Their batched
    products are small, and one thread avoids OpenMP's busy-waiting when other jobs share the cores
    (measured 5-10x faster than two threads on a loaded 2-core machine).
    """
    threads_before = torch.get_num_threads()
    if torch.device(device).type == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)
    try:
        return _evaluate_probes(features, episodes, probes, distance, device, chunk, seed)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate_probes(features, episodes, probes, distance, device, chunk, seed) -> dict[str, np.ndarray]:
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; valid: {', '.join(PROBES)}")
    features_t = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    # chunks of similar support size waste little on padding; results go back to episode order
    order = sorted(range(len(episodes)), key=lambda i: len(episodes[i].support_rows))
    out: dict[str, list[np.ndarray]] = {p: [] for p in probes}
    for start in range(0, len(episodes), chunk):
        batch = pad_episodes(features_t, [episodes[i] for i in order[start : start + chunk]])
        with torch.no_grad():
            for probe in probes:
                if probe == "ncc":
                    logits = ncc_logits(batch, distance)
                elif probe == "logreg":
                    logits = logreg_logits(batch)
                else:
                    logits = sgd_logits(batch, seed=seed + start)
                out[probe].append(_accuracy(logits, batch))
    results = {}
    for probe, parts in out.items():
        accuracy = np.empty(len(episodes))
        accuracy[order] = np.concatenate(parts)
        results[probe] = accuracy
    return results


def train_linear(
    train_x: np.ndarray, train_y: np.ndarray, num_classes: int, seed: int = 0, epochs: int = 100,
    batch_size: int = 256, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-5,
    device: str | torch.device = "cpu",
) -> torch.nn.Linear:
    """The Ring paper's transfer head: one linear layer, cross-entropy, SGD (config/transfer.json)."""
    generator = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], num_classes).to(device)
    torch.random.set_rng_state(torch_state)
    x = torch.as_tensor(train_x, dtype=torch.float32, device=device)
    y = torch.as_tensor(train_y, dtype=torch.long, device=device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                optimizer.zero_grad()
                F.cross_entropy(head(x[rows]), y[rows]).backward()
                optimizer.step()
    return head.eval()
