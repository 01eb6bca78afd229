"""One decision module: a lesion id names the same voxels, and a status the same decision, in
the audit and its failure gallery, whatever the audit's rules (reference standard, connectivity,
matching, adapter threshold, classes)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai import decide
from medseg_xai.audit.explanations import explain_failures

SHAPE = (10, 12, 12)
SPACING = (2.0, 1.0, 1.0)


def _save(path: Path, a: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(a, np.diag([*SPACING, 1.0])), str(path))
    return str(path)


def _case_arrays(k: int) -> dict[str, np.ndarray]:
    """Reference with two lesions touching at one corner (one lesion at connectivity 26, two
    at 6), readers that disagree with each other and with the label file (which alone has
    lesion E, so its ids differ from any consensus), a prediction that covers some lesions partly, and an image
    whose voxels are the logits a one-channel sigmoid model passes through."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:4, 2:4, 2:4] = 1                       # A
    ref[4:6, 4:6, 4:6] = 1                       # B: touches A at one corner only
    ref[6:9, 8:11, 1:4] = 2                      # C (class 2 in the three-class audit)
    ref[1:2, 9:11, 8 + k:10 + k] = 2             # D
    pred = np.zeros(SHAPE, np.uint8)
    pred[2:4, 2:4, 2:4] = 1                      # A covered
    pred[5, 5, 5] = 1                            # one voxel of B (1/8)
    pred[6:9, 8:11, 1 + k:2 + k] = 1             # C covered partly, as the wrong class
    pred[8:10, 1:3, 9:11] = 2                    # a false positive
    p = np.full(SHAPE, 0.05, np.float32)
    p[ref == 1] = 0.4                            # called at 0.3, not at 0.5
    p[6:9, 8:11, 1:2 + k] = 0.35
    image = np.log(p / (1 - p)).astype(np.float32)
    r2 = ref.copy()
    r2[1:2] = 0                                  # reader r2 misses D
    r3 = ref.copy()
    r3[6:9] = 0                                  # reader r3 misses C
    label = ref.copy()
    label[0, 0:2, 0:2] = 1                       # E: in the label file only, no reader has it
    return {"image": image, "label": label, "prediction": pred, "label_r1": ref.copy(),
            "label_r2": r2, "label_r3": r3}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decide")
    rows = []
    for k in range(3):
        arrays = _case_arrays(k)
        row = {"case_id": f"c{k}"}
        for name, a in arrays.items():
            _save(root / name / f"c{k}.nii.gz", a)
            row[name] = f"{name}/c{k}.nii.gz"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _cohort(root: Path, drop: tuple[str, ...] = ()) -> mx.Cohort:
    df = pd.read_csv(root / "manifest.csv").drop(columns=list(drop))
    return mx.Cohort.from_dataframe(df, root=root)


def _adapter(threshold: float | None = None) -> mx.SegmentationAdapter:
    import torch

    net = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    return mx.SegmentationAdapter(net, spatial_dims=3, activation="sigmoid", threshold=threshold)


def _binary(root: Path) -> None:
    """Binary copies of the label files (the binary audits)."""
    for name in ("label", "prediction", "label_r1", "label_r2", "label_r3"):
        for f in (root / name).glob("*.nii.gz"):
            out = root / f"{name}_bin" / f.name
            if not out.exists():
                a = np.asarray(nib.load(str(f)).dataobj)
                _save(out, (a > 0).astype(np.uint8))


def _binary_cohort(root: Path, readers: bool = True) -> mx.Cohort:
    _binary(root)
    df = pd.read_csv(root / "manifest.csv")
    for c in ("label", "prediction", "label_r1", "label_r2", "label_r3"):
        df[c] = df[c].str.replace(f"{c}/", f"{c}_bin/", regex=False)
    if not readers:
        df = df.drop(columns=["label_r1", "label_r2", "label_r3"])
    return mx.Cohort.from_dataframe(df, root=root)


CONFIGS = {
    "staple": dict(reference="staple"),
    "majority": dict(reference="majority"),
    "reader": dict(reference="r2"),
    "conn6": dict(connectivity=1),
    "conn26": dict(connectivity=3),
    "hungarian": dict(matching="hungarian"),
}


