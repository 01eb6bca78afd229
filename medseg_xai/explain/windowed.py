"""Input gradients through sliding-window inference, one window batch at a time.

MONAI's :func:`~monai.inferers.sliding_window_inference` blends the windows' outputs:
``L(v) = sum_w f_w(v) * imp(v - o_w) / count(v)`` with ``count = sum_w imp(. - o_w)`` (the
importance map ``imp``, constant or Gaussian, placed at every window origin ``o_w`` of the
padded image). A target ``T(L)`` therefore has the input gradient

    dT/dx = sum_w J_w^T [ (dT/dL)|_w * imp / count|_w ],

where ``J_w`` is the Jacobian of the network on window ``w`` alone. The cotangent ``dT/dL`` is
cheap (the target is a masked mean of the logits: no network in it), so the gradient is
accumulated window batch by window batch with each window's own backward pass, and only the
windows where that cotangent is non-zero (the target's support) are run at all. The forward
value of a :class:`~medseg_xai.targets.Target` likewise needs the logits inside its mask only,
so it runs only the windows overlapping the mask's box (:func:`region_logits`). Peak memory
is the activations of one window batch plus arrays of the volume's size (the image, the
logits, the gradient), instead of the activations of every window at once, which the
whole-volume backward pass keeps.

:func:`windowed_target` wraps this as an autograd function ``x -> T(L(x))``: Captum's
saliency, input x gradient, integrated gradients and SmoothGrad run on it unchanged (same
steps, noise and seeds), so their maps equal the whole-volume computation up to float
rounding (tested at a small size: correlation >= 0.999). The forward value is MONAI's own
blended output, computed without gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medseg_xai.adapters import SegmentationAdapter

__all__ = ["WINDOWED_METHODS", "WindowPlan", "blend", "overlapping", "region_logits",
           "window_plan", "windowed_gradient", "windowed_target"]

#: ``explain()`` methods whose gradients are accumulated window by window.
WINDOWED_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad")


@dataclass(frozen=True)
class WindowPlan:
    """MONAI's window layout for one image size (sliding_window_inference's own helpers).

    Attributes
    ----------
    pad : list of int
        ``F.pad`` amounts (last axis first) MONAI applies when the image is smaller than the
        window.
    slices : list of tuple of slice
        Spatial slices of every window in the padded image, in MONAI's order.
    importance : torch.Tensor
        ``(*roi)`` blending weights of one window.
    count : torch.Tensor
        ``(*padded spatial)`` sum of the importance maps placed at every window.
    """

    pad: list[int]
    slices: list[tuple[slice, ...]]
    importance: torch.Tensor
    count: torch.Tensor


def window_plan(
    spatial: Sequence[int], cfg: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> WindowPlan:
    """The windows, padding and blending weights ``sliding_window_inference`` uses.

    Parameters
    ----------
    spatial : sequence of int
        The image's spatial shape.
    cfg : dict
        The adapter's ``sliding_window`` settings (``roi_size``, ``overlap``, ``mode``,
        ``sigma_scale``).
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
    from monai.inferers.utils import _get_scan_interval
    from monai.utils import ensure_tuple_rep

    nd = len(spatial)
    roi = tuple(int(r) for r in cfg["roi_size"])
    pad: list[int] = []
    for k in range(nd - 1, -1, -1):  # MONAI's loop: last axis first
        diff = max(roi[k] - int(spatial[k]), 0)
        pad.extend([diff // 2, diff - diff // 2])
    size = tuple(max(int(s), r) for s, r in zip(spatial, roi))
    overlap = ensure_tuple_rep(cfg.get("overlap", 0.25), nd)
    interval = _get_scan_interval(size, roi, nd, overlap)
    slices = [tuple(s) for s in dense_patch_slices(size, roi, interval)]
    valid = get_valid_patch_size(size, roi)
    imp = compute_importance_map(valid, mode=cfg.get("mode", "constant"),
                                 sigma_scale=cfg.get("sigma_scale", 0.125), device=device,
                                 dtype=dtype)
    count = torch.zeros(size, dtype=dtype, device=device)
    for sl in slices:
        count[sl] += imp
    return WindowPlan(pad=pad, slices=slices, importance=imp, count=count)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _pad(x: torch.Tensor, plan: WindowPlan, cfg: dict[str, Any]) -> torch.Tensor:
    if not any(plan.pad):
        return x
    from monai.utils import PytorchPadMode, look_up_option

    mode = look_up_option(cfg.get("padding_mode", "constant"), PytorchPadMode)
    return F.pad(x, pad=plan.pad, mode=mode, value=cfg.get("cval", 0.0))


def overlapping(plan: WindowPlan, boxp: tuple[slice, ...]) -> list[int]:
    """Indices of the windows of ``plan`` that overlap ``boxp`` (padded-grid slices)."""
    return [i for i, sl in enumerate(plan.slices)
            if all(a.start < b.stop and b.start < a.stop for a, b in zip(sl, boxp))]


def blend(plan: WindowPlan, need: list[int], outputs: dict[int, torch.Tensor],
          boxp: tuple[slice, ...]) -> torch.Tensor:
    """MONAI's blend restricted to ``boxp``: ``sum f_w * imp`` in window order, ``/ count``.

    ``outputs[i]`` is window ``i``'s output ``(..., K, *roi)``; windows not overlapping
    ``boxp`` contribute nothing there, so ``need`` (:func:`overlapping`) suffices.
    """
    acc: torch.Tensor | None = None
    imp = plan.importance.to(next(iter(outputs.values())).device) if outputs else None
    for i in need:
        y = outputs[i] * imp
        sl = plan.slices[i]
        inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, boxp))
        src = tuple(slice(t.start - a.start, t.stop - a.start) for t, a in zip(inter, sl))
        dst = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(inter, boxp))
        if acc is None:
            acc = torch.zeros((*y.shape[:-len(boxp)], *(b.stop - b.start for b in boxp)),
                              dtype=y.dtype, device=y.device)
        acc[(..., *dst)] += y[(..., *src)]
    if acc is None:
        raise ValueError("blend: no window overlaps the region")
    return acc / plan.count[boxp].to(acc.device)


