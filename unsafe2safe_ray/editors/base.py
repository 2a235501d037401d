"""The editor interface of Stage 2. One editor per file; editors share only image utilities.

The utilities here are the ones every editor and the edit stage need: choosing a working size
(native or area buckets), resizing there and back, region masks with dilation and feathering, the
blend that leaves pixels outside the mask byte-identical, and a fail-closed float -> uint8
conversion that refuses NaN or infinite outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EditRequest:
    """One image to edit, with the Stage 1 texts that drive the edit.

    ``regions`` are ``{category, bbox: [x0, y0, x1, y1], score, text?}`` dicts in pixel
    coordinates of ``image``. ``source_prompt`` describes the real image (the private caption),
    ``target_prompt`` the wanted one (combined or public caption). ``strength`` is 0 for the
    configured settings; each higher level asks the editor for a stronger edit (used when the
    verifier still finds a leak).
    """

    image: np.ndarray  # HxWx3 uint8
    source_prompt: str = ""
    target_prompt: str = ""
    instruction: str = ""
    regions: list[dict] = field(default_factory=list)
    seed: int = 0
    strength: int = 0


class Editor:
    """Turns a batch of requests into edited images of the same sizes.

    ``size_multiple`` is the pixel grid the model needs (VAE factor times patch size); ``None``
    means the editor works on any size and the stage does not resize for it. Diffusion editors
    expect every request of one ``edit`` call to share a size and a strength; the edit stage
    buckets them that way.
    """

    name = "editor"
    size_multiple: int | None = 16
    # A region editor changes pixels only inside the requests' regions (classic obscuring);
    # the edit stage fails a flagged row it would hand over without regions.
    needs_regions: bool = False

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        raise NotImplementedError


class NonFiniteOutputError(RuntimeError):
    """An editor produced NaN or infinite pixels (fp16 overflow and the like)."""


def check_batch(requests: list[EditRequest]) -> tuple[int, int, int]:
    """The shared (height, width, strength) of a batch; raises if the stage mixed them."""
    if not requests:
        raise ValueError("empty edit batch")
    h, w = requests[0].image.shape[:2]
    strength = requests[0].strength
    for req in requests:
        if req.image.shape[:2] != (h, w) or req.strength != strength:
            raise ValueError("an edit batch must share one image size and one strength")
    return int(h), int(w), int(strength)


def to_uint8(images: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """Float images in [0, 1] (BxHxWx3 or a list) -> uint8; NaN/inf raise (fail closed)."""
    out = []
    for img in images:
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise NonFiniteOutputError("editor output contains NaN or infinite values")
        out.append(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))
    return out


def working_size(
    height: int,
    width: int,
    *,
    multiple: int,
    max_side: int,
    target_area: int | None = None,
    scale: float = 1.0,
) -> tuple[int, int]:
    """The (height, width) an image is edited at.

    Native mode (``target_area`` None): the image's own size, downscaled only when its longer
    side exceeds ``max_side``, then rounded down to ``multiple`` (the FlowEdit paper's policy).
    Area mode: the aspect ratio kept at about ``target_area`` pixels on a ``multiple`` grid, so
    images of similar shape share a bucket and batch together. ``scale`` shrinks the result
    further (the lower-resolution retry after OOM or NaN). Never below one ``multiple``.
    """
    if target_area is not None:
        factor = math.sqrt(target_area / float(height * width))
    else:
        factor = min(1.0, max_side / float(max(height, width)))
    factor *= scale
    h = max(multiple, int(round(height * factor)) // multiple * multiple)
    w = max(multiple, int(round(width * factor)) // multiple * multiple)
    return h, w


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize HxWx3 uint8 to (height, width); area filter when shrinking, cubic when growing."""
    import cv2

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = h * w < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=interp)


def region_mask(
    shape: tuple[int, int], regions: list[dict], dilation: float, feather: int
) -> np.ndarray:
    """A float32 HxW mask in [0, 1]: 1 inside the union of the dilated region boxes, ramping to 0
    over ``feather`` pixels towards the boundary, and exactly 0 outside the dilated union.

    ``dilation`` grows each box by that fraction of its longer side on every edge. The feather
    runs inward (a distance transform inside the union), so nothing outside the dilated boxes is
    touched: the caller's promise that outside pixels stay byte-identical holds.
    """
    import cv2

    h, w = shape
    hard = np.zeros((h, w), dtype=np.uint8)
    for region in regions:
        box = region.get("bbox") if isinstance(region, dict) else None
        if not box or len(box) != 4:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        grow = dilation * max(x1 - x0, y1 - y0)
        xa, ya = max(0, int(math.floor(x0 - grow))), max(0, int(math.floor(y0 - grow)))
        xb, yb = min(w, int(math.ceil(x1 + grow))), min(h, int(math.ceil(y1 + grow)))
        if xb > xa and yb > ya:
            hard[ya:yb, xa:xb] = 1
    if feather <= 0 or not hard.any():
        return hard.astype(np.float32)
    # Distance to the nearest pixel outside the union; pad so image borders do not count as
    # outside (a box touching the border keeps full strength there).
    padded = cv2.copyMakeBorder(hard, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    return np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32) * hard


def blend(original: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``edited`` inside ``mask``, ``original`` outside; pixels where mask == 0 are copied
    unchanged from ``original`` (not recomputed), so they stay byte-identical."""
    m = mask[..., None]
    mixed = original.astype(np.float32) * (1.0 - m) + edited.astype(np.float32) * m
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    outside = mask <= 0.0
    out[outside] = original[outside]
    return out


def torch_device_and_dtype(preference: str):
    """(device, dtype) for a diffusion editor: bf16 (else fp16) on CUDA when ``auto``, float32 on
    CPU where half precision is slow and poorly supported."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda")
        if preference == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = getattr(torch, preference)
    else:
        device = torch.device("cpu")
        dtype = torch.float32 if preference == "auto" else getattr(torch, preference)
    return device, dtype


def place_pipeline(pipe, device, dtype):
    """``pipe`` on ``device`` in ``dtype``, except the modules its models keep in float32.

    ``pipe.to(device, dtype)`` casts every weight, undoing what ``from_pretrained(dtype=fp16)``
    kept in fp32 (T5's ``wo`` layers in SD3 and FLUX, whose fp16 activations overflow). Those
    modules (each model's ``_keep_in_fp32_modules``) go back to float32 in half precision."""
    import torch

    pipe = pipe.to(device, dtype)
    if dtype != torch.float16:
        return pipe
    for component in getattr(pipe, "components", {}).values():
        keep = set(getattr(component, "_keep_in_fp32_modules", None) or ())
        keep |= set(getattr(component, "_keep_in_fp32_modules_strict", None) or ())
        if not keep or not isinstance(component, torch.nn.Module):
            continue
        for name, module in component.named_modules():
            if keep & set(name.split(".")):
                module.to(torch.float32)
    return pipe


def generators(seeds: list[int]) -> list:
    """One torch generator per image, so each image's noise depends only on its own seed
    (not on which other images share its batch)."""
    import torch

    # CPU generators everywhere: identical noise on CPU and GPU, and diffusers' randn_tensor
    # moves it to the device.
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def quiet_diffusers() -> None:
    """No progress-bar or info-log spam from diffusers/transformers in actor logs."""
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass
