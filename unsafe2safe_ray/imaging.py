"""Decode, validate, normalize and encode images (model-free).

Decoding is defensive: every hostile file raises ``ImageRejected`` with a message that ends up in
the row's ``error`` column. Truncated data is never padded into a picture (Pillow's
``LOAD_TRUNCATED_IMAGES`` stays off, and a JPEG whose scan ends early is refused, see
``_check_jpeg_complete``). Ancillary PNG chunks (text, ICC profiles, ...) are dropped before
decoding, so an oversized one is never fatal. Encoding starts from bare pixels, so no EXIF, GPS,
XMP, IPTC, ICC maker notes or comments from the source can reach an output file; the one
exception is the lossless pass-through of an unchanged JPEG (``strip_jpeg_metadata``), which
copies the compressed image data and nothing else.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # HEIF / HEIC where the well-kept plugin is installed (AVIF is built into Pillow)
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except Exception:  # noqa: BLE001 - optional
    HEIF_SUPPORTED = False

# Formats whose pixels are stored losslessly; their outputs default to PNG.
LOSSLESS_FORMATS = {"PNG", "BMP", "TIFF", "GIF", "PPM", "TGA"}
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message says why."""


@dataclass(frozen=True)
class DecodeLimits:
    """``min_side`` and ``max_aspect_ratio`` are opt-in (1 and None keep every image)."""

    max_pixels: int = 100_000_000
    max_side: int = 4096
    min_side: int = 1
    max_aspect_ratio: float | None = None


@dataclass(frozen=True)
class Decoded:
    """Normalized pixels; ``passthrough`` is the source JPEG without metadata when it decodes to
    exactly ``pixels`` (orientation 1, no resize, RGB or grey), else None."""

    pixels: np.ndarray
    lossless: bool
    passthrough: bytes | None = None


def decode_image(data: bytes, limits: DecodeLimits) -> tuple[np.ndarray, bool]:
    """Bytes -> (HxWx3 uint8 RGB, lossless source?). See ``decode``."""
    out = decode(data, limits)
    return out.pixels, out.lossless


