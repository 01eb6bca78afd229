"""Pictures shared by reports and widgets: overlays, three-plane views, montages (matplotlib).

Colour choices are colour-blind aware: false negatives (magenta) and false positives (cyan) differ
in hue and in lightness, and stay distinct under simulated deuteranopia and protanopia.

Outlines of the reference and the prediction are drawn as an RGBA *edge image* (mask minus its
erosion) rather than with ``ax.contour``: updating an image's data is a fraction of the cost of
re-tracing contours, which keeps interactive redraws fast. :class:`SliceView` keeps the artists so
a widget can call :meth:`SliceView.update` instead of re-creating the axes.
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from scipy import ndimage

__all__ = [
    "ERROR_COLOURS",
    "ERROR_LABELS",
    "PRED_COLOUR",
    "REF_COLOUR",
    "SliceView",
    "error_map",
    "fig_to_data_uri",
    "fig_to_png_bytes",
    "lesion_centre",
    "montage",
    "outline",
    "png_data_uri",
    "show_slice",
    "three_plane",
]

#: Colour per error-map code: 1 true positive, 2 false negative, 3 false positive.
ERROR_COLOURS: dict[int, str] = {1: "#F0E442", 2: "#E6007E", 3: "#00C8FF"}
#: Words per error-map code, for legends.
ERROR_LABELS: dict[int, str] = {1: "true positive", 2: "false negative", 3: "false positive"}
#: Outline colours (Okabe-Ito bluish green and orange).
REF_COLOUR = "#009E73"
PRED_COLOUR = "#E69F00"

_PLANES = ("axial", "coronal", "sagittal")


# --------------------------------------------------------------------------- validation helpers
def _as_mask(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name}: expected a numeric or boolean mask array, got dtype {arr.dtype}")
    return arr != 0


def _check_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2D array (H, W), got shape {arr.shape}")
    return arr


def _check_shape(a: np.ndarray, shape: tuple[int, ...], name: str, what: str = "image") -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the {what}'s), got {a.shape}")


def _spacing(spacing: Sequence[float] | None, ndim: int, name: str = "spacing") -> tuple:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"{name}: expected {ndim} positive finite values (mm per axis), got {spacing!r}"
        )
    return sp


# --------------------------------------------------------------------------- masks
def error_map(pred: Any, ref: Any) -> np.ndarray:
    """Classify each voxel against the reference.

    Parameters
    ----------
    pred, ref : array_like
        Masks of equal shape; any non-zero value is foreground.

    Returns
    -------
    numpy.ndarray
        ``uint8`` of the same shape: 0 background, 1 true positive, 2 false negative
        (reference only), 3 false positive (prediction only).
    """
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref: expected equal shapes, got {p.shape} and {r.shape}")
    out = np.zeros(p.shape, dtype=np.uint8)
    out[p & r] = 1
    out[r & ~p] = 2
    out[p & ~r] = 3
    return out


def outline(mask: Any) -> np.ndarray:
    """Edge voxels of a mask: the mask minus its face-connected erosion (boolean, same shape)."""
    m = _as_mask(mask, "mask")
    if not m.any():
        return m
    return m & ~ndimage.binary_erosion(m, border_value=0)


def lesion_centre(mask: Any) -> tuple[int, ...]:
    """Voxel at the centre of the largest connected lesion of a mask.

    The centroid of the largest component (full connectivity) is rounded to a voxel; when that
    voxel lies outside the lesion (a ring or crescent), the lesion voxel nearest to it is used,
    so slices through the returned point always cut the lesion.

    Raises
    ------
    ValueError
        If the mask has no foreground.
    """
    m = _as_mask(mask, "mask")
    if m.ndim < 1 or not m.any():
        raise ValueError(
            f"mask: expected at least one foreground voxel, got an empty mask {m.shape}"
        )
    labels, n = ndimage.label(m, structure=np.ones((3,) * m.ndim, dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        comp = labels == int(np.argmax(sizes))
    else:
        comp = m
    coords = np.argwhere(comp)
    centroid = coords.mean(axis=0)
    voxel = tuple(int(v) for v in np.round(centroid))
    if not comp[voxel]:
        voxel = tuple(int(v) for v in coords[np.argmin(((coords - centroid) ** 2).sum(axis=1))])
    return voxel


# --------------------------------------------------------------------------- rgba builders
def _rgba_layer(codes: np.ndarray, colours: dict[int, str], alpha: float) -> np.ndarray:
    """Paint integer codes with colours into an RGBA float image, transparent elsewhere."""
    lut = np.zeros((max(colours) + 1, 4), dtype=np.float32)
    for code, colour in colours.items():
        r, g, b, _ = to_rgba(colour)
        lut[code] = (r, g, b, alpha)
    return lut[np.clip(codes, 0, len(lut) - 1)]


def _outline_rgba(ref: np.ndarray | None, pred: np.ndarray | None, shape: tuple) -> np.ndarray:
    codes = np.zeros(shape, dtype=np.uint8)
    if ref is not None:
        codes[outline(ref)] = 1
    if pred is not None:
        # The prediction is drawn over the reference where both edges coincide.
        codes[outline(pred)] = 2
    return _rgba_layer(codes, {1: REF_COLOUR, 2: PRED_COLOUR}, 1.0)


def _heatmap_rgba(
    heat: np.ndarray, alpha: float, cmap: str | None, hmax: float | None
) -> np.ndarray:
    """Colour an attribution map; opacity grows with |value| so weak attribution stays clear."""
    h = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # Any negative value -> diverging map (blue = against): negative evidence, e.g. of a
    # missed lesion under signed Grad-CAM, must never look like warm positive attention.
    signed = bool((h < 0).any())
    scale = float(hmax) if hmax is not None else float(np.abs(h).max())
    if scale <= 0:
        return np.zeros(h.shape + (4,), dtype=np.float32)
    if signed:
        norm = np.clip(h / scale, -1, 1)
        rgba = colormaps[cmap or "RdBu_r"]((norm + 1) / 2).astype(np.float32)
        rgba[..., 3] = alpha * np.abs(norm)
    else:
        norm = np.clip(np.abs(h) / scale, 0, 1)
        rgba = colormaps[cmap or "inferno"](norm).astype(np.float32)
        rgba[..., 3] = alpha * norm
    return rgba


def _window(image: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    if vmin is not None and vmax is not None:
        return float(vmin), float(vmax)
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    lo = float(lo) if vmin is None else float(vmin)
    hi = float(hi) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


# --------------------------------------------------------------------------- one slice
class SliceView:
    """One image slice with its overlays, kept as artists so redraws only swap data.

    Layers, bottom to top: the grey image, the error map fill, the attribution heatmap and the
    reference / prediction outlines. Build with :func:`show_slice`; call :meth:`update` to
    change any of them, then ``fig.canvas.draw_idle()``.
    """

    def __init__(
        self,
        ax: Axes,
        image2d: Any,
        *,
        cmap: str = "gray",
        vmin: float | None = None,
        vmax: float | None = None,
        spacing: Sequence[float] | None = None,
        heatmap_cmap: str | None = None,
    ) -> None:
        img = _check_2d(image2d, "image2d").astype(np.float32, copy=False)
        self.ax = ax
        self.shape = img.shape
        self.heatmap_cmap = heatmap_cmap
        self.spacing = _spacing(spacing, 2)
        lo, hi = _window(img, vmin, vmax)
        kw: dict[str, Any] = {
            "interpolation": "nearest",
            "aspect": self.spacing[0] / self.spacing[1],
            "origin": "upper",
        }
        self.image: AxesImage = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, **kw)
        blank = np.zeros(self.shape + (4,), dtype=np.float32)
        self.error: AxesImage = ax.imshow(blank, **kw)
        self.heatmap: AxesImage = ax.imshow(blank, **kw)
        self.outlines: AxesImage = ax.imshow(blank, **kw)
        ax.set_xticks([])
        ax.set_yticks([])
        # Stored so update() can redraw a layer when only alpha or one mask changes.
        self._ref: np.ndarray | None = None
        self._pred: np.ndarray | None = None
        self._heat: np.ndarray | None = None
        self._error_on = False
        self._contours_on = True
        self.alpha = 0.5
        self.hmax: float | None = None

    _KEEP = object()

    def update(
        self,
        image2d: Any = _KEEP,
        *,
        ref: Any = _KEEP,
        pred: Any = _KEEP,
        error: bool | None = None,
        contours: bool | None = None,
        heatmap: Any = _KEEP,
        alpha: float | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        hmax: Any = _KEEP,
    ) -> SliceView:
        """Swap any layer's data; arguments left out keep their current value.

        Pass ``None`` for ``ref``, ``pred`` or ``heatmap`` to remove that layer. ``hmax`` fixes the
        heatmap's colour scale (``None``: the slice's own maximum |value|).
        """
        keep = SliceView._KEEP
        if image2d is not keep:
            img = _check_2d(image2d, "image2d").astype(np.float32, copy=False)
            self._set_shape(img.shape)
            self.image.set_data(img)
        if vmin is not None or vmax is not None:
            lo, hi = self.image.get_clim()
            self.image.set_clim(lo if vmin is None else vmin, hi if vmax is None else vmax)
        masks_changed = False
        if ref is not keep:
            self._ref = None if ref is None else self._mask2d(ref, "ref")
            masks_changed = True
        if pred is not keep:
            self._pred = None if pred is None else self._mask2d(pred, "pred")
            masks_changed = True
        if error is not None:
            self._error_on = bool(error)
            masks_changed = True
        if contours is not None:
            self._contours_on = bool(contours)
            masks_changed = True
        heat_changed = False
        if heatmap is not keep:
            self._heat = None if heatmap is None else self._float2d(heatmap, "heatmap")
            heat_changed = True
        if hmax is not keep:
            self.hmax = hmax
            heat_changed = True
        if alpha is not None:
            if not 0.0 <= float(alpha) <= 1.0:
                raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
            self.alpha = float(alpha)
            masks_changed = heat_changed = True
        if masks_changed:
            self._draw_masks()
        if heat_changed:
            self._draw_heat()
        return self

    # -- internals
    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self.shape:
            self.shape = shape
            h, w = shape
            for art in (self.image, self.error, self.heatmap, self.outlines):
                art.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
            self.ax.set_xlim(-0.5, w - 0.5)
            self.ax.set_ylim(h - 0.5, -0.5)
            self._ref = self._pred = self._heat = None
            blank = np.zeros(shape + (4,), dtype=np.float32)
            for art in (self.error, self.heatmap, self.outlines):
                art.set_data(blank)

    def _mask2d(self, a: Any, name: str) -> np.ndarray:
        m = _as_mask(_check_2d(a, name), name)
        _check_shape(m, self.shape, name)
        return m

    def _float2d(self, a: Any, name: str) -> np.ndarray:
        h = _check_2d(a, name)
        _check_shape(h, self.shape, name)
        return h

    def _draw_masks(self) -> None:
        if self._error_on:
            if self._ref is None or self._pred is None:
                raise ValueError("error=True: expected both ref and pred masks, got a missing one")
            codes = error_map(self._pred, self._ref)
            self.error.set_data(_rgba_layer(codes, ERROR_COLOURS, self.alpha))
        else:
            self.error.set_data(np.zeros(self.shape + (4,), dtype=np.float32))
        if self._contours_on:
            self.outlines.set_data(_outline_rgba(self._ref, self._pred, self.shape))
        else:
            self.outlines.set_data(np.zeros(self.shape + (4,), dtype=np.float32))

    def _draw_heat(self) -> None:
        if self._heat is None:
            self.heatmap.set_data(np.zeros(self.shape + (4,), dtype=np.float32))
        else:
            hmax = None if self.hmax is None else float(self.hmax)
            self.heatmap.set_data(_heatmap_rgba(self._heat, self.alpha, self.heatmap_cmap, hmax))


def show_slice(
    ax: Axes,
    image2d: Any,
    ref: Any = None,
    pred: Any = None,
    error: bool = False,
    heatmap: Any = None,
    alpha: float = 0.5,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    spacing: Sequence[float] | None = None,
    contours: bool | None = None,
    cmap: str = "gray",
    heatmap_cmap: str | None = None,
    hmax: float | None = None,
) -> SliceView:
    """Draw one 2D slice with optional outlines, error map and attribution heatmap.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    image2d : array_like, shape (H, W)
        The image slice, drawn in grey with window ``vmin``..``vmax`` (default: the 0.5 and 99.5
        percentiles).
    ref, pred : array_like, shape (H, W), optional
        Reference and prediction masks, outlined in :data:`REF_COLOUR` and :data:`PRED_COLOUR`.
    error : bool
        Fill the error map (:data:`ERROR_COLOURS`) with opacity ``alpha``; needs ``ref`` and
        ``pred``.
    heatmap : array_like, shape (H, W), optional
        Attribution; opacity scales with |value| up to ``alpha``. Signed maps use a diverging
        colour map. ``hmax`` fixes the colour scale.
    alpha : float
        Overlay opacity in [0, 1].
    spacing : (float, float), optional
        Pixel size (row, column) in mm; sets the aspect ratio.
    contours : bool, optional
        Draw outlines; default: only when ``error`` is off (the error map already shows both
        masks).

    Returns
    -------
    SliceView
        The artists, for fast :meth:`SliceView.update` calls.
    """
    view = SliceView(
        ax, image2d, cmap=cmap, vmin=vmin, vmax=vmax, spacing=spacing, heatmap_cmap=heatmap_cmap
    )
    view.update(
        ref=ref,
        pred=pred,
        error=error,
        contours=(not error) if contours is None else contours,
        heatmap=heatmap,
        alpha=alpha,
        hmax=hmax,
    )
    return view


def add_error_legend(ax: Axes, *, contours: bool = False, error: bool = True, **kw: Any) -> None:
    """Add a legend for the error map colours and/or outline colours to ``ax``."""
    from matplotlib.patches import Patch

    handles = []
    if error:
        handles += [Patch(color=ERROR_COLOURS[c], label=ERROR_LABELS[c]) for c in (1, 2, 3)]
    if contours:
        handles += [
            Patch(facecolor="none", edgecolor=REF_COLOUR, label="reference"),
            Patch(facecolor="none", edgecolor=PRED_COLOUR, label="prediction"),
        ]
    kw.setdefault("loc", "lower right")
    kw.setdefault("fontsize", "x-small")
    kw.setdefault("framealpha", 0.8)
    ax.legend(handles=handles, **kw)


# --------------------------------------------------------------------------- volumes
def _plane(a: np.ndarray | None, plane: str, c: tuple[int, int, int]) -> np.ndarray | None:
    if a is None:
        return None
    if plane == "axial":
        return a[c[0]]
    if plane == "coronal":
        return a[:, c[1], :]
    return a[:, :, c[2]]


def _plane_spacing(sp: tuple[float, float, float], plane: str) -> tuple[float, float]:
    return {"axial": (sp[1], sp[2]), "coronal": (sp[0], sp[2]), "sagittal": (sp[0], sp[1])}[plane]


def _volume(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 4:
        arr = arr[0]  # (C, D, H, W): the first channel is shown
    if arr.ndim != 3:
        raise ValueError(
            f"{name}: expected a 3D volume (D, H, W) or (C, D, H, W), got shape {np.shape(image)}"
        )
    return arr


def three_plane(
    image: Any,
    center: Sequence[int] | None = None,
    ref: Any = None,
    pred: Any = None,
    error: bool = False,
    heatmap: Any = None,
    spacing: Sequence[float] | None = None,
    alpha: float = 0.5,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    contours: bool | None = None,
    crosshair: bool = True,
    title: str | None = None,
    panel_size: float = 2.6,
    fig: Figure | None = None,
) -> Figure:
    """Axial, coronal and sagittal slices of a volume through one point.

    Parameters
    ----------
    image : array_like, shape (D, H, W) or (C, D, H, W)
        The volume (first channel shown). Axis 0 is the axial slice index; coronal and sagittal
        views show axis 0 vertically.
    center : (int, int, int), optional
        Voxel the planes pass through; default the centre of the largest reference lesion, else
        of the largest predicted lesion, else the volume centre.
    ref, pred, error, heatmap, alpha, vmin, vmax, contours
        As in :func:`show_slice`; masks and heatmap have the volume's shape. The window and the
        heatmap's colour scale are shared by the three planes.
    spacing : (float, float, float), optional
        Voxel size in mm; the panels keep their physical aspect ratio.

    Returns
    -------
    matplotlib.figure.Figure
        With three axes; ``fig.slice_views`` holds the :class:`SliceView` of each plane.
    """
    vol = _volume(image).astype(np.float32, copy=False)
    shape = vol.shape
    r = None if ref is None else _as_mask(_volume(ref, "ref"), "ref")
    p = None if pred is None else _as_mask(_volume(pred, "pred"), "pred")
    h = None if heatmap is None else _volume(heatmap, "heatmap")
    for arr, name in ((r, "ref"), (p, "pred"), (h, "heatmap")):
        if arr is not None:
            _check_shape(arr, shape, name)
    sp = _spacing(spacing, 3)
    if center is None:
        if r is not None and r.any():
            c = lesion_centre(r)
        elif p is not None and p.any():
            c = lesion_centre(p)
        else:
            c = tuple(s // 2 for s in shape)
    else:
        c = tuple(int(v) for v in center)
        if len(c) != 3 or not all(0 <= v < s for v, s in zip(c, shape)):
            raise ValueError(f"center: expected 3 voxel indices inside {shape}, got {center!r}")
    lo, hi = _window(vol, vmin, vmax)
    hmax = None
    if h is not None:
        hmax = float(np.nanmax(np.abs(h))) or None

    # Panel widths proportional to the physical width of each plane keep the three the same height.
    widths = [shape[2] * sp[2], shape[2] * sp[2], shape[1] * sp[1]]
    heights = [shape[1] * sp[1], shape[0] * sp[0], shape[0] * sp[0]]
    tallest = max(heights)
    if fig is None:
        total = sum(w / tallest for w in widths)
        fig = Figure(figsize=(panel_size * total + 0.3, panel_size + 0.5))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": widths})
    views = []
    for ax, plane in zip(axes, _PLANES):
        view = show_slice(
            ax,
            _plane(vol, plane, c),
            ref=_plane(r, plane, c),
            pred=_plane(p, plane, c),
            error=error,
            heatmap=_plane(h, plane, c),
            alpha=alpha,
            vmin=lo,
            vmax=hi,
            spacing=_plane_spacing(sp, plane),
            contours=contours,
            hmax=hmax,
        )
        views.append(view)
        idx = {"axial": c[0], "coronal": c[1], "sagittal": c[2]}[plane]
        ax.set_title(f"{plane} {idx}", fontsize="small")
        if crosshair:
            # Lines mark where the other two planes cut this one.
            row, col = {"axial": (c[1], c[2]), "coronal": (c[0], c[2]), "sagittal": (c[0], c[1])}[
                plane
            ]
            for line in (ax.axhline(row), ax.axvline(col)):
                line.set(color="white", linewidth=0.5, alpha=0.35, linestyle=":")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86 if title else 0.9, wspace=0.05)
    fig.slice_views = views  # type: ignore[attr-defined]
    fig.center = c  # type: ignore[attr-defined]
    return fig


def montage(
    features: Any,
    ncols: int | None = None,
    *,
    titles: Sequence[str] | None = None,
    max_features: int = 64,
    slice_index: int | None = None,
    cmap: str = "viridis",
    panel_size: float = 1.3,
    title: str | None = None,
) -> Figure:
    """Grid of activation maps, one panel per feature (channel).

    Parameters
    ----------
    features : array_like, shape (F, H, W) or (F, D, H, W)
        Feature maps of one layer; for 3D maps the slice ``slice_index`` along the first spatial
        axis (default the middle one) is shown.
    ncols : int, optional
        Panels per row; default about the square root of the number shown.
    titles : sequence of str, optional
        One per feature; default ``"#i"``.
    max_features : int
        At most this many panels (the first ones); the figure title says how many were left out.

    Returns
    -------
    matplotlib.figure.Figure
    """
    f = np.asarray(features, dtype=np.float32)
    if f.ndim not in (3, 4) or f.shape[0] == 0:
        raise ValueError(
            f"features: expected (F, H, W) or (F, D, H, W) with F >= 1, got shape {f.shape}"
        )
    if max_features < 1:
        raise ValueError(f"max_features: expected a positive integer, got {max_features!r}")
    if titles is not None and len(titles) != f.shape[0]:
        raise ValueError(
            f"titles: expected {f.shape[0]} titles (one per feature), got {len(titles)}"
        )
    if f.ndim == 4:
        k = f.shape[1] // 2 if slice_index is None else int(slice_index)
        if not 0 <= k < f.shape[1]:
            raise ValueError(f"slice_index: expected 0..{f.shape[1] - 1}, got {slice_index!r}")
        f = f[:, k]
    n_total = f.shape[0]
    n = min(n_total, max_features)
    if ncols is None:
        ncols = int(np.ceil(np.sqrt(n)))
    if ncols < 1:
        raise ValueError(f"ncols: expected a positive integer, got {ncols!r}")
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + (0.4 if title else 0.1)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        ax.imshow(f[i], cmap=cmap, interpolation="nearest")
        ax.set_title(titles[i] if titles is not None else f"#{i}", fontsize="x-small", pad=2)
    if n < n_total or title:
        extra = f" (first {n} of {n_total})" if n < n_total else ""
        fig.suptitle(f"{title or 'features'}{extra}", fontsize="small")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.25)
    return fig


# --------------------------------------------------------------------------- export
def fig_to_png_bytes(
    fig: Figure, dpi: float = 100, *, close: bool = True, tight: bool = False
) -> bytes:
    """Render a figure to PNG bytes (``close`` also releases a pyplot-managed figure).

    ``tight`` crops the canvas to the drawn content (for documents; widgets keep a fixed size).
    """
    buf = io.BytesIO()
    extra = {"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, **extra)
    if close and "matplotlib.pyplot" in sys.modules:
        # Only pyplot keeps a reference to figures; a bare Figure is freed by the GC.
        sys.modules["matplotlib.pyplot"].close(fig)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI for PNG bytes, for self-contained HTML."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png: expected PNG bytes (signature \\x89PNG), got something else")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fig_to_data_uri(
    fig: Figure, dpi: float = 100, *, close: bool = True, tight: bool = False
) -> str:
    """Render a figure straight to a PNG data URI."""
    return png_data_uri(fig_to_png_bytes(fig, dpi=dpi, close=close, tight=tight))
