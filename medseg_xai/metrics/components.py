"""Connected components of a binary mask: the lesions of ``metrics.lesions`` and the instances
of ``metrics.instances`` (one labelling, one connectivity rule; both import it from here)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medseg_xai._validation import check_mask

__all__ = ["label_lesions"]


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    if connectivity is None:
        connectivity = ndim
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)):
        raise ValueError(
            f"connectivity: expected an integer 1..{ndim} or None, got {connectivity!r}"
        )
    if not 1 <= connectivity <= ndim:
        raise ValueError(
            f"connectivity: expected 1 (face) .. {ndim} (full) for {ndim}D masks, got {connectivity}"
        )
    return ndimage.generate_binary_structure(ndim, int(connectivity))


def label_lesions(mask: Any, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary mask.

    Parameters
    ----------
    mask : array-like
        Binary 2D or 3D mask.
    connectivity : int, optional
        Neighbourhood rank as in ``scipy.ndimage.generate_binary_structure``: 1 = face
        neighbours only, ``mask.ndim`` = full connectivity (the default).

    Returns
    -------
    labels : numpy.ndarray of int32
        0 for background, 1..n for the components.
    n : int
        Number of components.
    """
    mask = check_mask(mask, "mask")
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return labels.astype(np.int32, copy=False), int(n)
