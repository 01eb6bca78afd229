"""Figures of a network's insides (matplotlib only): kernel montages, per-layer weight
distributions, two models' layers side by side, and case features projected to 2D.

Every figure draws numbers computed elsewhere (``explain.weights``, ``explain.features``, an
``AuditResult``); the one exception is :func:`kernel_tiles`, which only rearranges a weight
array into a picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["feature_projection", "kernel_montage", "kernel_tiles", "weight_comparison",
           "weight_distribution"]


def kernel_tiles(kernel: np.ndarray, *, max_out: int = 16, max_in: int = 8,
                 slices: str = "auto", pad: int = 1) -> np.ndarray:
    """A convolution weight laid out as one 2D picture (NaN between tiles).

    Rows are output channels, columns input channels. A 2D kernel ``(kh, kw)`` is one tile; a
    3D kernel ``(kd, kh, kw)`` is its central slice (``slices="central"``) or its ``kd`` slices
    side by side (``slices="all"``; ``"auto"`` = all when ``kd <= 5``).

    Parameters
    ----------
    kernel : numpy.ndarray
        ``(out, in, *k)`` with 2 or 3 kernel axes (``explain.weights.kernels``).

    Returns
    -------
    numpy.ndarray
        ``(n_out * (kh + pad) - pad, n_in * (n_slices * (kw + pad)) - pad)`` float32.
    """
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim not in (4, 5):
        raise ValueError(f"kernel: expected (out, in, kh, kw) or (out, in, kd, kh, kw), "
                         f"got shape {k.shape}")
    if slices not in ("auto", "central", "all"):
        raise ValueError(f"slices: expected 'auto', 'central' or 'all', got {slices!r}")
    k = k[:max_out, :max_in]
    if k.ndim == 5:
        kd = k.shape[2]
        if slices == "central" or (slices == "auto" and kd > 5):
            k = k[:, :, kd // 2][:, :, None]
    else:
        k = k[:, :, None]
    n_out, n_in, n_s, kh, kw = k.shape
    tile_w = n_s * (kw + pad)
    out = np.full((n_out * (kh + pad) - pad, n_in * tile_w - pad), np.nan, np.float32)
    for o in range(n_out):
        for i in range(n_in):
            for s in range(n_s):
                r, c = o * (kh + pad), i * tile_w + s * (kw + pad)
                out[r:r + kh, c:c + kw] = k[o, i, s]
    return out


def kernel_montage(kernel: np.ndarray, *, title: str | None = None, **kwargs: Any) -> Any:
    """Figure of :func:`kernel_tiles` on a symmetric diverging scale (blue < 0 < red)."""
    import matplotlib.pyplot as plt

    tiles = kernel_tiles(kernel, **kwargs)
    lim = float(np.nanmax(np.abs(tiles))) or 1.0
    h, w = tiles.shape
    fig, ax = plt.subplots(figsize=(min(12.0, 1.5 + w * 0.12), min(10.0, 1.0 + h * 0.12)))
    im = ax.imshow(tiles, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("input channel" + (" (slices side by side)" if np.ndim(kernel) == 5 else ""))
    ax.set_ylabel("output channel")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def weight_distribution(adapter: Any, layers: Sequence[str] | None = None, *,
                        max_layers: int = 24) -> Any:
    """Box plot of each layer's weights (one box per layer, definition order)."""
    import matplotlib.pyplot as plt

    from medseg_xai.explain.weights import _layers, _module

    rows = [(n, w.ravel()) for n, _, w in _layers(_module(adapter))
            if layers is None or n in layers][:max_layers]
    if not rows:
        raise ValueError("layers: none of the requested layers has a weight")
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.3 * len(rows)))
    ax.boxplot([w for _, w in rows], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(rows) + 1), [n for n, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("weight value")
    fig.tight_layout()
    return fig


def weight_comparison(table: pd.DataFrame, *, labels: tuple[str, str] = ("A", "B")) -> Any:
    """Model A vs B: per-layer weight norms side by side and the relative change
    (the table of ``explain.weights.compare_weights``)."""
    import matplotlib.pyplot as plt

    t = table.reset_index(drop=True)
    y = np.arange(len(t))
    fig, (ax1, ax2) = plt.subplots(1, 2, sharey=True, figsize=(9, 0.8 + 0.3 * len(t)))
    ax1.barh(y - 0.2, t["norm_a"], height=0.4, label=labels[0])
    ax1.barh(y + 0.2, t["norm_b"], height=0.4, label=labels[1])
    ax1.set_yticks(y, t["name"], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("weight norm")
    ax1.legend(fontsize=7)
    ax2.barh(y, t["relative_change"], color="0.4")
    ax2.set_xlabel("relative change ||B - A|| / ||A||")
    fig.tight_layout()
    return fig


def feature_projection(cases: pd.DataFrame, colour_by: str = "device", *,
                       x: str = "feature_pc1", y: str = "feature_pc2",
                       highlight: Sequence[str] = ()) -> Any:
    """Scatter of the cases' 2D feature projection coloured by a metadata column
    (the ``feature_pc1/2`` columns an audit with an adapter writes)."""
    import matplotlib.pyplot as plt

    for col in (x, y, colour_by):
        if col not in cases.columns:
            raise ValueError(f"cases: expected a column {col!r} (run the audit with an adapter)")
    ok = cases.dropna(subset=[x, y])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for group, sub in ok.groupby(colour_by, sort=True):
        ax.scatter(sub[x], sub[y], s=14, label=str(group), alpha=0.8)
    marked = ok[ok["case_id"].isin(list(highlight))] if "case_id" in ok else ok.iloc[:0]
    if len(marked):
        ax.scatter(marked[x], marked[y], s=60, facecolors="none", edgecolors="k", lw=1.2,
                   label="highlighted")
    ax.set_xlabel("feature PC 1")
    ax.set_ylabel("feature PC 2")
    ax.legend(fontsize=7, title=colour_by, title_fontsize=7)
    fig.tight_layout()
    return fig
