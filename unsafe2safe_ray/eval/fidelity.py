"""Cheating / fidelity metrics: how much of the original survives, where.

A method can "win" privacy by destroying the image, or "win" fidelity by changing nothing. SSIM
and PSNR are therefore split into inside vs outside the sensitive regions: a good anonymizer is
low inside (identity changed) and high outside (scene kept).
"""

from __future__ import annotations

import math
import os

import numpy as np

# PSNR of identical pixels is infinite; a finite cap keeps averages and JSON well defined.
PSNR_CAP_DB = 100.0


def psnr_masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over the pixels where ``mask`` is True (all pixels when None); NaN if empty."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        if not mask.any():
            return math.nan
        diff = diff[mask]
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def ssim_psnr(original: np.ndarray, anonymized: np.ndarray, mask: np.ndarray) -> dict:
    """SSIM and PSNR on the whole image and inside / outside ``mask`` (NaN for an empty side).

    The region values average scikit-image's full SSIM map over the masked pixels, so the whole
    image value is exactly the mean of the same map.
    """
    from skimage.metrics import structural_similarity

    small = min(original.shape[:2])
    win = min(7, small if small % 2 else small - 1)  # skimage needs an odd window inside the image
    if win < 3:
        nan = math.nan
        return {k: nan for k in ("ssim", "ssim_inside_regions", "ssim_outside_regions",
                                 "psnr", "psnr_inside_regions", "psnr_outside_regions")}
    _, ssim_map = structural_similarity(
        original, anonymized, channel_axis=2, data_range=255, full=True, win_size=win
    )
    ssim_map = ssim_map.mean(axis=2)
    outside = ~mask
    return {
        "ssim": float(ssim_map.mean()),
        "ssim_inside_regions": float(ssim_map[mask].mean()) if mask.any() else math.nan,
        "ssim_outside_regions": float(ssim_map[outside].mean()) if outside.any() else math.nan,
        "psnr": psnr_masked(original, anonymized),
        "psnr_inside_regions": psnr_masked(original, anonymized, mask),
        "psnr_outside_regions": psnr_masked(original, anonymized, outside),
    }


def phash_distance(original: np.ndarray, anonymized: np.ndarray) -> int:
    """Hamming distance (0-64 bits) between the perceptual hashes; 0 means same picture."""
    import imagehash
    from PIL import Image

    return int(imagehash.phash(Image.fromarray(original)) - imagehash.phash(Image.fromarray(anonymized)))


def lpips_unavailable_reason(net: str = "vgg") -> str | None:
    """Why LPIPS cannot run offline here, or None when it can.

    LPIPS needs the ``lpips`` package (its linear layers ship inside it) and the torchvision
    backbone weights in the torch hub cache; nothing may be downloaded during evaluation.
    """
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the lpips package is not installed"
    import torch

    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    prefix = {"vgg": "vgg16-", "alex": "alexnet-", "squeeze": "squeezenet1_1-"}.get(net, net)
    if not os.path.isdir(checkpoints) or not any(f.startswith(prefix) for f in os.listdir(checkpoints)):
        return f"the {net} backbone weights are not in {checkpoints}"
    return None


class LpipsScorer:
    """LPIPS distance (lower = more similar), only built when ``lpips_unavailable_reason`` is None."""

    def __init__(self, net: str = "vgg") -> None:
        import lpips

        self._model = lpips.LPIPS(net=net, verbose=False).eval()

    def distance(self, original: np.ndarray, anonymized: np.ndarray) -> float:
        """LPIPS between two same-size RGB uint8 images."""
        import torch

        def tensor(x: np.ndarray):
            return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0

        with torch.no_grad():
            return float(self._model(tensor(original), tensor(anonymized)).item())
