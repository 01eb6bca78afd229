"""Input-attribution methods on Captum, applied to ``target(adapter logits)``.

Every method here attributes one scalar per example (the target) to the input voxels and
channels, so the result has the input's shape ``(N, C, *spatial)``. ``batch_size`` is the one
memory knob: Captum's ``internal_batch_size`` (integrated gradients), ``nt_samples_batch_size``
(smoothgrad) or ``perturbations_per_eval`` (occlusion, feature ablation).

Baselines (integrated gradients, DeepLift, occlusion, feature ablation): a number, an array of
the image's shape, or ``"local_background"``: the image with the target's region replaced by its
local background (:func:`medseg_xai.explain.probes.fill_lesion`). A zero image means nothing to a
model that normalises each scan internally; the lesion-free image is the counterfactual "this
scan without the lesion", so a path attribution then sums to what the lesion's appearance adds
to the target. It is the miss analysis's default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    FeatureAblation,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.registry import BASELINE_METHODS
from medseg_xai.explain.registry import HOOKING_METHODS as _HOOKING
from medseg_xai.explain.windowed import WINDOWED_METHODS, windowed_target
from medseg_xai.targets import Target

__all__ = ["INPUT_METHODS", "LOCAL_BACKGROUND", "attribute_input", "local_background_baseline",
           "TargetModule"]

#: Baseline name: the target region replaced by its local background.
LOCAL_BACKGROUND = "local_background"
_BASELINE_METHODS = BASELINE_METHODS  # the registry's (explain/registry.py)


def local_background_baseline(x: torch.Tensor, mask: Any) -> torch.Tensor:
    """``x`` ``(1, C, *spatial)`` with ``mask`` replaced by its local background."""
    from medseg_xai.explain.probes import fill_lesion

    filled = fill_lesion(x[0].detach().cpu().numpy(), np.asarray(mask, dtype=bool))
    return torch.as_tensor(filled[None], device=x.device, dtype=x.dtype)


class TargetModule(nn.Module):
    """``x -> target(adapter logits(x))`` as a module (DeepLift and GuidedBackprop need one)."""

    def __init__(self, adapter: SegmentationAdapter, target: Target) -> None:
        super().__init__()
        self.net = adapter.model  # registered so Captum finds the ReLUs it must hook
        self._adapter = adapter
        self._target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._target(self._adapter.forward_logits(x))


def _window(value: Any, spatial: Sequence[int], name: str, default: Sequence[int]) -> tuple:
    if value is None:
        return tuple(default)
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * len(spatial)
    value = tuple(int(v) for v in value)
    if len(value) != len(spatial) or min(value) < 1:
        raise ValueError(
            f"{name}: expected one positive int or {len(spatial)} positive ints, got {value}"
        )
    if any(v > s for v, s in zip(value, spatial)):
        raise ValueError(f"{name}: {value} is larger than the image's spatial shape {tuple(spatial)}")
    return value


def _params(given: dict[str, Any], allowed: set[str], method: str) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(
            f"method {method!r}: unknown keyword arguments {sorted(unknown)}; "
            f"expected some of {sorted(allowed)}"
        )


def _saliency(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: nn.Module) -> tuple:
    _params(kw, {"abs"}, "saliency")
    absolute = bool(kw.get("abs", True))
    return Saliency(f).attribute(x, abs=absolute), {"abs": absolute}, None


def _input_x_gradient(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: Any) -> tuple:
    _params(kw, set(), "input_x_gradient")
    return InputXGradient(f).attribute(x), {}, None


def _baseline(x: torch.Tensor, value: Any) -> torch.Tensor | float:
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        # a tensor baseline (the local background) may live on the GPU: NumPy never sees it
        b = value.detach().to(device=x.device, dtype=x.dtype)
    else:
        b = torch.as_tensor(np.asarray(value, dtype=np.float32), device=x.device)
    if b.shape == x.shape[1:]:
        b = b[None]
    if b.shape != x.shape:
        raise ValueError(
            f"baseline: expected a number or an array of the image's shape {tuple(x.shape[1:])}, "
            f"got shape {tuple(b.shape)}"
        )
    return b


def _integrated_gradients(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: Any) -> tuple:
    _params(kw, {"n_steps", "baseline", "method"}, "integrated_gradients")
    n_steps = int(kw.get("n_steps", 32))
    if n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int, got {n_steps}")
    rule = kw.get("method", "gausslegendre")
    attr, delta = IntegratedGradients(f).attribute(
        x,
        baselines=_baseline(x, kw.get("baseline")),
        n_steps=n_steps,
        method=rule,
        internal_batch_size=bs,
        return_convergence_delta=True,
    )
    params = {"n_steps": n_steps, "method": rule, "baseline": _describe_baseline(kw.get("baseline"))}
    return attr, params, float(delta.abs().max())


def _describe_baseline(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if value is None:
        return 0.0
    return float(value) if isinstance(value, (int, float)) else "array"


def _smoothgrad(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: Any) -> tuple:
    _params(kw, {"n_samples", "noise", "seed", "abs"}, "smoothgrad")
    n_samples = int(kw.get("n_samples", 16))
    noise = float(kw.get("noise", 0.15))  # fraction of the intensity range (Smilkov et al.)
    seed = int(kw.get("seed", 0))
    absolute = bool(kw.get("abs", True))
    span = float(x.detach().max() - x.detach().min()) or 1.0
    stdev = noise * span
    # fork the global RNG so that the seed makes the map reproducible without side effects
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        attr = NoiseTunnel(Saliency(f)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=n_samples,
            nt_samples_batch_size=bs,
            stdevs=stdev,
            abs=absolute,
        )
    params = {"n_samples": n_samples, "noise": noise, "stdev": stdev, "seed": seed, "abs": absolute}
    return attr, params, None


def _guided_backprop(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, m: nn.Module) -> tuple:
    _params(kw, set(), "guided_backprop")
    n_relu = sum(isinstance(s, nn.ReLU) for s in m.modules())
    # Captum overrides the backward pass of nn.ReLU modules only (PReLU, LeakyReLU are left as
    # they are), so record how many were guided.
    return GuidedBackprop(m).attribute(x), {"guided_relus": n_relu}, None


def _deeplift(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, m: nn.Module) -> tuple:
    _params(kw, {"baseline"}, "deeplift")
    attr, delta = DeepLift(m).attribute(
        x, baselines=_baseline(x, kw.get("baseline")), return_convergence_delta=True
    )
    return attr, {"baseline": _describe_baseline(kw.get("baseline"))}, float(delta.abs().max())


def _occlusion(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: Any) -> tuple:
    _params(kw, {"window", "stride", "baseline"}, "occlusion")
    spatial = tuple(x.shape[2:])
    window = _window(kw.get("window"), spatial, "window", [max(1, s // 8) for s in spatial])
    stride = _window(kw.get("stride"), spatial, "stride", window)
    c = x.shape[1]
    attr = Occlusion(f).attribute(
        x,
        sliding_window_shapes=(c, *window),  # all channels occluded together
        strides=(c, *stride),
        baselines=_baseline(x, kw.get("baseline")),
        perturbations_per_eval=bs or 1,
    )
    params = {"window": list(window), "stride": list(stride),
              "baseline": _describe_baseline(kw.get("baseline"))}
    return attr, params, None


def _feature_ablation(f: Callable, x: torch.Tensor, bs: int | None, kw: dict, _m: Any) -> tuple:
    _params(kw, {"baseline"}, "feature_ablation")
    c = x.shape[1]
    # one feature per input channel: which modality mattered
    fmask = torch.arange(c, device=x.device).reshape(1, c, *[1] * (x.ndim - 2)).expand_as(x)
    attr = FeatureAblation(f).attribute(
        x,
        baselines=_baseline(x, kw.get("baseline")),
        feature_mask=fmask.contiguous(),
        perturbations_per_eval=bs or 1,
    )
    return attr, {"baseline": _describe_baseline(kw.get("baseline"))}, None


INPUT_METHODS: dict[str, Callable[..., tuple]] = {
    "saliency": _saliency,
    "integrated_gradients": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "input_x_gradient": _input_x_gradient,
    "guided_backprop": _guided_backprop,
    "deeplift": _deeplift,
    "occlusion": _occlusion,
    "feature_ablation": _feature_ablation,
}

#: methods that hook sub-modules of the model (unavailable for TorchScript): the registry's
HOOKING_METHODS = _HOOKING


def attribute_input(
    method: str,
    adapter: SegmentationAdapter,
    x: torch.Tensor,
    target: Target,
    batch_size: int | None,
    kwargs: dict[str, Any],
    window_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, Any], float | None]:
    """Run one input-attribution method; returns (attribution like x, params, delta).

    ``window_batch``: windows per backward pass under sliding-window inference.
    """

    def forward(t: torch.Tensor) -> torch.Tensor:
        return target(adapter.forward_logits(t))

    if adapter.sliding_window is not None and method in WINDOWED_METHODS:
        # gradients window batch by window batch: memory bounded by the window (#25)
        forward = windowed_target(adapter, target, window_batch)
    kwargs = dict(kwargs)
    local = method in _BASELINE_METHODS and isinstance(kwargs.get("baseline"), str)
    if local:
        if kwargs["baseline"] != LOCAL_BACKGROUND:
            raise ValueError(f"baseline: expected a number, an array or {LOCAL_BACKGROUND!r}, "
                             f"got {kwargs['baseline']!r}")
        mask = getattr(target, "mask", None)
        if mask is None:
            raise ValueError(f"baseline {LOCAL_BACKGROUND!r} needs a Target with a mask")
        kwargs["baseline"] = local_background_baseline(x, mask)
    module = TargetModule(adapter, target) if method in HOOKING_METHODS else None
    if method not in ("occlusion", "feature_ablation"):
        x = x.detach().clone().requires_grad_(True)  # Captum would warn and do the same
    with torch.enable_grad(), warnings.catch_warnings():
        # Captum announces the temporary hooks it sets (and removes) for these methods
        warnings.filterwarnings("ignore", message=r"Setting (forward|backward)", module="captum")
        warnings.filterwarnings("ignore", message=r"Setting (forward|backward)")
        attr, params, delta = INPUT_METHODS[method](forward, x, batch_size, kwargs, module)
    if local:
        params["baseline"] = LOCAL_BACKGROUND
    return attr.detach(), params, delta
