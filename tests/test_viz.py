"""Pictures: error maps, outlines, slice views, three-plane views, montages, PNG export."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import ndimage  # noqa: E402

from medseg_xai import viz  # noqa: E402

masks = arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_error_map_partitions_reference_and_prediction(data):
    ref = data.draw(masks)
    pred = data.draw(arrays(np.bool_, ref.shape))
    em = viz.error_map(pred, ref)
    assert em.dtype == np.uint8 and em.shape == ref.shape
    # TP + FN is the reference, TP + FP the prediction, background neither.
    np.testing.assert_array_equal(np.isin(em, (1, 2)), ref)
    np.testing.assert_array_equal(np.isin(em, (1, 3)), pred)
    np.testing.assert_array_equal(em == 0, ~ref & ~pred)


def test_error_map_label_values_and_bad_shapes():
    ref = np.array([[0, 2, 2, 0]])
    pred = np.array([[0, 1, 0, 1]])
    np.testing.assert_array_equal(viz.error_map(pred, ref), [[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="pred and ref"):
        viz.error_map(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="pred"):
        viz.error_map(np.array([["a"]]), np.zeros((1, 1)))


def _srgb_to_linear(c):
    c = np.asarray(c)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# Viénot, Brettel & Mollon (1999) dichromat simulation in linear RGB.
_CVD = {
    "deuteranopia": np.array(
        [[0.29275, 0.70725, 0.0], [0.29275, 0.70725, 0.0], [-0.02234, 0.02234, 1.0]]
    ),
    "protanopia": np.array(
        [[0.11238, 0.88762, 0.0], [0.11238, 0.88762, 0.0], [0.00401, -0.00401, 1.0]]
    ),
}


@pytest.mark.parametrize("kind", sorted(_CVD))
def test_false_negative_and_false_positive_colours_stay_distinct_for_colour_blind(kind):
    fn = _srgb_to_linear(to_rgba(viz.ERROR_COLOURS[2])[:3])
    fp = _srgb_to_linear(to_rgba(viz.ERROR_COLOURS[3])[:3])
    tp = _srgb_to_linear(to_rgba(viz.ERROR_COLOURS[1])[:3])
    m = _CVD[kind]
    # Euclidean distance in simulated linear RGB: clearly apart, not merely different hex codes.
    assert np.linalg.norm(m @ fn - m @ fp) > 0.3
    assert np.linalg.norm(m @ tp - m @ fn) > 0.3
    assert np.linalg.norm(m @ tp - m @ fp) > 0.3


def test_outline_is_mask_minus_face_connected_erosion():
    m = np.zeros((10, 12), bool)
    m[2:7, 3:10] = True
    edge = viz.outline(m)
    assert edge.sum() == 2 * 5 + 2 * 7 - 4  # perimeter of a 5 x 7 rectangle
    np.testing.assert_array_equal(edge, m & ~ndimage.binary_erosion(m))
    assert not viz.outline(np.zeros((4, 4))).any()


def test_lesion_centre_picks_largest_lesion_and_stays_inside_rings():
    m = np.zeros((20, 30), bool)
    m[1:3, 1:3] = True  # small lesion
    m[10:15, 20:27] = True  # large lesion
    assert viz.lesion_centre(m) == (12, 23)
    ring = np.zeros((21, 21), bool)
    yy, xx = np.mgrid[:21, :21]
    r = np.hypot(yy - 10, xx - 10)
    ring[(r > 6) & (r < 8)] = True
    c = viz.lesion_centre(ring)
    assert ring[c]  # the centroid (10, 10) is a hole: the nearest ring voxel comes back
    assert abs(np.hypot(c[0] - 10, c[1] - 10) - 7) < 1.5
    with pytest.raises(ValueError, match="empty"):
        viz.lesion_centre(np.zeros((5, 5, 5)))


def _slice_case():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 50)).astype(np.float32)
    ref = np.zeros((40, 50), bool)
    ref[10:20, 10:25] = True
    pred = np.zeros((40, 50), bool)
    pred[14:24, 15:30] = True
    return img, ref, pred


def test_show_slice_error_overlay_colours_each_voxel_class():
    img, ref, pred = _slice_case()
    fig = Figure()
    ax = fig.add_subplot()
    view = viz.show_slice(ax, img, ref, pred, error=True, alpha=0.4)
    rgba = np.asarray(view.error.get_array())
    em = viz.error_map(pred, ref)
    for code in (1, 2, 3):
        expected = to_rgba(viz.ERROR_COLOURS[code])[:3] + (0.4,)
        np.testing.assert_allclose(
            rgba[em == code], np.broadcast_to(expected, rgba[em == code].shape), atol=1e-6
        )
    assert (rgba[em == 0][:, 3] == 0).all()
    # With the error map on, outlines are off by default (the fill already shows both masks).
    assert (np.asarray(view.outlines.get_array())[..., 3] == 0).all()


def test_show_slice_outlines_and_window():
    img, ref, pred = _slice_case()
    fig = Figure()
    view = viz.show_slice(fig.add_subplot(), img, ref=ref, pred=pred,
                          style=viz.SliceStyle(vmin=-1, vmax=2))
    out = np.asarray(view.outlines.get_array())
    ref_only = viz.outline(ref) & ~viz.outline(pred)
    np.testing.assert_allclose(
        out[ref_only][:, :3], np.broadcast_to(to_rgba(viz.REF_COLOUR)[:3], (ref_only.sum(), 3))
    )
    np.testing.assert_allclose(out[viz.outline(pred)][:, :3].mean(0), to_rgba(viz.PRED_COLOUR)[:3])
    assert (out[~(viz.outline(ref) | viz.outline(pred))][:, 3] == 0).all()
    assert view.image.get_clim() == (-1, 2)


def test_show_slice_heatmap_opacity_follows_magnitude_and_alpha():
    img, _, _ = _slice_case()
    heat = np.zeros_like(img)
    heat[5, 5] = 2.0
    heat[6, 6] = 1.0
    fig = Figure()
    view = viz.show_slice(fig.add_subplot(), img, heatmap=heat, alpha=0.8)
    a = np.asarray(view.heatmap.get_array())[..., 3]
    assert a[5, 5] == pytest.approx(0.8) and a[6, 6] == pytest.approx(0.4) and a[0, 0] == 0
    view.update(alpha=0.2)
    assert np.asarray(view.heatmap.get_array())[5, 5, 3] == pytest.approx(0.2)
    view.update(heatmap=None)
    assert (np.asarray(view.heatmap.get_array())[..., 3] == 0).all()


def test_slice_view_update_reuses_artists_and_validates():
    img, ref, pred = _slice_case()
    fig = Figure()
    ax = fig.add_subplot()
    view = viz.show_slice(ax, img, ref, pred)
    n_images = len(ax.images)
    view.update(img * 2, ref=np.roll(ref, 3, 0), error=True)
    assert len(ax.images) == n_images  # no new artists: the widget's fast path
    np.testing.assert_array_equal(view.image.get_array(), img * 2)
    rgba = np.asarray(view.error.get_array())
    em = viz.error_map(pred, np.roll(ref, 3, 0))
    assert (rgba[em == 2][:, 3] > 0).all()
    with pytest.raises(ValueError, match=r"ref: expected shape \(40, 50\)"):
        view.update(ref=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        view.update(alpha=1.5)
    with pytest.raises(ValueError, match="image2d"):
        viz.show_slice(ax, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="error=True"):
        viz.show_slice(Figure().add_subplot(), img, ref=ref, error=True)


def test_show_slice_aspect_follows_pixel_spacing():
    img, _, _ = _slice_case()
    view = viz.show_slice(Figure().add_subplot(), img, spacing=(3.0, 0.5))
    assert view.ax.get_aspect() == pytest.approx(6.0)


def test_three_plane_cuts_through_lesion_with_physical_aspect():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(12, 30, 40)).astype(np.float32)
    ref = np.zeros(vol.shape, bool)
    ref[4:8, 10:16, 20:30] = True
    pred = np.roll(ref, 2, axis=2)
    heat = rng.normal(size=vol.shape)
    fig = viz.three_plane(
        vol[None], ref=ref, pred=pred, error=True, heatmap=heat, spacing=(4.0, 1.0, 0.5)
    )
    assert (
        fig.center == viz.lesion_centre(ref) == (6, 12, 24)
    )  # centroid (5.5, 12.5, 24.5), rounded half to even
    ax_views = fig.slice_views
    c = fig.center
    np.testing.assert_array_equal(ax_views[0].image.get_array(), vol[c[0]])
    np.testing.assert_array_equal(ax_views[1].image.get_array(), vol[:, c[1], :])
    np.testing.assert_array_equal(ax_views[2].image.get_array(), vol[:, :, c[2]])
    # aspect = row spacing / column spacing per plane
    assert [v.ax.get_aspect() for v in ax_views] == pytest.approx([2.0, 8.0, 4.0])
    assert [v.ax.get_title() for v in ax_views] == ["axial 6", "coronal 12", "sagittal 24"]
    # one shared window and heatmap scale across the three planes
    assert len({v.image.get_clim() for v in ax_views}) == 1
    assert len(viz.fig_to_png_bytes(fig)) > 1000


def test_three_plane_rejects_bad_inputs_and_defaults_to_volume_centre():
    vol = np.zeros((6, 8, 10), np.float32)
    fig = viz.three_plane(vol)
    assert fig.center == (3, 4, 5)
    with pytest.raises(ValueError, match="3D volume"):
        viz.three_plane(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="ref: expected shape"):
        viz.three_plane(vol, ref=np.zeros((6, 8, 9)))
    with pytest.raises(ValueError, match="center"):
        viz.three_plane(vol, center=(6, 0, 0))
    with pytest.raises(ValueError, match="spacing"):
        viz.three_plane(vol, spacing=(1, 1))


def test_montage_shows_mid_slice_per_feature_and_caps_panels():
    feats = np.arange(5 * 3 * 4 * 4, dtype=np.float32).reshape(5, 3, 4, 4)
    fig = viz.montage(feats, ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and len(fig.axes) == 6
    np.testing.assert_array_equal(shown[3].images[0].get_array(), feats[3, 1])
    capped = viz.montage(np.ones((10, 4, 4)), max_features=4)
    assert sum(bool(ax.images) for ax in capped.axes) == 4
    assert "first 4 of 10" in capped._suptitle.get_text()
    with pytest.raises(ValueError, match="features"):
        viz.montage(np.ones((4, 4)))
    with pytest.raises(ValueError, match="titles"):
        viz.montage(np.ones((3, 4, 4)), titles=["a"])


def test_png_export_and_data_uri_round_trip():
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1])
    png = viz.fig_to_png_bytes(fig, dpi=50)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    uri = viz.png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
    # 2 x 1 inches at 50 dpi: width 100 px read from the IHDR chunk
    assert int.from_bytes(png[16:20], "big") == 100
    with pytest.raises(ValueError, match="PNG"):
        viz.png_data_uri(b"GIF89a")


def test_negative_only_heatmap_is_drawn_cold_not_warm() -> None:
    """Signed Grad-CAM of a missed lesion can be all negative: it must read as evidence
    against (blue), never as warm positive attention."""
    from medseg_xai.viz import _heatmap_rgba
    from medseg_xai.widgets.render import BlendStyle, compose_rgb

    heat = np.zeros((8, 8), np.float32)
    heat[2:6, 2:6] = -1.0
    rgba = _heatmap_rgba(heat, 1.0, None, None)
    strong = rgba[3, 3]
    assert strong[2] > strong[0] and strong[3] > 0.9
    assert rgba[0, 0, 3] == 0.0  # zero attribution stays transparent
    rgb = compose_rgb(np.full((8, 8), 0.5, np.float32), heatmap=heat, vmin=0.0, vmax=1.0,
                      style=BlendStyle(alpha=1.0))
    assert int(rgb[3, 3, 2]) > int(rgb[3, 3, 0])
    positive = _heatmap_rgba(-heat, 1.0, None, None)[3, 3]
    assert positive[0] > positive[2]  # positive attribution stays warm
