"""The report on a real ``audit`` of a tiny generated cohort: HTML numbers equal the JSON's."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_reports import EVIL, parse  # noqa: E402

from medseg_xai.reports.tables import fmt  # noqa: E402

# The missing prediction file is deliberate: that case must fail and be reported.
pytestmark = pytest.mark.filterwarnings("ignore:cohort. 1 row problem:UserWarning")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from medseg_xai.audit.engine import audit
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import make_cohort

    out = tmp_path_factory.mktemp("cohort")
    df = pd.read_csv(make_cohort(out, n_cases=16, seed=0, shape=(16, 24, 24)))
    preds = []
    for i, rec in df.iterrows():
        img = nib.load(out / rec["label"])
        lab = np.asarray(img.dataobj) > 0
        pred = lab.copy() if i % 3 else np.zeros_like(lab)  # every third case: all missed
        path = out / f"pred-{rec['case_id']}.nii.gz"
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine), path)
        preds.append(str(path))
    df["prediction"] = preds
    df.loc[2, "prediction"] = str(out / "missing.nii.gz")  # one failed case
    df["site"] = df["site"].astype(str)
    df.loc[0, "site"] = EVIL
    cohort = Cohort.from_dataframe(df, root=out)
    result = audit(
        cohort,
        strata=["device", "site"],
        seed=0,
        criteria="default",
        workers=1,
        n_resamples=50,
        progress=False,
        min_n=3,
    )
    html = result.to_html(out / "report.html", cohort=cohort).read_text(encoding="utf-8")
    return result, json.loads(result.to_json()), html, df


def test_real_audit_report_numbers_equal_json(audited):
    result, doc, html, _ = audited
    table = doc["tables"]["subgroups"]
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    by_key = {(r["stratum"], r["group"], r["metric"]): r for r in rows}
    p = parse(html)
    strata = [s for s in dict.fromkeys(result.subgroups["stratum"]) if s != "overall"]
    checked = 0
    for i, stratum in enumerate(strata):
        t = p.tables[f"subgroup-table-{i}"]
        for row in t["rows"]:
            rec = dict(zip(t["columns"], row))
            jr = by_key[(stratum, rec["group"][0], rec["metric"][0])]
            for col, name in (
                ("estimate", "estimate"),
                ("95% CI low", "ci_low"),
                ("95% CI high", "ci_high"),
                ("adjusted p", "p_adjusted"),
            ):
                text, value = rec[col]
                if jr[name] is None:
                    assert value == "nan" and text == "–"
                else:
                    assert float(value) == jr[name] and text == fmt(jr[name])
                    checked += 1
            assert rec["flag"][0] == jr["flag"]
    assert checked > 20
    assert EVIL in [c[0] for t in p.tables.values() for r in t["rows"] for c in r]
    assert "<script>alert(1)</script>" not in html


def test_real_audit_failed_case_gallery_and_no_patient_ids(audited):
    result, _, html, df = audited
    rows = parse(html).tables["failed-cases"]["rows"]
    failed = result.cases[result.cases["status"] == "failed"]
    assert [r[0][0] for r in rows] == list(failed["case_id"]) == [df.loc[2, "case_id"]]
    assert rows[0][1][0] and rows[0][1][0] == failed["error"].iloc[0]
    for pid in df["patient_id"]:
        assert f">{pid}<" not in html
    assert "overlay unavailable" not in html  # images loaded from the cohort
    assert html.count('class="card"') >= 2
