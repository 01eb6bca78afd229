"""Settings objects instead of long keyword lists (DESIGN.md: no public function takes more than
12 parameters): MissSettings for explain_miss. The old keywords still work for one release with
a FutureWarning naming the new spelling and give the same result; an unknown keyword is a
TypeError naming it."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
from test_miss_validation import ContrastDetector, _adapter, scan

import medseg_xai as mx
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
