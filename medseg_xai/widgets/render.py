"""Persistent matplotlib figures for the explorer's planes, rendered to PNG bytes.

Each plane owns one figure with a single ``uint8`` RGB image artist and two crosshair lines
(the slice number is on the plane's slider). The layers (grey image, error-map fill,
attribution heatmap, outlines) are blended in numpy at the slice's own resolution (:func:`compose_rgb`) and swapped into the artist, so a
redraw resamples one small ``uint8`` image instead of four float RGBA layers. This is what keeps
slice changes under the responsiveness targets (``benchmarks/bench_widgets.py`` measures it).
Colours are those of :mod:`medseg_xai.viz` so widgets and reports read the same.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from medseg_xai.viz import ERROR_COLOURS, PRED_COLOUR, REF_COLOUR, outline
from medseg_xai.widgets.state import ViewState, plane_slice, plane_spacing

__all__ = ["PlaneRenderer", "compose_rgb"]

_CROSS = {"color": "#FFFFFF", "linewidth": 0.6, "alpha": 0.6}
_ERROR_RGB = np.zeros((4, 3), np.float32)
for _code, _colour in ERROR_COLOURS.items():
    _ERROR_RGB[_code] = to_rgb(_colour)
_LUT_SIZE = 256
_LUTS = {name: colormaps[name](np.linspace(0, 1, _LUT_SIZE))[:, :3].astype(np.float32)
         for name in ("inferno", "RdBu_r")}


def compose_rgb(
    image2d: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    ref: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    error: bool = False,
    heatmap: np.ndarray | None = None,
    hmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend one slice and its overlays into a ``uint8`` RGB picture of the slice's shape.

    Layers, bottom to top: the grey image windowed to ``vmin..vmax``; the error map fill
    (``viz.ERROR_COLOURS``: true positive, false negative, false positive) at opacity ``alpha``
    when ``error``; the heatmap, whose opacity grows with |value| up to ``alpha`` (a diverging
    map for signed attributions, ``inferno`` otherwise, scaled by ``hmax``); and the outlines of
    ``ref`` (``viz.REF_COLOUR``) and ``pred`` (``viz.PRED_COLOUR``), unless ``error`` is on.
    """
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
    if heatmap is not None:
        h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = float(hmax) if hmax else float(np.abs(h).max())
        if scale > 0:
            # Any negative value -> diverging map (blue = against): negative evidence, e.g. of a
            # missed lesion under signed Grad-CAM, must never look like warm positive attention.
            signed = bool((h < 0).any())
            if signed:
                norm = np.clip(h / scale, -1.0, 1.0)
                idx = ((norm + 1) / 2 * (_LUT_SIZE - 1)).astype(np.intp)
                colours, weight = _LUTS["RdBu_r"][idx], alpha * np.abs(norm)
            else:
                norm = np.clip(np.abs(h) / scale, 0.0, 1.0)
                idx = (norm * (_LUT_SIZE - 1)).astype(np.intp)
                colours, weight = _LUTS["inferno"][idx], alpha * norm
            w = weight[..., None]
            rgb = (1 - w) * rgb + w * colours
    if not error:
        if ref is not None:
            rgb[outline(ref)] = to_rgb(REF_COLOUR)
        if pred is not None:
            rgb[outline(pred)] = to_rgb(PRED_COLOUR)
    return (rgb * 255 + 0.5).astype(np.uint8)


class _Plane:
    def __init__(self, name: str, axis: int, shape2d: tuple[int, int],
                 spacing: Sequence[float], px: int) -> None:
        self.name, self.axis = name, axis
        h, w = shape2d
        sr, sc = plane_spacing(spacing, axis)
        # Figure aspect follows the physical plane so pixels are not stretched twice.
        height_mm, width_mm = h * sr, w * sc
        scale = px / max(height_mm, width_mm)
        self.fig = Figure(figsize=(width_mm * scale / 100, height_mm * scale / 100), dpi=100)
        self.canvas = FigureCanvasAgg(self.fig)
        ax = self.fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        self.artist = ax.imshow(np.zeros((h, w, 3), np.uint8), interpolation="nearest",
                                aspect=sr / sc, origin="upper")
        self.hline = ax.axhline(0, **_CROSS)
        self.vline = ax.axvline(0, **_CROSS)


