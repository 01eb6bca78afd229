"""Agreement between several readers' masks of one case: one row per reader pair.

Each pair ``(a, b)`` (readers in the order given, ``a`` before ``b``) is compared with the same
functions the model is judged with: :func:`~medseg_xai.metrics.evaluate_case` for Dice, Jaccard,
HD95, ASSD and NSD, and :func:`~medseg_xai.metrics.lesions` for lesion-wise F1. Dice, Jaccard,
HD95 (the larger of the two directed percentiles), ASSD and NSD are symmetric in ``a`` and ``b``;
lesion-wise F1 matches reader ``b``'s components against reader ``a``'s lesions (``a`` plays the
reference), which is symmetric up to the overlap threshold. Empty masks follow the ``empty=``
policy of :mod:`medseg_xai.metrics.overlap` (two readers who both mark nothing agree fully
under ``"worst"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._validation import check_mask, check_same_shape, check_spacing

__all__ = ["AGREEMENT_COLUMNS", "PAIR_METRICS", "agreement", "check_readers", "pair_metrics"]

#: Metric columns of one comparison of two masks (reader pair, or model vs reader).
PAIR_METRICS = ("dice", "jaccard", "hd95", "assd", "nsd", "lesion_f1")
#: Columns of :func:`agreement`.
AGREEMENT_COLUMNS = ["reader_a", "reader_b", *PAIR_METRICS, "volume_a_mm3", "volume_b_mm3",
                     "edge_case"]


def check_readers(masks_by_reader: Any, name: str = "masks_by_reader",
                  min_readers: int = 2) -> dict[str, np.ndarray]:
    """Validate several readers' masks of one case.

    Parameters
    ----------
    masks_by_reader : mapping or sequence
        ``{reader name: binary mask}``, or a sequence of masks (named ``r1, r2, ...``).
    name : str
        Argument name used in error messages.
    min_readers : int
        Fewest readers accepted.

    Returns
    -------
    dict
        Reader name (str) -> bool mask, all of one shape, in the order given.

    Raises
    ------
    ValueError
        Fewer than ``min_readers`` readers, a mask that is not binary or masks of different shapes.
    """
    if isinstance(masks_by_reader, Mapping):
        items = [(str(k), v) for k, v in masks_by_reader.items()]
    elif isinstance(masks_by_reader, Sequence) and not isinstance(masks_by_reader, (str, bytes)):
        items = [(f"r{i + 1}", v) for i, v in enumerate(masks_by_reader)]
    elif isinstance(masks_by_reader, np.ndarray) and masks_by_reader.ndim in (3, 4):
        items = [(f"r{i + 1}", v) for i, v in enumerate(masks_by_reader)]
    else:
        raise ValueError(f"{name}: expected a mapping reader -> mask or a sequence of masks, got "
                         f"{type(masks_by_reader).__name__}")
    if len(items) < min_readers:
        raise ValueError(f"{name}: expected at least {min_readers} readers, got {len(items)}")
    if len({k for k, _ in items}) != len(items):
        raise ValueError(f"{name}: expected distinct reader names, got {[k for k, _ in items]}")
    out: dict[str, np.ndarray] = {}
    first: tuple[str, np.ndarray] | None = None
    for reader, mask in items:
        m = check_mask(mask, f"{name}[{reader!r}]")
        if first is not None:
            check_same_shape(first[1], m, (f"{name}[{first[0]!r}]", f"{name}[{reader!r}]"))
        else:
            first = (reader, m)
        out[reader] = np.ascontiguousarray(m)
    return out


def pair_metrics(
    a: np.ndarray,
    b: np.ndarray,
    spacing: tuple[float, ...],
    *,
    tolerance: float = 1.0,
    percentile: float | None = 95,
    empty: str = "worst",
    connectivity: int | None = None,
    overlap_threshold: float = 0.1,
    convention: str = "monai",
    use_subvoxels: bool = False,
    matching: str = "overlap",
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Agreement metrics of two bool masks (``a`` plays the reference for lesion F1).

    Returns ``dice, jaccard, hd95, assd, nsd, lesion_f1, volume_a_mm3, volume_b_mm3, edge_case``
    (``edge_case`` as in :func:`~medseg_xai.metrics.evaluate_case` with ``b`` as prediction).
    """
    from medseg_xai.metrics.evaluate import evaluate_case
    from medseg_xai.metrics.lesions import lesions

    m = evaluate_case(b, a, spacing, tolerance=tolerance, percentile=percentile, empty=empty,
                      convention=convention, use_subvoxels=use_subvoxels)
    table = lesions(b, a, spacing, connectivity=connectivity, overlap_threshold=overlap_threshold,
                    matching=matching, iou_threshold=iou_threshold)
    out: dict[str, Any] = {k: float(m[k]) for k in PAIR_METRICS if k != "lesion_f1"}
    # lesion_summary's F1, 2 TP / (2 TP + missed + FP), from the status column alone (cheaper).
    status = table["status"].to_numpy(dtype=object)
    tp = int((status == "detected").sum())
    den = 2 * tp + int((status == "missed").sum()) + int((status == "false_positive").sum())
    out["lesion_f1"] = 2 * tp / den if den else float("nan")
    out["volume_a_mm3"] = float(m["volume_ref_mm3"])
    out["volume_b_mm3"] = float(m["volume_pred_mm3"])
    out["edge_case"] = m["edge_case"]
    return out


