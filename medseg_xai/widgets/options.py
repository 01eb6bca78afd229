"""How a :class:`~medseg_xai.widgets.CaseExplorer` behaves: :class:`ExplorerOptions`.

The explorer's inputs (model, image, masks, spacing, probability, affine, case id, readers'
masks, an audit's decision rules) stay its arguments; the choices about calling, naming,
analysing and drawing the case live in one frozen object (``mx.widgets.ExplorerOptions``), so
the constructor keeps to DESIGN.md's 12 parameters. No ipywidgets import: light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExplorerOptions"]


@dataclass(frozen=True)
class ExplorerOptions:
    """The CaseExplorer's choices; defaults are the explorer's defaults.

    Parameters
    ----------
    threshold : float
        Decision threshold in [0, 1]: drives the prediction (when the adapter makes it) and the
        verdict; an audit's ``rules`` replace it.
    class_index : int, optional
        Foreground class explained and measured (default 1, or 0 for a one-channel model).
    classes : mapping, optional
        Label value -> class name of multi-class ``ref`` / ``pred`` label maps: a "class"
        selector then shows one class at a time (starting on ``class_index`` when that is one
        of the values). Without names the values found are offered.
    channel_names : sequence of str, optional
        Names of the input channels (e.g. ``["T1", "T1c", "T2", "FLAIR"]``).
    detected_reference : pandas.DataFrame, optional
        Detected lesions (``volume_mm3``, optionally ``cnr``) the verdict compares against;
        default the lesions detected in this case. Not compared by ``==``.
    miss_options : mapping, optional
        ``explain_miss`` inputs (``reference_images``...) and
        :class:`~medseg_xai.explain.miss_settings.MissSettings` fields (``probes``,
        ``methods``, ``margin``...) or ``settings``, for the miss analysis.
    method_options : mapping, optional
        Keyword arguments per explanation method, passed to :func:`~medseg_xai.explain`
        (e.g. ``{"occlusion": {"window": 4, "stride": 4}}``).
    convention : {"radiological", "neurological"}
        Display convention of the planes.
    px : int
        Size of each plane picture in pixels.
    background : bool
        Run explanations and miss analyses started from the buttons in a thread (the kernel
        stays responsive; progress bar and cancel button). Method calls wait unless
        ``wait=False``.
    """

    threshold: float = 0.5
    class_index: int | None = None
    classes: Mapping[Any, str] | Sequence[Any] | None = None
    channel_names: Sequence[str] | None = None
    detected_reference: Any = field(default=None, compare=False)
    miss_options: Mapping[str, Any] | None = None
    method_options: Mapping[str, Mapping[str, Any]] | None = None
    convention: str = "radiological"
    px: int = 320
    background: bool = True

    def __post_init__(self) -> None:
        names = self.channel_names
        if names is not None and not isinstance(names, str):
            object.__setattr__(self, "channel_names", tuple(names))  # frozen all the way
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(
                f"threshold: expected a probability in [0, 1], got {self.threshold!r}")
        if isinstance(self.px, bool) or int(self.px) < 1:
            raise ValueError(f"px: expected a positive number of pixels, got {self.px!r}")