def _check_gallery(result: mx.AuditResult, cohort: mx.Cohort, adapter: object = None) -> int:
    """Every reference lesion of the audit, asked for in the gallery: same voxels (volume),
    same status; with a model, the miss analysis reaches the same status."""
    les = result.lesions[result.lesions["source"] == "reference"]
    assert len(les) > 0
    checked = 0
    for (cid, lid), row in les.set_index(["case_id", "lesion_id"]).iterrows():
        entries = explain_failures(result, cohort, adapter, extra=[(str(cid), str(lid))],
                                   max_cases=0, explain_kwargs=_CHEAP)
        e = next(x for x in entries if x["case_id"] == str(cid))
        assert e["lesion_id"] == lid, e["note"]
        assert e["volume_mm3"] == pytest.approx(row["volume_mm3"]), (cid, lid)
        assert e["status"] == row["status"], (cid, lid)
        if adapter is not None:
            assert e["analysis"] is not None, e["note"]
            assert e["analysis"]["status"] == row["status"], (cid, lid)
        checked += 1
    return checked


_CHEAP = {"methods": ("saliency",), "probes": {"contrast": (2.0,)}}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gallery_lesions_are_the_audits_lesions(cohort_dir: Path, name: str) -> None:
    cohort = _binary_cohort(cohort_dir, readers=name in ("staple", "majority", "reader"))
    result = mx.audit(cohort, progress=False, executor="serial", **CONFIGS[name])
    assert (result.cases["status"] == "ok").all(), result.cases["error"].tolist()
    adapter = _adapter() if name in ("hungarian", "reader") else None
    assert _check_gallery(result, cohort, adapter) >= 6


def test_connectivity_changes_the_ids_and_the_gallery_follows(cohort_dir: Path) -> None:
    cohort = _binary_cohort(cohort_dir, readers=False)
    n6 = len(mx.audit(cohort, progress=False, executor="serial", connectivity=1).lesions)
    n26 = len(mx.audit(cohort, progress=False, executor="serial", connectivity=3).lesions)
    assert n6 > n26  # A and B are one lesion at 26, two at 6: the test can tell them apart


def test_gallery_under_the_adapter_threshold(cohort_dir: Path) -> None:
    cohort = _binary_cohort(cohort_dir, readers=False).__class__.from_dataframe(
        pd.read_csv(cohort_dir / "manifest.csv")[["case_id", "image", "label"]].assign(
            label=lambda d: d["label"].str.replace("label/", "label_bin/", regex=False)),
        root=cohort_dir)
    adapter = _adapter(threshold=0.3)
    result = mx.audit(cohort, adapter=adapter, progress=False, executor="serial",
                      feature_layer=None)
    assert result.settings["threshold"] == 0.3
    les = result.lesions
    # at 0.3 lesion A+B (p = 0.4) is called; at 0.5 nothing would be
    assert (les["status"] == "detected").any()
    assert _check_gallery(result, cohort, adapter) >= 3


def test_gallery_of_a_three_class_audit(cohort_dir: Path) -> None:
    cohort = _cohort(cohort_dir, drop=("label_r1", "label_r2", "label_r3"))
    # both classes declared lesions (several classes default to structures: no lesion table)
    result = mx.audit(cohort, labels={1: "a:lesion", 2: "b:lesion"}, progress=False,
                      executor="serial")
    assert (result.cases["status"] == "ok").all(), result.cases["error"].tolist()
    assert _check_gallery(result, cohort) >= 6


# ------------------------------------------------------------------ the rules themselves
def test_parse_lesion_id_is_strict() -> None:
    assert decide.parse_lesion_id("ref-2") == ("ref", 2)
    assert decide.parse_lesion_id("pred-11") == ("pred", 11)
    assert decide.parse_lesion_id(3) == ("ref", 3)
    for bad in ("ref-0", "ref-x", "lesion-2", "ref2", "", True, "ref--1"):
        with pytest.raises(ValueError, match="lesion_id"):
            decide.parse_lesion_id(bad)


