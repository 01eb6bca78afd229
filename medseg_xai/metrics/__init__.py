"""Segmentation metrics: overlap, surface distances, lesion-wise detection, one-call evaluation.

Masks are numpy arrays (or torch tensors) of spatial shape ``(H, W)`` or ``(D, H, W)``;
``spacing`` is the voxel size in mm per axis (default 1.0). Surface metrics follow MONAI's
conventions (edge voxels, distances between voxel centres) and equal its values on non-empty
masks; ``convention=`` reproduces MedPy, DeepMind surface-distance, MetricsReloaded and
panoptica instead. Empty masks follow the ``empty=`` policy ("worst" by default, "nan" to opt
out, "convention" for the peer library's values). Each metric's direction, range, unit and
definition: :mod:`medseg_xai.metrics.metadata`.
"""

from medseg_xai.metrics.agreement import AGREEMENT_COLUMNS, agreement
from medseg_xai.metrics.consensus import CONSENSUS_METHODS, Consensus, consensus
from medseg_xai.metrics.conventions import CONVENTIONS
from medseg_xai.metrics.evaluate import EXTRA_METRICS, METRIC_KEYS, evaluate_case
from medseg_xai.metrics.instances import match_instances, panoptic_quality
from medseg_xai.metrics.lesions import (
    LESION_COLUMNS,
    MATCHING_MODES,
    label_lesions,
    lesion_summary,
    lesions,
)
from medseg_xai.metrics.metadata import METRICS, metric_direction, metric_info
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
from medseg_xai.metrics.structure import boundary_iou, cldice, thickness
from medseg_xai.metrics.surface import (
    average_surface_distance,
    edge_voxels,
    hausdorff_distance,
    image_diagonal_mm,
    mean_average_surface_distance,
    normalized_surface_dice,
)

__all__ = [
    "AGREEMENT_COLUMNS",
    "CONSENSUS_METHODS",
    "CONVENTIONS",
    "Consensus",
    "agreement",
    "consensus",
    "EMPTY_POLICIES",
    "EXTRA_METRICS",
    "LESION_COLUMNS",
    "MATCHING_MODES",
    "METRICS",
    "METRIC_KEYS",
    "average_surface_distance",
    "boundary_iou",
    "cldice",
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
    "match_instances",
    "mcc",
    "mean_average_surface_distance",
    "metric_direction",
    "metric_info",
    "normalized_surface_dice",
    "panoptic_quality",
    "precision",
    "recall",
    "specificity",
    "thickness",
    "volume",
    "volume_difference",
]
