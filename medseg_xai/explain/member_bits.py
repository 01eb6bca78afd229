"""Aggregation of uncertainty members without keeping their maps (issue 27's cost point).

Each member (one probability map of the same image) is folded in as it arrives:

- its probabilities are added to one float32 running sum, in place;
- its foreground (the toolkit's decision rule) sets bit ``j`` of member ``j`` in a code map
  (``(W, *spatial)`` unsigned words: uint8 for up to 8 members, uint16 for 16, uint32 for 32,
  uint64 words beyond).

Everything the scores and the lesion table need follows from the codes in one pass each: the
vote is the code's population count; the member volumes and every pairwise intersection are the
Gram matrix of the bit patterns, counted once per distinct pattern over the members' union
(``B^T diag(counts) B``) instead of ``M^2`` passes over the volume; per lesion the same counts
restricted to the lesion's voxels. Memory: one float32 probability map plus ``M / 8`` bytes a
voxel, whatever the number of members.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MemberBits", "code_dtype", "gram", "lesion_rows", "mean_pairwise_dice",
           "pack_masks", "popcount"]


def code_dtype(n_members: int) -> tuple[np.dtype, int]:
    """The unsigned word type of ``n_members`` bits and the number of words a voxel needs."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_members <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt), 1
    return np.dtype(np.uint64), max(1, math.ceil(n_members / 64))


def _set_bit(codes: np.ndarray, j: int, where: np.ndarray,
             scratch: np.ndarray | None = None) -> None:
    """Member ``j``'s bit where ``where`` (bool): ``word |= where << b``, through ``scratch``
    (a word map reused across members; a ufunc ``where=`` mask is ~30x slower)."""
    w, b = divmod(j, 8 * codes.dtype.itemsize)
    if scratch is None:
        scratch = np.empty(codes.shape[1:], codes.dtype)
    if codes.dtype == np.uint8:
        np.left_shift(where.view(np.uint8), np.uint8(b), out=scratch)
    else:
        np.copyto(scratch, where)
        scratch <<= codes.dtype.type(b)
    codes[w] |= scratch


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Codes ``(W, *spatial)`` of foreground masks ``(M, *spatial)``."""
    dt, words = code_dtype(len(masks))
    codes = np.zeros((words, *masks.shape[1:]), dt)
    for j, m in enumerate(masks):
        _set_bit(codes, j, np.asarray(m, bool))
    return codes


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _bitcount(word: np.ndarray) -> np.ndarray:
    """Set bits of each element (``np.bitwise_count``; a byte table before numpy 2.0)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(word)
    by = np.ascontiguousarray(word).view(np.uint8).reshape(*word.shape, word.dtype.itemsize)
    return _BYTE_BITS[by].sum(axis=-1, dtype=np.uint8)


def popcount(codes: np.ndarray) -> np.ndarray:
    """Members calling each voxel foreground, ``(*spatial)`` (uint8 up to 255 members)."""
    counts = _bitcount(codes[0])
    for w in codes[1:]:
        counts = counts + _bitcount(w)
    return counts


def _patterns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct bit patterns ``(W, R)`` among ``rows`` ``(W, U)`` and how often each occurs."""
    if rows.shape[0] == 1 and rows.dtype.itemsize <= 2:  # up to 16 members: a bincount
        c = np.bincount(rows[0], minlength=1)
        vals = np.flatnonzero(c)
        return vals.astype(rows.dtype)[None], c[vals]
    if rows.shape[0] == 1:
        vals, c = np.unique(rows[0], return_counts=True)
        return vals[None], c
    vals, c = np.unique(rows.T, axis=0, return_counts=True)
    return vals.T, c


def _bit_matrix(values: np.ndarray, n_members: int) -> np.ndarray:
    """``(R, M)`` 0/1 float64: member ``j``'s bit of each pattern ``values`` ``(W, R)``."""
    bits = 8 * values.dtype.itemsize
    out = np.empty((values.shape[1], n_members))
    for j in range(n_members):
        w, b = divmod(j, bits)
        out[:, j] = (values[w] >> b) & 1
    return out


def gram(codes: np.ndarray, n_members: int, where: np.ndarray | None = None) -> np.ndarray:
    """Pairwise intersections (voxel counts) ``(M, M)`` of the members, volumes on the diagonal,
    from the codes (restricted to ``where`` when given: the union is enough)."""
    rows = codes[:, where] if where is not None else codes.reshape(len(codes), -1)
    vals, counts = _patterns(rows)
    b = _bit_matrix(vals, n_members)
    return b.T @ (b * counts[:, None])


