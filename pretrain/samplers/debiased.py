"""Debiased (DCL, Chuang et al. 2020) and hard debiased (HCL, Robinson et al. 2021) losses over
uniform negatives: the selection is NCE's, the loss corrects for false negatives."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.losses import dcl_loss, hcl_loss
from pretrain.samplers.base import NegativeSampler


@dataclass(frozen=True)
class DCLParams:
    tau_plus: float = 0.1  # class prior: the chance that a negative shares the anchor's class


@dataclass(frozen=True)
class HCLParams:
    tau_plus: float = 0.1
    beta: float = 1.0  # hardness concentration; 0 gives DCL


def _check_tau_plus(tau_plus: float) -> None:
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")


class DCL(NegativeSampler):
    name = "dcl"
    Params = DCLParams

    @property
    def class_prior(self) -> float:
        return self.params.tau_plus

    def validate(self):
        _check_tau_plus(self.params.tau_plus)

    def loss(self, pos_logits, neg_logits, temperature, neg_mask=None):
        return dcl_loss(pos_logits, neg_logits, self.params.tau_plus, temperature)


class HCL(NegativeSampler):
    name = "hcl"
    Params = HCLParams

    @property
    def class_prior(self) -> float:
        return self.params.tau_plus

    @property
    def tilt(self) -> float:
        return self.params.beta

    def validate(self):
        _check_tau_plus(self.params.tau_plus)

    def loss(self, pos_logits, neg_logits, temperature, neg_mask=None):
        return hcl_loss(pos_logits, neg_logits, self.params.beta, self.params.tau_plus, temperature)
