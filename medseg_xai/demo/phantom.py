"""Head-like 3D phantoms with lesions, sampled as a given scanner would sample them.

A subject's anatomy lives in physical space (mm) on a 1 mm reference grid as soft tissue fractions
(scalp, skull, CSF, grey matter, white matter): an ellipsoidal head with nested shells, a folded
cortex (a band under the brain surface cut by sulci that follow the zero set of a smooth random
field), lateral ventricles that grow with age and deep grey-matter nuclei. Lesions are blobs made of
one to three overlapping ellipsoids placed in the brain, mostly in white matter.

:func:`render` turns anatomy and lesions into one scan: device-specific tissue intensities and
lesion conspicuity, a smooth bias field, area-averaging onto the device's voxel grid (so thick
slices blur small lesions by partial volume, as they do in real scans), Rician noise and the
vendor's intensity scale. The reference label is the lesion partial-volume fraction >= 0.5 on the
same device grid, so lesion volumes in mm^3 agree across devices up to partial-volume effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg_xai.demo.scanners import Device

__all__ = [
    "Anatomy",
    "Lesion",
    "device_grid",
    "make_anatomy",
    "render",
    "sample_lesions",
    "simulate_readers",
    "READER_PROFILES",
]

TISSUES = ("scalp", "skull", "csf", "gm", "wm")


@dataclass
class Anatomy:
    """Tissue fractions of one subject on the 1 mm reference grid.

    Attributes
    ----------
    fractions : dict
        Tissue name -> float32 array of the reference shape with the tissue's volume fraction.
    brain : numpy.ndarray
        Soft brain mask (grey + white matter + internal CSF), float32.
    texture : numpy.ndarray
        Smooth multiplicative intensity texture (close to 1).
    lesion_sites : numpy.ndarray
        ``(n, 3)`` voxel indices where lesions may be centred (white matter, with extra weight
        next to the ventricles), and ``lesion_weights`` their sampling probabilities.
    """

    fractions: dict[str, np.ndarray]
    brain: np.ndarray
    texture: np.ndarray
    lesion_sites: np.ndarray
    lesion_weights: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the reference grid (also its field of view in mm)."""
        return tuple(self.brain.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Lesion:
    """One lesion: overlapping ellipsoid lobes in mm on the reference grid.

    Attributes
    ----------
    lobes : tuple
        ``((centre_zyx_mm, radii_zyx_mm), ...)``; centres are voxel coordinates of the 1 mm
        reference grid.
    contrast : float
        Intrinsic hyperintensity relative to white matter (0.2 = faint, 1.0 = bright).
    """

    lobes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    contrast: float

    @property
    def radius_mm(self) -> float:
        """Equivalent radius of the main lobe (geometric mean of its semi-axes) in mm."""
        return float(np.prod(self.lobes[0][1]) ** (1.0 / 3.0))


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return [np.arange(n, dtype=np.float32).reshape([-1 if i == k else 1 for i in range(3)])
            for k, n in enumerate(shape)]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma`` voxels.

    Long correlation lengths are drawn on a coarser grid and interpolated up (much faster, the
    field being smooth at that scale anyway).
    """
    factor = max(1, int(sigma // 2))
    small = tuple(max(4, -(-n // factor)) for n in shape)
    f = rng.standard_normal(small).astype(np.float32)
    f = ndimage.gaussian_filter(f, sigma * small[0] / shape[0], mode="wrap")
    if small != tuple(shape):
        mz, my, mx = (_interp_matrix(n, m) for n, m in zip(shape, small))
        f = np.matmul(np.matmul(my, np.tensordot(mz, f, axes=(1, 0))), mx.T)
    return (f - f.mean()) / (f.std() + 1e-8)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation (periodic) from ``n_in`` to ``n_out`` samples over the same extent."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    i0 = np.floor(x).astype(int)
    w = (x - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0 % n_in), 1.0 - w)
    np.add.at(m, (np.arange(n_out), (i0 + 1) % n_in), w)
    return m


def _soft_ellipsoid(coords: list[np.ndarray], centre, radii) -> np.ndarray:
    """Volume fraction of an ellipsoid per 1 mm voxel, from a first-order signed distance."""
    terms = [(c - m) / r for c, m, r in zip(coords, centre, radii)]
    f = sum(t * t for t in terms)
    grad = 2.0 * np.sqrt(sum((t / r) ** 2 for t, r in zip(terms, radii)))
    dist = (f - 1.0) / (grad + 1e-6)  # mm, negative inside
    return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)


def make_anatomy(
    rng: np.random.Generator, shape: tuple[int, int, int], age: float, sex: str
) -> Anatomy:
    """Draw one subject's head on the 1 mm reference grid of ``shape`` (field of view in mm).

    Head size depends on ``sex``; ventricle size, cortical thickness and sulcal width on ``age``.
    """
    shape = tuple(int(s) for s in shape)
    centre = np.array(shape, dtype=np.float32) / 2.0 - 0.5 + rng.uniform(-1.0, 1.0, 3)
    size = (1.03 if sex == "M" else 0.97) * rng.uniform(0.95, 1.05)
    axes = np.array([0.43 * shape[0], 0.45 * shape[1], 0.38 * shape[2]]) * size
    axes *= rng.uniform(0.96, 1.04, 3)
    # Irregular head outline: warp the coordinates radially by a smooth field.
    warp = 1.0 + 0.035 * _smooth_field(rng, shape, sigma=6.0)
    coords = [centre[k] + (c - centre[k]) / warp for k, c in enumerate(_grid(shape))]

    t_scalp, t_skull, t_csf = rng.uniform(1.6, 2.4), rng.uniform(1.8, 2.6), rng.uniform(0.8, 1.6)
    head = _soft_ellipsoid(coords, centre, axes)
    skull_out = _soft_ellipsoid(coords, centre, axes - t_scalp)
    skull_in = _soft_ellipsoid(coords, centre, axes - t_scalp - t_skull)
    brain_axes = axes - t_scalp - t_skull - t_csf
    brain = _soft_ellipsoid(coords, centre, brain_axes)

    # Depth below the brain surface (first-order distance), for the cortical band and sulci.
    terms = [(c - m) / r for c, m, r in zip(coords, centre, brain_axes)]
    f = sum(t * t for t in terms)
    grad = 2.0 * np.sqrt(sum((t / r) ** 2 for t, r in zip(terms, brain_axes)))
    depth = -(f - 1.0) / (grad + 1e-6)

    ageing = (age - 20.0) / 60.0  # 0 at 20 years, 1 at 80
    cortex = (2.8 - 0.5 * ageing) + 0.7 * _smooth_field(rng, shape, sigma=4.0)
    folds = _smooth_field(rng, shape, sigma=2.2)
    sulc_depth = (5.5 + 1.0 * ageing) + 1.2 * _smooth_field(rng, shape, sigma=5.0)
    width = 0.12 + 0.10 * ageing
    sulci = (np.abs(folds) < width) & (depth < sulc_depth)
    gm = (depth < cortex) | ((np.abs(folds) < 3.0 * width) & (depth < sulc_depth + 1.0))

    # Lateral ventricles either side of the midline (axis 2), longer front to back (axis 1).
    vent_scale = (0.75 + 0.6 * ageing) * rng.uniform(0.85, 1.15)
    vent_r = np.array([0.22, 0.42, 0.15]) * brain_axes * vent_scale
    vent_off = 0.16 * brain_axes[2]
    vent = np.zeros(shape, np.float32)
    deep = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        c = centre + np.array([0.12 * brain_axes[0], -0.05 * brain_axes[1], side * vent_off])
        vent = np.maximum(vent, _soft_ellipsoid(coords, c, vent_r * rng.uniform(0.9, 1.1, 3)))
        c_deep = centre + np.array([-0.1 * brain_axes[0], 0.1 * brain_axes[1],
                                    side * 0.38 * brain_axes[2]])
        deep = np.maximum(deep, _soft_ellipsoid(coords, c_deep, np.array([0.22, 0.2, 0.14])
                                                * brain_axes))

    csf_in = np.maximum(sulci.astype(np.float32), vent)
    gm_in = np.maximum(gm.astype(np.float32), 0.9 * deep) * (1.0 - csf_in)
    # Partial volume at tissue borders inside the brain.
    csf_in = ndimage.gaussian_filter(csf_in, 0.6)
    gm_in = ndimage.gaussian_filter(gm_in, 0.6)
    wm_in = np.clip(1.0 - csf_in - gm_in, 0.0, 1.0)

    fractions = {
        "scalp": head - skull_out,
        "skull": skull_out - skull_in,
        "csf": (skull_in - brain) + brain * csf_in,
        "gm": brain * gm_in,
        "wm": brain * wm_in,
    }
    fractions = {k: np.clip(v, 0.0, 1.0).astype(np.float32) for k, v in fractions.items()}
    texture = (1.0 + 0.03 * _smooth_field(rng, shape, sigma=3.0)).astype(np.float32)

    # Lesion centres: deep white matter, three times as likely next to the ventricles.
    wm_core = (fractions["wm"] > 0.9) & (depth > 1.5)
    near_vent = ndimage.binary_dilation(vent > 0.5, iterations=3)
    sites = np.argwhere(wm_core)
    weights = 1.0 + 2.0 * near_vent[wm_core]
    return Anatomy(
        fractions=fractions,
        brain=brain,
        texture=texture,
        lesion_sites=sites,
        lesion_weights=(weights / weights.sum()).astype(np.float64),
    )


def sample_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    n_lesions: int,
    radius_median_mm: float,
    radius_sigma: float,
) -> list[Lesion]:
    """Draw ``n_lesions`` lesions with log-normal radii (1 to 7 mm) and varied contrast."""
    lesions: list[Lesion] = []
    if n_lesions == 0 or len(anatomy.lesion_sites) == 0:
        return lesions
    for _ in range(n_lesions):
        radius = float(np.clip(radius_median_mm * np.exp(radius_sigma * rng.standard_normal()),
                               1.0, 7.0))
        centre = anatomy.lesion_sites[rng.choice(len(anatomy.lesion_sites),
                                                 p=anatomy.lesion_weights)]
        centre = centre + rng.uniform(-0.5, 0.5, 3)
        radii = radius * rng.uniform(0.75, 1.3, 3)
        lobes = [(tuple(float(v) for v in centre), tuple(float(v) for v in radii))]
        # Larger lesions are irregular: extra lobes around the main one.
        n_extra = int(rng.integers(0, 3)) if radius > 2.5 else 0
        for _ in range(n_extra):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            c = centre + 0.7 * radius * direction
            r = radius * rng.uniform(0.45, 0.75, 3)
            lobes.append((tuple(float(v) for v in c), tuple(float(v) for v in r)))
        # Mostly clear lesions, a fair share faint (beta skewed towards bright).
        contrast = float(0.3 + 0.7 * rng.beta(2.6, 1.4))
        lesions.append(Lesion(lobes=tuple(lobes), contrast=contrast))
    return lesions


def _lesion_fraction(shape: tuple[int, ...], lesion: Lesion) -> tuple[tuple[slice, ...], np.ndarray]:
    """Soft occupancy of ``lesion`` within its bounding box on the reference grid."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for c, r in lesion.lobes:
        lo = np.minimum(lo, np.array(c) - np.array(r) - 2)
        hi = np.maximum(hi, np.array(c) + np.array(r) + 2)
    box = tuple(slice(int(max(0, np.floor(a))), int(min(n, np.ceil(b) + 1)))
                for a, b, n in zip(lo, hi, shape))
    coords = [np.arange(s.start, s.stop, dtype=np.float32).reshape(
        [-1 if i == k else 1 for i in range(3)]) for k, s in enumerate(box)]
    occ = np.zeros([s.stop - s.start for s in box], np.float32)
    for c, r in lesion.lobes:
        occ = np.maximum(occ, _soft_ellipsoid(coords, c, r))
    return box, occ


def device_grid(ref_shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Array shape of a device with ``spacing`` covering the reference field of view (1 mm grid)."""
    return tuple(max(1, int(round(n / s))) for n, s in zip(ref_shape, spacing))


def _box_matrix(n_ref: int, spacing: float) -> np.ndarray:
    """Area-averaging matrix from a 1 mm grid of ``n_ref`` voxels to voxels of ``spacing`` mm.

    Both grids are centred on the same field of view; each output voxel averages the reference
    voxels it overlaps, weighted by the overlap length (the slice profile of a thick slice).
    """
    n_out = max(1, int(round(n_ref / spacing)))
    start = n_ref / 2.0 - n_out * spacing / 2.0
    lo = start + np.arange(n_out) * spacing
    hi = lo + spacing
    ref_lo = np.arange(n_ref, dtype=np.float64)
    overlap = np.clip(np.minimum(hi[:, None], ref_lo[None, :] + 1.0)
                      - np.maximum(lo[:, None], ref_lo[None, :]), 0.0, None)
    return (overlap / spacing).astype(np.float32)


def _resample(volume: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    mz, my, mx = (_box_matrix(n, s) for n, s in zip(volume.shape, spacing))
    out = np.tensordot(mz, volume, axes=(1, 0))
    out = np.matmul(my, out)
    return np.matmul(out, mx.T)


def device_affine(ref_shape: tuple[int, ...], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel-to-world affine (mm) of the device grid, centred on the field of view.

    Array axis 0 runs inferior -> superior (the slice axis), axis 1 posterior -> anterior and
    axis 2 left -> right, so axial slices are ``image[k]``.
    """
    shape = device_grid(ref_shape, spacing)
    affine = np.zeros((4, 4))
    affine[0, 2] = spacing[2]  # world x <- array axis 2
    affine[1, 1] = spacing[1]  # world y <- array axis 1
    affine[2, 0] = spacing[0]  # world z <- array axis 0
    affine[3, 3] = 1.0
    for world, axis in ((0, 2), (1, 1), (2, 0)):
        affine[world, 3] = -(shape[axis] - 1) * spacing[axis] / 2.0
    return affine


def render(
    anatomy: Anatomy,
    lesions: list[Lesion],
    device: Device,
    rng: np.random.Generator,
    *,
    return_fraction: bool = False,
) -> tuple[np.ndarray, ...]:
    """Acquire one scan of ``anatomy`` with ``lesions`` on ``device``.

    With ``return_fraction`` a fourth array follows: the lesion partial-volume fraction on the
    device grid (float32), from which the label and simulated readers are thresholded.

    Returns
    -------
    image : numpy.ndarray
        float32 ``(nz, ny, nx)`` on the device grid, in the device's intensity units (whole
        numbers from 0 to 32767, as a scanner stores them).
    label : numpy.ndarray
        uint8 label map of the same shape: 0 background, 1 lesion.
    affine : numpy.ndarray
        4x4 voxel-to-world affine in mm carrying the device spacing.
    """
    tissue = device.tissue
    intensity = sum(anatomy.fractions[t] * tissue[t] for t in TISSUES) * anatomy.texture
    lesion_frac = np.zeros(anatomy.shape, np.float32)
    for lesion in lesions:
        box, occ = _lesion_fraction(anatomy.shape, lesion)
        occ = occ * anatomy.brain[box]
        level = tissue["wm"] * (1.0 + lesion.contrast * device.lesion_contrast)
        intensity[box] = intensity[box] * (1.0 - occ) + occ * level * anatomy.texture[box]
        lesion_frac[box] = np.maximum(lesion_frac[box], occ)
    # Receive-coil bias: smooth multiplicative field, stronger on some devices.
    bias = np.exp(device.bias * _smooth_field(rng, anatomy.shape, sigma=10.0))
    image = _resample(intensity * bias, device.spacing)
    fraction = _resample(lesion_frac, device.spacing)
    label = (fraction >= 0.5).astype(np.uint8)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    sigma = device.noise * tissue["wm"]
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    # Scanners store integers: round to the device's units (kept as float32 here).
    image = np.minimum(np.rint(np.sqrt(real * real + imag * imag) * device.scale), 32767.0)
    affine = device_affine(anatomy.shape, device.spacing)
    if return_fraction:
        return image.astype(np.float32), label, affine, fraction.astype(np.float32)
    return image.astype(np.float32), label, affine


#: Simulated readers: (name, threshold offset on the partial-volume fraction, share of small
#: lesions missed, what counts as small in mm^3). r2 outlines generously, r3 tightly and misses
#: small lesions more often.
#: Amplitude of each reader's boundary jitter (threshold units of the partial-volume fraction).
READER_JITTER = 0.2
READER_PROFILES: tuple[tuple[str, float, float, float], ...] = (
    ("r1", 0.0, 0.1, 150.0),
    ("r2", -0.15, 0.1, 150.0),
    ("r3", 0.12, 0.6, 150.0),
)


def simulate_readers(
    fraction: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    n_readers: int = 3,
) -> dict[str, np.ndarray]:
    """Readers' masks of one scan: jittered boundaries, small lesions sometimes missed.

    Each reader thresholds the lesion partial-volume fraction at its own level plus a smooth
    random field (boundary jitter of about a voxel, correlated along the outline, as a hand
    contour is), then drops some of its connected components smaller than the profile's size
    limit (:data:`READER_PROFILES`; readers beyond the third repeat the profiles).

    Parameters
    ----------
    fraction : numpy.ndarray
        Lesion partial-volume fraction on the device grid (``render(..., return_fraction=True)``).
    spacing : tuple of float
        Voxel size in mm (for lesion volumes).
    rng : numpy.random.Generator
        Seeded generator (use a stream of its own so the scan itself does not change).
    n_readers : int
        Number of readers (``r1, r2, ...``).

    Returns
    -------
    dict
        Reader name -> uint8 mask (0 background, 1 lesion).
    """
    out: dict[str, np.ndarray] = {}
    voxel = float(np.prod(spacing))
    box = fraction > 0.05
    for i in range(int(n_readers)):
        base, offset, p_miss, small = READER_PROFILES[i % len(READER_PROFILES)]
        name = base if i < len(READER_PROFILES) else f"r{i + 1}"
        jitter = READER_JITTER * _smooth_field(rng, fraction.shape, sigma=2.0)
        mask = box & (fraction >= np.clip(0.5 + offset + jitter, 0.15, 0.9))
        lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        if n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel
            drop = (sizes < small) & (rng.random(n + 1) < p_miss)
            drop[0] = False
            mask &= ~drop[lab]
        out[name] = mask.astype(np.uint8)
    return out