class PlaneRenderer:
    """Draws the image, overlays and heatmap of every plane of a :class:`ViewState`.

    Parameters
    ----------
    image : numpy.ndarray
        One channel, spatial shape ``(H, W)`` or ``(D, H, W)``.
    ref, pred : numpy.ndarray, optional
        Masks of the image's shape.
    spacing : sequence of float
    state : ViewState
    px : int
        Longest side of each plane's picture in pixels.
    """

    def __init__(self, image: np.ndarray, ref: np.ndarray | None, pred: np.ndarray | None,
                 spacing: Sequence[float], state: ViewState, px: int = 320) -> None:
        self.image = np.asarray(image, dtype=np.float32)
        if self.image.shape != state.shape:
            raise ValueError(
                f"image: expected the state's spatial shape {state.shape}, got {self.image.shape}"
            )
        for name, m in (("ref", ref), ("pred", pred)):
            if m is not None and np.shape(m) != state.shape:
                raise ValueError(f"{name}: expected shape {state.shape}, got {np.shape(m)}")
        self.ref = None if ref is None else np.asarray(ref) != 0
        self.pred = None if pred is None else np.asarray(pred) != 0
        self.state = state
        self.spacing = tuple(spacing)
        self.heatmap: np.ndarray | None = None
        self.hmax: float | None = None
        self.planes = [
            _Plane(name, axis, self._slice(self.image, axis).shape, self.spacing, px)
            for name, axis in state.planes
        ]

    def _slice(self, a: np.ndarray | None, axis: int) -> np.ndarray | None:
        if a is None:
            return None
        return plane_slice(a, axis, self.state.center[axis] if axis >= 0 else 0)

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
        self.heatmap = heatmap

    def compose(self, position: int) -> np.ndarray:
        """The blended ``uint8`` RGB slice of the plane at ``position``."""
        st = self.state
        pl = self.planes[position]
        error = bool(st.toggles["error"] and self.ref is not None and self.pred is not None)
        if error:  # the error map needs both masks, and replaces their outlines
            ref, pred = self._slice(self.ref, pl.axis), self._slice(self.pred, pl.axis)
        else:
            ref = self._slice(self.ref, pl.axis) if st.toggles["reference"] else None
            pred = self._slice(self.pred, pl.axis) if st.toggles["prediction"] else None
        heat = self._slice(self.heatmap, pl.axis) if st.toggles["heatmap"] else None
        return compose_rgb(self._slice(self.image, pl.axis), st.vmin, st.vmax, ref=ref, pred=pred,
                           error=error, heatmap=heat, hmax=self.hmax, alpha=st.alpha)

    def draw(self, positions: Sequence[int] | None = None) -> dict[int, Figure]:
        """Update the artists of the planes at ``positions`` (default all) from the state."""
        todo = range(len(self.planes)) if positions is None else positions
        out = {}
        for i in todo:
            pl = self.planes[i]
            pl.artist.set_data(self.compose(i))
            self._crosshair(pl)
            out[i] = pl.fig
        return out

    def _crosshair(self, pl: _Plane) -> None:
        st = self.state
        on = st.toggles["crosshair"] and pl.axis >= 0
        pl.hline.set_visible(on)
        pl.vline.set_visible(on)
        if pl.axis >= 0:
            rows_axis, cols_axis = [a for a in range(3) if a != pl.axis]
            pl.hline.set_ydata([st.center[rows_axis]] * 2)
            pl.vline.set_xdata([st.center[cols_axis]] * 2)

    @staticmethod
    def png(fig: Figure) -> bytes:
        """PNG bytes of a figure: Agg draw, RGB without alpha, fast zlib level.

        These pictures live for one redraw, so encoding speed matters more than size.
        """
        canvas = fig.canvas
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(buf, format="png",
                                                                 compress_level=1)
        return buf.getvalue()

    def render(self, positions: Sequence[int] | None = None) -> dict[int, bytes]:
        """Draw and encode the planes at ``positions``: position -> PNG bytes."""
        return {i: self.png(fig) for i, fig in self.draw(positions).items()}
