"""Calibration error (ECE, ACE, MCE) of voxel probabilities, as MONAI's
``CalibrationErrorMetric`` computes it, and in a poolable form for subgroups.

MONAI bins each channel's probabilities into ``n_bins`` equal bins of [0, 1] (upper edge
``1 + float32 eps``; a value on an inner edge goes to the lower bin unless ``right=True``), and
per (image, channel) compares the mean probability with the mean reference in every non-empty
bin: ECE is the count-weighted mean of the gaps, ACE their plain mean, MCE their maximum. Its
default reduction averages the per-image values over the batch.

Here a case is summarised by its *bin sums* (count, sum of probabilities, sum of references per
channel and bin): three small arrays that add across cases. From them
:func:`calibration_errors` gives MONAI's per-image values (one case's sums) or the errors of the
voxels of several cases pooled (summed sums), and :func:`reliability` the reliability-diagram
points. Importing this stays light (numpy; torch only for the bin edges, on first use).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["CALIBRATION_REDUCTIONS", "calibration_bin_sums", "calibration_error",
           "calibration_errors", "reliability"]

CALIBRATION_REDUCTIONS = {"expected": "ece", "average": "ace", "maximum": "mce"}


@functools.lru_cache(maxsize=32)
def _edges(n_bins: int) -> np.ndarray:
    """MONAI's upper bin edges ``torch.linspace(0, 1 + eps, n_bins + 1)[1:]`` in float32.

    Taken from torch itself (imported here only, once per bin count): its vectorised float32
    linspace differs from a numpy one by an ulp at some edges, which moves a probability that
    sits on an edge (0.5 from a zero logit) into another bin than MONAI's. Without torch, the
    float64 edges rounded to float32.
    """
    eps = float(np.finfo(np.float32).eps)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the toolkit
        return np.linspace(0.0, 1.0 + eps, n_bins + 1).astype(np.float32)[1:]
    return torch.linspace(0.0, 1.0 + eps, steps=n_bins + 1).numpy()[1:].copy()


def calibration_bin_sums(probabilities: Any, reference: Any, n_bins: int = 20,
                         right: bool = False) -> np.ndarray:
    """Per channel and bin: voxel count, sum of probabilities, sum of references.

    Parameters
    ----------
    probabilities : array-like
        ``(K, *spatial)`` probabilities in [0, 1] (one channel per class scored).
    reference : array-like
        Same shape, binary (one-hot reference of each scored class).
    n_bins : int
        Equal-width bins of [0, 1] (MONAI's default 20).
    right : bool
        Bin edges inclusion as MONAI's ``right``.

    Returns
    -------
    numpy.ndarray
        ``(K, 3, n_bins)`` float64: counts, probability sums, reference sums.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    y = np.asarray(reference)
    if p.shape != y.shape:
        raise ValueError(f"reference: expected the probabilities' shape {p.shape}, got {y.shape}")
    if p.ndim < 2:
        raise ValueError(f"probabilities: expected (K, *spatial), got shape {p.shape}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    n_bins = int(n_bins)
    edges = _edges(n_bins)
    out = np.zeros((p.shape[0], 3, n_bins))
    for k in range(p.shape[0]):
        v = p[k].ravel()
        idx = np.minimum(np.searchsorted(edges, v, side="right" if right else "left"), n_bins - 1)
        out[k, 0] = np.bincount(idx, minlength=n_bins)
        out[k, 1] = np.bincount(idx, weights=v.astype(np.float64), minlength=n_bins)
        out[k, 2] = np.bincount(idx, weights=y[k].ravel().astype(np.float64), minlength=n_bins)
    return out


def calibration_errors(sums: np.ndarray) -> dict[str, np.ndarray]:
    """ECE, ACE, MCE per channel from bin sums ``(..., 3, n_bins)`` (NaN without voxels)."""
    s = np.asarray(sums, dtype=np.float64)
    counts, sp, sy = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    filled = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(sp - sy) / np.where(filled, counts, 1.0)
        total = counts.sum(-1)
        ece = np.where(total > 0, (gap * counts).sum(-1) / np.where(total > 0, total, 1.0), np.nan)
        n_filled = filled.sum(-1)
        ace = np.where(n_filled > 0, np.where(filled, gap, 0.0).sum(-1) / np.maximum(n_filled, 1),
                       np.nan)
        mce = np.where(n_filled > 0, np.where(filled, gap, -np.inf).max(-1), np.nan)
    return {"ece": ece, "ace": ace, "mce": mce}


def calibration_error(probabilities: Any, reference: Any, n_bins: int = 20,
                      reduction: str = "expected", right: bool = False) -> np.ndarray:
    """One image's calibration error per channel (MONAI's ``CalibrationErrorMetric`` with
    ``metric_reduction="none"`` for a batch of one).

    Parameters
    ----------
    reduction : {"expected", "average", "maximum"}
        ECE, ACE or MCE.
    """
    if reduction not in CALIBRATION_REDUCTIONS:
        raise ValueError(f"reduction: expected one of {tuple(CALIBRATION_REDUCTIONS)}, got "
                         f"{reduction!r}")
    sums = calibration_bin_sums(probabilities, reference, n_bins, right)
    return calibration_errors(sums)[CALIBRATION_REDUCTIONS[reduction]]


def reliability(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Reliability-diagram points per bin from bin sums ``(3, n_bins)``: bin centre, count,
    mean probability and observed frequency (NaN in empty bins)."""
    s = np.asarray(sums, dtype=np.float64)
    n = s.shape[-1]
    counts = s[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, s[1] / np.where(counts > 0, counts, 1), np.nan)
        freq = np.where(counts > 0, s[2] / np.where(counts > 0, counts, 1), np.nan)
    return {"bin_centre": (np.arange(n) + 0.5) / n, "count": counts, "mean_probability": mean_p,
            "observed": freq}
