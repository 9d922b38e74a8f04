"""The four contrastive methods as small classes over shared plumbing.

Each method turns a batch of augmented views into anchor/positive/negative logits and hands them
to the pure functions in `pretrain.losses`, with negatives chosen by `pretrain.samplers`.

    ir      one view; positive = the image's own memory-bank entry; K negatives drawn from the bank
    cmc     one view split into L and ab (two encoders, two banks), symmetric L->ab and ab->L losses;
            the split is pretrain.views.view_input, the same function evaluation uses
    moco    two views; momentum key encoder; negatives = the queue (all of it, or its ring)
    simclr  two views; negatives = the other 2B - 2 batch embeddings (self-similarity masked out)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pretrain import distributed
from pretrain.backbones import Encoder
from pretrain.samplers import NegativeSampler
from pretrain.views import CMC_AB, CMC_L, view_channels, view_input

METHODS = ("ir", "cmc", "moco", "simclr")


def check_method_name(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return name


def check_combination(method: str, sampler: NegativeSampler | type[NegativeSampler]) -> None:
    """Raise ValueError when `method` cannot host `sampler` (a queue-based sampler on a method without a queue)."""
    check_method_name(method)
    if sampler.needs_queue and not METHOD_CLASSES[method].has_queue:
        queued = ", ".join(name for name, cls in METHOD_CLASSES.items() if cls.has_queue)
        raise ValueError(f"sampler {sampler.name!r} draws on a queue of past keys; method {method!r} has no queue "
                         f"(use method={queued})")


@dataclass
class MethodSettings:
    arch: str = "resnet18"
    stem: str = "imagenet"
    embed_dim: int = 128
    temperature: float = 0.07
    # K for memory banks: softmax terms INCLUDING the positive, so K - 1 bank draws per anchor, as the IR
    # paper and the official Ring code (`k=4096`: the positive plus 4095 noise indices) count it
    num_negatives: int = 4096
    bank_momentum: float = 0.5  # IR paper; 0 = overwrite, as the released Ring configs
    queue_size: int = 65536
    key_momentum: float = 0.999
    threshold_sample: int = 0  # >0: bank ring thresholds from this many sampled columns (faster, approximate)
    mean: tuple = (0.485, 0.456, 0.406)  # normalisation of the input views, needed by CMC's Lab split
    std: tuple = (0.229, 0.224, 0.225)


def full_precision(tensor: torch.Tensor):
    """Logits at t = 0.07 need float32: switch bf16 autocast off for the similarity products."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _init_bank(size: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1.0 / (dim / 3) ** 0.5
    return F.normalize(torch.rand(size, dim, generator=generator) * 2 * bound - bound, dim=1)


