"""Meta-Dataset TFRecords: the only module that imports TensorFlow (lazily, with its GPUs hidden).

A class file is plain TFRecord framing (8-byte length, masked CRC32C, payload, masked CRC32C) whose
payloads are `tf.train.Example`s with `image` (encoded JPEG/PNG bytes) and `label` (absolute class id).
Reading goes through tf.data, which verifies both CRCs of every record.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

HEADER_BYTES = 12  # uint64 length + masked CRC32C of the length
FOOTER_BYTES = 4  # masked CRC32C of the payload


class RecordError(ValueError):
    """A class file or record that cannot be used; the message names the file and record number."""


class TensorFlowMissing(RecordError):
    """TensorFlow, an optional extra, is not installed."""


MISSING_TENSORFLOW = ("Meta-Dataset records (the embedded digits source too) are read and written with TensorFlow, "
                      "which is not installed here: pip install 'ringbench[meta-dataset]'")


def require_tensorflow() -> None:
    """Raise TensorFlowMissing, in one line naming the extra to install, unless TensorFlow is importable
    (found without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TensorFlowMissing(MISSING_TENSORFLOW)


@cache
def tf():
    """Import TensorFlow once, quietly, CPU only (the GPUs stay free for the PyTorch encoder)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    require_tensorflow()
    import tensorflow

    try:
        tensorflow.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised by an earlier import elsewhere in the process
        pass
    return tensorflow


def scan_frames(path: str | Path) -> list[tuple[int, int]]:
    """(offset, payload length) of every record from the framing alone; raises on a truncated file.

    Reads 12 bytes per record (no payload), so it is a cheap count-and-truncation check.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
    except OSError as error:
        raise RecordError(f"{path}: cannot open class file ({error.strerror})") from None
    frames = []
    with handle:
        offset = 0
        while offset < size:
            handle.seek(offset)
            header = handle.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise RecordError(
                    f"{path}: record {len(frames)} at byte {offset} is truncated "
                    f"(header has {len(header)} of {HEADER_BYTES} bytes)"
                )
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                raise RecordError(
                    f"{path}: record {len(frames)} at byte {offset} is truncated "
                    f"(needs {end - offset} bytes, file has {size - offset} left)"
                )
            frames.append((offset, length))
            offset = end
    return frames


def _op_message(error) -> str:
    """TensorFlow's error text without the function-node and op decorations."""
    text = (error.message or type(error).__name__).splitlines()[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()


def _parse(serialized: bytes, path: Path, index: int) -> tuple[bytes, int]:
    t = tf()
    try:
        example = t.train.Example.FromString(serialized)
        feature = example.features.feature
        image = feature["image"].bytes_list.value
        label = feature["label"].int64_list.value
    except Exception as error:  # protobuf DecodeError and friends
        raise RecordError(f"{path}: record {index} is not a tf.train.Example ({error})") from None
    if len(image) != 1 or len(label) != 1:
        raise RecordError(
            f"{path}: record {index} needs one 'image' bytes value and one 'label' int64 value "
            f"(found {len(image)} and {len(label)})"
        )
    return bytes(image[0]), int(label[0])


def read_records(path: str | Path, indices: Sequence[int] | None = None) -> list[tuple[bytes, int]]:
    """(image bytes, label) of the records at `indices` (all when None), in the order asked.

    tf.data checks the CRCs of every record it passes, including skipped ones; a corrupt or
    truncated record raises RecordError naming the file and the record number.
    """
    t = tf()
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: class file does not exist")
    if indices is not None and len(indices) == 0:
        return []
    wanted = None if indices is None else set(int(i) for i in indices)
    last = None if wanted is None else max(wanted)
    found: dict[int, tuple[bytes, int]] = {}
    ordered: list[tuple[bytes, int]] = []
    dataset = t.data.TFRecordDataset(str(path), buffer_size=1 << 20)
    if last is not None:
        dataset = dataset.take(last + 1)
    index = 0
    try:
        for serialized in dataset.as_numpy_iterator():
            if wanted is None:
                ordered.append(_parse(serialized, path, index))
            elif index in wanted:
                found[index] = _parse(serialized, path, index)
            index += 1
    except t.errors.OpError as error:
        raise RecordError(f"{path}: record {index} is unreadable ({_op_message(error)})") from None
    if wanted is None:
        return ordered
    if index <= last:
        raise RecordError(f"{path}: has {index} records but record {last} was asked for")
    return [found[int(i)] for i in indices]


def write_records(path: str | Path, images: Iterable[bytes], label: int) -> int:
    """Write one class file in the converter's format; returns the record count."""
    t = tf()
    count = 0
    with t.io.TFRecordWriter(str(path)) as writer:
        for image in images:
            example = t.train.Example(
                features=t.train.Features(
                    feature={
                        "image": t.train.Feature(bytes_list=t.train.BytesList(value=[image])),
                        "label": t.train.Feature(int64_list=t.train.Int64List(value=[int(label)])),
                    }
                )
            )
            writer.write(example.SerializeToString())
            count += 1
    return count


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes."""
    return bytes(tf().io.encode_jpeg(np.ascontiguousarray(image, dtype=np.uint8), quality=quality).numpy())


def _decode_resize(image_bytes, size: int):
    t = tf()
    image = t.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = t.cast(image, t.float32)[None]
    # Meta-Dataset's decoder: squash to size x size, bilinear, align_corners=True, no crop.
    image = t.raw_ops.ResizeBilinear(images=image, size=[size, size], align_corners=True, half_pixel_centers=False)[0]
    return t.clip_by_value(image / 255.0, 0.0, 1.0)


def decode_images(images: Sequence[bytes], size: int, where: Sequence[str] | None = None) -> np.ndarray:
    """Decode to RGB, resize to size x size; float32 (N, size, size, 3) in [0, 1].

    `where[i]` names image i ("file record k") for the error raised by an image that does not decode.
    """
    t = tf()
    if len(images) == 0:
        return np.zeros((0, size, size, 3), dtype=np.float32)
    dataset = t.data.Dataset.from_tensor_slices(t.constant(list(images), dtype=t.string))
    dataset = dataset.map(lambda b: _decode_resize(b, size), num_parallel_calls=2, deterministic=True)
    try:
        return np.concatenate([batch for batch in dataset.batch(256).as_numpy_iterator()])
    except t.errors.OpError:
        pass
    for i, blob in enumerate(images):  # slow path only to name the bad image
        try:
            _decode_resize(t.constant(blob), size)
        except t.errors.OpError as error:
            name = where[i] if where is not None else f"image {i}"
            raise RecordError(f"{name}: image does not decode ({_op_message(error)})") from None
    raise RecordError("a batch of images failed to decode but each decodes alone")  # not expected
