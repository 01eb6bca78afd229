"""One contract for any segmentation network: image batch -> per-class logits.

:class:`SegmentationAdapter` wraps a ``torch.nn.Module`` (plain, MONAI or TorchScript) whose
output is a tensor, a dict, a tuple/list (deep supervision) or anything a callable can pick a
map from, and exposes ``logits``, ``probabilities``, ``predict``, ``layers`` and
``default_layer``. A 2D model can be applied slice by slice to a volume (``slice_axis``) and
large volumes can be processed by MONAI sliding-window inference (``sliding_window``); both
paths keep gradients so that explanations run through them too.

The adapter never leaves the wrapped model changed: every call that switches it to ``eval()`` or
freezes its parameters restores the training flag and ``requires_grad`` in a ``finally`` block.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

# the toolkit's one decision rule lives in decide.py, re-exported here
from medseg_xai.decide import label_map

__all__ = ["SegmentationAdapter", "ACTIVATIONS", "CONV_TYPES", "Cancelled", "label_map",
           "resolve_device", "to_numpy"]

ACTIVATIONS = ("softmax", "sigmoid", "none")

#: module types listed by :meth:`SegmentationAdapter.layers` (convolutions in any dimension)
CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_SW_KEYS = {
    "roi_size",
    "sw_batch_size",
    "overlap",
    "mode",
    "sigma_scale",
    "padding_mode",
    "cval",
}



def _is_scripted(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


#: Module types whose stride shrinks the grid (used to infer the network's divisor).
_DOWNSAMPLING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
#: Side of the zero image used to infer the divisor (a power of two the net surely takes).
_PROBE_SIDE = {1: 256, 2: 64, 3: 32}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when available) or a device.

    A CUDA device on a machine without one is a ValueError that says so.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
                         ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but this torch build or machine has "
                             "no CUDA device; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def to_numpy(value: Any) -> np.ndarray:
    """A tensor on any device (detached, moved to the CPU) or an array-like, as numpy."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Cancelled(RuntimeError):
    """Raised inside a forward pass by a :meth:`SegmentationAdapter.watch` callback to stop."""


