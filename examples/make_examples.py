"""Regenerate ``examples/images/``: five scikit-image samples and two synthetic images.

    .venv/bin/python examples/make_examples.py

The synthetic licence plate and ID card are drawn with Pillow's bundled default font (Aileron
Regular, CC0) and an invented plate number, name and card number. The ID card's photo is the
astronaut (NASA, public domain). See ``images/LICENSES.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from skimage import data

OUT = Path(__file__).resolve().parent / "images"

# Invented identifiers: they only have to look like a plate and a card, not be anyone's.
PLATE_NUMBER = "KX 482 TB"
CARD_NAME = "JANE EXAMPLE"
CARD_NUMBER = "X7041962"


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled Aileron Regular (CC0) at ``size`` px; needs Pillow >= 10.1 with FreeType."""
    return ImageFont.load_default(size=size)


def licence_plate() -> Image.Image:
    """A car's rear in flat colours with a white plate reading ``PLATE_NUMBER``."""
    width, height = 640, 420
    img = Image.new("RGB", (width, height), (96, 110, 124))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 300, width, height], fill=(58, 58, 62))  # road
    draw.rounded_rectangle([70, 90, 570, 330], radius=40, fill=(150, 24, 30))  # body
    draw.rectangle([110, 110, 530, 190], fill=(40, 52, 66))  # rear window
    draw.ellipse([90, 215, 170, 265], fill=(230, 150, 40))  # lights
    draw.ellipse([470, 215, 550, 265], fill=(230, 150, 40))
    draw.rounded_rectangle([200, 225, 440, 285], radius=6, fill=(245, 245, 240), outline=(20, 20, 20), width=3)
    font = _font(42)
    left, top, right, bottom = draw.textbbox((0, 0), PLATE_NUMBER, font=font)
    draw.text((320 - (right - left) / 2 - left, 255 - (bottom - top) / 2 - top), PLATE_NUMBER,
              font=font, fill=(15, 15, 15))
    # A little softness, as in a photo.
    return img.filter(ImageFilter.GaussianBlur(0.6))


def id_card() -> Image.Image:
    """An identity card with the astronaut as the photo and invented name and number."""
    width, height = 720, 460
    img = Image.new("RGB", (width, height), (226, 232, 240))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle([20, 20, width - 20, height - 20], radius=24, fill=(246, 248, 252), outline=(90, 110, 140), width=3)
    draw.rectangle([20, 20, width - 20, 80], fill=(40, 70, 120))
    draw.text((44, 32), "IDENTITY CARD", font=_font(34), fill=(255, 255, 255))
    photo = Image.fromarray(data.astronaut()[20:330, 120:330]).resize((180, 240))
    img.paste(photo, (44, 110))
    fields = [("Surname / Given name", CARD_NAME), ("Date of birth", "14.03.1981"),
              ("Card number", CARD_NUMBER), ("Expires", "2031-05-30")]
    y = 110
    for caption, value in fields:
        draw.text((260, y), caption, font=_font(18), fill=(90, 100, 120))
        draw.text((260, y + 22), value, font=_font(30), fill=(10, 10, 30))
        y += 66
    return img


def main() -> None:
    """Write every example image (deterministic: reruns produce the same files)."""
    OUT.mkdir(parents=True, exist_ok=True)
    gray = lambda a: np.stack([a] * 3, axis=-1)  # noqa: E731 - store as RGB like real photos
    Image.fromarray(data.astronaut()).save(OUT / "astronaut.jpg", quality=92)
    Image.fromarray(gray(data.camera())).save(OUT / "camera.jpg", quality=92)
    Image.fromarray(gray(data.page())).save(OUT / "page.png", optimize=True)
    Image.fromarray(data.coffee()).save(OUT / "coffee.jpg", quality=92)
    Image.fromarray(data.chelsea()).save(OUT / "chelsea.jpg", quality=92)
    licence_plate().save(OUT / "licence_plate.jpg", quality=92)
    id_card().save(OUT / "id_card.png", optimize=True)
    for path in sorted(OUT.iterdir()):
        print(f"{path.name:20s} {path.stat().st_size / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
