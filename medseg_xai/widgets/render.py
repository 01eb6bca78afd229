"""Persistent matplotlib figures for the explorer's planes, rendered to PNG bytes.

Each plane owns one figure: the picture (a single ``uint8`` RGB image artist), two crosshair
lines, orientation letters and a mm scale bar from the image's :class:`~medseg_xai.viz.Geometry`,
and a legend strip underneath (the colours of the layers shown, with colour bars for the
heatmap and the probability). The layers (grey image, error-map fill, probability, attribution
heatmap, outlines, selected lesion) are blended in numpy at the slice's own resolution
(:func:`compose_rgb`) and swapped into the artist, so a redraw resamples one small ``uint8``
image instead of several float RGBA layers. This is what keeps slice changes under the
responsiveness targets (``benchmarks/bench_widgets.py`` measures it). Colours are those of
:mod:`medseg_xai.viz` so widgets and reports read the same.

Planes are cut from the stored grid by the geometry (display only: transposes and flips, never
a resampling), so what the renderer shows under a pixel is the stored voxel
:meth:`PlaneRenderer.voxel_at` returns.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medseg_xai._legacy import apply_legacy
from medseg_xai.viz import (
    ERROR_COLOURS,
    ERROR_LABELS,
    PRED_COLOUR,
    REF_COLOUR,
    Geometry,
    add_scale_bar,
    annotate_plane,
    outline,
)
from medseg_xai.widgets.state import ViewState

__all__ = ["DISAGREE_COLOUR", "HIGHLIGHT_COLOUR", "PROB_CMAP", "READER_OUTLINES", "BlendStyle",
           "PlaneRenderer", "compose_rgb"]

_CROSS = {"color": "#FFFFFF", "linewidth": 0.6, "alpha": 0.6}
#: Outline of the selected lesion: white, apart from every other layer's hue.
HIGHLIGHT_COLOUR = "#FFFFFF"
#: Probability overlay colour map (perceptually uniform and colour-blind safe, unlike the warm
#: heatmap and the error colours).
PROB_CMAP = "viridis"
#: Reader outlines: Okabe-Ito hues (colour-blind safe) other than the reference (green) and
#: prediction (orange) outlines, the white selected lesion and the disagreement stipple.
READER_OUTLINES = ("#CC79A7", "#0072B2", "#D55E00", "#F0E442")
#: Where readers differ: sky blue on every other voxel (a stipple, so it never reads as part of
#: the smooth heatmap or probability fills under it).
DISAGREE_COLOUR = "#56B4E9"
_ERROR_RGB = np.zeros((4, 3), np.float32)
for _code, _colour in ERROR_COLOURS.items():
    _ERROR_RGB[_code] = to_rgb(_colour)
_LUT_SIZE = 256
_LUTS = {name: colormaps[name](np.linspace(0, 1, _LUT_SIZE))[:, :3].astype(np.float32)
         for name in ("inferno", "RdBu_r", PROB_CMAP)}
_STRIP_PX = 30  # legend strip height


def _blend(rgb: np.ndarray, values: np.ndarray, lut: str, weight: np.ndarray) -> np.ndarray:
    idx = (np.clip(values, 0.0, 1.0) * (_LUT_SIZE - 1)).astype(np.intp)
    w = weight[..., None]
    return (1 - w) * rgb + w * _LUTS[lut][idx]


@dataclass(frozen=True)
class BlendStyle:
    """How :func:`compose_rgb` blends the layers of a slice (not which layers there are).

    Parameters
    ----------
    error : bool
        Fill the error map (true positive, false negative, false positive) instead of drawing
        the reference and prediction outlines; needs both masks.
    alpha : float
        Opacity of the error map, and the heatmap's largest opacity unless ``heat_alpha``.
    heat_alpha : float, optional
        Largest opacity of the heatmap (default ``alpha``).
    prob_alpha : float
        Opacity of the probability layer at p = 1 (it scales with p).
    hmax : float, optional
        |value| at which the heatmap's colour saturates (default: the slice's largest).
    """

    error: bool = False
    alpha: float = 0.5
    heat_alpha: float | None = None
    prob_alpha: float = 0.5
    hmax: float | None = None


def compose_rgb(
    image2d: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    ref: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    highlight: np.ndarray | None = None,
    readers: Sequence[tuple[np.ndarray, str]] = (),
    disagreement: np.ndarray | None = None,
    style: BlendStyle | None = None,
    **legacy: Any,
) -> np.ndarray:
    """Blend one slice and its overlays into a ``uint8`` RGB picture of the slice's shape.

    Layers, bottom to top: the grey image windowed to ``vmin..vmax``; the error map fill
    (``viz.ERROR_COLOURS``: true positive, false negative, false positive) at opacity
    ``style.alpha`` when ``style.error``; the probability (:data:`PROB_CMAP`, opacity
    ``style.prob_alpha * p``); the heatmap, whose opacity grows with |value| up to
    ``style.heat_alpha`` (default ``style.alpha``; a diverging map for signed attributions,
    ``inferno`` otherwise, scaled by ``style.hmax``); the outlines of ``ref``
    (``viz.REF_COLOUR``) and ``pred`` (``viz.PRED_COLOUR``), unless the error map is on; the
    ``disagreement`` voxels as a stipple (:data:`DISAGREE_COLOUR` on every other pixel); each
    ``(mask, colour)`` of ``readers`` as an outline; and the outline of the selected lesion
    ``highlight`` (:data:`HIGHLIGHT_COLOUR`). ``style`` is a :class:`BlendStyle` (default its
    defaults); its fields as keywords (``error=True``, ``alpha=0.3``...) are accepted for one
    release with a ``FutureWarning``, any other keyword is a ``TypeError``.
    """
    st = apply_legacy("compose_rgb", BlendStyle, style, legacy, param="style")
    error, alpha, hmax = st.error, st.alpha, st.hmax
    img = np.asarray(image2d, dtype=np.float32)
    if vmax <= vmin:
        raise ValueError(f"window: expected vmin < vmax, got {vmin!r}, {vmax!r}")
    grey = np.clip((img - vmin) / (vmax - vmin), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if error:
        if ref is None or pred is None:
            raise ValueError("error=True: expected both ref and pred masks, got a missing one")
        codes = (ref & pred) * 1 + (ref & ~pred) * 2 + (pred & ~ref) * 3
        hit = codes > 0
        rgb[hit] = (1 - alpha) * rgb[hit] + alpha * _ERROR_RGB[codes[hit]]
    if probability is not None:
        p = np.clip(np.nan_to_num(np.asarray(probability, dtype=np.float32)), 0.0, 1.0)
        rgb = _blend(rgb, p, PROB_CMAP, st.prob_alpha * p)
    if heatmap is not None:
        ha = alpha if st.heat_alpha is None else st.heat_alpha
        h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = float(hmax) if hmax else float(np.abs(h).max())
        if scale > 0:
            # Any negative value -> diverging map (blue = against): negative evidence, e.g. of a
            # missed lesion under signed Grad-CAM, must never look like warm positive attention.
            if bool((h < 0).any()):
                norm = np.clip(h / scale, -1.0, 1.0)
                rgb = _blend(rgb, (norm + 1) / 2, "RdBu_r", ha * np.abs(norm))
            else:
                norm = np.clip(np.abs(h) / scale, 0.0, 1.0)
                rgb = _blend(rgb, norm, "inferno", ha * norm)
    if not error:
        if ref is not None:
            rgb[outline(ref)] = to_rgb(REF_COLOUR)
        if pred is not None:
            rgb[outline(pred)] = to_rgb(PRED_COLOUR)
    if disagreement is not None:
        rows, cols = np.indices(disagreement.shape, sparse=True)
        rgb[np.asarray(disagreement, bool) & ((rows + cols) % 2 == 0)] = to_rgb(DISAGREE_COLOUR)
    for mask, colour in readers:
        rgb[outline(mask)] = to_rgb(colour)
    if highlight is not None:
        rgb[outline(highlight)] = to_rgb(HIGHLIGHT_COLOUR)
    return (rgb * 255 + 0.5).astype(np.uint8)


class _Plane:
    def __init__(self, name: str, axis: int, geometry: Geometry, px: int, legend: bool) -> None:
        self.name, self.axis, self.geometry = name, axis, geometry
        h, w = geometry.display_shape(name)
        sr, sc = geometry.pixel_spacing(name)
        self.shape = (h, w)
        # Figure aspect follows the physical plane so pixels are not stretched twice.
        height_mm, width_mm = h * sr, w * sc
        scale = px / max(height_mm, width_mm)
        img_w, img_h = max(width_mm * scale, 120.0), height_mm * scale
        strip = _STRIP_PX if legend else 0
        self.fig = Figure(figsize=(img_w / 100, (img_h + strip) / 100), dpi=100,
                          facecolor="black")
        self.canvas = FigureCanvasAgg(self.fig)
        frac = strip / (img_h + strip)
        ax = self.fig.add_axes((0, frac, 1, 1 - frac))
        ax.set_axis_off()
        ax.set_facecolor("black")
        self.ax = ax
        self.artist = ax.imshow(np.zeros((h, w, 3), np.uint8), interpolation="nearest",
                                aspect=sr / sc, origin="upper")
        self.hline = ax.axhline(0, **_CROSS)
        self.vline = ax.axvline(0, **_CROSS)
        self.annotations = annotate_plane(ax, geometry, name)
        self.title = ax.text(0.02, 0.98, "", transform=ax.transAxes, ha="left", va="top",
                             color="white", fontsize=7)
        self.legend_ax = self.fig.add_axes((0, 0, 1, frac)) if legend else None
        if self.legend_ax is not None:
            self.legend_ax.set_axis_off()
            self.legend_ax.set_xlim(0, 1)
            self.legend_ax.set_ylim(0, 1)
        self.legend_key: tuple | None = None
        self.legend_items: list[str] = []
        self.zoom_key: tuple | None = None
        self.overlay: tuple | None = None  # the static layer, drawn once: (pixels, RGB, alpha)
        self.overlay_key: tuple | None = None

    @property
    def dynamic(self) -> list[Any]:
        """Artists that change on every redraw."""
        return [self.artist, self.hline, self.vline, self.title]

    @property
    def static(self) -> list[Any]:
        """Artists that change only with zoom or legend: letters, scale bar, note, legend."""
        arts = [t for t in self.annotations.get("letters", {}).values()]
        arts += [a for a in (self.annotations.get("scale_bar"), self.annotations.get("note"))
                 if a is not None]
        if self.legend_ax is not None:
            arts.append(self.legend_ax)
        return arts


class PlaneRenderer:
    """Draws the image, overlays and heatmap of every plane of a :class:`ViewState`.

    Parameters
    ----------
    image : numpy.ndarray
        One channel on the stored grid, spatial shape ``(H, W)`` or ``(D, H, W)``.
    ref, pred : numpy.ndarray, optional
        Masks of the image's shape.
    spacing : sequence of float
        Voxel size (used when the state's geometry has none).
    state : ViewState
        Slices, window, toggles, opacities, zoom and the :class:`~medseg_xai.viz.Geometry`.
    px : int
        Longest side of each plane's picture in pixels.
    probability : numpy.ndarray, optional
        Foreground probability (image shape), the ``probability`` layer.
    legend : bool
        Draw the legend strip with colour bars under each plane.
    """

    def __init__(self, image: np.ndarray, ref: np.ndarray | None, pred: np.ndarray | None,
                 spacing: Sequence[float], state: ViewState, px: int = 320, *,
                 probability: np.ndarray | None = None, legend: bool = True) -> None:
        self.image = np.asarray(image, dtype=np.float32)
        if self.image.shape != state.shape:
            raise ValueError(
                f"image: expected the state's spatial shape {state.shape}, got {self.image.shape}"
            )
        for name, m in (("ref", ref), ("pred", pred), ("probability", probability)):
            if m is not None and np.shape(m) != state.shape:
                raise ValueError(f"{name}: expected shape {state.shape}, got {np.shape(m)}")
        self.ref = None if ref is None else np.asarray(ref) != 0
        self.pred = None if pred is None else np.asarray(pred) != 0
        self.probability = None if probability is None else np.asarray(probability, np.float32)
        self.state = state
        geo = state.geometry
        if not geo.known and not geo.spacing_known and spacing is not None:
            geo = Geometry(state.shape, None, spacing)
            state.geometry = geo
        self.geometry = geo
        self.spacing = tuple(geo.spacing)
        self.heatmap: np.ndarray | None = None
        self.hmax: float | None = None
        self.heat_signed = False
        self.highlight: np.ndarray | None = None
        self.readers: dict[str, np.ndarray] = {}
        self.reader_colours: dict[str, str] = {}
        self.disagreement: np.ndarray | None = None
        self.planes = [_Plane(name, axis, geo, px, legend) for name, axis in state.planes]

    # ------------------------------------------------------------------ data
    def _slice(self, a: np.ndarray | None, position: int) -> np.ndarray | None:
        if a is None:
            return None
        pl = self.planes[position]
        index = self.state.center[pl.axis] if pl.axis >= 0 else 0
        return self.geometry.slice(a, pl.name, index)

    def set_image(self, image: np.ndarray) -> None:
        """Swap the displayed channel (same spatial shape)."""
        img = np.asarray(image, dtype=np.float32)
        if img.shape != self.state.shape:
            raise ValueError(f"image: expected shape {self.state.shape}, got {img.shape}")
        self.image = img

    def set_heatmap(self, heatmap: np.ndarray | None) -> None:
        """Attribution map (image shape) shown on every plane, one colour scale for all."""
        if heatmap is not None:
            heatmap = np.asarray(heatmap, dtype=np.float32)
            if heatmap.shape != self.state.shape:
                raise ValueError(
                    f"heatmap: expected the image's spatial shape {self.state.shape}, "
                    f"got {heatmap.shape}"
                )
            self.hmax = float(np.abs(heatmap).max()) or None
            self.heat_signed = bool((heatmap < 0).any())
        self.heatmap = heatmap

    def set_highlight(self, mask: np.ndarray | None) -> None:
        """The selected lesion (image shape), outlined in :data:`HIGHLIGHT_COLOUR`."""
        if mask is not None:
            mask = np.asarray(mask) != 0
            if mask.shape != self.state.shape:
                raise ValueError(f"highlight: expected shape {self.state.shape}, got {mask.shape}")
        self.highlight = mask

    def set_readers(self, readers: Any) -> None:
        """Several readers' masks (reader -> image-shape mask), outlined one colour each
        (:data:`READER_OUTLINES`, in order) where :attr:`ViewState.readers` shows them; with
        two or more, the voxels some but not all marked are the ``disagreement`` layer
        (computed once here, so a redraw only slices it)."""
        from medseg_xai.widgets.readers import reader_votes

        masks = {str(k): np.asarray(v) != 0 for k, v in dict(readers or {}).items()}
        for name, m in masks.items():
            if m.shape != self.state.shape:
                raise ValueError(f"readers: reader {name!r}: expected shape {self.state.shape}, "
                                 f"got {m.shape}")
        self.readers = masks
        self.reader_colours = {k: READER_OUTLINES[i % len(READER_OUTLINES)]
                               for i, k in enumerate(masks)}
        self.disagreement = reader_votes(masks)[1] if len(masks) > 1 else None
        self.state.readers = {k: self.state.readers.get(k, True) for k in masks}

    def _disagreement_on(self) -> bool:
        return bool(self.state.toggles["disagreement"] and self.disagreement is not None)

    def compose(self, position: int) -> np.ndarray:
        """The blended ``uint8`` RGB slice of the plane at ``position``."""
        st = self.state
        error = self._error_on()
        if error:  # the error map needs both masks, and replaces their outlines
            ref, pred = self._slice(self.ref, position), self._slice(self.pred, position)
        else:
            ref = self._slice(self.ref, position) if st.toggles["reference"] else None
            pred = self._slice(self.pred, position) if st.toggles["prediction"] else None
        heat = self._slice(self.heatmap, position) if st.toggles["heatmap"] else None
        prob = self._slice(self.probability, position) if st.toggles["probability"] else None
        hl = self._slice(self.highlight, position) if st.toggles["lesion"] else None
        readers = [(self._slice(m, position), self.reader_colours[k])
                   for k, m in self.readers.items() if st.readers.get(k)]
        dis = self._slice(self.disagreement, position) if self._disagreement_on() else None
        blend = BlendStyle(error=error, alpha=st.alpha, heat_alpha=st.heat_alpha,
                           prob_alpha=st.prob_alpha, hmax=self.hmax)
        return compose_rgb(self._slice(self.image, position), st.vmin, st.vmax, ref=ref,
                           pred=pred, heatmap=heat, probability=prob, highlight=hl,
                           readers=readers, disagreement=dis, style=blend)

    def _error_on(self) -> bool:
        return bool(self.state.toggles["error"] and self.ref is not None and self.pred is not None)

    # ------------------------------------------------------------------ drawing
    def draw(self, positions: Sequence[int] | None = None) -> dict[int, Figure]:
        """Update the artists of the planes at ``positions`` (default all) from the state."""
        todo = range(len(self.planes)) if positions is None else positions
        out = {}
        for i in todo:
            pl = self.planes[i]
            pl.artist.set_data(self.compose(i))
            self._crosshair(pl)
            self._zoom(pl)
            self._legend(pl)
            index = self.state.center[pl.axis] if pl.axis >= 0 else None
            pl.title.set_text(pl.name if index is None else
                              f"{pl.name} {index} (0-{self.state.shape[pl.axis] - 1})")
            out[i] = pl.fig
        return out

    def _crosshair(self, pl: _Plane) -> None:
        st = self.state
        on = st.toggles["crosshair"] and pl.axis >= 0
        pl.hline.set_visible(on)
        pl.vline.set_visible(on)
        if pl.axis >= 0:
            row, col = self.geometry.to_display(pl.name, st.center)
            pl.hline.set_ydata([row] * 2)
            pl.vline.set_xdata([col] * 2)

    def _zoom(self, pl: _Plane) -> None:
        """Show ``1/zoom`` of the plane around the crosshair (clamped to the plane)."""
        st = self.state
        h, w = pl.shape
        key = (st.zoom, tuple(st.center)) if st.zoom > 1 else (1.0,)
        if key == pl.zoom_key:
            return
        pl.zoom_key = key
        if st.zoom <= 1:
            x0, x1, y0, y1 = -0.5, w - 0.5, h - 0.5, -0.5
        else:
            row, col = self.geometry.to_display(pl.name, st.center) if pl.axis >= 0 \
                else (h / 2, w / 2)
            half_w, half_h = w / st.zoom / 2, h / st.zoom / 2
            cx = float(np.clip(col, half_w - 0.5, w - 0.5 - half_w))
            cy = float(np.clip(row, half_h - 0.5, h - 0.5 - half_h))
            x0, x1, y0, y1 = cx - half_w, cx + half_w, cy + half_h, cy - half_h
        pl.ax.set_xlim(x0, x1)
        pl.ax.set_ylim(y0, y1)
        bar = pl.annotations.get("scale_bar")
        if bar is not None:
            bar.remove()
        pl.annotations["scale_bar"], pl.annotations["scale_bar_mm"] = add_scale_bar(
            pl.ax, self.geometry, pl.name, visible_cols=x1 - x0)

    def legend_entries(self) -> list[tuple[str, str]]:
        """``(kind, label)`` of what the planes show now: the legend of every view."""
        st = self.state
        items: list[tuple[str, str]] = []
        if self._error_on():
            items += [("patch:" + ERROR_COLOURS[c], ERROR_LABELS[c]) for c in (1, 2, 3)]
        else:
            if st.toggles["reference"] and self.ref is not None:
                items.append(("edge:" + REF_COLOUR, "reference"))
            if st.toggles["prediction"] and self.pred is not None:
                items.append(("edge:" + PRED_COLOUR, "prediction"))
        if st.toggles["lesion"] and self.highlight is not None:
            items.append(("edge:" + HIGHLIGHT_COLOUR, "selected lesion"))
        items += [("edge:" + self.reader_colours[k], k.replace("$", r"\$"))
                  for k in self.readers if st.readers.get(k)]
        if self._disagreement_on():
            items.append(("stipple:" + DISAGREE_COLOUR, "readers differ"))
        if st.toggles["probability"] and self.probability is not None:
            items.append(("cbar:" + PROB_CMAP, "probability 0-1"))
        if st.toggles["heatmap"] and self.heatmap is not None and self.hmax:
            signed = self.heat_signed
            items.append(("cbar:" + ("RdBu_r" if signed else "inferno"),
                          f"attribution ±{self.hmax:.2g}" if signed
                          else f"attribution 0-{self.hmax:.2g}"))
        return items

    def _legend(self, pl: _Plane) -> None:
        lax = pl.legend_ax
        if lax is None:
            return
        items = self.legend_entries()
        key = tuple(items)
        if key == pl.legend_key:
            return
        pl.legend_key = key
        pl.legend_items = [label for _, label in items]
        for art in list(lax.patches) + list(lax.texts) + list(lax.images):
            art.remove()
        if not items:
            lax.text(0.02, 0.5, "no overlay", color="#BBBBBB", fontsize=6, va="center")
            return
        n = len(items)
        for j, (kind, label) in enumerate(items):
            x0 = j / n + 0.01
            style, colour = kind.split(":", 1)
            if style == "cbar":
                grad = np.linspace(0, 1, 64)[None]
                lax.imshow(grad, cmap=colour, aspect="auto", extent=(x0, x0 + 0.8 / n, 0.55, 0.9))
            elif style == "patch":
                lax.add_patch(Rectangle((x0, 0.55), 0.05, 0.35, facecolor=colour))
            elif style == "stipple":
                lax.add_patch(Rectangle((x0, 0.55), 0.05, 0.35, facecolor="none",
                                        edgecolor=colour, hatch="....", linewidth=0.5))
            else:
                lax.add_patch(Rectangle((x0, 0.55), 0.05, 0.35, facecolor="none",
                                        edgecolor=colour, linewidth=1.5))
            lax.text(x0, 0.05, label, color="white", fontsize=5.5, va="bottom", ha="left")
        lax.set_xlim(0, 1)
        lax.set_ylim(0, 1)

    # ------------------------------------------------------------------ picking
    def voxel_at(self, position: int, x_px: float, y_px: float) -> tuple[int, ...] | None:
        """Stored voxel under PNG pixel ``(x_px, y_px)`` (origin top left) of a plane, or
        None outside the picture (e.g. on the legend)."""
        pl = self.planes[position]
        height = pl.fig.get_figheight() * pl.fig.dpi
        col, row = pl.ax.transData.inverted().transform((float(x_px), height - float(y_px)))
        h, w = pl.shape
        if not (-0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5):
            return None
        return self.geometry.to_voxel(pl.name, row, col, self.state.center)

    # ------------------------------------------------------------------ output
    @staticmethod
    def png(fig: Figure) -> bytes:
        """PNG bytes of a figure: Agg draw, RGB without alpha, fast zlib level.

        These pictures live for one redraw, so encoding speed matters more than size.
        """
        canvas = fig.canvas
        canvas.draw()
        return _encode(np.asarray(canvas.buffer_rgba())[..., :3], level=1)

    def picture(self, position: int) -> np.ndarray:
        """The plane's RGB picture as drawn now (after :meth:`draw`).

        Text is the slow part of an Agg draw, so the static layer (letters, scale bar, note,
        legend) is drawn once into an RGBA overlay and blended in numpy; a redraw draws only
        the slice, the crosshair and the slice number.
        """
        pl = self.planes[position]
        canvas = pl.fig.canvas
        key = (pl.legend_key, pl.zoom_key)
        if pl.overlay is None or pl.overlay_key != key:
            for a in pl.dynamic:
                a.set_visible(False)
            face = pl.fig.patch.get_alpha()
            pl.fig.patch.set_alpha(0.0)
            canvas.draw()
            rgba = np.asarray(canvas.buffer_rgba())
            where = np.flatnonzero(rgba[..., 3].ravel())  # only these pixels are blended
            flat = rgba.reshape(-1, 4)[where].astype(np.float32) / 255.0
            pl.overlay = (where, flat[:, :3] * 255.0, flat[:, 3:4])
            pl.fig.patch.set_alpha(face)
            pl.overlay_key = key
            pl.artist.set_visible(True)
            pl.title.set_visible(True)
            self._crosshair(pl)
        static = pl.static
        for a in static:
            a.set_visible(False)
        try:
            canvas.draw()
        finally:
            for a in static:
                a.set_visible(True)
        out = np.array(np.asarray(canvas.buffer_rgba())[..., :3])
        where, colour, a = pl.overlay
        flat = out.reshape(-1, 3)
        flat[where] = (flat[where] * (1.0 - a) + colour * a + 0.5).astype(np.uint8)
        return out

    def render(self, positions: Sequence[int] | None = None) -> dict[int, bytes]:
        """Draw and encode the planes at ``positions``: position -> PNG bytes."""
        return {i: _encode(self.picture(i)) for i in self.draw(positions)}

    def displayed(self, position: int) -> dict[str, Any]:
        """What a plane shows now (for tests and exports): plane, slice, letters, legend."""
        pl = self.planes[position]
        letters = {e: t.get_text() for e, t in pl.annotations["letters"].items()}
        return {"plane": pl.name, "axis": pl.axis,
                "slice": self.state.center[pl.axis] if pl.axis >= 0 else None,
                "letters": letters, "legend": list(pl.legend_items),
                "note": self.geometry.note, "scale_bar_mm": pl.annotations.get("scale_bar_mm"),
                "rgb": np.asarray(pl.artist.get_array())}


#: zlib level of the plane pictures: 0 (stored) encodes a 320 px plane in under a millisecond,
#: where PIL's filtered PNG takes 15-25 ms; the bytes only travel to the local front end.
PNG_LEVEL = 0


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _encode(rgb: np.ndarray, level: int | None = None) -> bytes:
    """A plain 8-bit RGB PNG (filter 0 on every row, one IDAT chunk)."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, w * 3 + 1), np.uint8)
    raw[:, 1:] = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = zlib.compress(raw.tobytes(), PNG_LEVEL if level is None else level)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))
