"""Feature maps of one layer for one image (for activation montages)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.core import prepare_image

__all__ = ["activations"]

_LINEAR = {2: "bilinear", 3: "trilinear"}


def _capture(adapter: SegmentationAdapter, x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    store: list[torch.Tensor] = []

    def hook(_m: Any, _i: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ValueError("activations: the chosen layer does not output a single tensor")
        store.append(out.detach())

    handle = module.register_forward_hook(hook)
    try:
        adapter._model_forward(x)
    finally:
        handle.remove()
    if not store:
        raise ValueError("activations: the chosen layer was not called during the forward pass")
    return store[-1]


def activations(adapter: SegmentationAdapter, image: Any, layer: str) -> np.ndarray:
    """Feature maps of ``layer`` for one image, ``(F, *spatial_of_layer)`` float32.

    With ``slice_axis`` the per-slice maps are stacked back along the slice axis (the in-plane
    size is the layer's). With ``sliding_window`` each window's maps are resampled to the window
    and blended, so the result has the image's spatial shape.
    """
    if not adapter.supports_hooks:
        raise ValueError(
            "activations: TorchScript and ONNX models do not support forward hooks; pass the "
            "original (unscripted) nn.Module to SegmentationAdapter, or use an input method ("
            + ", ".join(adapter.available_methods) + ")"
        )
    x = prepare_image(adapter, image)
    module = adapter.get_layer(layer)
    with torch.no_grad(), adapter.frozen(freeze_parameters=False):
        if adapter.sliding_window is not None:
            from monai.inferers import sliding_window_inference

            def predictor(win: torch.Tensor) -> torch.Tensor:
                feats = _capture(adapter, win, module)
                if adapter.slice_axis is not None:
                    feats = _unfold(adapter, feats, win.shape[0])
                size = tuple(win.shape[2:])
                if tuple(feats.shape[2:]) != size:
                    feats = F.interpolate(feats, size=size, mode=_LINEAR[len(size)])
                return feats

            feats = sliding_window_inference(x, predictor=predictor, **adapter.sliding_window)
            feats = feats.as_tensor() if hasattr(feats, "as_tensor") else feats
        else:
            feats = _capture(adapter, x, module)
            if adapter.slice_axis is not None:
                feats = _unfold(adapter, feats, 1)
    return feats[0].float().cpu().numpy()


def _unfold(adapter: SegmentationAdapter, feats: torch.Tensor, n: int) -> torch.Tensor:
    """(N*S, F, h, w) slice features -> (N, F, *volume) with S back on the slice axis."""
    ns, f, h, w = feats.shape
    s = ns // n
    vol = feats.reshape(n, s, f, h, w).permute(0, 2, 1, 3, 4)  # (N, F, S, h, w)
    return vol.movedim(2, 2 + adapter.slice_axis)
