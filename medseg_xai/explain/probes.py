"""Interventions on an image around one lesion, for the miss analysis (numpy / scipy / skimage).

Every probe changes the image in one stated way and returns the changed image together with
the mask where the lesion now is; :mod:`medseg_xai.explain.miss` re-runs the model on each.

- :func:`fill_lesion`: the lesion replaced by its local background (normalised convolution of
  the surrounding voxels), the reference point for contrast, size, moves and for the
  integrated-gradients baseline;
- :func:`scale_lesion_contrast`: the lesion's deviation from that background scaled;
- :func:`resize_lesion`: the lesion's deviation and mask resampled about its centroid;
- :func:`move_lesion`: the lesion's deviation and mask translated to another position;
- :func:`plausible_positions`: positions whose surroundings resemble the lesion's own;
- :func:`match_intensity`: the image's intensity distribution matched to reference images
  (piecewise-linear percentile standardisation, Nyul & Udupa 2000; or ``skimage.exposure``
  cumulative-histogram matching);
- :func:`denoise`: total-variation denoising (``skimage.restoration.denoise_tv_chambolle``)
  with a weight proportional to the estimated noise level (:func:`noise_sigma`).

The older ring measurements (:func:`local_background`, :func:`contrast_to_noise`,
:func:`scale_contrast`, :func:`contrast_sweep`) live here too; ``widgets.verdict`` re-exports
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "DEFAULT_FACTORS",
    "as_image",
    "contrast_sweep",
    "contrast_to_noise",
    "denoise",
    "fill_lesion",
    "local_background",
    "match_intensity",
    "move_lesion",
    "noise_sigma",
    "plausible_positions",
    "resize_lesion",
    "scale_contrast",
    "scale_lesion_contrast",
]

#: Contrast factors of the default sweep (1.0 = the image as acquired).
DEFAULT_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


# ----------------------------------------------------------------------------- checks
def _mask(mask: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == object:
        raise ValueError(f"{name}: expected a numeric or boolean mask, got dtype object")
    m = m != 0
    if shape is not None and m.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the image's spatial shape), got {m.shape}")
    if not m.any():
        raise ValueError(f"{name}: expected at least one foreground voxel, got an empty mask")
    return m


def _image(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name}: expected (H, W), (D, H, W) or (C, *spatial) array, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinite values")
    return arr


def as_image(image: Any, spatial_ndim: int, name: str = "image") -> np.ndarray:
    """``image`` as float32 ``(C, *spatial)`` with ``spatial_ndim`` spatial axes."""
    arr = _image(image, name)
    if arr.ndim == spatial_ndim:
        arr = arr[None]
    if arr.ndim != spatial_ndim + 1:
        raise ValueError(
            f"{name}: expected {spatial_ndim} spatial axes (with or without a channel axis "
            f"first), got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- ring measurements
def _ring(mask: np.ndarray, margin: int) -> np.ndarray:
    if int(margin) < 1:
        raise ValueError(f"margin: expected a positive number of voxels, got {margin!r}")
    grown = ndimage.binary_dilation(mask, iterations=int(margin))
    return grown & ~mask


def local_background(
    image2or3d: Any, mask: Any, *, margin: int = 3, exclude: Any = None
) -> tuple[float, float]:
    """Median and standard deviation of the intensities in a ring around a lesion.

    Parameters
    ----------
    image2or3d : array-like
        One channel, spatial shape only.
    mask : array-like
        The lesion (same shape).
    margin : int
        Ring width in voxels (the lesion dilated ``margin`` times, minus the lesion).
    exclude : array-like, optional
        Voxels kept out of the ring (e.g. other lesions).

    Returns
    -------
    (median, std) : tuple of float
    """
    img = np.asarray(image2or3d, dtype=np.float64)
    m = _mask(mask, "mask", img.shape)
    ring = _ring(m, margin)
    if exclude is not None:
        ring &= ~(np.asarray(exclude) != 0)
    if not ring.any():
        raise ValueError(
            f"mask: expected background voxels within {margin} voxels of the lesion, found none"
        )
    vals = img[ring]
    return float(np.median(vals)), float(vals.std())


def contrast_to_noise(
    image: Any, mask: Any, *, margin: int = 3, exclude: Any = None, channel: int = 0
) -> float:
    """Contrast-to-noise ratio of a lesion against its local background.

    ``CNR = (mean inside - median of the ring) / std of the ring``, with the ring of
    :func:`local_background`. Positive for a lesion brighter than its surroundings. When the ring
    is perfectly flat (std 0) the result is +/-inf for any contrast and 0 without contrast.
    """
    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    if not 0 <= channel < img.shape[0]:
        raise ValueError(f"channel: expected 0..{img.shape[0] - 1}, got {channel!r}")
    ch = img[channel]
    bg, sd = local_background(ch, m, margin=margin, exclude=exclude)
    diff = float(ch[_mask(m, "mask", ch.shape)].mean()) - bg
    if sd == 0.0:
        return 0.0 if diff == 0.0 else float(np.sign(diff) * np.inf)
    return diff / sd


def scale_contrast(
    image: Any, mask: Any, factor: float, *, margin: int = 3, exclude: Any = None
) -> np.ndarray:
    """Scale a lesion's contrast over its ring median by ``factor`` (every channel).

    Inside the mask a channel becomes ``background + factor * (image - background)``; outside
    it is unchanged. Factor 1 returns the image, 0 flattens the lesion. See
    :func:`scale_lesion_contrast` for the spatially varying background the miss analysis uses.
    """
    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    m = _mask(m, "mask", img.shape[1:])
    if not np.isfinite(factor):
        raise ValueError(f"factor: expected a finite number, got {factor!r}")
    out = img.copy()
    for c in range(img.shape[0]):
        bg, _ = local_background(img[c], m, margin=margin, exclude=exclude)
        out[c][m] = bg + float(factor) * (img[c][m] - bg)
    return out


def contrast_sweep(
    adapter: Any,
    image: Any,
    mask: Any,
    factors: Sequence[float] = DEFAULT_FACTORS,
    *,
    class_index: int = 1,
    margin: int = 3,
    exclude: Any = None,
    overlap_threshold: float = 0.1,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Lesion probability as the lesion's contrast over its ring median is scaled.

    Returns
    -------
    pandas.DataFrame
        Columns ``factor, mean_prob, max_prob, covered_fraction, detected``; a voxel is called
        lesion when its ``class_index`` probability exceeds ``threshold`` (one output channel:
        that channel).
    """
    import torch

    from medseg_xai.decide import called, is_detected

    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    m = _mask(m, "mask", img.shape[1:])
    facs = [float(f) for f in factors]
    if not facs:
        raise ValueError("factors: expected at least one contrast factor, got none")
    rows = []
    for f in facs:  # one at a time: a 3D volume per factor is the memory unit
        x = torch.from_numpy(scale_contrast(img, m, f, margin=margin, exclude=exclude)[None])
        with torch.no_grad():
            probs = adapter.probabilities(x)
        p = probs.detach().cpu().numpy()[0] if hasattr(probs, "detach") else np.asarray(probs)[0]
        channel = 0 if p.shape[0] == 1 else class_index
        if not 0 <= channel < p.shape[0]:
            raise ValueError(f"class_index: expected 0..{p.shape[0] - 1}, got {class_index!r}")
        fg = p[channel]
        # the toolkit's one decision rule (decide.py), not a threshold of its own
        covered = float(called(p, channel, threshold,
                               activation=getattr(adapter, "activation", "softmax"))[m].mean())
        rows.append({
            "factor": f,
            "mean_prob": float(fg[m].mean()),
            "max_prob": float(fg[m].max()),
            "covered_fraction": covered,
            "detected": is_detected(covered, overlap_threshold),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- interventions
def equivalent_radius(mask: np.ndarray) -> float:
    """Radius in voxels of the ball (disc in 2D) with the mask's voxel count."""
    n = float(np.count_nonzero(mask))
    if mask.ndim == 2:
        return float(np.sqrt(n / np.pi))
    return float((3.0 * n / (4.0 * np.pi)) ** (1.0 / 3.0))


def fill_lesion(image: Any, mask: Any, *, exclude: Any = None, sigma: float | None = None) -> np.ndarray:
    """The image with the lesion replaced by its local background.

    Inside ``mask`` each channel becomes the Gaussian-weighted mean of the voxels outside the
    lesion (and outside ``exclude``): normalised convolution ``G*(I w) / G*w`` with ``w`` the
    kept voxels, which follows background gradients (a lesion next to a tissue boundary) and
    carries no noise. Outside the mask the image is unchanged.

    Parameters
    ----------
    image : array
        ``(C, *spatial)`` float.
    mask : array
        The lesion, spatial shape.
    exclude : array, optional
        Voxels that are not background either (other lesions).
    sigma : float, optional
        Width of the Gaussian in voxels; default the lesion's equivalent radius (at least 1).

    Returns
    -------
    numpy.ndarray
        float32 ``(C, *spatial)``.
    """
    img = _image(image)
    m = _mask(mask, "mask", img.shape[1:])
    keep = ~m
    if exclude is not None:
        keep &= ~(np.asarray(exclude) != 0)
    s = float(sigma) if sigma is not None else max(1.0, equivalent_radius(m))
    # only the lesion's neighbourhood matters: work in its padded bounding box
    box = _box(m, pad=int(np.ceil(4 * s)) + 1)
    w = keep[box].astype(np.float64)
    out = img.copy()
    for c in range(img.shape[0]):
        ch = img[c][box].astype(np.float64)
        num = ndimage.gaussian_filter(ch * w, s, mode="nearest")
        den = ndimage.gaussian_filter(w, s, mode="nearest")
        fill = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
        if np.any(den[m[box]] <= 1e-6):  # no background within reach: the ring median
            ring = _ring(m, 3)
            pool = next((p for p in (ring & keep, keep, ring, ~m) if p.any()), m)
            fill[den <= 1e-6] = float(np.median(img[c][pool]))
        sub = out[c][box]
        sub[m[box]] = fill[m[box]].astype(np.float32)
    return out


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - pad), min(s, int(i.max()) + pad + 1))
                 for i, s in zip(idx, mask.shape))