def agreement(
    masks_by_reader: Mapping[str, Any] | Sequence[Any],
    spacing: Any = None,
    *,
    tolerance: float = 1.0,
    percentile: float | None = 95,
    empty: str = "worst",
    connectivity: int | None = None,
    overlap_threshold: float = 0.1,
    convention: str = "monai",
    use_subvoxels: bool = False,
    matching: str = "overlap",
    iou_threshold: float = 0.5,
) -> pd.DataFrame:
    """Pairwise agreement of several readers' masks of one case.

    Parameters
    ----------
    masks_by_reader : mapping or sequence
        ``{reader: binary mask}`` (2D or 3D, one shape) or a sequence of masks (readers
        ``r1, r2, ...``); at least two readers.
    spacing : sequence of float, optional
        Voxel size in mm per axis (default 1.0).
    tolerance, percentile, empty, convention, use_subvoxels
        As in :func:`~medseg_xai.metrics.evaluate_case` (NSD tolerance in mm, HD percentile,
        empty-mask policy, metric convention).
    connectivity, overlap_threshold, matching, iou_threshold
        As in :func:`~medseg_xai.metrics.lesions` (lesion F1).

    Returns
    -------
    pandas.DataFrame
        One row per unordered reader pair, in the readers' order (``r1-r2, r1-r3, r2-r3``):
        :data:`AGREEMENT_COLUMNS` = ``reader_a, reader_b, dice, jaccard, hd95, assd, nsd,
        lesion_f1, volume_a_mm3, volume_b_mm3, edge_case``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
    >>> b = np.zeros((8, 8), bool); b[2:6, 3:7] = True
    >>> agreement({"r1": a, "r2": b})[["reader_a", "reader_b", "dice"]]
      reader_a reader_b  dice
    0       r1       r2  0.75
    """
    masks = check_readers(masks_by_reader)
    ndim = next(iter(masks.values())).ndim
    sp = check_spacing(spacing, ndim)
    rows = []
    for ra, rb in combinations(masks, 2):
        rows.append({"reader_a": ra, "reader_b": rb,
                     **pair_metrics(masks[ra], masks[rb], sp, tolerance=tolerance,
                                    percentile=percentile, empty=empty, connectivity=connectivity,
                                    overlap_threshold=overlap_threshold, convention=convention,
                                    use_subvoxels=use_subvoxels, matching=matching,
                                    iou_threshold=iou_threshold)})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
