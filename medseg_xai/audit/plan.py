"""The analysis plan of an audit: one frozen, validated, hashed object instead of 40 keywords.

An :class:`AuditPlan` groups every setting that decides the audit's numbers into the parts users
think in:

- ``strata`` (:class:`StrataPart`): which subgroups are compared and how continuous strata are
  binned;
- ``metrics`` (:class:`MetricsPart`): which metrics, their convention and empty-mask policy;
- ``decision`` (:class:`~medseg_xai.decide.DecisionRules`): threshold, label values / classes,
  reference standard, connectivity, matching, overlap threshold -- the rules ``decide.py``
  applies everywhere;
- ``statistics`` (:class:`StatisticsPart`): interval method, confidence, resamples, tests,
  correction, alpha, min_n, permutations, seed;
- ``criteria``: the pre-specified acceptance criteria (normalised by ``audit.criteria``).

Each field is checked on construction against a declared constraint (scikit-learn's
``_param_validation`` style: types, ranges, options); an invalid plan raises a ValueError that
names the field (``plan.statistics.confidence: expected ...``) before any case runs. The plan
round-trips to YAML (:meth:`AuditPlan.to_yaml`, :meth:`AuditPlan.from_yaml`, loaded safely
within the package's YAML limits) and carries a content hash (:attr:`AuditPlan.hash`, SHA-256 of its canonical
JSON): a plan written and hashed before the data are seen is the evidence of pre-specification.
``audit.json`` holds the plan and its hash (``settings["plan"]``, ``settings["plan_hash"]``).

Defaults such as ``min_n``, ``confidence``, ``alpha`` and ``n_permutations`` are defined here
once (:data:`DEFAULTS`); the rest of the package reads them from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medseg_xai.audit.defaults import DEFAULTS
from medseg_xai.decide import DecisionRules

__all__ = ["DEFAULTS", "AuditPlan", "Interval", "MetricsPart", "Options", "StatisticsPart",
           "StrataPart", "legacy_to_plan"]

# ------------------------------------------------------------------ declared constraints
@dataclass(frozen=True)
class Interval:
    """A real (or integral) number in ``[low, high]`` (``closed`` says which ends count)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both" | "left" | "right" | "neither"

    def __call__(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, self.kind):
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left")
                                     else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right")
                                      else v < self.high)
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        what = "an integer" if self.kind is numbers.Integral else "a number"
        lo = "(" if self.closed in ("right", "neither") else "["
        hi = ")" if self.closed in ("left", "neither") else "]"
        a = "-inf" if self.low is None else f"{self.low:g}"
        b = "inf" if self.high is None else f"{self.high:g}"
        return f"{what} in {lo}{a}, {b}{hi}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def __call__(self, v: Any) -> bool:
        return any(v == o and type(v) is type(o) for o in self.values)

    def __str__(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class Typed:
    """An instance of ``kinds`` (``str``, ``bool``, ``tuple``...), optionally with items of
    ``items``."""

    kinds: tuple[type, ...]
    items: Any = None
    label: str = ""

    def __call__(self, v: Any) -> bool:
        if not isinstance(v, self.kinds) or (bool not in self.kinds and isinstance(v, bool)):
            return False
        return self.items is None or all(self.items(x) for x in v)

    def __str__(self) -> str:
        return self.label or " or ".join(k.__name__ for k in self.kinds)


NONE = Options((None,))
PROB_OPEN = Interval(numbers.Real, 0, 1, "neither")
POSITIVE_INT = Interval(numbers.Integral, 1, None)


def _validate(part: Any, name: str, constraints: Mapping[str, Sequence[Any]]) -> None:
    """Raise ValueError naming ``plan.<part>.<field>`` when a value meets none of its
    constraints."""
    for f in fields(part):
        allowed = constraints.get(f.name)
        if allowed is None:
            continue
        v = getattr(part, f.name)
        if not any(c(v) for c in allowed):
            expected = " or ".join(str(c) if c is not NONE else "None" for c in allowed)
            raise ValueError(f"plan.{name}.{f.name}: expected {expected}, got {v!r}")


def _tuple(v: Any) -> Any:
    """Lists (from YAML/JSON or callers) as tuples, so a frozen plan is hashable and equal."""
    if isinstance(v, list):
        return tuple(_tuple(x) for x in v)
    return v


# ------------------------------------------------------------------ parts
@dataclass(frozen=True)
class StrataPart:
    """Strata and subgroup rules.

    Attributes
    ----------
    strata : tuple of str
        Metadata columns, derived strata (``lesion_size``, ``lesion_count``, ``empty_reference``)
        and intersections (``"device x site"``).
    lesion_size_bins : int or tuple of float
        Quantile count or volume edges (mm^3) of the ``lesion_size`` stratum.
    detection_bins : tuple of float
        Lesion-volume edges (mm^3) of the detection table.
    keep_columns : tuple of str
        Metadata kept in the result besides the strata.
    feature_layer : str or None
        Layer whose pooled output is each case's feature vector (``"auto"``; None: none).
    feature_reference : tuple of str or None
        Reference cases of the feature shift as ``"COLUMN=V1,V2"``.
    """

    strata: tuple[str, ...] = ()
    lesion_size_bins: int | tuple[float, ...] = DEFAULTS["lesion_size_bins"]
    detection_bins: tuple[float, ...] = DEFAULTS["detection_bins"]
    keep_columns: tuple[str, ...] = ()
    feature_layer: str | None = "auto"
    feature_reference: tuple[str, ...] | None = None

    _constraints = {
        "strata": [Typed((tuple,), lambda x: isinstance(x, str), "a list of column names")],
        "lesion_size_bins": [POSITIVE_INT, Typed((tuple,), lambda x: isinstance(
            x, numbers.Real) and not isinstance(x, bool), "a list of volume edges")],
        "detection_bins": [Typed((tuple,), lambda x: isinstance(x, numbers.Real)
                                 and not isinstance(x, bool), "a list of volume edges")],
        "keep_columns": [Typed((tuple,), lambda x: isinstance(x, str), "a list of column names")],
        "feature_layer": [NONE, Typed((str,))],
        "feature_reference": [NONE, Typed((tuple,), lambda x: isinstance(x, str) and "=" in x,
                                          'a list of "COLUMN=V1,V2"')],
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _tuple(getattr(self, f.name)))
        if isinstance(self.strata, str):
            object.__setattr__(self, "strata", (self.strata,))
        _validate(self, "strata", self._constraints)


@dataclass(frozen=True)
class MetricsPart:
    """Metrics and their convention.

    Attributes
    ----------
    metrics : tuple of str or None
        Metrics summarised per subgroup (None: the audit's defaults).
    tolerance : float
        NSD tolerance in mm.
    percentile : float
        Hausdorff percentile.
    empty : str
        Empty-mask policy (``metrics.EMPTY_POLICIES``).
    convention : str
        Surface-metric convention (``monai``, ``medpy``, ``deepmind``, ``metricsreloaded``,
        ``panoptica``).
    use_subvoxels : bool
        MONAI's sub-voxel NSD (convention ``monai`` only).
    """

    metrics: tuple[str, ...] | None = None
    tolerance: float = 1.0
    percentile: float = 95.0
    empty: str = "worst"
    convention: str = "monai"
    use_subvoxels: bool = False

    def __post_init__(self) -> None:
        from medseg_xai.metrics import EMPTY_POLICIES
        from medseg_xai.metrics.conventions import CONVENTIONS

        object.__setattr__(self, "metrics", _tuple(self.metrics))
        _validate(self, "metrics", {
            "metrics": [NONE, Typed((tuple,), lambda x: isinstance(x, str), "a list of metrics")],
            "tolerance": [Interval(numbers.Real, 0, None, "left")],
            "percentile": [Interval(numbers.Real, 0, 100, "both")],
            "empty": [Options(tuple(EMPTY_POLICIES))],
            "convention": [Options(tuple(CONVENTIONS))],
            "use_subvoxels": [Typed((bool,))],
        })
        if self.use_subvoxels and self.convention != "monai":
            raise ValueError(f"plan.metrics.use_subvoxels: expected convention 'monai', got "
                             f"{self.convention!r}")


@dataclass(frozen=True)
class StatisticsPart:
    """Statistics: intervals, tests, correction and the smallest group analysed.

    Attributes
    ----------
    interval_method : str
        Bootstrap interval of the mean (``audit.stats.CI_METHODS``).
    confidence : float
        Confidence level of every interval.
    n_resamples : int
        Bootstrap resamples.
    test : {"mannwhitney", "permutation"}
        Group-vs-rest test.
    n_permutations : int
        Permutations of permutation tests.
    correction : {"holm", "bh"}
        Multiple-comparison correction.
    alpha : float
        Significance level.
    min_n : int
        Groups below it are "insufficient data".
    seed : int
        Seeds every bootstrap and permutation.
    """

    interval_method: str = DEFAULTS["interval_method"]
    confidence: float = DEFAULTS["confidence"]
    n_resamples: int = DEFAULTS["n_resamples"]
    test: str = DEFAULTS["test"]
    n_permutations: int = DEFAULTS["n_permutations"]
    correction: str = DEFAULTS["correction"]
    alpha: float = DEFAULTS["alpha"]
    min_n: int = DEFAULTS["min_n"]
    seed: int = DEFAULTS["seed"]

    def __post_init__(self) -> None:
        from medseg_xai.audit.stats import CI_METHODS

        _validate(self, "statistics", {
            "interval_method": [Options(tuple(CI_METHODS))],
            "confidence": [PROB_OPEN],
            "n_resamples": [POSITIVE_INT],
            "test": [Options(("mannwhitney", "permutation"))],
            "n_permutations": [POSITIVE_INT],
            "correction": [Options(("holm", "bh"))],
            "alpha": [PROB_OPEN],
            "min_n": [POSITIVE_INT],
            "seed": [Interval(numbers.Integral, 0, None)],
        })


def _check_decision(d: DecisionRules) -> None:
    from medseg_xai.metrics.lesions import MATCHING_MODES

    _validate(d, "decision", {
        "threshold": [NONE, Interval(numbers.Real, 0, 1, "neither")],
        "labels": [NONE, Typed((tuple,), lambda x: isinstance(x, numbers.Integral)
                               and not isinstance(x, bool) and x > 0, "a list of label values > 0")],
        "label_names": [NONE, Typed((tuple,), lambda x: isinstance(x, str), "a list of names")],
        "classes": [Typed((tuple,), lambda x: isinstance(x, Mapping), "a list of classes")],
        "reference": [NONE, Typed((str,))],
        "connectivity": [NONE, Interval(numbers.Integral, 1, 3)],
        "matching": [Options(tuple(MATCHING_MODES))],
        "overlap_threshold": [Interval(numbers.Real, 0, 1, "right")],
        "iou_threshold": [Interval(numbers.Real, 0, 1, "right")],
        "binarize": [Typed((bool,))],
        "reference_threshold": [Interval(numbers.Real, 0, 1, "right")],
    })
    if d.label_names is not None and (d.labels is None or len(d.label_names) != len(d.labels)):
        raise ValueError(f"plan.decision.label_names: expected one name per label value "
                         f"{list(d.labels or ())}, got {list(d.label_names)}")


# ------------------------------------------------------------------ the plan
_PARTS = {"strata": StrataPart, "metrics": MetricsPart, "decision": DecisionRules,
          "statistics": StatisticsPart}


@dataclass(frozen=True)
class AuditPlan:
    """The pre-specified analysis plan of an audit (module docstring).

    Build it from parts, from a dict (:meth:`from_dict`), from YAML (:meth:`from_yaml`) or from
    the old ``audit()`` keywords (:meth:`from_options`); change one setting with
    :meth:`replace` (``plan.replace(statistics={"confidence": 0.9})``).
    """

    strata: StrataPart = field(default_factory=StrataPart)
    metrics: MetricsPart = field(default_factory=MetricsPart)
    decision: DecisionRules = field(default_factory=DecisionRules)
    statistics: StatisticsPart = field(default_factory=StatisticsPart)
    criteria: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name, cls in _PARTS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"plan.{name}: expected a {cls.__name__}, got "
                                 f"{type(getattr(self, name)).__name__}")
        decision = self.decision
        fixed = {f.name: _tuple(getattr(decision, f.name)) for f in fields(decision)}
        fixed["classes"] = tuple(dict(c) for c in fixed["classes"] or ())
        object.__setattr__(self, "decision", DecisionRules(**fixed))
        _check_decision(self.decision)
        from medseg_xai.audit.criteria import load_criteria

        try:
            crit = load_criteria(list(self.criteria) if not isinstance(self.criteria, str)
                                 else self.criteria)
        except ValueError as err:
            raise ValueError(f"plan.criteria: {err}") from None
        object.__setattr__(self, "criteria", tuple(crit))

    # ------------------------------------------------------------- dict / YAML / hash
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and YAML-safe dict: ``{"strata": {...}, ..., "criteria": [...]}``."""
        out: dict[str, Any] = {}
        for name in _PARTS:
            part = getattr(self, name)
            d = part.to_dict() if isinstance(part, DecisionRules) else dataclasses.asdict(part)
            out[name] = _plain(d)
        out["criteria"] = _plain([dict(c) for c in self.criteria])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditPlan:
        """The plan of :meth:`to_dict`'s form; unknown parts or fields fail, named."""
        if not isinstance(data, Mapping):
            raise ValueError(f"plan: expected a mapping of parts {list(_PARTS)} and criteria, "
                             f"got {type(data).__name__}")
        unknown = sorted(set(data) - set(_PARTS) - {"criteria"})
        if unknown:
            raise ValueError(f"plan: unknown part(s) {unknown}; expected some of "
                             f"{[*_PARTS, 'criteria']}")
        parts: dict[str, Any] = {}
        for name, part_cls in _PARTS.items():
            given = data.get(name) or {}
            if not isinstance(given, Mapping):
                raise ValueError(f"plan.{name}: expected a mapping, got {given!r}")
            known = {f.name for f in fields(part_cls)} | ({"labels"} if part_cls is DecisionRules
                                                          else set())
            bad = sorted(set(given) - known)
            if bad:
                raise ValueError(f"plan.{name}: unknown field(s) {bad}; expected some of "
                                 f"{sorted(known - {'label_names'})}")
            if part_cls is DecisionRules:
                parts[name] = DecisionRules.from_settings(given)
            else:
                parts[name] = part_cls(**{k: _tuple(v) for k, v in given.items()})
        return cls(**parts, criteria=tuple(data.get("criteria") or ()))

    def to_yaml(self) -> str:
        """The plan as YAML text, with its hash in a leading comment."""
        import yaml

        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return f"# medseg-xai analysis plan, sha256 {self.hash}\n{body}"

    @classmethod
    def from_yaml(cls, source: str | Path) -> AuditPlan:
        """The plan in a YAML file (a path) or YAML text (safe loading within the package's
        YAML limits, ``medseg_xai._yaml``)."""
        from medseg_xai._yaml import load_yaml_file, load_yaml_text

        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and source.endswith((".yaml", ".yml", ".json"))):
            p = Path(source)
            if not p.is_file():
                raise ValueError(f"plan: expected a YAML file, got {p.name!r} (not found)")
            data = load_yaml_file(p, "plan")
        else:
            data = load_yaml_text(str(source), "plan")
        return cls.from_dict(data or {})

    @property
    def hash(self) -> str:
        """SHA-256 of the plan's canonical JSON (sorted keys): same plan, same hash."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def replace(self, **parts: Any) -> AuditPlan:
        """A copy with some fields changed: ``replace(decision={"threshold": 0.3})``."""
        new: dict[str, Any] = {}
        for name, change in parts.items():
            if name == "criteria":
                new[name] = tuple(change or ())
            elif name not in _PARTS:
                raise ValueError(f"plan: unknown part {name!r}; expected some of "
                                 f"{[*_PARTS, 'criteria']}")
            elif isinstance(change, Mapping):
                d = self.to_dict()[name]
                d.update(change)
                new[name] = AuditPlan.from_dict({name: d}).__getattribute__(name)
            else:
                new[name] = change
        return replace(self, **new)

    # ------------------------------------------------------------- the old keywords
    @classmethod
    def from_options(cls, base: AuditPlan | None = None, **options: Any) -> AuditPlan:
        """``base`` (default: the default plan) with the old ``audit()`` keywords applied."""
        plan = base or cls()
        unknown = sorted(set(options) - set(OPTION_FIELDS))
        if unknown:
            raise TypeError(f"audit: unexpected keyword argument(s) {unknown}")
        d = plan.to_dict()
        for key, value in options.items():
            part, name = OPTION_FIELDS[key]
            if part == "criteria":
                d["criteria"] = _criteria_list(value)
            elif key == "labels":  # values, {value: name[:kind]} or "VALUE=NAME[:KIND]" items
                from medseg_xai.classes import declaration

                d["decision"].update(declaration(value))
            elif key == "feature_reference":
                d[part][name] = _reference_strings(value)
            elif key == "strata":
                d[part][name] = _strata_list(value)
            else:
                d[part][name] = _tuple(list(value)) if isinstance(value, (list, tuple)) else value
        return cls.from_dict(d)


def _criteria_list(value: Any) -> list[Any]:
    from medseg_xai.audit.criteria import load_criteria

    return [dict(c) for c in load_criteria(value)]


def _strata_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v if isinstance(v, str) else " x ".join(v) for v in value]


def _reference_strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [f"{k}={','.join(str(x) for x in v)}" for k, v in value.items()]
    return [str(v) for v in value]


def _plain(v: Any) -> Any:
    """Tuples as lists, numpy scalars as Python numbers (for YAML and the hash)."""
    if isinstance(v, Mapping):
        return {str(k) if not isinstance(k, int) else k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


#: Old ``audit()`` keyword -> (plan part, field).
OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "strata": ("strata", "strata"),
    "lesion_size_bins": ("strata", "lesion_size_bins"),
    "detection_bins": ("strata", "detection_bins"),
    "keep_columns": ("strata", "keep_columns"),
    "feature_layer": ("strata", "feature_layer"),
    "feature_reference": ("strata", "feature_reference"),
    "metrics": ("metrics", "metrics"),
    "tolerance": ("metrics", "tolerance"),
    "percentile": ("metrics", "percentile"),
    "empty": ("metrics", "empty"),
    "convention": ("metrics", "convention"),
    "use_subvoxels": ("metrics", "use_subvoxels"),
    "threshold": ("decision", "threshold"),
    "labels": ("decision", "labels"),
    "reference": ("decision", "reference"),
    "connectivity": ("decision", "connectivity"),
    "matching": ("decision", "matching"),
    "overlap_threshold": ("decision", "overlap_threshold"),
    "iou_threshold": ("decision", "iou_threshold"),
    "binarize": ("decision", "binarize"),
    "reference_threshold": ("decision", "reference_threshold"),
    "ci_method": ("statistics", "interval_method"),
    "confidence": ("statistics", "confidence"),
    "n_resamples": ("statistics", "n_resamples"),
    "test": ("statistics", "test"),
    "n_permutations": ("statistics", "n_permutations"),
    "correction": ("statistics", "correction"),
    "alpha": ("statistics", "alpha"),
    "min_n": ("statistics", "min_n"),
    "seed": ("statistics", "seed"),
    "criteria": ("criteria", "criteria"),
}


def legacy_to_plan(plan: AuditPlan | None, options: Mapping[str, Any]) -> AuditPlan:
    """The plan an audit runs: ``plan`` (or the default) with old keywords mapped into it."""
    if plan is not None and not isinstance(plan, AuditPlan):
        plan = AuditPlan.from_dict(plan) if isinstance(plan, Mapping) else (
            AuditPlan.from_yaml(plan) if isinstance(plan, (str, Path)) else plan)
    if plan is not None and not isinstance(plan, AuditPlan):
        raise ValueError(f"plan: expected an AuditPlan, a mapping or a YAML path, got "
                         f"{type(plan).__name__}")
    return AuditPlan.from_options(plan, **options) if options else (plan or AuditPlan())
