"""Image helpers shared by the metrics: loading, size alignment, region masks, thumbnails."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def load_rgb(uri: str, storage_options: dict | None = None) -> np.ndarray:
    """Read an original from any fsspec URI with the pipeline's own decoder.

    The pipeline applies EXIF orientation, flattens transparency and bounds the size before it
    edits; decoding the original the same way means a pass-through image compares as identical.
    """
    import fsspec

    from unsafe2safe_ray.imaging import DecodeLimits, decode_image

    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        data = f.read()
    pixels, _lossless = decode_image(data, DecodeLimits())
    return pixels


def align_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` resized to height x width (no-op when it already has that size).

    Editors may crop to a multiple of 16 or downscale large inputs; pixel metrics need equal
    shapes, so the output is brought to the original's size rather than the other way round.
    """
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def parse_regions(regions: Any) -> list[dict]:
    """Regions with a box, from the contract's typed column (a list of dicts; JSON text, as
    version 1 outputs held it, is decoded)."""
    if regions is None or regions == "":
        return []
    if isinstance(regions, str):
        regions = json.loads(regions)
    return [r for r in regions if isinstance(r, dict) and len(r.get("bbox") or []) == 4]


def region_mask(regions: list[dict], height: int, width: int) -> np.ndarray:
    """Boolean HxW mask, True inside any region box (boxes are [x0, y0, x1, y1] pixels)."""
    mask = np.zeros((height, width), dtype=bool)
    for region in regions:
        x0, y0, x1, y1 = region["bbox"]
        x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        x1, y1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


# Box colours per kind of region in the report gallery.
REGION_COLOURS = {"people": (255, 64, 64), "text_and_symbols": (64, 160, 255)}
DEFAULT_REGION_COLOUR = (255, 200, 0)


def thumbnail_jpeg(image: np.ndarray, max_px: int, regions: list[dict] | None = None) -> bytes:
    """A small JPEG of ``image`` with the region boxes drawn, for the HTML gallery."""
    im = Image.fromarray(image)
    scale = min(1.0, max_px / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    if regions:
        draw = ImageDraw.Draw(im)
        for region in regions:
            x0, y0, x1, y1 = (v * scale for v in region["bbox"])
            colour = REGION_COLOURS.get(region.get("category"), DEFAULT_REGION_COLOUR)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
