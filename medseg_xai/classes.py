"""Named classes of a multi-class audit, each with a kind, in one place.

``--classes 1=liver:structure 2=tumour:lesion`` (or ``labels={1: "liver:structure", ...}`` /
``labels=["1=liver", "2=tumour:lesion"]`` in Python) declares the label values, their names and
what they are:

- *structure* (organ, vessel, cartilage, tissue): overlap and surface metrics per class, no
  lesion detection (an organ is not a lesion, and the union of organs is not one either);
- *lesion*: the same metrics plus connected components and the detection tables.

Without kinds, a binary or single-class audit is a lesion audit (the historical behaviour) and
a multi-class one a structure audit: lesion detection then runs only on classes declared
``:lesion``. Per-class metric columns are named ``<metric>_<class name>`` (``dice_liver``), the
names criteria use; the unlabelled mean over the classes (``dice``) says which classes it covers
in ``settings["classes"]``.

This is the one module that turns the declaration into settings, so that an audit plan can
absorb it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KINDS", "ClassSpec", "lesion_foreground", "parse_classes"]

KINDS = ("structure", "lesion")


@dataclass(frozen=True)
class ClassSpec:
    """One declared class: its label value, name and kind."""

    value: int
    name: str
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "kind": self.kind}


def _split(text: str, value: int | None) -> tuple[int, str, str | None]:
    """``"1=liver:structure"`` / ``"liver:lesion"`` (value given) -> (value, name, kind)."""
    body = text.strip()
    if value is None:
        if "=" not in body:
            try:
                return int(body), body, None
            except ValueError:
                raise ValueError(f"classes: expected VALUE=NAME[:KIND] (e.g. 1=liver:structure), "
                                 f"got {text!r}") from None
        left, body = body.split("=", 1)
        try:
            value = int(left)
        except ValueError:
            raise ValueError(f"classes: expected an integer label value before '=', got "
                             f"{text!r}") from None
    name, _, kind = body.partition(":")
    if not name.strip():
        raise ValueError(f"classes: expected a class name for value {value}, got {text!r}")
    return value, name.strip(), (kind.strip().lower() or None) if _ else None


def parse_classes(labels: Any) -> list[ClassSpec] | None:
    """Normalise a class declaration to :class:`ClassSpec` s (None for a binary audit).

    Parameters
    ----------
    labels : None, iterable of int, str or dict, or mapping value -> name[:kind]
        ``[1, 2]``, ``{1: "liver", 2: "tumour:lesion"}``, ``["1=liver:structure"]``,
        ``[{"value": 1, "name": "liver", "kind": "structure"}]`` (as recorded).

    Raises
    ------
    ValueError
        Unknown kinds, non-integer or repeated values, empty or repeated names.
    """
    if labels is None:
        return None
    raw: list[tuple[int, str, str | None]] = []
    if isinstance(labels, Mapping):
        for v, text in labels.items():
            raw.append(_split(str(text), int(v)))
    elif isinstance(labels, Iterable) and not isinstance(labels, (str, bytes)):
        for item in labels:
            if isinstance(item, ClassSpec):
                raw.append((item.value, item.name, item.kind))
            elif isinstance(item, Mapping) and "value" in item:  # a recorded class
                raw.append((int(item["value"]), str(item.get("name", item["value"])),
                            item.get("kind") or None))
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                raw.append((int(item), str(int(item)), None))
            else:
                raw.append(_split(str(item), None))
    else:
        raise ValueError(f"classes: expected label values or VALUE=NAME[:KIND] items, got "
                         f"{type(labels).__name__}")
    if not raw:
        raise ValueError("classes: expected at least one class, got none")
    default = "lesion" if len(raw) == 1 else "structure"
    out = []
    for value, name, kind in raw:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"classes: class {name!r}: expected a kind in {list(KINDS)}, got "
                             f"{kind!r}")
        if value <= 0:
            raise ValueError(f"classes: expected positive label values (0 is background), got "
                             f"{value}")
        out.append(ClassSpec(value, name, kind or default))
    values = [c.value for c in out]
    names = [c.name for c in out]
    if len(set(values)) != len(values) or len(set(names)) != len(names):
        raise ValueError(f"classes: expected distinct values and names, got {values} / {names}")
    return out


def labels_of(specs: list[ClassSpec] | None) -> dict[int, str] | None:
    """Value -> name (the ``labels`` of :func:`medseg_xai.metrics.evaluate_case`)."""
    return None if specs is None else {c.value: c.name for c in specs}


def lesion_values(specs: list[ClassSpec] | None) -> list[int] | None:
    """Label values that lesion detection runs on (None: every foreground value)."""
    return None if specs is None else [c.value for c in specs if c.kind == "lesion"]


def lesion_foreground(mask: np.ndarray, lesion_labels: Iterable[int] | None) -> np.ndarray:
    """The voxels lesion detection sees: every foreground voxel when ``lesion_labels`` is None
    (a binary audit), else only the lesion classes (empty when there are none)."""
    if lesion_labels is None:
        return np.asarray(mask) > 0
    return np.isin(mask, list(lesion_labels))


def per_class_metrics(metrics: list[str], classes: list[dict[str, Any]] | None,
                      per_class_keys: Iterable[str]) -> list[str]:
    """``metrics`` plus ``<metric>_<class>`` for each per-class metric of a multi-class audit
    (every class gets its own subgroup rows)."""
    if not classes or len(classes) < 2:
        return list(metrics)
    keys = set(per_class_keys)
    out = list(metrics)
    for m in metrics:
        if m in keys:
            out += [f"{m}_{c['name']}" for c in classes if f"{m}_{c['name']}" not in out]
    return out


def class_of_metric(metric: str, classes: list[dict[str, Any]] | None,
                    per_class_keys: Iterable[str]) -> str | None:
    """The class a metric column belongs to: a class name for ``dice_liver``, ``"mean of
    liver, tumour"`` for the unlabelled ``dice`` of a multi-class audit, None otherwise."""
    if not classes or len(classes) < 2:
        return None
    keys = set(per_class_keys)
    for c in classes:
        suffix = f"_{c['name']}"
        if metric.endswith(suffix) and metric[: -len(suffix)] in keys:
            return str(c["name"])
    if metric in keys:
        return "mean of " + ", ".join(str(c["name"]) for c in classes)
    return None


