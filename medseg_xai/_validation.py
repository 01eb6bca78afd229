"""Input checks shared by every module.

Each check raises ``ValueError`` naming the argument, what was expected and what came, so a
failing audit row carries an actionable error text. Checks return the (possibly converted)
value so callers can write ``pred = check_mask(pred, "pred")``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "as_array",
    "check_finite",
    "check_label_map",
    "check_label_values",
    "check_labels",
    "check_mask",
    "check_probabilities",
    "check_same_shape",
    "check_spacing",
]


def as_array(a: Any, name: str) -> np.ndarray:
    """Convert ``a`` (numpy array, torch tensor, nested sequence) to a numpy array.

    Torch tensors are detached and moved to the CPU; torch is not imported here.
    """
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor without importing torch
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception as exc:  # pragma: no cover - numpy raises many types here
        raise ValueError(f"{name}: expected an array, got {type(a).__name__} ({exc})") from exc


def _check_ndim(a: np.ndarray, name: str, ndims: Sequence[int] | None) -> None:
    if ndims is not None and a.ndim not in ndims:
        expected = " or ".join(f"{n}D" for n in ndims)
        raise ValueError(
            f"{name}: expected a {expected} spatial array (no channel axis), "
            f"got {a.ndim}D with shape {tuple(a.shape)}"
        )


def check_finite(a: Any, name: str) -> np.ndarray:
    """Return ``a`` as an array, raising if it holds NaN or infinite values."""
    arr = as_array(a, name)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_nan} NaN and {n_inf} infinite value(s)"
        )
    return arr


def check_mask(a: Any, name: str, *, ndims: Sequence[int] | None = (2, 3)) -> np.ndarray:
    """Validate a binary mask and return it as a C-contiguous ``bool`` array.

    Parameters
    ----------
    a : array-like
        Mask of shape ``(H, W)`` or ``(D, H, W)``; bool, or numbers that are all 0 or 1.
    name : str
        Argument name used in error messages.
    ndims : sequence of int or None, optional
        Allowed numbers of dimensions (default 2 or 3); None accepts any.

    Raises
    ------
    ValueError
        If the array has the wrong number of dimensions, holds NaN, or values other than 0/1.
    """
    arr = as_array(a, name)
    _check_ndim(arr, name, ndims)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name}: expected a binary mask (bool or 0/1 numbers), got dtype {arr.dtype}"
        )
    arr = check_finite(arr, name)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        found = np.unique(arr[bad])[:5].tolist()
        raise ValueError(
            f"{name}: expected a binary mask with values in {{0, 1}}, got other values "
            f"such as {found}; pass labels=... to evaluate a label map"
        )
    return np.ascontiguousarray(arr != 0)


def check_label_map(a: Any, name: str, *, ndims: Sequence[int] | None = (2, 3)) -> np.ndarray:
    """Validate an integer label map (non-negative integers) and return it as an array.

    Float arrays are accepted when every value is a non-negative whole number.
    """
    arr = as_array(a, name)
    _check_ndim(arr, name, ndims)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        arr = check_finite(arr, name)
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name}: expected integer labels, got non-integer float values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name}: expected non-negative labels, got minimum {int(arr.min())}")
    return np.ascontiguousarray(arr)


def check_labels(
    labels: Iterable[int] | dict[int, str],
    present: Iterable[int] | None = None,
    name: str = "labels",
) -> dict[int, str]:
    """Normalise ``labels`` to an ordered ``{label value: class name}`` dict.

    Parameters
    ----------
    labels : iterable of int or dict
        Label values to evaluate (``[1, 2]``) or a mapping label value -> class name.
    present : iterable of int, optional
        Label values found in the data (0 = background is always allowed). Any other value not
        listed in ``labels`` is an unknown label and raises.
    name : str
        Argument name used in error messages.
    """
    if isinstance(labels, dict):
        items = list(labels.items())
    else:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
            raise ValueError(
                f"{name}: expected a list of integer labels or a dict label -> name, "
                f"got {type(labels).__name__}"
            )
        items = [(lab, None) for lab in labels]
    if not items:
        raise ValueError(f"{name}: expected at least one label, got none")
    out: dict[int, str] = {}
    for lab, cname in items:
        if isinstance(lab, (bool, np.bool_)) or not isinstance(lab, (int, np.integer)):
            raise ValueError(f"{name}: expected integer label values, got {lab!r}")
        lab = int(lab)
        if lab <= 0:
            raise ValueError(f"{name}: expected positive label values (0 is background), got {lab}")
        if lab in out:
            raise ValueError(f"{name}: expected distinct labels, got {lab} twice")
        out[lab] = str(lab) if cname is None else str(cname)
    if len(set(out.values())) != len(out):
        raise ValueError(f"{name}: expected distinct class names, got {list(out.values())}")
    if present is not None:
        unknown = sorted(set(int(v) for v in present) - set(out) - {0})
        if unknown:
            raise ValueError(
                f"{name}: the label maps contain values {unknown} that are not among the "
                f"expected labels {sorted(out)} (plus background 0)"
            )
    return out


def check_same_shape(a: Any, b: Any, names: Sequence[str] = ("pred", "ref")) -> None:
    """Raise unless ``a`` and ``b`` have the same shape."""
    sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
    if sa != sb:
        raise ValueError(f"{names[0]} and {names[1]}: expected the same shape, got {sa} and {sb}")


def check_spacing(spacing: Any, ndim: int, name: str = "spacing") -> tuple[float, ...]:
    """Return ``spacing`` as a tuple of ``ndim`` positive finite floats (mm per axis).

    ``None`` means 1.0 mm along every axis; a single number is used for every axis.
    """
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        values = [spacing] * ndim
    else:
        try:
            values = list(np.asarray(spacing, dtype=float).ravel())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected {ndim} numbers in mm, got {spacing!r}") from exc
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {ndim} numbers in mm, got {spacing!r}") from exc
    if len(out) != ndim:
        raise ValueError(
            f"{name}: expected {ndim} values (one per spatial axis), got {len(out)}: {spacing!r}"
        )
    if not all(np.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"{name}: expected positive finite values in mm, got {out}")
    return out


def check_probabilities(a: Any, name: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Validate probabilities: finite, within [0, 1], and of ``shape`` when given.

    Values at most 1e-6 outside [0, 1] (float rounding) are clipped into it.
    """
    arr = check_finite(as_array(a, name), name)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numeric probabilities, got dtype {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        # Float rounding (e.g. 1 - softmax[0]) may step just outside [0, 1]: clip that, raise
        # on anything larger.
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"{name}: expected values in [0, 1], got range [{lo}, {hi}]")
        if lo < 0 or hi > 1:
            arr = np.clip(arr, 0, 1)
    return arr


