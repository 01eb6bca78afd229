"""A PyTorch state dict plus the class that defines the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load"]


def load(path: Path, device: Any, model_class: str | None = None,
         model_kwargs: dict[str, Any] | None = None, divisor: Any = "auto",
         spatial_dims: int = 3, activation: str = "softmax", class_names: Any = None,
         **extra: Any) -> Any:
    """``model_class(**model_kwargs)`` with the checkpoint's weights (``weights_only=True``)."""
    import torch

    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.models._common import extract_state_dict, files_hash, import_class
    from medseg_xai.models.torchscript import _no_extra

    _no_extra(extra, "checkpoint")
    if not model_class:
        raise ValueError("model: a PyTorch checkpoint needs its class: --model-class "
                         "package.module:Class (and --model-kwargs JSON)")
    cls = import_class(model_class)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise ValueError(f"model: could not load {path.name!r} as a weights-only checkpoint "
                         f"({type(exc).__name__}); only tensors and plain containers are "
                         "accepted (torch.load(..., weights_only=True))") from exc
    state = extract_state_dict(obj, f"model {path.name!r}")
    try:
        model = cls(**dict(model_kwargs or {}))
    except TypeError as exc:
        raise ValueError(f"model_kwargs: {model_class} refused them: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"model: {path.name!r} does not fit {model_class}"
                         f"(**{model_kwargs or {}}): {first}") from exc
    model.eval()
    adapter = SegmentationAdapter(model, spatial_dims=spatial_dims, activation=activation,
                                  class_names=class_names, device=device, divisor=divisor)
    adapter.info = {"file_sha256": files_hash([path])[:16], "class": model_class,
                    "channels": adapter.in_channels}
    return adapter
