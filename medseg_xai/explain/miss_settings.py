"""How a miss analysis is run: :class:`MissSettings` (the knobs of :func:`~medseg_xai.explain_miss`).

The analysis' inputs (the model, the image, the masks, the lesion, spacing, reference images, a
cohort's detected lesions, an audit's decision rules, the case id) stay keywords of
``explain_miss``; how it probes, which attributions it gathers and how it gates them live here,
in one frozen object that can be built once and reused (``mx.MissSettings(methods=())``), and
changed with :func:`dataclasses.replace`. Light: no torch, no model code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MARGIN", "MissSettings", "split_options"]

#: Smallest change of the lesion probability (mean over the lesion) that counts as an effect.
DEFAULT_MARGIN = 0.2


def _frozen(value: Any) -> Any:
    """A list given for a sequence field, kept as a tuple (strings and mappings as given)."""
    if isinstance(value, (str, Mapping)) or value is None or not isinstance(value, Sequence):
        return value
    return tuple(value)


@dataclass(frozen=True)
class MissSettings:
    """The knobs of :func:`~medseg_xai.explain.miss.explain_miss`; defaults are its defaults.

    Parameters
    ----------
    probes : None, sequence of str or mapping
        Probes to run (default all of ``explain.miss.PROBES``); a mapping gives the settings
        per probe (``{"contrast": (1.5, 2.0)}``).
    methods : sequence of str, optional
        Attribution methods (supporting evidence only); default
        ``explain.registry.default_methods(adapter, miss=True)``; ``()`` gathers none.
    layer : str, optional
        Grad-CAM layer (default :func:`~medseg_xai.explain.gradcam.localising_layer`).
    method_kwargs : mapping, optional
        Per-method keyword arguments for ``explain`` (``{"integrated_gradients": {...}}``).
    threshold : float or None
        Voxel call of the model's probabilities (``adapters.label_map``); an audit's ``rules``
        replace it.
    overlap_threshold : float
        Share of a lesion that must be called for it to count as detected; an audit's
        ``rules`` replace it.
    class_index : int, optional
        Output channel of the lesion class (default 1, or 0 for a one-channel model).
    margin : float
        Smallest change of the mean lesion probability that counts as an effect, in (0, 1).
    min_comparison : int
        Fewest detected lesions a size / contrast comparison is made with.
    seed : int
        Seeds tie-breaking among positions and the parameter randomisation.

    Examples
    --------
    >>> import medseg_xai as mx
    >>> quick = mx.MissSettings(methods=(), probes=("contrast", "size"))
    >>> quick.probes
    ('contrast', 'size')
    """

    probes: Any = None
    methods: Sequence[str] | str | None = None
    layer: str | None = None
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None
    threshold: float | None = 0.5
    overlap_threshold: float = 0.1
    class_index: int | None = None
    margin: float = DEFAULT_MARGIN
    min_comparison: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        # same messages as explain_miss always gave, now at construction
        for name in ("probes", "methods"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        t = self.threshold
        if t is not None and not 0.0 < float(t) < 1.0:
            raise ValueError(f"threshold: expected a probability in (0, 1), got {t!r}")
        if not 0.0 < float(self.overlap_threshold) <= 1.0:
            raise ValueError(f"overlap_threshold: expected a share in (0, 1], got "
                             f"{self.overlap_threshold!r}")
        if not 0.0 < float(self.margin) < 1.0:
            raise ValueError(f"margin: expected a probability change in (0, 1), got "
                             f"{self.margin!r}")
        if isinstance(self.min_comparison, bool) or int(self.min_comparison) < 0:
            raise ValueError(f"min_comparison: expected a count >= 0, got {self.min_comparison!r}")


def split_options(options: Mapping[str, Any] | None, **fixed: Any
                  ) -> tuple[MissSettings, dict[str, Any]]:
    """A mapping of ``explain_miss`` options -> (its :class:`MissSettings`, the other keywords).

    For callers that take such a mapping from their users (the CaseExplorer's
    ``miss_options``, the failure gallery's ``explain_kwargs``): its ``settings`` entry (a
    MissSettings or a mapping) with any entries named like a MissSettings field applied, then
    ``fixed`` (the caller's own facts: its threshold, class, seed). The rest
    (``reference_images``, ``detected_lesions``, ...) are returned as keywords.
    """
    from dataclasses import fields, replace

    from medseg_xai._legacy import as_settings

    rest = dict(options or {})
    base = as_settings(MissSettings, rest.pop("settings", None), "settings")
    names = {f.name for f in fields(MissSettings)}
    given = {k: rest.pop(k) for k in list(rest) if k in names}
    return replace(base, **given, **fixed), rest