def effective_classes(rules: Any) -> list[dict[str, Any]] | None:
    """The classes an audit runs with, from its decision rules
    (:class:`medseg_xai.decide.DecisionRules`): the declared ``classes``, else the ``labels``
    (named by ``label_names``) with the default kinds; None for a binary audit."""
    declared = [dict(c) for c in (getattr(rules, "classes", None) or ())]
    if declared:
        specs = parse_classes({int(c["value"]): f"{c.get('name', c['value'])}:"
                               f"{c.get('kind') or ''}".rstrip(":") for c in declared})
    else:
        specs = parse_classes(getattr(rules, "label_setting", None))
    return None if specs is None else [c.to_dict() for c in specs]


def declaration(labels: Any) -> dict[str, Any]:
    """Plan fields of a class declaration (``--classes`` items, ``{value: "name:kind"}`` or
    plain values): ``labels`` (``{value: name}`` when named) and ``classes`` (kinds as declared
    or default)."""
    specs = parse_classes(labels)
    if specs is None:
        return {"labels": None}
    named = any(c.name != str(c.value) for c in specs)
    return {"labels": ({c.value: c.name for c in specs} if named else [c.value for c in specs]),
            "classes": [c.to_dict() for c in specs]}


def file_class_names(cohort: Any) -> dict[int, str]:
    """Segment names of the cohort's first label file when it names them (Slicer
    ``.seg.nrrd``, DICOM-SEG); empty otherwise or when it cannot be read (the case then fails
    on its own). One file is read: names are the same across a cohort's segmentations."""
    manifest = getattr(cohort, "manifest", None)
    if manifest is None or "label" not in manifest.columns:
        return {}
    paths = [p for p in manifest["label"] if isinstance(p, str) and p]
    if not paths:
        return {}
    path = paths[0]
    if not path.lower().endswith((".seg.nrrd", ".dcm")):
        return {}
    from medseg_xai.io import read_volume

    try:
        return dict(read_volume(path, is_image=False, what="label").class_names)
    except ValueError:
        return {}
