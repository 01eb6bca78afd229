"""TorchScript archives (``torch.jit.save``): code and weights without pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load"]


def load(path: Path, device: Any, divisor: Any = "auto", spatial_dims: int = 3,
         activation: str = "softmax", class_names: Any = None, **extra: Any) -> Any:
    """A TorchScript model as a SegmentationAdapter (divisor probed unless given)."""
    import torch

    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.models._common import files_hash

    _no_extra(extra, "torchscript")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError with C++ text
        raise ValueError(f"model: expected a TorchScript archive (torch.jit.save), could not "
                         f"load {path.name!r} ({type(exc).__name__})") from exc
    adapter = SegmentationAdapter(model, spatial_dims=spatial_dims, activation=activation,
                                  class_names=class_names, device=device, divisor=divisor)
    adapter.info = {"file_sha256": files_hash([path])[:16], "channels": adapter.in_channels}
    return adapter


def _no_extra(extra: dict, fmt: str) -> None:
    given = {k: v for k, v in extra.items() if v is not None}
    if given:
        raise ValueError(f"model: options {sorted(given)} do not apply to a {fmt} model")
