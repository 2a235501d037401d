"""Decode, validate, normalize and encode images (model-free).

Decoding is defensive: every hostile file raises ``ImageRejected`` with a message that ends up in
the row's ``error`` column. Encoding always starts from bare pixels, so no EXIF, GPS, XMP, IPTC,
ICC maker notes or comments from the source can reach an output file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats whose pixels are stored losslessly; their outputs default to PNG.
LOSSLESS_FORMATS = {"PNG", "BMP", "TIFF", "GIF", "PPM", "TGA"}


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message says why."""


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 100_000_000
    max_side: int = 4096
    min_side: int = 8
    max_aspect_ratio: float = 40.0


def decode_image(data: bytes, limits: DecodeLimits) -> tuple[np.ndarray, bool]:
    """Bytes -> (HxWx3 uint8 RGB, lossless source?).

    Applies EXIF orientation, takes the first frame of animations, composites transparency on
    white, maps CMYK / 16-bit / palette / grayscale to 8-bit RGB and bounds the longer side.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    # Pillow's own bomb check only warns below 2x its limit; we enforce ours from the header.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageRejected("not a recognized image format") from None
        except Exception as e:  # noqa: BLE001 - any parser error is a bad file
            raise ImageRejected(f"unreadable image header: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"invalid size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"{width}x{height} = {width * height} pixels exceeds io.max_pixels={limits.max_pixels} "
            "(possible decompression bomb)"
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(f"{width}x{height} is smaller than io.min_side={limits.min_side}")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise ImageRejected(f"{width}x{height} has an aspect ratio above io.max_aspect_ratio={limits.max_aspect_ratio}")
    lossless = (img.format or "").upper() in LOSSLESS_FORMATS or _is_lossless_webp(img)
    try:
        img.seek(0)  # animated: first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise ImageRejected(f"cannot decode image data: {type(e).__name__}: {e}") from None
    if max(rgb.size) > limits.max_side:
        scale = limits.max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(f"unexpected decoded shape {array.shape}")
    return array, lossless


def _is_lossless_webp(img: Image.Image) -> bool:
    return (img.format or "").upper() == "WEBP" and "lossless" in str(img.info.get("compression", "")).lower()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer: scale the used range to 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")


def encode_image(pixels: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """HxWx3 uint8 -> JPEG or PNG bytes with no metadata at all."""
    img = Image.fromarray(np.ascontiguousarray(pixels), "RGB")  # a fresh image has empty .info
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=jpeg_quality, optimize=False)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=4)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def image_from_bytes(data: bytes) -> np.ndarray:
    """Decode an output file (JPEG/PNG written by ``encode_image``) to RGB pixels."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