def scale_lesion_contrast(
    image: Any, mask: Any, factor: float, *, filled: np.ndarray | None = None, exclude: Any = None
) -> np.ndarray:
    """The lesion's deviation from its local background (:func:`fill_lesion`) times ``factor``.

    ``filled + factor * (image - filled)`` inside the mask; 0 removes the lesion, 1 returns the
    image. ``filled`` may be passed when already computed.
    """
    img = _image(image)
    m = _mask(mask, "mask", img.shape[1:])
    if not np.isfinite(factor):
        raise ValueError(f"factor: expected a finite number, got {factor!r}")
    bg = fill_lesion(img, m, exclude=exclude) if filled is None else filled
    out = img.copy()
    out[:, m] = bg[:, m] + float(factor) * (img[:, m] - bg[:, m])
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(mask), dtype=np.float64)


def resize_lesion(
    image: Any,
    mask: Any,
    scale: float,
    *,
    filled: np.ndarray | None = None,
    exclude: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion resampled by ``scale`` per axis about its centroid (its contrast kept).

    The lesion is removed (:func:`fill_lesion`), then its deviation from the background and its
    mask are resampled (linear for the deviation; the linearly resampled mask above 0.5) and
    added to the local background of the new region. Voxels of ``exclude`` (other lesions) are left out of the new mask.

    Returns
    -------
    (image, mask) : the changed ``(C, *spatial)`` float32 image and the new lesion mask.
    """
    img = _image(image)
    m = _mask(mask, "mask", img.shape[1:])
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    bg = fill_lesion(img, m, exclude=exclude) if filled is None else filled
    dev = np.where(m[None], img - bg, 0.0).astype(np.float32)
    centre = _centroid(m)
    radius = 0.5 * max(sl.stop - sl.start for sl in _box(m, 0))
    out_box = tuple(
        slice(max(0, int(np.floor(c - radius * scale - 2))), min(s, int(np.ceil(c + radius * scale + 3))))
        for c, s in zip(centre, m.shape)
    )
    # output voxel y samples the source at centre + (y - centre) / scale
    offset = np.array([sl.start for sl in out_box], dtype=np.float64)
    shape = tuple(sl.stop - sl.start for sl in out_box)
    matrix = np.full(m.ndim, 1.0 / scale)
    shift = centre + (offset - centre) / scale
    new_mask = np.zeros(m.shape, dtype=bool)
    sub_m = ndimage.affine_transform(m.astype(np.float32), matrix, offset=shift, output_shape=shape,
                                     order=1, mode="constant", cval=0.0)
    new_mask[out_box] = sub_m > 0.5
    if exclude is not None:
        new_mask &= ~(np.asarray(exclude) != 0)
    if not new_mask.any():  # shrunk below one voxel: keep the centre voxel
        new_mask[tuple(int(round(c)) for c in centre)] = True
    # the new region's own background (noise-free), so the lesion carries only its own texture
    out = fill_lesion(bg, new_mask, exclude=exclude)
    for c in range(img.shape[0]):
        sub = ndimage.affine_transform(dev[c], matrix, offset=shift, output_shape=shape, order=1,
                                       mode="constant", cval=0.0)
        region = out[c][out_box]
        region[new_mask[out_box]] += sub[new_mask[out_box]]
    return out, new_mask


def move_lesion(
    image: Any,
    mask: Any,
    shift: Sequence[int],
    *,
    filled: np.ndarray | None = None,
    source_image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion translated by ``shift`` voxels: removed where it was, added where it goes.

    The lesion's deviation from its local background (its contrast and texture) is added to
    the local background of the new position (:func:`fill_lesion` there), so it keeps its
    contrast relative to whatever surrounds it and is not overlaid on the target's noise.

    Parameters
    ----------
    image : array
        ``(C, *spatial)``; the image the lesion is moved *into* (and removed from).
    mask : array
        The lesion in ``source_image`` (default ``image``).
    shift : sequence of int
        Voxels per spatial axis.
    filled : array, optional
        ``fill_lesion(source_image, mask)``, when already computed.
    source_image : array, optional
        Take the lesion from this image and only add it to ``image`` (nothing is removed from
        ``image``); used to move a detected lesion into a missed one's place.

    Returns
    -------
    (image, mask) : the changed image and the lesion's new mask.
    """
    img = _image(image)
    m = _mask(mask, "mask", img.shape[1:])
    src = img if source_image is None else _image(source_image, "source_image")
    bg = fill_lesion(src, m) if filled is None else filled
    dev = np.where(m[None], src - bg, 0.0).astype(np.float32)
    shift = tuple(int(s) for s in shift)
    if len(shift) != m.ndim:
        raise ValueError(f"shift: expected {m.ndim} ints, got {shift}")
    new_mask = _shift(m, shift)
    if new_mask.sum() != m.sum():
        raise ValueError(f"shift: {shift} moves part of the lesion out of the image")
    out = bg if source_image is None else img
    # transplant: the target place's local background plus the lesion's deviation (its own
    # texture), so the moved lesion is not overlaid on the target's noise
    out = fill_lesion(out, new_mask, exclude=m if source_image is None else None)
    for c in range(img.shape[0]):
        out[c][new_mask] += _shift(dev[c], shift)[new_mask]
    return out, new_mask


def _shift(a: np.ndarray, shift: tuple[int, ...]) -> np.ndarray:
    out = np.zeros_like(a)
    src, dst = [], []
    for s, n in zip(shift, a.shape):
        if s >= 0:
            src.append(slice(0, max(0, n - s)))
            dst.append(slice(min(n, s), n))
        else:
            src.append(slice(min(n, -s), n))
            dst.append(slice(0, max(0, n + s)))
    out[tuple(dst)] = a[tuple(src)]
    return out


def plausible_positions(
    image: Any,
    mask: Any,
    n: int = 3,
    *,
    exclude: Any = None,
    tolerance: float = 1.0,
    seed: int = 0,
) -> list[tuple[int, ...]]:
    """Shifts that move the lesion to places whose surroundings resemble its own.

    A position is plausible when the whole lesion (plus a ring of its radius) stays inside the
    image, it overlaps neither the lesion's own place (dilated by its radius) nor ``exclude``,
    and the smoothed intensity there (channel 0, Gaussian of the lesion's radius) is within
    ``tolerance`` robust standard deviations (1.4826 MAD of the image's above-mean voxels) of
    the median of the lesion's surrounding ring (its radius wide). Among plausible positions on
    a grid, ``n`` are chosen by farthest-point sampling (the first farthest from the lesion), so
    they spread over the image.

    Returns
    -------
    list of tuple of int
        Shifts (voxels per axis), possibly fewer than ``n``; empty when none is plausible.
    """
    img = _image(image)
    m = _mask(mask, "mask", img.shape[1:])
    ch = img[0].astype(np.float64)
    r = max(1.0, equivalent_radius(m))
    keep = ~m if exclude is None else ~m & ~(np.asarray(exclude) != 0)
    filled = fill_lesion(img[:1], m, exclude=exclude)[0]
    smooth = ndimage.gaussian_filter(np.where(keep, ch, filled), r, mode="nearest")
    centre = _centroid(m)
    ring = _ring(m, max(1, int(round(r)))) & keep
    bg_here = float(np.median(ch[ring])) if ring.any() else float(filled[m].mean())
    tissue = ch[ch > ch.mean()]
    spread = 1.4826 * float(np.median(np.abs(tissue - np.median(tissue)))) if tissue.size else 0.0
    spread = spread or float(ch.std()) or 1.0
    lo = np.array([int(i.min()) for i in np.nonzero(m)])
    hi = np.array([int(i.max()) for i in np.nonzero(m)])
    pad = int(np.ceil(r))
    blocked = ndimage.binary_dilation(~keep | m, iterations=pad + 1)
    step = max(1, int(round(r)))
    axes = [np.arange(pad - a, n - pad - b, step) for a, b, n in zip(lo, hi, m.shape)]
    if any(a.size == 0 for a in axes):
        return []
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, m.ndim)
    # blocked voxels under the shifted lesion, for every shift at once: correlate the blocked
    # map with the lesion's crop ('valid' position a = the crop's corner placed at a)
    from scipy.signal import fftconvolve

    crop = m[tuple(slice(a, b + 1) for a, b in zip(lo, hi))].astype(np.float64)
    hits = fftconvolve(blocked.astype(np.float64), crop[(slice(None, None, -1),) * m.ndim],
                       mode="valid")
    corner = grid + lo
    free = hits[tuple(corner.T)] < 0.5
    centres = np.rint(centre + grid).astype(int)
    similar = np.abs(smooth[tuple(centres.T)] - bg_here) <= tolerance * spread
    candidates = grid[free & similar]
    if not len(candidates):
        return []
    cand = np.array(candidates, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cand = cand[rng.permutation(len(cand))]  # ties broken by the seed
    chosen: list[int] = []
    dist = np.linalg.norm(cand, axis=1)  # distance from the lesion's own place
    for _ in range(min(n, len(cand))):
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(cand - cand[k], axis=1))
    return [tuple(int(v) for v in cand[k]) for k in chosen]


