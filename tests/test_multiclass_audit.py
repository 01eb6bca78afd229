"""A multi-class audit on real files, end to end from the command line: nilearn's shipped
MNI152 template and its grey-matter / white-matter / brain masks (no download) turned into a
4-class label map at 4 mm, predictions perturbed per device, audited with named classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg_xai.cli import main

pytestmark = pytest.mark.slow

CLASSES = {1: "csf", 2: "grey_matter", 3: "white_matter"}


def _label_map() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("nilearn.datasets")
    t1 = datasets.load_mni152_template(resolution=4)  # shipped with nilearn
    gm = datasets.load_mni152_gm_mask(resolution=4).get_fdata() > 0
    wm = datasets.load_mni152_wm_mask(resolution=4).get_fdata() > 0
    brain = datasets.load_mni152_brain_mask(resolution=4).get_fdata() > 0
    label = np.zeros(brain.shape, np.uint8)
    label[brain] = 1
    label[gm] = 2
    label[wm] = 3  # white matter wins where the two masks overlap
    return np.asarray(t1.get_fdata(), np.float32), label, np.asarray(t1.affine)


def _predict(label: np.ndarray, device: str, k: int) -> np.ndarray:
    from scipy import ndimage

    pred = label.copy()
    if device == "B":  # grey matter eroded on scanner B: its Dice drops, the others' barely
        gm = label == 2
        thin = ndimage.binary_erosion(gm, iterations=1)
        pred[gm & ~thin] = 1
    shift = np.roll(label, k, axis=0)  # a small per-case shift of the white matter
    pred[(label == 3) & (shift != 3)] = 2
    return pred


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, pd.DataFrame, dict]:
    import nibabel as nib

    d = tmp_path_factory.mktemp("mni")
    image, label, affine = _label_map()
    rows = []
    preds = {}
    for i, (device, k) in enumerate([("A", 0), ("A", 1), ("A", 1), ("B", 0), ("B", 1), ("B", 0)]):
        cid = f"mni{i}"
        img = image + np.float32(i)  # each case its own file
        nib.save(nib.Nifti1Image(img, affine), d / f"{cid}_img.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), d / f"{cid}_lab.nii.gz")
        preds[cid] = _predict(label, device, k)
        nib.save(nib.Nifti1Image(preds[cid], affine), d / f"{cid}_pred.nii.gz")
        rows.append({"case_id": cid, "image": f"{cid}_img.nii.gz", "label": f"{cid}_lab.nii.gz",
                     "prediction": f"{cid}_pred.nii.gz", "device": device})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    (d / "criteria.yaml").write_text(
        "criteria:\n  - name: grey matter Dice >= 0.85 on every device\n"
        "    metric: dice_grey_matter\n    op: '>='\n    threshold: 0.85\n"
        "    strata: [device]\n    min_n: 1\n", encoding="utf-8")
    out = d / "out"
    code = main(["audit", str(d / "manifest.csv"), "--out", str(out), "--strata", "device",
                 "--classes", *[f"{v}={n}:structure" for v, n in CLASSES.items()],
                 "--criteria", str(d / "criteria.yaml"), "--workers", "1", "--quiet",
                 "--gallery", "4", "--no-html"])
    assert code == 0
    return out, pd.DataFrame(rows), {"label": label, "preds": preds, "affine": affine}


def test_per_class_subgroup_rows_equal_monai(audited):
    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    out, rows, data = audited
    sub = pd.read_csv(out / "subgroups.csv")
    spacing = (4.0, 4.0, 4.0)
    ref = one_hot(torch.as_tensor(data["label"][None, None]).long(), 4)
    for device in ("A", "B"):
        ids = rows.loc[rows["device"] == device, "case_id"]
        preds = [one_hot(torch.as_tensor(data["preds"][c][None, None]).long(), 4) for c in ids]
        dice = torch.cat([DiceMetric(include_background=False, reduction="none")(p, ref)
                          for p in preds]).mean(0)
        hd95 = torch.cat([compute_hausdorff_distance(p, ref, include_background=False,
                                                     percentile=95, spacing=spacing)
                          for p in preds]).mean(0)
        for j, name in enumerate(CLASSES.values()):
            for metric, want in (("dice", dice[j]), ("hd95", hd95[j])):
                row = sub[(sub["stratum"] == "device") & (sub["group"] == device)
                          & (sub["metric"] == f"{metric}_{name}")]
                assert len(row) == 1 and row["class"].iloc[0] == name
                assert row["estimate"].iloc[0] == pytest.approx(float(want), abs=1e-6)
    mean = sub[(sub["metric"] == "dice") & (sub["stratum"] == "overall")]
    assert mean["class"].iloc[0] == "mean of csf, grey_matter, white_matter"
    gm_b = sub[(sub["group"] == "B") & (sub["metric"] == "dice_grey_matter")]["estimate"].iloc[0]
    gm_a = sub[(sub["group"] == "A") & (sub["metric"] == "dice_grey_matter")]["estimate"].iloc[0]
    assert gm_b < gm_a - 0.1  # the scanner-B grey matter drop is visible per class


def test_per_class_criterion_decided_and_no_organ_lesions(audited):
    out, _, _ = audited
    result = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    crit = pd.read_csv(out / "criteria.csv")
    decided = crit[crit["metric"] == "dice_grey_matter"]
    assert set(decided["status"]) <= {"PASS", "FAIL"} and "FAIL" in set(decided["status"])
    assert result["settings"]["classes"][1] == {"value": 2, "name": "grey_matter",
                                                "kind": "structure"}
    cases = pd.read_csv(out / "cases.csv")
    # structure classes: no lesion detection, so no 1.9-litre union "lesion"
    assert (cases["n_ref_lesions"].fillna(0) == 0).all()


def test_gallery_loads_cases_with_the_audits_labels(audited):
    out, _, _ = audited
    result = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    entries = result.get("explanations") or []
    assert entries, "the gallery is empty"
    for e in entries:
        assert "could not be shown" not in (e.get("note") or ""), e.get("note")
        assert e.get("figure") is not None


def test_report_shows_each_class_and_what_a_mean_covers(audited):
    out, _, _ = audited
    assert main(["report", str(out / "audit.json"), "--out", str(out / "r.html")]) == 0
    html = (out / "r.html").read_text(encoding="utf-8")
    assert "mean of csf, grey_matter, white_matter" in html  # the unlabelled mean, labelled
    assert "dice_grey_matter" in html
    assert "grey_matter (value 2, structure)" in html  # the Data section's class list
