"""Widget state without widgets: slices, window/level, toggles, the explanation cache, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medseg_xai.widgets.render import PlaneRenderer
from medseg_xai.widgets.state import ExplanationCache, ViewState, plane_slice, plane_spacing


@given(shape=st.tuples(*[st.integers(1, 7)] * 3), data=st.data())
def test_plane_slice_is_numpy_indexing(shape, data) -> None:
    vol = np.arange(np.prod(shape)).reshape(shape)
    axis = data.draw(st.integers(0, 2))
    idx = data.draw(st.integers(0, shape[axis] - 1))
    expected = vol[(slice(None),) * axis + (idx,)]
    np.testing.assert_array_equal(plane_slice(vol, axis, idx), expected)
    with pytest.raises(ValueError, match="index"):
        plane_slice(vol, axis, shape[axis])


def test_plane_spacing_drops_the_cut_axis() -> None:
    assert plane_spacing((3.0, 1.0, 0.5), 0) == (1.0, 0.5)
    assert plane_spacing((3.0, 1.0, 0.5), 1) == (3.0, 0.5)
    assert plane_spacing((3.0, 1.0, 0.5), 2) == (3.0, 1.0)
    assert plane_spacing((2.0, 0.7), -1) == (2.0, 0.7)


def test_view_state_slices_and_centring() -> None:
    s = ViewState((10, 20, 30))
    assert s.center == [5, 10, 15]
    assert s.set_slice(0, 2) is True and s.set_slice(0, 2) is False
    with pytest.raises(ValueError, match="index: expected 0..19"):
        s.set_slice(1, 20)
    assert s.centre_on((3.6, -4, 99)) == [4, 0, 29]  # rounded and clipped into the volume
    with pytest.raises(ValueError, match="point"):
        s.centre_on((1, 2))
    two_d = ViewState((8, 8))
    assert [n for n, _ in two_d.planes] == ["image"]
    with pytest.raises(ValueError, match="2D"):
        two_d.set_slice(0, 1)


@given(level=st.floats(-1000, 1000), width=st.floats(0.01, 500))
def test_window_level_round_trip(level: float, width: float) -> None:
    s = ViewState((4, 4))
    s.set_level_width(level, width)
    assert s.level == pytest.approx(level, abs=1e-9 * max(1, abs(level)) + 1e-9)
    assert s.width == pytest.approx(width, rel=1e-6, abs=1e-6)


def test_window_and_toggles_reject_bad_values() -> None:
    s = ViewState((4, 4, 4))
    with pytest.raises(ValueError, match="window"):
        s.set_window(2.0, 1.0)
    with pytest.raises(ValueError, match="width"):
        s.set_level_width(0.0, 0.0)
    with pytest.raises(ValueError, match="toggle"):
        s.toggle("lasers", True)
    assert s.toggle("error", True) is True and s.toggles["error"]


def test_planes_affected_by_a_slice_change() -> None:
    s = ViewState((4, 5, 6))
    assert s.planes_affected(1) == [1]  # crosshair off by default: only the moved plane
    s.toggle("crosshair", True)
    assert sorted(s.planes_affected(0)) == [0, 1, 2]  # the others mark the moved slice


def test_explanation_cache_keys_and_lru() -> None:
    c = ExplanationCache(maxsize=2)
    c.put("gradcam", ("lesion", "ref-1"), "dec.0", "A")
    assert c.get("gradcam", ("lesion", "ref-1"), "dec.0") == "A"
    assert c.get("gradcam", ("lesion", "ref-1"), "dec.1") is None  # layer is part of the key
    assert c.get("saliency", ("lesion", "ref-1"), None) is None
    assert ("gradcam", ("lesion", "ref-1"), "dec.0") in c
    assert ("saliency", "x", "") not in c and c.key("saliency", "x", "") == ("saliency", "x", None)
    c.put("saliency", ("lesion", "ref-1"), None, "B")
    c.get("gradcam", ("lesion", "ref-1"), "dec.0")  # touch A: B is now the oldest
    c.put("occlusion", ("region", None), None, "C")
    assert len(c) == 2 and ("saliency", ("lesion", "ref-1"), None) not in c
    assert c.hits == 2 and c.misses == 2
    with pytest.raises(ValueError, match="maxsize"):
        ExplanationCache(0)


def test_renderer_draws_only_requested_planes_and_reflects_the_heatmap() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 12, 10)).astype(np.float32)
    ref = np.zeros(img.shape, bool)
    ref[2:4, 3:6, 3:6] = True
    s = ViewState(img.shape, vmin=-2, vmax=2)
    r = PlaneRenderer(img, ref, ref, (2.0, 1.0, 1.0), s, px=120)
    first = r.render()
    assert sorted(first) == [0, 1, 2] and all(v.startswith(b"\x89PNG") for v in first.values())
    assert sorted(r.render([1])) == [1]
    heat = np.zeros(img.shape, np.float32)
    heat[s.center[0]] = 1.0  # only the shown axial slice is hot
    r.set_heatmap(heat)
    hot = r.render([0])[0]
    assert hot != first[0]
    r.set_heatmap(None)
    assert r.render([0])[0] == first[0]
    with pytest.raises(ValueError, match="heatmap"):
        r.set_heatmap(heat[:-1])
    with pytest.raises(ValueError, match="image"):
        PlaneRenderer(img[:-1], None, None, (1, 1, 1), s)


def test_compose_rgb_layers_and_colours() -> None:
    from matplotlib.colors import to_rgb

    from medseg_xai.viz import ERROR_COLOURS, PRED_COLOUR, REF_COLOUR
    from medseg_xai.widgets.render import BlendStyle, compose_rgb

    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    grey = compose_rgb(img, 0.0, 1.0)
    assert grey.dtype == np.uint8 and grey.shape == (8, 8, 3)
    np.testing.assert_array_equal(grey[..., 0], np.round(img * 255).astype(np.uint8))
    # The window clips: everything below vmin is black, above vmax white.
    clipped = compose_rgb(img, 0.25, 0.5)
    assert (clipped[img <= 0.25] == 0).all() and (clipped[img >= 0.5] == 255).all()

    ref = np.zeros((8, 8), bool)
    ref[1:5, 1:5] = True
    pred = np.zeros((8, 8), bool)
    pred[3:7, 3:7] = True
    err = compose_rgb(img, 0.0, 1.0, ref=ref, pred=pred, style=BlendStyle(error=True, alpha=1.0))
    for code, where in ((1, ref & pred), (2, ref & ~pred), (3, pred & ~ref)):
        expected = np.round(np.array(to_rgb(ERROR_COLOURS[code])) * 255)
        assert (np.abs(err[where].astype(int) - expected) <= 1).all()
    assert np.array_equal(err[~(ref | pred)], grey[~(ref | pred)])
    # Outlines: the reference's edge in its colour, the prediction's drawn on top.
    out = compose_rgb(img, 0.0, 1.0, ref=ref, pred=pred)
    assert (np.abs(out[1, 1].astype(int) - np.round(np.array(to_rgb(REF_COLOUR)) * 255)) <= 1).all()
    assert (np.abs(out[6, 6].astype(int) - np.round(np.array(to_rgb(PRED_COLOUR)) * 255)) <= 1).all()
    assert np.array_equal(out[2, 2], grey[2, 2])  # inside the reference, not its edge

    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 2.0
    hot = compose_rgb(img, 0.0, 1.0, heatmap=heat, style=BlendStyle(alpha=0.5))
    assert not np.array_equal(hot[0, 0], grey[0, 0])
    assert np.array_equal(hot[1:], grey[1:])  # zero attribution is fully transparent
    with pytest.raises(ValueError, match="error=True"):
        compose_rgb(img, 0.0, 1.0, ref=ref, style=BlendStyle(error=True))
    with pytest.raises(ValueError, match="window"):
        compose_rgb(img, 1.0, 1.0)
