"""The bundled demo model: per-scan intensity normalisation in front of a small MONAI 3D UNet.

Normalisation lives inside the network (:class:`ScanNormalise`), so training, inference and every
explanation see the same transform and the adapter takes raw scanner images. The network pads
inputs to a multiple of 8 voxels (three stride-2 levels) and crops the logits back, so scans of
any device grid can be passed whole.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

__all__ = [
    "ARCHITECTURE",
    "DemoSegmenter",
    "ScanNormalise",
    "WEIGHTS_FILE",
    "build_model",
    "load_model",
    "normalise_intensity",
    "training_record",
]

#: Keyword arguments of the MONAI UNet inside :class:`DemoSegmenter`.
ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": (8, 16, 32, 64),
    "strides": (2, 2, 2),
    "num_res_units": 1,
}
WEIGHTS_FILE = "demo_unet.pt"
RECORD_FILE = "demo_unet.json"
CLASS_NAMES = ("background", "lesion")
_MULTIPLE = 8  # 2 ** len(strides)


def normalise_intensity(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score each scan and channel over its head voxels.

    Head voxels are those brighter than the scan's mean (a robust split between air and tissue
    in MR magnitude images), so the statistics do not depend on how much air the field of view
    holds. Works for any number of spatial axes; an all-constant scan maps to zeros.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` raw intensities.
    eps : float
        Floor of the standard deviation.

    Returns
    -------
    torch.Tensor
        Same shape, float32.
    """
    if x.ndim < 3:
        raise ValueError(f"x: expected a tensor (N, C, *spatial), got shape {tuple(x.shape)}")
    dims = tuple(range(2, x.ndim))
    # The mask is a selection, not part of the function being explained: no gradient through it.
    # Chosen in the input's own precision: after a cast to float32 a voxel within rounding of
    # the mean could change sides when the scan is rescaled (x * 0.015625 + 3 did).
    mask = (x > x.mean(dim=dims, keepdim=True)).detach()
    x = x.float()
    # A constant scan has no voxel above its mean: use every voxel (the output is then 0).
    mask = (mask | (mask.sum(dim=dims, keepdim=True) == 0)).float()
    count = mask.sum(dim=dims, keepdim=True)
    mean = (x * mask).sum(dim=dims, keepdim=True) / count
    var = ((x - mean) ** 2 * mask).sum(dim=dims, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps * eps)


class ScanNormalise(nn.Module):
    """:func:`normalise_intensity` as a module (first step of :class:`DemoSegmenter`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_intensity(x)


class DemoSegmenter(nn.Module):
    """Raw scan ``(N, 1, D, H, W)`` -> lesion logits ``(N, 2, D, H, W)``.

    Sub-modules: ``normalise`` (:class:`ScanNormalise`) and ``unet`` (MONAI ``UNet`` built from
    :data:`ARCHITECTURE`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.normalise = ScanNormalise()
        self.unet = UNet(**ARCHITECTURE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        spatial = x.shape[2:]
        pad: list[int] = []
        for n in reversed(spatial):  # F.pad lists the last axis first
            extra = (-n) % _MULTIPLE
            pad += [extra // 2, extra - extra // 2]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        out = self.unet(x)
        if any(pad):
            crop = tuple(slice(pad[2 * k], pad[2 * k] + n)
                         for k, n in enumerate(reversed(spatial)))[::-1]
            out = out[(slice(None), slice(None), *crop)]
        return out


def build_model(seed: int | None = None) -> DemoSegmenter:
    """A fresh, untrained :class:`DemoSegmenter` (initialised from ``seed`` when given)."""
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return DemoSegmenter()
    return DemoSegmenter()


def _weights_dir() -> Path:
    return Path(str(resources.files("medseg_xai.demo") / "weights"))


def training_record() -> dict[str, Any]:
    """The JSON record written next to the bundled weights by ``python -m medseg_xai.demo.train``."""
    path = _weights_dir() / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"demo training record not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_model(weights: str | Path | None = None, device: str | torch.device = "cpu"):
    """Load the bundled (or given) demo weights and wrap them in a ``SegmentationAdapter``.

    Parameters
    ----------
    weights : str, Path or None
        A ``state_dict`` saved by the training script; default the one shipped in the package.
        Loaded with ``torch.load(..., weights_only=True)``.
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    medseg_xai.adapters.SegmentationAdapter
        Softmax adapter over :class:`DemoSegmenter` with class names ``("background",
        "lesion")``; it takes raw scanner images (normalisation is inside the model).
    """
    from medseg_xai.adapters import SegmentationAdapter

    path = Path(weights) if weights is not None else _weights_dir() / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"weights: no file at {path}; run `python -m medseg_xai.demo.train` to create it"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"weights: {path} does not hold a DemoSegmenter state_dict ({exc})"
        ) from exc
    model.eval()
    model.to(device)
    return SegmentationAdapter(model, spatial_dims=3, activation="softmax",
                               class_names=list(CLASS_NAMES), device=device)
