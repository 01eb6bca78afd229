"""AuditPlan: frozen, validated on construction (naming the field), YAML round trip, content
hash, recorded in audit.json; the old audit() keywords map into it with a FutureWarning; the
CLI's --plan and the equivalent options give identical tables."""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.audit.plan import AuditPlan, StatisticsPart


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import nibabel as nib
    from scipy import ndimage

    root = tmp_path_factory.mktemp("plan")
    manifest = mx.demo.make_cohort(root, n_cases=8, seed=3, shape=(16, 20, 20))
    df = pd.read_csv(manifest)
    for i, rel in enumerate(df["label"]):  # predictions: the label eroded every other case
        img = nib.load(str(root / rel))
        a = np.asarray(img.dataobj) > 0
        a = ndimage.binary_erosion(a) if i % 2 else a
        out = root / "pred" / Path(rel).name
        out.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(a.astype(np.uint8), img.affine), str(out))
    df["prediction"] = [f"pred/{Path(r).name}" for r in df["label"]]
    df.to_csv(manifest, index=False)
    return manifest


def test_plan_is_frozen_hashed_and_round_trips_yaml(tmp_path: Path) -> None:
    plan = AuditPlan.from_options(strata=["device", "device x site"], labels={1: "lesion"},
                                  criteria="default", confidence=0.9, reference="staple",
                                  connectivity=1, matching="hungarian", threshold=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.statistics.confidence = 0.5  # type: ignore[misc]
    again = AuditPlan.from_yaml(plan.to_yaml())
    assert again == plan and again.hash == plan.hash
    f = tmp_path / "plan.yaml"
    f.write_text(plan.to_yaml(), encoding="utf-8")
    assert AuditPlan.from_yaml(f).hash == plan.hash
    assert AuditPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).hash == plan.hash
    # one changed setting, another hash; same settings in another order, the same hash
    assert plan.replace(statistics={"confidence": 0.95}).hash != plan.hash
    d = plan.to_dict()
    shuffled = {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v
                for k, v in reversed(list(d.items()))}
    assert AuditPlan.from_dict(shuffled).hash == plan.hash
    assert len(plan.hash) == 64 and plan.decision.threshold == 0.3
    assert mx.AuditPlan is AuditPlan


@pytest.mark.parametrize("part, field, value, words", [
    ("statistics", "confidence", 1.5, "a number in (0, 1)"),
    ("statistics", "min_n", 0, "an integer in [1, inf]"),
    ("statistics", "interval_method", "bca-ish", "one of"),
    ("statistics", "correction", "bonferroni", "one of ['holm', 'bh']"),
    ("decision", "matching", "greedy", "one of ['overlap', 'hungarian']"),
    ("decision", "threshold", 1.0, "a number in (0, 1)"),
    ("decision", "connectivity", 4, "an integer in [1, 3]"),
    ("metrics", "empty", "zero", "one of"),
    ("metrics", "percentile", 101, "a number in [0, 100]"),
    ("strata", "detection_bins", ["a"], "a list of volume edges"),
])
def test_invalid_plan_names_the_field(part: str, field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError) as err:
        AuditPlan.from_dict({part: {field: value}})
    assert str(err.value).startswith(f"plan.{part}.{field}: expected")
    assert words in str(err.value)
    with pytest.raises(ValueError, match=r"plan.decision: unknown field\(s\) \['treshold'\]"):
        AuditPlan.from_dict({"decision": {"treshold": 0.3}})
    with pytest.raises(ValueError, match="plan.statistics.confidence"):
        StatisticsPart(confidence=0.0)


def test_audit_signature_is_short_and_old_keywords_warn(manifest: Path) -> None:
    assert len(inspect.signature(mx.audit.audit).parameters) <= 12
    cohort = mx.Cohort.from_csv(manifest)
    plan = AuditPlan.from_options(strata=["device"], n_resamples=50, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan path warns about nothing
        new = mx.audit(cohort, plan, executor="serial", progress=False)
    with pytest.warns(FutureWarning, match=r"strata -> plan.strata.strata"):
        old = mx.audit(cohort, strata=["device"], n_resamples=50, seed=1, executor="serial",
                       progress=False)
    pd.testing.assert_frame_equal(new.subgroups, old.subgroups)
    assert new.settings["plan_hash"] == old.settings["plan_hash"] == plan.hash
    assert AuditPlan.from_dict(new.settings["plan"]) == plan
    out = tmp = manifest.parent / "a.json"
    new.to_json(out)
    data = json.loads(tmp.read_text())
    assert data["settings"]["plan_hash"] == plan.hash
    assert AuditPlan.from_dict(data["settings"]["plan"]).hash == plan.hash


def test_invalid_plan_fails_before_any_case_runs(manifest: Path, monkeypatch) -> None:
    from medseg_xai.audit import engine

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a case ran")

    monkeypatch.setattr(engine, "run_tasks", boom)
    cohort = mx.Cohort.from_csv(manifest)
    with pytest.raises(ValueError, match="plan.statistics.alpha"):
        mx.audit(cohort, {"statistics": {"alpha": 2}})
    with pytest.raises(ValueError, match="plan.decision.overlap_threshold"):
        with pytest.warns(FutureWarning):
            mx.audit(cohort, overlap_threshold=0)


def test_cli_plan_init_and_plan_file_equal_the_options(manifest: Path, tmp_path: Path,
                                                       capsys) -> None:
    from medseg_xai.cli import main

    assert main(["plan", "init"]) == 0
    text = capsys.readouterr().out
    assert AuditPlan.from_yaml(text) == AuditPlan()
    plan = AuditPlan.from_options(strata=["device"], n_resamples=50, confidence=0.9)
    f = tmp_path / "plan.yaml"
    f.write_text(plan.to_yaml(), encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["audit", str(manifest), "--plan", str(f), "--out", str(a), "--workers", "1",
                 "--no-html"]) in (0, 3)
    # without --plan the CLI applies the default criteria (issue 26): none here, like the plan
    assert main(["audit", str(manifest), "--strata", "device", "--n-resamples", "50",
                 "--confidence", "0.9", "--criteria", "none", "--out", str(b), "--workers", "1",
                 "--no-html"]) in (0, 3)
    ja = json.loads((a / "audit.json").read_text())
    jb = json.loads((b / "audit.json").read_text())
    assert ja["settings"]["plan_hash"] == jb["settings"]["plan_hash"] == plan.hash
    assert ja["tables"] == jb["tables"] and ja["verdict"] == jb["verdict"]
    assert len(ja["tables"]["subgroups"]) > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("statistics:\n  confidence: 2\n", encoding="utf-8")
    assert main(["audit", str(manifest), "--plan", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "plan.statistics.confidence" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "audit.json").exists()
