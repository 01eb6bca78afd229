"""CaseExplorer without a browser: state changes, redraws, lesion choice, caching, export."""

from __future__ import annotations

import io
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from monai.networks.nets import UNet

from medseg_xai import metrics
from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.widgets import CaseExplorer, ExplorerOptions
from medseg_xai.widgets import case_explorer as ce_mod
from medseg_xai.widgets.verdict import contrast_to_noise

SHAPE = (16, 24, 24)
SPACING = (2.0, 1.0, 1.0)


def _ball(centre, radius, shape=SHAPE):
    g = np.indices(shape)
    return np.sqrt(sum((gi - ci) ** 2 for gi, ci in zip(g, centre))) <= radius


@pytest.fixture(scope="module")
def adapter() -> SegmentationAdapter:
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
               num_res_units=0)
    return SegmentationAdapter(net, spatial_dims=3)


@pytest.fixture()
def case():
    ref = _ball((8, 8, 8), 3) | _ball((8, 17, 16), 2)  # ref-1 detected, ref-2 missed
    pred = _ball((8, 8, 8), 3) | _ball((3, 18, 4), 1.5)  # a false positive component
    img = np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32) + 2.0 * ref
    return img, ref, pred


@pytest.fixture()
def explorer(adapter, case):
    img, ref, pred = case
    return CaseExplorer(adapter, img, ref, pred, SPACING, affine=_demo_affine(),
                        case_id="case-7")


