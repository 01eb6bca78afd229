"""Widget state without widgets: slice positions, window/level, layer toggles, the cache.

Kept free of ipywidgets so the logic is testable on its own and the widgets stay thin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PLANES_2D", "PLANES_3D", "ExplanationCache", "ViewState", "plane_slice",
           "plane_spacing", "window_presets"]

#: (plane name, the axis a slider moves) for (D, H, W) volumes.
PLANES_3D: tuple[tuple[str, int], ...] = (("axial", 0), ("coronal", 1), ("sagittal", 2))
#: The single view of a 2D image (no slider axis).
PLANES_2D: tuple[tuple[str, int], ...] = (("image", -1),)

TOGGLES = ("reference", "prediction", "error", "heatmap", "crosshair", "probability", "lesion",
           "disagreement")

#: CT window presets (level, width) in Hounsfield units, as radiology viewers name them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "CT brain (L40 W80)": (40.0, 80.0),
    "CT soft tissue (L40 W400)": (40.0, 400.0),
    "CT lung (L-600 W1500)": (-600.0, 1500.0),
    "CT bone (L400 W1800)": (400.0, 1800.0),
}


def window_presets(image: np.ndarray) -> dict[str, tuple[float, float]]:
    """Named intensity windows ``name -> (vmin, vmax)`` for one channel.

    ``auto`` (0.5-99.5 percentiles), ``full range`` (min-max) and ``1-99 %``; the CT presets are
    offered when the values look like Hounsfield units (minimum at or below -500).
    """
    a = np.asarray(image, dtype=np.float32)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return {"auto (0.5-99.5 %)": (0.0, 1.0)}
    lo, hi = float(finite.min()), float(finite.max())
    out = {}
    for name, (p0, p1) in (("auto (0.5-99.5 %)", (0.5, 99.5)), ("1-99 %", (1.0, 99.0))):
        a0, a1 = (float(v) for v in np.percentile(finite, (p0, p1)))
        out[name] = (a0, a1 if a1 > a0 else a0 + 1.0)
    out["full range"] = (lo, hi if hi > lo else lo + 1.0)
    if lo <= -500:
        out.update({n: (lv - w / 2, lv + w / 2) for n, (lv, w) in CT_PRESETS.items()})
    return out


def plane_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D plane of a spatial array (``axis`` -1 for a 2D array: the array itself).

    A leading channel axis is not allowed here; pass one channel.
    """
    if axis == -1:
        if volume.ndim != 2:
            raise ValueError(f"volume: expected a 2D array for axis -1, got shape {volume.shape}")
        return volume
    if volume.ndim != 3:
        raise ValueError(f"volume: expected a 3D (D, H, W) array, got shape {volume.shape}")
    if not 0 <= axis < 3:
        raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
    n = volume.shape[axis]
    if not 0 <= index < n:
        raise ValueError(f"index: expected 0..{n - 1} along axis {axis}, got {index!r}")
    return np.take(volume, index, axis=axis)


def plane_spacing(spacing: Sequence[float], axis: int) -> tuple[float, float]:
    """Pixel spacing (rows, columns) of the plane that cuts ``axis``."""
    if axis == -1:
        return float(spacing[0]), float(spacing[1])
    kept = [float(s) for i, s in enumerate(spacing) if i != axis]
    return kept[0], kept[1]


