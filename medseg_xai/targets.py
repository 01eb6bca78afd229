"""Targets: reduce segmentation logits to one scalar per example so any attribution applies.

A target is the mean class logit over a region of the image (or, with ``margin=True``, the mean
margin: the class logit minus the strongest competing logit, for softmax models). The region is
what the question is about: a mask you choose (:func:`region`), the reference segmentation
(:func:`reference`), the voxels the model missed (:func:`missed`) or one reference lesion
(:func:`lesion`). Targets are callables ``logits (N, K, *spatial) -> (N,)`` and describe
themselves in words for reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["Target", "region", "reference", "missed", "lesion", "class_mask"]


@dataclass(frozen=True, eq=False)
class Target:
    """Mean (margin of the) class logit over a boolean mask.

    Attributes
    ----------
    class_index : int
        Output channel whose logit is averaged.
    mask : numpy.ndarray
        Boolean mask with the image's spatial shape.
    kind : str
        ``"region"``, ``"reference"``, ``"missed"`` or ``"lesion"``.
    margin : bool
        Average ``logit[c] - max_{k != c} logit[k]`` instead of ``logit[c]``.
    detail : str
        Extra words for :meth:`describe` (e.g. which lesion).
    """

    class_index: int
    mask: np.ndarray
    kind: str = "region"
    margin: bool = False
    detail: str = ""
    _cache: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """Short identifier, e.g. ``"missed[1]"`` or ``"lesion[1]-margin"``."""
        return f"{self.kind}[{self.class_index}]" + ("-margin" if self.margin else "")

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the mask."""
        return int(self.mask.sum())

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        """The target in words, for reports and widget captions."""
        if class_names is not None and 0 <= self.class_index < len(class_names):
            cls = f"class {self.class_index} ({class_names[self.class_index]})"
        else:
            cls = f"class {self.class_index}"
        score = (
            f"mean margin of the {cls} logit over the strongest competing class"
            if self.margin
            else f"mean {cls} logit"
        )
        where = {
            "region": "over the chosen region",
            "reference": "over the reference segmentation",
            "missed": "over the voxels the model missed (reference but not predicted)",
            "lesion": "over one reference lesion",
        }.get(self.kind, f"over the {self.kind} region")
        extra = f", {self.detail}" if self.detail else ""
        return f"{score} {where} ({self.n_voxels} voxels{extra})"

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        w = self._cache.get(key)
        if w is None:
            w = torch.as_tensor(self.mask, dtype=like.dtype, device=like.device)
            self._cache[key] = w
        return w

    def score_map(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-voxel score ``(N, *spatial)``: the class logit or the margin."""
        self._check_logits(logits)
        c = self.class_index
        if not self.margin:
            return logits[:, c]
        others = torch.cat([logits[:, :c], logits[:, c + 1 :]], dim=1)
        return logits[:, c] - others.max(dim=1).values

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean score over the mask, one value per example ``(N,)``."""
        score = self.score_map(logits)
        w = self._weights(score)
        total = w.sum()
        dims = tuple(range(1, score.ndim))
        if total == 0:  # an empty crop (sliding window): zero, still attached to the graph
            return (score * 0).sum(dim=dims)
        return (score * w).sum(dim=dims) / total

    def _check_logits(self, logits: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.ndim != self.mask.ndim + 2:
            shape = tuple(getattr(logits, "shape", ()))
            raise ValueError(
                f"target {self.name}: expected logits (N, K, *spatial) with {self.mask.ndim} "
                f"spatial axes, got shape {shape}"
            )
        if tuple(logits.shape[2:]) != self.mask.shape:
            raise ValueError(
                f"target {self.name}: logits spatial shape {tuple(logits.shape[2:])} differs from "
                f"the target mask shape {self.mask.shape}"
            )
        k = logits.shape[1]
        if not 0 <= self.class_index < k:
            raise ValueError(
                f"target {self.name}: class_index {self.class_index} is out of range for logits "
                f"with {k} channels"
            )
        if self.margin and k < 2:
            raise ValueError(
                f"target {self.name}: margin=True needs at least 2 output channels (softmax), "
                f"the logits have {k}"
            )

    def crop(self, slices: Sequence[slice]) -> Target:
        """The same target restricted to a window (used for sliding-window Grad-CAM)."""
        return replace(self, mask=self.mask[tuple(slices)], _cache={})


# ---------------------------------------------------------------------- helpers
def _check_class_index(class_index: Any) -> int:
    if isinstance(class_index, (bool, np.bool_)) or not isinstance(
        class_index, (int, np.integer)
    ):
        raise ValueError(f"class_index: expected a non-negative int, got {class_index!r}")
    if class_index < 0:
        raise ValueError(f"class_index: expected a non-negative int, got {class_index}")
    return int(class_index)


def _as_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D or 3D spatial array, got shape {arr.shape}")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected a boolean or integer mask, got dtype {arr.dtype}")
    return arr


def class_mask(labels: Any, class_index: int, name: str = "mask") -> np.ndarray:
    """Boolean mask of ``class_index`` in a binary mask or a multi-class label map.

    A boolean array, or one whose values are only 0 and 1, is taken as the mask itself (binary
    segmentation, whatever the class index); otherwise voxels equal to ``class_index``.
    """
    arr = _as_array(labels, name)
    if arr.dtype == bool:
        return arr.copy()
    if np.all((arr == 0) | (arr == 1)):
        return arr.astype(bool)
    return arr == class_index


def _nonempty(mask: np.ndarray, what: str) -> None:
    if not mask.any():
        raise ValueError(f"{what}: the region is empty, there is nothing to explain")


# ---------------------------------------------------------------------- constructors
def region(class_index: int, mask: Any, *, margin: bool = False) -> Target:
    """Mean ``class_index`` logit over ``mask`` (boolean, the image's spatial shape).

    Examples
    --------
    >>> import numpy as np
    >>> t = region(1, np.ones((4, 4), bool))
    >>> t.describe()
    'mean class 1 logit over the chosen region (16 voxels)'
    """
    c = _check_class_index(class_index)
    arr = _as_array(mask, "mask")
    m = arr.astype(bool)
    _nonempty(m, "region(mask)")
    return Target(c, m, "region", bool(margin))


def reference(class_index: int, ref: Any, *, margin: bool = False) -> Target:
    """Mean ``class_index`` logit over the reference segmentation of that class."""
    c = _check_class_index(class_index)
    m = class_mask(ref, c, "ref")
    _nonempty(m, f"reference(class {c})")
    return Target(c, m, "reference", bool(margin))


def missed(class_index: int, *args: Any, pred: Any = None, ref: Any = None,
           margin: bool = False) -> Target:
    """Mean ``class_index`` logit over the false negatives: reference and not predicted.

    ``pred`` and ``ref`` are keyword-only (the toolkit's order is ``(pred, ref)``); the old
    positional ``missed(class_index, ref, pred)`` still works for one release with a
    FutureWarning.
    """
    if args:
        if len(args) != 2 or pred is not None or ref is not None:
            raise TypeError("missed(class_index, *, pred, ref): expected pred= and ref= keywords")
        import warnings

        warnings.warn("targets.missed(class_index, ref, pred) is deprecated; pass "
                      "missed(class_index, pred=..., ref=...)", FutureWarning, stacklevel=2)
        ref, pred = args
    if pred is None or ref is None:
        raise ValueError("missed: expected both pred= and ref= (label maps or masks)")
    c = _check_class_index(class_index)
    r = class_mask(ref, c, "ref")
    p = class_mask(pred, c, "pred")
    if r.shape != p.shape:
        raise ValueError(f"ref and pred: expected the same shape, got {r.shape} and {p.shape}")
    m = r & ~p
    if not m.any():
        raise ValueError(
            f"missed(class {c}): the prediction covers every reference voxel, nothing was missed"
        )
    return Target(c, m, "missed", bool(margin), detail=f"of {int(r.sum())} reference voxels")


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    conn = ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= ndim:
        raise ValueError(f"connectivity: expected 1..{ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, conn)


def lesion(
    class_index: int,
    ref: Any,
    lesion_index: int | str | None = None,
    *,
    point: Sequence[int] | None = None,
    margin: bool = False,
    connectivity: int | None = None,
) -> Target:
    """Mean ``class_index`` logit over one connected component of the reference.

    Parameters
    ----------
    class_index : int
        Class of the lesion.
    ref : array
        Reference mask or label map.
    lesion_index : int or str, optional
        1-based component number in scipy.ndimage.label order (the order of
        ``metrics.label_lesions``), or its lesion id such as ``"ref-2"``.
    point : sequence of int, optional
        A voxel inside the lesion (alternative to ``lesion_index``).
    margin : bool
        Use the margin against the strongest competing class.
    connectivity : int, optional
        Neighbourhood for components (1 = faces ... ndim = full, the default).
    """
    c = _check_class_index(class_index)
    m = class_mask(ref, c, "ref")
    labels, n = ndimage.label(m, structure=_structure(m.ndim, connectivity))
    if (lesion_index is None) == (point is None):
        raise ValueError("lesion: pass exactly one of lesion_index or point")
    if point is not None:
        pt = tuple(int(v) for v in point)
        if len(pt) != m.ndim or any(not 0 <= v < s for v, s in zip(pt, m.shape)):
            raise ValueError(f"point: expected a voxel index inside shape {m.shape}, got {pt}")
        idx = int(labels[pt])
        if idx == 0:
            raise ValueError(f"point {pt} is not inside a class {c} reference lesion")
    else:
        raw = lesion_index
        if isinstance(raw, str):
            from medseg_xai.decide import parse_lesion_id

            try:
                raw = parse_lesion_id(raw, kinds=("ref",))[1]
            except ValueError:
                raise ValueError(f"lesion_index: expected an int or an id like 'ref-2', "
                                 f"got {raw!r}") from None
        idx = _check_class_index(raw)
        if not 1 <= idx <= n:
            raise ValueError(
                f"lesion_index: the reference has {n} class {c} lesions (1..{n}), got {lesion_index!r}"
            )
    comp = labels == idx
    return Target(c, comp, "lesion", bool(margin), detail=f"lesion {idx} of {n}")