def _demo_affine():
    """The demo's layout (``demo.phantom.device_affine``): stored axis 0 runs inferior ->
    superior, 1 posterior -> anterior, 2 left -> right, so axis 0 is the axial slice index."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = SPACING[2], SPACING[1], SPACING[0], 1
    affine[:3, 3] = (10.0, -5.0, 3.0)
    return affine


def _pngs(ex: CaseExplorer) -> list[bytes]:
    return [bytes(img.value) for img in ex.plane_images]


def test_lesion_table_matches_metrics_and_contrast(explorer, case) -> None:
    img, ref, pred = case
    table = explorer.lesions.table
    expected = metrics.lesions(pred, ref, SPACING, explorer.probability)
    assert table["lesion_id"].tolist() == expected["lesion_id"].tolist()
    assert table["status"].tolist() == ["detected", "missed", "false_positive"]
    np.testing.assert_allclose(table["volume_mm3"], expected["volume_mm3"])
    np.testing.assert_allclose(table["max_prob"], expected["max_prob"])
    # The displayed CNR is verdict.contrast_to_noise with other lesions kept out of the ring.
    m = explorer.lesions.mask("ref-2")
    assert m.sum() == table.loc[1, "volume_voxels"]
    assert table.loc[1, "cnr"] == pytest.approx(
        contrast_to_noise(img, m, exclude=(ref | pred) & ~m))
    html = explorer.lesion_table.value
    assert "ref-2" in html and "missed" in html and "false_positive" in html
    # The probability the explorer measured is the adapter's own.
    p = explorer.adapter.probabilities(img[None]).numpy()[0, 1]
    np.testing.assert_allclose(explorer.probability, p, rtol=1e-5, atol=1e-6)


def test_three_planes_and_slice_change_redraws_the_affected_planes(explorer) -> None:
    assert [n for n, _ in explorer.state.planes] == ["axial", "coronal", "sagittal"]
    assert all(v.startswith(b"\x89PNG") for v in _pngs(explorer))
    assert explorer.sliders[0].max == SHAPE[0] - 1
    assert explorer.toggles["crosshair"].value is False  # off by default: one plane redraws
    explorer.toggles["crosshair"].value = True
    before = _pngs(explorer)
    explorer.sliders[0].value = 3
    after = _pngs(explorer)
    assert explorer.state.center[0] == 3
    assert after[0] != before[0]
    # With the crosshair on, the other planes show the new axial position too.
    assert after[1] != before[1] and after[2] != before[2]
    explorer.toggles["crosshair"].value = False
    before = _pngs(explorer)
    explorer.set_slice("axial", 5)
    after = _pngs(explorer)
    assert after[0] != before[0] and after[1:] == before[1:]
    assert explorer.last_error is None


def test_toggles_window_and_opacity_change_the_picture(explorer) -> None:
    base = _pngs(explorer)
    explorer.toggles["error"].value = True
    with_error = _pngs(explorer)
    assert with_error != base
    explorer.toggles["error"].value = False
    assert _pngs(explorer) == base  # toggling back restores the exact picture
    explorer.toggles["reference"].value = False
    explorer.toggles["prediction"].value = False
    bare = _pngs(explorer)
    assert bare != base
    lo, hi = explorer.window.value
    explorer.window.value = (lo, lo + (hi - lo) / 4)
    assert (explorer.state.vmin, explorer.state.vmax) == pytest.approx(explorer.window.value)
    assert _pngs(explorer) != bare
    explorer.opacity.value = 0.9
    assert explorer.state.alpha == pytest.approx(0.9)
    assert explorer.last_error is None


def test_error_map_colours_false_negatives_and_positives_apart(explorer) -> None:
    from matplotlib.colors import to_rgb

    from medseg_xai.viz import ERROR_COLOURS

    explorer.toggles["crosshair"].value = False
    explorer.opacity.value = 1.0
    explorer.toggles["error"].value = True
    explorer.select_lesion("ref-2")  # missed: its axial slice holds false negatives
    pic = mpimg.imread(io.BytesIO(explorer.plane_images[0].value), format="png")[..., :3]
    fn = np.array(to_rgb(ERROR_COLOURS[2]))
    fp = np.array(to_rgb(ERROR_COLOURS[3]))
    near_fn = (np.abs(pic - fn).max(axis=-1) < 0.05).sum()
    assert near_fn > 10
    fp_id = explorer.lesions.table.set_index("status").loc["false_positive", "lesion_id"]
    explorer.select_lesion(fp_id)
    pic = mpimg.imread(io.BytesIO(explorer.plane_images[0].value), format="png")[..., :3]
    assert (np.abs(pic - fp).max(axis=-1) < 0.05).sum() > 5


def test_choosing_a_lesion_centres_every_plane_inside_it(explorer) -> None:
    explorer.lesion_select.value = "ref-2"
    c = tuple(explorer.state.center)
    assert explorer.lesions.mask("ref-2")[c]
    assert [explorer.sliders[a].value for a in range(3)] == list(c)
    # Before the analysis runs, the panel says what the lesion table holds and how to ask why.
    assert "ref-2 was missed</b>" in explorer.verdict_html.value
    assert "why?" in explorer.verdict_html.value
    # The target follows the lesion's status: no "missed part" for a detected lesion.
    explorer.target.value = "missed"
    explorer.select_lesion("ref-1")
    assert explorer.target.value == "lesion"
    assert "ref-1 was detected</b>" in explorer.verdict_html.value
    with pytest.raises(ValueError, match="lesion_id"):
        explorer.select_lesion("ref-99")


def test_explanations_are_cached_per_method_target_and_layer(explorer, monkeypatch) -> None:
    # The package attribute `medseg_xai.explain` is the function; patch the module's.
    explain_pkg = sys.modules["medseg_xai.explain"]
    calls = []
    real = explain_pkg.explain

    def counting(*args, **kwargs):
        calls.append((kwargs.get("method"), kwargs.get("layer")))
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_pkg, "explain", counting)
    explorer.select_lesion("ref-2")
    plain = _pngs(explorer)
    explorer.method.value = "gradcam"
    exp = explorer.run_explanation()
    assert explorer.last_error is None, explorer.status.value
    assert exp.method == "gradcam" and exp.layer == explorer.layer.value
    assert exp.attribution.shape == SHAPE
    with_heat = _pngs(explorer)
    assert with_heat != plain

    explorer.method.value = "saliency"  # not computed: heatmap cleared, back to plain view
    assert _pngs(explorer) == plain
    assert "not computed" in explorer.status.value
    explorer.run_explanation()
    explorer.target.value = "missed"
    explorer.run_explanation()
    assert len(explorer.cache) == 3 and len(calls) == 3

    explorer.method.value = "gradcam"  # revisit: served from the cache, no new call
    explorer.target.value = "lesion"
    assert len(calls) == 3
    assert explorer.explanation is exp
    assert _pngs(explorer) == with_heat
    explorer.run_explanation()
    assert len(calls) == 3
    # A different layer is a different key.
    other = [n for n in explorer.layer.options if n != explorer.layer.value][0]
    explorer.layer.value = other
    explorer.run_explanation()
    assert len(calls) == 4 and calls[-1] == ("gradcam", other)


def test_missed_part_target_covers_only_unpredicted_voxels(explorer) -> None:
    explorer.select_lesion("ref-1")  # fully detected: its missed part is empty
    explorer.target.value = "region"
    t = explorer._make_target("region")
    assert np.array_equal(t.mask, explorer.pred)
    explorer.select_lesion("ref-2")
    t = explorer._make_target("missed")
    assert np.array_equal(t.mask, explorer.lesions.mask("ref-2") & ~explorer.pred)


def test_activation_montage(explorer) -> None:
    explorer.select_lesion("ref-2")
    explorer.method.value = "activations"
    assert explorer.layer.disabled is False
    feats = explorer.run_explanation()
    assert explorer.last_error is None, explorer.status.value
    assert feats.ndim == 4 and explorer.montage.layout.display == ""
    assert bytes(explorer.montage.value).startswith(b"\x89PNG")


@pytest.mark.slow
def test_verdict_panel_shows_the_miss_analysis(explorer, case) -> None:
    from medseg_xai.explain.miss import MissSettings, explain_miss

    img, ref, pred = case
    explorer.miss_options = {"methods": ("gradcam",)}  # one attribution method keeps it quick
    explorer.select_lesion("ref-2")
    analysis = explorer.analyse()
    assert explorer.last_error is None, explorer.status.value
    # The panel is a view of explain_miss, run on the explorer's own inputs.
    same = explain_miss(explorer.adapter, img, ref, "ref-2", pred=pred, spacing=SPACING,
                        case_id="case-7",
                        settings=MissSettings(threshold=explorer.threshold, methods=("gradcam",)))
    assert analysis.to_dict() == same.to_dict()
    panel = explorer.verdict_html.value
    assert analysis.verdict_lines[0].split(":")[0] in panel  # "ref-2 was missed"
    assert "Causes:" in panel and "mx-probes" in panel and "contrast" in panel
    assert explorer.verdict() is analysis  # cached per lesion
    assert explorer.analyse() is analysis
    assert "miss analysis of ref-2 done" in explorer.status.value


def test_export_view_png_and_attribution_nifti(explorer, tmp_path) -> None:
    explorer.select_lesion("ref-2")
    with pytest.raises(ValueError, match="no attribution"):
        explorer.export_attribution(tmp_path / "a.nii.gz")
    exp = explorer.run_explanation()
    png = explorer.export_png(tmp_path / "view.png")
    pic = mpimg.imread(png)
    assert pic.ndim == 3 and pic.shape[1] > pic.shape[0]  # three planes side by side
    out = explorer.export_attribution(tmp_path / "a.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, explorer.affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), exp.attribution)
    with pytest.raises(ValueError, match=".png"):
        explorer.export_png(tmp_path / "view.jpg")
    explorer.export_path.value = str(tmp_path / "clicked")
    explorer._export_clicked("nifti")
    assert (tmp_path / "clicked_attribution.nii.gz").exists()
    assert "saved" in explorer.status.value


def test_errors_in_callbacks_show_in_the_status_line(explorer, monkeypatch) -> None:
    def boom(*a, **k):
        raise ValueError("target: broken on purpose")

    monkeypatch.setattr(ce_mod.CaseExplorer, "_make_target", boom)
    explorer.select_lesion("ref-2")
    explorer.method.value = "saliency"
    assert explorer.run_explanation() is None
    assert "mx-error" in explorer.status.value and "broken on purpose" in explorer.status.value


def test_two_dimensional_case_has_one_view_and_no_slider() -> None:
    g = np.indices((32, 32))
    ref = (g[0] - 10) ** 2 + (g[1] - 10) ** 2 <= 9
    pred = np.zeros_like(ref)
    img = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32) + 3 * ref
    ex = CaseExplorer(None, img, ref, pred)
    assert len(ex.plane_images) == 1 and ex.sliders == {}
    assert ex.run_button.disabled and ex.sweep_button.disabled
    ex.select_lesion("ref-1")
    assert "ref-1 was missed</b>" in ex.verdict_html.value
    assert "needs a model" in ex.verdict_html.value
    with pytest.raises(ValueError, match="plane"):
        ex.set_slice("axial", 1)


def test_bad_inputs_name_the_argument(case) -> None:
    img, ref, pred = case
    with pytest.raises(ValueError, match="pred: expected shape"):
        CaseExplorer(None, img, ref, pred[:-1])
    with pytest.raises(ValueError, match="spacing"):
        CaseExplorer(None, img, ref, pred, (1.0, 1.0))
    with pytest.raises(ValueError, match="image"):
        CaseExplorer(None, img[:-1], ref, pred)
    with pytest.raises(ValueError, match="image"):
        CaseExplorer(None, None)


# --------------------------------------------------------------------------- navigation
def _pixel_of(ex: CaseExplorer, position: int, voxel) -> tuple[float, float]:
    """PNG pixel (x from the left, y from the top) where a stored voxel is drawn."""
    pl = ex.renderer.planes[position]
    row, col = ex.geometry.to_display(pl.name, voxel)
    x, y = pl.ax.transData.transform((col, row))
    return float(x), float(pl.fig.get_figheight() * pl.fig.dpi - y)


def test_click_moves_the_crosshair_and_wheel_steps_slices(explorer) -> None:
    target = (4, 17, 9)
    x, y = _pixel_of(explorer, 0, target)  # on the axial plane: sets rows and columns
    explorer.on_plane_event(0, {"type": "click", "dataX": x, "dataY": y})
    c = explorer.state.center
    assert (c[1], c[2]) == (17, 9)
    assert [explorer.sliders[a].value for a in range(3)] == list(c)
    assert "voxel (" in explorer.readout.value and "world (" in explorer.readout.value
    before = explorer.state.center[0]
    explorer.on_plane_event(0, {"type": "wheel", "deltaY": 120})
    explorer.on_plane_event(0, {"type": "wheel", "deltaY": 120})
    assert explorer.state.center[0] == before + 2
    explorer.on_plane_event(0, {"type": "wheel", "deltaY": -53})
    assert explorer.state.center[0] == before + 1
    for _ in range(40):  # clipped at the last slice
        explorer.on_plane_event(0, {"type": "wheel", "deltaY": 1})
    assert explorer.state.center[0] == SHAPE[0] - 1
    # a click on the legend strip (below the picture) moves nothing
    pl = explorer.renderer.planes[0]
    h = pl.fig.get_figheight() * pl.fig.dpi
    explorer.on_plane_event(0, {"type": "click", "dataX": 5, "dataY": h - 2})
    assert explorer.state.center[1:] == [17, 9]
    assert explorer.last_error is None


def test_readout_reads_the_stored_voxel_and_world_position(explorer, case) -> None:
    img, ref, pred = case
    v = (8, 17, 16)  # inside ref-2
    r = explorer.readout_values(v)
    assert r["values"]["channel 0"] == pytest.approx(float(img[v]))
    assert r["reference"] is True and r["prediction"] is bool(pred[v])
    assert r["probability"] == pytest.approx(float(explorer.probability[v]))
    np.testing.assert_allclose(r["world_mm"], (_demo_affine() @ np.array([*v, 1.0]))[:3])
    with pytest.raises(ValueError, match="voxel"):
        explorer.readout_values((99, 0, 0))


def test_geometry_letters_and_legend_on_every_view(explorer) -> None:
    for i in range(3):
        info = explorer.renderer.displayed(i)
        assert set(info["letters"].values()) <= set("RLAPSI") and len(info["letters"]) == 4
        assert info["scale_bar_mm"] > 0
        assert "reference" in info["legend"] and "prediction" in info["legend"]
    assert explorer.renderer.displayed(0)["letters"] == {"top": "A", "bottom": "P",
                                                          "left": "R", "right": "L"}
    assert "stored" in explorer.children[0].value and "radiological" in explorer.children[0].value
    explorer.toggles["error"].value = True
    explorer.toggles["probability"].value = True
    legend = explorer.renderer.displayed(1)["legend"]
    assert legend[:3] == ["true positive", "false negative", "false positive"]
    assert "probability 0-1" in legend


def test_window_presets_and_readout(explorer) -> None:
    assert {"auto (0.5-99.5 %)", "1-99 %", "full range"} <= set(explorer.presets)
    explorer.set_window_preset("full range")
    lo, hi = explorer.presets["full range"]
    assert (explorer.state.vmin, explorer.state.vmax) == pytest.approx((lo, hi))
    assert f"W {hi - lo:.4g}" in explorer.window_readout.value
    with pytest.raises(ValueError, match="preset"):
        explorer.set_window_preset("bone")
    from medseg_xai.widgets.state import window_presets

    ct = window_presets(np.array([-1000.0, 0.0, 1500.0]))
    assert ct["CT soft tissue (L40 W400)"] == (-160.0, 240.0)


def test_zoom_to_lesion_selected_outline_and_separate_opacities(explorer) -> None:
    from matplotlib.colors import to_rgb

    from medseg_xai.widgets.render import HIGHLIGHT_COLOUR

    explorer.select_lesion("ref-2")
    rgb = explorer.renderer.displayed(0)["rgb"]
    white = np.all(rgb == np.round(np.array(to_rgb(HIGHLIGHT_COLOUR)) * 255), axis=-1)
    assert white.sum() > 4  # the selected lesion is outlined
    assert "selected lesion" in explorer.renderer.displayed(0)["legend"]
    z = explorer.zoom_to_lesion()
    assert z > 1 and explorer.state.zoom == z
    pl = explorer.renderer.planes[0]
    x0, x1 = pl.ax.get_xlim()
    assert (x1 - x0) == pytest.approx(pl.shape[1] / z)
    assert explorer.lesions.mask("ref-2")[tuple(explorer.state.center)]
    # opacities are independent
    explorer.heat_opacity.value = 0.2
    explorer.prob_opacity.value = 0.9
    explorer.opacity.value = 0.7
    st = explorer.state
    assert (st.alpha, st.heat_alpha, st.prob_alpha) == pytest.approx((0.7, 0.2, 0.9))
    explorer.toggles["probability"].value = True
    with_prob = explorer.renderer.displayed(0)["rgb"].copy()
    explorer.prob_opacity.value = 0.1
    assert not np.array_equal(explorer.renderer.displayed(0)["rgb"], with_prob)


@pytest.mark.slow
def test_tensor_batch_input_and_a_case_without_reference(adapter, case) -> None:
    img, ref, _ = case
    t = torch.from_numpy(img)[None, None]  # (1, 1, D, H, W), as explain() takes it
    ex = CaseExplorer(adapter, t, options=ExplorerOptions(background=False))
    assert ex.image.shape == (1, *SHAPE) and ex.ref is None and ex.pred is not None
    assert ex.toggles["reference"].disabled and ex.toggles["error"].disabled
    assert "No reference" in ex.verdict_html.value
    assert ex.lesions is not None and len(ex.lesions) > 0  # the model's own components
    assert set(ex.lesions.table["status"]) == {"predicted"}
    blob = ex.lesions.ids[0]
    ex.select_lesion(blob)
    assert f"{blob} was predicted (no reference)</b>" in ex.verdict_html.value
    ex.miss_options = {"methods": ("gradcam",)}
    analysis = ex.analyse()  # why did the model call this blob? (no reference needed)
    assert ex.last_error is None, ex.status.value
    assert analysis.status == "predicted" and analysis.lesion_id == blob
    ex.target.value = "region"
    exp = ex.run_explanation()
    assert ex.last_error is None, ex.status.value
    assert exp is not None and exp.attribution.shape == SHAPE


def test_threshold_drives_the_prediction(adapter, case) -> None:
    img, ref, _ = case
    low = CaseExplorer(adapter, img, ref, options=ExplorerOptions(threshold=0.2))
    high = CaseExplorer(adapter, img, ref, options=ExplorerOptions(threshold=0.8))
    p = adapter.probabilities(img[None]).numpy()[0, 1]
    np.testing.assert_array_equal(low.pred, p > 0.2)
    np.testing.assert_array_equal(high.pred, p > 0.8)


def test_png_export_carries_case_plane_slice_and_legend(explorer, tmp_path) -> None:
    explorer.toggles["error"].value = True
    explorer.set_slice("axial", 5)
    fig = explorer.export_figure()
    assert fig._suptitle.get_text().startswith("case-7 · channel 0 · ")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == f"axial · slice 5 (0-{SHAPE[0] - 1})" and titles[1].startswith("coronal")
    # each panel is the plane's picture, legend strip (error colours) included
    for i in range(3):
        assert explorer.renderer.displayed(i)["legend"][0] == "true positive"
    path = explorer.export_png(tmp_path / "v.png")
    assert mpimg.imread(path).shape[1] == int(3.2 * 3 * 150)


# --------------------------------------------------------------------------- channels, jobs
class _TwoChannel(torch.nn.Module):
    """Segments from channel 1 only: attribution must land on channel 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([1.0, -1.0]))
            self.conv.weight[1, 1, 1, 1, 1] = 4.0
            self.conv.weight[0, 1, 1, 1, 1] = -4.0

    def forward(self, x):
        return self.conv(x)


