"""What one layer of the network computes: pooled feature vectors, channel statistics and the
channels a target depends on.

- :func:`feature_layer` picks the default feature layer: the deepest encoder output (the last
  module, in execution order, at the smallest spatial size any convolution reaches, climbed to
  the largest enclosing block of the same output shape, so it is the block's activated output).
- :class:`FeatureHook` pools a layer's output (global average over its spatial axes) during a
  forward pass the caller runs anyway; the audit uses it so feature vectors cost no extra pass.
- :func:`pooled_features`, :func:`channel_stats`, :func:`cohort_channel_stats`: one vector per
  case, per-channel mean / spread / share of zero activations for one case or a cohort.
- :func:`channel_weights`: Grad-CAM's channel weights (spatial mean of the target's gradient at
  the layer) ranked, and :func:`top_channels` their feature maps.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FeatureHook", "channel_stats", "channel_weights", "cohort_channel_stats",
           "feature_layer", "pooled_features", "top_channels"]

# model -> {input ndim: layer}; saves a tracing pass per case in an audit
_AUTO_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def feature_layer(adapter: Any, input_shape: Sequence[int]) -> str:
    """Dotted name of the default feature layer (the deepest encoder output).

    Parameters
    ----------
    adapter : SegmentationAdapter
    input_shape : sequence of int
        ``(C, *spatial)`` of an input, traced with one zero-filled forward pass.
    """

    from medseg_xai.adapters import CONV_TYPES

    if adapter.is_scripted:
        raise ValueError("feature_layer: TorchScript models have no forward hooks; wrap the "
                         "original nn.Module")
    cache = _AUTO_CACHE.setdefault(adapter.model, {})
    key = len(tuple(input_shape))
    if key in cache:
        return cache[key]
    modules = dict(adapter.model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}  # each module's last output shape
    order: list[str] = []  # every call, in the order the calls finish
    for name, _module, shape in adapter.trace(input_shape, every_module=True):
        shapes[name] = shape
        order.append(name)
    convs = [n for n in order if isinstance(modules[n], CONV_TYPES)]
    if not convs:
        raise ValueError("feature_layer: the model has no convolution layers; pass the layer "
                         "name explicitly")
    smallest = min(int(np.prod(shapes[n][2:])) for n in convs)
    at_min = [n for n in convs if int(np.prod(shapes[n][2:])) == smallest]
    name = at_min[-1]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:i])
        if anc not in shapes:
            continue
        if shapes[anc] != shapes[at_min[-1]]:
            break
        name = anc
    cache[key] = name
    return name


class FeatureHook:
    """Context manager pooling one layer's output during forward passes the caller runs.

    Every call of the layer adds its global-average-pooled output; :attr:`vector` is their mean
    over calls and batch items (so slice-wise models and sliding windows give one vector per
    image: the mean of the slices' or windows' pooled features).

    >>> with FeatureHook(adapter, "unet.model.1") as hook:     # doctest: +SKIP
    ...     probs = adapter.probabilities(image)
    >>> hook.vector.shape                                      # doctest: +SKIP
    (64,)
    """

    def __init__(self, adapter: Any, layer: str) -> None:
        # The adapter infers its padding divisor with a probe forward pass on first use; run it
        # now, or the hook would pool the probe's (zero image) features into the first case.
        getattr(adapter, "divisor", None)
        self.module = adapter.get_layer(layer)
        self.layer = layer
        self._sum: Any = None
        self._count = 0
        self._handle: Any = None
        self.error: str | None = None
        #: Images of equal shape in each batch the caller runs (the audit's plain image first,
        #: then its augmented copies, :func:`~medseg_xai.explain.uncertainty.plain_and_uncertainty`):
        #: above 1 the vector is the first image's alone.
        self.samples = 1
        self._rows: list[Any] = []

    @classmethod
    def for_audit(cls, adapter: Any, input_shape: Sequence[int], layer: str
                  ) -> FeatureHook | None:
        """A hook on ``layer`` (``"auto"`` resolved for ``input_shape``), or None when the
        model offers none (TorchScript, no convolution): features are optional in an audit
        and must never fail a case."""
        try:
            name = feature_layer(adapter, input_shape) if layer == "auto" else layer
            return cls(adapter, name)
        except ValueError:
            if layer != "auto":  # a layer the user named must exist
                raise
            return None

    def _hook(self, _m: Any, _i: Any, out: Any) -> None:
        import torch

        if not isinstance(out, torch.Tensor) or out.ndim < 3:
            # recorded, not raised: the forward pass the caller runs must not fail because of us
            self.error = (f"feature layer {self.layer!r}: expected a feature map tensor "
                          f"(N, F, *spatial), got {type(out).__name__}")
            return
        pooled = out.detach().float().mean(dim=tuple(range(2, out.ndim)))  # (N, F)
        if self.samples > 1:  # rows come image by image (batch, slices, windows): keep them
            self._rows.append(pooled.double().cpu())
            return
        total = pooled.sum(0).double().cpu()
        self._sum = total if self._sum is None else self._sum + total
        self._count += pooled.shape[0]

    def __enter__(self) -> FeatureHook:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        """Forget what was pooled (a pass that failed and is redone)."""
        self._sum, self._count, self._rows = None, 0, []

    def _first_sample(self) -> None:
        """Fold the first image's rows into the mean: the rows of a batch of ``samples``
        equal-shape images come image by image (the batch axis, slice-wise models fold
        slices image-major, MONAI's sliding window orders windows by image), so the first
        image owns the first ``1 / samples`` of them."""
        import torch

        rows = torch.cat(self._rows)
        self._rows = []
        if len(rows) % self.samples:
            self.error = (f"feature layer {self.layer!r}: {len(rows)} pooled rows for a batch "
                          f"of {self.samples} images")
            return
        per = len(rows) // self.samples
        self._sum, self._count = rows[:per].sum(0), per

    @property
    def vector(self) -> np.ndarray:
        """Pooled features ``(F,)`` float64 (ValueError when the layer never ran)."""
        if self._rows:
            self._first_sample()
        if self.error:
            raise ValueError(self.error)
        if self._sum is None:
            raise ValueError(f"feature layer {self.layer!r} was not called during the forward "
                             "pass")
        return (self._sum / self._count).numpy()


def _resolve(adapter: Any, image: Any, layer: str | None) -> tuple[Any, str]:
    from medseg_xai.explain.core import prepare_image

    x = prepare_image(adapter, image)
    if layer is None or layer == "auto":
        layer = feature_layer(adapter, tuple(x.shape[1:]))
    return x, layer


def pooled_features(adapter: Any, image: Any, layer: str | None = "auto") -> np.ndarray:
    """Global-average-pooled features ``(F,)`` of one image at ``layer`` (default: the deepest
    encoder output, :func:`feature_layer`)."""
    import torch

    x, layer = _resolve(adapter, image, layer)
    with torch.no_grad(), FeatureHook(adapter, layer) as hook:
        adapter.logits(x)
    return hook.vector


def channel_stats(adapter: Any, image: Any, layer: str | None = "auto",
                  *, zero_tol: float = 0.0) -> pd.DataFrame:
    """Per-channel activation statistics of one image at ``layer``.

    Returns
    -------
    pandas.DataFrame
        ``channel, mean, std, min, max, zero_share`` (share of voxels with ``|a| <= zero_tol``:
        after a ReLU, the share the channel is off).
    """
    from medseg_xai.explain.activations import activations

    _, layer = _resolve(adapter, image, layer)
    acts = activations(adapter, image, layer).astype(np.float64)
    flat = acts.reshape(acts.shape[0], -1)
    return pd.DataFrame({
        "channel": np.arange(flat.shape[0]), "mean": flat.mean(1), "std": flat.std(1),
        "min": flat.min(1), "max": flat.max(1),
        "zero_share": (np.abs(flat) <= zero_tol).mean(1),
    })


def cohort_channel_stats(adapter: Any, images: Iterable[Any], layer: str | None = "auto",
                         *, zero_tol: float = 0.0) -> pd.DataFrame:
    """Channel statistics across several images (one forward pass each).

    Returns
    -------
    pandas.DataFrame
        ``channel, n_cases, mean`` (mean over cases of the per-case channel mean),
        ``case_std`` (spread of the per-case means across cases), ``zero_share`` (mean over
        cases), ``never_active`` (bool: zero everywhere in every case).
    """
    tables = [channel_stats(adapter, im, layer, zero_tol=zero_tol) for im in images]
    if not tables:
        raise ValueError("images: expected at least one image, got none")
    means = np.stack([t["mean"].to_numpy() for t in tables])
    zeros = np.stack([t["zero_share"].to_numpy() for t in tables])
    return pd.DataFrame({
        "channel": tables[0]["channel"], "n_cases": len(tables), "mean": means.mean(0),
        "case_std": means.std(0, ddof=1) if len(tables) > 1 else np.full(means.shape[1], np.nan),
        "zero_share": zeros.mean(0), "never_active": (zeros == 1.0).all(0),
    })


def channel_weights(adapter: Any, image: Any, target: Any, layer: str | None = None
                    ) -> pd.DataFrame:
    """Grad-CAM's channel weights for ``target`` at ``layer``, ranked.

    The weight of channel ``c`` is the spatial mean of ``d target / d A_c`` (Selvaraju et al.;
    the weights Captum's ``LayerGradCam`` uses), so ``ReLU(sum_c w_c A_c)`` is the Grad-CAM map
    at the layer's resolution. ``contribution`` is ``w_c * mean(A_c)``, the channel's share of
    the map's spatial mean: the ranking key (a large weight on a silent channel adds nothing).

    Parameters
    ----------
    layer : str, optional
        Default: the adapter's Grad-CAM layer (``adapter.default_layer``).

    Returns
    -------
    pandas.DataFrame
        ``rank`` (1 = largest contribution), ``channel, weight, activation_mean,
        contribution``; ``attrs["layer"]`` names the layer.
    """
    import torch

    from medseg_xai.explain.core import prepare_image

    if adapter.sliding_window is not None or adapter.slice_axis is not None:
        raise ValueError("channel_weights: expected a whole-image adapter (no sliding_window "
                         "or slice_axis): channel weights differ per window or slice")
    x = prepare_image(adapter, image)
    if layer is None:
        layer = adapter.default_layer(tuple(x.shape[1:]))
    module = adapter.get_layer(layer)
    store: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"layer {layer!r}: expected a layer with one tensor output")
        if not out.requires_grad:  # frozen parameters: start the graph at the layer
            out.requires_grad_(True)
        store["a"] = out

    with adapter.frozen(), torch.enable_grad():
        handle = module.register_forward_hook(hook)
        try:
            score = target(adapter._model_forward(x)).sum()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(score, store["a"])
    a = store["a"].detach()[0].double()
    dims = tuple(range(1, a.ndim))
    w = grad[0].double().mean(dim=dims).cpu().numpy()
    am = a.mean(dim=dims).cpu().numpy()
    contrib = w * am
    order = np.argsort(-contrib, kind="stable")
    df = pd.DataFrame({"rank": np.arange(1, len(w) + 1), "channel": order, "weight": w[order],
                       "activation_mean": am[order], "contribution": contrib[order]})
    df.attrs["layer"] = layer
    return df


def top_channels(adapter: Any, image: Any, target: Any, layer: str | None = None,
                 k: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``k`` channels contributing most to ``target``'s Grad-CAM and their feature maps.

    Returns
    -------
    (pandas.DataFrame, numpy.ndarray)
        The first ``k`` rows of :func:`channel_weights` and their maps ``(k, *layer_spatial)``
        (from :func:`medseg_xai.activations`).
    """
    from medseg_xai.explain.activations import activations

    if int(k) < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    table = channel_weights(adapter, image, target, layer)
    head = table.head(int(k)).reset_index(drop=True)
    head.attrs["layer"] = table.attrs["layer"]
    maps = activations(adapter, image, table.attrs["layer"])[head["channel"].to_numpy()]
    return head, maps
