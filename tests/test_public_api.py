"""The public API of DESIGN.md, name by name, on tiny inputs with answers known by hand.

Outside code and the notebooks rely on these names and signatures; each test also checks a
value, so a renamed argument, a dropped default or a wrong number fails here first.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import medseg_xai as mx  # noqa: E402

PKG = Path(mx.__file__).resolve().parent


def _params(fn) -> dict[str, object]:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()}


# ------------------------------------------------------------------------------------ metrics


def test_metric_signatures_match_the_design():
    for name in ("dice", "jaccard", "precision", "recall", "specificity"):
        assert list(_params(getattr(mx.metrics, name)))[:2] == ["pred", "ref"]
    hd = _params(mx.metrics.hausdorff_distance)
    assert list(hd)[:4] == ["pred", "ref", "spacing", "percentile"]
    assert hd["spacing"] is None and hd["percentile"] == 95
    assert list(_params(mx.metrics.average_surface_distance))[:3] == ["pred", "ref", "spacing"]
    nsd = _params(mx.metrics.normalized_surface_dice)
    assert list(nsd)[:4] == ["pred", "ref", "tolerance", "spacing"] and nsd["spacing"] is None
    ev = _params(mx.metrics.evaluate_case)
    assert list(ev)[:4] == ["pred", "ref", "spacing", "labels"] and ev["labels"] is None
    assert list(_params(mx.metrics.lesions))[:3] == ["pred", "ref", "spacing"]


def test_overlap_metrics_equal_voxel_counts():
    ref = np.zeros((6, 6, 6), bool)
    ref[1:4, 1:4, 1:4] = True  # 27 voxels
    pred = np.zeros_like(ref)
    pred[2:5, 1:4, 1:4] = True  # 27 voxels, 18 shared
    tp, fp, fn = 18, 9, 9
    tn = ref.size - tp - fp - fn
    assert mx.metrics.dice(pred, ref) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert mx.metrics.jaccard(pred, ref) == pytest.approx(tp / (tp + fp + fn))
    assert mx.metrics.precision(pred, ref) == pytest.approx(tp / (tp + fp))
    assert mx.metrics.recall(pred, ref) == pytest.approx(tp / (tp + fn))
    assert mx.metrics.specificity(pred, ref) == pytest.approx(tn / (tn + fp))


def test_surface_metrics_on_two_single_voxels_use_spacing():
    pred = np.zeros((5, 3, 3), bool)
    ref = np.zeros_like(pred)
    pred[0, 1, 1] = ref[3, 1, 1] = True  # 3 voxels apart along an axis of 2 mm voxels
    spacing = (2.0, 1.0, 1.0)
    assert mx.metrics.hausdorff_distance(pred, ref, spacing=spacing) == pytest.approx(6.0)
    assert mx.metrics.hausdorff_distance(pred, ref) == pytest.approx(3.0)
    assert mx.metrics.average_surface_distance(pred, ref, spacing=spacing) == pytest.approx(6.0)
    assert mx.metrics.normalized_surface_dice(pred, ref, 5.0, spacing=spacing) == 0.0
    assert mx.metrics.normalized_surface_dice(pred, ref, 6.5, spacing=spacing) == 1.0


def test_evaluate_case_and_lesions_agree_with_the_single_metrics():
    ref = np.zeros((8, 8, 8), bool)
    ref[0:2, 0:2, 0:2] = True
    ref[5:8, 5:8, 5:8] = True  # a second lesion, missed
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, 0:3] = True
    spacing = (1.0, 1.0, 2.0)
    out = mx.metrics.evaluate_case(pred, ref, spacing)
    assert out["dice"] == pytest.approx(mx.metrics.dice(pred, ref))
    assert out["hd95"] == pytest.approx(mx.metrics.hausdorff_distance(pred, ref, spacing))
    assert out["volume_ref_mm3"] == pytest.approx(ref.sum() * 2.0)
    table = mx.metrics.lesions(pred, ref, spacing)
    assert isinstance(table, pd.DataFrame)
    refs = table[table["source"] == "reference"].sort_values("volume_mm3")
    assert refs["status"].tolist() == ["detected", "missed"]
    assert refs["volume_mm3"].tolist() == [16.0, 54.0]


# ------------------------------------------------------------------------ model and explain


class Linear1x1(nn.Module):
    """Class-1 logit = +x, class-0 logit = -x: every answer is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def model_case():
    adapter = mx.SegmentationAdapter(Linear1x1(), spatial_dims=3, activation="softmax",
                                     output=None, class_names=["background", "lesion"],
                                     sliding_window=None)
    image = np.random.default_rng(0).normal(size=(1, 6, 6, 6)).astype(np.float32)
    return adapter, image