@pytest.fixture()
def two_channel(case):
    img, ref, _ = case
    rng = np.random.default_rng(3)
    x = np.stack([rng.normal(size=SHAPE), 0.2 * rng.normal(size=SHAPE) + 1.5 * ref]).astype(
        np.float32)
    ad = SegmentationAdapter(_TwoChannel())
    return CaseExplorer(ad, x, ref, None, SPACING, affine=_demo_affine(),
                        options=ExplorerOptions(channel_names=["T1", "FLAIR"], background=False))


def test_channel_selector_changes_picture_contrast_and_readout(two_channel) -> None:
    ex = two_channel
    assert not ex.channel.disabled and ex.channel.options == (("T1", 0), ("FLAIR", 1))
    cnr0 = ex.lesions.table["cnr"].copy()
    before = _pngs(ex)
    ex.channel.value = 1
    assert ex.state.channel == 1 and _pngs(ex) != before
    assert ex.lesions.channel == 1
    assert (ex.lesions.table["cnr"].to_numpy()[:2] > cnr0.to_numpy()[:2]).all()
    np.testing.assert_array_equal(ex.renderer.image, ex.image[1])
    ex.show_readout((8, 8, 8))
    assert "FLAIR = " in ex.readout.value and "T1 " in ex.readout.value