def check_label_values(
    a: Any,
    labels: Iterable[int] | dict[int, str] | None,
    name: str,
    *,
    binarize: bool = False,
) -> np.ndarray:
    """Check that a label map holds only the declared label values (and background 0).

    The one rule of every entry point (audit, metrics, explain): label values are explicit.
    With ``labels=None`` the map is binary (``{0, 1}``). A map with any other value (255, 7, -1,
    an intensity image) raises with the values found, unless ``binarize=True``, which makes
    every voxel ``> 0`` foreground (documented, never silent).

    Parameters
    ----------
    a : array-like
        Label map (any shape).
    labels : iterable of int, dict or None
        Declared foreground label values; None means binary.
    name : str
        Names the case and field in messages (``"case 'c1': label"``).
    binarize : bool
        Return ``a > 0`` as ``uint8`` instead of checking the values.

    Returns
    -------
    numpy.ndarray
        The map unchanged (or binarised).

    Raises
    ------
    ValueError
        Naming the values found, the values expected and the two ways out.
    """
    arr = as_array(a, name)
    if binarize:
        return (arr > 0).astype(np.uint8)
    if arr.dtype == bool:
        return arr
    allowed = {0, 1} if labels is None else {0, *(int(v) for v in (
        labels.keys() if isinstance(labels, dict) else labels))}
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a label map of integers, got dtype {arr.dtype}")
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size != arr.size:
        raise ValueError(f"{name}: expected label values {sorted(allowed)}, found "
                         f"{arr.size - finite.size} NaN or infinite value(s)")
    found = np.unique(finite)
    if arr.dtype.kind == "f" and not np.array_equal(found, np.round(found)):
        frac = found[found != np.round(found)]
        raise ValueError(
            f"{name}: expected integer label values {sorted(allowed)}, found "
            f"{frac.size} non-integer value(s) such as {[round(float(v), 4) for v in frac[:5]]} "
            "(an intensity image?); pass binarize=True / --binarize only if every value > 0 "
            "really is foreground"
        )
    extra = [v for v in found.tolist() if v not in allowed]
    if extra:
        shown = [int(v) for v in extra[:8]]
        more = f" and {len(extra) - 8} more" if len(extra) > 8 else ""
        raise ValueError(
            f"{name}: expected label values {sorted(allowed)}, found {shown}{more} "
            f"(all values: {len(found)}); declare them with labels= / --labels, or pass "
            "binarize=True / --binarize to count every value > 0 as foreground"
        )
    return arr
