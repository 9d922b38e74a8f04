"""Every pretraining image path decodes odd files as PIL's convert("RGB"); undecodable files are named or skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.augment import AugmentLaws, DeviceViewPipeline
from pretrain.data import UInt8Views, open_dataset
from pretrain.images import DeviceDecoder, UndecodableImage, jpeg_header, read_rgb, worker_error_message
from ringbench_testing.odd_images import (
    DECODABLE,
    EXIF_ROTATE_90,
    JPEG_KINDS,
    UNDECODABLE,
    max_difference,
    reference_rgb,
    write_odd_images,
)

# torchvision's bundled libjpeg-turbo and Pillow's agree exactly on these files (measured 0); a
# different libjpeg build may round the IDCT or chroma upsampling differently by a level or two.
JPEG_BUILD_TOLERANCE = 2


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_odd_images(tmp_path_factory.mktemp("odd"), undecodable=True)


def _bytes(path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).cpu().numpy()


def test_fixture_files_are_what_they_claim(odd):
    with Image.open(odd["cmyk"]) as image:
        assert image.mode == "CMYK"
    with Image.open(odd["gray"]) as image:
        assert image.mode == "L"
    with Image.open(odd["png"]) as image:
        assert image.format == "PNG" and odd["png"].suffix == ".JPEG"
    with Image.open(odd["exif"]) as image:
        assert image.getexif()[0x0112] == EXIF_ROTATE_90
    with Image.open(odd["progressive"]) as image:
        assert image.info.get("progressive") or image.info.get("progression")


def test_jpeg_header_reads_components_and_progressive(odd):
    assert jpeg_header(odd["cmyk"].read_bytes()).components == 4
    assert jpeg_header(odd["gray"].read_bytes()).components == 1
    rgb = jpeg_header(odd["rgb"].read_bytes())
    assert (rgb.height, rgb.width, rgb.components, rgb.progressive) == (48, 64, 3, False)
    assert jpeg_header(odd["progressive"].read_bytes()).progressive
    assert jpeg_header(odd["png"].read_bytes()) is None
    assert jpeg_header(odd["garbage"].read_bytes()) is None
    assert jpeg_header(odd["rgb"].read_bytes()[:20]) is None  # ends before the frame header


@pytest.mark.parametrize("kind", DECODABLE)
def test_read_rgb_is_pil_convert_and_keeps_the_stored_orientation(odd, kind):
    image = np.asarray(read_rgb(odd[kind]))
    assert image.shape == (48, 64, 3)  # the EXIF file is not rotated to 64 x 48
    assert max_difference(image, reference_rgb(odd[kind])) == 0


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_undecodable_files_are_named(odd, kind):
    with pytest.raises(UndecodableImage, match=str(odd[kind])):
        read_rgb(odd[kind])


def _imagenet(tmp_path, undecodable: bool, classes: int = 2):
    """An ImageNet-layout train folder holding every kind (the first class also the bad files)."""
    root = tmp_path / "imagenet"
    files = write_odd_images(root / "train" / "n00000001", undecodable=undecodable)
    for wnid in range(2, classes + 1):
        write_odd_images(root / "train" / f"n0000000{wnid}")
    return root, files


def test_imagenet_reader_pil_and_feature_paths_decode_every_kind(tmp_path):
    root, files = _imagenet(tmp_path, undecodable=False)
    dataset = open_dataset("imagenet", tmp_path, "train")
    for index, path in enumerate(dataset.files):
        # LabelledImages.image feeds loader=pil and every feature extraction (linear, kNN, monitor)
        assert max_difference(np.asarray(dataset.image(index)), reference_rgb(path)) == 0


def test_uint8_loader_decodes_every_kind_as_pil(tmp_path):
    """loader=cpu: with a whole-image crop at the native size (no JPEG draft, no resampling) the views
    are the decoded pixels themselves."""
    root, files = _imagenet(tmp_path, undecodable=False)
    laws = AugmentLaws(image_size=48, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    square = {}
    for kind, path in files.items():  # a square version of each kind, so the whole image is the crop
        with Image.open(path) as image:
            fmt, mode = image.format, image.mode
        pixels = reference_rgb(path)[:, 8:56]
        out = path.with_name(f"square_{kind}.JPEG")
        source = Image.fromarray(pixels).convert(mode)
        options = {"progressive": True} if kind == "progressive" else {}
        if kind == "exif":
            exif = Image.Exif()
            exif[0x0112] = EXIF_ROTATE_90
            options["exif"] = exif.tobytes()
        source.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}), **options)
        square[kind] = out
    dataset = open_dataset("imagenet", tmp_path, "train")
    views = UInt8Views(dataset, laws, num_views=1)
    checked = 0
    for index, path in enumerate(dataset.files):
        if path.split("/")[-1].startswith("square_"):
            view, _ = views[index]
            assert max_difference(_hwc(view[0]), reference_rgb(path)) == 0, path
            checked += 1
    assert checked == len(DECODABLE)


def test_device_decoder_on_the_cpu_matches_pil(odd):
    decoder = DeviceDecoder()
    kinds = list(DECODABLE)
    images = decoder([_bytes(odd[k]) for k in kinds], "cpu", names=[str(odd[k]) for k in kinds])
    for kind, image in zip(kinds, images):
        difference = max_difference(_hwc(image), reference_rgb(odd[kind]))
        assert difference <= (JPEG_BUILD_TOLERANCE if kind in JPEG_KINDS else 0), (kind, difference)
        assert image.shape == (3, 48, 64)
    # CMYK (4 components) and the PNG never reach the device decoder
    assert decoder.counts.cpu_fallbacks == 2 and decoder.counts.device == len(kinds) - 2


class NvjpegLike:
    """Fails as nvJPEG does: the batched call raises RuntimeError when any file in it is progressive
    (a stand-in for whatever a given nvJPEG build refuses), so does a single such file; it would
    decode CMYK with wrong colours, so it records whether it was ever given a 4-component file."""

    def __init__(self):
        self.calls, self.saw_cmyk, self.saw_non_jpeg = [], False, False

    def __call__(self, data, device):
        from torchvision.io import ImageReadMode, decode_jpeg

        self.calls.append(len(data))
        for item in data:
            header = jpeg_header(item.numpy().tobytes())
            self.saw_non_jpeg |= header is None
            self.saw_cmyk |= header is not None and header.components == 4
            if header is None or header.progressive:
                raise RuntimeError("nvjpegDecodeJpeg failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        return [decode_jpeg(item, mode=ImageReadMode.RGB) for item in data]


def test_gpu_path_falls_back_per_file_to_the_cpu_decoder(odd):
    fake = NvjpegLike()
    decoder = DeviceDecoder(fake)
    kinds = list(DECODABLE) * 2
    images = decoder([_bytes(odd[k]) for k in kinds], "cpu", names=[str(odd[k]) for k in kinds])
    for kind, image in zip(kinds, images):
        assert max_difference(_hwc(image), reference_rgb(odd[kind])) <= JPEG_BUILD_TOLERANCE, kind
    assert not fake.saw_cmyk and not fake.saw_non_jpeg
    assert fake.calls[0] == 8 and fake.calls[1:] == [1] * 8  # one batched try, then each file alone
    counts = decoder.counts
    assert counts.cpu_fallbacks == 6 and counts.device == 6  # cmyk, png, progressive (x2) on the CPU
    assert "4-component JPEG" in counts.examples[0] and "not JPEG data" in counts.examples[1]


def test_gpu_path_fixes_one_channel_output_and_refuses_wrong_sizes(odd):
    def one_channel(data, device):
        return [torch.zeros(1, 48, 64, dtype=torch.uint8) for _ in data]

    images = DeviceDecoder(one_channel)([_bytes(odd["gray"])], "cpu")
    assert images[0].shape == (3, 48, 64)

    def wrong_size(data, device):
        return [torch.zeros(3, 10, 10, dtype=torch.uint8) for _ in data]

    decoder = DeviceDecoder(wrong_size)
    images = decoder([_bytes(odd["rgb"])], "cpu")
    assert max_difference(_hwc(images[0]), reference_rgb(odd["rgb"])) == 0  # PIL's, not the bad output
    assert decoder.counts.cpu_fallbacks == 1


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_gpu_path_names_or_skips_an_undecodable_file(odd, kind):
    items = [_bytes(odd["rgb"]), _bytes(odd[kind])]
    names = [str(odd["rgb"]), str(odd[kind])]
    with pytest.raises(UndecodableImage, match=str(odd[kind])):
        DeviceDecoder(NvjpegLike())(items, "cpu", names)
    skipping = DeviceDecoder(NvjpegLike(), skip_undecodable=True)
    images = skipping(items, "cpu", names)
    assert images[1] is None and skipping.counts.skipped == 1


def test_device_pipeline_replaces_a_skipped_file_by_a_decoded_one(odd):
    pipeline = DeviceViewPipeline(AugmentLaws.recipe(16), (0.5,) * 3, (0.25,) * 3,
                                  decoder=DeviceDecoder(skip_undecodable=True))
    items = [_bytes(odd["garbage"]), _bytes(odd["rgb"]), _bytes(odd["truncated"]), _bytes(odd["gray"])]
    views, index = pipeline.views_and_index(items, torch.tensor([10, 11, 12, 13]), "cpu")
    assert index.tolist() == [11, 11, 13, 13]
    assert [v.shape for v in views] == [(4, 3, 16, 16)] * 2


def test_worker_error_message_keeps_the_last_line():
    error = UndecodableImage("Caught UndecodableImage in DataLoader worker process 0.\nOriginal Traceback "
                             "(most recent call last):\n  File x\npretrain.images.UndecodableImage: /d/a.JPEG: bad")
    assert worker_error_message(error) == "/d/a.JPEG: bad"


# ---------------------------------------------------------------------------------------------- training runs

TINY = {"data.name": "imagenet", "data.image_size": 16, "optim.batch_size": 4, "optim.max_steps_per_epoch": 0,
        "knn_every": 0, "method.queue_size": 8, "optim.epochs": 1, "method.stem": "cifar", "compile": "off"}


def _train(tmp_path, loader, workers=0, **changes):
    from pretrain.recipes import recipe_config
    from pretrain.train import Trainer

    config = recipe_config("digits_moco_nce", TINY | {"data.root": str(tmp_path), "loader": loader,
                                                      "data.workers": workers} | changes)
    trainer = Trainer(config, tmp_path / f"run-{loader}-{workers}", show_progress=False)
    trainer.fit()
    return [json.loads(line) for line in (trainer.out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("loader,workers", [("pil", 0), ("cpu", 1), ("gpu", 0)])
def test_an_undecodable_file_stops_the_run_naming_it(tmp_path, loader, workers):
    root, files = _imagenet(tmp_path, undecodable=True)
    with pytest.raises(UndecodableImage) as raised:
        _train(tmp_path, loader, workers)
    message = str(raised.value)
    assert any(str(files[kind]) in message for kind in UNDECODABLE), message
    assert "Traceback" not in message


@pytest.mark.slow
@pytest.mark.parametrize("loader,workers", [("pil", 0), ("cpu", 1), ("gpu", 0)])
def test_skip_undecodable_skips_and_counts(tmp_path, loader, workers, capfd):
    """Two epochs over every kind plus the two bad files, through each loader (the gpu one on the CPU)."""
    _imagenet(tmp_path, undecodable=True, classes=1)  # 8 files: 2 steps of 4
    records = _train(tmp_path, loader, workers, **{"optim.epochs": 2, "data.skip_undecodable": True})
    assert [r["skipped_undecodable"] for r in records] == [2, 2]  # both bad files, each epoch
    assert all(np.isfinite(r["loss"]) and r["steps"] == 2 for r in records)
    assert all(r["loader"] == loader and r["precision"] == "fp32" and r["compile"] == "off" for r in records)
    assert "fallbacks" not in records[0]
    if loader == "gpu":  # the CMYK and PNG files went to PIL, each epoch
        assert [r["decode_cpu_fallbacks"] for r in records] == [2, 2]
    err = capfd.readouterr().err
    assert "truncated.JPEG" in err and "garbage.JPEG" in err
    assert err.count("epoch 1: skipped 2 undecodable files") == 1