def test_per_channel_attribution_panels_and_modality_ablation(two_channel) -> None:
    ex = two_channel
    ex.select_lesion("ref-1")
    ex.method.value = "saliency"
    exp = ex.run_explanation()
    assert ex.last_error is None, ex.status.value
    ch = exp.channel_attribution
    assert ch.shape == (2, *SHAPE)
    assert np.abs(ch[1]).sum() > 0 and np.abs(ch[0]).sum() == 0  # the model reads FLAIR only
    assert ex.channel_panels.layout.display == ""
    assert bytes(ex.channel_panels.value).startswith(b"\x89PNG")
    ex.method.value = "feature_ablation"
    ab = ex.run_explanation()
    assert ex.last_error is None, ex.status.value
    assert ab.params["baseline"] != "0"  # the per-channel median, not zero
    assert ex.renderer.heatmap is None  # a constant per-channel map is never a heatmap
    assert "Per-modality ablation" in ex.ablation_html.value
    assert "FLAIR" in ex.ablation_html.value
    drops = np.asarray(ab.channel_attribution)[:, 0, 0, 0]
    assert abs(drops[1]) > abs(drops[0])


def test_background_occlusion_reports_progress_and_cancels(two_channel) -> None:
    import threading

    ex = two_channel
    ex.select_lesion("ref-1")
    ex.method.value = "occlusion"
    started = threading.Event()
    release = threading.Event()
    real_watch = ex.adapter.watch

    def slow_watch(cb):
        def gated():
            started.set()
            release.wait(5)
            cb()
        return real_watch(gated)

    ex.adapter.watch = slow_watch
    try:
        assert ex.run_explanation(wait=False) is None
        assert started.wait(5) and ex.busy and not ex.cancel_button.disabled
        ex.cancel()
        release.set()
        assert ex.wait(10)
    finally:
        del ex.adapter.watch
    assert "cancelled" in ex.status.value and ex.progress.bar_style == "warning"
    assert len(ex.cache) == 0 and ex.cancel_button.disabled and not ex.run_button.disabled
    # run to the end: the progress bar fills and the result is cached
    ex.run_explanation(wait=False)
    assert ex.wait(60)
    assert ex.progress.value == 1.0 and len(ex.cache) == 1 and "done" in ex.status.value


