"""nnU-Net v2 results folders and exported zips, with nnU-Net's own pipeline.

Two paths, as the framework itself has one and gradients need another:

* **exact** (predictions, metrics, probes): nnU-Net's ``nnUNetPredictor`` -- its cropping,
  normalisation, resampling (spline), Gaussian sliding windows, test-time mirroring and fold
  ensemble -- on the image in nnU-Net's axis order (SimpleITK's: the reverse of the NIfTI array
  order) with the case's spacing;
* **differentiable** (gradients, Grad-CAM): the same steps in torch -- crop to the non-zero box
  (nnU-Net's own ``crop_to_nonzero``), the plans' ``transpose_forward``, the plans'
  normalisation (z-score, CT, none), trilinear resampling to the plans' spacing, padding to the
  patch size (one window) or MONAI Gaussian sliding windows of the patch size, mirroring and
  folds averaged, and back: ``transpose_backward``, trilinear resampling to the cropped grid,
  background outside the box, the source axis order. The measured gap to the exact path is in
  ``docs/models.md``.

Layer maps (Grad-CAM) are taken on one pass of the first fold without mirroring
(:meth:`NnUNetPipeline.single_pass`) and sent back through the same inverse
(:meth:`NnUNetPipeline.layer_map_to_source`); :meth:`NnUNetPipeline.alignment_error` is the
impulse-response gate of that mapping. The nnU-Net package is needed (``pip install
medseg-xai[nnunet]``; see the README for the ``--no-deps`` line that keeps torchvision out).
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NnUNetPipeline", "find_nnunet_folder", "load"]

_BIG = 30.0  # background logit margin outside nnU-Net's crop box


def find_nnunet_folder(path: Path) -> Path | None:
    """The ``Trainer__Plans__configuration`` folder under ``path`` (itself included): the one
    holding ``plans.json``, ``dataset.json`` and ``fold_*/checkpoint_*.pth``; None if none."""
    candidates = [path, *sorted(p.parent for p in path.rglob("plans.json"))]
    for c in candidates:
        if (c / "plans.json").is_file() and (c / "dataset.json").is_file() and any(
                c.glob("fold_*/checkpoint_*.pth")):
            return c
    return None


def _trilinear(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(t.shape[2:]) == tuple(size):
        return t
    mode = {3: "trilinear", 2: "bilinear"}[len(size)]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


class NnUNetPipeline(nn.Module):
    """Source-grid image ``(N, C, *spatial)`` (NIfTI array order) -> logits on that grid."""

    def __init__(self, networks: list[nn.Module], plans_manager: Any, configuration: Any,
                 dataset_json: dict, mirror_axes: tuple[int, ...] | None, fingerprint: str,
                 predictor: Any) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self._pm = plans_manager
        self._cm = configuration
        self._dataset_json = dataset_json
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else ()
        self.fingerprint = fingerprint
        self._predictor = predictor
        self.spacing: tuple[float, ...] | None = None
        self._single = False
        self._last: dict[str, Any] | None = None
        #: fold names and checkpoint files, in the order of ``networks`` (set by :func:`load`)
        self.fold_names: list[str] = [str(i) for i in range(len(networks))]
        self.fold_files: list[Path] = []

    # ------------------------------------------------------------------ geometry
    def with_geometry(self, spacing: Any, affine: Any) -> NnUNetPipeline:  # noqa: D102
        import copy

        twin = copy.copy(self)
        twin._modules = dict(self._modules)  # shares the networks
        if spacing is None and affine is not None:
            a = np.asarray(affine, dtype=float)
            spacing = np.linalg.norm(a[:-1, :-1], axis=0)
        twin.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        return twin

    def _spacing_zyx(self, ndim: int) -> list[float]:
        sp = self.spacing if self.spacing is not None else (1.0,) * ndim
        return [float(s) for s in reversed(sp)]

    @staticmethod
    def _to_nnunet_axes(x: torch.Tensor) -> torch.Tensor:
        """(C, i, j, k) NIfTI order -> (C, k, j, i): SimpleITK's array order, nnU-Net's."""
        return x.permute(0, *range(x.ndim - 1, 0, -1))

    @staticmethod
    def _to_source_axes(y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, *range(y.ndim - 1, 0, -1))

    # ------------------------------------------------------------------ differentiable path
    def _normalise(self, x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
        schemes = self._cm.normalization_schemes
        use_mask = self._cm.use_mask_for_norm
        props = self._pm.foreground_intensity_properties_per_channel
        out = []
        for c in range(x.shape[0]):
            v, name = x[c], schemes[c]
            if name == "ZScoreNormalization":
                sel = v[torch.from_numpy(mask).to(v.device)] if use_mask[c] else v
                mean, std = sel.mean(), sel.std(unbiased=False)
                v = (v - mean) / torch.clamp(std, min=1e-8)
                if use_mask[c]:
                    v = torch.where(torch.from_numpy(mask).to(v.device), v, torch.zeros_like(v))
            elif name == "CTNormalization":
                p = props[str(c)] if str(c) in props else props[c]
                v = torch.clamp(v, p["percentile_00_5"], p["percentile_99_5"])
                v = (v - p["mean"]) / max(float(p["std"]), 1e-8)
            elif name != "NoNormalization":
                raise ValueError(f"nnU-Net normalisation {name!r} has no differentiable "
                                 "version here; the exact path (predictions, probes, "
                                 "occlusion) still works")
            out.append(v)
        return torch.stack(out)

    def _run_networks(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits over folds and mirrorings of one padded image (1, C, *patch)."""
        nets = list(self.networks)[:1] if self._single else list(self.networks)
        flips = [()]
        if not self._single:
            import itertools

            axes = [a + 2 for a in self.mirror_axes]
            flips = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        total = None
        for net in nets:
            for f in flips:
                y = net(torch.flip(x, f) if f else x)
                y = torch.flip(y, f) if f else y
                total = y if total is None else total + y
        self._last["calls"] += len(nets) * len(flips)
        return total / (len(nets) * len(flips))

    def _network_grid(self, pre: torch.Tensor) -> torch.Tensor:
        patch = [int(p) for p in self._cm.patch_size]
        shape = list(pre.shape[1:])
        if all(s <= p for s, p in zip(shape, patch)):
            pads = [((p - s) // 2, p - s - (p - s) // 2) for s, p in zip(shape, patch)]
            flat = [v for lo_hi in reversed(pads) for v in lo_hi]
            y = self._run_networks(F.pad(pre[None], flat))
            crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, shape))
            self._last.update(pads=pads, padded=patch)
            return y[(0, slice(None), *crop)]
        from monai.inferers import sliding_window_inference

        self._last.update(pads=None, padded=None)
        y = sliding_window_inference(pre[None], roi_size=patch, sw_batch_size=1, overlap=0.5,
                                     mode="gaussian", sigma_scale=0.125,
                                     predictor=self._run_networks)
        return (y.as_tensor() if hasattr(y, "as_tensor") else y)[0]

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        img = self._to_nnunet_axes(x.float())
        spacing = self._spacing_zyx(img.ndim - 1)
        arr = img.detach().cpu().numpy()
        _, seg, bbox = crop_to_nonzero(arr.copy(), None)
        box = tuple(slice(int(lo), int(hi)) for lo, hi in bbox)
        cropped = img[(slice(None), *box)]
        tf = list(self._pm.transpose_forward)
        moved = cropped.permute(0, *[t + 1 for t in tf])
        mask = (seg[0][box] >= 0).transpose(tf)
        normed = self._normalise(moved, mask)
        target = list(self._cm.spacing)
        new_shape = compute_new_shape(moved.shape[1:], [spacing[t] for t in tf], target)
        pre = _trilinear(normed[None], tuple(new_shape))[0]
        self._last = {"calls": 0, "pre_shape": tuple(pre.shape[1:]), "box": box,
                      "cropped_shape": tuple(cropped.shape[1:]), "full": tuple(img.shape[1:])}
        logits = self._network_grid(pre)
        return self._back(logits, background=True)

    def _back(self, y: torch.Tensor, background: bool) -> torch.Tensor:
        """(K, *network grid) -> (K, *source grid, NIfTI order): the inverse of the steps."""
        last = self._last
        tb = list(self._pm.transpose_backward)
        y = y.permute(0, *[t + 1 for t in tb])
        y = _trilinear(y[None], last["cropped_shape"])[0]
        fill = torch.zeros((y.shape[0], *last["full"]), dtype=y.dtype, device=y.device)
        if background:
            fill[0] = _BIG
        full = fill.clone()
        full[(slice(None), *last["box"])] = y
        return self._to_source_axes(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.stack([self._one(x[i]) for i in range(x.shape[0])])

    # ------------------------------------------------------------------ layer maps
    @contextlib.contextmanager
    def single_pass(self) -> Iterator[None]:
        """One network call per image (first fold, no mirroring): layer hooks see one map."""
        old, self._single = self._single, True
        try:
            yield
        finally:
            self._single = old

    def layer_map_to_source(self, cam: torch.Tensor) -> torch.Tensor:
        """A layer map ``(1, 1, *layer grid)`` of the last pass, back to the source grid:
        upsampled to the network's (padded) input grid, padding removed, then the inverse of the
        preprocessing (never upsampled straight onto the source grid, whose axes are in
        another order)."""
        last = self._last
        if last is None or last.get("calls") != 1 or last.get("padded") is None:
            raise ValueError("gradcam: on an nnU-Net model a layer map is mapped back for an "
                             "image that fits one patch of the plans; use an input method "
                             "(saliency, integrated_gradients, occlusion) for larger images")
        up = _trilinear(cam, tuple(last["padded"]))[0]
        crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(last["pads"], last["pre_shape"]))
        return self._back(up[(slice(None), *crop)], background=False)[None]

    def alignment_error(self, shape: tuple[int, ...]) -> float:
        """Impulse response of the layer-map mapping, in source voxels.

        A bright voxel off the centre of a source image of ``shape`` is carried forward by the
        differentiable preprocessing to the network's input grid; a delta at its brightest
        voxel there is mapped back by :meth:`layer_map_to_source`'s steps. The distance between
        where it lands and where it started is ~0 for a correct pipeline and large for one whose
        axes are in the wrong order.
        """
        src = np.ones(shape, np.float32)
        # a different relative position on every axis, so a swap of axes moves it
        frac = np.linspace(0.2, 0.75, len(shape))
        p = tuple(int(min(max(1, round(f * (s - 1))), s - 2)) for f, s in zip(frac, shape))
        src[p] = 50.0
        with torch.no_grad(), self.single_pass():
            img = self._to_nnunet_axes(torch.from_numpy(src)[None])
            dev = next(self.parameters()).device
            self._one(torch.from_numpy(src)[None].to(dev))
            last = self._last
            tf = list(self._pm.transpose_forward)
            moved = img[(slice(None), *last["box"])].permute(0, *[t + 1 for t in tf])
            pre = _trilinear(moved[None], last["pre_shape"])[0]
            q = np.unravel_index(int(pre[0].argmax()), pre.shape[1:])
            delta = torch.zeros((1, *last["pre_shape"]))
            delta[(0, *q)] = 1.0
            back = self._back(delta.to(dev), background=False)[0].cpu().numpy()
        got = np.unravel_index(int(back.argmax()), back.shape)
        return float(np.linalg.norm(np.subtract(got, p)))

    # ------------------------------------------------------------------ fold members
    def fold_pipelines(self) -> list[NnUNetPipeline]:
        """One pipeline per fold, each what nnU-Net predicts with that fold alone (its
        mirroring included), sharing this pipeline's networks, plans and state dicts: nothing
        is loaded again. The exact path of the whole pipeline averages the folds' logits, so
        ``softmax(mean of the folds' log-probabilities)`` is its probability (tested).
        Fingerprint of each: the sha256 of its checkpoint file, as a load of that fold alone
        gives."""
        import copy

        from medseg_xai.models._common import files_hash

        params = list(getattr(self._predictor, "list_of_parameters", None) or [])
        if len(params) != len(self.networks):
            raise ValueError(f"nnU-Net model: {len(params)} state dicts for "
                             f"{len(self.networks)} fold networks; cannot split into folds")
        out = []
        for i, net in enumerate(self.networks):
            twin = copy.copy(self)
            twin._modules = {**self._modules, "networks": nn.ModuleList([net])}
            predictor = copy.copy(self._predictor)  # shares nnU-Net's one network object
            predictor.list_of_parameters = [params[i]]
            twin._predictor = predictor
            twin.fold_names = [self.fold_names[i]]
            twin.fold_files = self.fold_files[i:i + 1]
            twin.fingerprint = (files_hash(twin.fold_files) if twin.fold_files
                                else f"{self.fingerprint}:fold{self.fold_names[i]}")
            out.append(twin)
        return out

    # ------------------------------------------------------------------ exact path
    @torch.no_grad()
    def exact_logits(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's own inference (nnUNetPredictor): log-probabilities on the source grid."""
        out = []
        for i in range(x.shape[0]):
            img = self._to_nnunet_axes(x[i].float()).cpu().numpy()
            props = {"spacing": self._spacing_zyx(img.ndim - 1)}
            _, probs = self._predictor.predict_single_npy_array(img, props, None, None, True)
            p = torch.from_numpy(np.ascontiguousarray(probs)).float()
            out.append(self._to_source_axes(torch.log(p.clamp_min(1e-12))))
        return torch.stack(out).to(x.device)


def _unzip(path: Path) -> Path:
    """An exported zip (nnUNetv2_export_model_to_zip) unpacked next to a cache of its hash."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"medseg-xai-nnunet-{digest}"
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="medseg-xai-nnunet-"))
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():  # no absolute paths or '..' outside the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"model: the zip {path.name!r} holds an unsafe path")
            z.extractall(tmp)
        tmp.rename(target)
    return target


def _choose(folder: Path, configuration: str | None) -> Path:
    found = sorted(p.parent for p in folder.rglob("plans.json")
                   if any(p.parent.glob("fold_*/checkpoint_*.pth")))
    if configuration:
        found = [f for f in found if f.name.endswith(f"__{configuration}")]
    if not found:
        raise ValueError(f"model: no nnU-Net results folder{' for ' + configuration if configuration else ''} "
                         f"(plans.json, dataset.json, fold_k/checkpoint_final.pth) in "
                         f"{folder.name!r}")
    if len(found) > 1 and not configuration:
        names = ", ".join(f.name.split("__")[-1] for f in found)
        raise ValueError(f"model: several nnU-Net configurations ({names}); choose one with "
                         "configuration=")
    return found[0]


def load(path: Path, device: torch.device, configuration: str | None = None,
         folds: Any = None, checkpoint: str = "checkpoint_final.pth",
         use_mirroring: bool = True, divisor: Any = None, **extra: Any) -> Any:
    """An nnU-Net v2 results folder (or exported zip) as a SegmentationAdapter."""
    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.models._common import files_hash
    from medseg_xai.models.torchscript import _no_extra

    _no_extra(extra, "nnunet")
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as exc:
        raise ValueError("model: an nnU-Net folder needs the nnunetv2 package (pip install "
                         "'medseg-xai[nnunet]', see the README)") from exc
    root = _unzip(path) if path.is_file() else path
    folder = _choose(root, configuration)
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    fold_dirs = sorted(folder.glob("fold_*")) if folds is None else [
        folder / f"fold_{f}" for f in (folds if isinstance(folds, (list, tuple)) else [folds])]
    files = [d / checkpoint for d in fold_dirs if (d / checkpoint).is_file()]
    if not files:
        raise ValueError(f"model: no fold of {folder.name!r} has {checkpoint}")
    ckpts = [torch.load(str(f), map_location="cpu", weights_only=True) for f in files]
    pm = PlansManager(plans)
    cm = pm.get_configuration(ckpts[0]["init_args"]["configuration"])
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    nets = []
    for ck in ckpts:
        net = _build(pm, cm, n_in, n_out)
        net.load_state_dict(ck["network_weights"])
        nets.append(net.eval())
    mirror = ckpts[0].get("inference_allowed_mirroring_axes") if use_mirroring else None
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                use_mirroring=bool(mirror), perform_everything_on_device=False,
                                device=device, verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.manual_initialization(_build(pm, cm, n_in, n_out), pm, cm,
                                    [ck["network_weights"] for ck in ckpts], dataset_json,
                                    ckpts[0]["trainer_name"], mirror)
    pipe = NnUNetPipeline(nets, pm, cm, dataset_json, mirror, files_hash(files), predictor)
    pipe.fold_names = [f.parent.name.removeprefix("fold_") for f in files]
    pipe.fold_files = list(files)
    labels = dataset_json.get("labels", {})
    names = [str(k) for k, _ in sorted(labels.items(), key=lambda kv: _label_value(kv[1]))]
    adapter = SegmentationAdapter(pipe, spatial_dims=len(cm.patch_size), activation="softmax",
                                  class_names=names or None, device=device, divisor=None)
    adapter.info = {"configuration": folder.name.split("__")[-1], "trainer": ckpts[0]["trainer_name"],
                    "classes": names, "channels": n_in,
                    "spacing": [float(s) for s in reversed(cm.spacing)],
                    "patch_size": [int(s) for s in reversed(cm.patch_size)],
                    "normalisation": ", ".join(cm.normalization_schemes),
                    "folds": [d.name.removeprefix("fold_") for d in fold_dirs if
                              (d / checkpoint).is_file()],
                    "mirroring_axes": list(mirror) if mirror else None,
                    "axis_order": "NIfTI array order in; nnU-Net's (reversed) inside"}
    return adapter


def _label_value(v: Any) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def _build(pm: Any, cm: Any, n_in: int, n_out: int) -> nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                  allow_init=True, deep_supervision=False)
