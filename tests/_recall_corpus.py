"""The detection recall corpus (issue 13): faces from 12 px to frame-filling, text at 0/90/180/270
degrees and stacked vertically, licence plates at several sizes, blurs and angles, all built from
shipped images (scikit-image's astronaut, camera and LFW crops; Pillow's bundled Aileron font)
with invented strings. Nothing is checked in and nothing is downloaded.

``build()`` returns the images with their planted items; ``measure(rows, items)`` scores the
cpu profile's output with checks independent of the detectors' own decisions:

- faces: dlib identity distance between the planted face and the same place of the output, both
  seen at 150 px (>= 0.6: another person), and whether a ``people`` region covers the face;
- text and plates: rapidocr reading the planted box of the output turned upright (the reader is
  given the orientation and the box, its best chance), similarity to the planted string
  (<= 0.2: unreadable), and whether a region covers it.

Run ``.venv/bin/python tests/_recall_corpus.py`` for the recall table by kind, size bucket and
orientation (the numbers in the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Invented strings: they only have to look like private data.
DOC_LINES = ["Phone 0171 555 0123", "IBAN DE44 5001 0517", "Jane Q Example"]
VERTICAL = "HOTEL7"
PLATES = ["KX 482 TB", "MB 731 RZ", "LT 905 QA", "RV 268 XE"]


@dataclass
class Item:
    """One planted thing: ``kind`` face / text / plate, ``bbox`` in the image, the ``bucket`` it is
    reported under, and for text the string and the quarter turns (``turns``, np.rot90's k) that
    make it upright; for faces the planted pixels."""

    kind: str
    bbox: list[int]
    bucket: str
    text: str = ""
    turns: int = 0
    pixels: np.ndarray | None = field(default=None, repr=False)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _background(width: int, height: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((width, height)).filter(ImageFilter.GaussianBlur(4)))


def _face_sources() -> list[np.ndarray]:
    """Head crops (hair and chin included) of real faces: astronaut, camera man, LFW."""
    from skimage import data

    astronaut = data.astronaut()[30:205, 150:300]
    camera = np.stack([data.camera()[95:225, 180:285]] * 3, axis=-1)
    lfw = (data.lfw_subset()[:6] * 255).astype(np.uint8)
    return [astronaut, camera] + [np.stack([face] * 3, axis=-1) for face in lfw[[0, 1, 2, 3, 5]]]


# The face (brow to chin) is about this fraction of a head crop's height.
FACE_FRACTION = 0.75


def _paste_face(canvas: np.ndarray, face: np.ndarray, size: int, x: int, y: int, bucket: str) -> Item:
    """Paste a head crop whose face is about ``size`` px tall."""
    h = round(size / FACE_FRACTION)
    w = max(1, round(size * face.shape[1] / face.shape[0]))
    interp = cv2.INTER_AREA if h < face.shape[0] else cv2.INTER_CUBIC
    pixels = cv2.resize(face, (w, h), interpolation=interp)
    canvas[y : y + h, x : x + w] = pixels
    return Item("face", [x, y, x + w, y + h], bucket, pixels=pixels.copy())


def face_images() -> list[tuple[str, np.ndarray, list[Item]]]:
    sources = _face_sources()
    out = []
    # A 1280x560 crowd of small faces (12-48 px from brow to chin).
    canvas = _background(1280, 560).copy()
    items, x, y = [], 30, 40
    sizes = [12, 14, 16, 20, 24, 32, 48]
    for row, source in enumerate(sources[:4]):
        x = 30 + 40 * row
        for size in sizes:
            bucket = "12-20 px" if size <= 20 else "24-48 px"
            items.append(_paste_face(canvas, source, size, x, y, bucket))
            x += 170
        y += 130
    out.append(("crowd", canvas, items))
    # Medium faces in a 640x480 scene.
    canvas = _background(640, 480).copy()
    items = [_paste_face(canvas, sources[0], 96, 40, 60, "64-200 px"),
             _paste_face(canvas, sources[1], 200, 300, 140, "64-200 px")]
    out.append(("medium", canvas, items))
    # Frame-filling faces: the face is most of an 800 px image.
    for i, source in enumerate(sources[1:3]):
        pixels = cv2.resize(source, (700 * source.shape[1] // source.shape[0], 700), interpolation=cv2.INTER_CUBIC)
        canvas = cv2.copyMakeBorder(pixels, 50, 50, 50, 50, cv2.BORDER_REFLECT)
        item = Item("face", [50, 50, 50 + pixels.shape[1], 750], "frame-filling (700 px)", pixels=pixels)
        out.append((f"closeup{i}", np.ascontiguousarray(canvas), [item]))
    return out


def _text_block(lines: list[str], size: int = 26) -> tuple[np.ndarray, list[list[int]]]:
    img = Image.new("RGB", (420, 40 + len(lines) * int(size * 1.7)), (238, 234, 226))
    draw = ImageDraw.Draw(img)
    boxes = []
    for i, line in enumerate(lines):
        xy = (20, 20 + i * int(size * 1.7))
        draw.text(xy, line, fill=(25, 25, 35), font=_font(size))
        boxes.append(list(draw.textbbox(xy, line, font=_font(size))))
    return np.asarray(img), boxes


def _rotate_box(box, turns: int, height: int, width: int) -> list[int]:
    """``box`` of an HxW block after np.rot90(block, turns)."""
    x0, y0, x1, y1 = box
    for _ in range(turns % 4):
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        height, width = width, height
    return [x0, y0, x1, y1]


def text_images() -> list[tuple[str, np.ndarray, list[Item]]]:
    out = []
    block, boxes = _text_block(DOC_LINES)
    for turns, name in ((0, "0"), (1, "90"), (2, "180"), (3, "270")):
        rotated = np.ascontiguousarray(np.rot90(block, turns))
        canvas = np.full((rotated.shape[0] + 80, rotated.shape[1] + 80, 3), 200, np.uint8)
        canvas[40 : 40 + rotated.shape[0], 40 : 40 + rotated.shape[1]] = rotated
        items = []
        for line, box in zip(DOC_LINES, boxes):
            rx0, ry0, rx1, ry1 = _rotate_box(box, turns, block.shape[0], block.shape[1])
            # np.rot90(k) turns counter-clockwise; turning the output back takes -k turns.
            items.append(Item("text", [rx0 + 40, ry0 + 40, rx1 + 40, ry1 + 40], f"{name} deg", text=line,
                              turns=(-turns) % 4))
        out.append((f"doc{name}", canvas, items))
    # One character per line, stacked in a column.
    img = Image.new("RGB", (220, 60 + 38 * len(VERTICAL)), (240, 240, 236))
    draw = ImageDraw.Draw(img)
    tops = []
    for i, ch in enumerate(VERTICAL):
        xy = (95, 30 + i * 38)
        draw.text(xy, ch, fill=(10, 10, 10), font=_font(32))
        tops.append(draw.textbbox(xy, ch, font=_font(32)))
    box = [min(b[0] for b in tops), tops[0][1], max(b[2] for b in tops), tops[-1][3]]
    out.append(("vertical", np.asarray(img).copy(), [Item("text", box, "vertical (stacked)", text=VERTICAL)]))
    return out


def _plate_size(text: str, char_h: int) -> tuple[ImageFont.FreeTypeFont, tuple[int, int, int, int], int, int]:
    font = _font(int(char_h / 0.72))
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return font, (left, top, right, bottom), int((right - left) * 1.25), int((bottom - top) * 1.9)


def _car_body(canvas: Image.Image, text: str, char_h: int, x: int, y: int) -> None:
    """The car rear around the plate of ``_car_with_plate`` (drawn first, so no car covers
    another car's plate)."""
    _, _, pw, ph = _plate_size(text, char_h)
    ImageDraw.Draw(canvas).rounded_rectangle([x - pw // 2, y - 3 * ph, x + pw + pw // 2, y + 2 * ph],
                                             radius=max(2, ph // 3), fill=(150, 24, 30))


def _car_with_plate(canvas: Image.Image, text: str, char_h: int, x: int, y: int, angle: float = 0.0) -> list[int]:
    """Draw a plate whose characters are about ``char_h`` px tall, its top-left corner at
    (x, y), on the car body; returns the plate's box."""
    font, (left, top, right, bottom), pw, ph = _plate_size(text, char_h)
    plate = Image.new("RGB", (pw, ph), (245, 245, 240))
    draw = ImageDraw.Draw(plate)
    draw.rectangle([0, 0, pw - 1, ph - 1], outline=(20, 20, 20), width=max(1, ph // 18))
    draw.text((pw / 2 - (right - left) / 2 - left, ph / 2 - (bottom - top) / 2 - top), text, font=font, fill=(15, 15, 15))
    if angle:
        plate = plate.rotate(angle, expand=True, fillcolor=(150, 24, 30), resample=Image.BICUBIC)
    canvas.paste(plate, (x, y))
    return [x, y, x + plate.width, y + plate.height]


def plate_images() -> list[tuple[str, np.ndarray, list[Item]]]:
    out = []
    specs = [  # (name, blur, angle)
        ("plates-sharp", 0.6, 0.0),
        ("plates-blurred", 1.6, 0.0),
        ("plates-tilted", 0.6, 8.0),
    ]
    for name, blur, angle in specs:
        canvas = Image.fromarray(_background(1280, 420))
        items = []
        for i, (text, char_h) in enumerate(zip(PLATES, (10, 14, 20, 30))):
            _car_body(canvas, text, char_h, 120 + i * 300, 220)
        for i, (text, char_h) in enumerate(zip(PLATES, (10, 14, 20, 30))):
            x = 120 + i * 300
            box = _car_with_plate(canvas, text, char_h, x, 220, angle)
            items.append(Item("plate", box, f"{char_h} px chars" + (", blurred" if blur > 1 else "")
                              + (f", {angle:g} deg" if angle else ""), text=text))
        out.append((name, np.asarray(canvas.filter(ImageFilter.GaussianBlur(blur))).copy(), items))
    return out


def build() -> list[tuple[str, np.ndarray, list[Item]]]:
    """Every corpus image: (name, RGB uint8 image, planted items)."""
    return face_images() + text_images() + plate_images()


# -- measuring -------------------------------------------------------------------------------

def _covered(item_box, regions: list[dict], categories: tuple[str, ...]) -> bool:
    """Whether regions of ``categories`` cover ``item_box``: half of a text item; a fifth of a
    head crop, by face boxes lying mostly on it (a face box covers the face, not the hair)."""
    x0, y0, x1, y1 = item_box
    area = max(1, (x1 - x0) * (y1 - y0))
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for region in regions:
        if region.get("category") not in categories or not region.get("bbox"):
            continue
        rx0, ry0, rx1, ry1 = (int(v) for v in region["bbox"])
        inter = max(0, min(x1, rx1) - max(x0, rx0)) * max(0, min(y1, ry1) - max(y0, ry0))
        if "people" in categories and inter < 0.5 * max(1, (rx1 - rx0) * (ry1 - ry0)):
            continue  # a face box must lie on this head, not on a neighbour's
        mask[max(0, ry0 - y0) : max(0, ry1 - y0), max(0, rx0 - x0) : max(0, rx1 - x0)] = True
    return mask.sum() >= (0.2 if "people" in categories else 0.5) * area


class Judges:
    """The independent checks' models: dlib identity (no detector involved) and rapidocr's
    recognizer on a known, upright box."""

    def __init__(self) -> None:
        from unsafe2safe_ray.detectors.identity import IdentityEmbedder
        from unsafe2safe_ray.detectors.text import TextDetector

        import dlib

        self.embedder = IdentityEmbedder()
        self.hog = dlib.get_frontal_face_detector()
        self.ocr = TextDetector(threads=1, score_threshold=0.5, min_alnum=1, use_angle_cls=False)

    def face_distance(self, planted: np.ndarray, output_crop: np.ndarray) -> float:
        from unsafe2safe_ray.detectors.identity import distance

        a = cv2.resize(planted, (150, 150), interpolation=cv2.INTER_CUBIC)
        b = cv2.resize(output_crop, (150, 150), interpolation=cv2.INTER_CUBIC)
        # The face box from dlib's own HOG detector on the planted face (independent of the
        # pipeline's CenterFace), the same box in both.
        found = self.hog(a, 1)
        # Without a HOG face, the face part of the head crop (hair, ears and neck left out).
        box = ([found[0].left(), found[0].top(), found[0].right(), found[0].bottom()] if len(found)
               else [19, 22, 131, 142])
        va, vb = (self.embedder.embed(img, [box])[0] for img in (a, b))
        return distance(va, vb)

    def text_similarity(self, image: np.ndarray, item: Item) -> float:
        """Best similarity of the planted string to what the reader sees in its box, upright."""
        from unsafe2safe_ray.detectors.text import text_similarity

        x0, y0, x1, y1 = item.bbox
        pad_x, pad_y = max(4, (x1 - x0) // 10), max(4, (y1 - y0) // 10)
        crop = np.ascontiguousarray(np.rot90(image[max(0, y0 - pad_y) : y1 + pad_y, max(0, x0 - pad_x) : x1 + pad_x],
                                             item.turns))
        text, score = self.ocr.recognize(crop, use_cls=False)
        # rapidocr's own default confidence (0.5): a lone "8" at 0.25 on a blur is not a reading.
        readings = [text if score >= 0.5 else "", " ".join(line.text for line in self.ocr.read(crop))]
        if item.bucket.startswith("vertical"):
            # Stacked characters: the column turned a quarter turn each way reads as one line.
            for turned in (np.rot90(crop, 1), np.rot90(crop, -1)):
                text, score = self.ocr.recognize(np.ascontiguousarray(turned), use_cls=False)
                readings.append(text if score >= 0.5 else "")
        return max(text_similarity(item.text, r) for r in readings)


def measure(results: dict[str, tuple[np.ndarray, dict]], corpus, judges: Judges) -> list[dict]:
    """One record per planted item: kind, bucket, detected (a region covers it), and the
    independent score of the original and of the output (identity distance for faces, reading
    similarity for text and plates)."""

    from unsafe2safe_ray import records

    out = []
    for name, _image, items in corpus:
        original, row = results[name]
        regions = row.get("regions") or []
        edited = records.get_image(row) if row.get("status") == "edited" else None
        for item in items:
            x0, y0, x1, y1 = item.bbox
            record = {"image": name, "kind": item.kind, "bucket": item.bucket, "bbox": item.bbox,
                      "status": row.get("status"), "error": row.get("error")}
            if item.kind == "face":
                record["detected"] = _covered(item.bbox, regions, ("people",))
                record["distance_before"] = judges.face_distance(item.pixels, original[y0:y1, x0:x1])
                record["distance_after"] = (judges.face_distance(item.pixels, edited[y0:y1, x0:x1])
                                            if edited is not None else None)
            else:
                record["detected"] = _covered(item.bbox, regions, ("text_and_symbols",))
                record["similarity_before"] = judges.text_similarity(original, item)
                record["similarity_after"] = (judges.text_similarity(edited, item) if edited is not None else None)
            out.append(record)
    return out


def run_cpu_profile(corpus, stages=None):
    """Every corpus image through the cpu profile's detect and edit stages (as the Ray adapter
    runs them); returns {name: (original, row)}."""
    from unsafe2safe_ray import records
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.stages import load_stage_class
    from unsafe2safe_ray.stages.base import run_rows

    if stages is None:
        config = load_config("cpu")
        stages = [load_stage_class(name)(config) for name in config.stages]
        for stage in stages:
            stage.setup()
    rows = []
    for i, (name, image, _items) in enumerate(corpus):
        row = records.new_row(name, 0, f"corpus://{name}", None, 7 + i)
        records.set_image(row, image)
        rows.append(row)
    for stage in stages:
        rows = run_rows(stage, rows)
    by_key = {row["key"]: row for row in rows}
    return {name: (image, by_key[name]) for name, image, _ in corpus}


def table(records_: list[dict]) -> str:
    """Recall by kind and bucket: detected (a region covers it) and safe after the edit (face
    identity distance >= 0.6; planted string similarity <= 0.2)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records_:
        groups.setdefault((r["kind"], r["bucket"]), []).append(r)
    lines = ["| kind | bucket | items | detected | safe after edit | readable/identifiable before |",
             "|---|---|---|---|---|---|"]
    for (kind, bucket), rs in groups.items():
        if kind == "face":
            safe = sum(1 for r in rs if r["distance_after"] is not None and r["distance_after"] >= 0.6)
            before = sum(1 for r in rs if r["distance_before"] < 0.6)
        else:
            safe = sum(1 for r in rs if r["similarity_after"] is not None and r["similarity_after"] <= 0.2)
            before = sum(1 for r in rs if r["similarity_before"] > 0.2)
        detected = sum(r["detected"] for r in rs)
        lines.append(f"| {kind} | {bucket} | {len(rs)} | {detected}/{len(rs)} | {safe}/{len(rs)} | {before}/{len(rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    corpus = build()
    results = run_cpu_profile(corpus)
    measured = measure(results, corpus, Judges())
    print(table(measured))
    for r in measured:
        if not r["detected"] or (r.get("distance_after") or 1) < 0.6 or (r.get("similarity_after") or 0) > 0.2:
            print("miss:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"{len(corpus)} images, {len(measured)} items, {time.perf_counter() - start:.1f} s")