class SegmentationAdapter:
    """Wrap a segmentation network so that it maps images to logits ``(N, K, *spatial)``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module (including a TorchScript ``ScriptModule``) mapping ``(N, C, *spatial)`` to
        per-class maps.
    spatial_dims : int
        Number of spatial axes of the *images* the adapter takes (2 or 3). With ``slice_axis``
        the model itself is 2D and images are 3D, so ``spatial_dims`` must be 3.
    activation : {"softmax", "sigmoid", "none"}
        How logits become probabilities: ``"softmax"`` for mutually exclusive classes,
        ``"sigmoid"`` for multi-label outputs or one foreground channel, ``"none"`` when the
        model already returns probabilities.
    output : None, str, int or callable
        Which map to use when the model does not return a plain tensor: a dict key, a tuple/list
        index (deep supervision: ``None`` means index 0, the full-resolution output) or a
        callable ``raw_output -> tensor``. A tensor with one more axis than expected (MONAI
        ``DynUNet`` deep supervision in training mode stacks heads on axis 1) is indexed the
        same way.
    class_names : sequence of str, optional
        Names of the output channels, used in descriptions.
    sliding_window : None, int, sequence of int or dict
        Use :func:`monai.inferers.sliding_window_inference`. An int or sequence is the window
        (``roi_size``); a dict holds keyword arguments (``roi_size`` required, plus any of
        ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``, ``padding_mode``, ``cval``).
    slice_axis : int, optional
        Apply a 2D model slice by slice along this spatial axis (0, 1 or 2) of a 3D image.
    device : str or torch.device, optional
        Where the model runs; default the device of its first parameter (CPU if it has none).
        Inputs are moved there.
    divisor : "auto", int, sequence of int or None
        Spatial sizes the network needs to be a multiple of (a UNet with four 2x
        down-samplings: 16). Inputs that are not are padded (symmetrically, with zeros, as
        MONAI's ``DivisiblePad``) before the model and its output is cropped back, so every
        result has the input's grid. ``"auto"`` infers it once from one zero-image forward pass
        (the smallest grid any strided convolution or pooling produces); ``None`` or 1: never
        pad. With ``sliding_window`` each window is padded.
    threshold : float, optional
        Decision threshold of :meth:`predict` (see :func:`label_map`).

    Notes
    -----
    ``logits``, ``probabilities``, ``predict`` and ``foreground_probability`` accept a numpy
    image ``(C, *spatial)`` (or ``(*spatial)``, which gets ``C=1``) and then return tensors on
    the CPU, or a tensor ``(N, C, *spatial)`` and then return tensors on the adapter's device.
    ``probabilities`` and ``predict`` run without gradients and in ``eval()`` mode.
    """

    def __init__(
        self,
        model: nn.Module,
        spatial_dims: int = 3,
        activation: str = "softmax",
        output: None | str | int | Callable[[Any], torch.Tensor] = None,
        class_names: Sequence[str] | None = None,
        sliding_window: None | int | Sequence[int] | dict[str, Any] = None,
        slice_axis: int | None = None,
        device: str | torch.device | None = None,
        divisor: None | str | int | Sequence[int] = "auto",
        threshold: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model: expected a torch.nn.Module, got {type(model).__name__}"
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if output is not None and not isinstance(output, (str, int)) and not callable(output):
            raise ValueError(
                f"output: expected None, a dict key (str), an index (int) or a callable, "
                f"got {type(output).__name__}"
            )
        if slice_axis is not None:
            if spatial_dims != 3:
                raise ValueError(
                    f"slice_axis={slice_axis} applies a 2D model to 3D images, so spatial_dims "
                    f"must be 3 (the images' dimensionality), got {spatial_dims}"
                )
            if slice_axis not in (0, 1, 2):
                raise ValueError(f"slice_axis: expected 0, 1 or 2, got {slice_axis!r}")
        self.model = model
        self.spatial_dims = int(spatial_dims)
        self.activation = activation
        self.output = output
        self.class_names = list(class_names) if class_names is not None else None
        self.slice_axis = slice_axis
        self.sliding_window = self._check_sliding_window(sliding_window)
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = resolve_device(device)
        # the model goes where its inputs go (nn.Module.to moves it in place); a model on
        # another device than its inputs used to fail with a message about divisors
        model.to(self.device)
        self.geometry: dict[str, Any] | None = None
        self._default_layers: dict[tuple, str] = {}
        self.threshold = threshold
        self._divisor_arg = divisor
        self._divisor: tuple[int, ...] | None = self._check_divisor(divisor)
        self._watch: Callable[[], None] | None = None
        self.output_channels: int | None = None  # known after the first forward pass

    # ------------------------------------------------------------------ configuration
    def __getstate__(self) -> dict[str, Any]:
        """Picklable with a TorchScript model too (spawned worker processes, issue 28): the
        script travels as its archive bytes (``torch.jit.save``), which pickle cannot write."""
        state = self.__dict__.copy()
        if isinstance(state.get("model"), torch.jit.ScriptModule):
            import io

            buf = io.BytesIO()
            torch.jit.save(state["model"], buf)
            state["model"] = _ScriptBytes(buf.getvalue())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("model"), _ScriptBytes):
            import io

            state["model"] = torch.jit.load(io.BytesIO(state["model"].data),
                                            map_location=str(state.get("device", "cpu")))
        self.__dict__.update(state)

    def _check_divisor(self, divisor: Any) -> tuple[int, ...] | None:
        """Divisor per model axis, or None while "auto" is not inferred yet."""
        dims = self.model_spatial_dims
        if divisor is None:
            return (1,) * dims
        if isinstance(divisor, str):
            if divisor != "auto":
                raise ValueError(f"divisor: expected 'auto', an int, {dims} ints or None, "
                                 f"got {divisor!r}")
            return None
        vals = (divisor,) * dims if isinstance(divisor, (int, np.integer)) else tuple(divisor)
        if len(vals) != dims or not all(isinstance(v, (int, np.integer)) and v >= 1
                                        for v in vals):
            raise ValueError(f"divisor: expected a positive int or {dims} positive ints, "
                             f"got {divisor!r}")
        return tuple(int(v) for v in vals)

    @property
    def in_channels(self) -> int | None:
        """Input channels of the model's first convolution (None when it has none)."""
        if not hasattr(self, "_in_channels"):
            given = getattr(self.model, "in_channels", None)  # loaders that know it (ONNX)
            self._in_channels = int(given) if isinstance(given, int) else next(
                (int(m.in_channels) for m in self.model.modules() if isinstance(m, CONV_TYPES)),
                None)
            if self._in_channels is None and self.is_scripted:  # no module types: first kernel
                dims = self.model_spatial_dims + 2
                self._in_channels = next((int(p.shape[1]) for p in self.model.parameters()
                                          if p.ndim == dims), None)
        return self._in_channels

    @property
    def divisor(self) -> tuple[int, ...]:
        """Multiple each model-side spatial size is padded to (inferred on first use)."""
        if self._divisor is None:
            self._divisor = self._infer_divisor()
        return self._divisor

    def _infer_divisor(self) -> tuple[int, ...]:
        dims = self.model_spatial_dims
        if self.is_scripted or not self.supports_hooks:
            return self._probe_divisor()
        side = _PROBE_SIDE[dims]
        c = self.in_channels or 1
        smallest = [side] * dims
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == dims + 2:
                for a in range(dims):
                    smallest[a] = min(smallest[a], int(out.shape[2 + a]))

        handles = [m.register_forward_hook(hook) for m in self.model.modules()
                   if isinstance(m, _DOWNSAMPLING) and _strided(m)]
        try:
            with torch.no_grad(), self.frozen(freeze_parameters=False):
                self.model(torch.zeros((1, c, *(side,) * dims), device=self.device))
        except Exception:  # noqa: BLE001 - a net that refuses the probe keeps its sizes as given
            return (1,) * dims
        finally:
            for h in handles:
                h.remove()
        return tuple(max(1, side // max(s, 1)) for s in smallest)

    def _probe_divisor(self) -> tuple[int, ...]:
        """Divisor of a model without hooks (TorchScript, ONNX): the smallest power of two
        ``d`` for which a zero image of side ``d * odd`` comes back with its own shape.

        A UNet with k 2x down-samplings refuses (or crops) sides that are not multiples of
        2**k, so the first ``d`` that works is its divisor. Up to 6 small forward passes.
        """
        dims = self.model_spatial_dims
        c = self.in_channels or 1
        for d, odd in ((1, 33), (2, 17), (4, 9), (8, 5), (16, 3), (32, 3)):
            side = d * odd
            try:
                with torch.no_grad(), self.frozen(freeze_parameters=False):
                    y = self._select(self.model(torch.zeros((1, c, *(side,) * dims),
                                                            device=self.device)))
            except Exception:  # noqa: BLE001 - refused: try the next multiple
                continue
            if tuple(y.shape[2:]) == (side,) * dims:
                return (d,) * dims
        return (1,) * dims

    def _check_sliding_window(self, sw: Any) -> dict[str, Any] | None:
        if sw is None:
            return None
        if isinstance(sw, dict):
            unknown = set(sw) - _SW_KEYS
            if unknown or "roi_size" not in sw:
                raise ValueError(
                    f"sliding_window: expected a dict with 'roi_size' and optionally "
                    f"{sorted(_SW_KEYS - {'roi_size'})}, got keys {sorted(sw)}"
                )
            cfg = dict(sw)
        else:
            cfg = {"roi_size": sw}
        roi = cfg["roi_size"]
        roi = (int(roi),) * self.spatial_dims if isinstance(roi, (int, np.integer)) else tuple(
            int(r) for r in roi
        )
        if len(roi) != self.spatial_dims or min(roi) < 1:
            raise ValueError(
                f"sliding_window roi_size: expected {self.spatial_dims} positive ints, got {roi}"
            )
        cfg["roi_size"] = roi
        cfg.setdefault("sw_batch_size", 1)
        cfg.setdefault("overlap", 0.25)
        return cfg

    @property
    def is_scripted(self) -> bool:
        """True for TorchScript models (no hooks: layer methods cannot run on them)."""
        return _is_scripted(self.model)

    @property
    def supports_gradients(self) -> bool:
        """False for gradient-free models (ONNX through onnxruntime): only occlusion, feature
        ablation and the probes run on them."""
        return bool(getattr(self.model, "supports_gradients", True))

    @property
    def supports_hooks(self) -> bool:
        """False for TorchScript and ONNX models: layer methods (Grad-CAM, activations,
        guided backprop, DeepLift) cannot run on them."""
        return not self.is_scripted and bool(getattr(self.model, "supports_hooks", True))

    @property
    def available_methods(self) -> tuple[str, ...]:
        """Explanation methods this model can run (see :data:`medseg_xai.explain.METHODS`)."""
        gradient_free = ("occlusion", "feature_ablation")
        if not self.supports_gradients:
            return gradient_free
        inputs = ("saliency", "integrated_gradients", "smoothgrad", "input_x_gradient")
        if not self.supports_hooks:
            return (*inputs, *gradient_free)
        return (*inputs, "guided_backprop", "deeplift", *gradient_free, "gradcam", "gradcam++")

    def with_geometry(self, spacing: Sequence[float] | None = None,
                      affine: Any = None) -> SegmentationAdapter:
        """A copy of this adapter that knows the case's voxel spacing (mm) and affine.

        Models that carry their own pipeline (nnU-Net, MONAI bundles: resampling to the
        model's spacing, axis transposition) need the geometry of each scan; the audit and
        ``explain`` call this for every case. For a bare network the copy behaves the same.
        """
        import copy

        twin = copy.copy(self)
        twin.geometry = {"spacing": None if spacing is None else tuple(float(v) for v in spacing),
                         "affine": None if affine is None else np.asarray(affine, dtype=float)}
        bind = getattr(self.model, "with_geometry", None)
        if callable(bind):
            twin.model = bind(twin.geometry["spacing"], twin.geometry["affine"])
        return twin

    @property
    def model_spatial_dims(self) -> int:
        """Spatial dimensionality the wrapped model itself sees (2 with ``slice_axis``)."""
        return self.spatial_dims - 1 if self.slice_axis is not None else self.spatial_dims

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of the sha256 of the model's identity.

        A model loaded by :func:`medseg_xai.load_model` carries the hash of its weights or file
        (``model.fingerprint``: ONNX file, nnU-Net checkpoints, bundle weights). Otherwise the
        ``state_dict`` (names + bytes); a model without parameters hashes its TorchScript code
        or its printed structure, never an empty list.
        """
        given = getattr(self.model, "fingerprint", None)
        if isinstance(given, str) and given:
            return given[:16]
        state = self.model.state_dict()
        if not state:
            code = getattr(self.model, "code", None) if self.is_scripted else None
            text = f"{type(self.model).__qualname__}|{code if code else repr(self.model)}"
            return hashlib.sha256(("no-parameters|" + text).encode()).hexdigest()[:16]
        h = hashlib.sha256()
        for name, value in state.items():
            h.update(name.encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                # view as bytes so every dtype (bf16 included) hashes without conversion
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(value).encode())
        return h.hexdigest()[:16]

    def class_name(self, class_index: int) -> str:
        """Name of output channel ``class_index`` (``"class k"`` when none were given)."""
        if self.class_names is not None and 0 <= class_index < len(self.class_names):
            return self.class_names[class_index]
        return f"class {class_index}"

    def __repr__(self) -> str:
        extra = f", slice_axis={self.slice_axis}" if self.slice_axis is not None else ""
        if self.sliding_window:
            extra += f", sliding_window={self.sliding_window['roi_size']}"
        return (
            f"SegmentationAdapter({type(self.model).__name__}, spatial_dims={self.spatial_dims}, "
            f"activation={self.activation!r}{extra})"
        )

    def watch(self, callback: Callable[[], None]) -> SegmentationAdapter:
        """A copy of this adapter that calls ``callback()`` before every forward pass.

        The copy shares the model. Long explanations (occlusion, sweeps) count their passes
        with it for a progress bar, and stop by raising :class:`Cancelled` from the callback.
        """
        import copy

        twin = copy.copy(self)
        twin._watch = callback
        return twin

    # ------------------------------------------------------------------ model state
    @contextlib.contextmanager
    def frozen(self, *, freeze_parameters: bool = True) -> Iterator[nn.Module]:
        """Put the model in ``eval()`` (and freeze its parameters) for the ``with`` block.

        The training flag of every sub-module and each parameter's ``requires_grad`` are
        restored on exit, also when the block raises. Freezing parameters saves the memory and
        time of parameter gradients that explanations never use.
        """
        modes = [(m, m.training) for m in self.model.modules()]
        grads = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.eval()
            if freeze_parameters:
                for p, _ in grads:
                    p.requires_grad_(False)
            yield self.model
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)
            for m, flag in modes:
                m.training = flag

    # ------------------------------------------------------------------ inputs
    def as_batch(self, x: Any, name: str = "x") -> tuple[torch.Tensor, bool]:
        """Return ``(tensor (N, C, *spatial) on the adapter's device, came_from_numpy)``."""
        from_numpy = not isinstance(x, torch.Tensor)
        if from_numpy:
            arr = np.asarray(x)
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                if arr.dtype != bool:
                    raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
            if arr.ndim == self.spatial_dims:
                arr = arr[None]
            if arr.ndim != self.spatial_dims + 1:
                raise ValueError(
                    f"{name}: expected a numpy image (C, *spatial) with {self.spatial_dims} "
                    f"spatial axes (or (*spatial)), got shape {arr.shape}"
                )
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
        else:
            t = x
            if t.ndim == self.spatial_dims + 1:
                t = t[None]
            if t.ndim != self.spatial_dims + 2:
                raise ValueError(
                    f"{name}: expected a tensor (N, C, *spatial) with {self.spatial_dims} spatial "
                    f"axes, got shape {tuple(x.shape)}"
                )
            if not t.is_floating_point():
                t = t.float()
        return t.to(self.device), from_numpy

    # ------------------------------------------------------------------ forward paths
    def _select(self, raw: Any) -> torch.Tensor:
        """Pick the segmentation map out of whatever the model returned."""
        out = self.output
        if callable(out) and not isinstance(out, (str, int)):
            raw = out(raw)
        elif isinstance(raw, dict):
            if out is None:
                if len(raw) != 1:
                    raise ValueError(
                        f"the model returned a dict with keys {sorted(map(str, raw))}; pass "
                        f"output=<key> to say which one holds the segmentation logits"
                    )
                raw = next(iter(raw.values()))
            elif out not in raw:
                raise ValueError(
                    f"output={out!r}: the model's dict output has keys {sorted(map(str, raw))}"
                )
            else:
                raw = raw[out]
        elif isinstance(raw, (tuple, list)):
            idx = 0 if out is None else out
            if not isinstance(idx, int) or not -len(raw) <= idx < len(raw):
                raise ValueError(
                    f"output={out!r}: the model returned a {type(raw).__name__} of {len(raw)} "
                    f"outputs; expected an int index"
                )
            raw = raw[idx]
        if not isinstance(raw, torch.Tensor):
            raise ValueError(
                f"the selected model output is a {type(raw).__name__}, expected a tensor; "
                f"set output= to a key, an index or a callable that picks the logits"
            )
        dims = self.model_spatial_dims
        if raw.ndim == dims + 3:
            # deep supervision stacked on axis 1 (MONAI DynUNet in training mode)
            idx = 0 if out is None or not isinstance(out, int) else out
            raw = raw[:, idx]
        if raw.ndim != dims + 2:
            raise ValueError(
                f"the model output has shape {tuple(raw.shape)}; expected (N, K, *spatial) with "
                f"{dims} spatial axes"
            )
        return raw

    def _call_model(self, x: torch.Tensor) -> torch.Tensor:
        """The selected output of the model on ``x``, padded to the divisor and cropped back."""
        if self._watch is not None:
            self._watch()
        spatial = tuple(int(s) for s in x.shape[2:])
        div = self.divisor
        if all(s % d == 0 for s, d in zip(spatial, div)):
            y = self._select(self._run(x))
        else:
            from monai.transforms import DivisiblePad

            # MONAI's symmetric padding amounts; padded with torch so gradients flow through.
            widths = DivisiblePad(k=div).compute_pad_width(spatial)[1:]
            flat = [v for lo_hi in reversed(widths) for v in lo_hi]
            y = self._select(self._run(torch.nn.functional.pad(x, flat)))
            crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(widths, spatial))
            y = y[(slice(None), slice(None), *crop)]
        self.output_channels = int(y.shape[1])
        return y

    def _run(self, x: torch.Tensor) -> Any:
        """The raw model call; a shape fault inside the network becomes a clear ValueError."""
        try:
            return self.model(x)
        except (Cancelled, torch.cuda.OutOfMemoryError):
            raise  # a stop request or a machine fault, not bad input
        except RuntimeError as exc:
            # Definition order is not execution order, so the channel count is only blamed
            # once the network has actually refused the input.
            expected = self.in_channels
            if expected is not None and x.shape[1] != expected:
                raise ValueError(
                    f"image: it has {x.shape[1]} channel(s) (input shape {tuple(x.shape)}), the "
                    f"model's first convolution expects {expected}; give the image as "
                    f"(C, *spatial) with C = {expected}"
                ) from exc
            raise ValueError(
                f"the model failed on an input of shape {tuple(x.shape)} (divisor "
                f"{self.divisor}): {str(exc).splitlines()[0]}. If the network needs sizes that "
                f"are multiples of its down-sampling factor, pass divisor= (e.g. 16 for four 2x "
                f"down-samplings) or keep divisor='auto'"
            ) from exc

    def _model_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model on one batch that the model itself accepts (slices folded into the batch)."""
        if self.slice_axis is None:
            return self._call_model(x)
        ax = 2 + self.slice_axis
        n, c = x.shape[:2]
        moved = x.movedim(ax, 2)  # (N, C, S, a, b)
        s, a, b = moved.shape[2:]
        flat = moved.permute(0, 2, 1, 3, 4).reshape(n * s, c, a, b)
        y = self._call_model(flat)
        if tuple(y.shape[2:]) != (a, b):
            raise ValueError(
                f"the 2D model returned slices of shape {tuple(y.shape[2:])} for input slices "
                f"{(a, b)}; slice_axis needs same-size outputs"
            )
        k = y.shape[1]
        y = y.reshape(n, s, k, a, b).permute(0, 2, 1, 3, 4)  # (N, K, S, a, b)
        return y.movedim(2, ax)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a tensor batch on the adapter's device, keeping the autograd graph.

        Explanations call this; it does not change the model's mode.
        """
        if self.sliding_window is None:
            y = self._model_forward(x)
        else:
            from monai.inferers import sliding_window_inference

            y = sliding_window_inference(x, predictor=self._model_forward, **self.sliding_window)
            if hasattr(y, "as_tensor"):  # MetaTensor -> plain tensor
                y = y.as_tensor()
        if tuple(y.shape[2:]) != tuple(x.shape[2:]) or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"the model output has shape {tuple(y.shape)} for input {tuple(x.shape)}; "
                f"expected (N, K, *spatial) with the input's N and spatial shape"
            )
        return y

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return torch.softmax(logits, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return logits

    # ------------------------------------------------------------------ public inference
    def logits(self, x: Any) -> torch.Tensor:
        """Per-class logits ``(N, K, *spatial)``.

        A numpy image runs in ``eval()`` mode without gradients and returns a CPU tensor; a
        tensor runs under the caller's grad mode (so the result can be differentiated) with the
        model in ``eval()`` mode for the call.
        """
        t, from_numpy = self.as_batch(x)
        if from_numpy:
            with torch.no_grad(), self.frozen(freeze_parameters=False):
                return self.forward_logits(t).cpu()
        with self.frozen(freeze_parameters=False):
            return self.forward_logits(t)

    def inference_logits(self, x: Any) -> torch.Tensor:
        """Per-class logits ``(N, K, *spatial)`` of the path :meth:`probabilities` and
        :meth:`predict` take: the framework's own inference when the model has one (nnU-Net's
        predictor), else the model's forward; no gradients, ``eval()`` mode. A numpy image
        returns a CPU tensor."""
        t, from_numpy = self.as_batch(x)
        with torch.no_grad(), self.frozen(freeze_parameters=False):
            out = self._inference(t)
        return out.cpu() if from_numpy else out

    def probabilities(self, x: Any) -> torch.Tensor:
        """Class probabilities ``(N, K, *spatial)`` (softmax, sigmoid or the raw output)."""
        t, from_numpy = self.as_batch(x)
        with torch.no_grad(), self.frozen(freeze_parameters=False):
            p = self._activate(self._inference(t))
        return p.cpu() if from_numpy else p

    def _inference(self, t: torch.Tensor) -> torch.Tensor:
        exact = getattr(self.model, "exact_logits", None)  # the framework's own inference
        return exact(t) if callable(exact) else self.forward_logits(t)

    def predict(self, x: Any, threshold: float | None = None) -> torch.Tensor:
        """Label map ``(N, *spatial)`` (int64) by :func:`label_map`.

        ``threshold`` (default the adapter's ``threshold``): one channel, ``p > threshold``
        (0.5 when None); several sigmoid channels, ``1 + argmax`` where the largest probability
        exceeds it; softmax, the argmax (None) or the best foreground class above it.
        """
        t = self.threshold if threshold is None else threshold
        act = "sigmoid" if self.activation == "sigmoid" else "softmax"
        return label_map(self.probabilities(x), t, activation=act, channel_axis=1)

    def check_class_index(self, class_index: int, x: Any = None) -> int:
        """``class_index`` if the model has that output channel, else a clear ValueError.

        The number of channels is known after any forward pass; ``x`` (an image) runs one when
        none has run yet.
        """
        if not isinstance(class_index, (int, np.integer)) or isinstance(class_index, bool):
            raise ValueError(f"class_index: expected an int, got {class_index!r}")
        if self.output_channels is None and x is not None:
            self.logits(x)
        k = self.output_channels
        if k is not None and not 0 <= int(class_index) < k:
            names = f" ({', '.join(self.class_names)})" if self.class_names else ""
            hint = "; a one-channel sigmoid model has only class_index 0" if k == 1 else ""
            raise ValueError(
                f"class_index: the model has {k} output channel(s){names}, so class_index must "
                f"be 0..{k - 1}, got {class_index}{hint}"
            )
        return int(class_index)

    def foreground_probability(self, x: Any, class_index: int = 1) -> torch.Tensor:
        """Probability map ``(N, *spatial)`` of output channel ``class_index``."""
        p = self.probabilities(x)
        if not -p.shape[1] <= class_index < p.shape[1]:
            raise ValueError(
                f"class_index: the model has {p.shape[1]} output channels, got {class_index}"
            )
        return p[:, class_index]

    # ------------------------------------------------------------------ layers
    def _example(self, input_shape: Sequence[int] | None) -> torch.Tensor:
        if input_shape is None:
            raise ValueError(
                "input_shape: expected (C, *spatial) or (N, C, *spatial) to trace the layer "
                "output shapes, got None"
            )
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == self.spatial_dims + 1:
            shape = (1, *shape)
        if len(shape) != self.spatial_dims + 2:
            raise ValueError(
                f"input_shape: expected (C, *spatial) with {self.spatial_dims} spatial axes, "
                f"got {tuple(input_shape)}"
            )
        return torch.zeros(shape, device=self.device)

    def trace(self, input_shape: Sequence[int], *, every_module: bool = False
              ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """``(name, module, output shape)`` of the conv layers (``every_module``: of every named
        module) in one zero-filled forward pass of ``input_shape``, in the order the calls
        finish: the public tracing explain's layer choices use."""
        return self._trace(input_shape, every_module=every_module)

    def _trace(self, input_shape: Sequence[int], *, every_module: bool = False
               ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Run one zero-filled forward pass and record (name, module, output shape) of the conv
        layers (``every_module``: of every named module, blocks included), one entry per call,
        in the order the calls finish."""
        if self.is_scripted:
            raise ValueError(
                "layers: TorchScript models do not support forward hooks, so layer output shapes "
                "cannot be traced; wrap the original (unscripted) nn.Module instead"
            )
        x = self._example(input_shape)
        seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
        handles = []

        def make_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, _inp: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    seen.append((name, module, tuple(out.shape)))

            return hook

        try:
            for name, module in self.model.named_modules():
                if name and (every_module or isinstance(module, CONV_TYPES)):
                    handles.append(module.register_forward_hook(make_hook(name)))
            with torch.no_grad(), self.frozen(freeze_parameters=False):
                self.forward_logits(x)
        finally:
            for h in handles:
                h.remove()
        return seen

    def layers(self, input_shape: Sequence[int] | None = None) -> pd.DataFrame:
        """Convolutional layers in execution order with their output shapes.

        Parameters
        ----------
        input_shape : sequence of int, optional
            ``(C, *spatial)`` or ``(N, C, *spatial)`` of an input; one zero-filled forward pass
            records each layer's output shape (the last call when a layer runs several times,
            e.g. per sliding window). Without it (or for TorchScript models) the layers are
            listed in definition order with ``output_shape`` None.

        Returns
        -------
        pandas.DataFrame
            Columns ``name`` (dotted module name, usable as ``layer=``), ``type``,
            ``output_shape`` (tuple or None).
        """
        if input_shape is None or self.is_scripted:
            rows = [
                {"name": n, "type": type(m).__name__, "output_shape": None}
                for n, m in self.model.named_modules()
                if isinstance(m, CONV_TYPES) or (self.is_scripted and "Conv" in m.original_name)
            ]
            return pd.DataFrame(rows, columns=["name", "type", "output_shape"])
        last: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, module, shape in self._trace(input_shape):
            last.pop(name, None)  # keep execution order of the final call
            last[name] = (type(module).__name__, shape)
        rows = [{"name": n, "type": t, "output_shape": s} for n, (t, s) in last.items()]
        return pd.DataFrame(rows, columns=["name", "type", "output_shape"])

    def default_layer(self, input_shape: Sequence[int]) -> str:
        """Dotted name of the default Grad-CAM layer.

        The last decoder convolution before the head: among convolutions in execution order,
        the last one whose output has more channels than the model has classes (the head and
        the layers fused into it output exactly K channels), then the largest block enclosing
        it with the same output shape (so the map is taken after normalisation and
        activation). Falls back to the last convolution.
        """
        key = (tuple(int(v) for v in input_shape), id(self.model))
        cached = self._default_layers.get(key)
        if cached is not None:
            return cached
        df = self.layers(input_shape)
        if df.empty:
            raise ValueError(
                "default_layer: the model has no convolution layers; pass layer= explicitly"
            )
        if df["output_shape"].isna().any():
            raise ValueError(
                "default_layer: TorchScript models have no hooks, so no layer can be used for "
                "Grad-CAM; wrap the original nn.Module"
            )
        x = self._example(input_shape)
        with torch.no_grad(), self.frozen(freeze_parameters=False):
            k = self.forward_logits(x).shape[1]
        wide = df[df["output_shape"].map(lambda s: s[1] > k)]
        name = str((wide if not wide.empty else df)["name"].iloc[-1])
        name = self._enclosing_block(name, x)
        self._default_layers[key] = name  # saves a tracing pass on every Grad-CAM call
        return name

    def _enclosing_block(self, name: str, x: torch.Tensor) -> str:
        """Climb from a convolution to the largest enclosing block with the same output shape.

        Grad-CAM weighs channels by the spatial mean of their gradients. Straight after a
        convolution that feeds an instance or batch norm those means are ~0 (the norm removes
        each channel's mean, so its input gradient sums to zero), and the map degenerates to
        numerical noise. The enclosing block's output is the normalised, activated feature map
        of the same shape, where Grad-CAM is meaningful.
        """
        modules = dict(self.model.named_modules())
        parts = name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        ancestors = [a for a in ancestors if a in modules]
        if not ancestors:
            return name
        shapes: dict[str, tuple[int, ...]] = {}

        def record(key: str, _m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes[key] = tuple(out.shape)

        hooks = [modules[n].register_forward_hook(
            lambda m, i, o, key=n: record(key, m, i, o)) for n in [name, *ancestors]]
        try:
            with torch.no_grad(), self.frozen(freeze_parameters=False):
                self.forward_logits(x)
        finally:
            for h in hooks:
                h.remove()
        best = name
        for anc in ancestors:
            if shapes.get(anc) != shapes.get(name):
                break
            best = anc
        return best

    def get_layer(self, name: str) -> nn.Module:
        """The sub-module called ``name`` (ValueError listing close names when missing)."""
        if not isinstance(name, str):
            raise ValueError(f"layer: expected a dotted module name (str), got {type(name).__name__}")
        modules = dict(self.model.named_modules())
        if name not in modules:
            import difflib

            close = difflib.get_close_matches(name, list(modules), n=5)
            hint = f"; close names: {close}" if close else "; see adapter.layers(input_shape)"
            raise ValueError(f"layer {name!r} is not a sub-module of the model{hint}")
        return modules[name]


def _strided(m: nn.Module) -> bool:
    stride = getattr(m, "stride", 1)
    stride = (stride,) if isinstance(stride, int) else tuple(stride or (1,))
    return any(int(v) > 1 for v in stride)


class _ScriptBytes:
    """A TorchScript archive's bytes inside a pickled adapter (see ``__getstate__``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
