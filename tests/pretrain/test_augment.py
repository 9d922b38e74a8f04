"""The batched uint8 augmentation: torchvision's laws for the parameters, torchvision's results for
fixed parameters (tolerances stated per test), and the CPU and GPU paths run on CPU."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from pretrain.augment import (
    AugmentLaws,
    BatchColourAugment,
    ColourParams,
    DeviceViewPipeline,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    colour_augment,
    crop_flip_views,
    gaussian_blur,
    grayscale,
    resized_crops,
    sample_colour_params,
    sample_crop_boxes,
)

P_FLOOR = 1e-3  # a law test fails when the two samples differ at this significance


def torchvision_boxes(height, width, count, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    image = torch.empty(3, height, width)
    return torch.tensor([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(count)])


@pytest.mark.parametrize("height,width", [(375, 500), (100, 400), (500, 333)])
def test_crop_boxes_follow_random_resized_crop_law(height, width):
    torch.manual_seed(0)
    reference = torchvision_boxes(height, width, 3000)
    ours = sample_crop_boxes(torch.full((3000,), height), torch.full((3000,), width), (0.2, 1.0), (3 / 4, 4 / 3),
                             torch.Generator().manual_seed(1))
    assert ((ours[:, 2] >= 1) & (ours[:, 0] + ours[:, 2] <= height)).all()
    assert ((ours[:, 3] >= 1) & (ours[:, 1] + ours[:, 3] <= width)).all()

    def features(boxes):
        top, left, h, w = boxes.double().unbind(1)
        return {"area": h * w / (height * width), "aspect": w / h,
                "top": top / (height - h + 1), "left": left / (width - w + 1)}

    for name, values in features(ours).items():
        p = stats.ks_2samp(values.numpy(), features(reference)[name].numpy()).pvalue
        assert p > P_FLOOR, (name, p)


def test_crop_boxes_fall_back_to_torchvision_centre_crop():
    # a 60 x 600 strip: no proposal of >= 20% of the area fits, so every crop is the clamped centre one
    reference = torchvision_boxes(60, 600, 5)
    ours = sample_crop_boxes(torch.full((5,), 60), torch.full((5,), 600), (0.2, 1.0), (3 / 4, 4 / 3))
    assert torch.equal(ours, reference)
    assert ours[0].tolist() == [0, 260, 60, 80]


def test_colour_parameters_follow_torchvision_laws():
    torch.manual_seed(0)
    count = 3000
    laws = AugmentLaws.recipe(224)
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    reference = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
                 for _ in range(count)]
    ours = sample_colour_params(count, laws, torch.Generator().manual_seed(2))
    for column in range(4):
        theirs = np.array([float(item[column + 1]) for item in reference])
        p = stats.ks_2samp(ours.factors[:, column].numpy(), theirs).pvalue
        assert p > P_FLOOR, (column, p)
    # the order of the four operations: a uniform permutation, like torch.randperm(4)
    def code(order):
        return sum(int(v) * 4**i for i, v in enumerate(order))
    ours_codes = [code(row) for row in ours.order.tolist()]
    theirs_codes = [code(item[0].tolist()) for item in reference]
    table = np.array([[ours_codes.count(c) for c in sorted(set(theirs_codes))],
                      [theirs_codes.count(c) for c in sorted(set(theirs_codes))]])
    assert table.shape[1] == 24 and table.sum() == 2 * count
    assert stats.chi2_contingency(table).pvalue > P_FLOOR
    for flags, p_expected in ((ours.jitter, 0.8), (ours.grayscale, 0.2), (ours.blur, 0.5)):
        assert stats.binomtest(int(flags.sum()), count, p_expected).pvalue > P_FLOOR
    sigmas = [T.GaussianBlur.get_params(0.1, 2.0) for _ in range(count)]
    assert stats.ks_2samp(ours.sigma.numpy(), np.array(sigmas)).pvalue > P_FLOOR
    assert laws.blur_kernel == 23  # the recipe's ~10% of the side, odd
    small = sample_colour_params(100, AugmentLaws.recipe(32))
    assert not small.blur.any()  # the recipe blurs only at >= 64 px


def test_batched_colour_ops_equal_torchvision_functional_ops():
    """Tolerance: 1e-6 absolute on [0, 1] floats (the same formulas, float rounding only)."""
    images = torch.rand(4, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    cases = [(adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.3, 0.9]),
             (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.3, 0.9]),
             (adjust_saturation, TF.adjust_saturation, [0.6, 1.0, 1.4, 0.7]),
             (adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.05, 0.1])]
    for ours, theirs, factors in cases:
        batched = ours(images.clone(), torch.tensor(factors))
        single = torch.stack([theirs(images[i], factors[i]) for i in range(4)])
        assert (batched - single).abs().max() < 2e-6, ours.__name__
    assert torch.allclose(grayscale(images), TF.rgb_to_grayscale(images), atol=1e-7)
    sigma = torch.tensor([0.1, 0.5, 1.3, 2.0])
    blurred = gaussian_blur(images, 7, sigma)
    single = torch.stack([TF.gaussian_blur(images[i], [7, 7], [float(sigma[i])] * 2) for i in range(4)])
    assert (blurred - single).abs().max() < 1e-6


def test_colour_augment_equals_torchvision_ops_in_each_samples_order():
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    laws = AugmentLaws.recipe(64)
    params = sample_colour_params(6, laws, torch.Generator().manual_seed(5))
    params = ColourParams(torch.tensor([True, True, True, True, False, True]), params.factors, params.order,
                          torch.tensor([False, True, False, False, False, False]),
                          torch.tensor([True, False, False, True, False, False]), params.sigma)
    out = colour_augment(images, params, laws)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for row in range(6):
        expected = images[row]
        if params.jitter[row]:
            for op in params.order[row].tolist():
                expected = ops[op](expected, float(params.factors[row, op]))
        if params.grayscale[row]:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        if params.blur[row]:
            sigma = float(params.sigma[row])
            expected = TF.gaussian_blur(expected, [laws.blur_kernel] * 2, [sigma, sigma])
        assert (out[row] - expected).abs().max() < 1e-5, row


def _smooth(height, width):
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([0.5 + 0.5 * torch.sin(6 * x), y, x * y])


def test_roi_align_crops_match_torchvision_resized_crop():
    """Tolerance: on smooth images 0.005 max absolute (0-1 scale, about one grey level; the largest at the borders); on white noise, where the two
    antialiasing filters (area average vs torchvision's triangle) differ most, 0.03 mean absolute at
    4.7x shrinking (the noise itself has a standard deviation of 0.29)."""
    boxes = torch.tensor([[10, 20, 200, 300], [0, 0, 100, 80], [50, 60, 300, 300]])  # shrink, enlarge, shrink
    smooth = _smooth(375, 500).expand(3, -1, -1, -1).contiguous()
    noise = torch.rand(3, 3, 375, 500, generator=torch.Generator().manual_seed(6))
    for images, bound, reduce in ((smooth, 0.005, torch.max), (noise, 0.03, torch.mean)):
        ours = resized_crops(images, boxes, torch.arange(3), 64)
        theirs = torch.stack([TF.resized_crop(images[i], *boxes[i].tolist(), [64, 64], antialias=True) for i in range(3)])
        assert reduce((ours - theirs).abs()) < bound
    flipped = resized_crops(smooth, boxes, torch.arange(3), 64, flips=torch.tensor([True, False, True]))
    plain = resized_crops(smooth, boxes, torch.arange(3), 64)
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1])


def _jpeg(image: Image.Image, path=None) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer)


def _photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    smooth = (_smooth(height, width).permute(1, 2, 0).numpy() * 255)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8))


def test_cpu_stage_equals_torchvision_pil_crop_and_flip():
    """Without DCT scaling, the uint8 views are exactly torchvision's PIL resized_crop + flip."""
    laws = AugmentLaws.recipe(64)
    image = _photo(200, 150)
    views = crop_flip_views(_jpeg(image), laws, 2, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    boxes = sample_crop_boxes(torch.full((2,), 150), torch.full((2,), 200), laws.crop_scale, laws.crop_ratio, generator)
    flips = torch.rand(2, generator=generator) < 0.5
    decoded = _jpeg(image).convert("RGB")
    for view in range(2):
        crop = TF.resized_crop(decoded, *boxes[view].tolist(), [64, 64], antialias=True)
        if flips[view]:
            crop = TF.horizontal_flip(crop)
        expected = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
        assert torch.equal(views[view], expected)


def test_cpu_stage_drafts_large_jpegs_and_stays_close_to_the_full_decode():
    """A crop >= 2x the output side is decoded at reduced size: mean difference < 2 grey levels."""
    laws = AugmentLaws(64, crop_scale=(0.9, 1.0), hflip=False)
    image = _photo(640, 480, seed=1)
    drafted = _jpeg(image)
    views = crop_flip_views(drafted, laws, 2, torch.Generator().manual_seed(8))
    assert drafted.size[0] < 640  # PIL decoded a DCT-scaled image
    boxes = sample_crop_boxes(torch.full((2,), 480), torch.full((2,), 640), laws.crop_scale, laws.crop_ratio,
                              torch.Generator().manual_seed(8))
    full = _jpeg(image).convert("RGB")
    for view in range(2):
        crop = TF.resized_crop(full, *boxes[view].tolist(), [64, 64], antialias=True)
        expected = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
        assert (views[view].float() - expected.float()).abs().mean() < 2.0


def test_device_pipeline_on_cpu_decodes_crops_and_normalises():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = _photo(96, 96, seed=2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    decoded = torch.from_numpy(np.asarray(_jpeg(image).convert("RGB")).copy()).permute(2, 0, 1)
    # identity laws: the whole square image, no colour change: the output is the normalised resize
    laws = AugmentLaws(48, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, jitter_p=0.0,
                       grayscale_p=0.0, blur=False)
    views = DeviceViewPipeline(laws, mean, std, num_views=2)([encoded, decoded], "cpu")
    assert len(views) == 2 and views[0].shape == (2, 3, 48, 48)
    expected = TF.resize(decoded.float() / 255, [48, 48], antialias=True)
    expected = TF.normalize(expected, list(mean), list(std))
    for view in views:
        for row in range(2):
            assert (view[row] - expected).abs().mean() < 0.02
    # recipe laws: finite, and the colour step really changes pixels
    views = DeviceViewPipeline(AugmentLaws.recipe(48), mean, std)([encoded] * 8, "cpu", torch.Generator().manual_seed(9))
    assert all(torch.isfinite(view).all() for view in views)
    assert not torch.allclose(views[0], views[1])


def test_batch_colour_augment_normalises_like_to_tensor_and_normalize():
    views = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    laws = AugmentLaws(8, jitter_p=0.0, grayscale_p=0.0, blur=False)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = BatchColourAugment(laws, mean, std)(views)
    reference = torch.stack([T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(v.permute(1, 2, 0).numpy())))
                             for v in views])
    assert torch.equal(out, reference)


def test_laws_keep_the_recipes_blur_rule():
    assert not AugmentLaws.recipe(32).blur_on and AugmentLaws.recipe(64).blur_on
    assert AugmentLaws.recipe(96, crop_min_scale=0.5).crop_scale == (0.5, 1.0)
    assert math.isclose(AugmentLaws.recipe(224).crop_ratio[1], 4 / 3)


def test_cmc_laws_are_crop_and_flip_only():
    laws = AugmentLaws.recipe(96, crop_min_scale=0.3, augmentation="cmc")
    params = sample_colour_params(500, laws)
    assert not (params.jitter.any() or params.grayscale.any() or params.blur.any())
    assert laws.crop_scale == (0.3, 1.0) and laws.hflip
    with pytest.raises(ValueError, match="unknown augmentation 'simclr'"):
        AugmentLaws.recipe(96, augmentation="simclr")
