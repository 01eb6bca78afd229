"""The lesions of one case with what the explorer shows about them: status, size, contrast."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.decide import DecisionRules, components, lesion_table
from medseg_xai.widgets.verdict import contrast_to_noise

__all__ = ["CaseLesions"]

TABLE_COLUMNS = ["lesion_id", "status", "volume_mm3", "cnr", "max_prob", "dice"]


class CaseLesions:
    """Reference lesions and predicted components of one case, with masks and contrast.

    Lesion ids follow ``metrics.lesions``: ``"ref-k"`` is component ``k`` of the reference and
    ``"pred-k"`` component ``k`` of the prediction (same labelling, same connectivity).

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, *spatial)`` or spatial only; channel ``channel`` is used for the contrast-to-noise
        ratio.
    pred, ref : numpy.ndarray
        Binary masks (spatial shape), keyword-only (the toolkit's ``(pred, ref)`` order). ``ref=None``: a case without a reference; the rows are
        the predicted components (status ``"predicted"``), nothing is called missed.
    probability : numpy.ndarray, optional
        Foreground probability (spatial shape); fills ``max_prob``.
    spacing : sequence of float, optional
    margin : int
        Width in voxels of the background ring used for the contrast-to-noise ratio.
    connectivity, overlap_threshold
        Lesion components and the covered share of a detection (without ``rules``).
    rules : DecisionRules, optional
        An audit's decision rules (connectivity, matching, thresholds): the ids and statuses are
        then the audit's.
    """

    def __init__(
        self,
        image: Any,
        *,
        pred: Any,
        ref: Any,
        probability: Any = None,
        spacing: Any = None,
        margin: int = 3,
        connectivity: int | None = None,
        overlap_threshold: float = 0.1,
        channel: int = 0,
        rules: Any = None,
    ) -> None:
        self.pred = np.asarray(pred) != 0
        self.has_reference = ref is not None
        self.ref = np.asarray(ref) != 0 if ref is not None else np.zeros_like(self.pred)
        self.ndim = self.pred.ndim
        self.channel = int(channel)
        self._margin = margin
        # an audit's rules (decide.DecisionRules) replace connectivity and overlap_threshold
        self.rules = rules if rules is not None else DecisionRules(
            connectivity=connectivity, overlap_threshold=float(overlap_threshold))
        self.overlap_threshold = float(self.rules.overlap_threshold)
        self.table = lesion_table(self.pred, self.ref, spacing, self.rules, probability)
        self._labels = {
            "ref": components(self.ref, self.rules.connectivity)[0],
            "pred": components(self.pred, self.rules.connectivity)[0],
        }
        if not self.has_reference:
            self.table["status"] = "predicted"
        self.lesion_fraction = {str(lid): float(self.mask(lid).mean())
                                for lid in self.table["lesion_id"]}
        self.set_channel(image, self.channel)

    def set_channel(self, image: Any, channel: int) -> None:
        """Measure the contrast-to-noise ratio (column ``cnr``) on ``channel`` of ``image``."""
        img = np.asarray(image, dtype=np.float32)
        if img.ndim == self.ndim:
            img = img[None]
        if not 0 <= int(channel) < img.shape[0]:
            raise ValueError(f"channel: expected 0..{img.shape[0] - 1}, got {channel!r}")
        self.channel = int(channel)
        cnrs = []
        foreground = self.ref | self.pred
        for lid in self.table["lesion_id"]:
            m = self.mask(lid)
            try:
                cnr = contrast_to_noise(img, m, margin=self._margin, exclude=foreground & ~m,
                                        channel=self.channel)
            except ValueError:  # other lesions fill the whole ring: measure without excluding
                cnr = contrast_to_noise(img, m, margin=self._margin, channel=self.channel)
            cnrs.append(cnr)
        self.table["cnr"] = np.asarray(cnrs, dtype=float)

    @property
    def size_unit(self) -> str:
        """``mm³`` for volumes, ``mm²`` for 2D images (``volume_mm3`` then holds an area)."""
        return "mm²" if self.ndim == 2 else "mm³"

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.table["lesion_id"]]

    def row(self, lesion_id: str) -> pd.Series:
        rows = self.table[self.table["lesion_id"] == lesion_id]
        if rows.empty:
            raise ValueError(f"lesion_id: expected one of {self.ids}, got {lesion_id!r}")
        return rows.iloc[0]

    def mask(self, lesion_id: str) -> np.ndarray:
        """Boolean mask of one lesion."""
        from medseg_xai.decide import parse_lesion_id

        source, num = parse_lesion_id(lesion_id, kinds=tuple(self._labels))
        m = self._labels[source] == num
        if not m.any():
            raise ValueError(f"lesion_id: no component {lesion_id!r} in this case")
        return m

    def centre(self, lesion_id: str) -> tuple[int, ...]:
        """A voxel inside the lesion near its centroid (every plane through it cuts the lesion)."""
        from medseg_xai.viz import lesion_centre

        return lesion_centre(self.mask(lesion_id))

    def status(self, lesion_id: str) -> str:
        return str(self.row(lesion_id)["status"])

    @property
    def detected(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "detected"]

    def missed_ids(self) -> list[str]:
        return [str(i) for i in self.table.loc[self.table["status"] == "missed", "lesion_id"]]

    def label(self, lesion_id: str) -> str:
        """One line for a selector: id, status, volume, contrast, max probability."""
        r = self.row(lesion_id)
        prob = "n/a" if not np.isfinite(r["max_prob"]) else f"{r['max_prob']:.2f}"
        return (f"{lesion_id} · {str(r['status']).replace('_', ' ')} · {r['volume_mm3']:.0f} "
                f"{self.size_unit} · CNR {r['cnr']:.1f} · max p {prob}")

    def display_table(self) -> pd.DataFrame:
        """The shown columns; the size column is named for its unit (area for 2D)."""
        df = self.table[TABLE_COLUMNS].copy()
        return df.rename(columns={"volume_mm3": "area_mm2" if self.ndim == 2 else "volume_mm3"})
