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
import functools
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from scipy import ndimage

from medseg_xai._legacy import apply_legacy

__all__ = [
    "ERROR_COLOURS",
    "ERROR_LABELS",
    "PRED_COLOUR",
    "REF_COLOUR",
    "CONVENTIONS",
    "Geometry",
    "SliceStyle",
    "SliceView",
    "add_scale_bar",
    "annotate_plane",
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


# --------------------------------------------------------------------------- geometry
#: Display conventions. Radiological (default, as in most radiology viewers): the patient's
#: right is on the screen's left in axial and coronal views. Neurological: right on the right.
CONVENTIONS = ("radiological", "neurological")
#: World-axis letters in RAS+ terms: (negative end, positive end) per world axis x, y, z.
_WORLD_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))
#: Angle (degrees) above which an affine counts as oblique and the views say so.
OBLIQUE_TOLERANCE_DEG = 1.0
UNKNOWN_NOTE = "voxel axes, orientation unknown"


class _PlaneSpec:
    """How one displayed plane cuts the stored array (all axes are *stored* voxel axes)."""

    __slots__ = ("col_axis", "col_flip", "cut_axis", "letters", "row_axis", "row_flip")

    def __init__(self, cut_axis: int, row_axis: int, row_flip: bool, col_axis: int,
                 col_flip: bool, letters: dict[str, str] | None) -> None:
        self.cut_axis, self.row_axis, self.row_flip = cut_axis, row_axis, row_flip
        self.col_axis, self.col_flip, self.letters = col_axis, col_flip, letters