class ContrastiveMethod(nn.Module):
    """Shared plumbing: sampler config, temperature, the trainable encoders and the export backbone."""

    name = ""
    num_views = 2
    has_queue = False  # keeps a queue of past keys that queue-based samplers (MoCHi) draw on

    def __init__(self, settings: MethodSettings, sampler: NegativeSampler, num_samples: int):
        super().__init__()
        check_combination(self.name, sampler)
        self.settings, self.sampler, self.num_samples = settings, sampler, num_samples
        self.temperature = settings.temperature
        self.encoder = Encoder(settings.arch, settings.stem, settings.embed_dim)
        self._set_forward("_forward_encoder", self.encoder)

    def _set_forward(self, name: str, module: nn.Module) -> None:
        # kept outside the module tree so a DDP wrapper never shows up in state_dict()
        object.__setattr__(self, name, module)

    def trainable_encoders(self) -> list[str]:
        """Attribute names of the encoders that get gradients (wrapped in DDP when distributed)."""
        return ["encoder"]

    def forward_slots(self) -> list[str]:
        """The attributes through which every encoder is called (wrapped by DDP or torch.compile)."""
        return ["_forward_encoder"]

    def compile_encoders(self, compile_module) -> None:
        """Call every encoder through `compile_module(slot)` (torch.compile); the modules themselves, and
        so state_dict(), resume and export, stay the plain ones."""
        for slot in self.forward_slots():
            self._set_forward(slot, compile_module(getattr(self, slot)))

    def wrap_distributed(self, wrap) -> None:
        self._set_forward("_forward_encoder", wrap(self.encoder))

    def export_backbone(self) -> nn.Module:
        return self.encoder.backbone

    def export_encoders(self) -> dict[str, tuple[nn.Module, str]]:
        """name -> (backbone, input view) of every encoder the encoder file keeps; the first is the
        exported backbone (its view becomes metadata["input_view"]), the others are stored beside it."""
        return {"backbone": (self.encoder.backbone, "rgb")}

    def default_features(self) -> tuple[str, ...]:
        """The encoders (names from export_encoders) whose concatenated features the method's own
        evaluation uses; the kNN monitor reports these."""
        return (next(iter(self.export_encoders())),)

    def loss(self, views: list[torch.Tensor], index: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """The batch's loss; negatives and loss terms come from `self.sampler` at its current epoch."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Memory updates that must follow the optimiser step (banks, queues)."""


class BankUpdater:
    """Pending `bank[idx] <- normalize(m bank[idx] + (1 - m) z)` updates, gathered across ranks."""

    def __init__(self):
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, bank: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        self.pending.append((bank, index.detach(), embeddings.detach().float()))

    @torch.no_grad()
    def apply(self, momentum: float) -> None:
        for bank, index, embeddings in self.pending:
            index, embeddings = distributed.all_gather(index), distributed.all_gather(embeddings)
            mixed = momentum * bank[index] + (1 - momentum) * embeddings
            bank[index] = F.normalize(mixed, dim=1).to(bank.dtype)
        self.pending.clear()


def bank_draws(settings: MethodSettings) -> int:
    """Negatives drawn from a memory bank per anchor: K - 1, the positive being the K-th term."""
    if settings.num_negatives < 2:
        raise ValueError(f"num_negatives (K, counting the positive) must be >= 2 for memory banks, "
                         f"got {settings.num_negatives}")
    return settings.num_negatives - 1


def _bank_logits(anchors: torch.Tensor, bank: torch.Tensor, sampler: NegativeSampler, settings: MethodSettings,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K - 1) negative logits for bank methods (the positive is the K-th term); indices from the sampler,
    gradient through the anchors."""
    pool_size, dim = bank.shape
    k, temperature = bank_draws(settings), settings.temperature
    full = pool_size <= k * dim  # one B x N matmul is cheaper than a B x K x D gather
    with full_precision(anchors):
        if full:
            logits = anchors.float() @ bank.float().T / temperature
            index = sampler.bank_indices(anchors, bank, k, generator, similarity=logits.detach(),
                                         threshold_sample=settings.threshold_sample)
            return torch.gather(logits, 1, index), index
        index = sampler.bank_indices(anchors, bank, k, generator, threshold_sample=settings.threshold_sample)
        return torch.einsum("bd,bkd->bk", anchors.float(), bank[index].float()) / temperature, index


class InstanceRecognition(ContrastiveMethod):
    """IR (Wu et al. 2018): the positive is the image's own bank entry, negatives are bank entries."""

    name = "ir"
    num_views = 1

    def __init__(self, settings: MethodSettings, sampler: NegativeSampler, num_samples: int,
                 generator: torch.Generator | None = None):
        super().__init__(settings, sampler, num_samples)
        generator = generator or torch.Generator().manual_seed(0)
        self.register_buffer("bank", _init_bank(num_samples, settings.embed_dim, generator))
        self.updates = BankUpdater()

    def loss(self, views, index, generator):
        anchors = self._forward_encoder(views[0]).float()
        pos = (anchors * self.bank[index]).sum(dim=1) / self.temperature
        neg, _ = _bank_logits(anchors, self.bank, self.sampler, self.settings, generator)
        self.updates.add(self.bank, index, anchors)
        return self.sampler.loss(pos, neg, self.temperature)

    @torch.no_grad()
    def after_step(self):
        self.updates.apply(self.settings.bank_momentum)


class ContrastiveMultiviewCoding(ContrastiveMethod):
    """CMC (Tian et al. 2019), memory-bank form: L and ab encoders, one bank each, symmetric loss.

    The L encoder sees the `lightness` view (3 channels, grey), the ab encoder the `lab_ab` view
    (2 channels, CMC's own stem). Both are exported: the L encoder as the encoder file's backbone
    (detection fine-tunes it), the ab encoder beside it; CMC's own evaluation concatenates both.
    """

    name = "cmc"
    num_views = 1
    views = {CMC_L: "lightness", CMC_AB: "lab_ab"}

    def __init__(self, settings: MethodSettings, sampler: NegativeSampler, num_samples: int,
                 generator: torch.Generator | None = None):
        super().__init__(settings, sampler, num_samples)
        generator = generator or torch.Generator().manual_seed(0)
        self.colour_encoder = Encoder(settings.arch, settings.stem, settings.embed_dim,
                                      in_channels=view_channels(self.views[CMC_AB]))
        self._set_forward("_forward_colour", self.colour_encoder)
        self.register_buffer("bank_l", _init_bank(num_samples, settings.embed_dim, generator))
        self.register_buffer("bank_ab", _init_bank(num_samples, settings.embed_dim, generator))
        self.updates = BankUpdater()

    def trainable_encoders(self):
        return ["encoder", "colour_encoder"]

    def forward_slots(self):
        return ["_forward_encoder", "_forward_colour"]

    def wrap_distributed(self, wrap):
        self._set_forward("_forward_encoder", wrap(self.encoder))
        self._set_forward("_forward_colour", wrap(self.colour_encoder))

    def export_encoders(self):
        return {CMC_L: (self.encoder.backbone, self.views[CMC_L]),
                CMC_AB: (self.colour_encoder.backbone, self.views[CMC_AB])}

    def default_features(self):
        return (CMC_L, CMC_AB)

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised RGB batch -> (L encoder input, ab encoder input)."""
        mean, std = self.settings.mean, self.settings.std
        with torch.no_grad():
            return (view_input(images, self.views[CMC_L], mean, std).to(images.dtype),
                    view_input(images, self.views[CMC_AB], mean, std).to(images.dtype))

    def loss(self, views, index, generator):
        lightness, colour = self.split(views[0])
        z_l = self._forward_encoder(lightness).float()
        z_ab = self._forward_colour(colour).float()
        total = 0.0
        for anchors, bank in ((z_l, self.bank_ab), (z_ab, self.bank_l)):
            pos = (anchors * bank[index]).sum(dim=1) / self.temperature
            neg, _ = _bank_logits(anchors, bank, self.sampler, self.settings, generator)
            total = total + self.sampler.loss(pos, neg, self.temperature)
        self.updates.add(self.bank_l, index, z_l)
        self.updates.add(self.bank_ab, index, z_ab)
        return total

    @torch.no_grad()
    def after_step(self):
        self.updates.apply(self.settings.bank_momentum)


class MomentumContrast(ContrastiveMethod):
    """MoCo v2: momentum key encoder, a queue of past keys, shuffle-BN across ranks for the keys."""

    name = "moco"
    has_queue = True

    def __init__(self, settings: MethodSettings, sampler: NegativeSampler, num_samples: int,
                 generator: torch.Generator | None = None):
        super().__init__(settings, sampler, num_samples)
        generator = generator or torch.Generator().manual_seed(0)
        self.key_encoder = copy.deepcopy(self.encoder)
        for parameter in self.key_encoder.parameters():
            parameter.requires_grad_(False)
        self._set_forward("_forward_key", self.key_encoder)
        self.register_buffer("queue", F.normalize(torch.randn(settings.queue_size, settings.embed_dim,
                                                              generator=generator), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None

    def forward_slots(self):
        return ["_forward_encoder", "_forward_key"]

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.settings.key_momentum
        for key, query in zip(self.key_encoder.parameters(), self.encoder.parameters()):
            key.mul_(m).add_(query.detach(), alpha=1 - m)

    @torch.no_grad()
    def _keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key embeddings with shuffle-BN: under DDP the global batch is permuted across ranks."""
        if not distributed.is_distributed():
            order = torch.randperm(images.shape[0], device=images.device)
            keys = self._forward_key(images[order])
            return keys[torch.argsort(order)]
        local = images.shape[0]
        gathered = distributed.all_gather(images)
        order = distributed.broadcast(torch.randperm(gathered.shape[0], device=images.device))
        mine = order.view(distributed.world_size(), local)[distributed.rank()]
        keys = distributed.all_gather(self._forward_key(gathered[mine]).float())
        unshuffled = torch.empty_like(keys)
        unshuffled[order] = keys
        return unshuffled.view(distributed.world_size(), local, -1)[distributed.rank()]

    def loss(self, views, index, generator):
        query = self._forward_encoder(views[0]).float()
        self._momentum_update()
        keys = self._keys(views[1]).float().detach()
        self._pending_keys = keys
        with full_precision(query):
            pos = (query * keys).sum(dim=1) / self.temperature
            neg = query @ self.queue.float().T / self.temperature
            synthetic = self.sampler.extra_negatives(query, self.queue, neg.detach(), generator)
            if synthetic is not None:
                neg = torch.cat([neg, torch.einsum("bd,bsd->bs", query, synthetic) / self.temperature], dim=1)
        mask = self.sampler.pool_mask(neg.detach())
        return self.sampler.loss(pos, neg, self.temperature, mask)

    @torch.no_grad()
    def after_step(self):
        if self._pending_keys is None:
            return
        keys = distributed.all_gather(self._pending_keys)
        size = self.queue.shape[0]
        keys = keys[-size:]
        slots = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % size)
        self._pending_keys = None


