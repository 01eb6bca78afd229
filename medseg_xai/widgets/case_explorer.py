"""``CaseExplorer``: one case in three synchronised planes, its lesions, explanations, verdict.

Pictures are matplotlib figures rendered to PNG into ``ipywidgets.Image`` (no ipympl needed);
each plane keeps its figure and only swaps artist data on a redraw (:mod:`.render`). Pointer
events (click, wheel, move) come from ``ipyevents``. Long work runs in a thread that counts
the model's forward passes (:meth:`SegmentationAdapter.watch`) for the progress bar and stops
at the next pass when cancelled. The state
(:mod:`.state`), the lesion measurements (:mod:`.lesion_table`) and the verdict
(:mod:`.verdict`) live outside this module and are tested without a browser.
"""

from __future__ import annotations

import functools
import html
import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from medseg_xai._legacy import apply_legacy, as_settings
from medseg_xai.adapters import Cancelled
from medseg_xai.decide import DecisionRules, label_map
from medseg_xai.viz import Geometry
from medseg_xai.widgets.lesion_table import CaseLesions
from medseg_xai.widgets.options import ExplorerOptions
from medseg_xai.widgets.render import BlendStyle, PlaneRenderer
from medseg_xai.widgets.state import ExplanationCache, ViewState, window_presets

__all__ = ["CaseExplorer", "ExplorerOptions", "TARGETS"]

#: Explanation targets offered in the panel: (label, key).
TARGETS: tuple[tuple[str, str], ...] = (
    ("this lesion", "lesion"),
    ("its missed part", "missed"),
    ("the class region", "region"),
)
ACTIVATIONS = "activations"


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show an exception from a widget callback in the status line instead of losing it."""

    @functools.wraps(fn)
    def wrapper(self: CaseExplorer, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, nothing else to do
            self._set_status(f"Error: {type(exc).__name__}: {exc}", error=True)
            self.last_error = exc
            return None

    return wrapper


def _option_defaults(kwargs: dict[str, Any], **defaults: Any) -> None:
    """Fill the :class:`ExplorerOptions` fields a caller of ``from_cohort`` / ``from_audit``
    left unset (None) in ``kwargs["options"]``; one given in the old spelling (a keyword of
    its own) is left to the constructor, which warns and applies it."""
    opts = as_settings(ExplorerOptions, kwargs.get("options"), "options")
    fill = {k: v for k, v in defaults.items() if k not in kwargs and getattr(opts, k) is None}
    if fill:
        kwargs["options"] = replace(opts, **fill)


def _decision_rules(rules: Any) -> DecisionRules | None:
    """An audit's rules as :class:`DecisionRules` (None when not given)."""
    return None if rules is None else (
        rules if isinstance(rules, DecisionRules) else DecisionRules.from_settings(rules))


def _channel_names(channel_names: Any, n_ch: int) -> list[str]:
    """The input channels' names (default ``"channel i"``), one per image channel."""
    names = list(channel_names) if channel_names is not None else \
        [f"channel {i}" for i in range(n_ch)]
    if len(names) != n_ch:
        raise ValueError(f"channel_names: expected {n_ch} names (one per image channel), "
                         f"got {len(names)}")
    return [str(n) for n in names]