class Geometry:
    """Where the anatomical planes lie in a stored array, from its affine (display only).

    The array is never resampled: each plane is a slice of the stored grid, transposed and
    flipped (numpy views) so that it is shown in one anatomical convention:

    * ``axial``: seen from the feet, anterior at the top;
    * ``coronal``: seen from the front, superior at the top;
    * ``sagittal``: seen from the patient's left, superior at the top, anterior on the left;
    * radiological (default): the patient's right on the screen's left in axial and coronal
      views; ``convention="neurological"`` puts it on the right.

    The stored axis nearest to each world axis is found with
    :func:`nibabel.orientations.io_orientation` and the display order with
    :func:`nibabel.orientations.ornt_transform`. An oblique affine is shown on those nearest
    axes, and :attr:`note` says so. Without an affine the planes are the stored axes (axis 0
    cut by "axial", 1 by "coronal", 2 by "sagittal", no flips) and :attr:`note` reads
    ``"voxel axes, orientation unknown"``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape, ``(H, W)`` or ``(D, H, W)``.
    affine : array_like, optional
        Voxel-to-world affine: ``4x4`` (NIfTI; for a 2D image the third voxel axis is the
        missing one) or ``3x3`` for a 2D image (a 2D image then lies in the axial plane).
    spacing : sequence of float, optional
        Voxel size in mm per stored axis; default the affine's column norms, else 1.
    convention : {"radiological", "neurological"}

    Attributes
    ----------
    planes : tuple of str
        ``("axial", "coronal", "sagittal")`` for volumes; one name for a 2D image (the plane
        its affine puts it in, or ``"image"`` without an affine).
    known : bool
        Whether an affine gave the orientation.
    axcodes : tuple of str or None
        Stored axes as nibabel orientation codes, e.g. ``("R", "A", "S")``.
    obliquity_deg : float
        Largest angle between a stored axis and its nearest world axis.
    note : str
        What the views print besides the letters ("" for a straight, known orientation).
    """

    def __init__(self, shape: Sequence[int], affine: Any = None,
                 spacing: Sequence[float] | None = None, *,
                 convention: str = "radiological") -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"shape: expected a 2D or 3D spatial shape, got {shape}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
        self.shape = shape
        self.ndim = len(shape)
        self.convention = convention
        self._shape3 = shape if self.ndim == 3 else (*shape, 1)
        aff = None if affine is None else self._affine4(affine)
        self.affine = aff
        self.known = aff is not None
        if spacing is not None:
            self.spacing = _spacing(spacing, self.ndim)
        elif aff is not None:
            import nibabel.affines

            self.spacing = tuple(float(v) for v in nibabel.affines.voxel_sizes(aff)[: self.ndim])
        else:
            self.spacing = (1.0,) * self.ndim
        self.spacing_known = spacing is not None or aff is not None
        self.axcodes: tuple[str, ...] | None = None
        self.obliquity_deg = 0.0
        self._specs = self._known_specs(aff) if aff is not None else self._voxel_specs()
        if self.ndim == 2:
            # A 2D image shows the one plane its missing (third) axis cuts.
            self._specs = {n: s for n, s in self._specs.items() if s.cut_axis == 2}
        self.planes = tuple(self._specs)
        if aff is None:
            self.note = UNKNOWN_NOTE
        elif self.obliquity_deg > OBLIQUE_TOLERANCE_DEG:
            self.note = (f"oblique ({self.obliquity_deg:.0f}° off the axes): shown on the "
                         f"nearest axes, not resampled")
        else:
            self.note = ""

    # -- construction
    def _affine4(self, affine: Any) -> np.ndarray:
        a = np.asarray(affine, dtype=float)
        if self.ndim == 2 and a.shape == (3, 3):
            a4 = np.eye(4)
            a4[:2, :2], a4[:2, 3] = a[:2, :2], a[:2, 2]
            a = a4
        if a.shape != (4, 4) or not np.isfinite(a).all():
            raise ValueError(
                f"affine: expected a finite 4x4 voxel-to-world matrix (or 3x3 for a 2D image), "
                f"got shape {a.shape}"
            )
        if abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError("affine: expected an invertible 3x3 part, got a singular matrix")
        return a

    def _known_specs(self, aff: np.ndarray) -> dict[str, _PlaneSpec]:
        import nibabel.affines
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt2axcodes, ornt_transform

        src = io_orientation(aff)
        self.axcodes = tuple(ornt2axcodes(src))[: self.ndim]
        self.obliquity_deg = float(np.degrees(np.max(np.abs(nibabel.affines.obliquity(aff)))))
        # Display frame: axis 0 runs to the screen's right in axial/coronal views, axis 1
        # downwards in axial views (anterior -> posterior), axis 2 downwards (superior ->
        # inferior) in coronal and sagittal views. Each plane is then a plain transpose.
        codes = ("L" if self.convention == "radiological" else "R", "P", "I")
        tf = ornt_transform(src, axcodes2ornt(codes))
        stored = {int(t): (a, bool(f == -1)) for a, (t, f) in enumerate(tf)}

        def letters(w_row: int, w_col: int) -> dict[str, str]:
            def ends(c: int) -> tuple[str, str]:
                end = codes[c]
                start = next(p[0] if p[1] == end else p[1] for p in _WORLD_LETTERS if end in p)
                return start, end

            (top, bottom), (left, right) = ends(w_row), ends(w_col)
            return {"top": top, "bottom": bottom, "left": left, "right": right}

        def spec(cut: int, row: int, col: int) -> _PlaneSpec:
            (ra, rf), (ca, cf) = stored[row], stored[col]
            return _PlaneSpec(stored[cut][0], ra, rf, ca, cf, letters(row, col))

        return {"axial": spec(2, 1, 0), "coronal": spec(1, 2, 0), "sagittal": spec(0, 2, 1)}

    def _voxel_specs(self) -> dict[str, _PlaneSpec]:
        if self.ndim == 2:
            return {"image": _PlaneSpec(2, 0, False, 1, False, None)}
        return {"axial": _PlaneSpec(0, 1, False, 2, False, None),
                "coronal": _PlaneSpec(1, 0, False, 2, False, None),
                "sagittal": _PlaneSpec(2, 0, False, 1, False, None)}

    # -- queries
    def _spec(self, plane: str) -> _PlaneSpec:
        if plane not in self._specs:
            raise ValueError(f"plane: expected one of {self.planes}, got {plane!r}")
        return self._specs[plane]

    def cut_axis(self, plane: str) -> int:
        """Stored axis a plane cuts (its slider); -1 for a 2D image."""
        return -1 if self.ndim == 2 else self._spec(plane).cut_axis

    def n_slices(self, plane: str) -> int:
        return self._shape3[self._spec(plane).cut_axis]

    def plane_of_axis(self, axis: int) -> str:
        """The plane that stored axis ``axis`` cuts."""
        for name, s in self._specs.items():
            if s.cut_axis == axis or (self.ndim == 2 and axis == -1):
                return name
        raise ValueError(f"axis: expected 0..{self.ndim - 1}, got {axis!r}")

    def display_shape(self, plane: str) -> tuple[int, int]:
        s = self._spec(plane)
        return self._shape3[s.row_axis], self._shape3[s.col_axis]

    def pixel_spacing(self, plane: str) -> tuple[float, float]:
        """Pixel size (rows, columns) in mm of a displayed plane."""
        s = self._spec(plane)
        sp = (*self.spacing, 1.0)
        return sp[s.row_axis], sp[s.col_axis]

    def letters(self, plane: str) -> dict[str, str] | None:
        """Orientation letters at the ``top``, ``bottom``, ``left`` and ``right`` edges."""
        spec = self._spec(plane)
        return None if spec.letters is None else dict(spec.letters)

    def slice(self, volume: Any, plane: str, index: int | None = None) -> np.ndarray:
        """The displayed 2D picture of ``plane`` at stored slice ``index`` (a numpy view).

        ``volume`` has the spatial shape (no channel axis). ``index`` is ignored for 2D images.
        """
        arr = np.asarray(volume)
        if arr.shape != self.shape:
            raise ValueError(f"volume: expected the spatial shape {self.shape}, got {arr.shape}")
        s = self._spec(plane)
        if self.ndim == 2:
            arr, index = arr[..., None], 0
        n = self._shape3[s.cut_axis]
        if index is None or not 0 <= int(index) < n:
            raise ValueError(f"index: expected 0..{n - 1} for the {plane} plane, got {index!r}")
        out = np.take(arr, int(index), axis=s.cut_axis)
        kept = [a for a in range(3) if a != s.cut_axis]
        if kept.index(s.row_axis) == 1:
            out = out.T
        if s.row_flip:
            out = out[::-1]
        if s.col_flip:
            out = out[:, ::-1]
        return out

    def to_display(self, plane: str, voxel: Sequence[float]) -> tuple[float, float]:
        """(row, column) of a stored voxel in the displayed plane."""
        s = self._spec(plane)
        v = (*[float(x) for x in voxel], 0.0)[:3]
        r, c = v[s.row_axis], v[s.col_axis]
        if s.row_flip:
            r = self._shape3[s.row_axis] - 1 - r
        if s.col_flip:
            c = self._shape3[s.col_axis] - 1 - c
        return r, c

    def to_voxel(self, plane: str, row: float, col: float,
                 centre: Sequence[int]) -> tuple[int, ...]:
        """Stored voxel under display pixel ``(row, col)``; ``centre`` gives the cut axis."""
        s = self._spec(plane)
        v = [int(x) for x in centre] + [0] * (3 - len(centre))
        r, c = int(round(float(row))), int(round(float(col)))
        nr, nc = self._shape3[s.row_axis], self._shape3[s.col_axis]
        r, c = min(max(r, 0), nr - 1), min(max(c, 0), nc - 1)
        v[s.row_axis] = nr - 1 - r if s.row_flip else r
        v[s.col_axis] = nc - 1 - c if s.col_flip else c
        return tuple(v[: self.ndim])

    def world(self, voxel: Sequence[float]) -> np.ndarray | None:
        """World coordinates (mm) of a stored voxel, or None without an affine."""
        if self.affine is None:
            return None
        v = np.array([*map(float, voxel), 0.0][:3] + [1.0])
        return (self.affine @ v)[:3]


