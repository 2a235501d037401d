"""Generate the hostile-input corpus and good images for tests (nothing is checked in)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128, np.float32)], axis=2).astype(np.uint8)


def jpeg_with_gps(path: Path, w: int = 64, h: int = 48) -> None:
    """A JPEG carrying GPS, a camera serial, a comment and XMP."""
    img = Image.fromarray(_gradient(w, h))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0xA431] = "SERIAL-123456"  # BodySerialNumber
    gps = {1: "N", 2: (TiffImagePlugin.IFDRational(52, 1), TiffImagePlugin.IFDRational(31, 1),
                       TiffImagePlugin.IFDRational(0, 1)),
           3: "E", 4: (TiffImagePlugin.IFDRational(13, 1), TiffImagePlugin.IFDRational(24, 1),
                       TiffImagePlugin.IFDRational(0, 1))}
    exif[0x8825] = gps
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp-location</x:xmpmeta>'
    img.save(path, format="JPEG", exif=exif.tobytes(), comment=b"secret-comment", xmp=xmp)


def exif_rotated(path: Path) -> None:
    """Stored 40x20 (wide) with Orientation=6 (rotate 90 CW): displays 20x40 (tall)."""
    img = Image.fromarray(_gradient(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", exif=exif.tobytes())


def decompression_bomb(path: Path) -> None:
    """A tiny PNG whose header claims 30000x30000 pixels."""
    img = Image.new("1", (30000, 30000))
    img.save(path, format="PNG", optimize=True)


def write_corpus(root: Path) -> dict[str, str]:
    """Write good and hostile files under ``root``; returns {file name: expected 'ok' or error words}."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    Image.fromarray(_gradient(64, 48)).save(root / "good.jpg")
    expected["good.jpg"] = "ok"
    Image.fromarray(_gradient(30, 30)).save(root / "UPPER.PNG")
    expected["UPPER.PNG"] = "ok"
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty file"
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    expected["truncated.jpg"] = "cannot decode"
    (root / "not_an_image.png").write_bytes(b"<html>this is not an image</html>" * 10)
    expected["not_an_image.png"] = "not a recognized image"
    decompression_bomb(root / "bomb.png")
    expected["bomb.png"] = "decompression bomb"
    Image.fromarray(_gradient(4000, 20)).save(root / "extreme_aspect.png")
    expected["extreme_aspect.png"] = "aspect ratio"
    Image.fromarray(_gradient(4, 4)).save(root / "tiny.png")
    expected["tiny.png"] = "smaller than"
    Image.fromarray(_gradient(32, 32)).convert("CMYK").save(root / "cmyk.jpg")
    expected["cmyk.jpg"] = "ok"
    arr16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(arr16).save(root / "sixteen_bit.png")
    expected["sixteen_bit.png"] = "ok"
    indices = np.zeros((32, 32), np.uint8)
    indices[16:, :] = 1  # top half transparent (index 0), bottom half opaque red (index 1)
    pal = Image.fromarray(indices, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(root / "palette_transparent.png", transparency=0)
    expected["palette_transparent.png"] = "ok"
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["animated.gif"] = "ok"
    Image.fromarray(_gradient(32, 32)[:, :, 0], "L").save(root / "gray.jpg")
    expected["gray.jpg"] = "ok"
    exif_rotated(root / "rotated.jpg")
    expected["rotated.jpg"] = "ok"
    jpeg_with_gps(root / "gps.jpg")
    expected["gps.jpg"] = "ok"
    # RGBA webp and a tiff
    Image.fromarray(np.dstack([_gradient(20, 20), np.full((20, 20), 128, np.uint8)]), "RGBA").save(root / "alpha.webp", lossless=True)
    expected["alpha.webp"] = "ok"
    Image.fromarray(_gradient(20, 20)).save(root / "plain.tif")
    expected["plain.tif"] = "ok"
    return expected


def write_good_images(root: Path, n: int, classes: int = 2, size: int = 32) -> list[Path]:
    """``n`` small distinct JPEGs spread over class folders."""
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        p = d / f"img{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


__all__ = ["write_corpus", "write_good_images", "jpeg_with_gps", "exif_rotated", "struct"]
