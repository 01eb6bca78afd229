"""The one decision module: every "is this voxel / lesion called?" is answered here.

Four decisions, each made once, with the rules an audit records (:class:`DecisionRules`,
``AuditResult.settings`` / ``AuditPlan.decision``):

1. probabilities -> label map (:func:`label_map`, :func:`call_threshold`): threshold,
   activation, classes;
2. reference standard -> reference mask (:func:`reference_mask`): the ``label`` column, a
   consensus of readers (STAPLE, majority) or one named reader, and the declared label values
   (:func:`foreground`);
3. mask -> lesions -> ids (:func:`components`, :func:`lesion_mask`, :func:`parse_lesion_id`):
   connected components under the audit's connectivity, numbered ``ref-1..`` / ``pred-1..`` in
   ``scipy.ndimage.label`` order;
4. lesion -> status (:func:`lesion_status`, :func:`is_detected`): the matching mode and the one
   "covered share >= overlap threshold" rule.

So a lesion id names the same voxels, and a status the same decision, in the audit, its
gallery, ``explain_miss``, the CLI and the widgets. The module stays light (numpy, scipy):
torch loads only when :func:`label_map` is given a tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from medseg_xai.metrics.lesions import is_detected  # the one covered-share rule

__all__ = [
    "ACTIVATIONS",
    "DecisionRules",
    "LESION_KINDS",
    "call_threshold",
    "called",
    "channel_label",
    "components",
    "foreground",
    "is_detected",
    "label_map",
    "labels_from_probabilities",
    "lesion_mask",
    "lesion_status",
    "lesion_table",
    "parse_lesion_id",
    "predict",
    "reference_from_readers",
    "reference_mask",
]

#: How a model's outputs became probabilities (``"none"``: already probabilities).
ACTIVATIONS = ("softmax", "sigmoid", "none")
#: Lesion-id prefixes: ``ref-N`` a reference lesion, ``pred-N`` a predicted component.
LESION_KINDS = ("ref", "pred")


@dataclass(frozen=True)
class DecisionRules:
    """The rules every decision of an audit follows (the plan's ``decision`` part).

    Attributes
    ----------
    threshold : float or None
        Probability a voxel must exceed to be called (:func:`label_map`); None: the adapter's
        own ``threshold``, else 0.5 for one channel / sigmoid outputs and the argmax for
        softmax outputs (:func:`call_threshold`).
    labels : tuple of int or None
        Label values that are foreground (None: binary ``{0, 1}`` label files).
    label_names : tuple of str or None
        Names of ``labels`` (same order), when declared.
    classes : tuple of dict
        Declared classes ``{"value", "name", "kind"}`` (kind ``"structure"`` or ``"lesion"``);
        empty when not declared.
    reference : str or None
        Reference standard: None (the ``label`` column), ``"staple"``, ``"majority"`` or a
        reader's name (``label_<reader>`` column).
    connectivity : int or None
        Neighbourhood of lesion components (1 = faces ... ndim = full; None = full).
    matching : {"overlap", "hungarian"}
        Covered-share rule or one-to-one IoU matching (``metrics.lesions``).
    overlap_threshold : float
        Share of a reference lesion's voxels that must be called for a detection.
    iou_threshold : float
        Smallest IoU of a pair under ``matching="hungarian"``.
    binarize : bool
        Count every label value ``> 0`` as foreground (instead of failing on undeclared ones).
    reference_threshold : float
        Soft (probabilistic 0..1) reference files count voxels ``>=`` it as foreground
        (:func:`medseg_xai.cohort.load_case_from_paths`).
    """

    threshold: float | None = None
    labels: tuple[int, ...] | None = None
    label_names: tuple[str, ...] | None = None
    classes: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    reference: str | None = None
    connectivity: int | None = None
    matching: str = "overlap"
    overlap_threshold: float = 0.1
    iou_threshold: float = 0.5
    binarize: bool = False
    reference_threshold: float = 0.5

    @property
    def label_setting(self) -> dict[int, str] | list[int] | None:
        """``labels`` as the metrics take them: ``{value: name}`` when named, else a list."""
        if self.labels is None:
            return None
        if self.label_names is not None:
            return dict(zip(self.labels, self.label_names))
        return list(self.labels)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> DecisionRules:
        """The rules an audit recorded in ``AuditResult.settings`` (missing keys: defaults)."""
        s = dict(settings or {})
        labels, names = _split_labels(s.get("labels"))
        known = {f.name for f in fields(cls)} - {"labels", "label_names", "classes"}
        kw = {k: s[k] for k in known if k in s}
        return cls(labels=labels, label_names=names,
                   classes=tuple(dict(c) for c in s.get("classes") or ()), **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``labels`` as :attr:`label_setting`)."""
        d = asdict(self)
        d["labels"] = self.label_setting
        d.pop("label_names")
        d["classes"] = [dict(c) for c in self.classes]
        return d


def _split_labels(labels: Any) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
    if labels is None:
        return None, None
    if isinstance(labels, Mapping):
        return (tuple(int(k) for k in labels), tuple(str(v) for v in labels.values()))
    return tuple(int(v) for v in labels), None


# ------------------------------------------------------------------ 1. probabilities -> labels
def call_threshold(threshold: float | None, adapter_threshold: float | None,
                   n_channels: int, activation: str) -> float | None:
    """The threshold :func:`label_map` is called with.

    An explicit ``threshold`` (the plan's) wins, then the adapter's own; without either, 0.5
    for one channel or sigmoid outputs and None (the argmax) for softmax outputs.
    """
    for t in (threshold, adapter_threshold):
        if t is not None:
            return float(t)
    return 0.5 if n_channels == 1 or activation == "sigmoid" else None


def label_map(probabilities: Any, threshold: float | None = None, *,
              activation: str = "softmax", channel_axis: int = 0) -> Any:
    """Turn class probabilities into a label map: THE decision rule of the toolkit.

    Parameters
    ----------
    probabilities : numpy.ndarray or torch.Tensor
        Per-class probabilities with the class axis at ``channel_axis``: ``(K, *spatial)`` by
        default, ``(N, K, *spatial)`` with ``channel_axis=1``.
    threshold : float, optional
        * One channel (sigmoid, or probabilities of the foreground): label 1 where
          ``p > threshold`` (default 0.5).
        * Several sigmoid channels (multi-label): ``1 + argmax`` where the largest probability
          exceeds ``threshold`` (default 0.5), else 0.
        * Softmax (channel 0 = background): ``None`` is the argmax. A number labels a voxel
          with its most probable foreground class ``c`` when ``p_c > threshold``, else 0; for
          two classes and 0.5 this is the argmax.
    activation : {"softmax", "sigmoid", "none"}
        How the probabilities were made (``"none"`` is read like ``"softmax"``).

    Returns
    -------
    Same library as the input: integer label map without the class axis (int64).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if threshold is not None and not (isinstance(threshold, (int, float, np.floating))
                                      and not isinstance(threshold, bool)
                                      and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold: expected a probability in [0, 1] or None, got {threshold!r}")
    if type(probabilities).__module__.startswith("torch"):
        return _label_map_torch(probabilities, threshold, activation, channel_axis)
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim < 2 or not -p.ndim <= channel_axis < p.ndim:
        raise ValueError(f"probabilities: expected a class axis {channel_axis} and spatial axes, "
                         f"got shape {tuple(p.shape)}")
    p = np.moveaxis(p, channel_axis, 0)
    t = 0.5 if threshold is None else float(threshold)
    if p.shape[0] == 1:
        return (p[0] > t).astype(np.int64)
    if activation != "sigmoid" and threshold is None:
        return p.argmax(axis=0).astype(np.int64)
    fg = p if activation == "sigmoid" else p[1:]
    idx = fg.argmax(axis=0)
    best = np.take_along_axis(fg, idx[None], axis=0)[0]
    return np.where(best > t, idx + 1, 0).astype(np.int64)


def _label_map_torch(p: Any, threshold: float | None, activation: str, channel_axis: int) -> Any:
    import torch

    if p.ndim < 2 or not -p.ndim <= channel_axis < p.ndim:
        raise ValueError(f"probabilities: expected a class axis {channel_axis} and spatial axes, "
                         f"got shape {tuple(p.shape)}")
    p = p.movedim(channel_axis, 0)
    t = 0.5 if threshold is None else float(threshold)
    if p.shape[0] == 1:
        return (p[0] > t).long()
    if activation != "sigmoid" and threshold is None:
        return p.argmax(dim=0)
    best, idx = (p if activation == "sigmoid" else p[1:]).max(dim=0)
    return torch.where(best > t, idx + 1, torch.zeros_like(idx))


def channel_label(channel: int, n_channels: int, activation: str) -> int:
    """The label value :func:`label_map` gives output channel ``channel``: the channel itself
    for softmax outputs, ``1 + channel`` for sigmoid channels, 1 for a single channel."""
    if n_channels == 1:
        return 1
    return channel + 1 if activation == "sigmoid" else channel


def called(probabilities: Any, channel: int, threshold: float | None, *,
           activation: str = "softmax", channel_axis: int = 0) -> np.ndarray:
    """Voxels :func:`label_map` labels as output channel ``channel`` (numpy bool)."""
    p = np.asarray(probabilities)
    k = p.shape[channel_axis]
    act = "sigmoid" if activation == "sigmoid" else "softmax"
    labels = label_map(p, threshold, activation=act, channel_axis=channel_axis)
    return np.asarray(labels) == channel_label(channel, k, act)


def predict(adapter: Any, image: Any, rules: DecisionRules | None = None) -> np.ndarray:
    """The label map (spatial, int64) an audit with ``rules`` calls for ``image`` (as the
    audit's inference passes it to ``adapter.probabilities``)."""
    p = adapter.probabilities(image).detach().float().cpu().numpy()[0]
    return labels_from_probabilities(p, rules, adapter)


def labels_from_probabilities(p: np.ndarray, rules: DecisionRules | None, adapter: Any
                              ) -> np.ndarray:
    """Label map of one case's class probabilities ``(K, *spatial)`` under the rules and the
    adapter's activation and threshold."""
    act = "sigmoid" if getattr(adapter, "activation", "softmax") == "sigmoid" else "softmax"
    t = call_threshold(None if rules is None else rules.threshold,
                       getattr(adapter, "threshold", None), p.shape[0], act)
    return label_map(p, t, activation=act)


# ------------------------------------------------------------------ 2. reference standard
def foreground(mask: Any, labels: Any = None) -> np.ndarray:
    """Foreground of a label map: ``mask > 0`` (binary audits) or ``isin(mask, labels)``."""
    a = np.asarray(mask)
    if a.dtype == bool:
        return a
    if labels is None:
        return a > 0
    values = list(labels.keys()) if isinstance(labels, Mapping) else list(labels)
    return np.isin(a, values)


def reference_mask(case: Any, rules: DecisionRules | Mapping[str, Any] | None = None
                   ) -> np.ndarray:
    """The reference label map of ``case`` under the rules' reference standard: ``case.label``
    (no rule), the STAPLE or majority consensus of its readers, or one reader's map."""
    r = rules if isinstance(rules, DecisionRules) else DecisionRules.from_settings(rules)
    readers = dict(getattr(case, "readers", None) or {})
    return np.asarray(reference_from_readers(
        case.case_id, case.label, readers, r.reference, r.label_setting,
        missing=list(getattr(case, "missing_readers", None) or [])))


def reference_from_readers(case_id: str, label: Any, readers: Mapping[str, Any],
                           rule: str | None, labels: Any = None, *,
                           missing: Sequence[str] = (), masks: Mapping[str, Any] | None = None,
                           consensus_of: Mapping[str, Any] | None = None) -> Any:
    """The reference standard of one case (the audit's rule, :mod:`medseg_xai.audit.readers`).

    ``rule`` None: the ``label`` map; ``"staple"`` / ``"majority"``: the consensus of the
    readers' foregrounds, labelled with the one declared label value; a reader's name: that
    reader's map. ``masks`` (reader foregrounds) and ``consensus_of`` (consensus objects by
    rule) reuse what a caller computed already.

    Raises
    ------
    ValueError
        Naming the case: no label, too few readers, a consensus of several labels, the
        reference reader missing.
    """
    if rule is None:
        if label is None:
            raise ValueError(f"case {case_id!r}: label: expected a reference file or a declared "
                             "reference rule (reference='staple' | 'majority' | '<reader>')")
        return label
    masks = masks if masks is not None else {
        name: np.ascontiguousarray(foreground(m, labels)) for name, m in readers.items()}
    if rule in ("staple", "majority"):
        if len(masks) < 2:
            raise ValueError(
                f"case {case_id!r}: reference {rule!r}: expected at least 2 readers, got "
                f"{len(masks)} ({', '.join(masks) or 'none'}; missing: {', '.join(missing)})")
        if labels is not None and len(labels) > 1:
            raise ValueError(f"case {case_id!r}: reference {rule!r}: a consensus is binary; "
                             f"expected one label, got labels {list(labels)}")
        cons = (consensus_of or {}).get(rule)
        if cons is None:
            from medseg_xai.metrics.consensus import consensus

            cons = consensus(masks, rule)
        value = next(iter(labels)) if labels is not None else 1
        return cons.mask.astype(np.int16) * int(value)
    if rule not in readers:
        raise ValueError(f"case {case_id!r}: reference reader {rule!r}: expected its file, got "
                         f"none (readers present: {', '.join(masks) or 'none'})")
    return readers[rule]


# ------------------------------------------------------------------ 3. lesions and their ids
def parse_lesion_id(lesion_id: Any, kinds: Sequence[str] = LESION_KINDS) -> tuple[str, int]:
    """``("ref", 2)`` from ``"ref-2"`` (or the int 2): the one lesion-id parser.

    Raises
    ------
    ValueError
        Naming the id and the expected form (``ref-N`` / ``pred-N``, N >= 1).
    """
    if isinstance(lesion_id, (int, np.integer)) and not isinstance(lesion_id, bool):
        kind, num = "ref", str(int(lesion_id))
    else:
        kind, _, num = str(lesion_id).partition("-")
    forms = " or ".join(f"'{k}-N'" for k in kinds)
    if kind not in kinds or not num.isdigit() or int(num) < 1:
        raise ValueError(f"lesion_id: expected {forms} with N >= 1, got {lesion_id!r}")
    return kind, int(num)


def components(mask: Any, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components (labels 1..n, ``scipy.ndimage.label`` order) and their count."""
    from medseg_xai.metrics.lesions import label_lesions

    return label_lesions(np.asarray(mask) != 0, connectivity)


def lesion_mask(mask: Any, lesion_id: Any, connectivity: int | None = None, *,
                labelled: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Boolean mask of lesion ``lesion_id`` (its number N) among the components of ``mask``.

    ``mask`` is the reference foreground for ``ref-N`` and the prediction's for ``pred-N``;
    ``labelled`` reuses a :func:`components` result.
    """
    kind, k = parse_lesion_id(lesion_id)
    lab, n = labelled if labelled is not None else components(mask, connectivity)
    if k > n:
        what = "reference" if kind == "ref" else "predicted"
        raise ValueError(f"lesion {lesion_id!r}: the {what} mask has {n} component(s)")
    return lab == k


# ------------------------------------------------------------------ 4. lesion -> status
def lesion_table(pred_fg: Any, ref_fg: Any, spacing: Any = None,
                 rules: DecisionRules | None = None, probabilities: Any = None) -> Any:
    """``metrics.lesions`` under the rules' connectivity, matching and thresholds."""
    from medseg_xai.metrics.lesions import lesions

    r = rules or DecisionRules()
    return lesions(pred_fg, ref_fg, spacing, probabilities, connectivity=r.connectivity,
                   overlap_threshold=r.overlap_threshold, matching=r.matching,
                   iou_threshold=r.iou_threshold)


def lesion_status(pred_fg: Any, ref_fg: Any, lesion_id: str,
                  rules: DecisionRules | None = None) -> str:
    """``"detected"`` / ``"missed"`` (``ref-N``) or ``"false_positive"`` / ``"detected"``
    (``pred-N``: a component scored on a detected lesion's row) under the rules."""
    kind, _ = parse_lesion_id(lesion_id)
    table = lesion_table(np.asarray(pred_fg) != 0, np.asarray(ref_fg) != 0, None, rules)
    row = table[table["lesion_id"] == str(lesion_id)]
    if len(row):
        return str(row["status"].iloc[0])
    if kind == "ref":
        raise ValueError(f"lesion {lesion_id!r}: no such reference lesion")
    return "detected"
