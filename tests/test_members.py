"""Several models as the audit's uncertainty members (issue 27), with the bundled demo model and
a perturbed copy of it: fast, no nnU-Net (its fold members: tests/test_ensemble_members.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import medseg_xai as mx
from medseg_xai.audit.members import resolve_members, uncertainty_source
from medseg_xai.explain.uncertainty import UncertaintySettings
from medseg_xai.models.members import check_members


def _fake(name: str = "", activation: str = "softmax", **kw):
    return SimpleNamespace(probabilities=lambda x: x, activation=activation, fingerprint=name,
                           spatial_dims=3, **kw)


def test_source_sentences_name_models_and_variants() -> None:
    a, b, c = _fake("a"), _fake("b"), _fake("c")
    none = UncertaintySettings(flips=())
    src = uncertainty_source("models", [a, b, c], a, none)
    assert src["description"] == ("disagreement between 3 models (the audited model and 2 "
                                  "others) (3 members per scan)")
    assert [m["audited"] for m in src["models"]] == [True, False, False]
    assert [m["name"] for m in src["models"]] == ["model 1", "model 2", "model 3"]
    rich = UncertaintySettings(flips=(0, 2), jitter=1, mc_dropout=3)
    src = uncertainty_source("models", [b, c], a, rich)
    assert src["n_members"] == 2 * 7 and src["members_per_model"] == 7
    assert src["description"] == ("disagreement between 2 models, each on the image as given, 2 "
                                  "flipped copies, 1 intensity-jittered copy and 3 Monte-Carlo "
                                  "dropout passes (14 members per scan)")
    src = uncertainty_source("augmentations", None, a, UncertaintySettings(flips=(1,)))
    assert src["description"] == ("disagreement between the audited model on the image as "
                                  "given and 1 flipped copy (2 members per scan)")
    assert uncertainty_source("augmentations", None, a, none)["description"].endswith(
        "(1 member: no disagreement)")


def test_members_are_checked_before_any_case() -> None:
    a = _fake("a")
    with pytest.raises(ValueError, match="expected the audited model's 'softmax'"):
        check_members([a, _fake("s", activation="sigmoid")], a)
    with pytest.raises(ValueError, match=r"model 2 has 3 output classes \(c0, c1, c2\); "
                                          r"expected the audited model's 2"):
        check_members([_fake(class_names=["x", "y"]),
                       _fake(class_names=["c0", "c1", "c2"])], _fake(class_names=["x", "y"]))
    with pytest.raises(ValueError, match="expected 'folds'"):
        resolve_members("fold", a)
    with pytest.raises(ValueError, match="expected an adapter"):
        resolve_members([a, a], None)
    members, kind = resolve_members([_fake("b"), a], a)  # the audited model moves first
    assert kind == "models" and members[0] is a


def test_mc_dropout_refused_before_any_case(tmp_path) -> None:
    from medseg_xai.demo import make_cohort

    a = mx.load_model("demo", device="cpu")  # MONAI's UNet: Dropout(p=0) layers only
    cohort = mx.Cohort.from_csv(make_cohort(tmp_path, n_cases=2, seed=3, shape=(16, 32, 32)))
    with pytest.raises(ValueError, match=r"mc_dropout: the model has only dropout layers with "
                                         r"p = 0 \(9\)"):
        mx.audit(cohort, adapter=a, uncertainty={"flips": (), "mc_dropout": 2}, progress=False)
    b = copy.deepcopy(a)
    for m in b.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.2
    bare = mx.SegmentationAdapter(torch.nn.Conv3d(1, 2, 1), divisor=None)
    with pytest.raises(ValueError, match="mc_dropout: model 2 has no dropout layer"):
        mx.audit(cohort, adapter=b, uncertainty={"mc_dropout": 1},
                 uncertainty_members=[b, bare], progress=False)


@pytest.fixture(scope="module")
def two_models():
    a = mx.load_model("demo", device="cpu")
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in b.model.parameters():
            if p.numel() > 1:
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    assert a.fingerprint != b.fingerprint
    return a, b


def test_audit_with_two_models_reuses_the_audited_pass(two_models, tmp_path, monkeypatch) -> None:
    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.demo import make_cohort

    a, b = two_models
    cohort = mx.Cohort.from_csv(make_cohort(tmp_path, n_cases=3, seed=3, shape=(16, 32, 32)))
    calls: dict[int, int] = {}
    real = SegmentationAdapter.probabilities

    def counted(self, x):
        calls[id(self.model)] = calls.get(id(self.model), 0) + 1
        return real(self, x)

    monkeypatch.setattr("medseg_xai.audit.engine._determinism", lambda *a, **k: None)
    monkeypatch.setattr(SegmentationAdapter, "probabilities", counted)
    r = mx.audit(cohort, adapter=a, uncertainty_members=[b, a], progress=False, workers=1,
                 failure={"hidden_strata": False})
    # one pass of each model per case: the audited model's pass is its plain member
    assert calls == {id(a.model): 3, id(b.model): 3}
    assert (r.cases["unc_members"] == 2).all()
    assert r.settings["uncertainty_source"]["kind"] == "models"
    assert r.provenance["uncertainty_members"] == [a.fingerprint, b.fingerprint]
    monkeypatch.setattr(SegmentationAdapter, "probabilities", real)
    plain = mx.audit(cohort, adapter=a, progress=False, workers=1)
    np.testing.assert_array_equal(r.cases["dice"], plain.cases["dice"])  # metrics: a's only
    assert "uncertainty_source" not in plain.settings
    assert "uncertainty_members" not in plain.provenance
