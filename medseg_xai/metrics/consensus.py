"""Consensus of several readers' masks: STAPLE or majority vote.

``method="staple"``
    Simultaneous Truth And Performance Level Estimation (Warfield et al., IEEE TMI 2004), run by
    SimpleITK's ``STAPLEImageFilter`` on the whole image (its foreground prior is the image's
    foreground share, so cropping would change the answer). The filter returns, per voxel, the
    posterior probability of foreground; the consensus mask is that probability ``>= threshold``
    (0.5 by default), and each reader's estimated sensitivity and specificity come with it.
    When no reader marks any voxel STAPLE is undefined (0/0); the consensus is then empty,
    every specificity 1 and every sensitivity NaN (there is no foreground to be sensitive to).
    The filter runs on one thread so the same inputs give bit-identical estimates.
``method="majority"``
    A voxel is foreground when more than half of the readers marked it. With an even number of
    readers a voxel marked by exactly half is a tie, decided by ``ties``: ``"background"``
    (default: a lesion needs a strict majority, the conservative reading) or ``"foreground"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.metrics.agreement import check_readers

__all__ = ["CONSENSUS_METHODS", "TIE_RULES", "Consensus", "consensus"]

CONSENSUS_METHODS = ("staple", "majority")
TIE_RULES = ("background", "foreground")


@dataclass
class Consensus:
    """A consensus mask and how it was built.

    Attributes
    ----------
    mask : numpy.ndarray
        bool consensus mask, the readers' shape.
    probability : numpy.ndarray
        float64: STAPLE's posterior foreground probability, or the share of readers marking
        each voxel (majority).
    method : str
        ``"staple"`` or ``"majority"``.
    readers : list of str
        Reader names, in order.
    performance : pandas.DataFrame or None
        STAPLE only: ``reader, sensitivity, specificity`` (the filter's estimates).
    params : dict
        Settings used (``threshold`` / ``ties``, ``iterations`` for STAPLE).
    """

    mask: np.ndarray
    probability: np.ndarray
    method: str
    readers: list[str]
    performance: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _staple(masks: dict[str, np.ndarray], threshold: float, confidence_weight: float,
            max_iterations: int | None) -> Consensus:
    import SimpleITK as sitk

    readers = list(masks)
    if not any(m.any() for m in masks.values()):
        shape = next(iter(masks.values())).shape
        perf = pd.DataFrame({"reader": readers, "sensitivity": np.nan, "specificity": 1.0})
        return Consensus(np.zeros(shape, bool), np.zeros(shape), "staple", readers, perf,
                         {"threshold": threshold, "iterations": 0, "all_empty": True})
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetConfidenceWeight(float(confidence_weight))
    if max_iterations is not None:
        f.SetMaximumIterations(int(max_iterations))
    f.SetNumberOfThreads(1)  # reproducible sums
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks.values()]
    prob = sitk.GetArrayFromImage(f.Execute(*images)).astype(np.float64)
    perf = pd.DataFrame({"reader": readers,
                         "sensitivity": [float(s) for s in f.GetSensitivity()],
                         "specificity": [float(s) for s in f.GetSpecificity()]})
    return Consensus(prob >= threshold, prob, "staple", readers, perf,
                     {"threshold": threshold, "iterations": int(f.GetElapsedIterations()),
                      "confidence_weight": float(confidence_weight)})


def consensus(
    masks_by_reader: Mapping[str, Any] | Sequence[Any],
    method: str = "staple",
    *,
    threshold: float = 0.5,
    ties: str = "background",
    confidence_weight: float = 1.0,
    max_iterations: int | None = None,
) -> Consensus:
    """Build a consensus mask from several readers' masks of one case.

    Parameters
    ----------
    masks_by_reader : mapping or sequence
        ``{reader: binary mask}`` or a sequence of masks (readers ``r1, r2, ...``); at least two.
    method : {"staple", "majority"}
        Combination rule (module docstring).
    threshold : float
        STAPLE: posterior probability at or above which a voxel is foreground (default 0.5).
    ties : {"background", "foreground"}
        Majority vote: the class of a voxel marked by exactly half of the readers.
    confidence_weight, max_iterations
        Passed to SimpleITK's ``STAPLEImageFilter`` (defaults: the filter's, 1.0 and until
        convergence).

    Returns
    -------
    Consensus
        ``.mask`` (bool), ``.probability``, ``.performance`` (STAPLE: per-reader sensitivity
        and specificity), ``.method``, ``.readers``, ``.params``.

    Raises
    ------
    ValueError
        Unknown ``method`` or ``ties``, fewer than two readers, non-binary masks or masks of
        different shapes.

    Examples
    --------
    >>> import numpy as np
    >>> r = [np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), np.array([1, 1, 0, 0])]
    >>> consensus([m.reshape(2, 2) for m in r], method="majority").mask.ravel().tolist()
    [True, True, False, False]
    """
    if method not in CONSENSUS_METHODS:
        raise ValueError(f"method: expected one of {CONSENSUS_METHODS}, got {method!r}")
    masks = check_readers(masks_by_reader)
    if method == "staple":
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold!r}")
        return _staple(masks, float(threshold), confidence_weight, max_iterations)
    if ties not in TIE_RULES:
        raise ValueError(f"ties: expected one of {TIE_RULES}, got {ties!r}")
    n = len(masks)
    votes = np.zeros(next(iter(masks.values())).shape, dtype=np.int32)
    for m in masks.values():
        votes += m
    # 2 * votes vs n keeps the comparison in integers: a tie is 2 * votes == n.
    mask = 2 * votes >= n if ties == "foreground" else 2 * votes > n
    return Consensus(mask, votes / n, "majority", list(masks), None, {"ties": ties})