def scale_bar_mm(width_mm: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k mm) near a fifth of the width."""
    target = max(float(width_mm) / 5.0, 1e-6)
    k = np.floor(np.log10(target))
    for m in (5.0, 2.0, 1.0):
        if m * 10**k <= target:
            return float(m * 10**k)
    return float(10**k)


_TEXT = {"color": "white", "fontsize": "x-small", "fontweight": "bold"}


def add_scale_bar(ax: Axes, geometry: Geometry, plane: str,
                  visible_cols: float | None = None) -> tuple[Any, float]:
    """A round-length scale bar (mm, or voxels without spacing) in the lower left of ``ax``.

    ``visible_cols``: how many columns are on screen (zoomed views); default the whole plane.
    Returns ``(artist, length)``; the bar is drawn in data units, so it stays true under zoom.
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    rows, cols = geometry.display_shape(plane)
    _, col_mm = geometry.pixel_spacing(plane)
    shown = float(cols if visible_cols is None else visible_cols)
    length = scale_bar_mm(shown * col_mm)
    unit = "mm" if geometry.spacing_known else "voxels"
    bar = AnchoredSizeBar(ax.transData, length / col_mm, f"{length:g} {unit}", "lower left",
                          pad=0.3, color="white", frameon=False,
                          size_vertical=max(rows * shown / cols / 150, 0.3),
                          fontproperties={"size": "xx-small"})
    bar.set_gid("scale-bar")
    ax.add_artist(bar)
    return bar, length


