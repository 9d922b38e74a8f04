"""Decoding the image files real datasets contain, the same way in every loader.

The one rule: an image file becomes the RGB pixels of PIL's `Image.open(path).convert("RGB")`, as
torchvision's ImageFolder (the reference ImageNet pipeline) produces them. So

- CMYK JPEGs (Adobe inverted or not) are converted by PIL's CMYK -> RGB;
- grayscale JPEGs (and PNGs) have their one channel copied to R, G and B;
- a PNG (or any format PIL reads) behind a `.JPEG` name is decoded by what it is, not by its name;
- progressive JPEGs decode like baseline ones;
- the EXIF orientation tag is NOT applied: pixels stay in the order they are stored, as PIL's
  convert, ImageFolder, TensorFlow's decode_image (Meta-Dataset) and torchvision's decode_jpeg
  (apply_exif_orientation=False) leave them, and as COCO's boxes are drawn on them.

A file that none of these decodes raises `UndecodableImage` naming its path; pretraining can skip
such files instead (`data.skip_undecodable=true`), counting them in its metrics.

The GPU decoder (nvJPEG through `torchvision.io.decode_jpeg(device="cuda")`) only reads JPEG data and
gives wrong colours or raises on some of it; `DeviceDecoder` sends such files to PIL one by one and
counts them (`DecodeCounts`).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (all but DHT C4, JPG C8, DAC CC): their segment carries the component count.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class UndecodableImage(ValueError):
    """An image file that no decoder reads (truncated, corrupt, or not an image); the message names it."""


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):  # its text names a file object, not the file
        return "not in an image format PIL reads"
    return str(error)


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """The file's pixels as a decoded RGB PIL image (`Image.open(path).convert("RGB")`, no EXIF
    rotation), or `UndecodableImage` naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UndecodableImage(f"{path}: not a decodable image ({_reason(error)})") from None


def open_lazy(path: str | os.PathLike) -> Image.Image:
    """The image opened but not decoded (so a JPEG can still be drafted smaller); errors name the path."""
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UndecodableImage(f"{path}: not a decodable image ({_reason(error)})") from None