def decode(data: bytes, limits: DecodeLimits, passthrough: bool = False) -> Decoded:
    """Bytes -> normalized pixels.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on
    white, maps CMYK / 16-bit / palette / grayscale to 8-bit RGB and bounds the longer side.
    ``passthrough``: also return the source JPEG minus its metadata when it is pixel-identical.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    jpeg = parse_jpeg(data) if data[:2] == b"\xff\xd8" else None
    if jpeg is not None:
        _check_jpeg_plausible(jpeg)
    if data[:8] == _PNG_SIGNATURE:
        data = strip_png_chunks(data)
    truncated_setting = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # never pad missing data with grey
    try:
        return _decode(data, limits, jpeg, passthrough)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_setting


def _open(data: bytes) -> Image.Image:
    # Pillow's own bomb check only warns below 2x its limit; we enforce ours from the header.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            if _is_heif(data) and not HEIF_SUPPORTED:
                raise ImageRejected("HEIF/HEIC image, but no HEIF decoder is installed (pip install pillow-heif)") from None
            raise ImageRejected("not a recognized image format") from None
        except ImageRejected:
            raise
        except Exception as e:  # noqa: BLE001 - any parser error is a bad file
            raise ImageRejected(f"unreadable image header: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _decode(data: bytes, limits: DecodeLimits, jpeg: "JpegInfo | None", passthrough: bool) -> Decoded:
    img = _open(data)
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
    if limits.max_aspect_ratio is not None and max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise ImageRejected(f"{width}x{height} has an aspect ratio above io.max_aspect_ratio={limits.max_aspect_ratio}")
    fmt = (img.format or "").upper()
    lossless = fmt in LOSSLESS_FORMATS or _is_lossless_webp(img)
    orientation = 1
    try:
        img.seek(0)  # animated: first frame
        img.load()
        if jpeg is not None:
            _check_jpeg_complete(data, jpeg, img)
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # noqa: BLE001 - unreadable EXIF: exif_transpose decides below
            orientation = 0
        mode = img.mode
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise ImageRejected(f"cannot decode image data: {type(e).__name__}: {e}") from None
    resized = max(rgb.size) > limits.max_side
    if resized:
        scale = limits.max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(f"unexpected decoded shape {array.shape}")
    copy = None
    if (passthrough and jpeg is not None and fmt in ("JPEG", "MPO") and orientation == 1 and not resized
            and mode in ("RGB", "L")):
        copy = strip_jpeg_metadata(data, jpeg)
    return Decoded(array, lossless, copy)


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")


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


# --- PNG: ancillary chunks are dropped before decoding ---------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that carry pixels or their interpretation; every other ancillary chunk (tEXt, zTXt,
# iTXt, iCCP, tIME, ...) goes, so an oversized or corrupt one never fails a valid image. eXIf
# stays for the orientation.
_PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT", b"eXIf"})


def strip_png_chunks(data: bytes) -> bytes:
    """``data`` (a PNG) without its ancillary chunks; unparsable data comes back unchanged."""
    view = memoryview(data)
    out: list = [_PNG_SIGNATURE]
    pos, n, dropped = 8, len(data), False
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            break
        critical = not ctype[0] & 0x20
        if critical or ctype in _PNG_KEEP:
            out.append(view[pos:end])
        else:
            dropped = True
        pos = end
        if ctype == b"IEND":
            break
    if pos < n and not dropped:
        return data
    if pos < n:
        out.append(view[pos:])  # a truncated tail: left for the decoder to report
    return b"".join(out) if dropped else data


# --- JPEG: markers, truncation checks and the lossless pass-through ---------------------------

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Segments the pass-through keeps: frame and scan headers, tables, restart interval.
_JPEG_KEEP = _SOF | {0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xDA}
# The end of entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker nor fill.
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True)
class JpegInfo:
    """Marker structure of a JPEG's first image: (marker, start, end) segments (``-1`` for
    entropy-coded data), the frame header and the offset of its EOI (None when missing)."""

    segments: tuple[tuple[int, int, int], ...]
    sof: int | None
    width: int
    height: int
    components: tuple[tuple[int, int], ...]  # (h, v) sampling factors
    entropy_bytes: int
    eoi: int | None


def parse_jpeg(data: bytes) -> JpegInfo | None:
    """The marker structure of ``data`` up to its first EOI; None when it is not parsable."""
    if data[:2] != b"\xff\xd8":
        return None
    n = len(data)
    pos, segments = 2, []
    sof, width, height, comps, entropy, eoi = None, 0, 0, (), 0, None
    while pos < n:
        if data[pos] != 0xFF:
            return None
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker, start = data[pos], pos - 1
        pos += 1
        if marker == 0xD9:
            eoi = start
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            segments.append((marker, start, pos))
            continue
        if pos + 2 > n:
            break
        end = pos + int.from_bytes(data[pos:pos + 2], "big")
        if end < pos + 2 or end > n:
            break
        segments.append((marker, start, end))
        if marker in _SOF and sof is None and end - pos >= 8:
            sof = marker
            height = int.from_bytes(data[pos + 3:pos + 5], "big")
            width = int.from_bytes(data[pos + 5:pos + 7], "big")
            count = data[pos + 7]
            comps = tuple((data[pos + 9 + 3 * i] >> 4, data[pos + 9 + 3 * i] & 15)
                          for i in range(count) if pos + 10 + 3 * i <= end)
        pos = end
        if marker == 0xDA:
            m = _ENTROPY_END.search(data, pos)
            stop = m.start() if m else n
            segments.append((-1, pos, stop))
            entropy += stop - pos
            pos = stop
    return JpegInfo(tuple(segments), sof, width, height, comps, entropy, eoi)


def _check_jpeg_plausible(info: JpegInfo) -> None:
    """Huffman coding spends at least one bit on every 8x8 block of every component (its DC
    code); a file with fewer bits of scan data than that cannot hold the image it declares."""
    if info.sof is None or info.sof in _ARITHMETIC or not info.components or info.height == 0:
        return
    hmax = max(h for h, _ in info.components) or 1
    vmax = max(v for _, v in info.components) or 1
    blocks = 0
    for h, v in info.components:
        cw = -(-info.width * h // hmax)
        ch = -(-info.height * v // vmax)
        blocks += -(-cw // 8) * -(-ch // 8)
    if info.entropy_bytes * 8 < blocks:
        raise ImageRejected(
            f"truncated JPEG: {info.entropy_bytes} bytes of image data cannot hold the declared "
            f"{info.width}x{info.height} image (at least {blocks // 8} needed)")


# Bytes inserted before the EOI to probe for a scan that ended early (never 0xFF).
_PROBE = bytes((i * 73 + 41) % 255 for i in range(512))


def _check_jpeg_complete(data: bytes, info: JpegInfo, img: Image.Image) -> None:
    """Refuse a JPEG whose scan data ends before the image does.

    libjpeg fills the missing blocks with flat grey (128) and only warns, so the bottom-right
    block of such an image is exactly 128. Only then (rare in real photos) is the file decoded a
    second time with junk bytes before its EOI: a complete scan never reads them, an incomplete
    one decodes them into different pixels.
    """
    if info.eoi is None or img.mode not in ("L", "RGB"):
        return
    corner = np.asarray(img.crop((max(0, img.width - 2), max(0, img.height - 2), img.width, img.height)))
    if corner.size == 0 or not (corner == 128).all():
        return
    probe = data[:info.eoi] + _PROBE + data[info.eoi:]
    try:
        with Image.open(io.BytesIO(probe)) as other:
            other.load()
            same = np.array_equal(np.asarray(other), np.asarray(img))
    except Exception:  # noqa: BLE001 - junk in a scan that was still being read
        same = False
    if not same:
        raise ImageRejected(f"truncated JPEG: the image data ends before the declared {img.width}x{img.height} "
                            "image does (the rest would be flat grey)")


def strip_jpeg_metadata(data: bytes, info: JpegInfo | None = None) -> bytes | None:
    """The JPEG's own compressed image without metadata: APPn (except a JFIF header without
    thumbnail and the Adobe colour-transform marker) and COM segments dropped, nothing after
    its EOI (trailers, MPO frames). Decodes to the same pixels. None when not parsable."""
    info = info or parse_jpeg(data)
    if info is None or info.eoi is None or info.sof is None:
        return None
    out = [b"\xff\xd8"]
    for marker, start, end in info.segments:
        if marker == -1 or marker in _JPEG_KEEP or 0xD0 <= marker <= 0xD7:
            out.append(data[start:end])
        elif marker == 0xE0 and data[start + 4:start + 9] == b"JFIF\x00" and end - start >= 18:
            # version, units, densities; no thumbnail
            out.append(b"\xff\xe0\x00\x10JFIF\x00" + data[start + 9:start + 16] + b"\x00\x00")
        elif marker == 0xEE and data[start + 4:start + 9] == b"Adobe" and end - start == 16:
            out.append(data[start:end])
    out.append(b"\xff\xd9")
    return b"".join(out)


def pack_passthrough(image_bytes: bytes, jpeg: bytes) -> bytes:
    """What a row carries for the writer: a checksum and length of its pixels, then the
    stripped JPEG. (``records.set_image`` also drops it whenever a stage sets new pixels; the
    checksum catches any other change. CRC-32 costs a sixth of a JPEG encode.)"""
    return struct.pack(">IQ", zlib.crc32(image_bytes), len(image_bytes)) + jpeg


def unpack_passthrough(value: bytes | None, image_bytes: bytes | None) -> bytes | None:
    """The stripped JPEG of ``pack_passthrough`` if the row's pixels are still the ones it was
    decoded to (no stage changed them), else None."""
    if not value or image_bytes is None or len(value) <= _PASS_HEADER:
        return None
    if struct.pack(">IQ", zlib.crc32(image_bytes), len(image_bytes)) != bytes(value[:_PASS_HEADER]):
        return None
    return bytes(value[_PASS_HEADER:])


_PASS_HEADER = struct.calcsize(">IQ")