def test_two_dimensional_lesions_are_areas_in_mm2_and_spacing_sets_the_aspect() -> None:
    g = np.indices((32, 40))
    ref = (g[0] - 10) ** 2 + (g[1] - 10) ** 2 <= 9
    img = np.random.default_rng(1).normal(size=(32, 40)).astype(np.float32) + 3 * ref
    ex = CaseExplorer(None, img, ref, np.zeros_like(ref), (0.5, 2.0))
    table = ex.lesions.display_table()
    assert "area_mm2" in table and "volume_mm3" not in table
    assert table["area_mm2"].iloc[0] == pytest.approx(ref.sum() * 0.5 * 2.0)
    assert "mm²" in ex.lesions.label("ref-1")
    pl = ex.renderer.planes[0]
    assert pl.ax.get_aspect() == pytest.approx(0.25)
    assert ex.renderer.displayed(0)["note"] == "voxel axes, orientation unknown"


@pytest.mark.parametrize("hostile", ["<img src=x onerror=alert(1)>", "../../x"])
def test_hostile_case_id_and_channel_names_are_escaped_and_cannot_pick_the_export_folder(
        adapter, case, hostile, tmp_path, monkeypatch) -> None:
    img, ref, pred = case
    ex = CaseExplorer(None, np.stack([img, img]), ref, pred, SPACING, case_id=hostile,
                      options=ExplorerOptions(channel_names=[hostile, "<b>T2</b>"]))

    def html_values(widget) -> list[str]:
        out = [widget.value] if type(widget).__name__ == "HTML" else []
        for child in getattr(widget, "children", ()):
            out += html_values(child)
        return out

    ex.show_readout((8, 8, 8))
    ex.select_lesion("ref-1")
    texts = "\n".join(html_values(ex))
    assert "<img" not in texts and "<b>T2</b>" not in texts
    if "<" in hostile:
        assert "&lt;img src=x onerror=alert(1)&gt;" in ex.children[0].value  # the header
        assert "&lt;img src=x onerror=alert(1)&gt;" in ex.readout.value
    # The default export name never comes from an unsafe id; saving stays in the folder.
    name = ex.export_path.value
    assert "/" not in name and ".." not in name and "<" not in name
    assert name == "case_view"
    monkeypatch.chdir(tmp_path)
    ex._export_clicked("png")
    assert ex.last_error is None
    assert [p.name for p in tmp_path.iterdir()] == ["case_view.png"]
    fig = ex.export_figure()
    assert hostile in fig._suptitle.get_text()


