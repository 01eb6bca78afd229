"""Geometry-true views on a real scan: nilearn's MNI152 template and reoriented copies of it.

The template is stored RAS (99 x 117 x 95 voxels at 2 mm). Its LPS copy, an axis-permuted copy
and an oblique copy hold the same anatomy on other grids; every view must show the same
anatomical plane, with the same letters, whatever the storage order.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medseg_xai import viz  # noqa: E402


@pytest.fixture(scope="module")
def mni():
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    assert data.shape == (99, 117, 95) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    return data, np.asarray(img.affine, dtype=float)


def _flip(data, affine, axes):
    """Same anatomy, stored with ``axes`` reversed (affine adjusted so world stays put)."""
    f = np.eye(4)
    for ax in axes:
        f[ax, ax] = -1
        f[ax, 3] = data.shape[ax] - 1
    return np.flip(data, axes).copy(), affine @ f


def _permute(data, affine, order):
    p = np.zeros((4, 4))
    for new, old in enumerate(order):
        p[old, new] = 1
    p[3, 3] = 1
    return np.transpose(data, order).copy(), affine @ p


def _rotate(affine, deg, axis):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r @ affine


@pytest.fixture(scope="module")
def copies(mni):
    data, aff = mni
    return {
        "RAS": (data, aff),
        "LPS": _flip(data, aff, (0, 1)),
        "permuted": _permute(data, aff, (2, 0, 1)),
        "LPS-permuted": _permute(*_flip(data, aff, (0, 1)), (1, 2, 0)),
        "oblique": (data, _rotate(aff, 12.0, axis=2)),
    }


def _voxel_of(world_aff, aff, voxel):
    """Voxel of ``aff``'s grid at the world point of ``voxel`` on ``world_aff``'s grid."""
    w = world_aff @ np.array([*voxel, 1.0])
    return tuple(int(round(v)) for v in np.linalg.solve(aff, w)[:3])


EXPECTED_LETTERS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    "sagittal": {"top": "S", "bottom": "I", "left": "A", "right": "P"},
}


def test_ras_template_panels_show_the_named_planes_radiologically(mni) -> None:
    data, aff = mni
    c = (60, 70, 40)  # off-centre so a wrong axis or flip cannot pass by symmetry
    fig = viz.three_plane(data, center=c, affine=aff)
    shown = {v.plane: np.asarray(v.image.get_array()) for v in fig.slice_views}
    # Radiological: the patient's right (high x in RAS) on the screen's left, anterior (high y)
    # and superior (high z) at the top.
    np.testing.assert_array_equal(shown["axial"], data[::-1, ::-1, c[2]].T)
    np.testing.assert_array_equal(shown["coronal"], data[::-1, c[1], ::-1].T)
    np.testing.assert_array_equal(shown["sagittal"], data[c[0], ::-1, ::-1].T)
    assert [v.ax.get_title() for v in fig.slice_views] == ["axial 40", "coronal 70", "sagittal 60"]
    # The template's field of view: 99 x 117 x 95 voxels of 2 mm, x = left-right.
    assert shown["axial"].shape == (117, 99) and shown["sagittal"].shape == (95, 117)
    for v in fig.slice_views:
        letters = {e: t.get_text() for e, t in v.annotations["letters"].items()}
        assert letters == EXPECTED_LETTERS[v.plane]
        assert v.annotations["scale_bar"] is not None
    assert fig.geometry.note == "" and fig.geometry_note is None
    assert fig.geometry.axcodes == ("R", "A", "S")


@pytest.mark.parametrize("name", ["LPS", "permuted", "LPS-permuted", "oblique"])
def test_reoriented_copies_display_the_same_arrays_and_letters(mni, copies, name) -> None:
    data, aff = mni
    c = (60, 70, 40)
    ref = viz.three_plane(data, center=c, affine=aff)
    other, other_aff = copies[name]
    # The oblique copy is the same grid tilted in the world: same voxel, nearest axes.
    centre = c if name == "oblique" else _voxel_of(aff, other_aff, c)
    fig = viz.three_plane(other, center=centre, affine=other_aff)
    assert len(fig.slice_views) == 3
    for a, b in zip(ref.slice_views, fig.slice_views):
        assert a.plane == b.plane
        np.testing.assert_array_equal(np.asarray(b.image.get_array()),
                                      np.asarray(a.image.get_array()))
        assert b.ax.get_aspect() == pytest.approx(a.ax.get_aspect())
        assert {e: t.get_text() for e, t in b.annotations["letters"].items()} == \
            EXPECTED_LETTERS[b.plane]
    if name == "oblique":
        assert fig.geometry.obliquity_deg == pytest.approx(12.0, abs=0.01)
        assert "oblique" in fig.geometry.note and "nearest axes" in fig.geometry_note.get_text()
    else:
        assert fig.geometry.note == ""


def test_neurological_convention_mirrors_left_and_right(mni) -> None:
    data, aff = mni
    rad = viz.three_plane(data, center=(60, 70, 40), affine=aff)
    neu = viz.three_plane(data, center=(60, 70, 40), affine=aff,
                          style=viz.SliceStyle(convention="neurological"))
    for a, b in zip(rad.slice_views, neu.slice_views):
        if a.plane == "sagittal":
            np.testing.assert_array_equal(a.image.get_array(), b.image.get_array())
        else:
            np.testing.assert_array_equal(a.image.get_array()[:, ::-1], b.image.get_array())
            assert b.annotations["letters"]["left"].get_text() == "L"


def test_without_affine_the_views_say_voxel_axes(mni) -> None:
    data, _ = mni
    fig = viz.three_plane(data, center=(60, 70, 40))
    np.testing.assert_array_equal(fig.slice_views[0].image.get_array(), data[60])
    assert fig.geometry_note.get_text() == "voxel axes, orientation unknown"
    assert all(v.annotations["letters"] == {} for v in fig.slice_views)
    # spacing without an affine still gives a mm scale bar
    fig2 = viz.three_plane(data, spacing=(2, 2, 2))
    assert "mm" in fig2.slice_views[0].annotations["scale_bar"].txt_label.get_text()


def test_geometry_maps_clicks_and_voxels_both_ways(copies) -> None:
    for data, aff in copies.values():
        geo = viz.Geometry(data.shape, aff)
        v = (7, 11, 13)
        for plane in geo.planes:
            row, col = geo.to_display(plane, v)
            assert geo.to_voxel(plane, row, col, v) == v
            assert geo.slice(data, plane, v[geo.cut_axis(plane)])[int(row), int(col)] == data[v]


def test_scale_bar_length_is_in_mm(mni) -> None:
    data, aff = mni
    fig = viz.three_plane(data, affine=aff)
    view = fig.slice_views[0]  # axial: 99 columns of 2 mm = 198 mm wide
    assert view.annotations["scale_bar_mm"] == 20.0
    bar = view.annotations["scale_bar"]
    # AnchoredSizeBar draws a rectangle of `size` data units: 20 mm / 2 mm per pixel
    rect = bar.size_bar.get_children()[0]
    assert rect.get_width() == pytest.approx(10.0)
    assert viz.scale_bar_mm(198) == 20 and viz.scale_bar_mm(40) == 5 and viz.scale_bar_mm(3) == 0.5


def test_two_dimensional_images_honour_spacing_and_their_affine(mni) -> None:
    from matplotlib.figure import Figure

    data, aff = mni
    axial = data[:, :, 40]  # (x, y) slice of an RAS volume
    view = viz.show_slice(Figure().add_subplot(), axial, spacing=(0.5, 2.0))
    assert view.ax.get_aspect() == pytest.approx(0.25)
    assert view.annotations["note"].get_text() == "voxel axes, orientation unknown"
    aff2 = np.diag([0.5, 2.0, 1.0])  # a 3x3 2D affine: x 0.5 mm, y 2 mm
    view = viz.show_slice(Figure().add_subplot(), axial, affine=aff2)
    assert view.plane == "axial"
    np.testing.assert_array_equal(view.image.get_array(), axial[::-1, ::-1].T)
    assert view.ax.get_aspect() == pytest.approx(2.0 / 0.5)
    ref = np.zeros(axial.shape, bool)
    ref[10:20, 30:40] = True
    view.update(ref=ref)
    out = np.asarray(view.outlines.get_array())[..., 3] > 0
    np.testing.assert_array_equal(out, viz.outline(ref)[::-1, ::-1].T)
    # a coronal 2D slice stored (x, z) with a 4x4 affine whose third voxel axis is y
    cor_aff = aff[:, [0, 2, 1, 3]]
    view = viz.show_slice(Figure().add_subplot(), data[:, 70, :], affine=cor_aff)
    assert view.plane == "coronal"
    np.testing.assert_array_equal(view.image.get_array(), data[::-1, 70, ::-1].T)


def test_a_slice_cut_from_a_volume_is_oriented_by_the_volume_affine(mni, copies) -> None:
    """Report galleries store slices cut along a stored axis plus the volume's affine."""
    from matplotlib.figure import Figure

    data, aff = mni
    c = (60, 70, 40)
    ref = {v.plane: np.asarray(v.image.get_array())
           for v in viz.three_plane(data, center=c, affine=aff).slice_views}
    for name in ("RAS", "LPS", "permuted"):
        vol, a = copies[name]
        v = _voxel_of(aff, a, c)
        for axis in range(3):
            view = viz.show_slice(Figure().add_subplot(), np.take(vol, v[axis], axis=axis),
                                  affine=a, cut_axis=axis)
            np.testing.assert_array_equal(view.image.get_array(), ref[view.plane])
            assert view.annotations["letters"]["top"].get_text() in "AS"
    with pytest.raises(ValueError, match="cut_axis"):
        viz.show_slice(Figure().add_subplot(), data[0], cut_axis=0)


def test_bad_affines_are_named() -> None:
    with pytest.raises(ValueError, match="affine"):
        viz.Geometry((4, 5, 6), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="affine"):
        viz.Geometry((4, 5, 6), np.eye(3))
    with pytest.raises(ValueError, match="convention"):
        viz.Geometry((4, 5, 6), np.eye(4), convention="sideways")
