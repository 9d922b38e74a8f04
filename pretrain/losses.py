"""Contrastive losses as pure functions of logits (similarities already divided by the temperature).

Every loss keeps the positive in the partition, as in the NCE bound:
    InfoNCE  -log( e^{s+} / (e^{s+} + sum_i e^{s_i}) )
    DCL      -log( e^{s+} / (e^{s+} + Ng) ),  Ng = max((sum_i e^{s_i} - tau+ N e^{s+}) / (1 - tau+), N e^{-1/t})
    HCL      as DCL with sum_i e^{s_i} replaced by sum_i w_i e^{s_i}, w_i = e^{beta s_i} / mean_j e^{beta s_j}
All are computed in float32 with a per-row shift, so they are stable at t = 0.07.
"""

from __future__ import annotations

import math

import torch


def _rows(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pos_logits.ndim != 1 or neg_logits.ndim != 2 or neg_logits.shape[0] != pos_logits.shape[0]:
        raise ValueError(
            f"expected pos_logits (B,) and neg_logits (B, N); got {tuple(pos_logits.shape)} and {tuple(neg_logits.shape)}"
        )
    return pos_logits.float(), neg_logits.float()


def info_nce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over anchors of -(s+ - logsumexp([s+, s_neg])); `neg_mask` keeps only the True negatives."""
    pos, neg = _rows(pos_logits, neg_logits)
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    partition = torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1)
    return (partition - pos).mean()


def _debiased_loss(pos: torch.Tensor, log_negative_mass: torch.Tensor, count: int, tau_plus: float,
                   temperature: float) -> torch.Tensor:
    """-log(e^{pos} / (e^{pos} + Ng)) from log(sum of (weighted) negative terms), shifted for stability."""
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")
    shift = torch.maximum(pos, log_negative_mass).detach()
    negative_mass = (log_negative_mass - shift).exp()
    positive = (pos - shift).exp()
    estimate = (negative_mass - tau_plus * count * positive) / (1.0 - tau_plus)
    floor = count * torch.exp(-1.0 / temperature - shift)
    negatives = torch.maximum(estimate, floor)
    return (-(pos - shift) + torch.log(positive + negatives)).mean()


def dcl_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, tau_plus: float, temperature: float) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al. 2020); tau_plus = 0 gives InfoNCE."""
    pos, neg = _rows(pos_logits, neg_logits)
    return _debiased_loss(pos, torch.logsumexp(neg, dim=1), neg.shape[1], tau_plus, temperature)


def hcl_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, beta: float, tau_plus: float,
             temperature: float) -> torch.Tensor:
    """Hardness-weighted debiased loss (Robinson et al. 2021); beta = 0 gives DCL."""
    pos, neg = _rows(pos_logits, neg_logits)
    count = neg.shape[1]
    # log w_i = beta s_i - log mean_j exp(beta s_j); the weights carry no gradient in the reference code
    log_weights = (beta * neg - (torch.logsumexp(beta * neg, dim=1, keepdim=True) - math.log(count))).detach()
    return _debiased_loss(pos, torch.logsumexp(log_weights + neg, dim=1), count, tau_plus, temperature)