def test_adapter_logits_probabilities_predict_layers(model_case):
    adapter, image = model_case
    logits = adapter.logits(image)
    assert tuple(logits.shape) == (1, 2, 6, 6, 6)
    np.testing.assert_allclose(logits[0, 1].numpy(), image[0], atol=1e-6)
    probs = adapter.probabilities(image)
    np.testing.assert_allclose(probs.sum(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[0, 1].numpy(), 1 / (1 + np.exp(-2 * image[0])), atol=1e-5)
    assert np.array_equal(adapter.predict(image)[0].numpy(), (image[0] > 0).astype(np.int64))
    layers = adapter.layers()
    assert layers.set_index("name").loc["conv", "type"] == "Conv3d"


def test_targets_select_the_documented_voxels():
    ref = np.zeros((6, 6, 6), bool)
    ref[0:2, 0:2, 0:2] = True
    ref[4:6, 4:6, 4:6] = True
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, 0:2] = True
    region = mx.targets.region(1, ref)
    assert region.class_index == 1 and np.array_equal(region.mask, ref)
    missed = mx.targets.missed(1, pred=pred, ref=ref)
    assert np.array_equal(missed.mask, ref & ~pred)
    lesion = mx.targets.lesion(1, ref, point=(5, 5, 5))
    assert lesion.mask.sum() == 8 and lesion.mask[5, 5, 5] and not lesion.mask[0, 0, 0]


def test_explain_and_activations_on_a_model_known_by_hand(model_case):
    adapter, image = model_case
    mask = np.zeros((6, 6, 6), bool)
    mask[1:3, 1:3, 1:3] = True
    target = mx.targets.region(1, mask)
    # d mean(x over mask) / dx = 1/8 inside the mask, 0 outside
    exp = mx.explain(adapter, image, target, method="saliency")
    assert isinstance(exp, mx.Explanation)
    assert exp.method == "saliency" and exp.target is target and exp.layer is None
    np.testing.assert_allclose(exp.attribution, np.where(mask, 1 / 8, 0.0), atol=1e-7)
    cam = mx.explain(adapter, image, target, method="gradcam", layer="conv")
    assert cam.method == "gradcam" and cam.layer == "conv"
    assert cam.attribution.shape == image.shape[1:] and np.isfinite(cam.attribution).all()
    act = mx.activations(adapter, image, "conv")
    np.testing.assert_allclose(act, np.concatenate([-image, image]), atol=1e-6)


# ---------------------------------------------------------------------------- cohort, audit


def _write_cohort(folder: Path, n: int = 6) -> Path:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        lab = np.zeros((8, 8, 6), np.uint8)
        lab[2:6, 2:6, 1:4] = 1
        pred = lab.copy()
        pred[2:2 + i % 3] = 0  # devices differ in how much they miss
        for name, arr in (("img", rng.random(lab.shape).astype(np.float32)), ("lab", lab),
                          ("pred", pred)):
            nib.save(nib.Nifti1Image(arr, affine), folder / f"{name}{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz",
                     "prediction": f"pred{i}.nii.gz", "device": "AB"[i % 2]})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    cohort = mx.Cohort.from_csv(_write_cohort(folder))
    result = mx.audit(cohort, strata=["device"], adapter=None, seed=0, workers=1,
                      n_resamples=100, min_n=2, progress=False)
    return folder, cohort, result


def test_cohort_constructors(audited):
    folder, cohort, _ = audited
    assert cohort.case_ids == [f"c{i}" for i in range(6)] and "device" in cohort.metadata_columns
    df = pd.read_csv(folder / "manifest.csv")
    same = mx.Cohort.from_dataframe(df, root=folder)
    assert same.fingerprint() == cohort.fingerprint()
    case = same.load_case("c1")
    assert case.spacing == pytest.approx((1.0, 1.0, 2.0)) and case.label.sum() == 48


def test_audit_result_tables_and_outputs(audited):
    folder, cohort, result = audited
    assert isinstance(result, mx.AuditResult)
    assert len(result.cases) == 6 and set(result.cases["status"]) == {"ok"}
    dice = result.cases.set_index("case_id")["dice"]
    case = cohort.load_case("c2")
    assert dice["c2"] == pytest.approx(mx.metrics.dice(case.prediction > 0, case.label > 0))
    sub = result.subgroups
    assert {"stratum", "group", "n", "metric", "estimate", "ci_low", "ci_high"} <= set(sub)
    by_dev = sub[(sub["stratum"] == "device") & (sub["metric"] == "dice")].set_index("group")
    for g in ("A", "B"):
        ok = result.cases[result.cases["device"] == g]["dice"]
        assert by_dev.loc[g, "n"] == 3 and by_dev.loc[g, "estimate"] == pytest.approx(ok.mean())
    doc = json.loads(result.to_json(folder / "audit.json"))
    assert json.loads((folder / "audit.json").read_text())["tables"]["cases"] == doc["tables"]["cases"]
    html = result.to_html(folder / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "device" in html


def test_widgets(audited):
    _, _, result = audited
    dash = mx.widgets.AuditDashboard(result)
    assert dash.stratum.value == "device" and "A" in dash.table.value and "B" in dash.table.value
    ref = np.zeros((16, 16), bool)
    ref[4:8, 4:8] = True
    img = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32) + 3 * ref
    explorer = mx.widgets.CaseExplorer(None, img, ref, np.zeros_like(ref))
    explorer.select_lesion("ref-1")
    assert "ref-1 was missed" in explorer.verdict_html.value


