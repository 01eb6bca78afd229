"""The failure gallery of an organ audit, per class, on the real engine from the command line.

The MNI152-derived 4-class cohort of ``test_multiclass_audit.py`` (nilearn's shipped template
and masks at 4 mm) audited with a model: a TorchScript network that calls each voxel the class
whose typical T1 intensity is nearest, so every class has a missed region. Each structure class
gets its worst case per device, its missed region explained on its own output channel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medseg_xai.cli import main
from tests.test_multiclass_audit import CLASSES, _label_map

pytestmark = pytest.mark.slow

#: Typical T1 intensity of background, CSF, grey and white matter in the 4 mm template.
CENTRES = (0.0, 0.3, 0.6, 0.76)


class NearestIntensity(torch.nn.Module):
    """Logit of class k: -(smoothed intensity - centre_k)^2 / width (a 4-channel softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1, 1] = 0.7
            self.conv.weight[0, 0, 1, 1, :] += 0.1
            self.conv.weight[0, 0, 1, :, 1] += 0.05
        self.register_buffer("centres", torch.tensor(CENTRES).view(1, 4, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return -((h - self.centres) ** 2) * 200.0


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, dict]:
    import nibabel as nib

    d = tmp_path_factory.mktemp("mni_gallery")
    image, label, affine = _label_map()
    torch.jit.save(torch.jit.script(NearestIntensity().eval()), str(d / "model.pt"))
    rows = []
    for i, device in enumerate(["A", "A", "B", "B"]):
        cid = f"mni{i}"
        img = image * np.float32(1.0 + 0.03 * i)  # each case its own file and its own misses
        nib.save(nib.Nifti1Image(img, affine), d / f"{cid}_img.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), d / f"{cid}_lab.nii.gz")
        rows.append({"case_id": cid, "image": f"{cid}_img.nii.gz", "label": f"{cid}_lab.nii.gz",
                     "device": device})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    out = d / "out"
    code = main(["audit", str(d / "manifest.csv"), "--out", str(out), "--strata", "device",
                 "--model", str(d / "model.pt"), "--workers", "1", "--quiet", "--gallery", "4",
                 "--classes", *[f"{v}={n}:structure" for v, n in CLASSES.items()]])
    assert code == 0
    result = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    return out, {"label": label, "dir": d, "result": result}


def _model_labels(d: Path, cid: str) -> np.ndarray:
    """The model's own call for a case: argmax of its logits (independent of the toolkit)."""
    import nibabel as nib

    img = np.asarray(nib.load(d / f"{cid}_img.nii.gz").get_fdata(), np.float32)
    model = torch.jit.load(str(d / "model.pt"))
    with torch.no_grad():
        return model(torch.from_numpy(img)[None, None]).argmax(1)[0].numpy()


def _class_entries(result: dict) -> dict[str, list[dict]]:
    by_class: dict[str, list[dict]] = {}
    for e in result["explanations"]:
        by_class.setdefault(e.get("class"), []).append(e)
    return by_class


def test_every_class_explained_none_failed(audited):
    _, data = audited
    by_class = _class_entries(data["result"])
    assert set(by_class) == set(CLASSES.values())  # only class entries: organs have no lesions
    for value, name in CLASSES.items():
        for e in by_class[name]:
            assert e["category"] == "worst_class" and e["class_value"] == value
            assert not e["note"], e["note"]  # no failed (or unexplained) entry
            a = e["analysis"]
            assert a["kind"] == "class_region" and a["class"] == name
            assert e["class_index"] == a["class_index"] == value  # softmax: channel = value
            assert a["target"].startswith(f"mean class {value} logit over the voxels the model "
                                          "missed")
            assert 0.0 <= a["localisation"] <= 1.0
            assert e["figure"]["planes"][0]["heatmap"] is not None


def test_picked_worst_per_class_and_group_from_the_audits_table(audited):
    out, data = audited
    cases = pd.read_csv(out / "cases.csv")
    by_class = _class_entries(data["result"])
    for name in CLASSES.values():
        metric = f"dice_{name}"
        for where, sel in [("overall", cases)] + [
                (f"device = {g}", cases[cases["device"] == g]) for g in ("A", "B")]:
            worst = sel.loc[sel[metric].idxmin()]
            hits = [e for e in by_class[name] if where in e["picked_for"]]
            assert len(hits) == 1 and hits[0]["case_id"] == worst["case_id"]
            assert hits[0]["metric"] == metric
            assert hits[0]["value"] == pytest.approx(worst[metric], abs=1e-9)


def test_class_region_equals_the_class_mask_of_the_case(audited):
    from medseg_xai.audit.explanations import decode_plane

    _, data = audited
    label = data["label"]
    for e in data["result"]["explanations"]:
        v = e["class_value"]
        pred = _model_labels(data["dir"], e["case_id"])
        region = (label == v) & (pred != v)
        assert e["region_voxels"] == int(region.sum()) > 0
        assert e["reference_voxels"] == int((label == v).sum())
        assert e["volume_mm3"] == pytest.approx(region.sum() * 4.0 ** 3)
        for plane in e["figure"]["planes"]:  # the stored target is that region, slice by slice
            index: list = [slice(None)] * 3
            index[plane["axis"]] = plane["index"]
            rest = [k for k in range(3) if k != plane["axis"]]
            target = decode_plane(plane["target"])
            for k, off, n in zip(rest, plane["offset"], target.shape):
                index[k] = slice(off, off + n)
            np.testing.assert_array_equal(target, region[tuple(index)])
            np.testing.assert_array_equal(decode_plane(plane["ref"]), (label == v)[tuple(index)])


def test_report_lists_the_gallery_per_class(audited):
    out, data = audited
    assert main(["report", str(out / "audit.json"), "--out", str(out / "r.html")]) == 0
    html = (out / "r.html").read_text(encoding="utf-8")
    by_class = _class_entries(data["result"])
    positions = []
    for name in CLASSES.values():
        head = f'<h3 class="gallery-class">Class {name}</h3>'
        assert html.count(head) == 1
        block = html.split(head, 1)[1].split('<h3 class="gallery-class">', 1)[0]
        for e in by_class[name]:
            assert f"missed {name}: {e['region_voxels']} of {e['reference_voxels']}" in block
        positions.append(html.index(head))
    assert positions == sorted(positions)  # in the declared order