def test_label_map_numpy_equals_torch_and_call_threshold() -> None:
    import torch

    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        for act in ("softmax", "sigmoid"):
            for t in (None, 0.3, 0.5):
                p = rng.random((k, 5, 6)).astype(np.float32)
                a = decide.label_map(p, t, activation=act)
                b = decide.label_map(torch.from_numpy(p), t, activation=act).numpy()
                np.testing.assert_array_equal(a, b)
    assert decide.call_threshold(None, None, 3, "softmax") is None
    assert decide.call_threshold(None, None, 1, "sigmoid") == 0.5
    assert decide.call_threshold(None, 0.3, 2, "softmax") == 0.3
    assert decide.call_threshold(0.7, 0.3, 2, "softmax") == 0.7


def test_explain_miss_wrong_class_is_not_a_detection() -> None:
    """A lesion of class 2 covered only by class-1 voxels is missed, not detected."""
    from medseg_xai.explain.miss import MissSettings, explain_miss

    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:5, 2:5, 2:5] = 2
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = 1
    image = np.zeros((8, 8, 8), np.float32)
    a = explain_miss(_adapter(), image, ref, "ref-1", pred=pred,
                     settings=MissSettings(methods=("saliency",), probes={"contrast": (2.0,)}))
    assert a.status == "missed"
    b = explain_miss(_adapter(), image, ref, "ref-1", pred=(pred * 2),
                     settings=MissSettings(methods=("saliency",), probes={"contrast": (2.0,)}))
    assert b.status == "detected"


def test_explain_cli_threshold_draws_and_targets_at_that_threshold(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """``medseg-xai explain --threshold 0.3``: the outline's prediction and the missed target
    are built at 0.3 (they were built at the adapter's default before)."""
    import torch

    from medseg_xai import cli

    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1].fill_(1.0)
        net.bias.zero_()
    model = tmp_path / "model.pt"
    torch.jit.script(net).save(str(model))
    arrays = _case_arrays(0)
    image = _save(tmp_path / "img.nii.gz", arrays["image"])
    ref = _save(tmp_path / "ref.nii.gz", (arrays["label"] > 0).astype(np.uint8))
    p1 = 1.0 / (1.0 + np.exp(-arrays["image"]))  # softmax of [0, x]
    seen: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for t in (0.3, 0.5):
        monkeypatch.setattr(cli, "_explain_png", lambda path, img, mask, pred, *a, t=t: seen.
                            __setitem__(t, (np.asarray(mask), np.asarray(pred))))
        assert cli.main(["explain", image, "--ref", ref, "--model", str(model), "--target",
                         "missed", "--method", "saliency", "--threshold", str(t),
                         "--out", str(tmp_path / f"out{t}")]) == 0
        mask, pred = seen[t]
        called = p1 > t
        np.testing.assert_array_equal(pred, called)
        np.testing.assert_array_equal(mask, (arrays["label"] > 0) & ~called)
    assert not np.array_equal(seen[0.3][1], seen[0.5][1])  # the threshold mattered


def test_case_explorer_from_audit_shows_the_audits_lesions(cohort_dir: Path) -> None:
    """The explorer opened from an audit (STAPLE reference, face connectivity) lists the
    audit's lesion ids with the audit's volumes and statuses."""
    pytest.importorskip("ipywidgets")
    from medseg_xai.widgets.case_explorer import CaseExplorer

    cohort = _binary_cohort(cohort_dir)
    result = mx.audit(cohort, progress=False, executor="serial", reference="staple",
                      connectivity=1)
    with pytest.raises(TypeError):
        CaseExplorer.from_audit(result, "c1")  # a result holds no images: cohort= is required
    ex = CaseExplorer.from_audit(result, "c1", cohort=cohort)
    mine = ex.lesions.table.set_index("lesion_id")
    audit_rows = result.lesions[result.lesions["case_id"] == "c1"].set_index("lesion_id")
    assert sorted(mine.index) == sorted(audit_rows.index)
    for lid, row in audit_rows.iterrows():
        assert mine.loc[lid, "status"] == row["status"], lid
        assert mine.loc[lid, "volume_mm3"] == pytest.approx(row["volume_mm3"]), lid