# ------------------------------------------------------------------------ contract keepers


def test_statistics_defaults_are_one_set():
    from medseg_xai.audit.analysis import STATS_DEFAULTS, subgroup_table
    from medseg_xai.audit.plan import OPTION_FIELDS

    plan, table_params = mx.AuditPlan(), _params(subgroup_table)
    for key, value in STATS_DEFAULTS.items():
        part, field = OPTION_FIELDS[key]  # the plan's defaults are the audit's
        assert getattr(getattr(plan, part), field) == value, key
        if key in table_params:
            assert table_params[key] == value, key


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports, lazy imports inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, node.lineno)]
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
    return out


# The one accepted exception (DESIGN.md): AuditResult.to_html imports the report lazily.
_ALLOWED = {("audit/result.py", "medseg_xai.reports"), ("audit/result.py", "medseg_xai.reports.write_html")}


# The view layer and the applications on top of it; every other module is core, so a module
# added later is checked without being listed here.
_UPPER = ("reports", "widgets", "viz", "viz_model", "miss_files", "cli")
_APPS = ("__main__.py", "demo/")


def _core_files() -> list[Path]:
    out = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        top = rel.split("/")[0].removesuffix(".py")
        if top not in _UPPER and not rel.startswith(_APPS):
            out.append(f)
    return out


def test_layering_core_never_imports_reports_widgets_viz_or_cli():
    core = {f.relative_to(PKG).as_posix() for f in _core_files()}
    # The core the design names, and the modules added since, are all in the checked set.
    assert {"metrics/agreement.py", "explain/weights.py", "explain/features.py",
            "audit/features.py", "audit/stream.py", "adapters.py", "targets.py", "cohort.py",
            "_io.py", "status.py", "versions.py"} <= core
    assert not any(c.startswith(("reports/", "widgets/")) or c == "viz_model.py" for c in core)
    upper = tuple(f"medseg_xai.{m}" for m in _UPPER)
    bad = []
    for f in _core_files():
        rel = f.relative_to(PKG).as_posix()
        tree = ast.parse(f.read_text(encoding="utf-8"))
        # A relative import (``from ..viz import x``) would slip past the name check below.
        bad += [f"{rel}:{n.lineno} relative import" for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.level]
        bad += [f"{rel}:{line} {name}" for name, line in _imports(f)
                if name.startswith(upper) and (rel, name) not in _ALLOWED]
    assert bad == []
    importers = [f.relative_to(PKG).as_posix() for f in PKG.rglob("*.py")
                 if f.name not in ("cli.py", "__main__.py")
                 and any(n.startswith("medseg_xai.cli") for n, _ in _imports(f))]
    assert importers == []


# ------------------------------------------------------------------------ lean import


def _fresh_modules(code: str) -> set[str]:
    """Modules loaded by ``code`` in a fresh interpreter (this one has torch already)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, env=_env())
    return set(out.stdout.split())


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(PKG.parent)}


@pytest.mark.parametrize("statement", ["import medseg_xai", "import medseg_xai.metrics",
                                       "import medseg_xai as mx; mx.metrics.dice",
                                       "import medseg_xai.cli"])
def test_lean_import_loads_no_torch_captum_or_matplotlib(statement):
    heavy = {"torch", "captum", "matplotlib", "monai", "SimpleITK", "skimage", "sklearn"}
    assert heavy & _fresh_modules(statement) == set()


def test_subpackages_are_importable_and_callable():
    code = ("import medseg_xai.explain.quality, medseg_xai.audit.stats\n"
            "import medseg_xai as mx\n"
            "assert mx.explain.quality.localisation is medseg_xai.explain.quality.localisation\n"
            "assert mx.audit.stats.wilson_ci\n"
            "assert callable(mx.audit) and callable(mx.explain)\n")
    assert "medseg_xai.audit.stats" in _fresh_modules(code)
    import medseg_xai.audit.stats
    import medseg_xai.explain.quality

    assert mx.audit.stats is medseg_xai.audit.stats
    assert mx.explain.quality is medseg_xai.explain.quality
    assert inspect.signature(mx.audit) == inspect.signature(mx.audit.audit)
    assert inspect.signature(mx.explain) == inspect.signature(mx.explain.explain)
    assert set(mx.__all__) <= set(dir(mx))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mx.nonexistent  # noqa: B018


def test_every_lazy_name_resolves():
    for name, (module, attr) in mx._LAZY.items():
        value = getattr(mx, name)
        assert value is not None and (attr is None or value.__module__.startswith(module)), name