def _dice_matrix(inter: np.ndarray, vol_i: np.ndarray, vol_j: np.ndarray) -> np.ndarray:
    denom = vol_i + vol_j
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 1.0)


def mean_pairwise_dice(g: np.ndarray) -> float:
    """Mean Dice over member pairs from their Gram matrix (two empty masks agree: 1)."""
    m = len(g)
    if m < 2:
        return 1.0
    vol = np.diag(g)
    d = _dice_matrix(g, vol[:, None], vol[None, :])
    return float(d[np.triu_indices(m, 1)].mean())


class MemberBits:
    """Running aggregate of ``n_members`` probability maps ``(K, *spatial)``.

    ``add`` takes each map once (nothing is copied but the first); ``total`` is the float32
    sum, ``codes`` the members' foreground bits.
    """

    def __init__(self, n_members: int, foreground: Any) -> None:
        self.n_members = int(n_members)
        self.foreground = foreground  # p (K, *spatial) -> bool mask (the decision rule)
        self.total: np.ndarray | None = None
        self.codes: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self.count = 0

    def add(self, p: np.ndarray, name: str = "", axes: tuple[int, ...] = ()) -> None:
        """Fold in member ``p`` ``(K, *spatial)``, given in the frame of its input: ``axes``
        (of ``p``, so spatial axis ``a`` is ``1 + a``) flip it back to the image's grid. The
        flip is never copied: the sum reads the reversed view, and the foreground is tested on
        ``p`` as it is (contiguous) and flipped as a 1-byte mask."""
        if self.count >= self.n_members:
            raise ValueError(f"members: more than the {self.n_members} expected")
        back = np.flip(p, axes) if axes else p
        if self.total is None:
            self.total = np.array(back, dtype=np.float32, order="C")
            dt, words = code_dtype(self.n_members)
            self.codes = np.zeros((words, *p.shape[1:]), dt)
            self._scratch = np.empty(p.shape[1:], dt)
        elif p.shape != self.total.shape:
            raise ValueError(f"adapters: member {name} gave shape {p.shape}, expected "
                             f"{self.total.shape}")
        else:
            np.add(self.total, back, out=self.total)
        assert self.codes is not None
        mask = self.foreground(p)
        if axes:
            mask = np.flip(mask, tuple(a - 1 for a in axes))
        _set_bit(self.codes, self.count, mask, self._scratch)
        self.count += 1
        if self.count == self.n_members:
            self._scratch = None


def lesion_rows(codes: np.ndarray, n_members: int, lab: np.ndarray, n: int
                ) -> dict[str, np.ndarray]:
    """Per component ``1..n`` of ``lab``: voxels, the fraction of members that overlap it and
    the disagreement (1 - mean pairwise Dice) of the members restricted to its voxels, from
    the counts of each (lesion, bit pattern) pair: no per-lesion or per-pair pass over the
    volume."""
    sel = lab > 0
    ids = lab[sel].astype(np.int64)
    rows = codes[:, sel]
    if rows.shape[0] == 1 and n_members <= 32:  # one int64 key: lesion id, then the pattern
        keys, cnt = np.unique((ids << n_members) | rows[0].astype(np.int64), return_counts=True)
        lid, vals = keys >> n_members, (keys & ((1 << n_members) - 1)).astype(np.uint64)[None]
    else:
        stacked = np.vstack([ids.astype(np.uint64)[None], rows.astype(np.uint64)])
        uk, cnt = np.unique(stacked.T, axis=0, return_counts=True)
        lid, vals = uk[:, 0].astype(np.int64), uk[:, 1:].T
    b = _bit_matrix(vals, n_members)
    bw = b * cnt[:, None]
    starts = np.flatnonzero(np.r_[True, lid[1:] != lid[:-1]])  # keys are sorted by lesion
    per = np.add.reduceat(bw, starts, axis=0)  # (n, M) member voxels inside each lesion
    dice_sum = np.zeros(n)
    for i in range(n_members - 1):
        inter = np.add.reduceat(bw[:, i + 1:] * b[:, i:i + 1], starts, axis=0)
        dice_sum += _dice_matrix(inter, per[:, i:i + 1], per[:, i + 1:]).sum(axis=1)
    pairs = n_members * (n_members - 1) // 2
    return {"volume": np.bincount(ids, minlength=n + 1)[1:].astype(np.int64),
            "member_detection": (per > 0).mean(axis=1),
            "disagreement": 1.0 - dice_sum / pairs if pairs else np.zeros(n)}
