"""Settings objects instead of long keyword lists (DESIGN.md: no public function takes more than
12 parameters): MissSettings (explain_miss), SliceStyle (viz.show_slice, viz.three_plane),
BlendStyle (widgets.render.compose_rgb), ExplorerOptions (CaseExplorer). The old keywords still work for one release with
a FutureWarning naming the new spelling and give the same result; an unknown keyword is a
TypeError naming it."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
from test_miss_validation import ContrastDetector, _adapter, scan

import medseg_xai as mx
from medseg_xai import viz
from medseg_xai.explain.miss import explain_miss
from medseg_xai.explain.miss_settings import MissSettings, split_options

pytestmark = pytest.mark.usefixtures("one_thread")


def _json(analysis) -> str:
    d = analysis.to_dict()
    d.pop("elapsed_s", None)
    return json.dumps(d, sort_keys=True, allow_nan=False)


@pytest.fixture(scope="module")
def faint():
    img, lab = scan([((24, 20), 3, 0.15), ((30, 32), 3, 0.45)], seed=3)
    return _adapter(ContrastDetector()), img, lab


def test_explain_miss_old_keywords_warn_and_give_the_same_analysis(faint) -> None:
    ad, img, lab = faint
    new = explain_miss(ad, img, lab, "ref-1", case_id="c1", settings=mx.MissSettings(
        methods=("gradcam",), probes=("contrast", "size"), seed=2, margin=0.15,
        min_comparison=1, threshold=0.45))
    with pytest.warns(FutureWarning) as rec:
        old = explain_miss(ad, img, lab, "ref-1", case_id="c1", methods=("gradcam",),
                           probes=["contrast", "size"], seed=2, margin=0.15, min_comparison=1,
                           threshold=0.45)
    msg = str(rec[0].message)
    assert len(rec) == 1 and rec[0].filename == __file__  # the user's line, not the library's
    assert "explain_miss()" in msg and "settings=MissSettings(methods=..., probes=..." in msg
    assert _json(old) == _json(new)
    assert new.settings["margin"] == 0.15 and new.settings["seed"] == 2
    # a mapping is read as the settings' fields
    as_map = explain_miss(ad, img, lab, "ref-1", case_id="c1", settings={
        "methods": ("gradcam",), "probes": ("contrast", "size"), "seed": 2, "margin": 0.15,
        "min_comparison": 1, "threshold": 0.45})
    assert _json(as_map) == _json(new)


def test_explain_miss_unknown_keyword_is_a_type_error_naming_it(faint) -> None:
    ad, img, lab = faint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any warning
        with pytest.raises(TypeError, match="unexpected keyword argument 'metods'"):
            explain_miss(ad, img, lab, "ref-1", metods=())
    with pytest.raises(TypeError, match=r"settings: unknown MissSettings field\(s\) \['seeds'\]"):
        explain_miss(ad, img, lab, "ref-1", settings={"seeds": 1})
    with pytest.raises(TypeError, match="settings: expected a MissSettings"):
        explain_miss(ad, img, lab, "ref-1", settings=("gradcam",))


def test_the_public_contract_call_needs_no_settings(faint) -> None:
    ad, img, lab = faint
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        a = mx.explain_miss(ad, img, lab, "ref-1", reference_images=None)
    assert a.status == "missed" and a.causes == ["contrast"]


def test_miss_settings_are_frozen_checked_and_normalised() -> None:
    s = MissSettings(probes=["contrast"], methods=["gradcam"])
    assert s.probes == ("contrast",) and s.methods == ("gradcam",)
    assert MissSettings(methods="gradcam").methods == "gradcam"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]
    for bad, word in (({"threshold": 1.5}, "threshold"), ({"overlap_threshold": 0}, "overlap"),
                      ({"margin": 1.0}, "margin"), ({"min_comparison": -1}, "min_comparison")):
        with pytest.raises(ValueError, match=word):
            MissSettings(**bad)
    assert dataclasses.replace(s, seed=4).seed == 4 and s.seed == 0


def test_split_options_routes_fields_into_the_settings() -> None:
    settings, rest = split_options({"methods": (), "reference_images": [1],
                                    "settings": {"seed": 3}}, threshold=0.3)
    assert settings == MissSettings(methods=(), seed=3, threshold=0.3)
    assert rest == {"reference_images": [1]}
    with pytest.raises(TypeError, match="threshold"):  # the caller's fact and an option clash
        split_options({"threshold": 0.2}, threshold=0.3)


# ------------------------------------------------------------------ viz and widgets
def _volume():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 20, 24)).astype(np.float32)
    ref = np.zeros(vol.shape, bool)
    ref[3:7, 5:11, 8:16] = True
    return vol, ref, np.roll(ref, 2, axis=2), rng.normal(size=vol.shape)


def _pixels(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def test_three_plane_and_show_slice_old_keywords_warn_and_draw_the_same() -> None:
    from matplotlib.figure import Figure

    vol, ref, pred, heat = _volume()
    style = viz.SliceStyle(vmin=-1.0, vmax=2.0, contours=True, title="t", panel_size=2.0,
                           convention="neurological", crosshair=False)
    new = viz.three_plane(vol, ref=ref, pred=pred, error=True, heatmap=heat, alpha=0.4,
                          style=style)
    with pytest.warns(FutureWarning, match=r"three_plane\(\).*style=SliceStyle\(vmin=\.\.\.") as rec:
        old = viz.three_plane(vol, ref=ref, pred=pred, error=True, heatmap=heat, alpha=0.4,
                              vmin=-1.0, vmax=2.0, contours=True, title="t", panel_size=2.0,
                              convention="neurological", crosshair=False)
    assert len(rec) == 1 and rec[0].filename == __file__
    assert np.array_equal(_pixels(old), _pixels(new))
    assert new._suptitle.get_text() == "t"  # the style's title is drawn
    figs = []
    for kwargs in ({"style": viz.SliceStyle(cmap="bone", hmax=0.5, annotate=False)},
                   {"cmap": "bone", "hmax": 0.5, "annotate": False}):
        fig = Figure()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            viz.show_slice(fig.add_subplot(), vol[5], ref[5], pred[5], heatmap=heat[5], **kwargs)
        assert [w.category for w in caught] == ([] if "style" in kwargs else [FutureWarning])
        figs.append(_pixels(fig))
    assert np.array_equal(*figs)
    with pytest.raises(TypeError, match="show_slice\\(\\) got an unexpected keyword argument "
                                        "'colormap'"):
        viz.show_slice(Figure().add_subplot(), vol[5], colormap="bone")
    with pytest.raises(TypeError, match="'fig_size'"):
        viz.three_plane(vol, fig_size=3)


def test_compose_rgb_old_keywords_warn_and_blend_the_same() -> None:
    from medseg_xai.widgets.render import BlendStyle, compose_rgb

    vol, ref, pred, heat = _volume()
    layers = {"ref": ref[5], "pred": pred[5], "heatmap": heat[5], "probability": vol[5] > 0}
    new = compose_rgb(vol[5], 0.0, 1.0, **layers, style=BlendStyle(
        error=True, alpha=0.3, heat_alpha=0.7, prob_alpha=0.2, hmax=0.5))
    with pytest.warns(FutureWarning, match=r"compose_rgb\(\).*style=BlendStyle\(error=\.\.\."):
        old = compose_rgb(vol[5], 0.0, 1.0, **layers, error=True, alpha=0.3, heat_alpha=0.7,
                          prob_alpha=0.2, hmax=0.5)
    assert np.array_equal(old, new)
    assert not np.array_equal(new, compose_rgb(vol[5], 0.0, 1.0, **layers))  # the style counts
    with pytest.raises(TypeError, match="'opacity'"):
        compose_rgb(vol[5], 0.0, 1.0, opacity=0.3)


def test_case_explorer_old_keywords_warn_and_open_the_same_case() -> None:
    from medseg_xai.widgets import CaseExplorer, ExplorerOptions

    vol, ref, pred, _ = _volume()
    two = np.stack([vol, 2 * vol])
    opts = ExplorerOptions(channel_names=("T1", "T2"), px=96, threshold=0.3,
                           convention="neurological", background=False,
                           miss_options={"methods": ()})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = mx.widgets.CaseExplorer(None, two, ref, pred, case_id="c", options=opts)
    with pytest.warns(FutureWarning, match=r"CaseExplorer\(\).*options=ExplorerOptions\(") as rec:
        old = CaseExplorer(None, two, ref, pred, case_id="c", channel_names=("T1", "T2"), px=96,
                           threshold=0.3, convention="neurological", background=False,
                           miss_options={"methods": ()})
    assert rec[0].filename == __file__
    assert old.options == new.options and old.threshold == new.threshold == 0.3
    assert old.channel_names == new.channel_names == ["T1", "T2"]
    assert old.geometry.convention == "neurological" and old.background is False
    assert np.array_equal(old.renderer.picture(0), new.renderer.picture(0))
    # a mapping is read as the options' fields; unknown keywords and fields are refused
    assert CaseExplorer(None, vol, ref, pred, options={"px": 96}).options.px == 96
    with pytest.raises(TypeError, match="CaseExplorer\\(\\) got an unexpected keyword "
                                        "argument 'treshold'"):
        CaseExplorer(None, vol, ref, pred, treshold=0.3)
    with pytest.raises(ValueError, match=r"threshold: expected a probability in \[0, 1\]"):
        ExplorerOptions(threshold=1.5)
