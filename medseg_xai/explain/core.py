"""``explain()``: one entry point for every attribution method, and the :class:`Explanation`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.budget import answer_oom, budget_bytes, plan_batches
from medseg_xai.explain.captum_methods import attribute_input
from medseg_xai.explain.gradcam import layer_cam
from medseg_xai.explain.provenance import provenance
from medseg_xai.explain.registry import (
    LAYER_METHODS,
    METHODS,
    default_methods,
    refuse_unavailable,
)
from medseg_xai.targets import Target

__all__ = ["explain", "Explanation", "METHODS", "LAYER_METHODS", "prepare_image",
           "refuse_unavailable", "default_methods"]

# METHODS, LAYER_METHODS, default_methods, refuse_unavailable: the one registry
# (explain/registry.py), re-exported here


@dataclass
class Explanation:
    """An attribution map with everything needed to read and reproduce it.

    Attributes
    ----------
    attribution : numpy.ndarray
        float32 map with the input's spatial shape (the sum over input channels for input
        methods; the upsampled class activation map for Grad-CAM methods).
    channel_attribution : numpy.ndarray
        ``(C, *spatial)`` per input channel for input methods; ``(1, *spatial)`` for Grad-CAM
        methods, which do not resolve input channels.
    method, target, layer, params, elapsed_s, provenance
        Method name, the :class:`~medseg_xai.targets.Target` (or callable), the layer name
        (Grad-CAM methods, else None), the method's parameters, wall time in seconds, and
        library versions / model fingerprint / settings.
    convergence_delta : float or None
        Largest absolute completeness error reported by Captum (integrated gradients,
        deeplift): ``|sum(attribution) - (target(x) - target(baseline))|``.
    """

    attribution: np.ndarray
    channel_attribution: np.ndarray
    method: str
    target: Any
    layer: str | None
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    convergence_delta: float | None = None

    @property
    def target_description(self) -> str:
        """The target in words (``describe()`` when it has one)."""
        describe = getattr(self.target, "describe", None)
        return describe() if callable(describe) else repr(self.target)

    def to_nifti(self, path: str | Path, affine: np.ndarray | None = None) -> Path:
        """Save ``attribution`` as NIfTI (axes in the array's order) with the image's affine.

        Parameters
        ----------
        path : str or Path
            Output file, ``.nii`` or ``.nii.gz``.
        affine : array (4, 4), optional
            The source image's affine (identity when omitted) so the map overlays the image.
        """
        import nibabel as nib

        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError(f"affine: expected a finite 4x4 array, got shape {aff.shape}")
        p = Path(path)
        if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
            raise ValueError(f"path: expected a .nii or .nii.gz file name, got {p.name!r}")
        img = nib.Nifti1Image(np.asarray(self.attribution, dtype=np.float32), aff)
        img.header["descrip"] = f"medseg-xai {self.method}"[:79].encode()
        nib.save(img, str(p))
        return p


def prepare_image(adapter: SegmentationAdapter, image: Any) -> torch.Tensor:
    """One image (numpy or tensor ``(C, *spatial)``, ``(*spatial)`` or ``(1, C, *spatial)``)
    as a float tensor ``(1, C, *spatial)`` on the adapter's device."""
    x, _ = adapter.as_batch(image, name="image")
    if x.shape[0] != 1:
        raise ValueError(f"image: explain() takes one image, got a batch of {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("image: contains NaN or infinite values")
    return x.detach().float()


def _check_target(target: Any, spatial: tuple[int, ...]) -> None:
    if isinstance(target, Target):
        if target.mask.shape != spatial:
            raise ValueError(
                f"target: mask shape {target.mask.shape} differs from the image's spatial shape "
                f"{spatial}"
            )
    elif not callable(target):
        raise ValueError(
            f"target: expected a medseg_xai.targets.Target or a callable logits -> (N,), got "
            f"{type(target).__name__}"
        )


def _checked_input(adapter: SegmentationAdapter, image: Any, target: Any, method: str,
                   layer: str | None, batch_size: Any) -> torch.Tensor:
    """Check explain's arguments (method, batch size, target, layer); the prepared image."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    x = prepare_image(adapter, image)
    spatial = tuple(x.shape[2:])
    _check_target(target, spatial)
    refuse_unavailable(adapter, method)
    if layer is not None and method not in LAYER_METHODS:
        raise ValueError(f"layer: only {list(LAYER_METHODS)} use a layer, got method {method!r}")
    return x


def _layer_attribution(adapter: SegmentationAdapter, x: torch.Tensor, target: Any, method: str,
                       layer: str | None, kwargs: dict[str, Any]
                       ) -> tuple[torch.Tensor, dict[str, Any], str]:
    """A Grad-CAM(++) map upsampled to the input: (attribution, params, layer name)."""
    relu = kwargs.pop("relu", True)
    if kwargs:
        raise ValueError(f"method {method!r}: unknown keyword arguments {sorted(kwargs)}; "
                         f"expected only 'relu'")
    if not isinstance(relu, bool):
        raise ValueError(f"relu: expected True or False, got {relu!r}")
    layer_name = layer if layer is not None else adapter.default_layer(tuple(x.shape))
    module = adapter.get_layer(layer_name)
    attr = layer_cam(adapter, x, target, module, plusplus=method == "gradcam++", relu=relu)
    return attr, {"upsampling": "linear", "relu": relu}, layer_name


def _plan_memory(adapter: SegmentationAdapter, x: torch.Tensor, method: str, max_memory: Any,
                 batch_size: int | None) -> tuple[int | None, int | None, int | None]:
    """(budget in bytes, windows per backward pass, examples per forward pass) of a budget."""
    window_batch = None
    budget = budget_bytes(max_memory, adapter.device)
    if budget is not None:
        window_batch, examples = plan_batches(adapter, tuple(x.shape), budget)
        if batch_size is None and method in ("integrated_gradients", "smoothgrad"):
            batch_size = examples
    return budget, window_batch, batch_size


@answer_oom("explain()")
def explain(
    adapter: SegmentationAdapter,
    image: Any,
    target: Target | Callable[[torch.Tensor], torch.Tensor],
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int | None = None,
    max_memory: Any = None,
    **kwargs: Any,
) -> Explanation:
    """Explain why the model scores ``target`` as it does on ``image``.

    Parameters
    ----------
    adapter : SegmentationAdapter
        The wrapped model.
    image : array or tensor
        One image ``(C, *spatial)`` (``(*spatial)`` gets ``C=1``).
    target : Target or callable
        Reduces logits ``(N, K, *spatial)`` to ``(N,)``; see :mod:`medseg_xai.targets`.
    method : str
        One of :data:`METHODS`: ``saliency``, ``integrated_gradients`` (``n_steps=32``,
        ``baseline=0``), ``smoothgrad`` (``n_samples=16``, ``noise=0.15`` of the intensity
        range, ``seed=0``), ``input_x_gradient``, ``guided_backprop``, ``deeplift``
        (``baseline``), ``occlusion`` (``window``, ``stride`` per spatial axis, default 1/8 of
        the image; ``baseline``), ``feature_ablation`` (per input channel), ``gradcam``,
        ``gradcam++``.
    layer : str, optional
        Layer for Grad-CAM methods; default :meth:`SegmentationAdapter.default_layer`.
    batch_size : int, optional
        Bounds memory for many-pass methods: examples per forward pass for integrated
        gradients / smoothgrad, perturbations per forward pass for occlusion / ablation.
    max_memory : str, int or None
        A memory budget (``"8GB"``, bytes, or ``"auto"``: the device's free memory) that
        picks the windows per backward pass and, unless ``batch_size`` is given, the examples
        per forward pass (:mod:`medseg_xai.explain.budget`). Running out of memory raises
        :class:`~medseg_xai.explain.budget.OutOfMemory` saying what to lower.

    Returns
    -------
    Explanation

    Notes
    -----
    The model runs in ``eval()`` mode with frozen parameters; its training flags,
    ``requires_grad`` and hooks are as before when this returns or raises.
    """
    x = _checked_input(adapter, image, target, method, layer, batch_size)

    budget, window_batch, batch_size = _plan_memory(adapter, x, method, max_memory, batch_size)
    start = time.perf_counter()
    delta = None
    with adapter.frozen():
        if method in LAYER_METHODS:
            attr, params, layer_name = _layer_attribution(adapter, x, target, method, layer,
                                                          kwargs)
        else:
            layer_name = None
            attr, params, delta = attribute_input(method, adapter, x, target, batch_size, kwargs,
                                                  window_batch=window_batch)
    elapsed = time.perf_counter() - start

    channel = attr[0].detach().float().cpu().numpy()
    attribution = channel.sum(axis=0) if channel.shape[0] > 1 else channel[0].copy()
    if batch_size is not None:
        params["batch_size"] = int(batch_size)
    if budget is not None:
        params["max_memory"] = int(budget)
        params["window_batch"] = window_batch
    return Explanation(
        attribution=attribution.astype(np.float32), channel_attribution=channel.astype(np.float32),
        method=method, target=target, layer=layer_name, params=params, elapsed_s=elapsed,
        provenance=provenance(adapter), convergence_delta=delta,
    )
