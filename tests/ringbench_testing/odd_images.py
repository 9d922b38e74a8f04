"""The image files real datasets contain, written with PIL for the decoding tests.

`write_odd_images(folder)` writes one file of each kind, all named `.JPEG` as ImageNet names them:

    rgb          baseline RGB JPEG
    cmyk         CMYK JPEG (PIL writes the Adobe marker, as ImageNet's CMYK files carry)
    gray         grayscale JPEG (one component)
    png          PNG data behind a .JPEG name
    exif         RGB JPEG whose EXIF orientation tag says "rotate 90" (6); stored pixels are unrotated
    progressive  progressive RGB JPEG
and, with `undecodable=True`,
    truncated    the first half of a JPEG
    garbage      text bytes

`reference_rgb(path)` is what every loader must produce: PIL's `Image.open(path).convert("RGB")`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DECODABLE = ("rgb", "cmyk", "gray", "png", "exif", "progressive")
UNDECODABLE = ("truncated", "garbage")
JPEG_KINDS = ("rgb", "cmyk", "gray", "exif", "progressive")  # decoded by a JPEG decoder (lossy paths)
EXIF_ROTATE_90 = 6


def pattern(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A (height, width, 3) uint8 image with gradients and noise, unsymmetric, so a rotation or a
    channel swap shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([(cols * 4) % 256, (rows * 5) % 256, ((cols + rows) * 3) % 256], axis=-1)
    noise = np.random.default_rng(seed).integers(-20, 20, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_odd_image(path: Path, kind: str, pixels: np.ndarray) -> Path:
    rgb = Image.fromarray(pixels, mode="RGB")
    if kind == "rgb":
        rgb.save(path, format="JPEG", quality=90)
    elif kind == "cmyk":
        rgb.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "gray":
        rgb.convert("L").save(path, format="JPEG", quality=90)
    elif kind == "png":
        rgb.save(path, format="PNG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = EXIF_ROTATE_90
        rgb.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    elif kind == "progressive":
        rgb.save(path, format="JPEG", quality=90, progressive=True)
    elif kind == "truncated":
        rgb.save(path, format="JPEG", quality=90)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image " * 8)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return path


def write_odd_images(folder: Path, undecodable: bool = False, width: int = 64, height: int = 48,
                     suffix: str = ".JPEG") -> dict[str, Path]:
    """kind -> path of one file of each kind in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = DECODABLE + (UNDECODABLE if undecodable else ())
    return {kind: write_odd_image(folder / f"{kind}{suffix}", kind, pattern(width, height, seed=index))
            for index, kind in enumerate(kinds)}


def reference_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: PIL's convert("RGB"), the reference of every loader."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
