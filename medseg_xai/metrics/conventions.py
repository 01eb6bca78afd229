"""Surface-metric conventions of the peer libraries, and their empty-mask values.

A convention fixes what the surface of a mask is, how the directed distances are summarised
and which values empty masks get. ``"monai"`` is the default everywhere.

=================  ==========================  ==================================  =============================
convention         surface points              HDp / ASSD                          NSD at tolerance
=================  ==========================  ==================================  =============================
monai              edge voxels (face erosion)  max of directed p-th percentiles     share of edge voxels within
                   float32 distances           (torch.quantile); pooled mean       tolerance (``use_subvoxels``:
                                                                                   area-weighted surfels)
medpy              edge voxels, float64        p-th percentile of both directions  share of edge voxels
                                               pooled; pooled mean                 (MedPy has no NSD)
deepmind           surfels: 2x2x2 cube codes,  max of directed area-weighted       area-weighted surface Dice
                   area-weighted               percentiles; area-weighted pooled
metricsreloaded    edge voxels, float64        max of directed np.percentile;      share of edge voxels
                                               pooled mean
panoptica          edge voxels, float64        percentile of both directions       mean of the two directed
                                               pooled; mean of the directed means  shares
=================  ==========================  ==================================  =============================

``masd`` is the mean of the two directed mean distances in every convention (area-weighted for
deepmind). ``empty="convention"`` gives the empty-mask values each library itself returns
(:data:`EMPTY_VALUES`); ``"worst"`` (default) and ``"nan"`` apply one policy whatever the
convention, so that no case drops out of a cohort mean silently.
"""

from __future__ import annotations

import math

__all__ = ["CONVENTIONS", "EMPTY_VALUES", "check_convention"]

CONVENTIONS = ("monai", "medpy", "deepmind", "metricsreloaded", "panoptica")

_NAN, _INF = math.nan, math.inf
_SURFACE_KEYS = ("hd", "hd95", "assd", "masd", "nsd")


def _row(hd: float, hd95: float, assd: float, masd: float, nsd: float) -> dict[str, float]:
    return dict(zip(_SURFACE_KEYS, (hd, hd95, assd, masd, nsd)))


#: What each library returns for the surface metrics of an empty case (``empty="convention"``).
#: MONAI 1.6: NaN when both are empty; one empty: HD and ASSD inf, HD95 NaN, NSD 0.
#: MedPy raises ``RuntimeError`` on an empty mask: NaN here. DeepMind: both empty -> robust
#: HD inf, averages and surface Dice 0/0 = NaN; one empty -> distances inf, surface Dice 0.
#: MetricsReloaded: both empty -> distances 0 and NSD 1; one empty -> distances NaN (its code
#: leaves the worst case to aggregation) and NSD 0. panoptica's edge-case handler: no
#: instances -> NaN; one empty (zero true positives) -> distances inf, NSD 0.
EMPTY_VALUES: dict[str, dict[str, dict[str, float]]] = {
    "monai": {
        "both_empty": _row(_NAN, _NAN, _NAN, _NAN, _NAN),
        "one_empty": _row(_INF, _NAN, _INF, _INF, 0.0),
    },
    "medpy": {
        "both_empty": _row(_NAN, _NAN, _NAN, _NAN, _NAN),
        "one_empty": _row(_NAN, _NAN, _NAN, _NAN, _NAN),
    },
    "deepmind": {
        "both_empty": _row(_INF, _INF, _NAN, _NAN, _NAN),
        "one_empty": _row(_INF, _INF, _INF, _NAN, 0.0),
    },
    "metricsreloaded": {
        "both_empty": _row(0.0, 0.0, 0.0, 0.0, 1.0),
        "one_empty": _row(_NAN, _NAN, _NAN, _NAN, 0.0),
    },
    "panoptica": {
        "both_empty": _row(_NAN, _NAN, _NAN, _NAN, _NAN),
        "one_empty": _row(_INF, _INF, _INF, _INF, 0.0),
    },
}


def check_convention(convention: str) -> str:
    """Return ``convention`` if it is known, else raise a ValueError listing the valid ones."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    return convention