def annotate_plane(ax: Axes, geometry: Geometry, plane: str, *, note: bool = True,
                   scale_bar: bool = True) -> dict[str, Any]:
    """Orientation letters on each edge, a mm scale bar and the geometry note on ``ax``.

    Returns the artists: ``{"letters": {edge: Text}, "scale_bar": artist, "note": Text}``.
    """
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=2, foreground="black")]
    out: dict[str, Any] = {"letters": {}, "scale_bar": None, "note": None}
    letters = geometry.letters(plane)
    if letters is not None:
        pos = {"top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom"),
               "left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center")}
        for edge, (x, y, ha, va) in pos.items():
            out["letters"][edge] = ax.text(x, y, letters[edge], transform=ax.transAxes, ha=ha,
                                           va=va, path_effects=halo, gid=f"letter-{edge}",
                                           **_TEXT)
    if scale_bar:
        out["scale_bar"], out["scale_bar_mm"] = add_scale_bar(ax, geometry, plane)
    if note and geometry.note:
        out["note"] = ax.text(0.98, 0.02, geometry.note, transform=ax.transAxes, ha="right",
                              va="bottom", color="#FFD700", fontsize="xx-small",
                              path_effects=halo, gid="geometry-note", wrap=True)
    return out


# --------------------------------------------------------------------------- style
@dataclass(frozen=True)
class SliceStyle:
    """How :func:`show_slice` and :func:`three_plane` draw (not what): one frozen object, so
    a figure's look is set once and reused (``dataclasses.replace`` changes one field).

    Parameters
    ----------
    vmin, vmax : float, optional
        Grey window (default: the image's 0.5 and 99.5 percentiles; in :func:`three_plane`
        the volume's, shared by the three planes).
    cmap : str
        Colour map of the image.
    heatmap_cmap : str, optional
        Colour map of the heatmap (default: diverging for signed maps, else warm).
    hmax : float, optional
        Fixes the heatmap's colour scale (default: the largest |value|, shared by the planes).
    contours : bool, optional
        Draw the reference / prediction outlines; default only when the error map is off (it
        shows both masks).
    convention : {"radiological", "neurological"}
        Display convention of anatomical planes (see :class:`Geometry`).
    annotate : bool
        Orientation letters, mm scale bar and geometry note.
    title : str, optional
        :func:`three_plane` only: the figure's title.
    channel : int
        :func:`three_plane` only: the channel of a ``(C, D, H, W)`` image shown.
    crosshair : bool
        :func:`three_plane` only: mark where the other two planes cut each panel.
    panel_size : float
        :func:`three_plane` only: height of a panel in inches.
    """

    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "gray"
    heatmap_cmap: str | None = None
    hmax: float | None = None
    contours: bool | None = None
    convention: str = "radiological"
    annotate: bool = True
    title: str | None = None
    channel: int = 0
    crosshair: bool = True
    panel_size: float = 2.6


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
        orient: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        # ``orient`` turns a stored 2D array into its displayed form (Geometry.slice); every
        # layer passed in later goes through it, so callers keep working on the stored grid.
        self._orient = orient
        img = self._oriented(_check_2d(image2d, "image2d")).astype(np.float32, copy=False)
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
        self.geometry: Geometry | None = None
        self.plane: str | None = None
        self.annotations: dict[str, Any] = {}

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
            img = self._oriented(_check_2d(image2d, "image2d")).astype(np.float32, copy=False)
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
    def _oriented(self, a: np.ndarray) -> np.ndarray:
        return a if self._orient is None else self._orient(a)

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
        m = self._oriented(_as_mask(_check_2d(a, name), name))
        _check_shape(m, self.shape, name)
        return m

    def _float2d(self, a: Any, name: str) -> np.ndarray:
        h = self._oriented(_check_2d(a, name))
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