def region_logits(adapter: SegmentationAdapter, x: torch.Tensor, box: tuple[slice, ...],
                  window_batch: int | None = None) -> torch.Tensor:
    """Blended sliding-window logits ``(N, K, *box)`` of ``x`` inside ``box``, no gradients.

    Only the windows overlapping ``box`` run; the values are MONAI's there.
    """
    cfg = adapter.sliding_window
    plan = window_plan(x.shape[2:], cfg, x.device, x.dtype)
    before = [plan.pad[2 * k] for k in range(x.ndim - 3, -1, -1)]
    boxp = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, before))
    need = overlapping(plan, boxp)
    bs = int(window_batch or cfg.get("sw_batch_size", 1))
    with torch.no_grad():
        xp = _pad(x, plan, cfg)
        outputs: dict[int, list[torch.Tensor]] = {i: [] for i in need}
        pairs = [(i, n) for i in need for n in range(x.shape[0])]  # batched together
        for group in _batches(pairs, bs):
            win = torch.cat([xp[(slice(n, n + 1), slice(None), *plan.slices[i])]
                             for i, n in group])
            y = adapter._model_forward(win)
            for j, (i, _n) in enumerate(group):
                outputs[i].append(y[j])
        stacked = {i: torch.stack(v) for i, v in outputs.items()}
        return blend(plan, need, stacked, boxp)


