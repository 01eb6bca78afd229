"""CaseExplorer without a browser: state changes, redraws, lesion choice, caching, export."""

from __future__ import annotations

import io
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medseg_xai import metrics
from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.widgets import CaseExplorer
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
    assert "ref-2 was missed" in explorer.verdict_html.value
    assert "Volume" in explorer.verdict_html.value
    # The target follows the lesion's status: no "missed part" for a detected lesion.
    explorer.target.value = "missed"
    explorer.select_lesion("ref-1")
    assert explorer.target.value == "lesion"
    assert "ref-1 was detected" in explorer.verdict_html.value
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
    assert "attribution" in explorer.verdict_html.value  # localisation enters the verdict

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


def test_activation_montage_and_contrast_sweep(explorer) -> None:
    explorer.select_lesion("ref-2")
    explorer.method.value = "activations"
    assert explorer.layer.disabled is False
    feats = explorer.run_explanation()
    assert explorer.last_error is None, explorer.status.value
    assert feats.ndim == 4 and explorer.montage.layout.display == ""
    assert bytes(explorer.montage.value).startswith(b"\x89PNG")
    sweep = explorer.run_sweep()
    assert sweep["factor"].tolist() == list(explorer.sweep_factors)
    assert "Contrast sweep" in explorer.verdict_html.value
    assert explorer.run_sweep() is sweep  # cached per lesion


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
    assert ex.run_button.disabled
    ex.select_lesion("ref-1")
    assert "ref-1 was missed" in ex.verdict_html.value
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