def _slice_affine(affine: Any, cut_axis: int) -> np.ndarray:
    """The 4x4 affine of a slice cut along ``cut_axis`` from a volume with ``affine``."""
    if affine is None:
        raise ValueError("cut_axis: needs the volume's affine (affine=), got none")
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or cut_axis not in (0, 1, 2):
        raise ValueError(f"cut_axis: expected 0, 1 or 2 with a 4x4 volume affine, got "
                         f"{cut_axis!r} and shape {a.shape}")
    kept = [i for i in range(3) if i != cut_axis]
    return a[:, [*kept, cut_axis, 3]]  # the slice's axes first, the cut axis third


def show_slice(
    ax: Axes,
    image2d: Any,
    ref: Any = None,
    pred: Any = None,
    error: bool = False,
    heatmap: Any = None,
    alpha: float = 0.5,
    *,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    cut_axis: int | None = None,
    style: SliceStyle | None = None,
    **legacy: Any,
) -> SliceView:
    """Draw one 2D image with optional outlines, error map and attribution heatmap.

    With ``affine`` the image is shown in its anatomical plane (see :class:`Geometry`):
    transposed / flipped for display only, with orientation letters on every edge. Without it
    the stored axes are shown (rows = axis 0) and the panel says "voxel axes, orientation
    unknown". Masks and heatmap are always given on the stored grid.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    image2d : array_like, shape (H, W)
        The image slice, grey, window ``vmin``..``vmax`` (default: 0.5 and 99.5 percentiles).
    ref, pred : array_like, shape (H, W), optional
        Reference and prediction masks, outlined in :data:`REF_COLOUR` and :data:`PRED_COLOUR`.
    error : bool
        Fill the error map (:data:`ERROR_COLOURS`), opacity ``alpha``; needs ``ref``, ``pred``.
    heatmap : array_like, shape (H, W), optional
        Attribution; opacity scales with |value| up to ``alpha``; signed maps use a diverging
        colour map; ``style.hmax`` fixes the colour scale.
    alpha : float
        Overlay opacity in [0, 1].
    spacing : (float, float), optional
        Pixel size of stored axes (0, 1) in mm (default: ``affine``'s, else 1): aspect, scale bar.
    affine : array_like, optional
        ``4x4`` (NIfTI) or ``3x3`` voxel-to-world affine of the 2D image. With ``cut_axis`` it
        is the affine of the *volume* the image was cut from (``np.take(volume, k, cut_axis)``).
    cut_axis : int, optional
        Volume axis (0, 1 or 2) the slice was cut along (its axes: the others, in order).
    style : SliceStyle, optional
        Window (``vmin``, ``vmax``), colour maps, ``hmax``, ``contours``, ``convention``,
        ``annotate``; default :class:`SliceStyle`'s defaults.
    **legacy
        Those style fields as keywords (``vmin=0``, ``contours=True``...): accepted for one
        release with a ``FutureWarning`` naming ``style=SliceStyle(...)``; any other keyword
        is a ``TypeError``.

    Returns
    -------
    SliceView
        The artists, for fast :meth:`SliceView.update` calls; ``view.geometry`` and
        ``view.plane`` say how the image was oriented, ``view.annotations`` holds the letters.
    """
    st = apply_legacy("show_slice", SliceStyle, style, legacy, param="style")
    img = _check_2d(image2d, "image2d")
    affine = affine if cut_axis is None else _slice_affine(affine, cut_axis)
    geometry = Geometry(img.shape, affine, spacing, convention=st.convention)
    plane = geometry.planes[0]
    orient = None if affine is None else functools.partial(geometry.slice, plane=plane)
    view = SliceView(ax, img, cmap=st.cmap, vmin=st.vmin, vmax=st.vmax,
                     heatmap_cmap=st.heatmap_cmap, spacing=geometry.pixel_spacing(plane),
                     orient=orient)
    view.geometry, view.plane = geometry, plane
    view.annotations = annotate_plane(ax, geometry, plane) if st.annotate else {}
    view.update(ref=ref, pred=pred, error=error,
                contours=(not error) if st.contours is None else st.contours,
                heatmap=heatmap, alpha=alpha, hmax=st.hmax)
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
def _volume(image: Any, name: str = "image", channel: int = 0) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 4:
        if not 0 <= channel < arr.shape[0]:
            raise ValueError(f"channel: expected 0..{arr.shape[0] - 1}, got {channel!r}")
        arr = arr[channel]  # (C, D, H, W): one channel is shown
    if arr.ndim != 3:
        raise ValueError(
            f"{name}: expected a 3D volume (D, H, W) or (C, D, H, W), got shape {np.shape(image)}"
        )
    return arr


