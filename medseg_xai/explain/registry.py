"""One registry of explanation methods: what each is called, what it needs and what it costs.

``explain()``, the miss analysis, the Captum wrappers, Grad-CAM and the CaseExplorer read the
method sets from here (they kept three copies before). Light: no torch import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BASELINE_METHODS", "HOOKING_METHODS", "LAYER_METHODS", "METHODS", "PATH_METHODS",
           "REGISTRY", "MethodInfo", "default_methods", "display_name", "method_info",
           "refuse_unavailable"]


@dataclass(frozen=True)
class MethodInfo:
    """One explanation method.

    Attributes
    ----------
    name : str
        The name ``explain(method=...)`` takes.
    display : str
        The name views show.
    kind : {"input", "layer"}
        Attribution on the input voxels, or a layer's class-activation map (needs a layer).
    baseline : bool
        Compares the image with a baseline image (``baseline=`` parameter; the miss analysis
        passes the lesion-free image).
    hooks : bool
        Hooks the model's sub-modules (unavailable for TorchScript and ONNX models).
    path : bool
        Integrates along a path from the baseline (completeness can be checked).
    gradients : bool
        Needs gradients (unavailable for gradient-free models such as ONNX).
    parameters : mapping
        Parameters with their defaults (what ``Explanation.params`` records when not given).
    forward_passes : str
        Cost in model evaluations, in words.
    """

    name: str
    display: str
    kind: str
    baseline: bool = False
    hooks: bool = False
    path: bool = False
    gradients: bool = True
    parameters: Mapping[str, Any] = field(default_factory=dict)
    forward_passes: str = "1 forward + 1 backward"


REGISTRY: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("saliency", "Saliency", "input", parameters={"abs": True}),
    MethodInfo("integrated_gradients", "Integrated gradients", "input", baseline=True, path=True,
               parameters={"n_steps": 32, "method": "gausslegendre"},
               forward_passes="n_steps forward + backward"),
    MethodInfo("smoothgrad", "SmoothGrad", "input",
               parameters={"n_samples": 16, "noise": 0.15, "seed": 0, "abs": True},
               forward_passes="n_samples forward + backward"),
    MethodInfo("input_x_gradient", "Input x gradient", "input"),
    MethodInfo("guided_backprop", "Guided backprop", "input", hooks=True),
    MethodInfo("deeplift", "DeepLift", "input", baseline=True, hooks=True, path=True,
               forward_passes="2 forward + 1 backward"),
    MethodInfo("occlusion", "Occlusion", "input", baseline=True, gradients=False,
               forward_passes="one forward per window position"),
    MethodInfo("feature_ablation", "Feature ablation", "input", baseline=True, gradients=False,
               forward_passes="one forward per feature group"),
    MethodInfo("gradcam", "Grad-CAM", "layer", hooks=True),
    MethodInfo("gradcam++", "Grad-CAM++", "layer", hooks=True),
)}

METHODS: tuple[str, ...] = tuple(REGISTRY)
LAYER_METHODS: tuple[str, ...] = tuple(m for m, i in REGISTRY.items() if i.kind == "layer")
#: Input methods that hook sub-modules of the model (unavailable for TorchScript).
HOOKING_METHODS = frozenset(m for m, i in REGISTRY.items() if i.hooks and i.kind == "input")
BASELINE_METHODS = frozenset(m for m, i in REGISTRY.items() if i.baseline)
PATH_METHODS = frozenset(m for m, i in REGISTRY.items() if i.path)


def method_info(name: str) -> MethodInfo:
    """The registry entry of ``name`` (ValueError listing the methods when unknown)."""
    if name not in REGISTRY:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {name!r}")
    return REGISTRY[name]


def display_name(name: str) -> str:
    """``"Grad-CAM"`` for ``"gradcam"`` (the name itself when unknown)."""
    info = REGISTRY.get(name)
    return info.display if info is not None else name


def default_methods(adapter: Any, miss: bool = False) -> tuple[str, ...]:
    """Methods run when none are named: Grad-CAM (and integrated gradients for a miss
    analysis) on a plain network; integrated gradients (or saliency) without hooks
    (TorchScript); occlusion on a gradient-free model (ONNX)."""
    available = getattr(adapter, "available_methods", METHODS)
    wanted = ("gradcam", "integrated_gradients") if miss else ("gradcam",)
    chosen = tuple(m for m in wanted if m in available)
    if chosen:
        return chosen
    fallback = "integrated_gradients" if miss else "saliency"
    return (fallback,) if fallback in available else ("occlusion",)


def refuse_unavailable(adapter: Any, method: str) -> None:
    """ValueError naming the methods that do work when ``method`` cannot run on this model."""
    available = getattr(adapter, "available_methods", METHODS)
    if method in available:
        return
    works = ", ".join(repr(m) for m in available)
    if not getattr(adapter, "supports_gradients", True):
        why = ("the model runs without gradients (ONNX through onnxruntime, or an exact-only "
               "pipeline)")
    elif method in LAYER_METHODS or method in HOOKING_METHODS:
        why = ("it needs hooks on the model's layers, and TorchScript and ONNX models do not "
               "support hooks (explain the original, unscripted nn.Module, or a checkpoint + "
               "class, for layer maps)")
    else:
        why = "the model does not support it"
    raise ValueError(f"method {method!r} cannot run on this model: {why}; methods that work: "
                     f"{works}")
