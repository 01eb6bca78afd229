"""MONAI bundles: the bundle's network, weights, preprocessing and inferer via ``monai.bundle``.

``configs/inference.json`` (or ``.yaml``) is parsed by :class:`monai.bundle.ConfigParser`; the
network comes from ``network_def`` with ``models/model.pt`` (state dict, ``weights_only=True``)
or ``models/model.ts`` (TorchScript), the preprocessing from ``preprocessing`` (its file-reading
transforms -- ``LoadImage(d)``, ``EnsureChannelFirst(d)`` -- are skipped: the adapter gets the
array and the case's affine), the inferer from ``inferer``. Outputs are mapped back to the
source grid by inverting the preprocessing (as the bundle's ``Invertd`` does): probabilities are
inverted, then their log is returned as logits, so the adapter's softmax gives the bundle's
inverted probabilities. The chain runs on torch tensors, so gradients flow through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BundlePipeline", "load"]

_FILE_TRANSFORMS = ("LoadImage", "EnsureChannelFirst", "SaveImage")


class BundlePipeline(nn.Module):
    """Source-grid image ``(N, C, *spatial)`` -> log-probabilities on the source grid.

    ``with_geometry(spacing, affine)`` returns a twin that knows the case's affine (the
    preprocessing's ``Spacingd`` / ``Orientationd`` read it).
    """

    def __init__(self, network: nn.Module, preprocessing: Any, inferer: Any, key: str,
                 activation: str, fingerprint: str) -> None:
        super().__init__()
        self.network = network
        self._pre = preprocessing
        self._inferer = inferer
        self._key = key
        self._activation = activation
        self.fingerprint = fingerprint
        self.affine: np.ndarray | None = None

    def with_geometry(self, spacing: Any, affine: Any) -> BundlePipeline:  # noqa: D102
        import copy

        twin = copy.copy(self)
        twin._modules = dict(self._modules)  # shares the network
        if affine is None and spacing is not None:
            affine = np.diag([*spacing, 1.0])
        twin.affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        return twin

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        from monai.data import MetaTensor

        dims = x.ndim - 1
        aff = self.affine if self.affine is not None else np.eye(dims + 1)
        img = MetaTensor(x, affine=torch.as_tensor(aff, dtype=torch.float64))
        data = self._pre({self._key: img})
        pre = data[self._key]
        calls = [0]

        def net(t: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return self.network(t)

        out = self._inferer(pre.as_tensor()[None], net)
        # what layer_map_to_source needs to send a layer map back the same way
        self._last = {"meta": dict(pre.meta), "ops": list(pre.applied_operations),
                      "shape": tuple(pre.shape[1:]), "calls": calls[0]}
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        if self._activation == "softmax":
            prob = torch.softmax(out[0], 0)
        elif self._activation == "sigmoid":
            prob = torch.sigmoid(out[0])
        else:
            prob = out[0]
        pred = MetaTensor(prob, meta=dict(pre.meta), applied_operations=list(
            pre.applied_operations))
        back = self._pre.inverse({self._key: pred})[self._key]
        back = back.as_tensor() if hasattr(back, "as_tensor") else back
        if self._activation == "sigmoid":
            p = back.clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)  # logit: the adapter's sigmoid inverts it
        return torch.log(back.clamp_min(1e-12))

    def layer_map_to_source(self, cam: torch.Tensor) -> torch.Tensor:
        """A layer map ``(1, 1, *layer_grid)`` of the last forward pass, upsampled to the
        network's input grid and sent back through the inverse of the preprocessing (never
        upsampled straight onto a source grid in another axis order)."""
        import torch.nn.functional as F
        from monai.data import MetaTensor

        last = getattr(self, "_last", None)
        if last is None or last["calls"] != 1 or cam.shape[0] != 1:
            raise ValueError("gradcam: layer maps of a bundle are mapped back for one image "
                             "that the inferer runs as one window; use an input method "
                             "(saliency, integrated_gradients, occlusion) for larger images")
        mode = {3: "trilinear", 2: "bilinear"}[cam.ndim - 2]
        up = F.interpolate(cam, size=last["shape"], mode=mode, align_corners=False)
        m = MetaTensor(up[0], meta=dict(last["meta"]), applied_operations=list(last["ops"]))
        back = self._pre.inverse({self._key: m})[self._key]
        back = back.as_tensor() if hasattr(back, "as_tensor") else back
        return back[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.stack([self._one(x[i]) for i in range(x.shape[0])])


def _config_file(folder: Path) -> Path:
    for ext in ("json", "yaml", "yml"):
        p = folder / "configs" / f"inference.{ext}"
        if p.is_file():
            return p
    raise ValueError(f"model: no configs/inference.json in the bundle {folder.name!r}")


def _preprocessing(parser: Any) -> tuple[Any, str]:
    from monai.transforms import Compose

    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    transforms = list(pre.transforms) if hasattr(pre, "transforms") else list(pre)
    kept = [t for t in transforms if not type(t).__name__.startswith(_FILE_TRANSFORMS)]
    keys = [k for t in kept for k in getattr(t, "keys", ())] or ["image"]
    return Compose(kept), str(keys[0])


def _activation(parser: Any) -> str:
    text = str(parser.get("postprocessing", "")).lower()
    if "sigmoid" in text:
        return "sigmoid"
    return "softmax"


def load(path: Path, device: torch.device, divisor: Any = None, class_names: Any = None,
         **extra: Any) -> Any:
    """A MONAI bundle folder as a SegmentationAdapter over its own pipeline."""
    import json

    from monai.bundle import ConfigParser

    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.models._common import extract_state_dict, files_hash
    from medseg_xai.models.torchscript import _no_extra

    _no_extra(extra, "monai_bundle")
    parser = ConfigParser()
    parser.read_config(str(_config_file(path)))
    parser["bundle_root"] = str(path)
    meta_file = path / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    weights = next((path / "models" / n for n in ("model.pt", "model.ts")
                    if (path / "models" / n).is_file()), None)
    if weights is None:
        raise ValueError(f"model: the bundle {path.name!r} has no models/model.pt or model.ts")
    if weights.suffix == ".ts":
        network = torch.jit.load(str(weights), map_location=device)
    else:
        network = parser.get_parsed_content("network_def", instantiate=True)
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        network.load_state_dict(extract_state_dict(state, f"model {weights.name!r}"))
    network.eval()
    pre, key = _preprocessing(parser)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    act = _activation(parser)
    pipe = BundlePipeline(network, pre, inferer, key, act, files_hash([weights]))
    spatial = _spatial_dims(network)
    adapter = SegmentationAdapter(pipe, spatial_dims=spatial, activation=act,
                                  class_names=class_names or _classes(meta), device=device,
                                  divisor=divisor)
    adapter.info = {"file_sha256": files_hash([weights])[:16], "weights": weights.name,
                    "channels": _meta_channels(meta, network),
                    "spacing": _transform_arg(pre, "Spacing", "pixdim"),
                    "patch_size": list(getattr(inferer, "roi_size", []) or []) or None,
                    "normalisation": ", ".join(type(t).__name__ for t in pre.transforms
                                               if "Intensity" in type(t).__name__) or None,
                    "inferer": type(inferer).__name__, "name": meta.get("name")}
    return adapter


def _spatial_dims(network: nn.Module) -> int:
    w = next((p for p in network.parameters() if p.ndim >= 4), None)
    return 3 if w is None or w.ndim == 5 else 2


def _transform_arg(pre: Any, name: str, attr: str) -> Any:
    for t in pre.transforms:
        if type(t).__name__.startswith(name):
            inner = getattr(t, name[0].lower() + name[1:] + "_transform", None) or getattr(
                t, name.lower() + "_transform", None) or t
            for obj in (t, inner):
                v = getattr(obj, attr, None)
                if v is not None:
                    return [float(s) for s in np.atleast_1d(np.asarray(v, dtype=float))]
    return None


def _classes(meta: dict) -> list[str] | None:
    out = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    ch = out.get("channel_def")
    if isinstance(ch, dict) and ch:
        return [str(ch[k]) for k in sorted(ch, key=lambda v: int(v))]
    return None


def _meta_channels(meta: dict, network: nn.Module) -> int | None:
    n = meta.get("network_data_format", {}).get("inputs", {}).get("image", {}).get(
        "num_channels")
    if isinstance(n, int):
        return n
    w = next((p for p in network.parameters() if p.ndim >= 4), None)
    return None if w is None else int(w.shape[1])
