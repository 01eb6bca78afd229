"""Segmentation metrics: overlap, surface distances, lesion-wise detection, one-call evaluation.

Masks are numpy arrays (or torch tensors) of spatial shape ``(H, W)`` or ``(D, H, W)``;
``spacing`` is the voxel size in mm per axis (default 1.0). Surface metrics follow MONAI's
conventions (edge voxels, distances between voxel centres) and equal its values on non-empty
masks. Empty masks follow the ``empty=`` policy ("worst" by default, "nan" to opt out).
"""

from medseg_xai.metrics.evaluate import METRIC_KEYS, evaluate_case
from medseg_xai.metrics.lesions import LESION_COLUMNS, label_lesions, lesion_summary, lesions
from medseg_xai.metrics.overlap import (
    EMPTY_POLICIES,
    dice,
    edge_case,
    jaccard,
    mcc,
    precision,
    recall,
    specificity,
    volume,
    volume_difference,
)
from medseg_xai.metrics.surface import (
    average_surface_distance,
    edge_voxels,
    hausdorff_distance,
    image_diagonal_mm,
    mean_average_surface_distance,
    normalized_surface_dice,
)
from medseg_xai.metrics.conventions import CONVENTIONS

__all__ = [
    "CONVENTIONS",
    "EMPTY_POLICIES",
    "LESION_COLUMNS",
    "METRIC_KEYS",
    "average_surface_distance",
    "dice",
    "edge_case",
    "edge_voxels",
    "evaluate_case",
    "hausdorff_distance",
    "image_diagonal_mm",
    "jaccard",
    "label_lesions",
    "lesion_summary",
    "lesions",
    "mcc",
    "mean_average_surface_distance",
    "normalized_surface_dice",
    "precision",
    "recall",
    "specificity",
    "volume",
    "volume_difference",
]
