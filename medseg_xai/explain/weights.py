"""Layer statistics of a network's weights, and two models' layers compared.

``weights(adapter)`` answers "what is in this network": one row per layer that owns a weight
(convolutions, transposed convolutions, linear and normalisation layers), with its parameter
count, the norm of its weight, the share of near-zero weights and the number of dead output
channels (channels whose whole kernel is near zero, so the layer can only pass its bias on).
``compare_weights(a, b)`` puts two versions of a network side by side (e.g. before and after
fine-tuning) with each layer's relative change ``||W_b - W_a|| / ||W_a||``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["WEIGHT_COLUMNS", "compare_weights", "kernels", "weights"]

#: Columns of :func:`weights`.
WEIGHT_COLUMNS = ("name", "type", "n_params", "weight_shape", "weight_norm", "weight_mean",
                  "weight_std", "near_zero_share", "n_out_channels", "dead_channels")


def _module(obj: Any) -> Any:
    """The ``nn.Module`` behind an adapter (or the module itself)."""
    from torch import nn

    model = getattr(obj, "model", obj)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a SegmentationAdapter or torch.nn.Module, "
                         f"got {type(obj).__name__}")
    return model


def _out_axis(module: Any) -> int:
    """Axis of the output channels in ``module.weight`` (1 for transposed convolutions)."""
    from torch import nn

    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if isinstance(module, transposed) else 0


def _layers(model: Any) -> list[tuple[str, Any, np.ndarray]]:
    """(name, module, weight as float64 numpy) of every module that owns a ``weight``."""
    from torch import nn

    out = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if name and isinstance(w, nn.Parameter):
            out.append((name, module, w.detach().double().cpu().numpy()))
    return out


def weights(adapter: Any, *, near_zero: float = 1e-3) -> pd.DataFrame:
    """Per-layer weight statistics, in definition order.

    Parameters
    ----------
    adapter : SegmentationAdapter or torch.nn.Module
    near_zero : float
        A weight is near zero when ``|w| <= near_zero * max|W|`` of its layer; an output channel
        is dead when all its weights are (a relative rule, so it does not depend on the scale
        a layer happens to have).

    Returns
    -------
    pandas.DataFrame
        :data:`WEIGHT_COLUMNS`: ``name`` (dotted module name), ``type``, ``n_params`` (the
        module's own parameters, bias included), ``weight_shape`` (tuple), ``weight_norm``
        (Frobenius), ``weight_mean``, ``weight_std``, ``near_zero_share`` (0-1),
        ``n_out_channels``, ``dead_channels`` (count).
    """
    if not 0.0 <= float(near_zero) < 1.0:
        raise ValueError(f"near_zero: expected a number in [0, 1), got {near_zero!r}")
    model = _module(adapter)
    rows = []
    for name, module, w in _layers(model):
        n_params = int(sum(p.numel() for p in module.parameters(recurse=False)))
        scale = float(np.abs(w).max()) if w.size else 0.0
        small = np.abs(w) <= near_zero * scale
        axis = _out_axis(module) if w.ndim > 1 else 0
        per_channel = np.moveaxis(small, axis, 0).reshape(w.shape[axis], -1).all(axis=1)
        rows.append({
            "name": name, "type": type(module).__name__, "n_params": n_params,
            "weight_shape": tuple(int(s) for s in w.shape),
            "weight_norm": float(np.linalg.norm(w.ravel())),
            "weight_mean": float(w.mean()), "weight_std": float(w.std()),
            "near_zero_share": float(small.mean()), "n_out_channels": int(w.shape[axis]),
            "dead_channels": int(per_channel.sum()),
        })
    return pd.DataFrame(rows, columns=list(WEIGHT_COLUMNS))


def compare_weights(a: Any, b: Any) -> pd.DataFrame:
    """Two models' layers side by side with each layer's relative change.

    Layers are matched by name; a layer present in one model only, or with another weight shape,
    gets ``relative_change`` NaN and ``status`` saying why.

    Returns
    -------
    pandas.DataFrame
        ``name, type, weight_shape, norm_a, norm_b, relative_change`` (``||W_b - W_a|| /
        ||W_a||``), ``cosine`` (between the flattened weights), ``status``
        (``"matched" | "only_a" | "only_b" | "shape_changed"``).
    """
    la = {n: (m, w) for n, m, w in _layers(_module(a))}
    lb = {n: (m, w) for n, m, w in _layers(_module(b))}
    names = list(la) + [n for n in lb if n not in la]
    rows = []
    for name in names:
        ma, wa = la.get(name, (None, None))
        mb, wb = lb.get(name, (None, None))
        row: dict[str, Any] = {
            "name": name, "type": type(ma if ma is not None else mb).__name__,
            "weight_shape": tuple(int(s) for s in (wa if wa is not None else wb).shape),
            "norm_a": float(np.linalg.norm(wa)) if wa is not None else float("nan"),
            "norm_b": float(np.linalg.norm(wb)) if wb is not None else float("nan"),
            "relative_change": float("nan"), "cosine": float("nan"),
        }
        if wa is None or wb is None:
            row["status"] = "only_b" if wa is None else "only_a"
        elif wa.shape != wb.shape:
            row["status"] = "shape_changed"
        else:
            row["status"] = "matched"
            na = np.linalg.norm(wa)
            row["relative_change"] = float(np.linalg.norm(wb - wa) / na) if na > 0 else float("nan")
            denom = na * np.linalg.norm(wb)
            row["cosine"] = float((wa.ravel() @ wb.ravel()) / denom) if denom > 0 else float("nan")
        rows.append(row)
    cols = ["name", "type", "weight_shape", "norm_a", "norm_b", "relative_change", "cosine",
            "status"]
    return pd.DataFrame(rows, columns=cols)


def kernels(adapter: Any, layer: str) -> np.ndarray:
    """The weight of one convolution as ``(out, in, *kernel)`` float32 (transposed
    convolutions are reordered to the same layout)."""
    model = _module(adapter)
    modules = dict(model.named_modules())
    if layer not in modules or getattr(modules[layer], "weight", None) is None:
        with_weights = [n for n, _, w in _layers(model) if w.ndim >= 3]
        raise ValueError(f"layer {layer!r}: expected a convolution of the model, one of "
                         f"{with_weights[:8]}{' ...' if len(with_weights) > 8 else ''}")
    module = modules[layer]
    w = module.weight.detach().float().cpu().numpy()
    if w.ndim < 3:
        raise ValueError(f"layer {layer!r}: expected a convolution kernel (out, in, *k), "
                         f"got a weight of shape {w.shape}")
    if _out_axis(module) == 1:
        w = np.swapaxes(w, 0, 1)
    return np.ascontiguousarray(w)
