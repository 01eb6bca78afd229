"""``CaseExplorer``: one case in three synchronised planes, its lesions, explanations, verdict.

Pictures are matplotlib figures rendered to PNG into ``ipywidgets.Image`` (no ipympl needed);
each plane keeps its figure and only swaps artist data on a redraw (:mod:`.render`). The state
(:mod:`.state`), the lesion measurements (:mod:`.lesion_table`) and the verdict
(:mod:`.verdict`) live outside this module and are tested without a browser.
"""

from __future__ import annotations

import functools
import html
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from medseg_xai.explain.quality import localisation
from medseg_xai.widgets.lesion_table import CaseLesions
from medseg_xai.widgets.render import PlaneRenderer
from medseg_xai.widgets.state import ExplanationCache, ViewState
from medseg_xai.widgets.verdict import DEFAULT_FACTORS, contrast_sweep, miss_verdict

__all__ = ["CaseExplorer", "TARGETS"]

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


class CaseExplorer(W.VBox):
    """Explore one case: planes, overlays, lesions, explanations and the miss verdict.

    Parameters
    ----------
    adapter : SegmentationAdapter or None
        The model; without it the explorer only shows the image, masks and lesion table.
    image : numpy.ndarray
        ``(C, *spatial)`` or spatial only, 2D or 3D; channel 0 is displayed.
    ref, pred : numpy.ndarray, optional
        Reference and predicted masks. Without ``pred`` the adapter predicts it.
    spacing : sequence of float, optional
        Voxel size in mm (default 1.0 per axis).
    probability : numpy.ndarray, optional
        Foreground probability, spatial shape or ``(K, *spatial)`` (one channel, or channel
        ``class_index``); computed with the adapter when omitted.
    affine : numpy.ndarray, optional
        4x4 affine of the source image, written into exported attribution NIfTI files.
    case_id : str, optional
    class_index : int
        Foreground class explained and measured.
    threshold : float
        Decision threshold the verdict compares probabilities with.
    detected_reference : pandas.DataFrame, optional
        Detected lesions (``volume_mm3``, optionally ``cnr``) the verdict compares against;
        default the lesions detected in this case.
    px : int
        Size of each plane picture in pixels.
    sweep_factors : sequence of float
        Contrast factors of the contrast sweep.
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
        class_index: int = 1,
        threshold: float = 0.5,
        detected_reference: pd.DataFrame | None = None,
        px: int = 320,
        sweep_factors: Any = DEFAULT_FACTORS,
    ) -> None:
        super().__init__()
        if image is None:
            raise ValueError("image: expected an array (C, *spatial) or (*spatial), got None")
        self.adapter = adapter
        self.case_id = case_id
        self.class_index = int(class_index)
        self.threshold = float(threshold)
        self.affine = None if affine is None else np.asarray(affine, dtype=float)
        self.sweep_factors = tuple(sweep_factors)
        self.last_error: Exception | None = None
        self._moving = False
        self.image, spatial = self._image(image, ref, pred, adapter)
        self.spacing = self._spacing(spacing, len(spatial))
        self.ref = None if ref is None else self._mask(ref, spatial, "ref")
        self.pred = None if pred is None else self._mask(pred, spatial, "pred")
        self.probability = self._probability(probability, spatial, self.class_index)
        if adapter is not None and (self.pred is None or self.probability is None):
            self._predict()

        self.lesions: CaseLesions | None = None
        if self.ref is not None:
            pred_mask = self.pred if self.pred is not None else np.zeros_like(self.ref)
            self.lesions = CaseLesions(self.image, self.ref, pred_mask, self.probability,
                                       self.spacing)
        self.detected_reference = detected_reference
        self.selected_lesion: str | None = None
        self.cache = ExplanationCache()
        self.explanation: Any = None  # the Explanation (or None) shown as heatmap
        self.explanation_key: tuple | None = None
        self.sweeps: dict[str, pd.DataFrame] = {}

        shown = self.image[0]
        lo, hi = np.percentile(shown, (0.5, 99.5))
        hi = hi if hi > lo else lo + 1.0
        self.state = ViewState(spatial, vmin=float(lo), vmax=float(hi))
        self.renderer = PlaneRenderer(shown, self.ref, self.pred, self.spacing, self.state, px)
        self._build(float(shown.min()), float(shown.max()))
        self.redraw()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_cohort(cls, cohort: Any, case_id: str, adapter: Any = None, **kwargs: Any) -> CaseExplorer:
        """Open manifest row ``case_id`` of a :class:`~medseg_xai.cohort.Cohort`."""
        case = cohort.load_case(str(case_id))
        return cls(adapter, case.image, case.label, case.prediction, case.spacing,
                   probability=case.probability, affine=case.affine, case_id=case.case_id,
                   **kwargs)

    @classmethod
    def from_audit(cls, result: Any, case_id: str, adapter: Any = None, cohort: Any = None,
                   **kwargs: Any) -> CaseExplorer:
        """Open a case of an :class:`~medseg_xai.audit.AuditResult`.

        The cohort is ``cohort`` when given, else re-opened from the manifest path the result
        records in ``settings["manifest"]`` (or ``provenance["manifest"]``). The verdict
        compares against the lesions the model detected across the audited cohort.
        """
        if cohort is None:
            cohort = _cohort_of(result)
        if "detected_reference" not in kwargs:
            les = getattr(result, "lesions", None)
            if isinstance(les, pd.DataFrame) and "status" in les and "volume_mm3" in les:
                kwargs["detected_reference"] = les[les["status"] == "detected"]
        return cls.from_cohort(cohort, case_id, adapter=adapter, **kwargs)

    # ------------------------------------------------------------------ input handling
    @staticmethod
    def _image(image: Any, ref: Any, pred: Any, adapter: Any) -> tuple[np.ndarray, tuple[int, ...]]:
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
        if img.shape == spatial:
            img = img[None]
        if img.ndim != len(spatial) + 1 or tuple(img.shape[1:]) != spatial:
            raise ValueError(
                f"image: expected (C, *{spatial}) or {spatial} to match the masks, got {img.shape}"
            )
        if not np.isfinite(img).all():
            raise ValueError("image: expected finite values, got NaN or infinite values")
        return img, spatial

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

    @staticmethod
    def _spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
        if spacing is None:
            return (1.0,) * ndim
        sp = tuple(float(s) for s in spacing)
        if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
            raise ValueError(f"spacing: expected {ndim} positive values in mm, got {spacing!r}")
        return sp

    def _predict(self) -> None:
        p = self.adapter.probabilities(self.image).detach().cpu().numpy()[0]
        if p.shape[0] == 1:
            fg, pred = p[0], p[0] > 0.5
        else:
            fg, pred = p[self.class_index], p.argmax(axis=0) == self.class_index
        if self.pred is None:
            self.pred = pred
        if self.probability is None:
            self.probability = fg.astype(np.float32)

    # ------------------------------------------------------------------ layout
    def _build(self, lo: float, hi: float) -> None:
        st = self.state
        self.plane_images: list[W.Image] = []
        self.sliders: dict[int, W.IntSlider] = {}
        columns = []
        for name, axis in st.planes:
            img = W.Image(format="png", layout=W.Layout(width="auto"))
            img.add_class(f"mx-plane-{name}")
            self.plane_images.append(img)
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

        step = (hi - lo) / 200 if hi > lo else 0.01
        self.window = W.FloatRangeSlider(value=(st.vmin, st.vmax), min=lo, max=max(hi, lo + step),
                                         step=step, description="window", readout_format=".2f",
                                         continuous_update=False)
        self.window.add_class("mx-window")
        self.window.observe(self._on_window, "value")
        self.toggles: dict[str, W.Checkbox] = {}
        for key, label in (("reference", "reference"), ("prediction", "prediction"),
                           ("error", "error map (FN / FP)"), ("heatmap", "heatmap"),
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
        self.opacity = W.FloatSlider(value=st.alpha, min=0.0, max=1.0, step=0.05,
                                     description="opacity", continuous_update=False)
        self.opacity.add_class("mx-opacity")
        self.opacity.observe(self._on_opacity, "value")
        view_controls = W.VBox([self.window, W.HBox(list(self.toggles.values())), self.opacity])

        # lesions and verdict
        self.lesion_table = W.HTML()
        self.lesion_table.add_class("mx-lesion-table")
        options: list[tuple[str, str | None]] = [("(no lesion selected)", None)]
        if self.lesions is not None:
            options += [(self.lesions.label(i), i) for i in self.lesions.ids]
            self.lesion_table.value = self._lesion_table_html()
        else:
            self.lesion_table.value = "<i>No reference mask: no lesion table.</i>"
        self.lesion_select = W.Dropdown(options=options, value=None, description="lesion",
                                        layout=W.Layout(width="560px"))
        self.lesion_select.add_class("mx-lesion-select")
        self.lesion_select.observe(self._on_lesion, "value")
        self.verdict_html = W.HTML("<i>Choose a lesion to read its verdict.</i>")
        self.verdict_html.add_class("mx-verdict")
        self.sweep_button = W.Button(description="contrast sweep", icon="sliders",
                                     disabled=self.adapter is None)
        self.sweep_button.add_class("mx-sweep-button")
        self.sweep_button.on_click(lambda _b: self.run_sweep())

        # explanations
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
        self.run_button.on_click(lambda _b: self.run_explanation())
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="120px"))
        self.status = W.HTML("")
        self.status.add_class("mx-status")
        self.montage = W.Image(format="png", layout=W.Layout(display="none", width="auto"))
        self.montage.add_class("mx-montage")
        self._update_layer_enabled()

        # export
        self.export_path = W.Text(value=f"{self.case_id or 'case'}_view", description="export to")
        save_png = W.Button(description="view PNG", icon="image")
        save_png.add_class("mx-export-png")
        save_png.on_click(lambda _b: self._export_clicked("png"))
        save_nii = W.Button(description="attribution NIfTI", icon="download")
        save_nii.add_class("mx-export-nifti")
        save_nii.on_click(lambda _b: self._export_clicked("nifti"))

        header = W.HTML(self._header_html())
        explain_box = W.VBox([
            W.HTML("<b>Explanation</b>"),
            W.HBox([self.method, self.layer, self.target]),
            W.HBox([self.run_button, self.progress, self.status]),
            self.montage,
        ])
        lesion_box = W.VBox([W.HTML("<b>Lesions</b>"), self.lesion_table, self.lesion_select,
                             W.HTML("<b>Verdict</b>"), self.verdict_html, self.sweep_button])
        export_box = W.HBox([self.export_path, save_png, save_nii])
        self.children = [header, W.HBox(columns), view_controls, lesion_box, explain_box,
                         export_box]
        self.add_class("mx-case-explorer")

    def _header_html(self) -> str:
        shape = "x".join(str(s) for s in self.state.shape)
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        cid = html.escape(str(self.case_id)) if self.case_id else "case"
        n = len(self.lesions) if self.lesions is not None else 0
        return f"<b>{cid}</b> · {shape} voxels · spacing {sp} mm · {n} lesion row(s)"

    def _lesion_table_html(self) -> str:
        assert self.lesions is not None
        df = self.lesions.display_table()
        return df.to_html(index=False, float_format=lambda v: f"{v:.2f}", escape=True,
                          classes="mx-table", border=0, na_rep="n/a")

    # ------------------------------------------------------------------ drawing
    def redraw(self, positions: Any = None) -> None:
        """Re-render the planes at ``positions`` (default all) into their Image widgets."""
        for i, png in self.renderer.render(positions).items():
            self.plane_images[i].value = png

    def _set_status(self, text: str, *, error: bool = False) -> None:
        colour = "#b00020" if error else "inherit"
        cls = ' class="mx-error"' if error else ""
        self.status.value = f'<span{cls} style="color:{colour}">{html.escape(text)}</span>'

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
            self.redraw()

    @_guarded
    def _on_toggle(self, key: str, change: dict) -> None:
        if self.state.toggle(key, bool(change["new"])):
            self.redraw()

    @_guarded
    def _on_opacity(self, change: dict) -> None:
        self.state.alpha = float(change["new"])
        self.redraw()

    @_guarded
    def _on_lesion(self, change: dict) -> None:
        self.select_lesion(change["new"])

    @_guarded
    def _on_explanation_choice(self, change: dict) -> None:
        self._update_layer_enabled()
        self.show_cached()

    def _update_layer_enabled(self) -> None:
        self.layer.disabled = self.method.value not in self._layer_methods or not self.layer.options

    # ------------------------------------------------------------------ public actions
    def set_slice(self, plane: str | int, index: int) -> None:
        """Move one plane's slice (by plane name or axis), as the slider does."""
        axis = plane if isinstance(plane, int) else dict(self.state.planes).get(plane)
        if axis not in self.sliders:
            raise ValueError(
                f"plane: expected one of {[n for n, _ in self.state.planes]}, got {plane!r}"
            )
        self.sliders[axis].value = int(index)

    def centre_on(self, point: Any) -> None:
        """Put every plane through ``point`` (voxel indices) and redraw once."""
        centre = self.state.centre_on(point)
        self._moving = True  # one redraw for all sliders, not one per slider
        try:
            for axis, slider in self.sliders.items():
                slider.value = centre[axis]
        finally:
            self._moving = False
        self.redraw()

    def select_lesion(self, lesion_id: str | None) -> None:
        """Choose a lesion: centre all planes on it and write its verdict."""
        if lesion_id is None:
            self.selected_lesion = None
            self.verdict_html.value = "<i>Choose a lesion to read its verdict.</i>"
            return
        if self.lesions is None:
            raise ValueError("lesion_id: this case has no reference mask, so no lesions")
        self.lesions.row(lesion_id)  # validates the id
        self.selected_lesion = lesion_id
        if self.lesion_select.value != lesion_id:
            self.lesion_select.value = lesion_id  # re-enters through the observer
            return
        self.centre_on(self.lesions.centre(lesion_id))
        if self.lesions.status(lesion_id) != "missed" and self.target.value == "missed":
            self.target.value = "lesion"
        self.update_verdict()
        self.show_cached()

    def verdict(self, lesion_id: str | None = None) -> Any:
        """The :class:`~medseg_xai.widgets.verdict.Verdict` of a lesion (default the chosen one)."""
        lid = lesion_id or self.selected_lesion
        if lid is None or self.lesions is None:
            raise ValueError("lesion_id: choose a lesion first (none is selected)")
        row = self.lesions.row(lid)
        detected = (self.detected_reference if self.detected_reference is not None
                    else self.lesions.detected)
        inside = method = None
        exp = self.explanation
        if (exp is not None and self.explanation_key is not None
                and self.explanation_key[1] == ("lesion", lid)
                and self.explanation_key[0] != ACTIVATIONS):
            inside = localisation(np.asarray(exp.attribution), self.lesions.mask(lid))
            method = self.explanation_key[0]
        return miss_verdict(row.to_dict(), detected, threshold=self.threshold,
                            overlap_threshold=self.lesions.overlap_threshold,
                            attribution_inside=inside,
                            lesion_fraction=self.lesions.lesion_fraction[lid], method=method,
                            sweep=self.sweeps.get(lid))

    def update_verdict(self) -> None:
        if self.selected_lesion is not None:
            self.verdict_html.value = self.verdict().to_html()

    @_guarded
    def run_sweep(self) -> pd.DataFrame | None:
        """Contrast sweep of the chosen lesion (cached per lesion), then refresh the verdict."""
        lid = self.selected_lesion
        if lid is None or self.lesions is None or self.adapter is None:
            raise ValueError("contrast sweep: needs a model and a chosen lesion")
        if lid not in self.sweeps:
            self._set_status(f"contrast sweep of {lid}…")
            m = self.lesions.mask(lid)
            others = (self.lesions.ref | self.lesions.pred) & ~m
            self.sweeps[lid] = contrast_sweep(self.adapter, self.image, m, self.sweep_factors,
                                              class_index=self.class_index, exclude=others,
                                              overlap_threshold=self.lesions.overlap_threshold)
            self._set_status(f"contrast sweep of {lid} done")
        self.update_verdict()
        return self.sweeps[lid]

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

    @_guarded
    def run_explanation(self) -> Any:
        """Compute (or fetch from the cache) the chosen explanation and show it."""
        if self.adapter is None:
            raise ValueError("run: needs a model (adapter) to explain")
        key = self._current_key()
        if key not in self.cache:
            method, target_key, layer = key
            self.progress.value, self.progress.bar_style = 0, "info"
            self._set_status(f"running {method}…")
            t0 = time.perf_counter()
            if method == ACTIVATIONS:
                from medseg_xai.explain import activations

                value: Any = activations(self.adapter, self.image, layer)
            else:
                from medseg_xai.explain import explain

                target = self._make_target(target_key[0])
                # Signed Grad-CAM: a miss often has only negative evidence (blue), which the
                # usual ReLU would blank out entirely.
                extra = {"relu": False} if method in ("gradcam", "gradcam++") else {}
                value = explain(self.adapter, self.image, target, method=method, layer=layer,
                                **extra)
            self.cache.put(*key, value)
            self.progress.value, self.progress.bar_style = 1, "success"
            self._set_status(f"{method} done in {time.perf_counter() - t0:.1f} s")
        self.show_cached()
        return self.cache.get(*key)

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
            if self.explanation is not None:
                self.explanation = self.explanation_key = None
                self.renderer.set_heatmap(None)
                self.redraw()
            if self.adapter is not None:
                self._set_status("not computed yet: press run")
            return False
        if self.explanation_key != key:
            self.explanation, self.explanation_key = value, key
            self.renderer.set_heatmap(np.asarray(value.attribution))
            self.redraw()
            if key[1][0] == "lesion" and key[1][1] == self.selected_lesion:
                self.update_verdict()
            self._set_status(f"showing {key[0]} for {value.target_description}")
        return True

    def _show_montage(self, feats: np.ndarray) -> None:
        from medseg_xai.viz import fig_to_png_bytes, montage

        k = None
        if feats.ndim == 4:  # the layer's slice nearest to the axial slice shown
            k = min(feats.shape[1] - 1, self.state.center[0] * feats.shape[1] // self.state.shape[0])
        fig = montage(feats, max_features=32, slice_index=k, title=f"activations {self.layer.value}")
        self.montage.value = fig_to_png_bytes(fig)

    # ------------------------------------------------------------------ export
    def export_png(self, path: str | Path) -> Path:
        """Save the planes as shown now, side by side, as one PNG."""
        import matplotlib.image as mpimg
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        p = Path(path)
        if p.suffix.lower() != ".png":
            raise ValueError(f"path: expected a .png file name, got {p.name!r}")
        pics = [mpimg.imread(io.BytesIO(img.value), format="png") for img in self.plane_images]
        fig = Figure(figsize=(3.2 * len(pics), 3.4), dpi=150)
        FigureCanvasAgg(fig)
        for i, (pic, (name, _)) in enumerate(zip(pics, self.state.planes)):
            ax = fig.add_subplot(1, len(pics), i + 1)
            ax.imshow(pic)
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
        fig.savefig(p, format="png")
        return p

    def export_attribution(self, path: str | Path) -> Path:
        """Save the shown attribution as NIfTI with the source image's affine."""
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
        self._set_status(f"saved {out}")


def _cohort_of(result: Any) -> Any:
    """Re-open the cohort an audit ran on, from the manifest path it recorded."""
    from medseg_xai.cohort import Cohort

    for holder in ("settings", "provenance"):
        info = getattr(result, holder, None) or {}
        for key in ("manifest", "manifest_path"):
            path = info.get(key) if isinstance(info, dict) else None
            if path and Path(str(path)).exists():
                root = info.get("root") if isinstance(info, dict) else None
                return Cohort.from_csv(path, root=root) if str(path).endswith(".csv") else \
                    Cohort.from_parquet(path, root=root)
    raise ValueError(
        "cohort: the audit result records no readable manifest path (settings['manifest']); "
        "pass cohort= explicitly"
    )