def _three_plane_inputs(
    image: Any, ref: Any, pred: Any, heatmap: Any, channel: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The volume, masks and heatmap of :func:`three_plane`, checked to share one shape."""
    vol = _volume(image, channel=channel).astype(np.float32, copy=False)
    shape = vol.shape
    r = None if ref is None else _as_mask(_volume(ref, "ref"), "ref")
    p = None if pred is None else _as_mask(_volume(pred, "pred"), "pred")
    h = None if heatmap is None else _volume(heatmap, "heatmap")
    for arr, name in ((r, "ref"), (p, "pred"), (h, "heatmap")):
        if arr is not None:
            _check_shape(arr, shape, name)
    return vol, r, p, h


def _three_plane_centre(
    center: Sequence[int] | None, r: np.ndarray | None, p: np.ndarray | None,
    shape: tuple[int, ...],
) -> tuple[int, ...]:
    """The voxel the planes pass through: ``center``, else a lesion centre, else the middle."""
    if center is None:
        if r is not None and r.any():
            return lesion_centre(r)
        if p is not None and p.any():
            return lesion_centre(p)
        return tuple(s // 2 for s in shape)
    c = tuple(int(v) for v in center)
    if len(c) != 3 or not all(0 <= v < s for v, s in zip(c, shape)):
        raise ValueError(f"center: expected 3 voxel indices inside {shape}, got {center!r}")
    return c


def _three_plane_axes(geo: Geometry, panel_size: float, fig: Figure | None) -> tuple[Figure, Any]:
    """The figure (new if ``fig`` is None) and its three axes, sized to the planes' widths."""
    # Panel widths proportional to the physical width of each plane keep the three the same height.
    dims = {pl: (geo.display_shape(pl), geo.pixel_spacing(pl)) for pl in _PLANES}
    widths = [dims[pl][0][1] * dims[pl][1][1] for pl in _PLANES]
    heights = [dims[pl][0][0] * dims[pl][1][0] for pl in _PLANES]
    tallest = max(heights)
    if fig is None:
        total = sum(w / tallest for w in widths)
        fig = Figure(figsize=(panel_size * total + 0.3, panel_size + 0.5))
    return fig, fig.subplots(1, 3, gridspec_kw={"width_ratios": widths})


def _plane_panel(
    ax: Axes, geo: Geometry, plane: str, c: tuple[int, ...],
    arrays: tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None], *,
    error: bool, alpha: float, style: SliceStyle,
) -> SliceView:
    """Draw one plane of :func:`three_plane` through voxel ``c`` on ``ax`` (``style`` holds
    the shared window and heatmap scale)."""
    idx = c[geo.cut_axis(plane)]

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else geo.slice(a, plane, idx)

    vol, r, p, h = arrays
    view = show_slice(
        ax, cut(vol), ref=cut(r), pred=cut(p), error=error, heatmap=cut(h), alpha=alpha,
        spacing=geo.pixel_spacing(plane), style=replace(style, annotate=False),
    )
    view.geometry, view.plane = geo, plane
    view.annotations = annotate_plane(ax, geo, plane, note=False) if style.annotate else {}
    ax.set_title(f"{plane} {idx}", fontsize="small")
    if style.crosshair:
        # Lines mark where the other two planes cut this one.
        row, col = geo.to_display(plane, c)
        for line in (ax.axhline(row), ax.axvline(col)):
            line.set(color="white", linewidth=0.5, alpha=0.35, linestyle=":")
    return view