def rgb_bytes(data: bytes | torch.Tensor, name: str) -> torch.Tensor:
    """Encoded file bytes -> (3, H, W) uint8 CPU tensor of PIL's convert("RGB"); `name` for the error."""
    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UndecodableImage(f"{name}: not a decodable image ({_reason(error)})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------- JPEG headers


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header says: size, component count (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK), progressive."""

    height: int
    width: int
    components: int
    progressive: bool


def jpeg_header(data: bytes | memoryview) -> JpegHeader | None:
    """The first frame header of JPEG bytes, or None when the bytes are not JPEG (PNG behind a .JPEG
    name) or end before a frame header (truncated)."""
    data = memoryview(data)
    if bytes(data[:3]) != JPEG_MAGIC:
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS:
            if position + 10 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return JpegHeader(height, width, int(data[position + 9]), marker in (0xC2, 0xC6, 0xCA, 0xCE))
        if marker == 0xDA:  # scan data before any frame header
            return None
        position += 2 + length
    return None


def device_decodable(header: JpegHeader | None) -> bool:
    """Whether nvJPEG is asked to decode the file at all: JPEG data with 1 or 3 components. Not PNG
    data behind a JPEG name (nvJPEG reads JPEG only) and not CMYK/YCCK (4 components: nvJPEG's RGB
    output does not apply PIL's CMYK conversion)."""
    return header is not None and header.components in (1, 3) and header.height > 0 and header.width > 0


# ---------------------------------------------------------------------------------------------- GPU decoding


@dataclass
class DecodeCounts:
    """Per-epoch counts of the GPU path's decoding: files the device decoded, files sent to the CPU
    decoder instead (with the first few names, for the log), and files skipped as undecodable."""

    device: int = 0
    cpu_fallbacks: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def note_fallback(self, name: str, reason: str) -> None:
        self.cpu_fallbacks += 1
        if len(self.examples) < 3:
            self.examples.append(f"{name} ({reason})")

    def reset(self) -> None:
        self.device = self.cpu_fallbacks = self.skipped = 0
        self.examples = []


def torchvision_device_decoder(data: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """torchvision's batched JPEG decoder on `device` (nvJPEG on CUDA), RGB output, no EXIF rotation."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)


class DeviceDecoder:
    """Decode a batch of encoded files on the device, falling back per file to PIL on the CPU.

    Files nvJPEG is not given (see `device_decodable`) go to PIL at once. The others are decoded in
    one batched call; if that call raises, each file is retried alone on the device and those that
    raise again go to PIL. A device result whose size disagrees with the header goes to PIL too. A
    file PIL cannot decode either raises `UndecodableImage` naming it, or, with `skip_undecodable`,
    is returned as None and counted. `decoder(list of byte tensors, device)` is the device decoder
    (`torchvision_device_decoder`; tests inject one that fails as nvJPEG does).
    """

    def __init__(self, decoder: Callable[[list[torch.Tensor], torch.device | str], list[torch.Tensor]] | None = None,
                 skip_undecodable: bool = False):
        self.decoder = decoder or torchvision_device_decoder
        self.skip_undecodable = skip_undecodable
        self.counts = DecodeCounts()

    def __call__(self, items: Sequence[torch.Tensor], device: torch.device | str,
                 names: Sequence[str] | None = None) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 images on `device` (None for skipped files); 1-D items are file bytes, others
        already decoded images that are only moved."""
        names = list(names) if names is not None else [f"image {slot}" for slot in range(len(items))]
        out: list[torch.Tensor | None] = [None] * len(items)
        on_device: list[int] = []
        headers: dict[int, JpegHeader] = {}
        for slot, item in enumerate(items):
            if item.ndim != 1:
                out[slot] = item.to(device, non_blocking=True)
                continue
            header = jpeg_header(item.numpy().data)
            if device_decodable(header):
                on_device.append(slot)
                headers[slot] = header
            else:
                reason = "not JPEG data" if header is None else f"{header.components}-component JPEG"
                out[slot] = self._on_cpu(item, names[slot], device, reason)
        if on_device:
            decoded = self._device_batch([items[slot] for slot in on_device], device)
            for slot, image in zip(on_device, decoded):
                header = headers[slot]
                if isinstance(image, Exception):
                    out[slot] = self._on_cpu(items[slot], names[slot], device, f"device decoder: {_first_line(image)}")
                elif image.ndim != 3 or tuple(image.shape[-2:]) != (header.height, header.width):
                    out[slot] = self._on_cpu(items[slot], names[slot], device,
                                             f"device decoder gave shape {tuple(image.shape)}")
                else:
                    out[slot] = image if image.shape[0] == 3 else image[:1].expand(3, -1, -1)
                    self.counts.device += 1
        return out

    def _device_batch(self, data: list[torch.Tensor], device) -> list[torch.Tensor | Exception]:
        try:
            return list(self.decoder(data, device))
        except RuntimeError:
            pass
        results: list[torch.Tensor | Exception] = []
        for item in data:  # one bad file fails the batched call: find it
            try:
                results.append(self.decoder([item], device)[0])
            except RuntimeError as error:
                results.append(error)
        return results

    def _on_cpu(self, item: torch.Tensor, name: str, device, reason: str) -> torch.Tensor | None:
        try:
            image = rgb_bytes(item, name)
        except UndecodableImage as error:
            if not self.skip_undecodable:
                raise
            self.counts.skipped += 1
            print(f"warning: skipped undecodable image: {error}", file=sys.stderr, flush=True)
            return None
        self.counts.note_fallback(name, reason)
        return image.to(device, non_blocking=True)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:160] if text else type(error).__name__


def device_decoder_works(device: torch.device | str,
                         decoder: Callable[[list[torch.Tensor], torch.device | str], list[torch.Tensor]] | None = None
                         ) -> str | None:
    """None when the device decoder decodes a small JPEG on `device`, else why not (one line): torchvision
    built without nvJPEG, a driver without it, ..."""
    from torchvision.io import encode_jpeg

    probe = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
    try:
        image = (decoder or torchvision_device_decoder)([probe], device)[0]
    except Exception as error:  # any failure means: not usable here
        return f"{type(error).__name__}: {_first_line(error)}"
    if tuple(image.shape) != (3, 16, 16):
        return f"it decoded a 16x16 test image to shape {tuple(image.shape)}"
    return None


def worker_error_message(error: BaseException) -> str:
    """The one-line message of an error re-raised from a DataLoader worker process, whose text is
    "Caught X in DataLoader worker process N. Original Traceback ... module.X: message"."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
