"""Grad-CAM and Grad-CAM++ for segmentation targets, in 2D and 3D.

Grad-CAM uses Captum's :class:`~captum.attr.LayerGradCam` (channel weights = spatial mean of the
target's gradient at the layer, ReLU of the weighted sum of feature maps). Grad-CAM++ follows
Chattopadhyay et al. 2018 as implemented in MONAI's ``GradCAMpp`` but takes our target instead of
a summed class channel (MONAI's extra ``exp(score)`` factor is a positive constant per example
and is left out). Maps are upsampled to the input grid with N-D linear interpolation
(``align_corners=False``, as MONAI's default upsampler).

With ``adapter.slice_axis`` the layer sees one slice per batch item, so each slice gets its own
weights and the slice maps are stacked back into the volume. With ``adapter.sliding_window``
every window gets the Grad-CAM of the target restricted to that window and the windows are
blended by MONAI's sliding-window inference.

:func:`localising_layer` is the layer the miss analysis uses: the first block of the network
(the largest module enclosing the first convolution, in execution order, with that
convolution's output shape). On the bundled demo model the decoder's last wide block (the
adapter's general default) gives a positive Grad-CAM that is zero on most detected lesions,
while the first block's positive map points into the lesion (pointing game measured in
``benchmarks/bench_miss.py`` and reported in ``docs/miss_analysis.md``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.targets import Target

__all__ = ["layer_cam", "localising_layer", "upsample"]

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """N-D linear upsampling of ``(B, 1, *s)`` maps to ``size`` (MONAI's default upsampler)."""
    if tuple(cam.shape[2:]) == tuple(size):
        return cam
    return F.interpolate(cam, size=tuple(size), mode=_LINEAR[len(size)], align_corners=False)


def _gradcam_pp(
    forward: Any, module: nn.Module, x: torch.Tensor, relu: bool = True
) -> torch.Tensor:
    """Grad-CAM++ map at ``module``'s output, ``(B', 1, *layer_spatial)``."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ValueError("gradcam++: the chosen layer does not output a single tensor")
        if not out.requires_grad:  # frozen parameters and a plain input: start the graph here
            out.requires_grad_(True)
        store["acti"] = out

    handle = module.register_forward_hook(hook)
    try:
        score = forward(x)
    finally:
        handle.remove()
    if "acti" not in store:
        raise ValueError("gradcam++: the chosen layer was not called during the forward pass")
    acti = store["acti"]
    (grad,) = torch.autograd.grad(score.sum(), acti)
    b, c = grad.shape[:2]
    ones = [1] * (grad.ndim - 2)
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + (acti * g3).reshape(b, c, -1).sum(-1).reshape(b, c, *ones)
    denom = torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = g2 / (denom + 1e-7)
    weights = (alpha * F.relu(grad)).reshape(b, c, -1).sum(-1).reshape(b, c, *ones)
    cam = (weights * acti).sum(1, keepdim=True)
    return (F.relu(cam) if relu else cam).detach()


def _cam_at_layer(
    adapter: SegmentationAdapter,
    x: torch.Tensor,
    target: Target,
    module: nn.Module,
    plusplus: bool,
    relu: bool = True,
) -> torch.Tensor:
    """CAM for a batch the model sees without sliding windows, on the input grid."""

    def forward(t: torch.Tensor) -> torch.Tensor:
        return target(adapter._model_forward(t))

    import contextlib

    single = getattr(adapter.model, "single_pass", None)  # pipelines: one hooked call
    with torch.enable_grad(), (single() if callable(single) else contextlib.nullcontext()):
        if plusplus:
            cam = _gradcam_pp(forward, module, x, relu=relu)
        else:
            cam = LayerGradCam(forward, module).attribute(x, relu_attributions=relu).detach()
    if isinstance(cam, tuple):
        raise ValueError("gradcam: the chosen layer has several outputs; pick a convolution")
    to_source = getattr(adapter.model, "layer_map_to_source", None)
    if callable(to_source):  # a model with its own pipeline maps its layer grid back itself
        return to_source(cam)
    if adapter.slice_axis is None:
        return upsample(cam, x.shape[2:])
    # slices were folded into the batch: (N*S, 1, h, w) -> (N, 1, *volume)
    ax = 2 + adapter.slice_axis
    n = x.shape[0]
    moved = x.movedim(ax, 2)
    s, a, b = moved.shape[2:]
    cam = upsample(cam, (a, b)).reshape(n, s, 1, a, b).permute(0, 2, 1, 3, 4)
    return cam.movedim(2, ax)


_LOCALISING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def localising_layer(adapter: SegmentationAdapter, input_shape: Sequence[int]) -> str:
    """Dotted name of the first block: the Grad-CAM layer of the miss analysis.

    The first convolution the forward pass calls, climbed to the largest enclosing module with
    the same output shape (so the map is taken after its normalisation and activation, as for
    :meth:`SegmentationAdapter.default_layer`). One traced forward pass, cached per model and
    input shape.

    Parameters
    ----------
    adapter : SegmentationAdapter
    input_shape : sequence of int
        ``(C, *spatial)`` or ``(N, C, *spatial)``.
    """
    from medseg_xai.adapters import CONV_TYPES

    shape = tuple(int(v) for v in input_shape)
    if len(shape) == adapter.spatial_dims + 1:
        shape = (1, *shape)
    cache = _LOCALISING.setdefault(adapter.model, {})
    if shape in cache:
        return cache[shape]
    if not adapter.supports_hooks:
        from medseg_xai.explain.registry import refuse_unavailable

        refuse_unavailable(adapter, "gradcam")
    modules = dict(adapter.model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}  # each module's first output shape
    order: list[str] = []
    for key, _module, out_shape in adapter.trace(shape, every_module=True):
        if key not in shapes:
            shapes[key] = out_shape
            order.append(key)
    convs = [n for n in order if isinstance(modules[n], CONV_TYPES)]
    if not convs:
        raise ValueError(
            "gradcam: the model has no convolution that forward hooks reach; pass layer= or use "
            "an input-attribution method"
        )
    first = convs[0]
    parts = first.split(".")
    best = first
    for anc in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)):
        if anc not in modules:
            continue
        if shapes.get(anc) != shapes[first]:
            break
        best = anc
    cache[shape] = best
    return best


def _pad_like_monai(mask_shape: Sequence[int], roi: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding sliding_window_inference applies when the image is small."""
    out = []
    for s, r in zip(mask_shape, roi):
        diff = max(r - s, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


def layer_cam(
    adapter: SegmentationAdapter,
    x: torch.Tensor,
    target: Target,
    module: nn.Module,
    plusplus: bool = False,
    relu: bool = True,
) -> torch.Tensor:
    """Grad-CAM (or ++) of ``target`` at ``module``, upsampled to ``x``'s grid ``(N, 1, *s)``.

    ``relu=False`` keeps the sign: negative values are evidence against the target, which is
    what a missed lesion often shows (the ReLU'd map of a miss can be all zero).
    """
    if adapter.sliding_window is None:
        return _cam_at_layer(adapter, x, target, module, plusplus, relu)

    import numpy as np
    from monai.inferers import sliding_window_inference

    cfg = adapter.sliding_window
    pads = _pad_like_monai(target.mask.shape, cfg["roi_size"])
    padded = replace(target, mask=np.pad(target.mask, pads), _cache={})

    def predictor(win: torch.Tensor, coords: list[list[slice]]) -> torch.Tensor:
        maps = []
        for i, sl in enumerate(coords):
            sub = padded.crop(sl[2:])
            if not sub.mask.any():  # no target voxel here: a zero map, no passes (#25)
                maps.append(torch.zeros((1, 1, *win.shape[2:]), dtype=win.dtype,
                                        device=win.device))
                continue
            maps.append(_cam_at_layer(adapter, win[i : i + 1], sub, module, plusplus, relu))
        return torch.cat(maps)

    with torch.no_grad():  # the predictor re-enables gradients inside each window
        cam = sliding_window_inference(x, predictor=predictor, with_coord=True, **cfg)
    return cam.as_tensor() if hasattr(cam, "as_tensor") else cam