def _three_plane_frame(fig: Figure, geo: Geometry, title: str | None, annotate: bool) -> None:
    """Title, geometry note and margins of a :func:`three_plane` figure."""
    top = 0.86 if title else 0.9
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.geometry_note = None  # type: ignore[attr-defined]
    if annotate and geo.note:
        fig.geometry_note = fig.text(  # type: ignore[attr-defined]
            0.5, 0.005, geo.note, ha="center", va="bottom", fontsize="x-small", color="#8a6d00")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.07 if annotate and geo.note else 0.02,
                        top=top, wspace=0.05)


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
    affine: Any = None,
    fig: Figure | None = None,
    style: SliceStyle | None = None,
    **legacy: Any,
) -> Figure:
    """Axial, coronal and sagittal slices of a volume through one point.

    Parameters
    ----------
    image : array_like, shape (D, H, W) or (C, D, H, W)
        The volume on its stored grid (channel ``style.channel`` shown).
    center : (int, int, int), optional
        Stored voxel the planes pass through; default the centre of the largest reference
        lesion, else of the largest predicted lesion, else the volume centre.
    ref, pred, error, heatmap, alpha
        As in :func:`show_slice`; masks and heatmap have the volume's shape. The window and the
        heatmap's colour scale are shared by the three planes.
    spacing : (float, float, float), optional
        Voxel size in mm per stored axis (default: from ``affine``, else 1); the panels keep
        their physical aspect ratio.
    affine : array_like (4, 4), optional
        Voxel-to-world affine. With it each panel shows the anatomically named plane in the
        ``convention`` (see :class:`Geometry`), with orientation letters on every edge; without
        it axis 0 is taken as the axial slice index and the figure says "voxel axes,
        orientation unknown". Display only: nothing is resampled.
    fig : matplotlib.figure.Figure, optional
        Draw into this figure (default a new one sized to the planes).
    style : SliceStyle, optional
        As in :func:`show_slice`, plus ``title``, ``channel``, ``crosshair`` and ``panel_size``.
    **legacy
        Those style fields as keywords: accepted for one release with a ``FutureWarning``
        naming ``style=SliceStyle(...)``; any other keyword is a ``TypeError``.

    Returns
    -------
    matplotlib.figure.Figure
        With three axes; ``fig.slice_views`` holds the :class:`SliceView` of each plane,
        ``fig.geometry`` the :class:`Geometry`, ``fig.planes`` the plane names.
    """
    st = apply_legacy("three_plane", SliceStyle, style, legacy, param="style")
    vol, r, p, h = _three_plane_inputs(image, ref, pred, heatmap, st.channel)
    shape = vol.shape
    geo = Geometry(shape, affine, spacing, convention=st.convention)
    c = _three_plane_centre(center, r, p, shape)
    lo, hi = _window(vol, st.vmin, st.vmax)
    hmax = st.hmax
    if h is not None and hmax is None:
        hmax = float(np.nanmax(np.abs(h))) or None
    shared = replace(st, vmin=lo, vmax=hi, hmax=hmax)  # one window and heat scale for all
    fig, axes = _three_plane_axes(geo, st.panel_size, fig)
    views = []
    for ax, plane in zip(axes, _PLANES):
        views.append(_plane_panel(ax, geo, plane, c, (vol, r, p, h), error=error, alpha=alpha,
                                  style=shared))
    _three_plane_frame(fig, geo, st.title, st.annotate)
    fig.slice_views = views  # type: ignore[attr-defined]
    fig.center = c  # type: ignore[attr-defined]
    fig.geometry = geo  # type: ignore[attr-defined]
    fig.planes = _PLANES  # type: ignore[attr-defined]
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