def simclr_logits(local: torch.Tensor, gathered: torch.Tensor, offset: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos (2B,), neg (2B, 2N - 2)) logits of one rank's anchors against the global batch.

    `local` is this rank's [view 0; view 1] embeddings (2B rows), `gathered` every rank's, concatenated
    (2N rows, this rank's at rows offset .. offset + 2B). Each anchor's positive is its other view; its
    negatives are the other 2N - 2 embeddings (itself and its positive left out).
    """
    batch = local.shape[0] // 2
    logits = local @ gathered.T / temperature
    rows = torch.arange(2 * batch, device=logits.device)
    own = offset + rows
    partner = offset + (rows + batch) % (2 * batch)
    pos = logits[rows, partner]
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[rows, own] = False
    keep[rows, partner] = False
    return pos, logits[keep].view(2 * batch, gathered.shape[0] - 2)


class SimCLR(ContrastiveMethod):
    """SimCLR: both views are anchors; negatives are the other 2N - 2 embeddings of the global batch
    (gathered from every rank under DDP, with gradients flowing back to their owners)."""

    name = "simclr"

    def loss(self, views, index, generator):
        embeddings = self._forward_encoder(torch.cat([views[0], views[1]])).float()
        gathered = distributed.all_gather_with_grad(embeddings)
        with full_precision(embeddings):
            pos, neg = simclr_logits(embeddings, gathered, distributed.rank() * embeddings.shape[0], self.temperature)
        mask = self.sampler.pool_mask(neg.detach())
        return self.sampler.loss(pos, neg, self.temperature, mask)


METHOD_CLASSES: dict[str, type[ContrastiveMethod]] = {
    "ir": InstanceRecognition,
    "cmc": ContrastiveMultiviewCoding,
    "moco": MomentumContrast,
    "simclr": SimCLR,
}


def build_method(name: str, settings: MethodSettings, sampler: NegativeSampler, num_samples: int,
                 seed: int = 0) -> ContrastiveMethod:
    check_combination(name, sampler)
    generator = torch.Generator().manual_seed(seed)
    if name == "simclr":
        return SimCLR(settings, sampler, num_samples)
    return METHOD_CLASSES[name](settings, sampler, num_samples, generator)