def test_a_plain_case_id_names_the_default_export(explorer) -> None:
    assert explorer.export_path.value == "case-7_view"


def test_model_tab_is_built_when_opened_and_follows_the_target(explorer, adapter) -> None:
    from medseg_xai.explain.features import channel_weights
    from medseg_xai.widgets.model_tab import ModelTab

    assert explorer.model_tab is None  # nothing is computed until the tab is opened
    explorer.select_lesion("ref-1")
    assert explorer.model_tab is None
    explorer.tabs.selected_index = 1  # the user opens the "model" tab
    tab = explorer.model_tab
    assert isinstance(tab, ModelTab) and explorer.last_error is None
    assert tab.last_error is None, tab.last_error
    assert explorer.model_box.children == (tab,)
    first = str(adapter.layers(explorer.image.shape)["name"].iloc[0])
    assert first in tab.table_html.value and "n_params" in tab.table_html.value
    assert tab.kernel_image.value[:4] == b"\x89PNG" and tab.activation_image.value[:4] == b"\x89PNG"

    def expected_top(lesion_id: str) -> list[int]:
        t = explorer._make_target("lesion")
        assert np.array_equal(np.asarray(t.mask), explorer.lesions.mask(lesion_id))
        return channel_weights(adapter, explorer.image, t, tab.layer).head(tab.k)[
            "channel"].tolist()

    assert tab.top["channel"].tolist() == expected_top("ref-1")
    before = tab.top.copy()
    explorer.select_lesion("ref-2")  # tab open: updated at once
    assert tab.top["channel"].tolist() == expected_top("ref-2")
    assert not before.equals(tab.top)
    explorer.target.value = "missed"  # the target changes: the ranking follows
    t = explorer._make_target("missed")
    assert tab.top["channel"].tolist() == channel_weights(
        adapter, explorer.image, t, tab.layer).head(tab.k)["channel"].tolist()
    # Hidden tab: the update waits until it is opened again.
    explorer.tabs.selected_index = 0
    explorer.select_lesion(None)
    assert tab.top is not None
    explorer.tabs.selected_index = 1
    assert explorer.model_tab is tab and tab.top is None  # no lesion: no target to rank