class CaseExplorer(W.VBox):
    """Explore one case: planes, overlays, lesions, explanations and the miss verdict.

    Navigation as in radiology viewers: click a plane to move the crosshair (every plane then
    passes through the clicked voxel), turn the mouse wheel over a plane to step its slices,
    read the voxel, world position and values under the pointer, zoom around the crosshair or
    the selected lesion, and pick a window preset. Planes are shown in anatomical orientation
    from ``affine`` (:class:`~medseg_xai.viz.Geometry`: letters on each edge, a mm scale bar;
    display only, the analysis grid is never resampled).

    Parameters
    ----------
    adapter : SegmentationAdapter or None
        The model; without it the explorer only shows the image, masks and lesion table.
    image : numpy.ndarray or torch.Tensor
        Any form :func:`~medseg_xai.explain` accepts: ``(C, *spatial)``, spatial only, or
        ``(1, C, *spatial)``; 2D or 3D.
    ref, pred : numpy.ndarray, optional
        Reference and predicted masks. Without ``pred`` the adapter predicts it (at
        ``threshold``, by :func:`~medseg_xai.adapters.label_map`). Without ``ref`` the lesion
        list holds the predicted components and explanations target the prediction.
    spacing : sequence of float, optional
        Voxel size in mm (default: from ``affine``, else 1.0 per axis).
    probability : numpy.ndarray, optional
        Foreground probability, spatial shape or ``(K, *spatial)`` (one channel, or channel
        ``options.class_index``); computed with the adapter when omitted.
    affine : numpy.ndarray, optional
        4x4 affine of the source image: orients the views and is written into exported
        attribution NIfTI files. Without it the views say "voxel axes, orientation unknown".
    case_id : str, optional
    readers : mapping, optional
        Several readers' masks (reader -> mask of the image's spatial shape), e.g. a cohort
        case's ``label_<reader>`` files (:meth:`from_cohort` passes them): each reader's
        outline is a toggle in the planes, and with two or more readers a "disagreement"
        overlay marks the voxels some but not all readers marked (display layers of the
        loaded masks, :mod:`medseg_xai.widgets.readers`).
    rules : DecisionRules or mapping, optional
        An audit's decision rules (:meth:`from_audit` passes them): its threshold, lesion ids
        and statuses.
    options : ExplorerOptions or mapping, optional
        ``threshold``, ``class_index``, ``classes``, ``channel_names``,
        ``detected_reference``, ``miss_options``, ``method_options``, ``convention``, ``px``,
        ``background`` (:class:`~medseg_xai.widgets.options.ExplorerOptions`,
        ``mx.widgets.ExplorerOptions``; default its defaults).
    **legacy
        Those options as keywords (``threshold=0.3``, ``px=256``...): accepted for one release
        with a ``FutureWarning`` naming ``options=ExplorerOptions(...)``; any other keyword is
        a ``TypeError``.
    """

    def __init__(
        self,
        adapter: Any = None,
        image: Any = None,
        ref: Any = None,
        pred: Any = None,
        spacing: Any = None,
        *,
        probability: Any = None,
        affine: Any = None,
        case_id: str | None = None,
        readers: Any = None,
        rules: Any = None,
        options: ExplorerOptions | Mapping[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        opts = apply_legacy("CaseExplorer", ExplorerOptions, options, legacy, param="options")
        if image is None:
            raise ValueError("image: expected an array (C, *spatial) or (*spatial), got None")
        self.options = opts
        self.adapter = adapter
        self.case_id = case_id
        # an audit's rules (decide.DecisionRules, from_audit): its threshold, ids and statuses
        self.rules = _decision_rules(rules)
        threshold = opts.threshold
        if self.rules is not None and self.rules.threshold is not None:
            threshold = self.rules.threshold
        self.threshold = float(threshold)
        self.affine = None if affine is None else np.asarray(affine, dtype=float)
        self.miss_options = dict(opts.miss_options or {})
        self.background = bool(opts.background)
        self.method_options = {str(k): dict(v) for k, v in (opts.method_options or {}).items()}
        self.last_error: Exception | None = None
        self._moving = False
        self._job: threading.Thread | None = None
        self._cancel = threading.Event()
        self.image, spatial = self._image(image, ref, pred, adapter)
        self.spacing = self._spacing(spacing, len(spatial), self.affine)
        self.geometry = Geometry(spatial, self.affine, self.spacing, convention=opts.convention)
        self.channel_names = _channel_names(opts.channel_names, self.image.shape[0])
        # One forward pass gives the output channels (class_index check) and, when they are
        # not given, the prediction and the probability.
        probs = None if adapter is None else \
            adapter.probabilities(self.image).detach().cpu().numpy()[0]
        self.class_index = self._class_index(opts.class_index)
        self._init_masks(ref, pred, spatial, opts.class_index, opts.classes)
        self.probability = self._probability(probability, spatial, self.class_index)
        if probs is not None and (self.pred is None or self.probability is None):
            self._predict(probs)

        self._init_lesions(spatial)
        self.detected_reference = opts.detected_reference
        self.selected_lesion: str | None = None
        self.cache = ExplanationCache()
        self.explanation: Any = None  # the Explanation (or None) shown as heatmap
        self.explanation_key: tuple | None = None
        self.analyses: dict[str, Any] = {}  # lesion id -> MissAnalysis
        self.readout_voxel: tuple[int, ...] | None = None

        self._init_view(spatial, int(opts.px), readers)
        self._build()
        self.redraw()

    def _init_masks(self, ref: Any, pred: Any, spatial: tuple[int, ...],
                    class_index: int | None, classes: Any) -> None:
        """Check the masks and set up the class selector (starting on ``class_index``)."""
        self.ref = None if ref is None else self._mask(ref, spatial, "ref")
        self.pred = None if pred is None else self._mask(pred, spatial, "pred")
        # the label maps as given: the class selector cuts one class out of them
        self._label_maps = {k: (None if m is None else np.asarray(m)) for k, m in
                            (("ref", ref), ("pred", pred))}
        self.class_options = self._class_options(classes)
        self.selected_class = 0
        if class_index is not None and int(class_index) in self.class_options:
            self.selected_class = int(class_index)
            self.ref, self.pred = self._class_masks(self.selected_class)

    def _init_lesions(self, spatial: tuple[int, ...]) -> None:
        """The lesion table of the masks (None without any mask)."""
        self.lesions: CaseLesions | None = None
        if self.ref is not None or self.pred is not None:
            pred_mask = self.pred if self.pred is not None else np.zeros(spatial, bool)
            self.lesions = CaseLesions(self.image, pred=pred_mask, ref=self.ref,
                                       probability=self.probability, spacing=self.spacing,
                                       rules=self.rules)

    def _init_view(self, spatial: tuple[int, ...], px: int, readers: Any) -> None:
        """Window presets, view state, renderer and the readers' masks."""
        self.presets = window_presets(self.image[0])
        lo, hi = self.presets["auto (0.5-99.5 %)"]
        self.state = ViewState(spatial, vmin=float(lo), vmax=float(hi), geometry=self.geometry)
        self.renderer = PlaneRenderer(self.image[0], self.ref, self.pred, self.spacing,
                                      self.state, px, probability=self.probability)
        if readers:
            from medseg_xai.metrics.agreement import check_readers

            self.renderer.set_readers(check_readers(readers, "readers", min_readers=1))
        self.readers: dict[str, np.ndarray] = dict(self.renderer.readers)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_cohort(cls, cohort: Any, case_id: str, adapter: Any = None, **kwargs: Any) -> CaseExplorer:
        """Open manifest row ``case_id`` of a :class:`~medseg_xai.cohort.Cohort` (its affine
        orients the views)."""
        load = {k: kwargs.pop(k) for k in ("labels", "binarize", "reference_threshold")
                if k in kwargs}
        case = cohort.load_case(str(case_id), **load)
        if case.readers:
            kwargs.setdefault("readers", dict(case.readers))
        if case.class_names or isinstance(load.get("labels"), dict):
            _option_defaults(kwargs, classes=case.class_names or load["labels"])
        return cls(adapter, case.image, case.label, case.prediction, case.spacing,
                   probability=case.probability, affine=case.affine, case_id=case.case_id,
                   **kwargs)

    def reader_view(self, axis: int = 0) -> Any:
        """This case's readers: each reader's outline (selectable) and the disagreement map, a
        :class:`~medseg_xai.widgets.readers.ReaderCaseView` (cases opened from a cohort with
        ``label_<reader>`` columns)."""
        from medseg_xai.widgets.readers import ReaderCaseView

        if not self.readers:
            raise ValueError(f"case {self.case_id!r}: readers: expected label_<reader> columns in "
                             "the cohort the case was opened from, got none")
        return ReaderCaseView(self.image, self.readers, axis=axis, case_id=self.case_id)

    @classmethod
    def from_audit(cls, result: Any, case_id: str, adapter: Any = None, *, cohort: Any,
                   **kwargs: Any) -> CaseExplorer:
        """Open a case of an :class:`~medseg_xai.audit.AuditResult` as the audit decided it.

        The case is read from ``cohort`` (the audited one: a result holds no images) with the
        audit's label values, reference standard (STAPLE, majority, a reader), prediction (for
        audits that ran the model: at the audit's threshold) and lesion rules (connectivity,
        matching, overlap threshold), so ``ref-N`` and its status are the audit's. The verdict
        compares against the lesions the model detected across the audited cohort.
        """
        from medseg_xai.cohort import load_case_from_paths
        from medseg_xai.decide import foreground, predict, reference_mask

        if cohort is None:
            raise ValueError("cohort: expected the audited Cohort (an audit result holds no "
                             "images), got None")
        rules = DecisionRules.from_settings(result.settings)
        case = load_case_from_paths(
            str(case_id), cohort.paths(str(case_id)), labels=rules.label_setting,
            binarize=rules.binarize,
            allow_missing_readers=bool(result.settings.get("allow_missing_readers")))
        def audited(m: Any) -> Any:  # the label map with only the audit's foreground values
            return None if m is None else np.where(foreground(m, rules.label_setting), m, 0)

        ref = audited(reference_mask(case, rules))
        pred = case.prediction
        if result.settings.get("inference") and adapter is not None:
            pred = predict(adapter, case.image, rules)
        pred = audited(pred)
        if isinstance(rules.label_setting, dict):
            _option_defaults(kwargs, classes=rules.label_setting)
        les = getattr(result, "lesions", None)
        if isinstance(les, pd.DataFrame) and "status" in les and "volume_mm3" in les:
            _option_defaults(kwargs, detected_reference=les[les["status"] == "detected"])
        if case.readers:
            kwargs.setdefault("readers", dict(case.readers))
        return cls(adapter, case.image, ref, pred, case.spacing, probability=case.probability,
                   affine=case.affine, case_id=case.case_id, rules=rules, **kwargs)

    # ------------------------------------------------------------------ input handling
    @staticmethod
    def _image(image: Any, ref: Any, pred: Any, adapter: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        if hasattr(image, "detach"):  # a torch tensor, as explain() takes it
            image = image.detach().cpu().numpy()
        img = np.asarray(image, dtype=np.float32)
        given = ref if ref is not None else pred
        if given is not None:
            spatial = tuple(np.shape(given))
        elif adapter is not None:
            nd = int(adapter.spatial_dims)
            spatial = tuple(img.shape[-nd:])
        else:
            spatial = tuple(img.shape[1:]) if img.ndim == 4 else tuple(img.shape)
        if len(spatial) not in (2, 3):
            raise ValueError(f"image: expected a 2D or 3D image, got spatial shape {spatial}")
        if img.ndim == len(spatial) + 2 and img.shape[0] == 1:
            img = img[0]  # (1, C, *spatial): one image of a batch
        if img.shape == spatial:
            img = img[None]
        if img.ndim != len(spatial) + 1 or tuple(img.shape[1:]) != spatial:
            raise ValueError(
                f"image: expected (C, *{spatial}), (1, C, *{spatial}) or {spatial} to match the "
                f"masks, got {np.shape(image)}"
            )
        if not np.isfinite(img).all():
            raise ValueError("image: expected finite values, got NaN or infinite values")
        return img, spatial

    def _class_index(self, class_index: int | None) -> int:
        if self.adapter is None:
            return 1 if class_index is None else int(class_index)
        k = self.adapter.output_channels  # known after the constructor's forward pass
        if class_index is None:
            return 0 if k == 1 else 1
        return self.adapter.check_class_index(class_index)

    @staticmethod
    def _probability(p: Any, spatial: tuple[int, ...], class_index: int) -> np.ndarray | None:
        """Foreground probability, spatial shape; ``(K, *spatial)`` maps (as cohorts load them)
        give their only channel, or channel ``class_index`` when there are several."""
        if p is None:
            return None
        arr = np.asarray(p, dtype=np.float32)
        if arr.ndim == len(spatial) + 1 and tuple(arr.shape[1:]) == spatial:
            arr = arr[0] if arr.shape[0] == 1 else arr[class_index]
        if arr.shape != spatial:
            raise ValueError(
                f"probability: expected shape {spatial} or (K, *{spatial}), got {np.shape(p)}"
            )
        return arr

    @staticmethod
    def _mask(m: Any, spatial: tuple[int, ...], name: str) -> np.ndarray:
        arr = np.asarray(m)
        if arr.shape != spatial:
            raise ValueError(f"{name}: expected shape {spatial}, got {arr.shape}")
        return arr != 0

    def _class_options(self, classes: Any) -> dict[int, str]:
        """Label value -> name of the classes the selector offers (none for binary masks)."""
        found: set[int] = set()
        for m in self._label_maps.values():
            if m is not None and m.dtype != bool:
                found |= {int(v) for v in np.unique(m) if v != 0}
        names = {int(k): str(v) for k, v in dict(classes or {}).items()}
        values = sorted(set(names) | found) if (names or len(found) > 1) else []
        return {v: names.get(v, f"class {v}") for v in values}

    def _class_masks(self, value: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Reference and prediction masks of one class (``0``: every class together)."""
        out = []
        for key in ("ref", "pred"):
            m = self._label_maps[key]
            out.append(None if m is None else (m != 0 if value == 0 else m == value))
        return out[0], out[1]

    def set_class(self, value: int) -> None:
        """Show one class (its label value; ``0`` for all classes): the reference and
        prediction outlines, the lesion table and the lesion list follow."""
        v = int(value)
        if v != 0 and v not in self.class_options:
            raise ValueError(f"class: expected 0 (all) or one of {list(self.class_options)}, "
                             f"got {value!r}")
        if self.class_select.value != v:
            self.class_select.value = v  # re-enters through the observer
            return
        self.selected_class = v
        self.ref, self.pred = self._class_masks(v)
        self.renderer.ref, self.renderer.pred = self.ref, self.pred
        if self.selected_lesion is not None:
            self.lesion_select.value = None  # lesion ids change with the class
            self.select_lesion(None)
        if self.ref is not None or self.pred is not None:
            pred_mask = self.pred if self.pred is not None else np.zeros(self.ref.shape, bool)
            self.lesions = CaseLesions(self.image, pred=pred_mask, ref=self.ref,
                                       probability=self.probability, spacing=self.spacing,
                                       rules=self.rules)
            self.lesion_select.options = [("(no lesion selected)", None)] + [
                (self.lesions.label(i), i) for i in self.lesions.ids]
            self.lesion_table.value = self._lesion_table_html()
        self.analyses = {}
        self.redraw()

    @staticmethod
    def _spacing(spacing: Any, ndim: int, affine: np.ndarray | None) -> tuple[float, ...]:
        if spacing is None:
            if affine is not None:
                return Geometry((1,) * ndim, affine).spacing
            return (1.0,) * ndim
        from medseg_xai._validation import check_spacing  # the shared check

        return check_spacing(spacing, ndim)

    def _predict(self, p: np.ndarray) -> None:
        act = "sigmoid" if self.adapter.activation == "sigmoid" else "softmax"
        labels = label_map(p, self.threshold, activation=act)
        if p.shape[0] == 1:
            fg, pred = p[0], labels == 1
        else:
            # multi-label sigmoid channels are labelled 1 + channel
            code = self.class_index + 1 if act == "sigmoid" else self.class_index
            fg, pred = p[self.class_index], labels == code
        if self.pred is None:
            self.pred = pred
        if self.probability is None:
            self.probability = fg.astype(np.float32)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        """Create the widgets (planes, view controls, lesions, explanation, export), lay them out."""
        columns = self._build_planes()
        self._build_window_controls()
        dis = self._build_toggles()
        self._build_opacity_zoom()
        view_controls = W.VBox([
            W.HBox([self.channel, self.class_select, self.preset, self.window,
                    self.window_readout]),
            W.HBox([cb for k, cb in self.toggles.items() if k != "disagreement"]),
            W.HBox([*self.reader_toggles.values(), dis],
                   layout=W.Layout(display="flex" if self.readers else "none")),
            W.HBox([self.opacity, self.heat_opacity, self.prob_opacity]),
            W.HBox([self.zoom, self.zoom_lesion]),
        ])

        self._build_lesion_widgets()
        self._build_explanation_widgets()
        save_png, save_nii = self._build_export_widgets()

        header = W.HTML(self._header_html())
        explain_box = W.VBox([
            W.HTML("<b>Explanation</b>"),
            W.HBox([self.method, self.layer, self.target]),
            W.HBox([self.run_button, self.cancel_button, self.uncertainty_button,
                    self.progress, self.status]),
            self.montage, self.channel_panels, self.ablation_html,
        ])
        lesion_box = W.VBox([W.HTML("<b>Lesions</b>"), self.lesion_table, self.lesion_select,
                             W.HTML("<b>Verdict</b>"), self.verdict_html, self.sweep_button])
        export_box = W.HBox([self.export_path, save_png, save_nii])
        self._build_model_tab(explain_box)
        self.children = [header, W.HBox(columns), self.readout, view_controls, lesion_box,
                         self.tabs, export_box]
        self.add_class("mx-case-explorer")
        self._update_window_readout()

    def _build_planes(self) -> list[W.Widget]:
        """One column per plane: its image and slice slider; the voxel readout below."""
        st = self.state
        self.plane_images: list[W.Image] = []
        self.sliders: dict[int, W.IntSlider] = {}
        self._events: list[Any] = []
        columns = []
        for pos, (name, axis) in enumerate(st.planes):
            img = W.Image(format="png", layout=W.Layout(width="auto"))
            img.add_class(f"mx-plane-{name}")
            self.plane_images.append(img)
            self._attach_events(img, pos)
            parts: list[W.Widget] = [img]
            if axis >= 0:
                s = W.IntSlider(value=st.center[axis], min=0, max=st.shape[axis] - 1,
                                description=name, continuous_update=False,
                                layout=W.Layout(width="95%"))
                s.add_class(f"mx-slice-{name}")
                s.observe(functools.partial(self._on_slice, axis), "value")
                self.sliders[axis] = s
                parts.append(s)
            columns.append(W.VBox(parts))
        self.readout = W.HTML("<i>Point at a plane to read the voxel under the cursor.</i>")
        self.readout.add_class("mx-readout")
        return columns

    def _build_window_controls(self) -> None:
        """Window / level slider, window presets, channel and class selectors."""
        st = self.state
        lo_all, hi_all = self.presets["full range"]
        step = (hi_all - lo_all) / 200 if hi_all > lo_all else 0.01
        self.window = W.FloatRangeSlider(value=(st.vmin, st.vmax), min=lo_all,
                                         max=max(hi_all, lo_all + step), step=step,
                                         description="window", readout_format=".4g",
                                         continuous_update=False)
        self.window.add_class("mx-window")
        self.window.observe(self._on_window, "value")
        self.preset = W.Dropdown(options=list(self.presets), value="auto (0.5-99.5 %)",
                                 description="preset", layout=W.Layout(width="300px"))
        self.preset.add_class("mx-window-preset")
        self.preset.observe(self._on_preset, "value")
        self.window_readout = W.HTML()
        self.window_readout.add_class("mx-window-readout")
        self.channel = W.Dropdown(options=[(n, i) for i, n in enumerate(self.channel_names)],
                                  value=0, description="channel",
                                  disabled=len(self.channel_names) < 2,
                                  layout=W.Layout(width="260px"))
        self.channel.add_class("mx-channel")
        self.channel.observe(self._on_channel, "value")
        self.class_select = W.Dropdown(
            options=[("all classes", 0)] + [(f"{n} ({v})", v) for v, n in self.class_options.items()],
            value=self.selected_class, description="class",
            disabled=len(self.class_options) < 2, layout=W.Layout(width="260px"))
        self.class_select.add_class("mx-class-select")
        self.class_select.observe(lambda change: self.set_class(int(change["new"])), "value")

    def _build_toggles(self) -> W.Checkbox:
        """Layer toggles and reader outlines; returns the disagreement toggle."""
        st = self.state
        self.toggles: dict[str, W.Checkbox] = {}
        for key, label in (("reference", "reference"), ("prediction", "prediction"),
                           ("error", "error map (FN / FP)"), ("probability", "probability"),
                           ("heatmap", "heatmap"), ("lesion", "selected lesion"),
                           ("crosshair", "crosshair")):
            cb = W.Checkbox(value=st.toggles[key], description=label, indent=False,
                            layout=W.Layout(width="auto"))
            cb.add_class(f"mx-toggle-{key}")
            cb.observe(functools.partial(self._on_toggle, key), "value")
            self.toggles[key] = cb
        if self.ref is None:
            self.toggles["reference"].disabled = self.toggles["error"].disabled = True
        if self.pred is None:
            self.toggles["prediction"].disabled = self.toggles["error"].disabled = True
        if self.probability is None:
            self.toggles["probability"].disabled = True
        # readers: one outline toggle each, and the disagreement overlay (two or more readers)
        self.reader_toggles: dict[str, W.Checkbox] = {}
        for i, name in enumerate(self.readers):
            cb = W.Checkbox(value=st.readers[name], description=f"reader {name}", indent=False,
                            layout=W.Layout(width="auto"))
            cb.add_class(f"mx-reader-{i}")
            cb.observe(functools.partial(self._on_reader, name), "value")
            self.reader_toggles[name] = cb
        dis = W.Checkbox(value=st.toggles["disagreement"], description="disagreement",
                         indent=False, disabled=len(self.readers) < 2,
                         layout=W.Layout(width="auto"))
        dis.add_class("mx-toggle-disagreement")
        dis.observe(functools.partial(self._on_toggle, "disagreement"), "value")
        self.toggles["disagreement"] = dis
        return dis

    def _build_opacity_zoom(self) -> None:
        """Opacity sliders of the overlays, zoom slider and zoom-to-lesion button."""
        st = self.state

        def opacity(layer: str, value: float, label: str) -> W.FloatSlider:
            sl = W.FloatSlider(value=value, min=0.0, max=1.0, step=0.05, description=label,
                               continuous_update=False)
            sl.add_class(f"mx-opacity-{layer}")
            sl.observe(functools.partial(self._on_opacity, layer), "value")
            return sl

        self.opacity = opacity("error", st.alpha, "error map")
        self.opacity.add_class("mx-opacity")
        self.heat_opacity = opacity("heatmap", st.heat_alpha, "heatmap")
        self.prob_opacity = opacity("probability", st.prob_alpha, "probability")
        self.zoom = W.FloatSlider(value=1.0, min=1.0, max=8.0, step=0.5, description="zoom",
                                  continuous_update=False)
        self.zoom.add_class("mx-zoom")
        self.zoom.observe(self._on_zoom, "value")
        self.zoom_lesion = W.Button(description="zoom to lesion", icon="search-plus",
                                    disabled=self.lesions is None)
        self.zoom_lesion.add_class("mx-zoom-lesion")
        self.zoom_lesion.on_click(lambda _b: self.zoom_to_lesion())

    def _build_lesion_widgets(self) -> None:
        """Lesion table and selector, verdict and miss-analysis button."""
        self.lesion_table = W.HTML()
        self.lesion_table.add_class("mx-lesion-table")
        options: list[tuple[str, str | None]] = [("(no lesion selected)", None)]
        if self.lesions is not None:
            options += [(self.lesions.label(i), i) for i in self.lesions.ids]
            self.lesion_table.value = self._lesion_table_html()
        else:
            self.lesion_table.value = "<i>No reference or prediction mask: no lesion table.</i>"
        self.lesion_select = W.Dropdown(options=options, value=None, description="lesion",
                                        layout=W.Layout(width="560px"))
        self.lesion_select.add_class("mx-lesion-select")
        self.lesion_select.observe(self._on_lesion, "value")
        self.verdict_html = W.HTML(self._no_verdict_text())
        self.verdict_html.add_class("mx-verdict")
        self.sweep_button = W.Button(description="why? (miss analysis)", icon="question",
                                     disabled=self.adapter is None)
        self.sweep_button.add_class("mx-miss-button")
        self.sweep_button.on_click(lambda _b: self.analyse(wait=not self.background))

    def _build_explanation_widgets(self) -> None:
        """Method, layer and target choices, run / cancel / uncertainty buttons, outputs."""
        from medseg_xai.explain import LAYER_METHODS, METHODS

        self._layer_methods = set(LAYER_METHODS) | {ACTIVATIONS}
        self.method = W.Dropdown(options=[*METHODS, ACTIVATIONS], value="gradcam"
                                 if "gradcam" in METHODS else METHODS[0], description="method")
        self.method.add_class("mx-method")
        layers: list[str] = []
        default_layer = None
        if self.adapter is not None:
            try:
                layers = [str(n) for n in self.adapter.layers(self.image.shape)["name"]]
                default_layer = self.adapter.default_layer(self.image.shape)
                if default_layer not in layers:  # a block enclosing a convolution
                    layers.append(default_layer)
            except (ValueError, RuntimeError):  # scripted or layer-less models: no layer choice
                layers = []
        self.layer = W.Dropdown(options=layers, value=default_layer if default_layer in layers
                                else (layers[-1] if layers else None), description="layer")
        self.layer.add_class("mx-layer")
        self.target = W.Dropdown(options=list(TARGETS), value="lesion", description="target")
        self.target.add_class("mx-target")
        for w in (self.method, self.layer, self.target):
            w.observe(self._on_explanation_choice, "value")
        self.run_button = W.Button(description="run", icon="play", button_style="primary",
                                   disabled=self.adapter is None)
        self.run_button.add_class("mx-run")
        self.run_button.on_click(lambda _b: self.run_explanation(wait=not self.background))
        self.cancel_button = W.Button(description="cancel", icon="stop", button_style="warning",
                                      disabled=True)
        self.cancel_button.add_class("mx-cancel")
        self.cancel_button.on_click(lambda _b: self.cancel())
        # issue 27: test-time-augmentation uncertainty shown as the heatmap (entropy)
        self.uncertainty_button = W.Button(description="uncertainty (TTA)", icon="random",
                                           disabled=self.adapter is None)
        self.uncertainty_button.add_class("mx-uncertainty")
        self.uncertainty_button.on_click(lambda _b: self._guarded_uncertainty())
        self.uncertainty: Any = None
        self.progress = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="160px"))
        self.progress.add_class("mx-progress")
        self.status = W.HTML("")
        self.status.add_class("mx-status")
        self.montage = W.Image(format="png", layout=W.Layout(display="none", width="auto"))
        self.montage.add_class("mx-montage")
        self.channel_panels = W.Image(format="png", layout=W.Layout(display="none",
                                                                    width="auto"))
        self.channel_panels.add_class("mx-channel-panels")
        self.ablation_html = W.HTML("")
        self.ablation_html.add_class("mx-ablation")
        self._update_layer_enabled()

    def _build_export_widgets(self) -> tuple[W.Button, W.Button]:
        """Export path and the PNG / NIfTI export buttons."""
        self.export_path = W.Text(value=self._default_export_name(), description="export to")
        save_png = W.Button(description="view PNG", icon="image")
        save_png.add_class("mx-export-png")
        save_png.on_click(lambda _b: self._export_clicked("png"))
        save_nii = W.Button(description="attribution NIfTI", icon="download")
        save_nii.add_class("mx-export-nifti")
        save_nii.on_click(lambda _b: self._export_clicked("nifti"))
        return save_png, save_nii

    def _build_model_tab(self, explain_box: W.Widget) -> None:
        """The explanation / model tabs (the model tab is filled when first opened)."""
        # "model" tab (layer table, kernels, activations, top channels): built when first opened
        self.model_tab: Any = None
        self._model_tab_stale = False
        self.model_box = W.VBox([W.HTML(
            "<i>Open this tab to see the model's layers, kernels and activations.</i>"
            if self.adapter is not None else "<i>The model tab needs a model (adapter).</i>")])
        self.model_box.add_class("mx-model-tab")
        self.tabs = W.Tab(children=[explain_box, self.model_box], selected_index=0)
        self.tabs.set_title(0, "explanation")
        self.tabs.set_title(1, "model")
        self.tabs.add_class("mx-tabs")
        self.tabs.observe(self._on_tab, "selected_index")

    def _attach_events(self, img: W.Image, position: int) -> None:
        """Click and wheel on a plane (immediate), pointer moves (throttled) via ipyevents."""
        try:
            from ipyevents import Event
        except ImportError:  # pictures still work; navigation falls back to the sliders
            return
        nav = Event(source=img, watched_events=["click", "wheel"], prevent_default_action=True)
        nav.on_dom_event(functools.partial(self._dom_event, position))
        move = Event(source=img, watched_events=["mousemove"], throttle_or_debounce="throttle",
                     wait=60)
        move.on_dom_event(functools.partial(self._dom_event, position))
        self._events += [nav, move]

    def _default_export_name(self) -> str:
        """``<case id>_view`` when the id is a safe file name, else ``case_view`` (a hostile
        id such as ``../../x`` must not choose where the export lands; characters that some
        file systems refuse, ``<>"|?*``, fall back too)."""
        from medseg_xai._privacy import safe_file_name

        try:
            name = safe_file_name(self.case_id or "case", "_view")
        except ValueError:
            return "case_view"
        return "case_view" if any(c in name for c in '<>"|?*') else name

    def _no_verdict_text(self) -> str:
        if self.ref is None:
            return ("<i>No reference mask: nothing can be called missed. Choose a predicted "
                    "component and press why? to see what made the model call it, or explain "
                    "the prediction (class region).</i>")
        return "<i>Choose a lesion to read its verdict.</i>"

    def _header_html(self) -> str:
        shape = "x".join(str(s) for s in self.state.shape)
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        cid = html.escape(str(self.case_id)) if self.case_id else "case"
        n = len(self.lesions) if self.lesions is not None else 0
        geo = self.geometry
        if geo.known:
            orient = f"stored {''.join(geo.axcodes or ())}, shown {geo.convention}"
        else:
            orient = "voxel axes, orientation unknown"
        note = f" · <span class='mx-geometry-note'>{html.escape(geo.note)}</span>" \
            if geo.note and geo.known else ""
        return (f"<b>{cid}</b> · {shape} voxels · spacing {sp} mm · "
                f"<span class='mx-orientation'>{html.escape(orient)}</span>{note} · "
                f"{len(self.channel_names)} channel(s) · {n} lesion row(s)")

    def _lesion_table_html(self) -> str:
        assert self.lesions is not None
        df = self.lesions.display_table()
        return df.to_html(index=False, float_format=lambda v: f"{v:.2f}", escape=True,
                          classes="mx-table", border=0, na_rep="n/a")

    def _update_window_readout(self) -> None:
        st = self.state
        lo, hi = self.presets["full range"]
        self.window_readout.value = (
            f"<span class='mx-wl'>L {st.level:.4g} · W {st.width:.4g} "
            f"({st.vmin:.4g} to {st.vmax:.4g}; data {lo:.4g} to {hi:.4g})</span>")

    # ------------------------------------------------------------------ drawing
    def redraw(self, positions: Any = None) -> None:
        """Re-render the planes at ``positions`` (default all) into their Image widgets."""
        with self._draw_lock:
            for i, png in self.renderer.render(positions).items():
                self.plane_images[i].value = png
            if self.channel_panels.layout.display != "none" and (positions is None or 0 in
                                                                 positions):
                self._show_channel_panels()

    _draw_lock = threading.RLock()

    def _set_status(self, text: str, *, error: bool = False) -> None:
        colour = "#b00020" if error else "inherit"
        cls = ' class="mx-error"' if error else ""
        self.status.value = f'<span{cls} style="color:{colour}">{html.escape(text)}</span>'

    # ------------------------------------------------------------------ pointer navigation
    @_guarded
    def _dom_event(self, position: int, event: dict) -> None:
        self.on_plane_event(position, event)

    def on_plane_event(self, position: int, event: dict) -> None:
        """Handle a pointer event on plane ``position``, as ipyevents sends it.

        ``click``: move the crosshair (all planes) to the voxel under the pointer;
        ``wheel``: step the plane's slice by the sign of ``deltaY``; ``mousemove``: update the
        value readout. Coordinates are ``dataX`` / ``dataY`` in picture pixels.
        """
        kind = event.get("type")
        if kind == "wheel":
            name, axis = self.state.planes[position]
            delta = float(event.get("deltaY", 0.0))
            if axis >= 0 and delta:
                self.step_slice(name, 1 if delta > 0 else -1)
            return
        x, y = event.get("dataX"), event.get("dataY")
        if x is None or y is None:
            return
        voxel = self.renderer.voxel_at(position, float(x), float(y))
        if voxel is None:
            return
        if kind == "click":
            self.centre_on(voxel)
        self.show_readout(voxel)

    def step_slice(self, plane: str, delta: int) -> None:
        """Move one plane by ``delta`` slices (the mouse wheel), clipped to the volume."""
        axis = dict(self.state.planes).get(plane)
        if axis not in self.sliders:
            raise ValueError(f"plane: expected one of {[n for n, _ in self.state.planes]}, "
                             f"got {plane!r}")
        lo, hi = 0, self.state.shape[axis] - 1
        self.sliders[axis].value = int(min(max(self.state.center[axis] + int(delta), lo), hi))

    def readout_values(self, voxel: Any) -> dict[str, Any]:
        """What the pointer reads at a stored voxel: position, world mm, channel values,
        probability, reference / prediction / attribution (values the case holds)."""
        v = tuple(int(i) for i in voxel)
        if len(v) != len(self.state.shape) or not all(0 <= i < s for i, s in
                                                      zip(v, self.state.shape)):
            raise ValueError(f"voxel: expected indices inside {self.state.shape}, got {voxel!r}")
        out: dict[str, Any] = {"voxel": v}
        world = self.geometry.world(v)
        out["world_mm"] = None if world is None else tuple(float(w) for w in world)
        out["values"] = {n: float(self.image[(i, *v)]) for i, n in enumerate(self.channel_names)}
        if self.probability is not None:
            out["probability"] = float(self.probability[v])
        if self.ref is not None:
            out["reference"] = bool(self.ref[v])
        if self.pred is not None:
            out["prediction"] = bool(self.pred[v])
        if self.explanation is not None:
            out["attribution"] = float(np.asarray(self.explanation.attribution)[v])
        return out

    def show_readout(self, voxel: Any) -> None:
        r = self.readout_values(voxel)
        self.readout_voxel = r["voxel"]
        parts = [f"voxel {r['voxel']}"]
        if r["world_mm"] is not None:
            parts.append("world (" + ", ".join(f"{w:.1f}" for w in r["world_mm"]) + ") mm")
        chosen = self.channel_names[self.state.channel]
        parts.append(f"{html.escape(chosen)} = {r['values'][chosen]:.4g}")
        if len(r["values"]) > 1:
            others = [f"{html.escape(n)} {val:.4g}" for n, val in r["values"].items()
                      if n != chosen]
            parts.append("(" + ", ".join(others) + ")")
        if "probability" in r:
            parts.append(f"p = {r['probability']:.3f}")
        for key in ("reference", "prediction"):
            if key in r:
                parts.append(f"{key} {'yes' if r[key] else 'no'}")
        if "attribution" in r:
            parts.append(f"attribution {r['attribution']:.3g}")
        self.readout.value = "<span class='mx-readout-text'>" + " · ".join(parts) + "</span>"

    # ------------------------------------------------------------------ callbacks
    @_guarded
    def _on_slice(self, axis: int, change: dict) -> None:
        if self._moving:
            return
        if self.state.set_slice(axis, int(change["new"])):
            self.redraw(self.state.planes_affected(axis))

    @_guarded
    def _on_window(self, change: dict) -> None:
        lo, hi = change["new"]
        if hi > lo:
            self.state.set_window(lo, hi)
            self._update_window_readout()
            self.redraw()

    @_guarded
    def _on_preset(self, change: dict) -> None:
        self.set_window_preset(change["new"])

    def set_window_preset(self, name: str) -> None:
        """Apply a named window (:func:`~medseg_xai.widgets.state.window_presets`)."""
        if name not in self.presets:
            raise ValueError(f"preset: expected one of {list(self.presets)}, got {name!r}")
        lo, hi = self.presets[name]
        if self.preset.value != name:
            self.preset.value = name
            return
        self.state.set_window(lo, hi)
        lo_all, hi_all = self.presets["full range"]
        self._moving = True
        try:  # widen the slider for presets beyond the data (CT windows)
            self.window.min, self.window.max = min(lo, lo_all), max(hi, hi_all)
            self.window.value = (lo, hi)
        finally:
            self._moving = False
        self._update_window_readout()
        self.redraw()

    @_guarded
    def _on_channel(self, change: dict) -> None:
        self.set_channel(int(change["new"]))

    def set_channel(self, channel: int) -> None:
        """Show input channel ``channel``: image, window presets and lesion contrast follow."""
        c = int(channel)
        if not 0 <= c < self.image.shape[0]:
            raise ValueError(f"channel: expected 0..{self.image.shape[0] - 1}, got {channel!r}")
        if self.channel.value != c:
            self.channel.value = c  # re-enters through the observer
            return
        self.state.channel = c
        self.renderer.set_image(self.image[c])
        self.presets = window_presets(self.image[c])
        self.preset.options = list(self.presets)
        lo, hi = self.presets["full range"]
        self._moving = True
        try:
            self.window.min, self.window.max = min(lo, self.window.min), max(hi, self.window.max)
            self.window.min, self.window.max = lo, hi
        finally:
            self._moving = False
        self.preset.value = "auto (0.5-99.5 %)"
        self.set_window_preset("auto (0.5-99.5 %)")
        if self.lesions is not None:
            self.lesions.set_channel(self.image, c)
            self.lesion_table.value = self._lesion_table_html()
            self.update_verdict()
        if self.readout_voxel is not None:
            self.show_readout(self.readout_voxel)

    @_guarded
    def _on_toggle(self, key: str, change: dict) -> None:
        if self.state.toggle(key, bool(change["new"])):
            self.redraw()

    @_guarded
    def _on_reader(self, name: str, change: dict) -> None:
        if self.state.show_reader(name, bool(change["new"])):
            self.redraw()

    @_guarded
    def _on_opacity(self, layer: str, change: dict) -> None:
        self.state.set_opacity(layer, float(change["new"]))
        self.redraw()

    @_guarded
    def _on_zoom(self, change: dict) -> None:
        self.state.set_zoom(float(change["new"]))
        self.redraw()

    @_guarded
    def _on_lesion(self, change: dict) -> None:
        self.select_lesion(change["new"])

    @_guarded
    def _on_explanation_choice(self, change: dict) -> None:
        self._update_layer_enabled()
        self.show_cached()
        if change["owner"] is self.target:
            self._model_tab_changed()

    @_guarded
    def _on_tab(self, change: dict) -> None:
        if change["new"] == 1:
            self.open_model_tab()

    def open_model_tab(self) -> Any:
        """Show the "model" tab, building its :class:`~medseg_xai.widgets.model_tab.ModelTab`
        on first use (or bringing it up to date with the chosen lesion / target)."""
        if self.adapter is None:
            raise ValueError("model tab: needs a model (adapter)")
        if self.tabs.selected_index != 1:
            self.tabs.selected_index = 1  # re-enters through the observer
            return self.model_tab
        if self.model_tab is None:
            from medseg_xai.widgets.model_tab import ModelTab

            self.model_tab = ModelTab(self.adapter, self.image, target=self._model_target())
            self.model_box.children = [self.model_tab]
            self._model_tab_stale = False
        elif self._model_tab_stale:
            self._model_tab_stale = False
            self.model_tab.set_case(self.image, self._model_target())
        return self.model_tab

    def _model_target(self) -> Any:
        """The explorer's current target for the model tab, or None when there is none yet
        (no lesion chosen for a lesion target)."""
        try:
            return self._make_target(self.target.value)
        except ValueError:
            return None

    def _model_tab_changed(self) -> None:
        """The lesion or target changed: update an open model tab now, a hidden one when it
        is next opened (its top channels re-run the model)."""
        if self.model_tab is None:
            return
        if self.tabs.selected_index == 1:
            self.model_tab.set_case(self.image, self._model_target())
        else:
            self._model_tab_stale = True

    def _update_layer_enabled(self) -> None:
        self.layer.disabled = self.method.value not in self._layer_methods or not self.layer.options

    # ------------------------------------------------------------------ public actions
    def set_slice(self, plane: str | int, index: int) -> None:
        """Move one plane's slice (by plane name or stored axis), as the slider does."""
        axis = plane if isinstance(plane, int) else dict(self.state.planes).get(plane)
        if axis not in self.sliders:
            raise ValueError(
                f"plane: expected one of {[n for n, _ in self.state.planes]}, got {plane!r}"
            )
        self.sliders[axis].value = int(index)

    def centre_on(self, point: Any) -> None:
        """Put every plane through ``point`` (stored voxel indices) and redraw once."""
        centre = self.state.centre_on(point)
        self._moving = True  # one redraw for all sliders, not one per slider
        try:
            for axis, slider in self.sliders.items():
                slider.value = centre[axis]
        finally:
            self._moving = False
        self.redraw()

    def zoom_to_lesion(self, lesion_id: str | None = None, margin: float = 1.5) -> float:
        """Centre on a lesion (default the selected one) and zoom so it fills the planes."""
        lid = lesion_id or self.selected_lesion
        if lid is None or self.lesions is None:
            raise ValueError("lesion_id: choose a lesion first (none is selected)")
        m = self.lesions.mask(lid)
        coords = np.argwhere(m)
        extent = coords.max(axis=0) - coords.min(axis=0) + 1
        z = float(np.clip(min(s / (e * margin) for s, e in zip(self.state.shape, extent)),
                          1.0, self.zoom.max))
        self.state.centre_on(self.lesions.centre(lid))
        self._moving = True
        try:
            for axis, slider in self.sliders.items():
                slider.value = self.state.center[axis]
        finally:
            self._moving = False
        self.state.set_zoom(z)
        if self.zoom.value != z:
            self.zoom.value = z  # observer redraws
        else:
            self.redraw()
        return z

    def select_lesion(self, lesion_id: str | None) -> None:
        """Choose a lesion: centre all planes on it, outline it and write its verdict."""
        if lesion_id is None:
            self.selected_lesion = None
            self.renderer.set_highlight(None)
            self.verdict_html.value = self._no_verdict_text()
            self.redraw()
            self._model_tab_changed()
            return
        if self.lesions is None:
            raise ValueError("lesion_id: this case has no masks, so no lesions")
        self.lesions.row(lesion_id)  # validates the id
        self.selected_lesion = lesion_id
        if self.lesion_select.value != lesion_id:
            self.lesion_select.value = lesion_id  # re-enters through the observer
            return
        self.renderer.set_highlight(self.lesions.mask(lesion_id))
        self.centre_on(self.lesions.centre(lesion_id))
        if self.lesions.status(lesion_id) != "missed" and self.target.value == "missed":
            self.target.value = "lesion"
        self.update_verdict()
        self.show_cached()
        self._model_tab_changed()

    def verdict(self, lesion_id: str | None = None) -> Any:
        """The :class:`~medseg_xai.explain.miss.MissAnalysis` of a lesion (default the chosen
        one), running :meth:`analyse` first when it has not run."""
        lid = lesion_id or self.selected_lesion
        if lid is None or self.lesions is None:
            raise ValueError("lesion_id: choose a lesion first (none is selected)")
        if lid not in self.analyses:
            self.analyse(lid, wait=True)
        if lid not in self.analyses:
            raise ValueError(f"verdict: the miss analysis of {lid} did not finish: "
                             f"{self.last_error}")
        return self.analyses[lid]

    def update_verdict(self) -> None:
        """Show the chosen lesion's analysis, or what the table says and how to get one."""
        lid = self.selected_lesion
        if lid is None:
            self.verdict_html.value = self._no_verdict_text()
            return
        if lid in self.analyses:
            from medseg_xai.widgets.verdict import verdict_html

            self.verdict_html.value = verdict_html(self.analyses[lid])
            return
        assert self.lesions is not None
        row = self.lesions.row(lid)
        prob = "n/a" if not np.isfinite(row["max_prob"]) else f"{row['max_prob']:.2f}"
        how = ("Press <b>why?</b> to run the miss analysis (probes re-run through the model)."
               if self.adapter is not None else "The miss analysis needs a model (adapter).")
        status = str(row["status"])
        said = {"missed": "was missed", "detected": "was detected",
                "false_positive": "is a false positive",
                "predicted": "was predicted (no reference)"}.get(status, status)
        self.verdict_html.value = (
            f"<b>{html.escape(lid)} {html.escape(said)}</b>: "
            f"{row['volume_mm3']:.0f} {self.lesions.size_unit}, max probability {prob} "
            f"(threshold {self.threshold:.2f}). {how}")

    @_guarded
    def analyse(self, lesion_id: str | None = None, wait: bool = True) -> Any:
        """Run :func:`~medseg_xai.explain.miss.explain_miss` on a lesion (cached per lesion).

        Probes (contrast, size, noise, location, intensity with ``reference_images``) re-run
        the model; the verdict panel shows the causes, the probes and the gated evidence.
        ``wait=False`` runs it in a thread with progress and cancel.
        """
        from medseg_xai.explain.miss import explain_miss
        from medseg_xai.explain.miss_settings import split_options

        lid = lesion_id or self.selected_lesion
        if lid is None or self.lesions is None or self.adapter is None:
            raise ValueError("miss analysis: needs a model and a chosen lesion")
        self.lesions.row(lid)  # validates the id
        if lid in self.analyses:
            self.update_verdict()
            return self.analyses[lid]
        settings, opts = split_options(
            self.miss_options, threshold=self.threshold, class_index=self.class_index,
            overlap_threshold=self.lesions.overlap_threshold)
        if self.detected_reference is not None:
            opts.setdefault("detected_lesions", self.detected_reference)

        def work(adapter: Any) -> Any:
            return explain_miss(adapter, self.image, self.ref, lid, pred=self.pred,
                                spacing=self.spacing, case_id=self.case_id, rules=self.rules,
                                settings=settings, **opts)

        def done(analysis: Any) -> None:
            self.analyses[lid] = analysis
            if self.selected_lesion == lid:
                self.update_verdict()

        self._start(f"miss analysis of {lid}", work, None, done, wait)
        return self.analyses.get(lid)

    # ------------------------------------------------------------------ long work
    @property
    def busy(self) -> bool:
        """Whether a background job (explanation or miss analysis) is running."""
        return self._job is not None and self._job.is_alive()

    def cancel(self) -> None:
        """Ask the running job to stop at its next forward pass."""
        if self.busy:
            self._cancel.set()
            self._set_status("cancelling…")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background job ends; returns whether it has ended."""
        job = self._job
        if job is not None:
            job.join(timeout)
        return not self.busy

    def _watched(self, expected: int | None) -> Any:
        """The adapter, counting forward passes into the progress bar and honouring cancel."""
        count = [0]
        last = [0.0]

        def tick() -> None:
            if self._cancel.is_set():
                raise Cancelled("cancelled by the user")
            count[0] += 1
            now = time.perf_counter()
            if now - last[0] > 0.1:  # at most ten progress messages a second
                last[0] = now
                if expected:
                    self.progress.value = min(count[0] / expected, 0.99)
                self.progress.description = f"{count[0]}" + (f"/{expected}" if expected else "")

        return self.adapter.watch(tick)

    def _start(self, label: str, work: Callable[[Any], Any], expected: int | None,
               done: Callable[[Any], None], wait: bool) -> Any:
        """Run ``work(adapter)`` (here, or in a thread) with progress and cancel."""
        if self.busy:
            raise ValueError(f"{label}: another job is running; wait for it or cancel it")
        self._cancel.clear()
        self.progress.value, self.progress.bar_style = 0.0, "info"
        self.progress.description = ""
        self._set_status(f"running {label}…")
        self.cancel_button.disabled = False
        self.run_button.disabled = self.sweep_button.disabled = True
        t0 = time.perf_counter()
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                box["value"] = work(self._watched(expected))
                self.progress.value, self.progress.bar_style = 1.0, "success"
                done(box["value"])
                self._set_status(f"{label} done in {time.perf_counter() - t0:.1f} s")
            except Cancelled:
                self.progress.bar_style = "warning"
                self._set_status(f"{label} cancelled after {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self.last_error = exc
                self.progress.bar_style = "danger"
                self._set_status(f"Error: {type(exc).__name__}: {exc}", error=True)
            finally:
                self.cancel_button.disabled = True
                self.run_button.disabled = self.sweep_button.disabled = self.adapter is None

        if wait:
            body()
            return box.get("value")
        self._job = threading.Thread(target=body, name=f"medseg-xai {label}", daemon=True)
        self._job.start()
        return None

    def _expected_passes(self, method: str) -> int | None:
        """Forward passes a method makes (for the progress bar), when it is known."""
        spatial = self.state.shape
        if method == "occlusion":  # explain()'s default window and stride: 1/8 of each axis
            opts = self.method_options.get("occlusion", {})

            def per_axis(v: Any, default: list[int]) -> list[int]:
                if v is None:
                    return default
                return [int(v)] * len(spatial) if np.ndim(v) == 0 else [int(x) for x in v]

            win = per_axis(opts.get("window"), [max(1, s // 8) for s in spatial])
            stride = per_axis(opts.get("stride"), win)
            return 1 + int(np.prod([(s - w) // st + 1 for s, w, st in zip(spatial, win, stride)]))
        if method == "feature_ablation":
            return 1 + self.image.shape[0]
        return None

    def _current_key(self) -> tuple:
        method = self.method.value
        layer = self.layer.value if method in self._layer_methods else None
        if method == ACTIVATIONS:
            return (method, None, layer)
        return (method, (self.target.value, self.selected_lesion), layer)

    def _make_target(self, kind: str) -> Any:
        from medseg_xai import targets

        c = self.class_index
        if kind == "region":
            mask = self.pred if self.pred is not None and self.pred.any() else self.ref
            if mask is None or not mask.any():
                raise ValueError("target 'class region': prediction and reference are empty")
            return targets.region(c, mask)
        if self.selected_lesion is None or self.lesions is None:
            raise ValueError(f"target {kind!r}: choose a lesion first")
        m = self.lesions.mask(self.selected_lesion)
        if kind == "missed":
            m = m & ~self.lesions.pred
            if not m.any():
                raise ValueError(
                    f"target 'its missed part': the prediction covers all of {self.selected_lesion}"
                )
        return targets.region(c, m)

    def modality_baseline(self) -> np.ndarray:
        """Baseline of per-modality ablation: each channel replaced by its own median.

        Zero is no intensity at all for most MRI normalisations; the median keeps each
        sequence at a typical value of its own, so the ablation asks what the model loses
        without that channel's *contrast*.
        """
        axes = tuple(range(1, self.image.ndim))
        return np.broadcast_to(np.median(self.image, axis=axes, keepdims=True),
                               self.image.shape).astype(np.float32)

    @_guarded
    def run_explanation(self, wait: bool = True) -> Any:
        """Compute (or fetch from the cache) the chosen explanation and show it.

        ``wait=False`` runs it in a thread (progress bar, cancel button) and returns None;
        the result is shown when it ends.
        """
        if self.adapter is None:
            raise ValueError("run: needs a model (adapter) to explain")
        key = self._current_key()
        if key in self.cache:
            self.show_cached()
            return self.cache.get(*key)
        method, target_key, layer = key
        if method == ACTIVATIONS:
            from medseg_xai.explain import activations

            def work(adapter: Any) -> Any:
                return activations(adapter, self.image, layer)
        else:
            from medseg_xai.explain import explain

            target = self._make_target(target_key[0])
            # Signed Grad-CAM: a miss often has only negative evidence (blue), which the
            # usual ReLU would blank out entirely.
            extra: dict[str, Any] = {"relu": False} if method in ("gradcam", "gradcam++") else {}
            extra.update(self.method_options.get(method, {}))
            if method == "feature_ablation" and "baseline" not in extra:
                extra["baseline"] = self.modality_baseline()

            def work(adapter: Any) -> Any:
                return explain(adapter, self.image, target, method=method, layer=layer, **extra)

        def done(value: Any) -> None:
            self.cache.put(*key, value)
            if self._current_key() == key:
                self.show_cached()

        self._start(method, work, self._expected_passes(method), done, wait)
        return self.cache.get(*key) if wait and key in self.cache else None

    def _guarded_uncertainty(self) -> None:
        try:
            self.show_uncertainty()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._set_status(f"uncertainty: {type(exc).__name__}: {exc}", error=True)

    def show_uncertainty(self, settings: Any = None) -> Any:
        """Run the uncertainty members (:func:`medseg_xai.explain.uncertainty.case_uncertainty`:
        flips along every axis by default) and show the voxel entropy as the heatmap (0 certain,
        1 uniform); the case scores go to the status line. Returns the ``CaseUncertainty``.
        """
        if self.adapter is None:
            raise ValueError("uncertainty: needs a model (adapter)")
        from medseg_xai.explain.uncertainty import case_uncertainty

        u = case_uncertainty(self.adapter, self.image, settings)
        self.uncertainty = u
        self.explanation = self.explanation_key = None
        self.ablation_html.value = ""
        self.renderer.set_heatmap(u.entropy)
        self.redraw()
        s = u.scores
        self._set_status(f"showing uncertainty: entropy over {u.n_members} members; case "
                         f"entropy {s['unc_entropy']:.3f}, disagreement "
                         f"{s['unc_disagreement']:.3f}, volume CV {s['unc_volume_cv']:.3f}")
        return u

    def show_cached(self) -> bool:
        """Show the cached result of the current choice; clear the heatmap when there is none."""
        key = self._current_key()
        value = self.cache.get(*key) if key in self.cache else None
        if key[0] == ACTIVATIONS:
            self.montage.layout.display = "none" if value is None else ""
            if value is not None:
                self._show_montage(value)
            return value is not None
        self.montage.layout.display = "none"
        if value is None:
            self.ablation_html.value = ""
            self.channel_panels.layout.display = "none"
            if self.explanation is not None:
                self.explanation = self.explanation_key = None
                self.renderer.set_heatmap(None)
                self.redraw()
            if self.adapter is not None and not self.busy:
                self._set_status("not computed yet: press run")
            return False
        if self.explanation_key != key:
            self.explanation, self.explanation_key = value, key
            if key[0] == "feature_ablation":
                # One number per channel: shown as a table, never as a constant "heatmap".
                self.renderer.set_heatmap(None)
                self.ablation_html.value = self._ablation_html(value)
                self.channel_panels.layout.display = "none"
            else:
                self.ablation_html.value = ""
                self.renderer.set_heatmap(np.asarray(value.attribution))
                multi = getattr(value, "channel_attribution", None)
                show = multi is not None and np.shape(multi)[0] > 1
                self.channel_panels.layout.display = "" if show else "none"
            self.redraw()
            if key[1][0] == "lesion" and key[1][1] == self.selected_lesion:
                self.update_verdict()
            self._set_status(f"showing {key[0]} for {value.target_description}")
        return True

    def _ablation_html(self, exp: Any) -> str:
        ch = np.asarray(exp.channel_attribution)
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{float(ch[i].flat[0]):+.4g}</td></tr>"
            for i, n in enumerate(self.channel_names))
        return ("<b>Per-modality ablation</b> (each channel replaced by its median; drop of the "
                "target score without it)<table class='mx-table'><tr><th>channel</th>"
                f"<th>score drop</th></tr>{rows}</table>")

    def _show_channel_panels(self) -> None:
        """One panel per input channel: its attribution over that channel, first plane."""
        from matplotlib.figure import Figure

        from medseg_xai.viz import fig_to_png_bytes
        from medseg_xai.widgets.render import compose_rgb

        exp = self.explanation
        multi = None if exp is None else getattr(exp, "channel_attribution", None)
        if multi is None or np.shape(multi)[0] < 2:
            return
        multi = np.asarray(multi)
        name, axis = self.state.planes[0]
        index = self.state.center[axis] if axis >= 0 else 0
        geo = self.geometry
        hmax = float(np.abs(multi).max()) or None
        n = multi.shape[0]
        fig = Figure(figsize=(2.2 * n, 2.5), dpi=80)
        for c in range(n):
            ax = fig.add_subplot(1, n, c + 1)
            img = geo.slice(self.image[c], name, index)
            lo, hi = window_presets(self.image[c])["auto (0.5-99.5 %)"]
            ax.imshow(compose_rgb(img, lo, hi, heatmap=geo.slice(multi[c], name, index),
                                  style=BlendStyle(hmax=hmax, heat_alpha=self.state.heat_alpha)),
                      interpolation="nearest", aspect=np.divide(*geo.pixel_spacing(name)))
            ax.set_title(f"{self.channel_names[c]} · {name} {index}", fontsize=7)
            ax.set_axis_off()
        fig.suptitle(f"{exp.method}: attribution per input channel (shared scale)", fontsize=8)
        self.channel_panels.value = fig_to_png_bytes(fig, dpi=80)

    def _show_montage(self, feats: np.ndarray) -> None:
        from medseg_xai.viz import fig_to_png_bytes, montage

        k = None
        if feats.ndim == 4:  # the layer's slice nearest to the axial slice shown
            k = min(feats.shape[1] - 1, self.state.center[0] * feats.shape[1] // self.state.shape[0])
        fig = montage(feats, max_features=32, slice_index=k, title=f"activations {self.layer.value}")
        self.montage.value = fig_to_png_bytes(fig)

    # ------------------------------------------------------------------ export
    def export_png(self, path: str | Path) -> Path:
        """Save the planes as shown now, side by side, as one PNG (:meth:`export_figure`)."""
        p = Path(path)
        if p.suffix.lower() != ".png":
            raise ValueError(f"path: expected a .png file name, got {p.name!r}")
        self.export_figure().savefig(p, format="png", metadata={"Software": None})
        return p

    def export_figure(self) -> Any:
        """The planes as shown now in one matplotlib figure.

        Each panel is the plane's picture with its orientation letters, scale bar and legend
        (colour bars included), titled with the plane and slice; the figure title names the
        case, the channel and the geometry.
        """
        import matplotlib.image as mpimg
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        pics = [mpimg.imread(io.BytesIO(img.value), format="png") for img in self.plane_images]
        fig = Figure(figsize=(3.2 * len(pics), 3.8), dpi=150)
        FigureCanvasAgg(fig)
        for i, pic in enumerate(pics):
            info = self.renderer.displayed(i)
            ax = fig.add_subplot(1, len(pics), i + 1)
            ax.imshow(pic)
            where = "" if info["slice"] is None else \
                f" · slice {info['slice']} (0-{self.state.shape[info['axis']] - 1})"
            ax.set_title(f"{info['plane']}{where}", fontsize=8)
            ax.set_axis_off()
        geo = self.geometry
        orient = (f"{''.join(geo.axcodes or ())} shown {geo.convention}" if geo.known
                  else "voxel axes, orientation unknown")
        title = (f"{self.case_id or 'case'} · {self.channel_names[self.state.channel]} · "
                 f"{orient}" + (f" · {geo.note}" if geo.note and geo.known else ""))
        # "$" would start matplotlib mathtext: a case id is shown literally
        fig.suptitle(title.replace("$", r"\$"), fontsize=9)
        return fig

    def export_attribution(self, path: str | Path) -> Path:
        """Save the shown attribution as NIfTI on the stored grid with the source affine."""
        if self.explanation is None:
            raise ValueError("export: no attribution shown; run an explanation first")
        return Path(self.explanation.to_nifti(path, affine=self.affine))

    @_guarded
    def _export_clicked(self, kind: str) -> None:
        base = Path(self.export_path.value or "medseg_xai_export")
        stem = base.with_suffix("") if base.suffix in {".png", ".nii", ".gz"} else base
        if kind == "png":
            out = self.export_png(stem.with_suffix(".png"))
        else:
            out = self.export_attribution(Path(f"{stem}_attribution.nii.gz"))
        self._set_status(f"saved {out.name}")
