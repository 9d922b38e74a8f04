"""Input views (pretrain.views), CMC's augmentation, and the views a CMC run records and monitors."""

import numpy as np
import pytest
import torch
from cmc_encoders import MEAN, STD
from PIL import Image
from torchvision import transforms as T

from pretrain.colour import lab_views, rgb_to_lab
from pretrain.data import augmentation_for, pretrain_transform
from pretrain.recipes import RECIPES, recipe_config
from pretrain.views import AB_CENTRE, AB_SCALE, view_input, view_pixels, view_pixels_uint8

COLOUR_OPS = (T.ColorJitter, T.RandomGrayscale, T.Grayscale, T.GaussianBlur, T.RandomApply)


def normalised(rgb):
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_lightness_view_keeps_the_lightness_and_removes_the_colour():
    rgb = torch.rand(3, 3, 6, 6)
    grey = view_input(normalised(rgb), "lightness", MEAN, STD) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    lab, lab_grey = rgb_to_lab(rgb), rgb_to_lab(grey)
    assert torch.allclose(lab_grey[:, 0], lab[:, 0], atol=0.05)  # lossless in L: grey is always in gamut
    assert lab_grey[:, 1:].abs().max() < 0.05
    assert torch.allclose(view_pixels(rgb, "lightness"), grey, atol=1e-5)
    assert torch.equal(view_input(normalised(rgb), "rgb", MEAN, STD), normalised(rgb))


def test_ab_view_carries_saturated_colours_unclamped():
    # pure red, green, blue, yellow: far outside the gamut at L = 50, where rendering back to RGB clamps
    rgb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]).T.reshape(1, 3, 2, 2)
    ab = view_input(normalised(rgb), "lab_ab", MEAN, STD)
    assert ab.shape == (1, 2, 2, 2)
    lab = rgb_to_lab(rgb)
    back = ab * torch.tensor(AB_SCALE).view(1, 2, 1, 1) + torch.tensor(AB_CENTRE).view(1, 2, 1, 1)
    assert torch.allclose(back, lab[:, 1:], atol=1e-3)
    _, rendered = lab_views(rgb)  # the former RGB rendering of the ab view loses these colours
    assert (rgb_to_lab(rendered)[:, 1:] - lab[:, 1:]).abs().max() > 10
    assert ab.abs().max() <= 1.0 + 1e-4  # CMC's range normalisation maps sRGB's ab into [-1, 1]


def test_view_pixels_on_uint8_arrays_matches_the_tensor_version():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = view_pixels_uint8(image, "lightness")
    assert grey.dtype == np.uint8 and grey.shape == image.shape
    assert np.abs(grey.astype(int)[..., 0] - grey.astype(int)[..., 2]).max() <= 1
    expected = view_pixels(torch.from_numpy(image).permute(2, 0, 1).float() / 255, "lightness")
    assert np.abs(grey.astype(float) / 255 - expected.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    assert view_pixels_uint8(image, "rgb") is image
    with pytest.raises(ValueError, match="lab_ab.*2 channels"):
        view_pixels(torch.rand(3, 2, 2), "lab_ab")


def test_cmc_augmentation_has_no_colour_operation_before_the_split():
    transform = pretrain_transform(32, MEAN, STD, crop_min_scale=0.2, hflip=True, augmentation="cmc")
    kinds = [type(step) for step in transform.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert not any(issubclass(kind, COLOUR_OPS) for kind in kinds)
    # a flat colour comes out as exactly that colour on every draw (jitter or grayscale would move it)
    colour = (200, 40, 90)
    image = Image.new("RGB", (48, 48), colour)
    torch.manual_seed(0)
    for _ in range(30):
        out = transform(image) * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        assert torch.allclose(out, torch.tensor(colour).view(3, 1, 1) / 255.0, atol=1e-5)
    mocov2 = [type(step) for step in pretrain_transform(32, MEAN, STD, augmentation="mocov2").transforms]
    assert T.RandomGrayscale in mocov2 and T.RandomApply in mocov2


def test_every_cmc_recipe_pretrains_with_cmc_augmentation():
    cmc = [name for name, recipe in RECIPES.items() if recipe.get("method.name") == "cmc"]
    assert len(cmc) == 3 * 4 + 2  # nce, ring, ring_released x 4 datasets + the two digits recipes
    for name in RECIPES:
        config = recipe_config(name)
        assert config.resolved_augmentation() == ("cmc" if name in cmc else "mocov2"), name
    assert recipe_config("cmc_nce_imagenet").data.crop_min_scale == 0.08  # CMC's crop_low
    assert augmentation_for("cmc") == "cmc" and augmentation_for("cmc", "mocov2") == "mocov2"
    with pytest.raises(ValueError, match="unknown augmentation 'autoaugment'"):
        augmentation_for("moco", "autoaugment")


def test_cmc_run_trains_monitors_and_exports_both_views(tmp_path):
    from pretrain.checkpoint import load_encoder
    from pretrain.data import open_dataset
    from pretrain.train import Trainer

    config = recipe_config("digits_cmc_nce", {"data.image_size": 16, "optim.batch_size": 16,
                                              "optim.max_steps_per_epoch": 1, "optim.epochs": 1, "knn_every": 0,
                                              "method.num_negatives": 32, "data.workers": 0})
    trainer = Trainer(config, tmp_path / "run", show_progress=False, allow_distributed=False)
    assert [type(step) for step in trainer.transform.transforms][:2] == [T.RandomResizedCrop, T.ToTensor]
    path = trainer.fit()
    # the kNN monitor embeds with CMC's own features: L on its view + ab on its view
    images = open_dataset("digits", split="test", image_size=16)
    subset = type("Few", (), {"labels": images.labels[:6], "__len__": lambda self: 6,
                              "image": lambda self, i: images.image(i)})()
    monitored = torch.from_numpy(trainer.features(subset))
    encoder = load_encoder(path)
    assert encoder.metadata["input_view"] == "lightness" and encoder.metadata["extra_encoders"] == {"ab": "lab_ab"}
    assert encoder.metadata["knn_features"] == "l+ab" and encoder.feature_dim == 1024
    from pretrain.data import eval_transform

    transform = eval_transform(16, trainer.mean, trainer.std)
    batch = torch.stack([transform(images.image(i)) for i in range(6)])
    with torch.no_grad():
        lightness = trainer.method.encoder.backbone.eval()(view_input(batch, "lightness", trainer.mean, trainer.std))
        colour = trainer.method.colour_encoder.backbone.eval()(view_input(batch, "lab_ab", trainer.mean, trainer.std))
        rgb = trainer.method.encoder.backbone(batch)
        from_file = encoder.model(batch)
    assert torch.allclose(monitored, torch.cat([lightness, colour], 1), atol=1e-4)
    assert torch.allclose(from_file, monitored, atol=1e-4)
    assert not torch.allclose(lightness, rgb, atol=1e-2)  # the view matters for these weights