#: Percentiles of the piecewise-linear intensity standardisation (Nyul & Udupa 2000).
LANDMARKS: tuple[float, ...] = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def _piecewise(values: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through (src, dst) landmarks, extended linearly past both ends."""
    keep = np.concatenate([[True], np.diff(src) > 1e-12 * max(1.0, float(np.abs(src).max()))])
    src, dst = src[keep], dst[keep]
    if src.size < 2:
        return values + (float(dst[0]) - float(src[0]))
    out = np.interp(values, src, dst)
    lo, hi = values < src[0], values > src[-1]
    s_lo = (dst[1] - dst[0]) / (src[1] - src[0])
    s_hi = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out[lo] = dst[0] + s_lo * (values[lo] - src[0])
    out[hi] = dst[-1] + s_hi * (values[hi] - src[-1])
    return out


def _class_medians(channel: np.ndarray, classes: int) -> np.ndarray:
    from skimage.filters import threshold_multiotsu, threshold_otsu

    v = channel.ravel().astype(np.float64)
    cuts = [threshold_otsu(v)] if classes == 2 else list(threshold_multiotsu(v, classes=classes))
    label = np.digitize(v, cuts)
    return np.array([np.median(v[label == k]) if np.any(label == k) else np.nan
                     for k in range(classes)])


def match_intensity(
    image: Any, references: Sequence[Any], method: str = "tissue", *, classes: int = 2
) -> np.ndarray:
    """The image's intensity distribution matched to reference images, per channel.

    ``"tissue"`` (default): the image's voxels are split into ``classes`` intensity classes by
    Otsu's method (``skimage.filters``), and a piecewise-linear map sends each class median to
    the mean class median of the references (linear beyond the ends). Medians of tissue
    classes move with a device's gain and offset but not with noise, so the map corrects an
    intensity shift without squeezing noise (cumulative matching narrows a noisy tissue peak to
    the references' width, i.e. denoises) and without pinning a small lesion's voxels to
    whatever ranks the same in the references.
    ``"landmarks"``: the percentiles :data:`LANDMARKS` mapped to the references' mean
    percentiles (Nyul & Udupa 2000). ``"histogram"``: full cumulative-histogram matching to the
    pooled reference voxels (``skimage.exposure.match_histograms``).
    """
    img = _image(image)
    if len(references) == 0:
        raise ValueError("reference_images: expected at least one reference image, got none")
    if method not in ("tissue", "landmarks", "histogram"):
        raise ValueError(f"method: expected 'tissue', 'landmarks' or 'histogram', got {method!r}")
    if int(classes) < 2:
        raise ValueError(f"classes: expected at least 2, got {classes!r}")
    refs = [as_image(r, img.ndim - 1, "reference_images") for r in references]
    if any(r.shape[0] != img.shape[0] for r in refs):
        raise ValueError(
            f"reference_images: expected {img.shape[0]} channel(s) like the image, got "
            f"{sorted({r.shape[0] for r in refs})}"
        )
    out = np.empty_like(img)
    for c in range(img.shape[0]):
        values = img[c].astype(np.float64).ravel()
        if method == "histogram":
            from skimage.exposure import match_histograms

            pooled = np.concatenate([r[c].ravel() for r in refs])
            out[c] = match_histograms(values, pooled).reshape(img.shape[1:])
            continue
        if method == "landmarks":
            q = np.asarray(LANDMARKS, dtype=np.float64)
            src = np.percentile(values, q)
            dst = np.mean([np.percentile(r[c].astype(np.float64), q) for r in refs], axis=0)
        else:
            src = _class_medians(values, int(classes))
            dst = np.nanmean([_class_medians(r[c], int(classes)) for r in refs], axis=0)
            ok = np.isfinite(src) & np.isfinite(dst)
            src, dst = src[ok], dst[ok]
        out[c] = _piecewise(values, src, dst).reshape(img.shape[1:])
    return out.astype(np.float32)


def noise_sigma(channel: np.ndarray) -> float:
    """Robust noise standard deviation of one channel from first differences along each axis.

    ``1.4826 * median |x[i+1] - x[i]| / sqrt(2)``, the median over axes: smooth structure barely
    moves first differences, independent noise of standard deviation s gives differences of
    standard deviation s * sqrt(2).
    """
    a = np.asarray(channel, dtype=np.float64)
    values = [np.median(np.abs(np.diff(a, axis=ax))) for ax in range(a.ndim) if a.shape[ax] > 1]
    return float(1.4826 * np.median(values) / np.sqrt(2.0)) if values else 0.0


def denoise(image: Any, strength: float = 1.0) -> np.ndarray:
    """Total-variation denoising (Chambolle) of each channel, weight = strength x noise sigma."""
    from skimage.restoration import denoise_tv_chambolle

    img = _image(image)
    out = np.empty_like(img)
    for c in range(img.shape[0]):
        sigma = noise_sigma(img[c])
        if sigma <= 0:
            out[c] = img[c]
            continue
        out[c] = denoise_tv_chambolle(img[c], weight=float(strength) * sigma)
    return out.astype(np.float32)
