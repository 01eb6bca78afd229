"""ONNX models through onnxruntime: inference, probes and gradient-free explanations.

The network runs outside autograd, so gradient methods (saliency, integrated gradients,
Grad-CAM...) are refused with a message naming what works (occlusion, feature ablation, the
probes). The randomisation gate re-initialises the ONNX initialisers (the weights) in a copy,
so it means the same as for a PyTorch model; the fingerprint is the hash of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel", "load"]


class OnnxModel(nn.Module):
    """``(N, C, *spatial)`` tensor -> the ONNX model's first output, as a tensor.

    Attributes ``supports_gradients`` / ``supports_hooks`` (False), ``fingerprint`` (sha256 of
    the file), ``in_channels`` and ``input_shape`` (from the graph's input) are read by the
    adapter.
    """

    supports_gradients = False
    supports_hooks = False

    def __init__(self, model_bytes: bytes, fingerprint: str, device: torch.device) -> None:
        super().__init__()
        import onnxruntime as ort

        self._bytes = model_bytes
        self.fingerprint = fingerprint
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        ort.set_default_logger_severity(3)  # the divisor probe's refusals are not errors
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)
        self._device = device
        first = self._session.get_inputs()[0]
        self._input = first.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in first.shape)
        self.in_channels = self.input_shape[1] if len(self.input_shape) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._session.run(None, {self._input: arr})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)

    def randomised(self, seed: int) -> OnnxModel:
        """A copy with every float initialiser redrawn (normal, the initialiser's own std)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(self._bytes)
        rng = np.random.default_rng(seed)
        for init in proto.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype.kind == "f" and w.size > 1:
                std = float(w.std()) or 1.0
                new = rng.normal(0.0, std, size=w.shape).astype(w.dtype)
                init.CopyFrom(numpy_helper.from_array(new, init.name))
        return OnnxModel(proto.SerializeToString(), self.fingerprint + "-randomised",
                         self._device)

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        return OnnxModel(self._bytes, self.fingerprint, self._device)

    def __reduce__(self) -> tuple:
        # an onnxruntime session cannot be pickled: audit workers rebuild it from the bytes
        return (OnnxModel, (self._bytes, self.fingerprint, self._device))


def load(path: Path, device: torch.device, divisor: Any = "auto", spatial_dims: int | None = None,
         activation: str = "softmax", class_names: Any = None, **extra: Any) -> Any:
    """An ONNX file as a gradient-free SegmentationAdapter.

    A graph with a fixed spatial input shape runs by sliding windows of that shape.
    """
    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.models._common import files_hash
    from medseg_xai.models.torchscript import _no_extra

    _no_extra(extra, "onnx")
    data = path.read_bytes()
    digest = files_hash([path])
    try:
        model = OnnxModel(data, digest, device)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"model: could not open {path.name!r} with onnxruntime "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    shape = model.input_shape
    dims = spatial_dims or (len(shape) - 2 if len(shape) in (4, 5) else 3)
    spatial = shape[2:]
    window = None
    if len(spatial) == dims and all(isinstance(s, int) for s in spatial):
        window = {"roi_size": tuple(spatial), "overlap": 0.5, "mode": "gaussian"}
        divisor = None  # windows of the graph's own shape are padded by the sliding window
    adapter = SegmentationAdapter(model, spatial_dims=dims, activation=activation,
                                  class_names=class_names, device=device, divisor=divisor,
                                  sliding_window=window)
    adapter.info = {"file_sha256": digest[:16], "channels": model.in_channels,
                    "patch_size": list(spatial) if window else None,
                    "input": [s if s is not None else "dynamic" for s in shape]}
    return adapter
