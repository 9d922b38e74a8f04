"""The Meta-Dataset reader decodes the odd files real records may hold as PIL's convert("RGB") does,
within the IDCT rounding of TensorFlow's JPEG decoder, and names a record that does not decode."""

from __future__ import annotations

import numpy as np
import pytest

from ringbench_testing.odd_images import (
    DECODABLE,
    JPEG_KINDS,
    UNDECODABLE,
    max_difference,
    reference_rgb,
    write_odd_images,
)
from transfer.meta_dataset import records

SIZE = 40  # the files are SIZE x SIZE, so the reader's squash to SIZE x SIZE (align_corners) is the identity
# TensorFlow decodes JPEGs with libjpeg's fast integer IDCT (decode_image exposes no dct_method), as
# Meta-Dataset's own reader does; Pillow uses the accurate one. Measured: at most 4 levels of 255 on
# these files (2 on the grayscale one); lossless files (PNG) are exact.
TF_JPEG_TOLERANCE = 4


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_odd_images(tmp_path_factory.mktemp("md-odd"), undecodable=True, width=SIZE, height=SIZE)


def test_records_of_every_kind_decode_as_pil(odd, tmp_path):
    path = tmp_path / "0.tfrecords"
    records.write_records(path, [odd[kind].read_bytes() for kind in DECODABLE], label=0)
    found = records.read_records(path)
    pixels = records.decode_images([blob for blob, _ in found], SIZE)
    for kind, image in zip(DECODABLE, pixels):
        decoded = np.round(image * 255.0).astype(np.uint8)
        difference = max_difference(decoded, reference_rgb(odd[kind]))
        assert difference <= (TF_JPEG_TOLERANCE if kind in JPEG_KINDS else 0), (kind, difference)
    # the EXIF file is read as stored: the rotated reading would differ everywhere
    rotated = np.rot90(reference_rgb(odd["exif"]), k=-1)
    exif = np.round(pixels[DECODABLE.index("exif")] * 255.0).astype(np.uint8)
    assert max_difference(exif, rotated) > 50


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_a_record_that_does_not_decode_is_named(odd, tmp_path, kind):
    path = tmp_path / "3.tfrecords"
    records.write_records(path, [odd["rgb"].read_bytes(), odd[kind].read_bytes()], label=3)
    blobs = [blob for blob, _ in records.read_records(path)]
    with pytest.raises(records.RecordError, match=r"3.tfrecords record 1: image does not decode"):
        records.decode_images(blobs, SIZE, where=[f"{path} record {i}" for i in range(2)])