def windowed_gradient(
    adapter: SegmentationAdapter,
    x: torch.Tensor,
    cotangent: torch.Tensor,
    *,
    window_batch: int | None = None,
    box: tuple[slice, ...] | None = None,
) -> torch.Tensor:
    """``J(x)^T cotangent`` of the blended sliding-window logits, window batch by batch.

    Parameters
    ----------
    adapter : SegmentationAdapter
        With ``sliding_window`` set.
    x : torch.Tensor
        Images ``(N, C, *spatial)``.
    cotangent : torch.Tensor
        ``dT/dL``: the gradient of the target with respect to the blended logits,
        ``(N, K, *spatial)``, or ``(N, K, *box)`` inside ``box`` (zero outside it).
    window_batch : int, optional
        Windows per backward pass (default the adapter's ``sw_batch_size``).
    box : tuple of slice, optional
        The region ``cotangent`` covers (default the whole image).

    Returns
    -------
    torch.Tensor
        The input gradient, ``x``'s shape. Windows where ``cotangent`` is zero are skipped.
    """
    cfg = adapter.sliding_window
    if cfg is None:
        raise ValueError("windowed_gradient: the adapter has no sliding_window")
    plan = window_plan(x.shape[2:], cfg, x.device, x.dtype)
    bs = int(window_batch or cfg.get("sw_batch_size", 1))
    if box is None:
        box = tuple(slice(0, int(s)) for s in x.shape[2:])
    before = [plan.pad[2 * k] for k in range(x.ndim - 3, -1, -1)]
    boxp = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, before))
    cot = cotangent / plan.count[boxp]  # the blend's weights: divided by the overlap count
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        xp = _pad(leaf, plan, cfg)
    # (example, window) pairs with a non-zero cotangent, batched together
    todo = []
    for n in range(x.shape[0]):
        for i in overlapping(plan, boxp):
            sl = plan.slices[i]
            inter = [slice(max(a.start, c.start), min(a.stop, c.stop)) for a, c in zip(sl, boxp)]
            src = tuple(slice(t.start - c.start, t.stop - c.start) for t, c in zip(inter, boxp))
            dst = tuple(slice(t.start - a.start, t.stop - a.start) for t, a in zip(inter, sl))
            if bool(cot[(n, slice(None), *src)].any()):
                todo.append((n, sl, src, dst))
    grad_pad = torch.zeros_like(xp)
    for group in _batches(todo, bs):
        win = torch.cat([xp[(slice(n, n + 1), slice(None), *sl)].detach() for n, sl, _, _ in group])
        weight = torch.zeros((len(group), cot.shape[1], *win.shape[2:]), dtype=cot.dtype,
                             device=cot.device)
        for j, (n, _sl, src, dst) in enumerate(group):
            weight[(j, slice(None), *dst)] = cot[(n, slice(None), *src)]
        win.requires_grad_(True)
        with torch.enable_grad():
            out = adapter._model_forward(win)
            (g,) = torch.autograd.grad((out * (weight * plan.importance)).sum(), win)
        for j, (n, sl, _src, _dst) in enumerate(group):
            grad_pad[(slice(n, n + 1), slice(None), *sl)] += g[j : j + 1]
        del out, g, win
    if any(plan.pad):  # back through MONAI's padding (reflect/replicate fold back)
        (grad_x,) = torch.autograd.grad(xp, leaf, grad_pad)
        return grad_x
    return grad_pad


def _target_logits(adapter: SegmentationAdapter, x: torch.Tensor, target: Callable,
                   window_batch: int | None) -> tuple[torch.Tensor, Callable, Any]:
    """(logits, target, box): a Target reads its mask box only, so only that is computed."""
    from medseg_xai.targets import Target

    mask = target.mask if isinstance(target, Target) else None
    if mask is None or not mask.any():
        with torch.no_grad():
            return adapter.forward_logits(x), target, None
    import numpy as np

    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    # the same mean over the same voxels: the target cropped to its box
    return region_logits(adapter, x, box, window_batch), target.crop(box), box


class _WindowedTarget(torch.autograd.Function):
    """``x -> target(sliding-window logits(x))`` with a window-by-window backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, adapter: SegmentationAdapter,  # type: ignore[override]
                target: Callable, window_batch: int | None) -> torch.Tensor:
        logits, local, box = _target_logits(adapter, x, target, window_batch)
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(True)
            value = local(leaf)
        ctx.save_for_backward(x)
        ctx.graph = (leaf, value)
        ctx.box = box
        ctx.adapter = adapter
        ctx.window_batch = window_batch
        return value.detach()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        leaf, value = ctx.graph
        ctx.graph = None
        # dT/dL: the target alone, no network (a masked mean: zero off its support)
        (cot,) = torch.autograd.grad(value, leaf, grad_out)
        del leaf, value
        grad = windowed_gradient(ctx.adapter, x.detach(), cot, window_batch=ctx.window_batch,
                                 box=ctx.box)
        return grad, None, None, None


def windowed_target(
    adapter: SegmentationAdapter, target: Callable, window_batch: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function ``x (N, C, *spatial) -> (N,)`` for Captum, window-by-window backward.

    Its value is ``target(adapter.forward_logits(x))``; its gradient is that of the
    whole-volume computation, accumulated one window batch at a time
    (:func:`windowed_gradient`).
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        return _WindowedTarget.apply(x, adapter, target, window_batch)

    return forward
