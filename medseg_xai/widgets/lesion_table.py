"""The lesions of one case with what the explorer shows about them: status, size, contrast."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.metrics import label_lesions, lesions
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
        ``(C, *spatial)`` or spatial only; channel 0 is used for the contrast-to-noise ratio.
    ref, pred : numpy.ndarray
        Binary masks (spatial shape).
    probability : numpy.ndarray, optional
        Foreground probability (spatial shape); fills ``max_prob``.
    spacing : sequence of float, optional
    margin : int
        Width in voxels of the background ring used for the contrast-to-noise ratio.
    """

    def __init__(
        self,
        image: Any,
        ref: Any,
        pred: Any,
        probability: Any = None,
        spacing: Any = None,
        *,
        margin: int = 3,
        connectivity: int | None = None,
        overlap_threshold: float = 0.1,
    ) -> None:
        self.ref = np.asarray(ref) != 0
        self.pred = np.asarray(pred) != 0
        self.overlap_threshold = float(overlap_threshold)
        self.table = lesions(self.pred, self.ref, spacing, probability,
                             connectivity=connectivity, overlap_threshold=overlap_threshold)
        self._labels = {
            "ref": label_lesions(self.ref, connectivity)[0],
            "pred": label_lesions(self.pred, connectivity)[0],
        }
        img = np.asarray(image, dtype=np.float32)
        self.lesion_fraction: dict[str, float] = {}
        cnrs = []
        foreground = self.ref | self.pred
        for lid in self.table["lesion_id"]:
            m = self.mask(lid)
            self.lesion_fraction[lid] = float(m.mean())
            try:
                cnr = contrast_to_noise(img, m, margin=margin, exclude=foreground & ~m)
            except ValueError:  # other lesions fill the whole ring: measure without excluding
                cnr = contrast_to_noise(img, m, margin=margin)
            cnrs.append(cnr)
        self.table["cnr"] = np.asarray(cnrs, dtype=float)

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
        source, _, num = str(lesion_id).partition("-")
        if source not in self._labels or not num.isdigit():
            raise ValueError(f"lesion_id: expected 'ref-k' or 'pred-k', got {lesion_id!r}")
        m = self._labels[source] == int(num)
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
        return (f"{lesion_id} · {str(r['status']).replace('_', ' ')} · {r['volume_mm3']:.0f} mm³ · "
                f"CNR {r['cnr']:.1f} · max p {prob}")

    def display_table(self) -> pd.DataFrame:
        return self.table[TABLE_COLUMNS].copy()
