"""Failure gallery of structure classes: per class, the worst case of every group and the
region of that class the prediction missed, explained for that class's output channel.

A structure (organ, tissue, vessel) has no lesions, so the lesion gallery of
:mod:`medseg_xai.audit.explanations` has nothing to explain in an organ audit. Here each
structure class ``c`` (``settings["classes"]``, kind ``structure``) gets its own entries:

- **selection**: the worst ``per_group`` evaluated cases of every group of every plain stratum
  (and overall) by that class's Dice, read from the audit's own table (``dice_<name>`` of
  ``AuditResult.cases``; never recomputed), ranked by
  :func:`medseg_xai.audit.analysis.rank_worst`; each case once per class, listing its groups;
- **region**: the class's reference minus its prediction, both label maps decided under the
  audit's recorded rules (:func:`medseg_xai.decide.reference_mask`, labels, reference standard,
  and for model audits :func:`medseg_xai.decide.predict` at the audit's threshold);
- **evidence**: :func:`medseg_xai.explain.explain` of
  :func:`medseg_xai.targets.missed` on the class's output channel (the inverse of
  :func:`medseg_xai.decide.channel_label`), with the share of positive attribution inside the
  missed region.

Entries carry the lesion gallery's keys plus ``class`` (name), ``class_value``,
``class_index`` (the output channel, None without a model), ``region_voxels`` and
``reference_voxels`` (of the class in that case), so views group and show them per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.analysis import rank_worst
from medseg_xai.decide import channel_label

__all__ = ["class_entries", "explain_class_region", "structure_classes"]


def structure_classes(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The audit's declared structure classes (``{value, name, kind}``), in declaration order."""
    return [dict(c) for c in (settings.get("classes") or [])
            if isinstance(c, Mapping) and c.get("kind") == "structure"]


def class_entries(result: Any, *, per_group: int = 1, max_cases: int = 12
                  ) -> list[dict[str, Any]]:
    """Gallery entries (not yet filled) of every structure class: worst cases per group.

    ``max_cases`` bounds the cases of each class. A class whose Dice column is absent from the
    audit's table gets no entry (nothing to rank by).
    """
    cases = result.cases
    plain = [s for s in result.strata if " x " not in s and s in cases.columns]
    out: list[dict[str, Any]] = []
    for cls in structure_classes(result.settings):
        metric = f"dice_{cls['name']}"
        if metric not in cases.columns:
            continue
        picked: dict[str, dict[str, Any]] = {}
        for stratum in [None, *plain]:
            groups = ([None] if stratum is None else sorted(
                pd.unique(cases.loc[cases["status"] == "ok", stratum].dropna()), key=str))
            for group in groups:
                where = "overall" if stratum is None else f"{stratum} = {group}"
                for _, rec in rank_worst(cases, metric, stratum=stratum, group=group,
                                         n=per_group).iterrows():
                    cid = str(rec["case_id"])
                    if cid in picked:
                        picked[cid]["picked_for"].append(where)
                    elif len(picked) < max_cases:
                        picked[cid] = {"case_id": cid, "category": "worst_class",
                                       "picked_for": [where], "metric": metric,
                                       "value": float(rec[metric]), "class": cls["name"],
                                       "class_value": int(cls["value"])}
        out += list(picked.values())
    return out


def output_channel(adapter: Any, value: int, image: Any) -> int:
    """The output channel whose call is label ``value`` (inverse of ``channel_label``)."""
    if getattr(adapter, "output_channels", None) is None:
        adapter.logits(image)  # the channel count is known after one forward pass
    k = int(adapter.output_channels)
    act = "sigmoid" if getattr(adapter, "activation", "softmax") == "sigmoid" else "softmax"
    for channel in range(k):
        if channel_label(channel, k, act) == value:
            return channel
    raise ValueError(f"class value {value}: no output channel of the model ({k} channels, "
                     f"{act}) is called label {value}")


def explain_class_region(adapter: Any, case: Any, value: int, *, pred: np.ndarray,
                         ref: np.ndarray, method: str | None = None,
                         seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Attribution of one class's missed region (boolean class masks ``pred``, ``ref``) on
    the class's own output channel.

    Returns ``(analysis, attribution map)``; ``analysis`` holds ``kind, class_index, method,
    target`` (in words), ``region_voxels`` and ``localisation`` (share of the positive
    attribution that falls inside the missed region).
    """
    from medseg_xai import targets
    from medseg_xai.explain.core import default_methods, explain

    bind = getattr(adapter, "with_geometry", None)  # models that resample need the geometry
    adapter = bind(case.spacing, case.affine) if callable(bind) else adapter
    channel = output_channel(adapter, int(value), case.image)
    target = targets.missed(channel, pred=pred, ref=ref)
    method = method or default_methods(adapter)[0]
    kwargs = {"seed": seed} if method == "smoothgrad" else {}
    exp = explain(adapter, case.image, target, method=method, **kwargs)
    att = np.asarray(exp.attribution, dtype=np.float32)
    pos = np.clip(att, 0, None)
    total = float(pos.sum())
    share = float(pos[target.mask].sum() / total) if total > 0 else float("nan")
    analysis = {"kind": "class_region", "class_index": channel, "method": method,
                "target": target.describe(), "region_voxels": target.n_voxels,
                "localisation": share}
    return analysis, att