def test_model_tab_without_a_model_says_so(case) -> None:
    img, ref, pred = case
    ex = CaseExplorer(None, img, ref, pred, SPACING)
    ex.tabs.selected_index = 1
    assert ex.model_tab is None and "needs a model" in ex.model_box.children[0].value
    assert isinstance(ex.last_error, ValueError)


def test_readers_outlines_and_disagreement_in_the_three_planes(adapter, case) -> None:
    from medseg_xai.widgets.readers import reader_votes
    from medseg_xai.widgets.render import DISAGREE_COLOUR, READER_OUTLINES

    img, ref, pred = case
    r1 = _ball((8, 8, 8), 3)
    r2 = _ball((8, 9, 9), 3)  # shifted by one voxel: a rim of disagreement
    ex = CaseExplorer(None, img, ref, pred, SPACING, affine=_demo_affine(),
                      readers={"r1": r1, "r2": r2})
    ex.centre_on((8, 8, 8))
    assert set(ex.reader_toggles) == {"r1", "r2"} and not ex.toggles["disagreement"].disabled
    legend = ex.renderer.displayed(0)["legend"]
    assert "r1" in legend and "r2" in legend and "readers differ" in legend

    def rgb(i=0):
        return ex.renderer.displayed(i)["rgb"].astype(int)

    def colour_count(picture, hex_colour):
        want = np.round(np.array(to_rgb(hex_colour)) * 255).astype(int)
        return int((picture == want).all(axis=-1).sum())

    pics, on = _pngs(ex), rgb()
    _, dis = reader_votes({"r1": r1, "r2": r2})
    dis_slice = ex.geometry.slice(dis, ex.state.planes[0][0], 8)
    # the stipple covers every other disagreement voxel of the slice (fewer where outlines
    # are drawn over it)
    assert 0 < colour_count(on, DISAGREE_COLOUR) <= int(dis_slice.sum())
    assert colour_count(on, READER_OUTLINES[0]) > 0 and colour_count(on, READER_OUTLINES[1]) > 0
    ex.toggles["disagreement"].value = False
    off = rgb()
    assert colour_count(off, DISAGREE_COLOUR) == 0 and _pngs(ex) != pics
    assert "readers differ" not in ex.renderer.displayed(0)["legend"]
    ex.reader_toggles["r2"].value = False
    assert colour_count(rgb(), READER_OUTLINES[1]) == 0
    # alone, r1's outline shows whole: exactly the edge voxels of its mask on this slice
    from medseg_xai.viz import outline
    r1_slice = ex.geometry.slice(r1, ex.state.planes[0][0], 8)
    assert colour_count(rgb(), READER_OUTLINES[0]) == int(outline(r1_slice).sum())
    assert colour_count(off, READER_OUTLINES[0]) < int(outline(r1_slice).sum())  # r2 over it
    ex.reader_toggles["r1"].value = False
    ex.toggles["disagreement"].value = True
    ex.toggles["disagreement"].value = False
    plain = CaseExplorer(None, img, ref, pred, SPACING, affine=_demo_affine())
    plain.centre_on((8, 8, 8))
    # all reader layers off: the same picture as an explorer without readers
    assert np.array_equal(rgb(), plain.renderer.displayed(0)["rgb"].astype(int))
    assert not plain.reader_toggles and plain.toggles["disagreement"].disabled
    with pytest.raises(ValueError, match="readers"):
        CaseExplorer(None, img, ref, pred, SPACING, readers={"r1": r1[:-1]})