@dataclass
class ViewState:
    """Where the viewer looks and what it shows.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape, ``(H, W)`` or ``(D, H, W)``.
    vmin, vmax : float
        Intensity window limits.
    """

    shape: tuple[int, ...]
    vmin: float = 0.0
    vmax: float = 1.0
    center: list[int] = field(default_factory=list)
    toggles: dict[str, bool] = field(default_factory=dict)
    alpha: float = 0.5
    heat_alpha: float = 0.6
    prob_alpha: float = 0.5
    zoom: float = 1.0
    channel: int = 0
    geometry: Any = None
    readers: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ValueError(f"shape: expected a 2D or 3D spatial shape, got {self.shape}")
        if not self.center:
            self.center = [s // 2 for s in self.shape]
        elif len(self.center) != len(self.shape):
            raise ValueError(f"center: expected {len(self.shape)} indices, got {self.center}")
        defaults = dict.fromkeys(TOGGLES, True)
        # Error map and crosshair start off: with the crosshair on, a slice change redraws all
        # three planes instead of one (see benchmarks/bench_widgets.py).
        defaults["error"] = defaults["crosshair"] = defaults["probability"] = False
        defaults.update(self.toggles)
        unknown = set(defaults) - set(TOGGLES)
        if unknown:
            raise ValueError(f"toggles: expected names from {TOGGLES}, got {sorted(unknown)}")
        self.toggles = defaults
        self.set_window(self.vmin, self.vmax)
        if self.geometry is None:
            from medseg_xai.viz import Geometry

            self.geometry = Geometry(self.shape)
        elif tuple(self.geometry.shape) != self.shape:
            raise ValueError(
                f"geometry: expected one for shape {self.shape}, got {tuple(self.geometry.shape)}"
            )

    @property
    def planes(self) -> tuple[tuple[str, int], ...]:
        """``(plane name, stored axis its slider moves)``; axis -1 for a 2D image."""
        geo = self.geometry
        return tuple((name, geo.cut_axis(name)) for name in geo.planes)

    def set_opacity(self, layer: str, value: float) -> None:
        """Opacity of ``"error"`` (error map and outlines), ``"heatmap"`` or ``"probability"``."""
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"opacity: expected a value in [0, 1], got {value!r}")
        attr = {"error": "alpha", "heatmap": "heat_alpha", "probability": "prob_alpha"}.get(layer)
        if attr is None:
            raise ValueError(f"layer: expected 'error', 'heatmap' or 'probability', got {layer!r}")
        setattr(self, attr, v)

    def set_zoom(self, zoom: float) -> None:
        """Magnification around the crosshair (1 = whole plane)."""
        z = float(zoom)
        if not (np.isfinite(z) and 1.0 <= z <= 64.0):
            raise ValueError(f"zoom: expected a factor in [1, 64], got {zoom!r}")
        self.zoom = z

    def step(self, axis: int, delta: int) -> bool:
        """Move the slice along ``axis`` by ``delta`` (mouse wheel), clipped to the volume."""
        if axis < 0:
            return False
        return self.set_slice(axis, int(np.clip(self.center[axis] + int(delta), 0,
                                                self.shape[axis] - 1)))

    def set_slice(self, axis: int, index: int) -> bool:
        """Move the slice along ``axis``; returns whether it changed."""
        if len(self.shape) == 2:
            raise ValueError("axis: a 2D image has no slice axis")
        if not 0 <= axis < 3:
            raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
        index = int(index)
        if not 0 <= index < self.shape[axis]:
            raise ValueError(
                f"index: expected 0..{self.shape[axis] - 1} along axis {axis}, got {index}"
            )
        changed = self.center[axis] != index
        self.center[axis] = index
        return changed

    def centre_on(self, point: Sequence[float]) -> list[int]:
        """Put every plane through ``point`` (voxel coordinates, rounded and clipped)."""
        if len(point) != len(self.shape):
            raise ValueError(f"point: expected {len(self.shape)} coordinates, got {tuple(point)}")
        self.center = [int(np.clip(round(float(p)), 0, s - 1)) for p, s in zip(point, self.shape)]
        return list(self.center)

    def set_window(self, vmin: float, vmax: float) -> None:
        if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= vmin:
            raise ValueError(f"window: expected finite vmin < vmax, got {vmin!r}, {vmax!r}")
        self.vmin, self.vmax = float(vmin), float(vmax)

    def set_level_width(self, level: float, width: float) -> None:
        """Window/level form: ``vmin = level - width/2``, ``vmax = level + width/2``."""
        if width <= 0:
            raise ValueError(f"width: expected a positive window width, got {width!r}")
        self.set_window(level - width / 2.0, level + width / 2.0)

    @property
    def level(self) -> float:
        return (self.vmin + self.vmax) / 2.0

    @property
    def width(self) -> float:
        return self.vmax - self.vmin

    def toggle(self, name: str, on: bool) -> bool:
        """Switch a layer; returns whether it changed."""
        if name not in self.toggles:
            raise ValueError(f"toggle: expected one of {TOGGLES}, got {name!r}")
        changed = self.toggles[name] != bool(on)
        self.toggles[name] = bool(on)
        return changed

    def show_reader(self, name: str, on: bool) -> bool:
        """Outline one reader's mask or not; returns whether it changed."""
        if name not in self.readers:
            raise ValueError(f"reader: expected one of {sorted(self.readers)}, got {name!r}")
        changed = self.readers[name] != bool(on)
        self.readers[name] = bool(on)
        return changed

    def planes_affected(self, axis: int) -> list[int]:
        """Plane positions to redraw when the slice along ``axis`` moves.

        The moved plane always; the other planes only if they draw the crosshair, which marks
        the moved slice.
        """
        pos = [i for i, (_, a) in enumerate(self.planes) if a == axis]
        # The crosshair marks the moved slice, and a zoomed view is centred on the crosshair.
        if self.toggles["crosshair"] or self.zoom > 1.0:
            pos += [i for i, (_, a) in enumerate(self.planes) if a != axis]
        return pos


class ExplanationCache:
    """Explanations keyed by ``(method, target, layer)``, least recently used dropped first.

    Parameters
    ----------
    maxsize : int
        Entries kept (each holds an attribution the size of the image).
    """

    def __init__(self, maxsize: int = 16) -> None:
        if int(maxsize) < 1:
            raise ValueError(f"maxsize: expected a positive number of entries, got {maxsize!r}")
        self.maxsize = int(maxsize)
        self._items: OrderedDict[tuple[Hashable, ...], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(method: str, target: Hashable, layer: str | None) -> tuple[Hashable, ...]:
        return (str(method), target, None if layer in (None, "") else str(layer))

    def get(self, method: str, target: Hashable, layer: str | None) -> Any | None:
        k = self.key(method, target, layer)
        if k in self._items:
            self._items.move_to_end(k)
            self.hits += 1
            return self._items[k]
        self.misses += 1
        return None

    def put(self, method: str, target: Hashable, layer: str | None, value: Any) -> None:
        k = self.key(method, target, layer)
        self._items[k] = value
        self._items.move_to_end(k)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def __contains__(self, key: tuple[str, Hashable, str | None]) -> bool:
        return self.key(*key) in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[tuple[Hashable, ...]]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()
