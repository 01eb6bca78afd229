"""Shared test settings: a modest hypothesis profile so property tests stay fast on 2 cores,
and the headless Chromium that the browser tests (report, JupyterLab) share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "medseg",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=thorough for a longer hunt by hand (not in CI).
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "medseg"))

# Debian's Chromium (the Playwright-managed browsers are never downloaded).
CHROMIUM = Path(os.environ.get("MEDSEG_XAI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing_browser_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; never `playwright install`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        return f"playwright is not importable: {exc}"
    return None


def require_browser() -> None:
    """Skip without Chromium or Playwright, or fail where CI sets MEDSEG_XAI_REQUIRE_BROWSER=1."""
    reason = _missing_browser_reason()
    if reason is None:
        return
    if os.environ.get("MEDSEG_XAI_REQUIRE_BROWSER", "") == "1":
        pytest.fail(f"MEDSEG_XAI_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a module (restored after): tiny tensors on a shared
    2-core machine are several times slower with two threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (``playwright.sync_api.Browser``) for the tests of one module."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# --------------------------------------------------------------------------- real audits
# Reports, widgets and the CLI are tested on what the engine really produced, never on
# hand-made stand-ins. Session-scoped: built once, shared by every module (treat as read-only).

#: Settings of the small real audit (tests re-run parts of it with these).
REAL_AUDIT_KW: dict[str, Any] = {
    "strata": ["device", "site", "lesion_size"],
    "seed": 0,
    "workers": 1,
    "n_resamples": 200,
    "progress": False,
    "min_n": 3,
    "lesion_size_bins": (0.0, 250.0, 1000.0),
    "criteria": [
        *__import__("medseg_xai.audit.criteria", fromlist=["DEFAULT_CRITERIA"]).DEFAULT_CRITERIA,
        {"name": "False-positive scan rate <= 0.5", "kind": "false_positive", "op": "<=",
         "threshold": 0.5, "strata": ["device"]},
    ],
    "report": {"model_name": "test model", "intended_use": "testing the report",
               "reference_standard": "generator masks", "model_fingerprint": "0123456789abcdef"},
}


def _predictions(root: Path, manifest: Path) -> Path:
    """Predictions derived from the labels: every third scan misses its last lesion, every
    fifth gains a false-positive blob, one row points at a missing file (a failed case)."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medseg_xai.metrics import label_lesions

    df = pd.read_csv(manifest)
    (root / "pred").mkdir(exist_ok=True)
    paths = []
    for i, rec in df.iterrows():
        img = nib.load(root / rec["label"])
        lab = np.asarray(img.dataobj) > 0
        labels, n = label_lesions(lab)
        pred = lab.copy()
        if n and i % 3 == 0:
            pred &= labels != n
        if i % 5 == 1:
            pred[1:4, 1:4, 1:4] = True
        p = root / "pred" / f"{rec['case_id']}.nii.gz"
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine), p)
        paths.append(str(p.relative_to(root)))
    df["prediction"] = paths
    df.loc[len(df) - 1, "prediction"] = "pred/missing.nii.gz"
    out = root / "manifest_pred.csv"
    df.to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def real_cohort(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 30-case synthetic cohort (32 x 40 x 40) with stored predictions and one failing row."""
    import warnings

    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import make_cohort

    root = tmp_path_factory.mktemp("real-cohort")
    manifest = _predictions(root, make_cohort(root, n_cases=30, seed=0, shape=(32, 40, 40)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing prediction file is deliberate
        return Cohort.from_csv(manifest)


@pytest.fixture(scope="session")
def real_audit(real_cohort: Any) -> Any:
    """An AuditResult from ``mx.audit`` on :func:`real_cohort` with its failure gallery
    (explained by the bundled demo model)."""
    import warnings

    from medseg_xai.audit import audit
    from medseg_xai.audit.explanations import explain_failures
    from medseg_xai.demo import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = audit(real_cohort, **REAL_AUDIT_KW)
    # One lesion explained, Grad-CAM only: explain_miss re-runs probes through the model.
    result.explanations = explain_failures(result, real_cohort, load_model(), max_cases=6,
                                           max_explanations=1,
                                           explain_kwargs={"methods": ("gradcam",),
                                                           "probes": ("contrast",)})
    return result


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``run_demo`` once per session (12 cases): its DemoOutputs (report, audit.json, manifest)."""
    from medseg_xai.demo.run_demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    return run_demo(out, n_cases=12, seed=1, workers=1, progress=False)


# -- a real nnU-Net v2 results folder (tests/nnunet_fixture.py), once per session -------------
#: scan grids (shape, spacing mm) of the fixture's cases: the model's own and two others
NNUNET_GRIDS = [((20, 18, 12), (1.0, 1.0, 2.0)), ((16, 22, 10), (1.3, 0.8, 2.5)),
                ((24, 14, 16), (0.8, 1.2, 1.5))]


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"folder", "cases", "dir"}``: the results folder nnU-Net's own planner and trainer
    made (one fold), three cases on :data:`NNUNET_GRIDS` and their manifest."""
    import subprocess
    import sys

    pytest.importorskip("nnunetv2")
    root = tmp_path_factory.mktemp("nnunet")
    reuse = os.environ.get("MEDSEG_XAI_NNUNET_FOLDER")  # a folder built before (development)
    if reuse:
        return _nnunet_cases(Path(reuse), root)
    # a subprocess: nnU-Net reads its folders from the environment at import time, and its
    # fingerprint extraction needs a spawn-safe main module
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, str(here / "nnunet_fixture.py"), str(root)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return _nnunet_cases(Path(out.stdout.strip().splitlines()[-1]), root)


def _nnunet_cases(folder: Path, root: Path) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import nnunet_fixture as fx

    cases = root / "cases"
    cases.mkdir()
    written = [fx.write_case(cases, f"t{i}", 100 + i, shape, sp)
               for i, (shape, sp) in enumerate(NNUNET_GRIDS)]
    (cases / "manifest.csv").write_text("case_id,image,label\n" + "".join(
        f"t{i},{a.name},{b.name}\n" for i, (a, b) in enumerate(written)))
    return {"folder": folder, "cases": written, "dir": cases}