def test_a_demo_cohort_case_shows_its_readers_in_the_explorer(tmp_path) -> None:
    """A real case: the demo cohort's simulated readers (label_r1..r3 files) opened with
    from_cohort become the explorer's reader toggles and disagreement overlay."""
    import medseg_xai as mx
    from medseg_xai.demo import make_cohort
    from medseg_xai.widgets.readers import reader_votes

    manifest = make_cohort(tmp_path, n_cases=2, seed=3, shape=(32, 48, 48), readers=3)
    cohort = mx.Cohort.from_csv(manifest)
    cases = [cohort.load_case(str(c)) for c in cohort.manifest["case_id"]]
    case = next(c for c in cases if reader_votes(c.readers)[1].any())  # readers differ here
    ex = CaseExplorer.from_cohort(cohort, case.case_id, options=ExplorerOptions(background=False))
    assert list(ex.reader_toggles) == ["r1", "r2", "r3"] == list(case.readers)
    _, dis = reader_votes(case.readers)
    ex.centre_on(tuple(int(v) for v in np.argwhere(dis)[0]))  # a voxel where readers differ
    with_dis = _pngs(ex)
    ex.toggles["disagreement"].value = False
    without = _pngs(ex)
    assert all(a != b for a, b in zip(with_dis, without))  # every plane passes through it
    ex.reader_toggles["r1"].value = False
    assert _pngs(ex) != without
    assert ex.reader_view().choose.options == ("r1", "r2", "r3")  # the separate view still works


def test_class_selector_changes_the_reference_outline() -> None:
    """A multi-class label map: the explorer starts on ``class_index`` (not every class merged)
    and the class selector swaps the reference outline, the prediction and the lesion list."""
    g = np.indices((40, 40))
    ref = np.zeros((40, 40), np.uint8)
    ref[((g[0] - 12) ** 2 + (g[1] - 12) ** 2) <= 16] = 2
    ref[((g[0] - 28) ** 2 + (g[1] - 26) ** 2) <= 36] = 3
    pred = np.where(ref == 3, 3, 0).astype(np.uint8)
    img = np.random.default_rng(2).normal(size=(40, 40)).astype(np.float32) + 2.0 * (ref > 0)
    ex = CaseExplorer(None, img, ref, pred,
                      options=ExplorerOptions(classes={2: "tumour", 3: "cyst"}, class_index=2))
    assert ex.selected_class == 2 and int(ex.ref.sum()) == int((ref == 2).sum())
    assert not ex.pred.any() and ex.lesions.status("ref-1") == "missed"
    two = ex.renderer.render()[0]
    ex.class_select.value = 3  # the dropdown, as a user changes it
    assert int(ex.renderer.ref.sum()) == int((ref == 3).sum())
    assert ex.lesions.status("ref-1") == "detected"
    assert ex.renderer.render()[0] != two  # the outline moved
    ex.set_class(0)
    assert int(ex.ref.sum()) == int((ref > 0).sum())
    assert [label for label, _ in ex.class_select.options] == ["all classes", "tumour (2)",
                                                              "cyst (3)"]
    with pytest.raises(ValueError, match="class: expected 0"):
        ex.set_class(7)
    assert ex.last_error is None


def test_uncertainty_overlay_shows_the_entropy_map(explorer) -> None:
    before = _pngs(explorer)
    explorer.uncertainty_button.click()
    u = explorer.uncertainty
    assert u is not None and u.n_members == 4  # plain + three flips
    assert "showing uncertainty" in explorer.status.value
    assert f"{u.scores['unc_entropy']:.3f}" in explorer.status.value
    assert _pngs(explorer) != before  # the entropy heatmap is drawn
    assert u.entropy.shape == explorer.image.shape[1:]
