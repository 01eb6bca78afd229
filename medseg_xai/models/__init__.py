"""Load what users ship: one entry point, :func:`load_model`, for every model format.

Recognised (:func:`detect_format`):

* ``torchscript``: a ``torch.jit.save`` archive (code + weights, no pickle);
* ``checkpoint``: a PyTorch state dict plus ``model_class="package.module:Class"`` and keyword
  arguments (loaded with ``torch.load(..., weights_only=True)``);
* ``onnx``: an ``.onnx`` file run by onnxruntime (gradient-free: occlusion, feature ablation
  and the probes);
* ``monai_bundle``: a MONAI bundle folder (``configs/inference.json``): its network, weights,
  preprocessing and inferer through ``monai.bundle``;
* ``nnunet``: an nnU-Net v2 results folder or the zip of ``nnUNetv2_export_model_to_zip``.

Every loader returns a :class:`~medseg_xai.adapters.SegmentationAdapter` whose ``info`` says what
was recognised (``medseg-xai model-info``) and whose ``fingerprint`` is the hash of the loaded
weights or model file. Formats with their own pipeline (MONAI bundles, nnU-Net) take images on
their source grid; :meth:`SegmentationAdapter.with_geometry` gives them each case's spacing and
affine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg_xai.models.members import fold_members  # light: imports nnU-Net only when called

__all__ = ["FORMATS", "detect_format", "fold_members", "load_model", "model_info"]

FORMATS = ("torchscript", "checkpoint", "onnx", "monai_bundle", "nnunet")


def detect_format(path: str | Path, model_class: str | None = None) -> str:
    """The format of the model at ``path`` (one of :data:`FORMATS`), or a ValueError."""
    import zipfile

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model: expected a model file or folder, found nothing at "
                                f"{p.name!r}")
    if p.is_dir():
        from medseg_xai.models.nnunet import find_nnunet_folder

        if (p / "configs").is_dir() and any((p / "configs" / f"inference.{ext}").is_file()
                                            for ext in ("json", "yaml", "yml")):
            return "monai_bundle"
        if find_nnunet_folder(p) is not None:
            return "nnunet"
        raise ValueError(f"model: the folder {p.name!r} is neither a MONAI bundle "
                         "(configs/inference.json) nor an nnU-Net v2 results folder "
                         "(plans.json, dataset.json, fold_k/checkpoint_final.pth)")
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("plans.json") for n in names):
            return "nnunet"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names) and not model_class:
            return "torchscript"
    if model_class:
        return "checkpoint"
    raise ValueError(f"model: {p.name!r} is not a TorchScript archive, an .onnx file, a MONAI "
                     "bundle or an nnU-Net folder; a PyTorch checkpoint (state dict) needs its "
                     "class: --model-class package.module:Class")


def load_model(spec: Any, device: str | Any = None, **options: Any) -> Any:
    """Load a model as users ship it and wrap it in a SegmentationAdapter.

    Parameters
    ----------
    spec : str, Path or torch.nn.Module
        ``"demo"`` (the bundled demo model), a path (format from :func:`detect_format`), or a
        module (wrapped as it is).
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (default: CUDA when available).
    **options
        ``model_class`` ("package.module:Class") and ``model_kwargs`` (dict) for checkpoints;
        ``divisor`` (int or "auto"); ``spatial_dims``, ``activation``, ``class_names``;
        ``configuration``, ``folds``, ``checkpoint``, ``use_mirroring`` for nnU-Net;
        ``format`` to skip detection.

    Returns
    -------
    medseg_xai.adapters.SegmentationAdapter
        With ``info`` (what was recognised) and ``fingerprint`` (weights or file hash).
    """
    from medseg_xai.adapters import SegmentationAdapter, resolve_device

    dev = resolve_device(device if device is not None else "auto")
    if isinstance(spec, SegmentationAdapter):
        return spec
    if not isinstance(spec, (str, Path)):
        return SegmentationAdapter(spec, device=dev, **options)
    if str(spec) == "demo":
        from medseg_xai.demo import load_model as demo

        adapter = demo(device=dev)
        adapter.info = {"format": "demo", "classes": list(adapter.class_names or []),
                        "channels": 1, "normalisation": "inside the network (head z-score)"}
        return adapter
    fmt = options.pop("format", None) or detect_format(spec, options.get("model_class"))
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    import importlib

    module = importlib.import_module(f"medseg_xai.models.{fmt}")
    adapter = module.load(Path(spec), dev, **options)
    adapter.info = {"format": fmt, **getattr(adapter, "info", {})}
    return adapter


def model_info(adapter: Any) -> dict[str, Any]:
    """What was recognised: format, classes, channels, spacing, patch size, normalisation,
    folds, divisor, device, fingerprint and the explanation methods that run."""
    info = dict(getattr(adapter, "info", {}) or {})
    info.setdefault("format", "module")
    info.setdefault("classes", list(adapter.class_names) if adapter.class_names else None)
    info.setdefault("channels", adapter.in_channels)
    for key in ("spacing", "patch_size", "normalisation", "folds"):
        info.setdefault(key, None)
    info["divisor"] = list(adapter.divisor)
    info["device"] = str(adapter.device)
    info["fingerprint"] = adapter.fingerprint
    info["methods"] = list(adapter.available_methods)
    return info
