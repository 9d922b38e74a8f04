"""MoCo v2 / SimCLR augmentation as batched tensor operations on uint8 images.

The recipe (`pretrain.data.pretrain_transform`, torchvision's PIL pipeline) is: RandomResizedCrop,
ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 in a random order, RandomGrayscale p 0.2, GaussianBlur
p 0.5 (sigma U(0.1, 2), at >= 64 px), horizontal flip, normalise. Here the same laws are drawn per
sample as tensors (`sample_*`), and each step runs once for the whole batch, on whatever device holds
it (`BatchColourAugment`, `resized_crops`): no per-image Python loop, so a GPU runs a handful of
kernels per batch instead of one per image and operation.

Two input paths feed it (`pretrain.train`, option `loader`):
- cpu: worker processes decode JPEGs at reduced size when the crop allows (PIL `draft`), crop, resize
  and flip on uint8 (`crop_flip_views`); colour, grayscale, blur and normalisation run on the device.
- gpu: workers only read file bytes; the device decodes the batch (nvJPEG through
  `torchvision.io.decode_jpeg(device="cuda")`), crops every view with one `roi_align` and applies the
  same colour step.
Flip commutes with colour, grayscale and the symmetric blur, so it is applied with the crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


@dataclass(frozen=True)
class AugmentLaws:
    """The recipe's random laws (defaults: MoCo v2 / SimCLR as in `pretrain.data.pretrain_transform`)."""

    image_size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur: bool | None = None  # None: only at >= 64 px, as the recipe
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @property
    def blur_on(self) -> bool:
        return self.image_size >= 64 if self.blur is None else self.blur

    @property
    def blur_kernel(self) -> int:
        return max(3, int(0.1 * self.image_size) // 2 * 2 + 1)

    @classmethod
    def recipe(cls, image_size: int, crop_min_scale: float = 0.2, hflip: bool = True,
               blur: bool | None = None, augmentation: str = "mocov2") -> AugmentLaws:
        """The laws of `pretrain.data.pretrain_transform`: mocov2, or cmc (crop and flip only)."""
        if augmentation == "cmc":
            return cls(image_size, crop_scale=(crop_min_scale, 1.0), hflip=hflip, jitter_p=0.0, grayscale_p=0.0,
                       blur=False)
        if augmentation != "mocov2":
            raise ValueError(f"unknown augmentation {augmentation!r}; valid: mocov2, cmc")
        return cls(image_size, crop_scale=(crop_min_scale, 1.0), hflip=hflip, blur=blur)


# ---------------------------------------------------------------------------------------------- parameter laws


def _uniform(shape, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def sample_crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator | None = None, attempts: int = 10) -> torch.Tensor:
    """(N, 4) int64 crops (top, left, height, width), one per image of size (heights[n], widths[n]).

    torchvision's RandomResizedCrop law, vectorised: up to ten (area, log-ratio) proposals per image,
    the first that fits is placed uniformly; if none fits, the centre crop clamped to the ratio range.
    """
    heights, widths = heights.to(torch.int64).flatten(), widths.to(torch.int64).flatten()
    count = heights.shape[0]
    area = (heights * widths).to(torch.float64).unsqueeze(1)
    target = area * _uniform((count, attempts), scale[0], scale[1], generator)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(_uniform((count, attempts), log_low, log_high, generator))
    crop_w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)
    crop_h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
    fits = (crop_w > 0) & (crop_w <= widths.unsqueeze(1)) & (crop_h > 0) & (crop_h <= heights.unsqueeze(1))
    first = torch.where(fits.any(dim=1), fits.to(torch.int8).argmax(dim=1), -1)
    chosen = first.clamp_min(0).unsqueeze(1)
    h = crop_h.gather(1, chosen).squeeze(1)
    w = crop_w.gather(1, chosen).squeeze(1)
    position = torch.rand((count, 2), generator=generator, dtype=torch.float64)
    top = torch.floor(position[:, 0] * (heights - h + 1).clamp_min(1)).to(torch.int64)
    left = torch.floor(position[:, 1] * (widths - w + 1).clamp_min(1)).to(torch.int64)
    fallback = first < 0
    if bool(fallback.any()):
        in_ratio = widths.to(torch.float64) / heights.to(torch.float64)
        low_w, low_h = widths, torch.round(widths / min(ratio)).to(torch.int64)
        high_h, high_w = heights, torch.round(heights * max(ratio)).to(torch.int64)
        centre_w = torch.where(in_ratio < min(ratio), low_w, torch.where(in_ratio > max(ratio), high_w, widths))
        centre_h = torch.where(in_ratio < min(ratio), low_h, torch.where(in_ratio > max(ratio), high_h, heights))
        h, w = torch.where(fallback, centre_h, h), torch.where(fallback, centre_w, w)
        top = torch.where(fallback, (heights - h) // 2, top)
        left = torch.where(fallback, (widths - w) // 2, left)
    return torch.stack([top, left, h, w], dim=1)


@dataclass
class ColourParams:
    """Per-sample colour parameters of a batch (CPU tensors; `to` moves them)."""

    jitter: torch.Tensor  # bool (B,): ColorJitter applied
    factors: torch.Tensor  # float (B, 4): brightness, contrast, saturation factors, hue shift
    order: torch.Tensor  # int64 (B, 4): the order of the four jitter operations (torch.randperm(4) each)
    grayscale: torch.Tensor  # bool (B,)
    blur: torch.Tensor  # bool (B,)
    sigma: torch.Tensor  # float (B,)

    def to(self, device) -> ColourParams:
        if torch.device(device) == self.jitter.device:
            return self
        return ColourParams(*(getattr(self, name).to(device, non_blocking=True) for name in
                              ("jitter", "factors", "order", "grayscale", "blur", "sigma")))


def sample_colour_params(count: int, laws: AugmentLaws, generator: torch.Generator | None = None) -> ColourParams:
    """Draw the colour laws of the recipe for `count` samples (on the CPU generator)."""
    brightness, contrast, saturation, hue = laws.jitter
    factors = torch.stack([
        _uniform(count, max(0.0, 1 - brightness), 1 + brightness, generator),
        _uniform(count, max(0.0, 1 - contrast), 1 + contrast, generator),
        _uniform(count, max(0.0, 1 - saturation), 1 + saturation, generator),
        _uniform(count, -hue, hue, generator),
    ], dim=1).to(torch.float32)
    order = torch.rand((count, 4), generator=generator).argsort(dim=1)  # a uniform permutation per sample
    jitter = torch.rand(count, generator=generator) < laws.jitter_p
    grayscale = torch.rand(count, generator=generator) < laws.grayscale_p
    if laws.blur_on:
        blur = torch.rand(count, generator=generator) < laws.blur_p
        sigma = _uniform(count, laws.blur_sigma[0], laws.blur_sigma[1], generator).to(torch.float32)
    else:
        blur, sigma = torch.zeros(count, dtype=torch.bool), torch.zeros(count)
    return ColourParams(jitter, factors, order, grayscale, blur, sigma)


# ---------------------------------------------------------------------------------------------- batched ops
# Images are float (B, 3, H, W) in [0, 1]; every factor is a (B,) tensor; one call covers the batch.


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma with torchvision's weights."""
    red, green, blue = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = _per_sample(factor)
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (fraction of a turn, per sample) through HSV, as torchvision's tensor op."""
    red, green, blue = images.unbind(dim=1)
    maximum, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    chroma = maximum - minimum
    grey = chroma == 0
    saturation = chroma / torch.where(grey, torch.ones_like(maximum), maximum)
    safe = torch.where(grey, torch.ones_like(chroma), chroma)
    red_c, green_c, blue_c = (maximum - red) / safe, (maximum - green) / safe, (maximum - blue) / safe
    hue = torch.where(maximum == red, blue_c - green_c,
                      torch.where(maximum == green, 2.0 + red_c - blue_c, 4.0 + green_c - red_c))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.to(torch.int64) % 6
    p = (maximum * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (maximum * (1.0 - saturation * fraction)).clamp(0.0, 1.0)
    t = (maximum * (1.0 - saturation * (1.0 - fraction))).clamp(0.0, 1.0)
    v = maximum
    table = torch.stack([
        torch.stack([v, q, p, p, t, v], dim=1),
        torch.stack([t, v, v, q, p, p], dim=1),
        torch.stack([p, p, t, v, v, q], dim=1),
    ], dim=1)  # (B, 3, 6, H, W)
    return table.gather(2, sector.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)).squeeze(2)


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma and reflect padding (torchvision's), two grouped
    convolutions for the whole batch."""
    batch, channels, height, width = images.shape
    half = (kernel - 1) / 2
    offsets = torch.linspace(-half, half, kernel, device=images.device, dtype=images.dtype)
    weights = torch.exp(-0.5 * (offsets.unsqueeze(0) / sigma.to(images.dtype).unsqueeze(1)) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, k)
    pad = kernel // 2
    flat = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, weights.view(-1, 1, 1, kernel), groups=batch * channels)
    flat = F.conv2d(flat, weights.view(-1, 1, kernel, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def colour_augment(images: torch.Tensor, params: ColourParams, laws: AugmentLaws) -> torch.Tensor:
    """Jitter (in each sample's own order), grayscale and blur of a float [0, 1] batch, per the params.

    Four rounds; in round r each jittered sample applies its r-th operation, so every operation runs
    once per round on the sub-batch that uses it then (index lists come from the CPU parameters: no
    device synchronisation). Grayscale and blur run once on their sub-batches.
    """
    params_cpu = params
    params = params.to(images.device)
    images = images.clone()

    def subset(mask: torch.Tensor) -> torch.Tensor | None:
        rows = mask.nonzero().flatten()
        return rows.to(images.device, non_blocking=True) if rows.numel() else None

    for step in range(4):
        for op_index, operation in enumerate(_JITTER_OPS):
            rows = subset(params_cpu.jitter & (params_cpu.order[:, step] == op_index))
            if rows is not None:
                images[rows] = operation(images[rows], params.factors[rows, op_index])
    rows = subset(params_cpu.grayscale)
    if rows is not None:
        images[rows] = grayscale(images[rows]).expand(-1, 3, -1, -1)
    rows = subset(params_cpu.blur)
    if rows is not None:
        images[rows] = gaussian_blur(images[rows], laws.blur_kernel, params.sigma[rows])
    return images


class BatchColourAugment:
    """uint8 views on the device -> normalised float views: colour, grayscale, blur, normalisation.

    The parameters are drawn on a CPU generator (by default torch's global one, whose state the
    training state already saves, so a resumed run continues the same stream).
    """

    def __init__(self, laws: AugmentLaws, mean: Sequence[float], std: Sequence[float]):
        self.laws = laws
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 views, or float views already in [0, 1] -> augmented, normalised float views."""
        images = to_unit_float(views) if views.dtype == torch.uint8 else views
        params = sample_colour_params(images.shape[0], self.laws, generator)
        images = colour_augment(images, params, self.laws)
        return normalise(images, self.mean, self.std)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std, in the same float operations as torchvision's ToTensor + Normalize."""
    return images.sub_(mean.to(images.device)).div_(std.to(images.device))


def to_unit_float(views: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] as torchvision's ToTensor computes it."""
    return views.float().div_(255.0)


# ---------------------------------------------------------------------------------------------- crops


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, size: int,
                  flips: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, size, size) crops of a padded float batch in one `roi_align`.

    `boxes` (N, 4) are (top, left, height, width) in pixels of image `batch_index[n]`; each output pixel
    averages ceil(crop / size) x ceil(crop / size) bilinear samples of its bin (an area filter when
    shrinking, plain bilinear when enlarging, like an antialiased resize).
    """
    from torchvision.ops import roi_align

    boxes = boxes.to(images.device, torch.float32)
    top, left, height, width = boxes.unbind(dim=1)
    rois = torch.stack([batch_index.to(images.device, torch.float32), left, top, left + width, top + height], dim=1)
    crops = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if flips is not None:
        crops = torch.where(flips.to(images.device).view(-1, 1, 1, 1), crops.flip(-1), crops)
    return crops


def pad_batch(images: Sequence[torch.Tensor], dtype=torch.float32) -> torch.Tensor:
    """Stack (3, H_i, W_i) uint8 images into one (N, 3, max H, max W) tensor, zero padded."""
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    batch = images[0].new_zeros((len(images), 3, height, width), dtype=dtype)
    for slot, image in enumerate(images):
        batch[slot, :, :image.shape[-2], :image.shape[-1]] = image
    return batch


# ---------------------------------------------------------------------------------------------- CPU stage


def _draft_factor(boxes: torch.Tensor, size: int) -> int:
    """Largest JPEG DCT scaling (1, 2, 4, 8) that keeps every crop at least `size` pixels on each side."""
    smallest = int(boxes[:, 2:].min())
    factor = 1
    while factor < 8 and smallest // (factor * 2) >= size:
        factor *= 2
    return factor


def crop_flip_views(image: Image.Image, laws: AugmentLaws, num_views: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_views, 3, size, size) uint8 views of one (lazily opened) image: crop, resize, flip.

    The crops follow RandomResizedCrop's law on the full-size image; a JPEG is then decoded once at the
    largest DCT reduction (PIL `draft`) that leaves every crop at least `size` pixels, and each crop is
    resized by PIL's bilinear filter (antialiased, as torchvision's PIL path) straight from its box.
    """
    width, height = image.size
    boxes = sample_crop_boxes(torch.full((num_views,), height), torch.full((num_views,), width),
                              laws.crop_scale, laws.crop_ratio, generator)
    flips = (torch.rand(num_views, generator=generator) < 0.5) if laws.hflip else torch.zeros(num_views, dtype=torch.bool)
    scale_x = scale_y = 1.0
    if image.format == "JPEG":
        factor = _draft_factor(boxes, laws.image_size)
        if factor > 1:
            image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
            scale_x, scale_y = image.size[0] / width, image.size[1] / height
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = laws.image_size
    out = np.empty((num_views, size, size, 3), dtype=np.uint8)
    for view, (top, left, h, w) in enumerate(boxes.tolist()):
        if scale_x == scale_y == 1.0:  # exactly torchvision's PIL resized_crop
            crop = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
        else:  # the crop's box in the DCT-scaled image, fractional
            box = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
            crop = image.resize((size, size), Image.BILINEAR, box=box)
        if flips[view]:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[view] = np.asarray(crop)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------- GPU path


def decode_batch(items: Sequence[torch.Tensor], device: torch.device | str,
                 names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """(3, H, W) uint8 images on `device`: 1-D byte tensors are files decoded in one batched call
    (nvJPEG on CUDA), each file the device decoder cannot read decoded by PIL instead (see
    `pretrain.images.DeviceDecoder`); others are already decoded and only moved."""
    from pretrain.images import DeviceDecoder

    return DeviceDecoder()(items, device, names)


class DeviceViewPipeline:
    """The GPU path: a batch of encoded (or decoded) uint8 images -> `num_views` augmented, normalised
    (B, 3, size, size) float batches, every step batched on `device` (decode, one roi_align for all
    views' crops and flips, colour, grayscale, blur, normalisation). Parameters come from a CPU
    generator (torch's global one by default) with the recipe's laws."""

    def __init__(self, laws: AugmentLaws, mean: Sequence[float], std: Sequence[float], num_views: int = 2,
                 decoder=None):
        from pretrain.images import DeviceDecoder

        self.laws, self.num_views = laws, num_views
        self.colour = BatchColourAugment(laws, mean, std)
        self.decoder = decoder or DeviceDecoder()  # its .counts: device decodes, CPU fallbacks, skips

    def __call__(self, items: Sequence[torch.Tensor], device: torch.device | str,
                 generator: torch.Generator | None = None, names: Sequence[str] | None = None) -> list[torch.Tensor]:
        views, _ = self.views_and_index(items, torch.arange(len(items)), device, generator, names)
        return views

    def views_and_index(self, items: Sequence[torch.Tensor], index: torch.Tensor, device: torch.device | str,
                        generator: torch.Generator | None = None, names: Sequence[str] | None = None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The views and the dataset index of each row. A file skipped as undecodable (the decoder's
        skip_undecodable) is replaced by the next decoded image of the batch, with that image's index."""
        decoded = self.decoder(items, device, names)
        kept = [slot for slot, image in enumerate(decoded) if image is not None]
        if not kept:
            from pretrain.images import UndecodableImage

            raise UndecodableImage(f"no file of a batch of {len(items)} decodes (first: "
                                   f"{names[0] if names else 'image 0'})")
        if len(kept) < len(decoded):
            stand_in = [slot if decoded[slot] is not None else next((k for k in kept if k > slot), kept[0])
                        for slot in range(len(decoded))]
            decoded = [decoded[slot] for slot in stand_in]
            index = index[torch.tensor(stand_in)]
        images = decoded
        count, views = len(images), self.num_views
        heights = torch.tensor([image.shape[-2] for image in images]).repeat(views)
        widths = torch.tensor([image.shape[-1] for image in images]).repeat(views)
        boxes = sample_crop_boxes(heights, widths, self.laws.crop_scale, self.laws.crop_ratio, generator)
        flips = (torch.rand(count * views, generator=generator) < 0.5) if self.laws.hflip else None
        padded = pad_batch(images)
        crops = resized_crops(padded, boxes, torch.arange(count).repeat(views), self.laws.image_size, flips)
        out = self.colour(crops.div_(255.0), generator)
        return list(out.split(count)), index
